"""The few API calls discovery makes, on the blocking `kubernetes` client.

Lists and watches return the objects as the JSON the API server sent (plain dicts), so
the pure model parses exactly what is on the wire. Every failure becomes one
`DiscoveryError` that says what was asked of whom and what went wrong.
"""

from __future__ import annotations

import contextlib
import json
import re
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyforward.discovery.errors import (
    ApiFailed,
    ApiRefused,
    ApiUnreachable,
    DiscoveryError,
    WatchExpired,
)
from pyforward.discovery.kubeconfig import KubeconfigSource, load_configuration

CONNECT_TIMEOUT = 10.0
# What one answer may cost. Each read is bounded by the client's read timeout; these bound
# the whole: a server that trickles bytes, or never ends a line, is taken for a broken one.
LIST_DEADLINE = 60.0  # seconds for a list's whole answer
MAX_EVENT_BYTES = 16 * 1024 * 1024  # one watch event (one JSON line); a Node is ~10 KiB
READ_SIZE = 64 * 1024  # bytes asked of the socket per read (any amount available returns)
# Objects per list request. An answer is decoded in one go, holding the interpreter (and
# so the event loop) meanwhile: pages keep that short in a cluster of thousands of nodes.
LIST_PAGE = 500


class LineTooLong(ValueError):
    """A line grew past the limit without its newline."""


class LineSplitter:
    """Splits a byte stream into lines; never holds more than `limit` bytes of one line.

    Only the bytes fed since the last call are searched for a newline, so a long line
    costs its length once, not once per chunk.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of a line begun and not yet ended."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """The lines `data` completes (without their newlines); LineTooLong past the limit."""
        buffer = self._buffer
        search = len(buffer)
        buffer += data
        lines = []
        start = 0
        while (end := buffer.find(b"\n", search)) >= 0:
            lines.append(bytes(buffer[start:end]))
            start = search = end + 1
        del buffer[:start]
        if len(buffer) > self.limit:
            buffer.clear()
            raise LineTooLong(f"more than {_size(self.limit)} without a newline")
        return lines


def _size(count: int) -> str:
    return f"{count / 1048576:g} MiB" if count >= 1048576 else f"{count:,} bytes"


def read_body(response: Any, deadline: float) -> bytes:
    """The whole body of `response`; TimeoutError once the monotonic `deadline` passes."""
    parts: list[bytes] = []
    received = 0
    while chunk := response.read1(READ_SIZE, decode_content=False):
        parts.append(chunk)
        received += len(chunk)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{_size(received)} received")
    return b"".join(parts)


@dataclass(frozen=True)
class Resource:
    """A collection to list and watch: Services in a namespace, or all Nodes."""

    kind: str  # "services" or "nodes"
    namespace: str | None = None

    def __str__(self) -> str:
        return f"{self.kind} in namespace {self.namespace}" if self.namespace else self.kind


@dataclass(frozen=True)
class Listing:
    items: tuple[dict[str, Any], ...]
    resource_version: str | None


class ClusterApi:
    """A connection to one API server, built from one kubeconfig source."""

    def __init__(self, source: KubeconfigSource) -> None:
        import kubernetes  # noqa: PLC0415  (lazy: static runs never need it)

        client: Any = kubernetes.client  # its annotations are partial: used untyped here

        self.source = source
        configuration = load_configuration(source)
        self.host: str = configuration.host
        self._client: Any = client.ApiClient(configuration)
        self._core: Any = client.CoreV1Api(self._client)
        self._lock = threading.Lock()
        self._watches: set[Any] = set()
        self._closed = False

    def list(
        self, resource: Resource, *, timeout: float = 30.0, deadline: float = LIST_DEADLINE
    ) -> Listing:
        """List a collection, LIST_PAGE objects per request; the first page's
        resourceVersion is where a watch starts.

        `timeout` bounds each read, `deadline` (seconds) the whole answer to one request."""
        items: list[dict[str, Any]] = []
        version: str | None = None
        token: str | None = None
        while True:
            data = self._list_page(resource, token, timeout, deadline)
            page = self._listing(data, resource)
            items += page.items
            if token is None:
                version = page.resource_version
            metadata = data.get("metadata")
            more = metadata.get("continue") if isinstance(metadata, dict) else None
            token = more if isinstance(more, str) and more else None
            if token is None:
                return Listing(tuple(items), version)
            if not page.items:
                raise ApiFailed(
                    f"the API server at {self.host} answered a page of the list of {resource} "
                    "with no objects, and more to come"
                )

    def _list_page(
        self, resource: Resource, token: str | None, timeout: float, deadline: float
    ) -> Any:
        """One list request's answer, as JSON (checked by `_listing`)."""
        started = time.monotonic()
        paging: dict[str, Any] = {"limit": LIST_PAGE}
        if token is not None:
            paging["_continue"] = token
        try:
            response = self._call(
                resource, **paging, _preload_content=False, _request_timeout=timeout
            )
            try:
                data = json.loads(read_body(response, started + deadline))
            except BaseException:
                response.close()  # the rest of the answer is still coming: never reuse it
                raise
            finally:
                response.release_conn()
        except TimeoutError as exc:
            raise ApiUnreachable(
                f"the API server at {self.host} is too slow to list {resource}: "
                f"no whole answer within {deadline:g} s ({exc})"
            ) from None
        except DiscoveryError:
            raise
        except Exception as exc:  # the client's errors have no common base: translate all
            raise self._translate(exc, "list", resource) from None
        return data

    def list_all_services(self) -> Listing:
        """Services in every namespace (for the ServiceLB port check)."""
        try:
            response = self._core.list_service_for_all_namespaces(
                _preload_content=False, _request_timeout=30.0
            )
            data = json.loads(response.data)
        except Exception as exc:  # the client's errors have no common base: translate all
            raise self._translate(exc, "list", Resource("services in all namespaces")) from None
        return Listing(self._listing(data, Resource("services in all namespaces")).items, None)

    def open_watch(
        self, resource: Resource, resource_version: str | None, timeout: int, read_timeout: float
    ) -> Watch:
        """Start a watch from `resource_version`; returns once the server has answered.

        The server ends the stream after `timeout` seconds; `read_timeout`, a little
        longer, ends a stream that stays silent past that: a silently dead connection.
        """
        try:
            response = self._call(
                resource,
                watch=True,
                resource_version=resource_version,
                timeout_seconds=timeout,
                allow_watch_bookmarks=True,
                _preload_content=False,
                _request_timeout=(CONNECT_TIMEOUT, read_timeout),
            )
        except Exception as exc:
            raise self._translate(exc, "watch", resource) from None
        stream = Watch(self, resource, response, read_timeout)
        with self._lock:
            if self._closed:
                stream.interrupt()
            self._watches.add(stream)
        return stream

    def close(self) -> None:
        """Stop watches in progress (from any thread) and release connections."""
        with self._lock:
            self._closed = True
            watches = list(self._watches)
        for stream in watches:
            stream.interrupt()

    def release(self) -> None:
        """Close pooled connections; call once no thread uses this client any more."""
        self.close()
        self._client.close()

    # --- helpers

    def _listing(self, data: Any, resource: Resource) -> Listing:
        """A list answer's objects and resourceVersion; the objects are checked by the model."""
        if not isinstance(data, dict):
            kind = "a list" if isinstance(data, list) else "a bare value"
            expected = "NodeList" if resource.kind == "nodes" else "ServiceList"
            raise ApiFailed(
                f"the API server at {self.host} answered list {resource} with {kind}, "
                f"not a {expected} object"
            )
        items = data.get("items") or []
        if not isinstance(items, list):
            raise ApiFailed(
                f"the API server at {self.host} answered list {resource} with items that "
                "are not a list"
            )
        metadata = data.get("metadata")
        version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        return Listing(
            tuple(item for item in items if isinstance(item, dict)),
            version if isinstance(version, str) and version else None,
        )

    def _method(self, resource: Resource) -> Any:
        if resource.kind == "nodes":
            return self._core.list_node
        return self._core.list_namespaced_service

    @staticmethod
    def _args(resource: Resource) -> tuple[str, ...]:
        return () if resource.kind == "nodes" else (resource.namespace or "default",)

    def _call(self, resource: Resource, **kwargs: Any) -> Any:
        return self._method(resource)(*self._args(resource), **kwargs)

    def _translate(self, exc: Exception, verb: str, resource: Resource) -> DiscoveryError:
        status = getattr(exc, "status", None)
        if status == 0:  # the client's way of reporting a TLS failure
            return ApiUnreachable(
                f"cannot reach the Kubernetes API at {self.host} ({verb} {resource}): "
                f"{_tls_reason(str(getattr(exc, 'reason', exc)))}"
            )
        if isinstance(status, int) and type(exc).__name__.endswith("Exception"):
            message = _status_message(getattr(exc, "body", None)) or str(getattr(exc, "reason", ""))
            if status == 401:
                return ApiRefused(
                    f"the API server at {self.host} rejected the credentials from "
                    f"{self.source} (401 Unauthorized): {message}"
                )
            if status == 403:
                return ApiRefused(
                    f"the API server at {self.host} forbids '{verb}' on {resource} "
                    f"to the credentials from {self.source} (403 Forbidden; RBAC must "
                    f"allow verbs list and watch on {resource.kind}): {message}"
                )
            if status == 410:
                return WatchExpired(f"watch on {resource} expired (410 Gone): {message}")
            return ApiFailed(
                f"the API server at {self.host} answered {status} to {verb} {resource}: {message}"
            )
        return ApiUnreachable(
            f"cannot reach the Kubernetes API at {self.host} ({verb} {resource}): "
            f"{network_reason(exc)}"
        )


def _status_message(body: object) -> str:
    """The `message` of a v1.Status body, if the body is one."""
    if not isinstance(body, str | bytes):
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return " ".join(str(body).split())[:200]
    return str(data.get("message", "")) if isinstance(data, dict) else ""


def _tls_reason(text: str) -> str:
    """'SSLError [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: ... (_ssl.c:1006)'
    -> 'TLS: certificate verify failed: ...'."""
    text = re.sub(r"\[SSL: [A-Z0-9_]+\] ?|\s*\(_ssl\.c:\d+\)", "", text)
    text = text.removeprefix("SSLError").strip(" :")
    return f"TLS: {text}"


def network_reason(exc: BaseException) -> str:
    """The innermost cause a user recognises: 'Connection refused', a TLS failure, ..."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"TLS: {current.verify_message or current.reason}"
        if isinstance(current, ssl.SSLError):
            return f"TLS: {current.reason or current}"
        if isinstance(current, TimeoutError) or "timed out" in str(current).lower():
            return "timed out"
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        for nxt in (getattr(current, "reason", None), current.__cause__, current.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
        todo.extend(arg for arg in current.args if isinstance(arg, BaseException))
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


class Watch:
    """One watch response: iterate for events (raw dicts with `type` and `object`)."""

    def __init__(self, api: ClusterApi, resource: Resource, response: Any, duration: float) -> None:
        self._api = api
        self._resource = resource
        self._response = response
        self._duration = duration  # the server ends the watch sooner; past this, we do
        self._closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        lines = LineSplitter(MAX_EVENT_BYTES)
        deadline = time.monotonic() + self._duration
        try:
            # read1: whatever has arrived, up to READ_SIZE, so no read waits for a whole
            # (possibly endless) chunk and the limits below apply as bytes come in.
            while chunk := self._response.read1(READ_SIZE, decode_content=False):
                try:
                    complete = lines.feed(chunk)
                except LineTooLong as exc:
                    raise ApiFailed(f"watch on {self._resource}: an event of {exc}") from None
                for line in complete:
                    if line.strip():
                        yield self._event(line)
                if time.monotonic() > deadline:
                    if lines.pending:
                        raise ApiFailed(
                            f"watch on {self._resource}: an event still incomplete after "
                            f"{self._duration:g} s ({_size(lines.pending)} so far): the API "
                            "server sends too slowly"
                        )
                    return  # the server should have ended it by now: watch again
        except DiscoveryError:
            raise
        except Exception as exc:
            if self._closed:
                return
            raise self._api._translate(exc, "watch", self._resource) from None
        finally:
            self._release()

    def _event(self, line: bytes) -> dict[str, Any]:
        try:
            event = json.loads(line)
        except ValueError:
            raise ApiFailed(f"watch on {self._resource}: not a JSON event: {line[:80]!r}") from None
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise ApiFailed(f"watch on {self._resource}: malformed event {line[:80]!r}")
        if event.get("type") == "ERROR":
            status = event["object"]
            code, message = status.get("code"), status.get("message", "")
            if code == 410:
                raise WatchExpired(f"watch on {self._resource} expired (410 Gone): {message}")
            raise ApiFailed(f"watch on {self._resource}: error {code}: {message}")
        return event

    def interrupt(self) -> None:
        """End the watch from another thread: the reading thread wakes and stops."""
        self._closed = True
        # Shutting the socket down wakes a thread blocked reading it; close() alone would not.
        with contextlib.suppress(ValueError, RuntimeError, OSError):
            self._response.shutdown()

    def _release(self) -> None:
        self._closed = True
        self._response.close()
        self._response.release_conn()
        with self._api._lock:
            self._api._watches.discard(self)
