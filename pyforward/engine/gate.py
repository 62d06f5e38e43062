"""The accept gate: whether the listeners accept now. Pure: no sockets, no event loop.

Three things close it, and only this class weighs them:
- the connection cap (`max_connections`): at the cap, clients wait in the kernel's backlog
  (as with socat's max-children) until a connection ends;
- running out of descriptors (EMFILE and kin): accepting pauses for a short backoff, since
  every accept would fail the same way until something closes;
- closing for good: shutdown began, or the last connection allowed (`max_accepts`) came.
The forwarder tells the gate what happened and asks `admits`; it never decides by itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AcceptGate:
    """Open while under the cap, with descriptors to spare, and not closed for good."""

    cap: int | None = None
    short_of_descriptors: bool = False
    closed: bool = False

    def admits(self, active: int) -> bool:
        """May another connection be accepted while `active` ones are open?"""
        if self.closed or self.short_of_descriptors:
            return False
        return self.cap is None or active < self.cap

    def out_of_descriptors(self) -> None:
        """An accept failed for want of descriptors: pause until `descriptors_back`."""
        self.short_of_descriptors = True

    def descriptors_back(self) -> None:
        """The backoff after running out of descriptors is over: try again."""
        self.short_of_descriptors = False

    def close(self) -> None:
        """Never accept again (shutdown, or the last connection allowed has come)."""
        self.closed = True
