"""A test Kubernetes API server: real HTTPS, real JSON shapes, chunked watch streams.

It serves Services and Nodes from an in-memory store with a resourceVersion counter,
answers watches from an event history (and 410 Gone for versions compacted away),
checks a bearer token (401) and RBAC rules (403), and records every request so tests
can tell lists from watches. It can also answer the way a broken or hostile server
would: a watch that sends bytes and never a newline, a list trickled byte by byte, and
(through `put_nodes`) floods of events written as fast as the socket takes them.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import copy
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trustme

TOKEN = "test-token-123"


@dataclass(frozen=True)
class Request:
    path: str
    query: dict[str, str]

    @property
    def watch(self) -> bool:
        return self.query.get("watch") == "true"


@dataclass
class _Event:
    version: int
    collection: str  # "nodes" or "services/NAMESPACE"
    type: str
    obj: dict[str, Any]


@dataclass
class Store:
    version: int = 100
    services: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: list[_Event] = field(default_factory=list)
    compacted: int = 0  # watches from a version below this get 410 Gone


def service(
    name: str = "istio-ingressgateway",
    namespace: str = "istio-system",
    *,
    type: str = "LoadBalancer",
    ports: tuple[tuple[str, int, int | None], ...] = (
        ("status-port", 15021, 31021),
        ("http2", 80, 31080),
        ("https", 443, 31443),
    ),
) -> dict[str, Any]:
    """A v1.Service as the API server sends it."""
    spec_ports = []
    for port_name, port, node_port in ports:
        entry: dict[str, Any] = {
            "name": port_name,
            "port": port,
            "protocol": "TCP",
            "targetPort": port + 8000 if port < 1024 else port,
        }
        if node_port is not None:
            entry["nodePort"] = node_port
        spec_ports.append(entry)
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}"},
        "spec": {
            "type": type,
            "clusterIP": "10.43.12.34",
            "clusterIPs": ["10.43.12.34"],
            "selector": {"app": name},
            "ports": spec_ports,
        },
        "status": {"loadBalancer": {}},
    }
    return obj


def node(name: str, ip: str, *, ready: bool = True) -> dict[str, Any]:
    """A v1.Node as the API server sends it."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "uid": f"uid-node-{name}"},
        "spec": {"podCIDR": "10.42.0.0/24"},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "KubeletReady" if ready else "KubeletNotReady",
                    "message": "kubelet is posting ready status"
                    if ready
                    else "container runtime network not ready",
                    "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        },
    }


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A v1.Status."""
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class KubeApi:
    """The server. `start()` binds (again, on the same port after `stop()`)."""

    def __init__(self, tmp_path: Path) -> None:
        self.ca = trustme.CA()
        self._cert = self.ca.issue_cert("127.0.0.1")
        self.store = Store()
        self.cond = threading.Condition()
        self.requests: list[Request] = []
        self.forbidden: set[tuple[str, str]] = set()  # (verb, collection) answered 403
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._open: set[Any] = set()
        self.generation = 0  # moves on when connections are cut: open watches end
        self.silent = False  # watches send nothing and never end: a dead connection
        self.no_newline = False  # watches send bytes, never a newline, and never end
        self.list_byte_delay = 0.0  # > 0: lists send their body one byte per this many s
        self.list_bodies: dict[str, Any] = {}  # path -> JSON sent for a list instead
        self.kubeconfig = tmp_path / "kubeconfig"

    # --- lifecycle

    def start(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(context)
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.api = self
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        self.write_kubeconfig(self.kubeconfig)

    def stop(self) -> None:
        """Go away: stop accepting and cut every open connection (watches included)."""
        server = self._server
        if server is None:
            return
        self._server = None
        server.shutdown()
        server.server_close()
        self.cut_connections()
        assert self._thread is not None
        self._thread.join(5)

    def cut_connections(self) -> None:
        """Break every open connection, as a dying server or a network fault would."""
        with self.cond:
            connections = list(self._open)
            self.generation += 1
            self.cond.notify_all()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(2)

    def write_kubeconfig(
        self, path: Path, token: str = TOKEN, user: tuple[str, dict[str, Any]] | None = None
    ) -> Path:
        """A kubeconfig for this server; `user`: (name, entry) instead of the token user."""
        user_name, user_entry = user or ("test", {"token": token})
        ca_data = base64.b64encode(self.ca.cert_pem.bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": f"https://127.0.0.1:{self.port}",
                        "certificate-authority-data": ca_data,
                    },
                }
            ],
            "users": [{"name": user_name, "user": user_entry}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user_name}}],
            "current-context": "test",
        }
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    # --- changing the cluster

    def _record(self, collection: str, type_: str, obj: dict[str, Any]) -> None:
        store = self.store
        store.version += 1
        if isinstance(obj.get("metadata"), dict):  # hostile objects may have none
            obj["metadata"]["resourceVersion"] = str(store.version)
        store.history.append(_Event(store.version, collection, type_, copy.deepcopy(obj)))
        self.cond.notify_all()

    def put_service(self, obj: dict[str, Any]) -> None:
        with self.cond:
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            kind = "MODIFIED" if key in self.store.services else "ADDED"
            self.store.services[key] = obj = copy.deepcopy(obj)
            self._record(f"services/{key[0]}", kind, obj)

    def delete_service(self, namespace: str, name: str) -> None:
        with self.cond:
            obj = self.store.services.pop((namespace, name))
            self._record(f"services/{namespace}", "DELETED", obj)

    def put_node(self, obj: dict[str, Any], name: str | None = None) -> None:
        """Add or change a Node; `name` keys one whose metadata is not what it should be."""
        self.put_nodes([obj], [name or obj["metadata"]["name"]])

    def put_nodes(self, objs: list[dict[str, Any]], names: list[str] | None = None) -> None:
        """Add or change many nodes at once: one event each, sent out together."""
        with self.cond:
            for index, given in enumerate(objs):
                name = names[index] if names else given["metadata"]["name"]
                kind = "MODIFIED" if name in self.store.nodes else "ADDED"
                self.store.nodes[name] = obj = copy.deepcopy(given)
                self._record("nodes", kind, obj)

    def compact(self) -> None:
        """Forget the history: watches from any version seen so far get 410 Gone."""
        with self.cond:
            self.store.compacted = self.store.version
            self.store.history.clear()

    # --- what was asked

    def lists(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path and not r.watch]

    def watches(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path and r.watch]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        """Wait until `predicate()` holds (it is re-checked on every request and change)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("condition not met in time")
                self.cond.wait(remaining)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: KubeApi

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # broken connections are what some tests are about


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.api.cond:
            self.server.api._open.add(self.connection)

    def finish(self) -> None:
        with self.server.api.cond:
            self.server.api._open.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        request = Request(url.path, query)
        with api.cond:
            api.requests.append(request)
            api.cond.notify_all()
        # The scheme is case-insensitive (RFC 9110): the client's in-cluster configuration
        # sends "bearer", its kubeconfig loader "Bearer".
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or token != TOKEN:
            self._send(401, status(401, "Unauthorized", "Unauthorized"))
            return
        parts = url.path.strip("/").split("/")
        if parts == ["api", "v1", "nodes"]:
            collection, resource, namespace = "nodes", "nodes", None
        elif (
            len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "services"
        ):
            collection, resource, namespace = f"services/{parts[3]}", "services", parts[3]
        elif parts == ["api", "v1", "services"]:
            collection, resource, namespace = "services", "services", ""
        else:
            self._send(
                404, status(404, "NotFound", "the server could not find the requested resource")
            )
            return
        verb = "watch" if request.watch else "list"
        if (verb, collection) in api.forbidden or (verb, resource) in api.forbidden:
            where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
            self._send(
                403,
                status(
                    403,
                    "Forbidden",
                    f'{resource} is forbidden: User "system:serviceaccount:default:pf" '
                    f'cannot {verb} resource "{resource}" in API group ""{where}',
                ),
            )
            return
        if request.watch:
            self._watch(collection, query)
        else:
            self._list(collection, namespace, query)

    def _items(self, collection: str, namespace: str | None) -> list[dict[str, Any]]:
        store = self.server.api.store
        if collection == "nodes":
            return [store.nodes[k] for k in sorted(store.nodes)]
        return [
            store.services[k]
            for k in sorted(store.services)
            if namespace == "" or k[0] == namespace
        ]

    def _list(self, collection: str, namespace: str | None, query: dict[str, str]) -> None:
        """The list, or with `limit` one page of it; `continue` is the offset of the next.
        (A real server serves every page from the first one's snapshot; this one serves
        each from the store as it is, which a watch from the first version makes good.)"""
        api = self.server.api
        if self.path.split("?")[0] in api.list_bodies:
            self._send(200, api.list_bodies[self.path.split("?")[0]])
            return
        offset = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0)
        with api.cond:
            kind = "NodeList" if collection == "nodes" else "ServiceList"
            items = self._items(collection, namespace)
            end = offset + limit if limit else len(items)
            metadata = {"resourceVersion": str(api.store.version)}
            if end < len(items):
                metadata["continue"] = str(end)
            body = {
                "apiVersion": "v1",
                "kind": kind,
                "metadata": metadata,
                "items": copy.deepcopy(items[offset:end]),
            }
        if api.list_byte_delay > 0:
            self._trickle(json.dumps(body).encode(), api.list_byte_delay)
            return
        self._send(200, body)

    def _trickle(self, data: bytes, delay: float) -> None:
        """A whole, valid answer, one byte every `delay` seconds (until the client leaves)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.flush()
        generation = self.server.api.generation
        try:
            for index in range(len(data)):
                self.wfile.write(data[index : index + 1])
                self.wfile.flush()
                time.sleep(delay)
                if self.server.api.generation != generation:
                    break
        except OSError:
            pass
        self.close_connection = True

    def _watch(self, collection: str, query: dict[str, str]) -> None:
        api = self.server.api
        since = int(query.get("resourceVersion") or 0)
        timeout = float(query.get("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        try:
            if api.no_newline:
                self._endless_line(api)
                return
            for lines in self._events(api, collection, since, deadline):
                data = "".join(line + "\n" for line in lines).encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _endless_line(self, api: KubeApi) -> None:
        """The start of an event that never ends: JSON-ish bytes, never a newline."""
        generation = api.generation
        data = b'{"type": "MODIFIED", "object": {"metadata": {"name": "' + b"x" * 65536
        chunk = b"%x\r\n%s\r\n" % (len(data), data)
        while api.generation == generation:
            self.wfile.write(chunk)
            data = b"x" * 65536
            chunk = b"%x\r\n%s\r\n" % (len(data), data)
        self.close_connection = True

    def _events(
        self, api: KubeApi, collection: str, since: int, deadline: float
    ) -> Iterator[list[str]]:
        """Batches of event lines: whatever history holds past `since`, then what comes."""
        with api.cond:
            generation = api.generation
            if since < api.store.compacted:
                message = f"too old resource version: {since} ({api.store.compacted})"
                yield [json.dumps({"type": "ERROR", "object": status(410, "Expired", message)})]
                return
        while True:
            with api.cond:
                history = api.store.history
                start = bisect.bisect_right(history, since, key=lambda e: e.version)
                pending = [
                    e
                    for e in history[start:]
                    if (
                        e.collection == collection
                        or (collection == "services" and e.collection.startswith("services/"))
                    )
                ]
                if api.silent:
                    api.cond.wait(0.1)
                    if api.generation != generation:
                        return
                    continue
                if not pending:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or api.generation != generation:
                        return
                    api.cond.wait(remaining)
                    if api.generation != generation:
                        return
                    continue
            since = pending[-1].version
            yield [json.dumps({"type": e.type, "object": e.obj}) for e in pending]

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
