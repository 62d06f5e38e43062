"""The Kubernetes manifests of deploy/kubernetes, read for tests, and the in-cluster view of
a pod (its service-account files and variables) made in a mount namespace of the test's."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.kubeapi import TOKEN, KubeApi, Request

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
REQUIRE_ENV = "PYFORWARD_REQUIRE_PRIVILEGED"


def skip_or_fail(reason: str) -> None:
    """Skip where the privileged parts cannot run; fail instead where CI says they must."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but this test cannot run: {reason}")
    pytest.skip(reason)


def manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return data


def objects(paths: Sequence[Path] | None = None) -> list[dict[str, Any]]:
    """Every object of the manifests, in file order."""
    found: list[dict[str, Any]] = []
    for path in paths if paths is not None else manifest_files():
        found.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)
    return found


def one(items: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        o for o in items if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"{len(matches)} {kind} {name or ''} objects"
    return matches[0]


def container(items: list[dict[str, Any]]) -> dict[str, Any]:
    spec = one(items, "DaemonSet")["spec"]["template"]["spec"]
    assert len(spec["containers"]) == 1
    found: dict[str, Any] = spec["containers"][0]
    return found


def config_text(items: list[dict[str, Any]]) -> str:
    text: str = one(items, "ConfigMap")["data"]["pyforward.toml"]
    return text


def with_ports(text: str, ports: dict[str, int]) -> str:
    """The ConfigMap's pyforward.toml with each `listen = "PORT"` swapped for another port."""
    for old, new in ports.items():
        text, count = re.subn(rf'^listen = "{old}"$', f'listen = "{new}"', text, flags=re.M)
        assert count == 1, f"no route listens on {old}"
    return text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ask(port: int, text: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(text)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    return reply


# --- RBAC: the rules of the manifests, and the requests pyforward made


@dataclass(frozen=True)
class Access:
    verb: str
    resource: str
    namespace: str | None  # None: cluster scope


def access_of(request: Request) -> Access:
    """What the API server's RBAC would check for a request of the test API server."""
    parts = request.path.strip("/").split("/")
    verb = "watch" if request.watch else "list"
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 5:
        return Access(verb, parts[4], parts[3])
    assert parts[:2] == ["api", "v1"] and len(parts) == 3, request.path
    return Access(verb, parts[2], None)


def granted(items: list[dict[str, Any]], account: tuple[str, str]) -> set[Access]:
    """Every (verb, resource, namespace) the bindings give the ServiceAccount `account`
    (namespace, name), for the core API group; a ClusterRole bound cluster-wide gives
    cluster scope (None), which covers every namespace."""
    roles = {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
        for o in items
        if o["kind"] in ("Role", "ClusterRole")
    }
    found: set[Access] = set()
    for binding in items:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = {
            (s.get("namespace"), s["name"])
            for s in binding["subjects"]
            if s["kind"] == "ServiceAccount"
        }
        if account not in subjects:
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        role = roles[(ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"])]
        for rule in role["rules"]:
            assert rule["apiGroups"] == [""], rule
            assert "resourceNames" not in rule, "list and watch cannot be limited by name"
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    found.add(Access(verb, resource, scope))
    return found


def allows(rules: set[Access], wanted: Access) -> bool:
    return wanted in rules or Access(wanted.verb, wanted.resource, None) in rules


# --- the pod's view, in a mount namespace


def service_account_files(api: KubeApi, where: Path, namespace: str) -> Path:
    """The files Kubernetes mounts in a pod: token, ca.crt, namespace."""
    where.mkdir(parents=True)
    (where / "token").write_text(TOKEN)
    (where / "ca.crt").write_bytes(api.ca.cert_pem.bytes())
    (where / "namespace").write_text(namespace)
    return where


# Run inside `unshare --mount --propagation private`: what is mounted here is seen by this
# process and its children only. /run gets a tmpfs (the service-account directory does
# not exist on the host, and its parents may not be writable), the service-account
# directory another one, filled from $1; k3s's kubeconfig, if this host has one, is hidden.
_POD_MOUNTS = r"""
set -eu
files="$1"; shift
mount -t tmpfs -o mode=0755 pod-run /run
mkdir -p "$(readlink -f /var/run)/secrets/kubernetes.io/serviceaccount"
mount -t tmpfs -o mode=0755 serviceaccount "$SA_DIR"
cp "$files/token" "$files/ca.crt" "$files/namespace" "$SA_DIR/"
if [ -e /etc/rancher ]; then mount -t tmpfs -o mode=0755 no-k3s /etc/rancher; fi
# No kubeconfig of the user's, no systemd credentials, no PYFORWARD_ settings.
unset KUBECONFIG CREDENTIALS_DIRECTORY
for name in $(env | sed -n 's/^\(PYFORWARD_[A-Z_]*\)=.*/\1/p'); do unset "$name"; done
exec "$@"
"""


def pod_prefix(files: Path) -> list[str]:
    """A command prefix that runs the rest as in a pod: the service-account files at their
    in-cluster paths, in a private mount namespace (nothing on the host changes)."""
    if os.geteuid() != 0:
        skip_or_fail("needs root (a mount namespace with tmpfs mounts)")
    if shutil.which("unshare") is None:
        skip_or_fail("needs unshare (util-linux)")
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        skip_or_fail(f"unshare --mount does not work here: {probe.stderr.strip()}")
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "env",
        f"SA_DIR={SERVICE_ACCOUNT_DIR}",
        "sh",
        "-c",
        _POD_MOUNTS,
        "pod-mounts",
        str(files),
    ]


def pod_env(api: KubeApi, home: Path, node_name: str) -> dict[str, str]:
    """The variables a pod of the DaemonSet has: the API server's address, its node name
    (pod_prefix unsets those of the user's a pod would not have)."""
    return {
        "HOME": str(home),
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(api.port),
        "NODE_NAME": node_name,
    }


def parse_config(text: str) -> dict[str, Any]:
    return tomllib.loads(text)
