"""Layer-2 wire formats for VIP announcing: ARP and IPv6 neighbour discovery frames as bytes.

Pure code, no I/O and no scapy: the announcer builds every answer on its hot path, so frames are
packed with `struct` into whole Ethernet frames (no padding; drivers pad short frames). Parsing
accepts only what the announcer acts on, an ARP request or a valid neighbour solicitation, and
returns None for anything else. `SOCKET_FILTER` is the classic BPF program that lets only those
two kinds of frame reach the announcer's socket.

Choices that matter to receivers:
- The gratuitous ARP *reply* carries target MAC = sender MAC: Linux treats a reply as gratuitous
  (and lets it override a fresh neighbour entry inside `locktime`) only then.
- Neighbour advertisements use the VIP as IPv6 source (as keepalived does); the VIP is not on
  any interface, so there is no other address that names the owner of the target.
- An NS from `::` (duplicate address detection) is answered to ff02::1 with the solicited flag
  clear (RFC 4861 7.2.4); any other NS gets a unicast NA with solicited and override set.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ICMPV6 = 58
ND_NEIGHBOR_SOLICIT = 135
ND_NEIGHBOR_ADVERT = 136
OPT_SOURCE_LLADDR = 1
OPT_TARGET_LLADDR = 2
NA_ROUTER = 0x80
NA_SOLICITED = 0x40
NA_OVERRIDE = 0x20

BROADCAST_MAC = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
ALL_NODES = IPv6Address("ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"

_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_ARP_REQUEST_HEAD = b"\x00\x01\x08\x00\x06\x04\x00\x01"  # Ethernet, IPv4, 6, 4, op 1
_IPV6 = struct.Struct("!IHBB16s16s")
_NA = struct.Struct("!BBHB3x16sBB6s")  # type, code, checksum, flags, target, option
_ETH_LEN = 14
_IPV6_LEN = 40
_ND_LEN = 24  # ICMPv6 header + reserved/flags + target


@dataclass(frozen=True, slots=True)
class ArpRequest:
    """An ARP request seen on the wire: who has `target_ip`, tell `sender_ip` at `sender_mac`."""

    sender_mac: bytes
    sender_ip: IPv4Address
    target_ip: IPv4Address

    @property
    def is_gratuitous(self) -> bool:
        """An announcement (sender = target), not a question: it is never answered."""
        return self.sender_ip == self.target_ip


@dataclass(frozen=True, slots=True)
class NeighborSolicitation:
    """A valid NS: who has `target`, asked by `source_ip` (`::` for DAD)."""

    eth_source: bytes
    source_ip: IPv6Address
    target: IPv6Address
    source_lladdr: bytes | None  # the source link-layer address option, if present

    @property
    def reply_mac(self) -> bytes:
        """Where a unicast answer goes: the link-layer option, else the frame's source."""
        return self.source_lladdr if self.source_lladdr is not None else self.eth_source


Parsed = ArpRequest | NeighborSolicitation


def mac_bytes(mac: str) -> bytes:
    """'02:00:5e:10:00:01' -> 6 bytes. Raises ValueError naming the bad value."""
    parts = mac.replace("-", ":").split(":")
    try:
        raw = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"not a MAC address: {mac!r}") from None
    if len(parts) != 6 or any(len(p) != 2 for p in parts):
        raise ValueError(f"not a MAC address: {mac!r}")
    return raw


def mac_str(mac: bytes) -> str:
    """6 bytes -> '02:00:5e:10:00:01'."""
    return ":".join(f"{b:02x}" for b in mac)


def solicited_node(address: IPv6Address) -> IPv6Address:
    """The solicited-node multicast group of `address` (ff02::1:ffXX:XXXX)."""
    return IPv6Address(b"\xff\x02" + b"\x00" * 9 + b"\x01\xff" + address.packed[13:])


def multicast_mac(group: IPv6Address) -> bytes:
    """The Ethernet address an IPv6 multicast group maps to (33:33 + last 32 bits)."""
    return b"\x33\x33" + group.packed[12:]


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`: 0 when `data` includes a correct one."""
    if len(data) % 2:
        data += b"\x00"
    words: tuple[int, ...] = struct.unpack(f"!{len(data) // 2}H", data)
    total = sum(words)
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo_header(src: bytes, dst: bytes, length: int) -> bytes:
    return src + dst + struct.pack("!I3xB", length, ICMPV6)


# --- ARP ---------------------------------------------------------------------------------------


def _arp(
    eth_dst: bytes, mac: bytes, op: int, sender: bytes, target_mac: bytes, target: bytes
) -> bytes:
    return _ETH.pack(eth_dst, mac, ETH_P_ARP) + _ARP.pack(
        1, 0x0800, 6, 4, op, mac, sender, target_mac, target
    )


def garp_request(mac: bytes, vip: IPv4Address) -> bytes:
    """Gratuitous ARP request (RFC 5227 announcement): broadcast, sender = target = vip."""
    return _arp(BROADCAST_MAC, mac, 1, vip.packed, ZERO_MAC, vip.packed)


def garp_reply(mac: bytes, vip: IPv4Address) -> bytes:
    """Gratuitous ARP reply: broadcast, sender = target = vip, target MAC = sender MAC."""
    return _arp(BROADCAST_MAC, mac, 2, vip.packed, mac, vip.packed)


def arp_reply(mac: bytes, vip: IPv4Address, request: ArpRequest) -> bytes:
    """The answer to `request` for `vip`, unicast to the asker (also to 0.0.0.0 probes)."""
    return _arp(
        request.sender_mac, mac, 2, vip.packed, request.sender_mac, request.sender_ip.packed
    )


def arp_request(mac: bytes, sender: IPv4Address, target: IPv4Address) -> bytes:
    """A broadcast ARP request (who has `target`): for probing in tests and tools."""
    return _arp(BROADCAST_MAC, mac, 1, sender.packed, ZERO_MAC, target.packed)


# --- IPv6 neighbour discovery ------------------------------------------------------------------


def _icmpv6_frame(
    eth_dst: bytes, mac: bytes, src: IPv6Address, dst: IPv6Address, body: bytes
) -> bytes:
    # `body` has a zero checksum at bytes 2-3; fill it in over the pseudo-header.
    src_b, dst_b = src.packed, dst.packed
    csum = checksum(_pseudo_header(src_b, dst_b, len(body)) + body)
    icmp = body[:2] + struct.pack("!H", csum) + body[4:]
    ip = _IPV6.pack(6 << 28, len(icmp), ICMPV6, 255, src_b, dst_b)
    return _ETH.pack(eth_dst, mac, ETH_P_IPV6) + ip + icmp


def _na(eth_dst: bytes, mac: bytes, vip: IPv6Address, dst: IPv6Address, flags: int) -> bytes:
    body = _NA.pack(ND_NEIGHBOR_ADVERT, 0, 0, flags, vip.packed, OPT_TARGET_LLADDR, 1, mac)
    return _icmpv6_frame(eth_dst, mac, vip, dst, body)


def unsolicited_na(mac: bytes, vip: IPv6Address) -> bytes:
    """Unsolicited NA for `vip` to ff02::1: override set, solicited and router clear."""
    return _na(ALL_NODES_MAC, mac, vip, ALL_NODES, NA_OVERRIDE)


def na_reply(mac: bytes, vip: IPv6Address, solicitation: NeighborSolicitation) -> bytes:
    """The NA answering `solicitation` for `vip` (to ff02::1 if it came from `::`)."""
    if solicitation.source_ip.is_unspecified:
        return _na(ALL_NODES_MAC, mac, vip, ALL_NODES, NA_OVERRIDE)
    return _na(solicitation.reply_mac, mac, vip, solicitation.source_ip, NA_SOLICITED | NA_OVERRIDE)


def neighbor_solicitation(
    mac: bytes, source: IPv6Address, target: IPv6Address, eth_dst: bytes | None = None
) -> bytes:
    """An NS for `target` (for tests and tools): to its solicited-node group, or unicast to
    `eth_dst` and the target address (NUD); a source link-layer option unless from `::`."""
    dst = solicited_node(target) if eth_dst is None else target
    option = b"" if source.is_unspecified else bytes([OPT_SOURCE_LLADDR, 1]) + mac
    body = struct.pack("!BBH4x16s", ND_NEIGHBOR_SOLICIT, 0, 0, target.packed) + option
    return _icmpv6_frame(eth_dst or multicast_mac(dst), mac, source, dst, body)


# --- parsing -----------------------------------------------------------------------------------


def parse(frame: bytes) -> Parsed | None:
    """An ARP request or a valid NS in `frame` (Ethernet, untagged), else None."""
    if len(frame) < 42:
        return None
    ethertype = frame[12] << 8 | frame[13]
    if ethertype == ETH_P_ARP:
        return _parse_arp(frame)
    if ethertype == ETH_P_IPV6:
        return _parse_ns(frame)
    return None


def _parse_arp(frame: bytes) -> ArpRequest | None:
    if frame[14:22] != _ARP_REQUEST_HEAD:
        return None
    return ArpRequest(
        sender_mac=frame[22:28],
        sender_ip=IPv4Address(frame[28:32]),
        target_ip=IPv4Address(frame[38:42]),
    )


def _parse_ns(frame: bytes) -> NeighborSolicitation | None:
    # RFC 4861 7.1.1 validity checks; extension headers are not followed (NS never needs one).
    icmp_at = _ETH_LEN + _IPV6_LEN
    if len(frame) < icmp_at + _ND_LEN or frame[14] >> 4 != 6:
        return None
    length = frame[18] << 8 | frame[19]
    if frame[20] != ICMPV6 or frame[21] != 255 or length < _ND_LEN:
        return None
    if frame[icmp_at] != ND_NEIGHBOR_SOLICIT or frame[icmp_at + 1] != 0:
        return None
    if len(frame) < icmp_at + length:
        return None
    icmp = frame[icmp_at : icmp_at + length]
    src, dst = frame[22:38], frame[38:54]
    if checksum(_pseudo_header(src, dst, length) + icmp) != 0:
        return None
    target = IPv6Address(icmp[8:24])
    if target.is_multicast:
        return None
    lladdr: bytes | None = None
    pos = _ND_LEN
    while pos < length:
        if pos + 2 > length:
            return None
        kind, units = icmp[pos], icmp[pos + 1]
        if units == 0 or pos + units * 8 > length:
            return None
        if kind == OPT_SOURCE_LLADDR and units == 1:
            lladdr = icmp[pos + 2 : pos + 8]
        pos += units * 8
    source = IPv6Address(src)
    if source.is_unspecified and (lladdr is not None or dst[:13] != _SOLICITED_PREFIX):
        return None
    return NeighborSolicitation(
        eth_source=frame[6:12], source_ip=source, target=target, source_lladdr=lladdr
    )


_SOLICITED_PREFIX = solicited_node(IPv6Address("::")).packed[:13]


# --- socket filter -----------------------------------------------------------------------------

# Classic BPF (struct sock_filter: code, jt, jf, k): accept ARP requests and ICMPv6 NS (no
# extension headers), drop the rest in the kernel. Offsets are into the Ethernet frame.
_LDH, _LDB, _JEQ, _RET = 0x28, 0x30, 0x15, 0x06
SOCKET_FILTER: tuple[tuple[int, int, int, int], ...] = (
    (_LDH, 0, 0, 12),  # 0: ethertype
    (_JEQ, 0, 2, ETH_P_ARP),  # 1: ARP -> 2, else -> 4
    (_LDH, 0, 0, 20),  # 2: ARP opcode
    (_JEQ, 5, 6, 1),  # 3: request -> accept, else drop
    (_JEQ, 0, 5, ETH_P_IPV6),  # 4: IPv6 -> 5, else drop
    (_LDB, 0, 0, 20),  # 5: next header
    (_JEQ, 0, 3, ICMPV6),  # 6: ICMPv6 -> 7, else drop
    (_LDB, 0, 0, 54),  # 7: ICMPv6 type
    (_JEQ, 0, 1, ND_NEIGHBOR_SOLICIT),  # 8: NS -> accept, else drop
    (_RET, 0, 0, 0x40000),  # 9: accept (whole frame)
    (_RET, 0, 0, 0),  # 10: drop
)
