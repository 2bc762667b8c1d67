"""Loopback ports for tests."""

from __future__ import annotations

from appliance.lab.local import free_ports


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return free_ports(1)[0]


__all__ = ["free_port", "free_ports"]
