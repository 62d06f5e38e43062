"""Discovery errors, each naming whose fault it is.

- `KubeconfigError` (exit 2): the user's environment gives no usable kubeconfig.
- `ApiUnreachable`: the API server could not be reached (network, TLS, timeouts).
- `ApiRefused`: the API server answered 401/403: credentials or RBAC.
- `ServiceNotFound`, `PortNotFound`, `NoNodePort`, `NoReadyNode`: the cluster's objects
  do not give a usable target.
"""

from __future__ import annotations

from pyforward.errors import ConfigError, StartupError


class KubeconfigError(ConfigError):
    """No kubeconfig found, or the one found cannot be used."""


class DiscoveryError(StartupError):
    """The cluster did not give a usable target."""

    # A permanent error will not go away by waiting (wrong credentials, missing RBAC).
    permanent = False


class ApiUnreachable(DiscoveryError):
    """The API server could not be reached or broke the connection."""


class ApiRefused(DiscoveryError):
    """The API server refused the request: 401 (credentials) or 403 (RBAC)."""

    permanent = True


class ApiFailed(DiscoveryError):
    """The API server answered with an error other than 401/403/404/410."""


class WatchExpired(DiscoveryError):
    """410 Gone: the resourceVersion is too old; list again, then watch."""


class ServiceNotFound(DiscoveryError):
    """The Service named by --service does not exist."""


class PortNotFound(DiscoveryError):
    """The Service has no port matching --service-port."""


class NoNodePort(DiscoveryError):
    """The port exists but has no nodePort (a ClusterIP Service)."""


class NoReadyNode(DiscoveryError):
    """No Ready node with an InternalIP."""


class BadObject(DiscoveryError):
    """The API returned an object without the fields every such object has."""
