"""The forwarder: listeners, the accept loop, the connection cap, ordered shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from pyforward import __version__
from pyforward.addresses import Address, format_peer
from pyforward.connection import Connection, Policy, ResolvedTarget
from pyforward.errors import StartupError
from pyforward.listeners import bind_addresses, close_all, open_listener, system_backlog
from pyforward.logfmt import logfmt
from pyforward.pipes import PipePool, splice_available
from pyforward.settings import RelayMode, Route, Settings
from pyforward.stats import Stats

log = logging.getLogger("pyforward")

_ACCEPT_BATCH = 64  # connections accepted per wakeup before other work gets a turn
_FD_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_FD_BACKOFF = 0.25  # seconds without accepting after running out of descriptors


@dataclass
class Listener:
    sock: socket.socket
    label: str
    route: Route
    targets: list[ResolvedTarget]
    policy: Policy
    connections: set[Connection] = field(default_factory=set)


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        return hard
    return soft


async def resolve_target(loop: asyncio.AbstractEventLoop, address: Address) -> ResolvedTarget:
    assert address.host is not None
    try:
        infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise StartupError(
            f"target {address}: host {address.host!r} does not resolve ({exc.strerror})"
        ) from None
    family, _, _, _, sockaddr = infos[0]
    return ResolvedTarget(family, tuple(sockaddr), str(address))


class Forwarder:
    """Accepts on every listener and hands each connection to a `Connection`."""

    def __init__(
        self,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        passed_sockets: Mapping[int, list[socket.socket]] | None = None,
    ) -> None:
        self.settings = settings
        self.loop = loop
        self.stats = Stats()
        self.pipes: PipePool | None = None
        self.relay = "copy"
        self.listeners: list[Listener] = []
        self.connections: set[Connection] = set()
        self._accepting = False
        self._paused_for_fds = False
        self._drained: asyncio.Event | None = None
        self._last_fd_warning = 0.0
        # Listening sockets handed over by systemd, by route index (socket activation).
        self.passed_sockets = dict(passed_sockets or {})
        # Short notes for the service status line, e.g. {"discovery": "degraded: ..."}.
        self.status_notes: dict[str, str] = {}

    async def start(self) -> None:
        """Resolve every target and bind every listener; accept only once all are ready."""
        settings = self.settings
        if settings.relay is not RelayMode.COPY:
            if splice_available():
                self.pipes = PipePool()
                self.relay = "splice"
            elif settings.relay is RelayMode.SPLICE:
                raise StartupError("--relay splice: splice(2) is not available on this system")
        backlog = settings.backlog or system_backlog()
        try:
            for index, route in enumerate(settings.routes):
                targets = [await resolve_target(self.loop, t) for t in route.targets]
                policy = Policy(route.connect_timeout, route.idle_timeout, route.keepalive)
                for sock in self._listen_sockets(index, route, backlog):
                    label = format_peer(sock.getsockname())
                    self.listeners.append(Listener(sock, label, route, targets, policy))
        except BaseException:
            close_all([listener.sock for listener in self.listeners])
            close_all([sock for socks in self.passed_sockets.values() for sock in socks])
            raise
        self._resume_accepting()

    def _listen_sockets(self, index: int, route: Route, backlog: int) -> list[socket.socket]:
        """The route's listening sockets: passed by systemd if it did, else bound here."""
        passed = self.passed_sockets.pop(index, None)
        if passed:
            return passed
        socks: list[socket.socket] = []
        try:
            for family, sockaddr in bind_addresses(route.listen):
                socks.append(open_listener(route.listen, family, sockaddr, backlog))
        except BaseException:
            close_all(socks)
            raise
        return socks

    # --- accepting

    def _resume_accepting(self) -> None:
        if not self._accepting:
            self._accepting = True
            for listener in self.listeners:
                self.loop.add_reader(listener.sock.fileno(), self._accept, listener)

    def _pause_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            for listener in self.listeners:
                self.loop.remove_reader(listener.sock.fileno())

    def _accept(self, listener: Listener) -> None:
        cap = self.settings.max_connections
        for _ in range(_ACCEPT_BATCH):
            if cap is not None and self.stats.active >= cap:
                # At the cap, connections wait in the kernel's backlog (as with socat's
                # max-children) until a slot frees.
                self._pause_accepting()
                return
            try:
                client, peer = listener.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _FD_EXHAUSTED:
                    self._out_of_descriptors(exc)
                    return
                continue  # ECONNABORTED and kin: that client is gone, the next may not be
            self.stats.accepted += 1
            self.stats.active += 1
            connection = Connection(
                self,
                client,
                client_label=format_peer(peer),
                listen_label=listener.label,
                targets=listener.targets,
                policy=listener.policy,
            )
            self.connections.add(connection)
            connection.start()

    def _out_of_descriptors(self, exc: OSError) -> None:
        now = self.loop.time()
        if now - self._last_fd_warning >= 5.0:
            self._last_fd_warning = now
            log.warning(
                logfmt(
                    {
                        "event": "accept-paused",
                        "error": errno.errorcode.get(exc.errno or 0, "?"),
                        "active": self.stats.active,
                        "msg": "out of file descriptors; accepting again shortly",
                    }
                )
            )
        self._pause_accepting()
        self._paused_for_fds = True
        self.loop.call_later(_FD_BACKOFF, self._fd_backoff_over)

    def _fd_backoff_over(self) -> None:
        self._paused_for_fds = False
        if self.listeners and self._drained is None:
            self._resume_accepting()

    def connection_closed(self, connection: Connection) -> None:
        self.connections.discard(connection)
        self.stats.active -= 1
        if self._drained is not None:
            if not self.connections:
                self._drained.set()
        elif not self._accepting and not self._paused_for_fds:
            cap = self.settings.max_connections
            if cap is None or self.stats.active < cap:
                self._resume_accepting()

    # --- stopping

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, let connections finish for up to `timeout`, then close them."""
        # 1. Stop accepting: close the listeners, so new clients are refused at once.
        self._drained = asyncio.Event()
        self._pause_accepting()
        close_all([listener.sock for listener in self.listeners])
        # 2. Let connections in flight finish on their own.
        if self.connections:
            log.info(
                logfmt({"event": "draining", "active": len(self.connections), "timeout": timeout})
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        # 3. Past the deadline, close what remains; a reset tells each peer it was cut short.
        for connection in list(self.connections):
            connection.close("shutdown", reset=True)
        if self.pipes is not None:
            self.pipes.close()


def install_signal_handlers(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event
) -> Callable[[], None]:
    """SIGTERM and SIGINT start a graceful shutdown; returns a function removing them."""
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)

    def remove() -> None:
        for signum in signals:
            loop.remove_signal_handler(signum)

    return remove


async def serve(
    settings: Settings,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    on_ready: Callable[[Forwarder], None] | None = None,
    loop_name: str = "",
    passed_sockets: Mapping[int, list[socket.socket]] | None = None,
) -> Forwarder:
    """Run the forwarder until `shutdown_trigger` returns (default: SIGTERM or SIGINT).

    `passed_sockets` are listening sockets by route index (socket activation); routes
    without one are bound here."""
    loop = asyncio.get_running_loop()
    fd_limit = raise_fd_limit()
    forwarder = Forwarder(settings, loop, passed_sockets)
    await forwarder.start()
    log.info(
        logfmt(
            {
                "event": "start",
                "version": __version__,
                "loop": loop_name or type(loop).__module__.split(".")[0],
                "relay": forwarder.relay,
                "max_connections": settings.max_connections or "none",
                "fd_limit": fd_limit,
            }
        )
    )
    for listener in forwarder.listeners:
        log.info(
            logfmt(
                {
                    "event": "listen",
                    "address": listener.label,
                    "target": ",".join(t.label for t in listener.targets),
                }
            )
        )
    remove_handlers: Callable[[], None] | None = None
    if shutdown_trigger is None:
        stop = asyncio.Event()
        remove_handlers = install_signal_handlers(loop, stop)
        shutdown_trigger = stop.wait
    if on_ready is not None:
        on_ready(forwarder)
    try:
        await shutdown_trigger()
        log.info(logfmt({"event": "stopping", "active": len(forwarder.connections)}))
        await forwarder.shutdown(settings.shutdown_timeout)
    finally:
        if remove_handlers is not None:
            remove_handlers()
    log.info(
        logfmt(
            {
                "event": "stopped",
                "accepted": forwarder.stats.accepted,
                "spliced_bytes": forwarder.stats.spliced_bytes,
                "copied_bytes": forwarder.stats.copied_bytes,
            }
        )
    )
    return forwarder
