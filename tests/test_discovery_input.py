"""Hostile input at discovery's boundaries, pure: the cluster's objects, node addresses
(from the API, --node-ip, the state file), and state files. Whatever comes in, the model
raises only its own error, and nothing that is no target becomes one."""

from __future__ import annotations

import copy
import ipaddress
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyforward.config.addresses import Address
from pyforward.discovery import state
from pyforward.discovery.errors import BadObject, DiscoveryError
from pyforward.discovery.hostinfo import is_local_address
from pyforward.discovery.model import (
    HostIdentity,
    parse_node,
    parse_nodes,
    parse_service,
    parse_services,
    resolve,
)
from pyforward.discovery.nodeaddress import check_node_address
from pyforward.discovery.options import ServiceRef, parse_node_ip
from tests.kubeapi import node, service

GATEWAY = ServiceRef("istio-system", "istio-ingressgateway")
# A host whose bind test says yes to everything, as it does for 0.0.0.0 and multicast.
BINDS_ANYTHING = HostIdentity(frozenset({"elsewhere"}), lambda address: True)

NO_TARGET = [
    ("evil.invalid", "is not an IP address"),
    ("localhost", "is not an IP address"),
    ("", "is not an IP address"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("0.1.2.3", "0.0.0.0/8"),
    ("255.255.255.255", "broadcast"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::1%lo", "zone"),
]


def gateway(**https: object) -> dict[str, Any]:
    obj = service()
    for port in obj["spec"]["ports"]:
        if port["name"] == "https":
            port.update(https)
    return obj


# --- node addresses


@pytest.mark.parametrize(("address", "why"), NO_TARGET)
def test_a_node_address_that_is_no_target_leaves_the_node_out_and_says_why(
    address: str, why: str
) -> None:
    cluster = parse_nodes([node("bad", address), node("good", "127.0.0.2")])
    assert [n.name for n in cluster.objects] == ["good"]
    [rejected] = cluster.rejected
    assert rejected.name == "bad"
    assert rejected.reason.startswith(f"node bad: InternalIP {json.dumps(address)} ")
    assert why in rejected.reason
    # Even when the bind test takes it for this host, it never ranks first: it is no target.
    result = resolve(
        parse_services([service()]), cluster, GATEWAY, ["https"], host=BINDS_ANYTHING, node_ip=None
    )
    assert result.routes[0].targets == (Address("127.0.0.2", 31443),)
    assert result.problems == (rejected.reason,)


def test_a_route_whose_only_node_is_no_target_is_an_error_that_says_so() -> None:
    cluster = parse_nodes([node("bad", "evil.invalid")])
    with pytest.raises(DiscoveryError) as raised:
        resolve(parse_services([service()]), cluster, GATEWAY, ["https"], host=BINDS_ANYTHING,
                node_ip=None)  # fmt: skip
    assert str(raised.value) == (
        'no Ready node with an InternalIP: node bad: InternalIP "evil.invalid" is not an IP address'
    )


def test_loopback_stays_a_target_and_ranks_as_this_host() -> None:
    assert check_node_address("127.0.0.1") == "127.0.0.1"
    assert check_node_address("127.3.2.1") == "127.3.2.1"
    assert check_node_address("::1") == "::1"
    assert check_node_address("0:0::1") == "::1"
    assert is_local_address("127.0.0.1")


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "255.255.255.255", "224.0.0.1", "ff02::1"])
def test_addresses_of_no_host_are_not_this_hosts(address: str) -> None:
    # Binding a UDP socket to each of these succeeds; none is an address of this host.
    assert not is_local_address(address)


@pytest.mark.parametrize(("address", "why"), [a for a in NO_TARGET if "IP address" not in a[1]])
def test_node_ip_flag_passes_the_same_rule(address: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_node_ip(address)


@given(st.ip_addresses())
def test_the_address_rule_on_any_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    judged = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    refused = (
        judged.is_unspecified
        or judged.is_multicast
        or judged.is_link_local
        or judged == ipaddress.ip_address("255.255.255.255")
        or (judged.version == 4 and judged in ipaddress.ip_network("0.0.0.0/8"))
    )
    try:
        accepted = check_node_address(str(ip))
    except ValueError:
        assert refused
    else:
        assert not refused
        assert ipaddress.ip_address(accepted) == ip


@given(st.text())
def test_the_address_rule_on_any_text(text: str) -> None:
    try:
        accepted = check_node_address(text)
    except ValueError:
        return
    assert "%" not in accepted
    ipaddress.ip_address(accepted)


# --- ports


@pytest.mark.parametrize(
    ("node_port", "shown"),
    [(True, "true"), (70000, "70000"), (-1, "-1"), ("31443", '"31443"'), (31443.0, "31443.0"),
     (math.inf, "Infinity"), ([31443], "a list")],
)  # fmt: skip
def test_a_node_port_that_is_no_port_is_the_services_fault(node_port: object, shown: str) -> None:
    services = parse_services([gateway(nodePort=node_port)])
    assert services.objects == ()
    message = (
        f"Service istio-system/istio-ingressgateway: port https: nodePort is {shown}, "
        "not a port number (an integer 1-65535)"
    )
    assert [r.reason for r in services.rejected] == [message]
    with pytest.raises(BadObject) as raised:
        resolve(services, parse_nodes([node("a", "127.0.0.1")]), GATEWAY, ["https"],
                host=BINDS_ANYTHING, node_ip=None)  # fmt: skip
    assert str(raised.value) == message


def test_no_node_port_or_zero_is_a_cluster_ip_port_and_port_must_be_one() -> None:
    assert parse_service(gateway(nodePort=None)).ports[2].node_port is None
    assert parse_service(gateway(nodePort=0)).ports[2].node_port is None
    with pytest.raises(BadObject, match="port https: port is true, not a port number"):
        parse_service(gateway(port=True))


def test_a_bad_service_beside_the_gateway_does_not_hide_it() -> None:
    other = service("other")
    other["spec"]["ports"] = 5
    services = parse_services([other, service()])
    assert [s.name for s in services.objects] == ["istio-ingressgateway"]
    assert services.rejected[0].reason == (
        "Service istio-system/other: spec.ports is 5, not a list of objects"
    )


def test_names_that_are_not_kubernetes_names_are_refused() -> None:
    with pytest.raises(BadObject, match=r'a Node named "a\\nforward: x": not a Kubernetes name'):
        parse_node(node("a\nforward: x", "127.0.0.1"))


# --- any JSON at all: only the model's error

JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    # The values the model looks for, so that mutations hit its checks.
    | st.sampled_from(["True", "Ready", "InternalIP", "127.0.0.1", "::1", "https", "TCP"])
)  # fmt: skip
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    """`base` with one to three values, anywhere in it, replaced by any JSON."""
    obj = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        container: Any = obj
        while isinstance(container, dict | list) and container:
            key = (
                draw(st.sampled_from(sorted(container)))
                if isinstance(container, dict)
                else draw(st.integers(0, len(container) - 1))
            )
            if draw(st.booleans()) or not isinstance(container[key], dict | list):
                container[key] = draw(JSON)
                break
            container = container[key]
    return obj


NODES = st.lists(JSON | mutated(node("a", "127.0.0.1")) | mutated(node("b", "::1")), max_size=4)
SERVICES = st.lists(JSON | mutated(service()), max_size=3)


def no_control_characters(*texts: str) -> bool:
    return all(text.isprintable() for text in texts)


@given(JSON | mutated(node("a", "127.0.0.1")))
def test_parse_node_on_any_json_raises_only_bad_object(obj: Any) -> None:
    try:
        parsed = parse_node(obj)
    except BadObject:
        return
    if parsed.internal_ip is not None:
        assert check_node_address(parsed.internal_ip) == parsed.internal_ip
    texts = [text for pair in parsed.addresses for text in pair]
    assert no_control_characters(parsed.name, parsed.ready_detail, *texts)


def test_control_characters_never_reach_a_report_line() -> None:
    forged = node("a", "127.0.0.1")
    forged["status"]["addresses"][1]["address"] = "a\nforward: *:443 -> 203.0.113.9:1"
    with pytest.raises(BadObject, match=r'Hostname address "a\\nforward.*holds a control'):
        parse_node(forged)
    chatty = node("b", "127.0.0.1", ready=False)
    chatty["status"]["conditions"][0]["message"] = "network\nnot ready\x1b[2J"
    assert parse_node(chatty).ready_detail == "KubeletNotReady: network not ready [2J"


@given(JSON | mutated(service()))
def test_parse_service_on_any_json_raises_only_bad_object(obj: Any) -> None:
    try:
        parsed = parse_service(obj)
    except BadObject:
        return
    assert no_control_characters(parsed.name, parsed.namespace, parsed.type)
    for port in parsed.ports:
        assert no_control_characters(port.name, port.protocol)
        assert type(port.port) is int and 1 <= port.port <= 65535
        assert port.node_port is None or (type(port.node_port) is int and port.node_port >= 1)
        assert port.node_port is None or port.node_port <= 65535


@given(SERVICES, NODES)
def test_resolve_on_any_collections_raises_only_discovery_errors(
    services: list[Any], nodes: list[Any]
) -> None:
    parsed_services, parsed_nodes = parse_services(services), parse_nodes(nodes)
    assert len(parsed_nodes.objects) + len(parsed_nodes.rejected) == len(nodes)
    try:
        result = resolve(
            parsed_services, parsed_nodes, GATEWAY, ["https"], host=BINDS_ANYTHING, node_ip=None
        )
    except DiscoveryError:
        return
    for target in result.routes[0].targets:
        assert target.host is not None
        assert check_node_address(target.host) == target.host
        assert 1 <= target.port <= 65535


# --- the state file

VALID_STATE = {
    "version": 1,
    "service": "istio-system/istio-ingressgateway",
    "saved_at": 1700000000.0,
    "routes": [
        {
            "listen": "*:443",
            "service_port": "https",
            "node_port": 31443,
            "targets": ["127.0.0.1:31443", "[::1]:31443"],
        }
    ],
}


def with_change(path: tuple[str | int, ...], value: object) -> str:
    data: Any = copy.deepcopy(VALID_STATE)
    container = data
    for key in path[:-1]:
        container = container[key]
    container[path[-1]] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (with_change(("routes",), 5), "routes: 5 is not a list"),
        (with_change(("saved_at",), None), "saved_at: null is not a number"),
        (with_change(("routes", 0, "targets"), [5]), "routes[0].target 5 is not text"),
        (
            with_change(("routes", 0, "node_port"), 10**999).replace("1" + "0" * 999, "1e999"),
            "routes[0].node_port: Infinity is not an integer",
        ),
        (
            with_change(("routes", 0, "targets"), ["evil.invalid:31443"]),
            'routes[0].target "evil.invalid:31443": is not an IP address',
        ),
        (
            with_change(("routes", 0, "targets"), ["0.0.0.0:31443"]),
            'routes[0].target "0.0.0.0:31443": is the unspecified address',
        ),
        (
            with_change(("routes", 0, "targets"), ["127.0.0.1:1"]),
            'routes[0].target "127.0.0.1:1" is not on nodePort 31443',
        ),
        (with_change(("routes", 0, "targets"), []), "routes[0].targets: empty"),
        (with_change(("routes", 0, "node_port"), True), "routes[0].node_port: true is not an"),
        (with_change(("version",), True), "not a version 1 or 2 state file (version true)"),
        (with_change(("saved_at",), 1e300), "saved_at: 1e+300 is not a time"),
        (with_change(("service",), "x"), "service: expected NAMESPACE/NAME"),
        ("[" * 100_000, "not JSON"),
        ("[]", "not a JSON object"),
    ],
)
def test_a_bad_state_file_is_one_error_that_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(state.BadStateFile) as raised:
        state.decode(text)
    assert message in str(raised.value)


def test_a_state_file_that_is_too_big_or_not_text_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(state.BadStateFile, match="not UTF-8"):
        state.load(path)
    path.write_bytes(b" " * (state.MAX_FILE_BYTES + 1))
    with pytest.raises(state.BadStateFile, match="larger than 8 MiB"):
        state.load(path)
    directory = tmp_path / "dir.json"
    directory.mkdir()
    with pytest.raises(state.BadStateFile, match="cannot be read"):
        state.load(directory)


STATE_TEXT = (
    st.text(max_size=40)
    | JSON.map(json.dumps)
    | mutated(VALID_STATE).map(lambda data: json.dumps(data, allow_nan=True))
)


@given(STATE_TEXT)
def test_decode_on_any_text_raises_only_bad_state_file(text: str) -> None:
    try:
        saved = state.decode(text)
    except state.BadStateFile:
        return
    time.gmtime(saved.saved_at)  # a time, as the status line shows it
    for route in saved.routes:
        assert route.targets
        for target in route.targets:
            assert target.host is not None
            assert check_node_address(target.host) == target.host
            assert target.port == route.node_port
            assert 1 <= target.port <= 65535


ROUTES = st.builds(
    lambda port, hosts, service: state.SavedRoute(
        "*:443", "https", port, tuple(Address(host, port) for host in hosts), service
    ),
    st.integers(1, 65535),
    st.lists(st.sampled_from(["127.0.0.1", "127.0.0.2", "::1", "10.0.0.5"]), min_size=1),
    st.sampled_from([GATEWAY, ServiceRef("kube-system", "traefik")]),
)


@given(st.floats(0, 4e9), st.lists(ROUTES, max_size=3))
def test_what_is_saved_is_read_back(saved_at: float, routes: list[state.SavedRoute]) -> None:
    saved = state.SavedState(GATEWAY, round(saved_at, 3), tuple(routes))
    assert state.decode(state.encode(saved)) == saved
