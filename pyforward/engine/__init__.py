"""Accepting connections: listeners, the accept gate, target sources and health, the runtime."""
