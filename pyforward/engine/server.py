"""The forwarder: listeners, the accept loop, the connection cap, ordered shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import resource
import signal
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from pyforward import __version__
from pyforward.config.access import AccessList
from pyforward.config.addresses import Address, client_host, format_peer
from pyforward.config.settings import RelayMode, Route, Settings
from pyforward.engine.health import TargetHealth
from pyforward.engine.listeners import bind_addresses, close_all, open_listener, system_backlog
from pyforward.errors import PyforwardError, StartupError
from pyforward.obs.closelog import SUMMARY_INTERVAL, CloseSummary
from pyforward.obs.logfmt import logfmt
from pyforward.obs.ratelimit import Every
from pyforward.obs.reasons import CloseReason
from pyforward.obs.stats import Stats, reason_counts
from pyforward.relay.connection import Connection, Policy, ResolvedTarget
from pyforward.relay.pipes import PipePool, splice_available
from pyforward.relay.poller import make_poller
from pyforward.relay.sockets import reset_on_close

log = logging.getLogger("pyforward")

_ACCEPT_BATCH = 64  # connections accepted per wakeup before other work gets a turn
_FD_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_FD_BACKOFF = 0.25  # seconds without accepting after running out of descriptors
_REFUSAL_LOG_INTERVAL = 5.0  # seconds between log lines about refused clients
_FAILOVER_LOG_INTERVAL = 5.0  # seconds between failover lines of one route


@dataclass
class Listener:
    sock: socket.socket
    label: str
    route: Route
    targets: list[ResolvedTarget]
    policy: Policy
    access: AccessList


def _policy(route: Route) -> Policy:
    return Policy(
        route.connect_timeout,
        route.idle_timeout,
        route.keepalive,
        route.first_byte_timeout,
        route.log_connections,
    )


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


def literal_target(address: Address) -> ResolvedTarget | None:
    """The target of an IP-literal address, without a name lookup; None for a host name."""
    assert address.host is not None
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError:
        return None
    if ip.version == 6:
        return ResolvedTarget(socket.AF_INET6, (str(ip), address.port, 0, 0), str(address))
    return ResolvedTarget(socket.AF_INET, (str(ip), address.port), str(address))


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
        *,
        max_accepts: int | None = None,
        passed_sockets: Mapping[int, list[socket.socket]] | None = None,
    ) -> None:
        self.settings = settings
        self.loop = loop
        self.poller = make_poller(loop)
        # After this many connections the listeners close for good, and `finished` is
        # set once the last connection ends (socat without `fork` serves one).
        self.max_accepts = max_accepts
        self.finished = asyncio.Event()
        self._accepts_done = False
        self._served = 0  # connections handed to a Connection (refused ones are not)
        self.stats = Stats()
        self.pipes: PipePool | None = None
        self.relay = "copy"
        self.listeners: list[Listener] = []
        self.connections: set[Connection] = set()
        self.health = TargetHealth()
        self._accepting = False
        self._paused_for_fds = False
        self._drained: asyncio.Event | None = None
        self._closed = False
        self._per_source: Counter[str] = Counter()
        self._refusals: Counter[str] = Counter()  # since the last refusal log line
        self._refusal_log = Every(_REFUSAL_LOG_INTERVAL)
        self._fd_log = Every(5.0)
        # One failover line per route and interval: a client facing 100 dead targets
        # would otherwise log 99 (each target going down is logged once, as target-down).
        self._failover_logs: dict[Address, Every] = {}
        self.close_summary = CloseSummary()
        self._summary_timer: asyncio.TimerHandle | None = None
        # Listening sockets handed over by systemd, by route index (socket activation).
        self.passed_sockets = dict(passed_sockets or {})
        # Short notes for the service status line, e.g. {"discovery": "degraded: ..."}.
        self.status_notes: dict[str, str] = {}
        # Fills in, on reload, the targets the configuration leaves to discovery; its
        # PyforwardError fails the reload. Set by Discovery.attach.
        self.fill_targets: Callable[[Settings], Settings] | None = None

    async def start(self) -> None:
        """Resolve every target and bind every listener; accept only once all are ready."""
        settings = self.settings
        if settings.relay is not RelayMode.COPY:
            if splice_available():
                self.pipes = PipePool()
                self.relay = "splice"
            elif settings.relay is RelayMode.SPLICE:
                raise StartupError("--relay splice: splice(2) is not available on this system")
        try:
            for index, route in enumerate(settings.routes):
                targets = await self._resolve(route)
                passed = self.passed_sockets.pop(index, None)
                if passed:
                    self.listeners += [
                        Listener(
                            s,
                            format_peer(s.getsockname()),
                            route,
                            targets,
                            _policy(route),
                            route.access,
                        )
                        for s in passed
                    ]
                else:
                    self.listeners += self._open_route(route, targets)
        except BaseException:
            close_all([listener.sock for listener in self.listeners])
            close_all([sock for socks in self.passed_sockets.values() for sock in socks])
            raise
        self._summary_timer = self.loop.call_later(SUMMARY_INTERVAL, self._log_close_summary)
        self._resume_accepting()

    async def _resolve(self, route: Route) -> list[ResolvedTarget]:
        return [await resolve_target(self.loop, target) for target in route.targets]

    def _open_route(self, route: Route, targets: list[ResolvedTarget]) -> list[Listener]:
        backlog = self.settings.backlog or system_backlog()
        opened: list[Listener] = []
        try:
            for family, sockaddr in bind_addresses(route.listen):
                sock = open_listener(route.listen, family, sockaddr, backlog)
                label = format_peer(sock.getsockname())
                opened.append(Listener(sock, label, route, targets, _policy(route), route.access))
        except BaseException:
            close_all([listener.sock for listener in opened])
            raise
        return opened

    async def reload(self, settings: Settings) -> None:
        """Apply a new configuration without dropping a connection.

        New listeners open, removed ones stop accepting (their connections finish on their
        own), and changed targets and per-route settings apply to new connections. Everything
        that can fail (name lookups, binding) happens before anything changes, so on an
        error the old configuration stays in force whole.
        """
        resolved = {route.listen: await self._resolve(route) for route in settings.routes}
        if self.fill_targets is not None:
            # After the last await: the discovered targets filled in are the current ones.
            settings = self.fill_targets(settings)
            for route in settings.routes:
                if route.targets and not resolved[route.listen]:
                    # Discovered targets are IP literals: resolved without a lookup.
                    literals = (literal_target(address) for address in route.targets)
                    resolved[route.listen] = [t for t in literals if t is not None]
        new_routes = {route.listen: route for route in settings.routes}
        current = {listener.route.listen for listener in self.listeners}
        opened: list[Listener] = []
        try:
            for route in settings.routes:
                if route.listen not in current:
                    opened += self._open_route(route, resolved[route.listen])
        except BaseException:
            close_all([listener.sock for listener in opened])
            raise
        kept: list[Listener] = []
        for listener in self.listeners:
            new_route = new_routes.get(listener.route.listen)
            if new_route is None:
                if self._accepting:
                    self.loop.remove_reader(listener.sock.fileno())
                listener.sock.close()
                continue
            listener.route, listener.targets = new_route, resolved[new_route.listen]
            listener.policy, listener.access = _policy(new_route), new_route.access
            kept.append(listener)
        for name in ("relay", "loop", "backlog"):
            if getattr(settings, name) != getattr(self.settings, name):
                log.warning(logfmt({"event": "reload", "msg": f"changing {name} needs a restart"}))
        self.listeners = kept + opened
        self.settings = settings
        for listen in self._failover_logs.keys() - new_routes.keys():
            del self._failover_logs[listen]
        if self._accepting:
            for listener in opened:
                self.loop.add_reader(listener.sock.fileno(), self._accept, listener)
        elif self._drained is None and not self._paused_for_fds:
            cap = settings.max_connections
            if cap is None or self.stats.active < cap:
                self._resume_accepting()

    # --- accepting

    def _resume_accepting(self) -> None:
        if not self._accepting and not self._accepts_done:
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
            source = client_host(peer[0])
            if listener.access and not listener.access.permits(source):
                self._refuse(client, CloseReason.DENIED, source)
                continue
            per_source_cap = self.settings.max_connections_per_source
            if per_source_cap is not None:
                if self._per_source[source] >= per_source_cap:
                    self._refuse(client, CloseReason.SOURCE_LIMIT, source)
                    continue
                self._per_source[source] += 1
            self.stats.active += 1
            targets: Sequence[ResolvedTarget] = listener.targets
            if len(targets) > 1:
                targets = self.health.order(targets, self.loop.time())
            self._served += 1
            last = self.max_accepts is not None and self._served >= self.max_accepts
            if last:
                # Before the connection starts, which may end it at once.
                self._close_listeners_for_good(listener.label)
            connection = Connection(
                self,
                client,
                client_label=format_peer(peer),
                listen_label=listener.label,
                targets=targets,
                policy=listener.policy,
                failover_log=self._failover_log(listener.route),
                source=source,
            )
            self.connections.add(connection)
            try:
                connection.start()
            except Exception as exc:  # a bug: it must cost this connection, not the server
                self.connection_crashed(connection, exc)
            if last:
                return

    def _failover_log(self, route: Route) -> Every:
        limiter = self._failover_logs.get(route.listen)
        if limiter is None:
            limiter = self._failover_logs[route.listen] = Every(_FAILOVER_LOG_INTERVAL)
        return limiter

    def connection_crashed(self, connection: Connection, exc: Exception) -> None:
        """Contain an error no part of the connection expected: log it with its traceback,
        reset the client, give back its slot and its descriptors."""
        log.error(
            logfmt(
                {
                    "event": "connection-error",
                    "client": connection.client_label,
                    "error": type(exc).__name__,
                    "msg": str(exc),
                }
            ),
            exc_info=exc,
        )
        connection.fail(exc)

    def _log_close_summary(self, *, again: bool = True) -> None:
        for fields in self.close_summary.take():
            log.info(logfmt(fields))
        if again:
            self._summary_timer = self.loop.call_later(SUMMARY_INTERVAL, self._log_close_summary)

    def _close_listeners_for_good(self, label: str) -> None:
        self._pause_accepting()
        self._accepts_done = True
        close_all([listener.sock for listener in self.listeners])
        log.info(logfmt({"event": "listen-closed", "address": label, "served": self._served}))

    def _refuse(self, client: socket.socket, reason: CloseReason, source: str) -> None:
        """Close a refused client at once, with a reset; log at most one line per interval,
        so a flood cannot fill the disk."""
        reset_on_close(client)
        client.close()
        self.stats.closed[reason] += 1
        self._refusals[reason] += 1
        if self._refusal_log.due(self.loop.time()):
            counts = dict(self._refusals)
            self._refusals.clear()
            log.warning(logfmt({"event": "refused", "reason": reason, "client": source, **counts}))

    def _out_of_descriptors(self, exc: OSError) -> None:
        if self._fd_log.due(self.loop.time()):
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
        if self.settings.max_connections_per_source is not None:
            self._per_source[connection.source] -= 1
            if not self._per_source[connection.source]:
                del self._per_source[connection.source]
        if self._drained is not None:
            if not self.connections:
                self._drained.set()
        elif self._accepts_done:
            if not self.connections:
                self.finished.set()
        elif not self._accepting and not self._paused_for_fds:
            cap = self.settings.max_connections
            if cap is None or self.stats.active < cap:
                self._resume_accepting()

    # --- targets and their health

    def set_targets(self, route: Route, targets: Sequence[ResolvedTarget]) -> None:
        """Send the route's new connections to `targets` from now on; connections already
        made, or still connecting, keep the targets they started with."""
        for listener in self.listeners:
            # By listen address: a reload may have given the route new settings.
            if listener.route.listen == route.listen:
                # A new list, never an in-place change: connections hold the old one.
                listener.targets = list(targets)
        self.health.retain(t for listener in self.listeners for t in listener.targets)

    def target_failed(self, target: ResolvedTarget, reason: CloseReason) -> None:
        if self.health.failed(target, self.loop.time()):
            log.warning(
                logfmt(
                    {
                        "event": "target-down",
                        "target": target.label,
                        "reason": reason,
                        "for": self.health.down_for,
                        "msg": "tried last until then",
                    }
                )
            )

    def target_connected(self, target: ResolvedTarget) -> None:
        if self.health.succeeded(target):
            log.info(logfmt({"event": "target-up", "target": target.label}))

    # --- stopping

    def stop_accepting(self) -> None:
        """Close the listeners, so new clients are refused at once."""
        if self._drained is None:
            self._drained = asyncio.Event()
        self._pause_accepting()
        close_all([listener.sock for listener in self.listeners])

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, let connections finish for up to `timeout`, then close them."""
        # 1. Stop accepting.
        self.stop_accepting()
        assert self._drained is not None
        # 2. Let connections in flight finish on their own.
        if self.connections:
            log.info(
                logfmt({"event": "draining", "active": len(self.connections), "timeout": timeout})
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        # 3. Past the deadline, close what remains.
        self.close()

    def close(self) -> None:
        """Close everything now; a reset tells each remaining peer it was cut short."""
        self.stop_accepting()
        for connection in list(self.connections):
            connection.close(CloseReason.SHUTDOWN, reset=True)
        if self._summary_timer is not None:
            self._summary_timer.cancel()
            self._summary_timer = None
            self._log_close_summary(again=False)  # the counts since the last line
        if self.pipes is not None:
            self.pipes.close()
        if not self._closed:
            self._closed = True
            self.poller.close()


def _log_listeners(forwarder: Forwarder) -> None:
    for listener in forwarder.listeners:
        targets = ",".join(target.label for target in listener.targets)
        log.info(logfmt({"event": "listen", "address": listener.label, "target": targets}))


async def apply_reload(forwarder: Forwarder, load: Callable[[], Settings]) -> str | None:
    """Load and apply a new configuration, logging the outcome; the error, if it failed."""
    log.info(logfmt({"event": "reloading"}))
    try:
        await forwarder.reload(load())
    except PyforwardError as exc:
        log.error(
            logfmt({"event": "reload-failed", "error": str(exc), "msg": "kept the old config"})
        )
        return str(exc)
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
    log.info(logfmt({"event": "reloaded", "listeners": len(forwarder.listeners)}))
    return None


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
    reload_settings: Callable[[], Settings] | None = None,
    max_accepts: int | None = None,
    passed_sockets: Mapping[int, list[socket.socket]] | None = None,
) -> Forwarder:
    """Run the forwarder until `shutdown_trigger` returns (default: SIGTERM or SIGINT),
    or, with `max_accepts`, until that many connections have come and gone.

    With `reload_settings`, SIGHUP calls it and applies what it returns (see `reload`);
    a configuration that fails to load or apply is logged and the old one stays.
    `passed_sockets` are listening sockets by route index (socket activation); routes
    without one are bound here.
    """
    loop = asyncio.get_running_loop()
    fd_limit = raise_fd_limit()
    forwarder = Forwarder(settings, loop, max_accepts=max_accepts, passed_sockets=passed_sockets)
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
    _log_listeners(forwarder)
    remove_handlers: Callable[[], None] | None = None
    if shutdown_trigger is None:
        stop = asyncio.Event()
        remove_handlers = install_signal_handlers(loop, stop)
        shutdown_trigger = stop.wait
    reloads: set[asyncio.Task[str | None]] = set()
    if reload_settings is not None:
        load = reload_settings

        def on_sighup() -> None:
            task = loop.create_task(apply_reload(forwarder, load))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    if on_ready is not None:
        on_ready(forwarder)
    try:
        if max_accepts is None:
            await shutdown_trigger()
        else:
            await _first_of(shutdown_trigger, forwarder.finished.wait)
        log.info(logfmt({"event": "stopping", "active": len(forwarder.connections)}))
        await forwarder.shutdown(settings.shutdown_timeout)
    finally:
        forwarder.close()  # a no-op after shutdown; when cancelled, nothing is left open
        if remove_handlers is not None:
            remove_handlers()
        if reload_settings is not None:
            loop.remove_signal_handler(signal.SIGHUP)
    log.info(
        logfmt(
            {
                "event": "stopped",
                "accepted": forwarder.stats.accepted,
                "spliced_bytes": forwarder.stats.spliced_bytes,
                "copied_bytes": forwarder.stats.copied_bytes,
                **closed_counts(forwarder.stats),
            }
        )
    )
    return forwarder


def closed_counts(stats: Stats) -> dict[str, int]:
    """`closed_REASON: count` for every reason connections closed with, in REASONS order."""
    return reason_counts(stats.closed)


async def _first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Wait until the first of `waits` returns (or raises); cancel the others."""
    tasks = [asyncio.ensure_future(wait()) for wait in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()  # an exception from a trigger is the caller's to see
