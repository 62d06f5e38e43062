"""Discovery on the event loop: resolve before accepting, then follow the cluster.

Boot: the watchers start; with a state file from an earlier run its targets are served
at once (degraded); otherwise the first resolution is awaited with a bounded wait, so a
k3s that answers later than it starts is waited for instead of failing into systemd's
start limit. Afterwards every change of a Service or the Nodes is resolved again; a
new target is handed to the forwarder (new connections only) and saved.

Each discovered route follows its own Service (`Route.service`): the Services of every
namespace named are watched (one watch per namespace), the Nodes once, and each Service's
routes are resolved against it; a Service that gives no target degrades its routes only.
A `Discovery` follows one cluster (`followed.Cluster`: a kubeconfig and node_ip); routes
in several are followed by one each, grouped by `pyforward.discovery.clusters`.

`Discovery` is a target source (`pyforward.engine.targets.TargetSource`): the runtime starts
it, attaches it and stops it, as it does the configuration's own targets. While the API
cannot be reached or the objects give no usable target, the last target stays in use
and the state is reported as degraded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from pyforward.config.addresses import Address
from pyforward.config.model import Route, Settings
from pyforward.discovery import state
from pyforward.discovery.api import ClusterApi, Resource
from pyforward.discovery.errors import DiscoveryError
from pyforward.discovery.followed import (
    Cluster,
    by_cluster,
    by_service,
    cluster_name,
    following_text,
    route_identity,
    targets_text,
)
from pyforward.discovery.hostinfo import this_host
from pyforward.discovery.kubeconfig import KubeconfigSource, find_kubeconfig
from pyforward.discovery.model import HostIdentity, NodeChoice, RouteTarget, resolve_chosen
from pyforward.discovery.options import DiscoverySettings, ServiceRef, route_service
from pyforward.discovery.stores import NodeStore, ServiceStore
from pyforward.discovery.watcher import (
    Changed,
    ResourceWatcher,
    Trouble,
    Update,
    WatchTiming,
)
from pyforward.engine.route_listeners import literal_target
from pyforward.engine.targets import TargetSink, route_ids
from pyforward.errors import ConfigError, StartupError
from pyforward.obs.logfmt import logfmt

log = logging.getLogger("pyforward.discovery")


@dataclass(frozen=True)
class DiscoveryStatus:
    """What a status surface (logs, systemd's STATUS=) shows about discovery."""

    degraded: bool
    message: str


class Discovery:
    """Follows the Services (and the Nodes) of one cluster's routes that have no static
    target: the target source of `run --discover` (of each cluster's, with several)."""

    name = "discovery"  # its note's key in the status line

    def __init__(
        self,
        settings: Settings,
        *,
        host: HostIdentity | None = None,
        timing: WatchTiming | None = None,
        env: dict[str, str] | None = None,
        cluster: Cluster | None = None,
        label: str | None = None,
    ) -> None:
        assert settings.discovery is not None
        self.settings = settings
        self.config: DiscoverySettings = settings.discovery
        self.routes: list[Route] = list(settings.routes)
        clusters = by_cluster(self.routes)
        if cluster is None:
            if len(clusters) > 1:
                raise ValueError("routes in several clusters: see discovery.clusters")
            cluster = next(iter(clusters), Cluster(self.config.kubeconfig, self.config.node_ip))
        self.cluster = cluster
        # Its name in metrics (the `cluster` label) and status: `default` for the top-level.
        self.cluster_name = cluster_name(
            cluster, Cluster(self.config.kubeconfig, self.config.node_ip)
        )
        self.node_ip = cluster.node_ip
        # Names the cluster in log lines and errors when the process follows several.
        self.label = label
        self._indexes = clusters.get(cluster, [])
        # Every discovered route, of any cluster: a reload may change none of them.
        self._identities = sorted(route_identity(r) for r in self.routes if not r.targets)
        # The discovered routes by the Service they follow, in the order routes name them.
        self._groups = by_service(self.routes, self._indexes)
        self._host = host or this_host(env)
        self._timing = timing or WatchTiming()
        self._env = dict(os.environ if env is None else env)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._api: ClusterApi | None = None
        self._watchers: dict[Resource, ResourceWatcher] = {}
        # One store (and watch) per namespace of the Services followed.
        self._services = {ref.namespace: ServiceStore() for ref in self._groups}
        self._nodes = NodeStore(self._host)
        self._trouble: dict[Resource, DiscoveryError] = {}
        self._problem: DiscoveryError | None = None
        self._current: dict[int, tuple[Address, ...]] = {}
        self._node_ports: dict[int, int] = {}  # of the routes resolved, for the state file
        self._resolved: set[ServiceRef] = set()  # Services resolved at least once
        self._changed = asyncio.Event()
        self._sink: TargetSink | None = None
        self._save_task: asyncio.Task[None] | None = None
        self._state_note = ""  # set while serving what the state file said
        self.source: KubeconfigSource | None = None
        self.status = DiscoveryStatus(True, "starting")
        self.status_listeners: list[Callable[[DiscoveryStatus], None]] = []
        default = cluster == Cluster(self.config.kubeconfig, self.config.node_ip)
        self.state_file = state.state_path(
            self.config.state_dir, self.config.service, None if default else cluster.key
        )

    @property
    def degraded(self) -> bool:
        """True while forwarding to a target the cluster has not confirmed, or while part of
        what the cluster sent cannot be used (nodes left out)."""
        return self.status.degraded

    @property
    def degraded_by_cluster(self) -> dict[str, bool]:
        """`degraded`, under the cluster's name (what the metrics show)."""
        return {self.cluster_name: self.degraded}

    # --- boot

    async def start(self, settings: Settings) -> Settings:
        """Connect and find the first targets; return `settings` (those this source was made
        for) with them filled in."""
        await self.begin()
        return self.filled(settings)

    def _cluster_field(self) -> dict[str, object]:
        return {"cluster": self.label} if self.label else {}

    def locate(self) -> KubeconfigSource:
        """The kubeconfig to use (found once); its KubeconfigError names it and where it
        was given."""
        if self.source is None:
            self.source = find_kubeconfig(
                self.cluster.kubeconfig, self._env, self.cluster.kubeconfig_given_in
            )
        return self.source

    async def begin(self) -> None:
        """Connect, start the watches and wait for the first targets (or take the saved)."""
        self._loop = loop = asyncio.get_running_loop()
        self.locate()
        log.info(
            logfmt({"event": "kubeconfig", **self._cluster_field(), "source": str(self.source)})
        )
        self._api = api = await loop.run_in_executor(None, ClusterApi, self.locate())
        ports = ",".join(str(self.routes[i].service_port) for i in self._indexes)
        log.info(
            logfmt(
                {
                    "event": "discovery",
                    **self._cluster_field(),
                    "api": api.host,
                    "service": ",".join(str(ref) for ref in self._groups),
                    "ports": ports,
                }
            )
        )
        stores: list[tuple[Resource, ServiceStore | NodeStore]] = [
            (Resource("services", namespace), store) for namespace, store in self._services.items()
        ]
        if self.node_ip is None:
            stores.append((Resource("nodes"), self._nodes))
        for resource, store in stores:
            watcher = ResourceWatcher(api, resource, store, self._deliver, self._timing)
            self._watchers[resource] = watcher
            watcher.start()
        if not self._load_state():
            await self._wait_for_first_target()
        for index in self._indexes:
            self.routes[index] = replace(self.routes[index], targets=self._current[index])

    def filled(self, settings: Settings) -> Settings:
        """`settings` (those this source was made for) with this cluster's routes' current
        targets filled in."""
        routes = list(settings.routes)
        for index in self._indexes:
            routes[index] = replace(routes[index], targets=self._current[index])
        return replace(settings, routes=tuple(routes))

    def _load_state(self) -> bool:
        try:
            saved = state.load(self.state_file)
        except state.BadStateFile as exc:
            log.warning(
                logfmt({"event": "state-unreadable", "file": self.state_file, "error": exc})
            )
            return False
        if saved is None or saved.service != self.config.service:
            return False
        found = {}
        for index in self._indexes:
            route = self.routes[index]
            # A route saved with another Service (or none saved) makes the file unusable.
            saved_route = saved.route_for(
                str(route.listen), str(route.service_port), route_service(route)
            )
            if saved_route is None:
                return False
            found[index] = saved_route
        for index, saved_route in found.items():
            self._current[index] = saved_route.targets
            self._node_ports[index] = saved_route.node_port
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(saved.saved_at))
        self._state_note = f"serving the targets saved at {when} in {self.state_file}"
        self._set_status(True, f"{self._state_note} until the Kubernetes API answers")
        return True

    async def _wait_for_first_target(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.boot_timeout
        while len(self._resolved) < len(self._groups):
            problem = self._problem
            if problem is not None and problem.permanent:
                raise problem
            remaining = deadline - loop.time()
            if remaining <= 0:
                if problem is not None:
                    raise type(problem)(
                        f"{problem} (still so after {self.config.boot_timeout:g} s)"
                    )
                raise StartupError(
                    f"no answer from the Kubernetes API at {self._api.host if self._api else '?'} "
                    f"within {self.config.boot_timeout:g} s"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def attach(self, sink: TargetSink) -> None:
        """Start handing target changes, and the state of discovery, to `sink`."""
        self._sink = sink
        sink.source_status(self._note())
        for index in self._indexes:
            self._apply(index)

    def fill(self, settings: Settings) -> Settings:
        """A reloaded configuration with its discovered routes' current targets.

        Everything else in it applies (access lists, timeouts, limits, static routes);
        what is discovered, and from where, does not change without a restart."""
        self.check_reload(settings)
        return self.fill_targets(settings)

    def check_reload(self, settings: Settings) -> None:
        """Refuse (ConfigError) a reloaded configuration that changes what is discovered."""
        if settings.discovery != self.config:
            raise ConfigError(
                "changing the discovery settings (service, kubeconfig, node_ip, state_dir, "
                "...) needs a restart"
            )
        wanted = sorted(route_identity(r) for r in settings.routes if not r.targets)
        if wanted != self._identities:
            raise ConfigError(
                "adding, removing or changing a discovered route (listen, service, "
                "service_port, kubeconfig, node_ip) needs a restart"
            )

    def fill_targets(self, settings: Settings) -> Settings:
        """`settings` (checked by `check_reload`) with this cluster's routes' targets."""
        targets = {route_identity(self.routes[i]): self._current[i] for i in self._indexes}
        # Another cluster's routes are left to its own Discovery (clusters.Clusters.fill).
        routes = tuple(
            replace(route, targets=targets[route_identity(route)])
            if not route.targets and route_identity(route) in targets
            else route
            for route in settings.routes
        )
        return replace(settings, routes=routes)

    async def stop(self) -> None:
        """Stop the watchers and wait for their threads."""
        for watcher in self._watchers.values():
            watcher.stop()
        if self._api is not None:
            self._api.close()
        loop = asyncio.get_running_loop()
        for watcher in self._watchers.values():
            await loop.run_in_executor(None, watcher.join, 5.0)
        if self._save_task is not None and not self._save_task.done():
            await asyncio.wait([self._save_task], timeout=5.0)
        if self._api is not None:
            self._api.release()

    # --- updates from the watcher threads

    def _deliver(self, update: Update) -> None:
        """Called in a watcher thread: hand the update to the event loop."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are shutting down
            self._loop.call_soon_threadsafe(self._on_update, update)

    def _on_update(self, update: Update) -> None:
        if isinstance(update, Trouble):
            self._trouble[update.resource] = update.error
        else:
            self._trouble.pop(update.resource, None)
        if isinstance(update, Changed):
            # Before reading the store: a change from now on wakes us again.
            self._watchers[update.resource].taken()
            log.debug(
                logfmt(
                    {"event": "discovery-update", "resource": update.resource, "via": update.via}
                )
            )
        # A Connected update only clears the trouble: the API answers again.
        self._evaluate()
        self._changed.set()

    def _evaluate(self) -> None:
        nodes_known = self._nodes.listed or self.node_ip is not None
        nodes_trouble = self._trouble.get(Resource("nodes"))
        problems: list[DiscoveryError] = []
        left_out: list[str] = []  # what the cluster sent that could not be used
        changed = False
        for ref, indexes in self._groups.items():
            store = self._services[ref.namespace]
            problem = self._trouble.get(Resource("services", ref.namespace)) or nodes_trouble
            if problem is None and store.listed and nodes_known:
                try:
                    resolution = resolve_chosen(
                        store.parsed(),
                        self._nodes.choose,
                        ref,
                        [str(self.routes[i].service_port) for i in indexes],
                        node_ip=self.node_ip,
                    )
                except DiscoveryError as exc:
                    problem = exc
                else:
                    self._resolved.add(ref)
                    left_out.extend(resolution.problems)
                    for index, route_target in zip(indexes, resolution.routes, strict=True):
                        self._node_ports[index] = route_target.port.node_port or 0
                        changed |= self._take(index, ref, route_target, resolution.choice)
            if problem is not None and str(problem) not in map(str, problems):
                problems.append(problem)
        if changed:
            self._schedule_save()
        self._problem = problems[0] if problems else None
        if problems:
            text = "; ".join(str(problem) for problem in problems)
            if self._state_note:
                self._set_status(True, f"{self._state_note}: {text}")
            elif len(self._current) == len(self._indexes):
                self._set_status(True, f"{text}; forwarding to the last known targets")
            else:
                self._set_status(True, f"waiting for a target: {text}")
            return
        if len(self._resolved) < len(self._groups):
            return  # a collection has not been listed yet
        self._state_note = ""
        # Nodes the cluster sent in a shape that cannot be used are left out, and said so.
        left_out = list(dict.fromkeys(left_out))
        self._set_status(bool(left_out), self._following_text(left_out))

    def _take(
        self, index: int, ref: ServiceRef, route_target: RouteTarget, choice: NodeChoice | None
    ) -> bool:
        """A route's targets as resolved now: handed on and logged if new; True if so."""
        targets = route_target.targets
        previous = self._current.get(index)
        if previous == targets:
            return False
        self._current[index] = targets
        self._apply(index)
        route = self.routes[index]
        fields: dict[str, object] = {
            "event": "target-change" if previous is not None else "target",
            **self._cluster_field(),
            "listen": route.listen,
        }
        if route.sni:
            fields["sni"] = ",".join(route.sni)
        fields |= {
            "service": ref,
            "port": route_target.port_ref,
            "node_port": route_target.port.node_port,
            "targets": targets_text(targets),
        }
        if self.node_ip is None:
            # Counts, not lists: a big cluster's nodes would make kilobytes of line.
            counts = self._nodes.counts
            fields["ready_nodes"] = counts.candidates
            fields["nodes"] = counts.nodes
        if previous is not None:
            fields["was"] = targets_text(previous)
        fields["why"] = choice.reason if choice is not None else "--node-ip given"
        log.info(logfmt(fields))
        return True

    def _following_text(self, problems: Sequence[str] = ()) -> str:
        return following_text(self.routes, self._groups, self._current, problems)

    def _set_status(self, degraded: bool, message: str) -> None:
        if self.status == DiscoveryStatus(degraded, message):
            return
        was_degraded = self.status.degraded
        self.status = DiscoveryStatus(degraded, message)
        if degraded:
            log.warning(
                logfmt({"event": "discovery-degraded", **self._cluster_field(), "reason": message})
            )
        elif was_degraded:
            log.info(logfmt({"event": "discovery-ok", **self._cluster_field(), "msg": message}))
        for listener in self.status_listeners:
            listener(self.status)
        if self._sink is not None:
            self._sink.source_status(self._note())

    def _note(self) -> str | None:
        """What the service's status line says about discovery: only that it is degraded."""
        return f"degraded: {self.status.message}" if self.status.degraded else None

    # --- handing changes on

    def _apply(self, index: int) -> None:
        """Hand one route's targets to the forwarder: new connections use them at once."""
        if self._sink is None:
            return  # not serving yet: start() fills the routes in
        resolved = [literal_target(address) for address in self._current[index]]
        # Discovered and saved addresses passed check_node_address: literals, never names.
        route = route_ids(self.routes)[index]
        self._sink.set_targets(route, [t for t in resolved if t is not None])

    def _schedule_save(self) -> None:
        if self._save_task is None or self._save_task.done():
            self._save_task = asyncio.get_running_loop().create_task(self._save())

    async def _save(self) -> None:
        saved: dict[int, tuple[Address, ...]] = {}
        loop = asyncio.get_running_loop()
        while saved != self._current:
            saved = dict(self._current)
            snapshot = state.SavedState(
                self.config.service,
                time.time(),
                tuple(
                    state.SavedRoute(
                        str(self.routes[i].listen),
                        str(self.routes[i].service_port),
                        self._node_ports.get(i, 0),
                        targets,
                        route_service(self.routes[i]),
                    )
                    for i, targets in saved.items()
                ),
            )
            try:
                await loop.run_in_executor(None, state.save, self.state_file, snapshot)
            except OSError as exc:
                log.warning(
                    logfmt(
                        {
                            "event": "state-not-saved",
                            "file": self.state_file,
                            "error": exc.strerror or exc,
                            "msg": "a restart will wait for the API (--state-dir)",
                        }
                    )
                )
                return
