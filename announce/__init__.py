"""Making VIPs reachable: layer-2 ARP/NDP answering and BGP (later issues)."""
