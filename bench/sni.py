"""Routing by TLS server name: the HTTPS backend, and the subjects that route by name.

The backend is nginx serving HTTPS for `localhost` (an ECDSA P-256 certificate made with the
openssl command) on one port, and the same server behind `listen ... ssl proxy_protocol` on a
second port, the *PROXY twin*, for the subject that sends a PROXY v2 header. wrk connects to
`https://localhost:P/`, so its ClientHello names `localhost` (it resolves to 127.0.0.1 here).

Each subject routes the name `localhost` to the backend and has a second name (to a port
nothing listens on, never chosen) and a default route beside it, so it really looks the
name up:

| key | what |
|---|---|
| `haproxy-sni` | HAProxy, `inspect-delay 5s`, `req_ssl_hello_type 1`, `req.ssl_sni` |
| `nginx-sni` | nginx stream, `ssl_preread on`, `map $ssl_preread_server_name` to the upstream |
| `pyforward-sni` | pyforward, three `[[route]]`s on one address (`sni`), splice, uvloop |
| `pyforward-sni-pp2` | the same with `proxy_protocol = "v2"` on the route, to the PROXY twin |
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from bench.backends import program
from bench.netutil import HOST, NGINX_STREAM_MODULE, BenchError, free_port

NAME = "localhost"
OTHER = "other.bench.test"  # a second name, routed nowhere useful, never asked for
DEAD = f"{HOST}:9"  # where OTHER goes: nothing listens (discard port, closed)

# Backend port -> its PROXY twin (the same server behind `proxy_protocol`).
PROXY_TWINS: dict[int, int] = {}

_NGINX_HTTPS = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log error;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen {host}:{port} ssl backlog=4096;
        listen {host}:{twin} ssl proxy_protocol backlog=4096;
        server_name {name};
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""

_NGINX_STREAM = """\
load_module {module};
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log error;
events {{ worker_connections 16384; }}
stream {{
    map $ssl_preread_server_name $upstream {{
        {name} {host}:{target};
        {other} {dead};
        default {host}:{target};
    }}
    server {{
        listen {host}:{port} backlog=4096;
        ssl_preread on;
        proxy_pass $upstream;
    }}
}}
"""

_HAPROXY_SNI = """\
global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 5m
    timeout server 5m
frontend by_name
    bind {host}:{port}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req_ssl_hello_type 1 }}
    use_backend named if {{ req.ssl_sni -i {name} }}
    use_backend other if {{ req.ssl_sni -i {other} }}
    default_backend fallback
backend named
    server s {host}:{target}
backend other
    server s {dead}
backend fallback
    server s {host}:{target}
"""


def _pyforward_config(port: int, target: int, proxy_protocol: bool) -> str:
    header = 'proxy_protocol = "v2"\n' if proxy_protocol else ""
    return (
        f'[[route]]\nlisten = "{HOST}:{port}"\nsni = "{NAME}"\n'
        f'target = "{HOST}:{target}"\n{header}'
        f'[[route]]\nlisten = "{HOST}:{port}"\nsni = "{OTHER}"\ntarget = "{DEAD}"\n'
        f'[[route]]\nlisten = "{HOST}:{port}"\ntarget = "{HOST}:{target}"\n'
    )


def command(kind: str, port: int, target: int, workdir: Path) -> list[str]:
    """The command line of an SNI-routing subject listening on `port`."""
    values = {"host": HOST, "port": port, "target": target, "name": NAME, "other": OTHER}
    values["dead"] = DEAD
    if kind == "haproxy-sni":
        config = workdir / f"haproxy-sni-{port}.cfg"
        config.write_text(_HAPROXY_SNI.format(**values))
        return ["haproxy", "-db", "-f", str(config)]
    if kind == "nginx-sni":
        if not NGINX_STREAM_MODULE.exists():
            raise BenchError(
                f"nginx-sni needs {NGINX_STREAM_MODULE} (apt-get install libnginx-mod-stream)"
            )
        directory = workdir / f"nginx-sni-{port}"
        directory.mkdir()
        config = directory / "nginx.conf"
        config.write_text(_NGINX_STREAM.format(dir=directory, module=NGINX_STREAM_MODULE, **values))
        return ["nginx", "-e", "stderr", "-p", str(directory), "-c", str(config)]
    if kind in ("pyforward-sni", "pyforward-sni-pp2"):
        proxied = kind == "pyforward-sni-pp2"
        if proxied:
            if target not in PROXY_TWINS:
                raise BenchError(f"{kind} needs the sni scenario's backend (its PROXY twin)")
            target = PROXY_TWINS[target]
        config = workdir / f"{kind}-{port}.toml"
        config.write_text(_pyforward_config(port, target, proxied))
        return [
            sys.executable, "-m", "pyforward", "run", "--config", str(config),
            "--relay", "splice", "--loop", "uvloop", "--quiet",
        ]  # fmt: skip
    raise ValueError(f"{kind} is not an SNI-routing subject")


@contextlib.contextmanager
def https_server(workdir: Path) -> Iterator[int]:
    """nginx serving HTTPS for `localhost`, and its PROXY twin; yields the plain port."""
    port, twin = free_port(), free_port()
    directory = workdir / f"nginx-https-{port}"
    directory.mkdir()
    made = subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-subj", f"/CN={NAME}", "-addext", f"subjectAltName=DNS:{NAME}",
            "-days", "2", "-keyout", str(directory / "key.pem"),
            "-out", str(directory / "cert.pem"),
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        raise BenchError(f"openssl could not make a certificate: {made.stderr.strip()}")
    config = directory / "nginx.conf"
    config.write_text(
        _NGINX_HTTPS.format(dir=directory, host=HOST, port=port, twin=twin, name=NAME)
    )
    argv = ["nginx", "-e", "stderr", "-p", str(directory), "-c", str(config)]
    PROXY_TWINS[port] = twin
    try:
        with program(argv, port, "nginx-https", workdir):
            yield port
    finally:
        PROXY_TWINS.pop(port, None)
