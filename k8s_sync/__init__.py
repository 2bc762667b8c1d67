"""The Kubernetes sync (`raftlb k8s-sync`): Services of type LoadBalancer, their EndpointSlices
and the Nodes in; appliance services out, and their VIPs back into the Services' status.

It needs the Kubernetes client, an extra that agents do without: `raftlb[k8s]`.
"""

MISSING_CLIENT = (
    "the Kubernetes client is not installed: raftlb k8s-sync needs raftlb's k8s extra "
    "(pip install 'raftlb[k8s]')"
)
