"""Kubernetes discovery: find the ingress target from the cluster and keep following it.

Only `kubeconfig`, `api` and `watcher` touch the `kubernetes` package, and they import
it lazily: static forwarding never loads it.
"""
