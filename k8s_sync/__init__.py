"""Kubernetes sync sidecar: Services and pod placement in, VIPs out (later issue)."""
