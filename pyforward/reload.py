"""Reloading the configuration in place (SIGHUP, `systemctl reload`).

What can change without dropping a connection is applied: a route's targets and its
timeouts and keepalive (for connections accepted from then on; connections in flight keep
their target), and the log level. Adding or removing a listener, or changing a setting the
listeners or the event loop were built with, needs a restart: the reload says which, and
keeps the rest running as it was. `plan` is pure; `apply` touches the running forwarder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from pyforward.addresses import Address
from pyforward.connection import Policy, ResolvedTarget
from pyforward.server import Forwarder
from pyforward.settings import LogLevel, Route, Settings

# Settings fixed at start: the relay and loop chosen, sockets built with the backlog, the
# accept loop's cap, and the shutdown deadline.
RESTART_KEYS = ("relay", "loop", "backlog", "max_connections", "shutdown_timeout")


@dataclass(frozen=True)
class ReloadPlan:
    changed_routes: tuple[Route, ...]  # new routes whose listen address exists already
    added: tuple[Address, ...]  # listen addresses only in the new settings
    removed: tuple[Address, ...]  # listen addresses only in the old settings
    restart_keys: tuple[str, ...]  # other settings that changed and need a restart
    log_level: LogLevel | None  # the new level, when it changed

    @property
    def needs_restart(self) -> tuple[str, ...]:
        """What this reload could not apply, in words for a log line."""
        return (
            *(f"listen {address} added" for address in self.added),
            *(f"listen {address} removed" for address in self.removed),
            *self.restart_keys,
        )


def plan(old: Settings, new: Settings) -> ReloadPlan:
    """Compare the running settings with freshly loaded ones."""
    old_routes = {route.listen: route for route in old.routes}
    new_routes = {route.listen: route for route in new.routes}
    changed = tuple(
        route
        for listen, route in new_routes.items()
        if listen in old_routes and old_routes[listen] != route
    )
    return ReloadPlan(
        changed_routes=changed,
        added=tuple(listen for listen in new_routes if listen not in old_routes),
        removed=tuple(listen for listen in old_routes if listen not in new_routes),
        restart_keys=tuple(key for key in RESTART_KEYS if getattr(old, key) != getattr(new, key)),
        log_level=new.log_level if new.log_level != old.log_level else None,
    )


def apply(
    forwarder: Forwarder,
    reload_plan: ReloadPlan,
    targets: dict[Address, list[ResolvedTarget]],
) -> None:
    """Put a plan into effect; `targets` holds the resolved targets of each changed route."""
    by_listen = {route.listen: route for route in reload_plan.changed_routes}
    for listener in forwarder.listeners:
        route = by_listen.get(listener.route.listen)
        if route is None:
            continue
        listener.route = route
        listener.targets = targets[route.listen]
        listener.policy = Policy(route.connect_timeout, route.idle_timeout, route.keepalive)
    if reload_plan.log_level is not None:
        logging.getLogger("pyforward").setLevel(reload_plan.log_level.value.upper())


def applied(old: Settings, reload_plan: ReloadPlan) -> Settings:
    """The settings in force after `apply`: the old ones with what the plan changed."""
    by_listen = {route.listen: route for route in reload_plan.changed_routes}
    return replace(
        old,
        routes=tuple(by_listen.get(route.listen, route) for route in old.routes),
        log_level=reload_plan.log_level or old.log_level,
    )
