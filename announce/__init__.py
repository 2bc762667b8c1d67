"""Making VIPs reachable: layer-2 ARP/NDP answering (`l2`) and BGP through exabgp (`bgp`)."""
