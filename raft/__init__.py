"""Replicated cluster state on pysyncobj: pools, allocations, services, members."""
