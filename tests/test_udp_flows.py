"""The UDP flow rules (pure): expiry in order of activity, the cap and its eviction, per-source
limits; and the settings of a UDP route."""

from __future__ import annotations

import pytest

from pyforward.config.model import Transport
from pyforward.config.settings import build_settings
from pyforward.datagram.flows import EVICTION_SCAN, FlowTable
from pyforward.errors import ConfigError, StartupError
from pyforward.obs.reasons import CloseReason

Key = tuple[str, int]


def _add(table: FlowTable[Key], port: int, now: float, source: str = "10.0.0.1") -> None:
    admission = table.admission(source)
    assert admission.refused is None and admission.evict is None
    table.add((source, port), source, now)


def _assure(table: FlowTable[Key], key: Key, now: float) -> None:
    flow = table.get(key)
    assert flow is not None
    flow.counts.datagrams_up, flow.counts.datagrams_down = 2, 1
    table.touch(flow, now)


def test_flows_expire_after_the_idle_timeout_counted_from_their_last_datagram() -> None:
    table: FlowTable[Key] = FlowTable(max_flows=10, idle_timeout=30.0)
    _add(table, 1, now=0.0)
    _add(table, 2, now=5.0)
    first = table.get(("10.0.0.1", 1))
    assert first is not None
    table.touch(first, now=20.0)  # traffic keeps the first alive past the second
    assert table.expired(34.9) == []
    assert [flow.key for flow in table.expired(35.0)] == [("10.0.0.1", 2)]
    assert [flow.key for flow in table.expired(50.0)] == [("10.0.0.1", 2), ("10.0.0.1", 1)]
    assert table.next_expiry() == 35.0


def test_at_the_cap_the_least_recently_active_unassured_flow_is_evicted() -> None:
    table: FlowTable[Key] = FlowTable(max_flows=3, idle_timeout=60.0)
    for port in (1, 2, 3):
        _add(table, port, now=float(port))
    _assure(table, ("10.0.0.1", 1), now=4.0)
    admission = table.admission("10.0.0.9")
    assert admission.refused is None
    assert admission.evict is not None and admission.evict.key == ("10.0.0.1", 2)


def test_when_every_flow_is_assured_a_new_client_is_refused() -> None:
    table: FlowTable[Key] = FlowTable(max_flows=2, idle_timeout=60.0)
    for port in (1, 2):
        _add(table, port, now=0.0)
        _assure(table, ("10.0.0.1", port), now=1.0)
    assert table.admission("10.0.0.9").refused is CloseReason.FLOW_LIMIT
    table.remove(table.expired(100.0)[0])
    assert table.admission("10.0.0.9").refused is None


def test_eviction_looks_only_so_far_past_the_oldest_flow() -> None:
    table: FlowTable[Key] = FlowTable(max_flows=EVICTION_SCAN + 1, idle_timeout=60.0)
    for port in range(EVICTION_SCAN + 1):
        _add(table, port, now=float(port))
    for port in range(EVICTION_SCAN):
        _assure(table, ("10.0.0.1", port), now=float(port))
    # The one unassured flow is the most recently active: past the scan, so refused.
    newest = table.get(("10.0.0.1", EVICTION_SCAN))
    assert newest is not None
    table.touch(newest, now=1000.0)
    assert table.admission("10.0.0.9").refused is CloseReason.FLOW_LIMIT


def test_per_source_counts_flows_of_one_ip_and_frees_them_on_remove() -> None:
    table: FlowTable[Key] = FlowTable(max_flows=10, idle_timeout=60.0, per_source=2)
    _add(table, 1, 0.0)
    _add(table, 2, 0.0)
    assert table.admission("10.0.0.1").refused is CloseReason.SOURCE_LIMIT
    assert table.admission("10.0.0.2").refused is None
    flow = table.get(("10.0.0.1", 1))
    assert flow is not None
    table.remove(flow)
    table.remove(flow)  # twice is harmless
    assert table.admission("10.0.0.1").refused is None
    assert len(table) == 1


def test_a_udp_route_from_flags_env_and_file() -> None:
    settings = build_settings(
        {"listen": "127.0.0.1:53", "target": ["127.0.0.1:5353"], "protocol": "udp"}, {}
    )
    (route,) = settings.routes
    assert route.protocol is Transport.UDP
    assert (route.udp_idle_timeout, route.udp_max_flows) == (120.0, 4096)
    settings = build_settings(
        {},
        {"PYFORWARD_UDP_IDLE_TIMEOUT": "5", "PYFORWARD_UDP_MAX_FLOWS": "10"},
        {
            "route": [
                {"listen": "443", "target": "10.0.0.5:32653"},
                {"listen": "443", "target": "10.0.0.5:31443", "protocol": "udp"},
            ]
        },
    )
    tcp, udp = settings.routes
    assert tcp.protocol is Transport.TCP and udp.protocol is Transport.UDP
    assert (udp.udp_idle_timeout, udp.udp_max_flows) == (5.0, 10)


def test_two_udp_routes_on_one_port_are_refused_as_tcp_ones_are() -> None:
    with pytest.raises(ConfigError, match="listen address given twice: \\*:53"):
        build_settings(
            {},
            {},
            {"protocol": "udp", "route": [{"listen": "53", "target": "127.0.0.1:1"}] * 2},
        )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"protocol": "sctp"}, "--protocol: expected one of tcp, udp, got 'sctp'"),
        ({"protocol": "udp", "proxy_protocol": "v2"}, "proxy_protocol (route 53) is for TCP"),
        ({"protocol": "udp", "keepalive": True}, "keepalive (route 53) is for TCP routes"),
        ({"udp_max_flows": 0}, "--udp-max-flows: expected a whole number of 1 or more, got 0"),
        ({"udp_idle_timeout": 0.0}, "--udp-idle-timeout: expected more than 0 seconds"),
    ],
)
def test_bad_udp_settings_get_one_line_naming_the_flag(
    flags: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace(")", "\\)")):
        build_settings({"listen": "53", "target": ["127.0.0.1:1"], **flags}, {})


def test_passed_sockets_go_to_the_route_of_their_kind_on_one_port() -> None:
    from pyforward.systemd.activation import BoundSocket, RouteAddresses, assign  # noqa: PLC0415

    hosts = frozenset({"127.0.0.1"})
    routes = [RouteAddresses(hosts, 443), RouteAddresses(hosts, 443, datagram=True)]
    stream = BoundSocket(3, "https", "127.0.0.1", 443)
    datagram = BoundSocket(4, "http3", "127.0.0.1", 443, datagram=True)
    assert assign(routes, [datagram, stream]) == [[3], [4]]
    with pytest.raises(StartupError, match="ListenDatagram= for a UDP route"):
        assign(routes[:1] * 2, [datagram])
