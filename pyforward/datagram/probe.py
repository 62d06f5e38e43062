"""What `pyforward check` can learn of a UDP route without forwarding: whether its port can be
bound, and whether its target refuses (an ICMP port unreachable). UDP has no handshake, so a
target that stays silent may be there or not; only a refusal is certain."""

from __future__ import annotations

import errno
import socket

from pyforward.config.addresses import Address
from pyforward.engine.listeners import bind_addresses
from pyforward.errors import StartupError

_REPLY_WAIT = 0.5  # seconds for a refusal (or an answer) to an empty datagram


def listen_problem(address: Address) -> str | None:
    """Why `address` cannot be bound for UDP now, in run's words; None when it can."""
    try:
        pairs = bind_addresses(address)
    except StartupError as exc:
        return str(exc)
    for family, sockaddr in pairs:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                if family == socket.AF_INET6:
                    v6only = 0 if address.host is None else 1
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
                sock.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return (
                        f"cannot listen on {address}: UDP port {address.port} is already in use "
                        f"(see who holds it: ss -lunp 'sport = :{address.port}')"
                    )
                return f"cannot listen on {address}: {exc.strerror or exc}"
    return None


def target_answer(host: str, port: int, family: int) -> str | None:
    """Send one empty datagram: "refused", "answers", or None (silence)."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(_REPLY_WAIT)
        try:
            sock.connect((host, port))
            sock.send(b"")
            sock.recv(1)
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return None
        except OSError as exc:
            return exc.strerror or str(exc)
    return "answers"
