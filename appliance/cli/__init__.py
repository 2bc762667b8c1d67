"""The `raftlb` command line."""
