"""UDP forwarding: flows per client address (`flows.py`, pure), one flow's I/O (`flow.py`),
one listening socket and its flows (`listener.py`), every UDP route (`server.py`), and what
`pyforward check` probes (`probe.py`). A sibling of the TCP relay (relay/, engine/)."""
