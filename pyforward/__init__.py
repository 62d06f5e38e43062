"""pyforward: a TCP forwarder for exposing a Kubernetes ingress on a host's ports."""

__version__ = "0.1.0"
