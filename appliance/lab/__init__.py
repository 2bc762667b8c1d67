"""The lab: raftlb clusters on one machine (loopback now; network namespaces later)."""
