"""Which kubeconfig to use, in order, and a client built from it.

Order: `--kubeconfig`, `$KUBECONFIG`, `~/.kube/config`, `/etc/rancher/k3s/k3s.yaml` (k3s),
`$CREDENTIALS_DIRECTORY/kubeconfig` (systemd `LoadCredential=kubeconfig:...`), then the
in-cluster service account. A file that exists but cannot be read (k3s.yaml is root-only)
is passed over and named in the error if nothing else works.

A kubeconfig given as `$CREDENTIALS_DIRECTORY/NAME` is systemd's credential NAME
(`LoadCredential=NAME:...`): how an installed service is handed a route's own kubeconfig.
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
CREDENTIALS_PREFIX = "$CREDENTIALS_DIRECTORY/"


@dataclass(frozen=True)
class KubeconfigSource:
    origin: str  # which rule found it: "--kubeconfig", "$KUBECONFIG", "k3s", ...
    path: str | None  # None: the in-cluster service account

    def __str__(self) -> str:
        if self.path is None:
            return "the in-cluster service account"
        return f"{self.path} ({self.origin})"


def credential_path(path: str, env: Mapping[str, str], given_in: str = "kubeconfig") -> str:
    """`path`, with a leading `$CREDENTIALS_DIRECTORY/` replaced by systemd's directory."""
    if not path.startswith(CREDENTIALS_PREFIX):
        return path
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise KubeconfigError(
            f"{given_in} {path}: $CREDENTIALS_DIRECTORY is not set (systemd sets it for a "
            "service with LoadCredential=)"
        )
    return str(Path(directory) / path.removeprefix(CREDENTIALS_PREFIX))


def candidate_sources(
    flag: str | None, env: Mapping[str, str], given_in: str | None = None
) -> list[KubeconfigSource]:
    """Where to look, in order. An explicit kubeconfig is the only candidate; `given_in`
    says where it was given (`--kubeconfig`, `FILE: route 2 (listen ...): kubeconfig`)."""
    if flag:
        origin = given_in or "--kubeconfig"
        return [KubeconfigSource(origin, credential_path(flag, env, origin))]
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


def find_kubeconfig(
    flag: str | None, env: Mapping[str, str], given_in: str | None = None
) -> KubeconfigSource:
    """The first usable kubeconfig source, or KubeconfigError listing where it looked; a
    kubeconfig given (`flag`, given in `given_in`) is the only one, named with its place."""
    tried = []
    for source in candidate_sources(flag, env, given_in):
        reason = _unusable(source, env)
        if reason is None:
            return source
        if flag:
            # `--kubeconfig /x: does not exist`, `FILE: route 2 (...): kubeconfig /x: ...`
            raise KubeconfigError(f"{source.origin} {source.path}: {reason}")
        tried.append(f"{source.path or 'in-cluster'} ({reason})")
    if not env.get("KUBECONFIG"):
        tried.insert(0, "$KUBECONFIG (not set)")
    raise KubeconfigError(
        f"no kubeconfig found; looked at: {'; '.join(tried)}. Give --kubeconfig FILE"
    )


# User entries whose credentials come from running a program (or, for auth-provider,
# from a provider's refresh, which may run `cmd-path`). pyforward runs as root and
# forwards; it runs no program a file names.
CREDENTIAL_PROGRAMS = ("exec", "auth-provider")


def _loader(path: str) -> tuple[Any, Any]:
    """The merged config and the client's own loader for the file(s), as load_kube_config
    builds them; the loader runs nothing until `load_and_set`."""
    import kubernetes  # noqa: PLC0415  (lazy: static runs never need it)

    kube_config: Any = kubernetes.config.kube_config  # untyped at this edge
    merged = kube_config.KubeConfigMerger(path)
    if merged.config is None:
        raise kube_config.ConfigException("no configuration found")
    loader = kube_config.KubeConfigLoader(config_dict=merged.config, config_base_path=None)
    return merged.config, loader


def _refusal(source: KubeconfigSource, config: Any, loader: Any) -> str | None:
    """Why the user entry the loader would use is refused, or None."""
    context = loader.current_context
    user_name = (context.get("context") or {}).get("user")
    if not user_name:
        return None
    # The entry the loader takes (its set_active_context): the first of that name.
    entry = config["users"].get_with_name(user_name, safe=True)
    raw = entry.safe_get("user") if entry is not None else None
    user = getattr(raw, "value", raw)  # a ConfigNode's dict, or the dict itself
    if not isinstance(user, dict):
        return None
    found = [key for key in CREDENTIAL_PROGRAMS if key in user]
    if not found:
        return None
    settings = user[found[0]] if isinstance(user[found[0]], dict) else {}
    if found[0] == "exec":
        how = f"exec: runs {settings['command']!r}" if settings.get("command") else "exec"
    else:
        how = f"auth-provider {settings['name']!r}" if settings.get("name") else "auth-provider"
    where = "" if entry.path == source.path else f" (in {entry.path})"
    return (
        f"kubeconfig {source}: user {user_name!r}{where} of context {context.get('name')!r} "
        f"gets its credentials from a program ({how}); pyforward runs no program named in "
        "a kubeconfig: give it one whose user has a token or a client certificate, such as "
        "a ServiceAccount token allowed to list and watch services and nodes"
    )


def check_credentials(source: KubeconfigSource) -> None:
    """Refuse a kubeconfig whose user needs a program run (exec, auth-provider).

    For install, which hands the file over: a file the client could not load anyway is
    left for the service to report, in the client's own words. Imports kubernetes."""
    if source.path is None:
        return
    try:
        refusal = _refusal(source, *_loader(source.path))
    except Exception:  # the client's errors have no common base
        return
    if refusal is not None:
        raise KubeconfigError(refusal)


def load_configuration(source: KubeconfigSource) -> Any:
    """A `kubernetes.client.Configuration` for the source. Imports kubernetes.

    A user entry with `exec:` or `auth-provider:` is refused before anything runs."""
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
            # load_kube_config, in its steps: the user entry is checked before it is used.
            merged, loader = _loader(source.path)
            refusal = _refusal(source, merged, loader)
            if refusal is not None:
                raise KubeconfigError(refusal)
            loader.load_and_set(configuration)
    except (
        config.ConfigException,
        yaml.YAMLError,
        OSError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
    ) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise KubeconfigError(f"kubeconfig {source}: cannot be used: {detail}") from None
    # Retries are ours (with backoff); urllib3's own would hide the first error's cause.
    configuration.retries = False
    return configuration
