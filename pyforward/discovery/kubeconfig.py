"""Which kubeconfig to use, in order, and a client built from it.

Order: `--kubeconfig`, `$KUBECONFIG`, `~/.kube/config`, `/etc/rancher/k3s/k3s.yaml` (k3s),
`$CREDENTIALS_DIRECTORY/kubeconfig` (systemd `LoadCredential=kubeconfig:...`), then the
in-cluster service account. A file that exists but cannot be read (k3s.yaml is root-only)
is passed over and named in the error if nothing else works.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyforward.discovery.errors import KubeconfigError

K3S_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


@dataclass(frozen=True)
class KubeconfigSource:
    origin: str  # which rule found it: "--kubeconfig", "$KUBECONFIG", "k3s", ...
    path: str | None  # None: the in-cluster service account

    def __str__(self) -> str:
        if self.path is None:
            return "the in-cluster service account"
        return f"{self.path} ({self.origin})"


def candidate_sources(flag: str | None, env: Mapping[str, str]) -> list[KubeconfigSource]:
    """Where to look, in order. An explicit --kubeconfig is the only candidate."""
    if flag:
        return [KubeconfigSource("--kubeconfig", flag)]
    sources = []
    if env.get("KUBECONFIG"):
        sources.append(KubeconfigSource("$KUBECONFIG", env["KUBECONFIG"]))
    home = env.get("HOME") or os.path.expanduser("~")
    sources.append(KubeconfigSource("~/.kube/config", str(Path(home) / ".kube" / "config")))
    sources.append(KubeconfigSource("k3s", K3S_KUBECONFIG))
    if env.get("CREDENTIALS_DIRECTORY"):
        path = str(Path(env["CREDENTIALS_DIRECTORY"]) / "kubeconfig")
        sources.append(KubeconfigSource("systemd credential", path))
    sources.append(KubeconfigSource("in-cluster", None))
    return sources


def _unusable(source: KubeconfigSource, env: Mapping[str, str]) -> str | None:
    """Why this source cannot be used, or None when it can."""
    if source.path is None:
        if not env.get("KUBERNETES_SERVICE_HOST"):
            return "not in a pod: KUBERNETES_SERVICE_HOST is not set"
        paths = [SERVICE_ACCOUNT_TOKEN]
    else:
        # $KUBECONFIG may list several files; the client merges those that exist.
        paths = [p for p in source.path.split(os.pathsep) if p]
    reasons = []
    for path in paths:
        try:
            with open(path, "rb"):
                return None
        except FileNotFoundError:
            reasons.append("does not exist")
        except PermissionError:
            reasons.append("permission denied")
        except IsADirectoryError:
            reasons.append("is a directory")
        except OSError as exc:
            reasons.append(exc.strerror or str(exc))
    return ", ".join(sorted(set(reasons))) or "empty"


def find_kubeconfig(flag: str | None, env: Mapping[str, str]) -> KubeconfigSource:
    """The first usable kubeconfig source, or KubeconfigError listing where it looked."""
    tried = []
    for source in candidate_sources(flag, env):
        reason = _unusable(source, env)
        if reason is None:
            return source
        if source.origin == "--kubeconfig":
            raise KubeconfigError(f"--kubeconfig {source.path}: {reason}")
        tried.append(f"{source.path or 'in-cluster'} ({reason})")
    if not env.get("KUBECONFIG"):
        tried.insert(0, "$KUBECONFIG (not set)")
    raise KubeconfigError(
        f"no kubeconfig found; looked at: {'; '.join(tried)}. Give --kubeconfig FILE"
    )


def load_configuration(source: KubeconfigSource) -> Any:
    """A `kubernetes.client.Configuration` for the source. Imports kubernetes."""
    import kubernetes  # noqa: PLC0415  (lazy: static runs never need it)
    import yaml  # type: ignore[import-untyped]  # noqa: PLC0415  (comes with kubernetes)

    # The client's own annotations are partial; it is used as untyped at this edge.
    client: Any = kubernetes.client
    config: Any = kubernetes.config
    configuration = client.Configuration()
    try:
        if source.path is None:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(
                config_file=source.path,
                client_configuration=configuration,
                persist_config=False,
            )
    except (
        config.ConfigException,
        yaml.YAMLError,
        OSError,
        ValueError,
        TypeError,
        KeyError,
    ) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise KubeconfigError(f"kubeconfig {source}: cannot be used: {detail}") from None
    # Retries are ours (with backoff); urllib3's own would hide the first error's cause.
    configuration.retries = False
    return configuration
