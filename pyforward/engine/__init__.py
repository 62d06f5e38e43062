"""Accepting connections: listeners, the forwarder, target health, the runtime."""
