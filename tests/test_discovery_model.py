"""The pure parts of discovery: objects to targets, options, state file, health, backoff."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from pyforward.config.addresses import Address
from pyforward.config.model import Route
from pyforward.config.settings import build_settings, parse_config_text
from pyforward.discovery import state
from pyforward.discovery.errors import (
    BadObject,
    NoNodePort,
    NoReadyNode,
    PortNotFound,
    ServiceNotFound,
)
from pyforward.discovery.kubeconfig import candidate_sources, find_kubeconfig
from pyforward.discovery.model import (
    HostIdentity,
    Node,
    Parsed,
    load_balancer_conflicts,
    parse_node,
    parse_nodes,
    parse_service,
    parse_services,
    resolve,
)
from pyforward.discovery.options import ServiceRef, parse_port_ref, parse_service_ref
from pyforward.discovery.watcher import backoff_delays
from pyforward.engine.health import TargetHealth
from pyforward.errors import ConfigError
from tests.kubeapi import node, service


def _port(route: Route) -> int:
    assert isinstance(route.listen, Address)  # discovered routes listen on TCP
    return route.listen.port


GATEWAY = ServiceRef("istio-system", "istio-ingressgateway")
NOBODY = HostIdentity(frozenset({"elsewhere"}), lambda address: False)


NO_NODES: Parsed[Node] = Parsed(())


def nodes(*specs: tuple[str, str, bool]) -> Parsed[Node]:
    return parse_nodes([node(name, ip, ready=ready) for name, ip, ready in specs])


def test_parse_service_keeps_ports_and_node_ports() -> None:
    parsed = parse_service(service())
    assert parsed.ref == GATEWAY
    assert parsed.type == "LoadBalancer"
    assert [(p.name, p.port, p.node_port) for p in parsed.ports] == [
        ("status-port", 15021, 31021),
        ("http2", 80, 31080),
        ("https", 443, 31443),
    ]


def test_parse_objects_without_a_name_are_the_clusters_fault() -> None:
    with pytest.raises(BadObject, match=r"Service without metadata\.name"):
        parse_service({"metadata": {}})
    with pytest.raises(BadObject, match=r"Node without metadata\.name"):
        parse_node({})


def test_node_readiness_and_reason() -> None:
    ready, down = nodes(("a", "10.0.0.1", True), ("b", "10.0.0.2", False)).objects
    assert ready.ready and ready.internal_ip == "10.0.0.1"
    assert not down.ready
    assert down.ready_detail == "KubeletNotReady: container runtime network not ready"
    assert not parse_node({"metadata": {"name": "c"}}).ready


def test_resolve_by_name_and_by_number() -> None:
    cluster = nodes(("a", "10.0.0.1", True))
    result = resolve(
        parse_services([service()]), cluster, GATEWAY, ["https", "80"], host=NOBODY, node_ip=None
    )
    assert [r.targets for r in result.routes] == [
        (Address("10.0.0.1", 31443),),
        (Address("10.0.0.1", 31080),),
    ]


def test_this_host_first_by_name_then_by_address_then_by_name_order() -> None:
    cluster = nodes(("c", "10.0.0.3", True), ("b", "10.0.0.2", True), ("a", "10.0.0.1", True))
    svc = parse_services([service()])
    by_address = HostIdentity(frozenset({"x"}), lambda address: address == "10.0.0.3")
    result = resolve(svc, cluster, GATEWAY, ["https"], host=by_address, node_ip=None)
    assert result.choice is not None
    assert [c.node for c in result.choice.candidates] == ["c", "a", "b"]
    assert "10.0.0.3 is one of this host's addresses" in result.choice.reason
    by_name = HostIdentity(frozenset({"b"}), lambda address: address == "10.0.0.3")
    result = resolve(svc, cluster, GATEWAY, ["https"], host=by_name, node_ip=None)
    assert result.choice is not None
    assert [c.node for c in result.choice.candidates] == ["b", "c", "a"]
    assert "node name matches" in result.choice.reason
    result = resolve(svc, cluster, GATEWAY, ["https"], host=NOBODY, node_ip=None)
    assert result.choice is not None
    assert [c.node for c in result.choice.candidates] == ["a", "b", "c"]
    assert result.choice.reason == "node a (10.0.0.1): no node is this host; first by name"


def test_not_ready_nodes_are_skipped_and_node_ip_overrides() -> None:
    cluster = nodes(("a", "10.0.0.1", False), ("b", "10.0.0.2", True))
    svc = parse_services([service()])
    result = resolve(svc, cluster, GATEWAY, ["https"], host=NOBODY, node_ip=None)
    assert result.routes[0].targets == (Address("10.0.0.2", 31443),)
    assert result.choice is not None and result.choice.skipped[0][0] == "a"
    result = resolve(svc, NO_NODES, GATEWAY, ["https"], host=NOBODY, node_ip="192.0.2.1")
    assert result.routes[0].targets == (Address("192.0.2.1", 31443),)


def test_errors_name_the_problem() -> None:
    svc = parse_services([service(), service("api", type="ClusterIP")])
    with pytest.raises(
        ServiceNotFound,
        match=r"NodePort/LoadBalancer Services in istio-system: istio-ingressgateway$",
    ):
        resolve(
            svc, NO_NODES, ServiceRef("istio-system", "gw"), ["https"], host=NOBODY, node_ip=None
        )
    with pytest.raises(
        ServiceNotFound, match="namespace kube-system has no NodePort or LoadBalancer"
    ):
        resolve(
            Parsed(()),
            NO_NODES,
            ServiceRef("kube-system", "traefik"),
            ["web"],
            host=NOBODY,
            node_ip=None,
        )
    with pytest.raises(PortNotFound, match="no port numbered '8443'"):
        resolve(svc, NO_NODES, GATEWAY, ["8443"], host=NOBODY, node_ip=None)
    plain = parse_services([service(type="ClusterIP", ports=(("https", 443, None),))])
    with pytest.raises(NoNodePort, match="is of type ClusterIP: port https"):
        resolve(plain, NO_NODES, GATEWAY, ["https"], host=NOBODY, node_ip=None)
    with pytest.raises(NoReadyNode, match="the cluster lists no nodes"):
        resolve(svc, NO_NODES, GATEWAY, ["https"], host=NOBODY, node_ip=None)
    with pytest.raises(NoReadyNode, match="a not Ready"):
        resolve(svc, nodes(("a", "10.0.0.1", False)), GATEWAY, ["https"], host=NOBODY, node_ip=None)


def test_load_balancer_conflicts() -> None:
    lb = service()
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}
    services = [parse_service(lb), parse_service(service("np", type="NodePort"))]
    warnings = load_balancer_conflicts(services, [443, 8080])
    assert len(warnings) == 1
    assert (
        "istio-system/istio-ingressgateway exposes port 443, load balancer address 10.0.0.1"
        in warnings[0]
    )
    assert load_balancer_conflicts(services, [8443]) == []


def test_option_parsers() -> None:
    assert parse_service_ref("kube-system/traefik") == ServiceRef("kube-system", "traefik")
    assert parse_port_ref("0443") == "443"
    assert parse_port_ref(80) == "80"
    for bad in ("traefik", "a/b/c", "/x", "UPPER/x"):
        with pytest.raises(ValueError):
            parse_service_ref(bad)
    for bad_port in ("0", "https!", "a-very-long-port-name"):
        with pytest.raises(ValueError):
            parse_port_ref(bad_port)


def test_settings_presets_and_routes() -> None:
    istio = build_settings({"discover": True, "preset": "istio"}, {})
    assert [(str(r.listen), r.service_port, r.targets) for r in istio.routes] == [
        ("*:443", "https", ()),
        ("*:80", "http2", ()),
    ]
    assert istio.discovery is not None and istio.discovery.service == GATEWAY
    traefik = build_settings(
        {"discover": True}, {"PYFORWARD_PRESET": "traefik", "STATE_DIRECTORY": "/run/x:/run/y"}
    )
    assert [r.service_port for r in traefik.routes] == ["websecure", "web"]
    assert traefik.discovery is not None
    assert traefik.discovery.service == ServiceRef("kube-system", "traefik")
    assert traefik.discovery.state_dir == "/run/x"
    one = build_settings({"discover": True, "preset": "traefik", "listen": "8443"}, {})
    assert [(_port(r), r.service_port) for r in one.routes] == [(8443, "websecure")]
    mixed = build_settings({"discover": True, "service_port": "http2"}, {})
    assert [(_port(r), r.service_port) for r in mixed.routes] == [(443, "http2")]


def test_config_file_routes_with_service_ports() -> None:
    text = """
    discover = true
    service = "istio-system/gw"
    node_ip = "10.0.0.5"
    [[route]]
    listen = "8443"
    service_port = "https"
    [[route]]
    listen = "8080"
    service_port = 80
    [[route]]
    listen = "9000"
    target = "127.0.0.1:9001"
    """
    settings = build_settings({}, {}, parse_config_text(text, "f.toml"), "f.toml")
    assert [(_port(r), r.service_port, len(r.targets)) for r in settings.routes] == [
        (8443, "https", 0),
        (8080, "80", 0),
        (9000, None, 1),
    ]
    assert settings.discovery is not None and settings.discovery.node_ip == "10.0.0.5"


def test_settings_errors() -> None:
    with pytest.raises(ConfigError, match="needs a target \\(--target, or --discover\\)"):
        build_settings({"listen": "443"}, {})
    with pytest.raises(ConfigError, match="every route already has a target"):
        build_settings({"discover": True, "listen": "443", "target": ["10.0.0.1:1"]}, {})
    with pytest.raises(ConfigError, match="PYFORWARD_PRESET: expected one of istio, traefik"):
        build_settings({"discover": True}, {"PYFORWARD_PRESET": "nginx"})


def test_state_round_trip_and_bad_files(tmp_path: Path) -> None:
    path = state.state_path(tmp_path / "new-dir", GATEWAY)
    saved = state.SavedState(
        GATEWAY,
        1700000000.0,
        (
            state.SavedRoute(
                "*:443",
                "https",
                31443,
                (Address("10.0.0.1", 31443), Address("::1", 31443)),
                GATEWAY,
            ),
        ),
    )
    assert state.load(path) is None
    state.save(path, saved)
    assert state.load(path) == saved
    found = saved.route_for("*:443", "https", GATEWAY)
    assert found is not None
    assert found.targets == (Address("10.0.0.1", 31443), Address("::1", 31443))
    assert saved.route_for("*:80", "http2", GATEWAY) is None
    path.write_text("{not json")
    with pytest.raises(state.BadStateFile, match="not JSON"):
        state.load(path)
    path.write_text(
        '{"version": 1, "service": "istio-system/istio-ingressgateway", "saved_at": 1, '
        '"routes": [{"listen": "*:443"}]}'
    )
    with pytest.raises(state.BadStateFile, match=r"routes\[0\]\.node_port: null is not an integer"):
        state.load(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary files left"


def test_health_orders_down_targets_last_for_a_while() -> None:
    health = TargetHealth(down_for=10)
    targets = ["a", "b", "c"]
    assert health.order(targets, 0) == targets
    assert health.failed("a", 100) is True
    assert health.failed("a", 101) is False  # already down: not reported again
    assert health.order(targets, 105) == ["b", "c", "a"]
    assert health.order(targets, 111.5) == targets  # the down time is over
    health.failed("b", 200)
    health.failed("a", 201)
    assert health.order(targets, 202) == ["c", "a", "b"] or health.order(targets, 202) == [
        "c",
        "b",
        "a",
    ]
    assert health.succeeded("a") is True
    assert health.order(targets, 203) == ["a", "c", "b"]
    health.retain(["a", "c"])
    assert health.order(targets, 204) == targets


def test_backoff_grows_to_the_cap_with_jitter() -> None:
    delays = list(itertools.islice(backoff_delays(0.5, 4.0, rng=lambda: 1.0), 6))
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    low = list(itertools.islice(backoff_delays(0.5, 4.0, rng=lambda: 0.0), 3))
    assert low == [0.25, 0.5, 1.0]


def test_kubeconfig_order(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "KUBECONFIG": "/a:/b", "CREDENTIALS_DIRECTORY": "/run/creds"}
    assert [(s.origin, s.path) for s in candidate_sources(None, env)] == [
        ("$KUBECONFIG", "/a:/b"),
        ("~/.kube/config", f"{tmp_path}/.kube/config"),
        ("k3s", "/etc/rancher/k3s/k3s.yaml"),
        ("systemd credential", "/run/creds/kubeconfig"),
        ("in-cluster", None),
    ]
    assert [s.origin for s in candidate_sources("/x", env)] == ["--kubeconfig"]
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text("{}")
    found = find_kubeconfig(None, {"HOME": str(tmp_path), "KUBECONFIG": f"{tmp_path}/missing"})
    assert str(found) == f"{tmp_path}/.kube/config (~/.kube/config)"
