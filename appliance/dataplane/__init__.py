"""The data plane: nftables rules that forward a held VIP's traffic to its backends."""
