"""UDP forwarding: flows per client address (`flows.py`, pure), one flow's I/O (`flow.py`),
the listeners and their flows (`server.py`). A sibling of the TCP relay (relay/, engine/)."""
