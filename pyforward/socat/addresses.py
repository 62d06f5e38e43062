"""socat's address types: which keywords pyforward takes, the parser of each, and the
one-line reason for those it refuses. Pure."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace

from pyforward.config.addresses import host_port, parse_target
from pyforward.errors import ConfigError
from pyforward.socat.lexer import RawAddress
from pyforward.socat.model import Connect, ConnectAddress, Family, Listen, ListenAddress
from pyforward.socat.unix import (
    UNIX_CONNECT_TYPES,
    UNIX_LISTEN_OPTIONS,
    UNIX_LISTEN_TYPES,
    UnixConnectAddress,
    UnixListenAddress,
    listen_mode,
    owner_name,
    unix_name,
)
from pyforward.socat.values import (
    ALWAYS_ON,
    CONNECT_OPTIONS,
    LISTEN_OPTIONS,
    RETRY_OPTIONS,
    UNIX_CONNECT_OPTIONS,
    check_bind,
    check_family,
    check_params,
    is_on,
    needs_value,
    option_name,
    parse_backlog,
    parse_bind,
    parse_max_children,
    parse_port,
    parse_timeout,
    range_network,
    reason_of,
    unbracket,
    updated_retry,
)

# --- address types

LISTEN_TYPES = {
    "tcp-listen": Family.ANY,
    "tcp-l": Family.ANY,
    "inet-listen": Family.ANY,
    "inet-l": Family.ANY,
    "tcp4-listen": Family.IPV4,
    "tcp4-l": Family.IPV4,
    "inet4-listen": Family.IPV4,
    "inet4-l": Family.IPV4,
    "tcp6-listen": Family.IPV6,
    "tcp6-l": Family.IPV6,
    "inet6-listen": Family.IPV6,
    "inet6-l": Family.IPV6,
}
CONNECT_TYPES = {
    "tcp": Family.ANY,
    "tcp-connect": Family.ANY,
    "inet": Family.ANY,
    "tcp4": Family.IPV4,
    "tcp4-connect": Family.IPV4,
    "inet4": Family.IPV4,
    "tcp6": Family.IPV6,
    "tcp6-connect": Family.IPV6,
    "inet6": Family.IPV6,
}

# Address types socat knows that pyforward refuses, by the first matching prefix.
_TLS = "pyforward forwards TCP; TLS passes through untouched"
_NOT_FILES = "pyforward forwards between TCP sockets, not files or terminals"
_REFUSED_PREFIXES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("openssl", "ssl", "dtls"), _TLS),
    (("udp",), "pyforward-socat takes UDP-LISTEN or UDP-RECVFROM, and a UDP:HOST:PORT target"),
    (("sctp", "dccp"), "pyforward forwards TCP only"),
    (
        ("unix", "abstract"),
        "pyforward forwards UNIX stream sockets (UNIX-LISTEN, UNIX-CONNECT), not datagrams",
    ),
    (("exec", "system", "shell"), "pyforward connects to a TCP target, it does not run programs"),
    (("proxy", "socks"), "pyforward connects to its target directly, not through a proxy"),
    (
        ("stdio", "stdin", "stdout", "stderr", "fd", "open", "gopen", "file", "creat", "pipe"),
        _NOT_FILES,
    ),
    (("fifo", "echo", "pty", "readline", "named", "tun", "interface", "if"), "not TCP"),
    (("ip", "socket", "datagram", "dgram", "sendto", "vsock", "posixmq"), "not TCP"),
    (("accept-fd", "socketpair"), "not TCP"),
)
# Every address keyword of socat 1.7 and 1.8, aliases included.
_SOCAT_TYPES = """abstract abstract-client abstract-connect abstract-listen abstract-recv
    abstract-recvfrom abstract-sendto accept-fd creat create datagram dccp dccp-connect
    dccp-listen dgram dtls dtls-c dtls-client dtls-connect dtls-l dtls-listen dtls-server
    echo exec fd fifo file gopen if interface ip ip-datagram ip-dgram ip-recv ip-recvfrom
    ip-send ip-sendto ip4 ip4-datagram ip4-dgram ip4-recv ip4-recvfrom ip4-send ip4-sendto
    ip6 ip6-datagram ip6-dgram ip6-recv ip6-recvfrom ip6-send ip6-sendto local named open
    openssl openssl-connect openssl-dtls-client openssl-dtls-connect openssl-dtls-listen
    openssl-dtls-server openssl-listen pipe posixmq-bidirectional posixmq-read
    posixmq-receive posixmq-send posixmq-write proxy proxy-connect pty readline sctp
    sctp-connect sctp-l sctp-listen sctp4 sctp4-connect sctp4-l sctp4-listen sctp6
    sctp6-connect sctp6-l sctp6-listen sendto shell socket-connect socket-datagram
    socket-listen socket-recv socket-recvfrom socket-sendto socketpair socks socks4 socks4a
    socks5 socks5-connect socks5-listen ssl ssl-l stderr stdin stdio stdout system tun udp
    udp-connect udp-datagram udp-dgram udp-l udp-listen udp-recv udp-recvfrom udp-send
    udp-sendto udp4 udp4-connect udp4-datagram udp4-dgram udp4-l udp4-listen udp4-recv
    udp4-recvfrom udp4-send udp4-sendto udp6 udp6-connect udp6-datagram udp6-dgram udp6-l
    udp6-listen udp6-recv udp6-recvfrom udp6-send udp6-sendto udplite udplite-connect
    udplite-listen unix unix-client unix-connect unix-l unix-listen unix-recv
    unix-recvfrom unix-send unix-sendto vsock vsock-connect vsock-l vsock-listen"""
_KNOWN_SOCAT_TYPES = frozenset(_SOCAT_TYPES.split())
_SUPPORTED_HINT = (
    "pyforward-socat takes TCP-LISTEN:PORT or UNIX-LISTEN:PATH [,OPTIONS], then "
    "TCP:HOST:PORT or UNIX-CONNECT:PATH [,OPTIONS]"
)


def refuse_type(raw: RawAddress) -> ConfigError:
    keyword = raw.keyword
    lowered = keyword.lower()
    shown = keyword.upper()
    if keyword in ("-", ""):
        return ConfigError(f"- (STDIO) is not supported: {_NOT_FILES}")
    if keyword.isdigit():
        return ConfigError(f"{keyword} (file descriptor) is not supported: not TCP")
    if "/" in keyword:
        return ConfigError(f"{keyword!r} (a file) is not supported: {_NOT_FILES}")
    if lowered in _KNOWN_SOCAT_TYPES:
        for prefixes, reason in _REFUSED_PREFIXES:
            if lowered.startswith(prefixes):
                return ConfigError(f"{shown} is not supported: {reason}")
    return ConfigError(f"unknown address type {keyword!r} in {raw.text!r}: {_SUPPORTED_HINT}")


def parse_tcp_listen(raw: RawAddress, family: Family) -> ListenAddress:
    where = f"address {raw.text!r}"
    check_params(raw, ["PORT"])
    address = ListenAddress(family=family, port=parse_port(raw.params[0], where, minimum=0))
    for name, value in raw.options:
        option = option_name(raw, name, LISTEN_OPTIONS, raw.keyword)
        if option == "fork":
            address = replace(address, fork=is_on(name, value, where))
        elif option == "keepalive":
            address = replace(address, keepalive=is_on(name, value, where))
        elif option in ALWAYS_ON:
            if not is_on(name, value, where):
                raise ConfigError(f"{where}: {name}={value} is not supported: {ALWAYS_ON[option]}")
            if option == "reuseaddr":
                address = replace(address, reuseaddr=True)
            else:
                address = replace(address, nodelay=True)
        elif option == "bind":
            host = parse_bind(needs_value(name, value, where, "127.0.0.1"), where)
            address = replace(address, bind=host)
        elif option == "backlog":
            address = replace(address, backlog=parse_backlog(name, value, where))
        elif option == "range":
            address = replace(
                address, allow=range_network(needs_value(name, value, where, "10.0.0.0/8"), where)
            )
        elif option == "su":
            address = replace(
                address, su=owner_name(name, needs_value(name, value, where, "nobody"), where)
            )
        elif option == "reuseport":
            address = replace(address, reuseport=is_on(name, value, where))
        elif option == "ipv6-v6only":
            if family is not Family.IPV6:
                raise ConfigError(
                    f"{where}: {name} applies to TCP6-LISTEN, not {raw.keyword.upper()}"
                )
            address = replace(address, ipv6_v6only=is_on(name, value, where))
        else:  # max-children
            address = replace(address, max_children=parse_max_children(name, value, where))
    check_bind(address, where, raw.keyword)
    return address


def parse_tcp_connect(raw: RawAddress, family: Family) -> ConnectAddress:
    where = f"address {raw.text!r}"
    check_params(raw, ["HOST", "PORT"])
    host = unbracket(raw.params[0])
    if not host:
        raise ConfigError(f"{where}: the host is empty")
    port = parse_port(raw.params[1], where, minimum=1)
    check_family(host, family, where, raw.keyword)
    try:
        parse_target(host_port(host, port))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {reason_of(exc)}") from None
    address = ConnectAddress(family=family, host=host, port=port)
    for name, value in raw.options:
        option = option_name(raw, name, CONNECT_OPTIONS, raw.keyword)
        if option == "keepalive":
            address = replace(address, keepalive=is_on(name, value, where))
        elif option == "nodelay":
            if not is_on(name, value, where):
                raise ConfigError(f"{where}: {name}={value} is not supported: {ALWAYS_ON[option]}")
            address = replace(address, nodelay=True)
        elif option in RETRY_OPTIONS:
            address = replace(
                address, retry=updated_retry(address.retry, option, name, value, where)
            )
        elif option == "sourceport":
            port = parse_port(
                needs_value(name, value, where, "2000"), f"{where}: {name}", minimum=1
            )
            address = replace(address, sourceport=port)
        else:  # connect-timeout
            address = replace(address, connect_timeout=parse_timeout(name, value, where))
    return address


def _parse_unix_listen(raw: RawAddress, abstract: bool) -> UnixListenAddress:
    where = f"address {raw.text!r}"
    check_params(raw, ["PATH"])
    address = UnixListenAddress(unix_name(raw.params[0], abstract, where))
    for name, value in raw.options:
        option = option_name(raw, name, UNIX_LISTEN_OPTIONS, raw.keyword)
        if option == "fork":
            address = replace(address, fork=is_on(name, value, where))
        elif option == "backlog":
            address = replace(address, backlog=parse_backlog(name, value, where))
        elif option == "max-children":
            address = replace(address, max_children=parse_max_children(name, value, where))
        elif option == "mode":
            address = replace(
                address, mode=listen_mode(needs_value(name, value, where, "0660"), where)
            )
        elif option == "user":
            address = replace(
                address, user=owner_name(name, needs_value(name, value, where, "0"), where)
            )
        elif option == "group":
            address = replace(
                address, group=owner_name(name, needs_value(name, value, where, "0"), where)
            )
        elif option == "su":
            address = replace(
                address, su=owner_name(name, needs_value(name, value, where, "nobody"), where)
            )
        elif option == "unlink-early":
            address = replace(address, unlink_early=is_on(name, value, where))
        else:  # unlink-close
            address = replace(address, unlink_close=is_on(name, value, where))
    if address.abstract and (address.mode, address.user, address.group) != (None,) * 3:
        raise ConfigError(f"{where}: an abstract socket has no file to give a mode or owner")
    return address


def _parse_unix_connect(raw: RawAddress, abstract: bool) -> UnixConnectAddress:
    where = f"address {raw.text!r}"
    check_params(raw, ["PATH"])
    address = UnixConnectAddress(unix_name(raw.params[0], abstract, where))
    for name, value in raw.options:
        option = option_name(raw, name, UNIX_CONNECT_OPTIONS, raw.keyword)
        if option in RETRY_OPTIONS:
            address = replace(
                address, retry=updated_retry(address.retry, option, name, value, where)
            )
        else:  # connect-timeout
            address = replace(address, connect_timeout=parse_timeout(name, value, where))
    return address


# Address types by keyword: the parser of each, first (listen) or second (target) address.
LISTEN_PARSERS: dict[str, Callable[[RawAddress], Listen]] = {
    **{k: functools.partial(parse_tcp_listen, family=f) for k, f in LISTEN_TYPES.items()},
    **{k: functools.partial(_parse_unix_listen, abstract=a) for k, a in UNIX_LISTEN_TYPES.items()},
}
CONNECT_PARSERS: dict[str, Callable[[RawAddress], Connect]] = {
    **{k: functools.partial(parse_tcp_connect, family=f) for k, f in CONNECT_TYPES.items()},
    **{
        k: functools.partial(_parse_unix_connect, abstract=a) for k, a in UNIX_CONNECT_TYPES.items()
    },
}
