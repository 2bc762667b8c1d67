"""The lab: raftlb clusters on one machine, as agents on 127.0.0.1 (`local`) or in network
namespaces (`netlab`), and the benchmarks and demos run on them."""


class LabError(Exception):
    """The lab cannot do what was asked; the message says what to look at."""
