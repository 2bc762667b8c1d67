"""Golden bytes of the layer-2 frames, each cross-checked against scapy's own reading and building.

The hex below is the contract: what goes on the wire. scapy (not used by `announce.frames`)
independently confirms every field and checksum, so a golden frame cannot be wrong in a way the
builder shares.
"""

from __future__ import annotations

import _socket
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest

from announce import frames
from announce.frames import ArpRequest, NeighborSolicitation


@contextmanager
def real_inet_ntop() -> Iterator[None]:
    # pysyncobj (imported by other test modules) replaces socket.inet_ntop on every platform
    # with a Windows-only function that raises TypeError (pysyncobj/win_inet_pton.py). scapy
    # needs the real one, at import and whenever it shows an address.
    replaced = socket.inet_ntop
    socket.inet_ntop = _socket.inet_ntop
    try:
        yield
    finally:
        socket.inet_ntop = replaced


with real_inet_ntop():
    from scapy.layers.inet6 import (
        ICMPv6ND_NA,
        ICMPv6ND_NS,
        ICMPv6NDOptDstLLAddr,
        ICMPv6NDOptSrcLLAddr,
        IPv6,
    )
    from scapy.layers.l2 import ARP, Dot1Q, Ether
    from scapy.packet import Packet


@pytest.fixture(autouse=True)
def _real_inet_ntop() -> Iterator[None]:
    with real_inet_ntop():
        yield


BROADCAST = b"\xff" * 6
OWNER = "02:00:5e:10:00:01"
CLIENT = "02:00:5e:10:00:99"
OWNER_MAC = frames.mac_bytes(OWNER)
CLIENT_MAC = frames.mac_bytes(CLIENT)
VIP4 = IPv4Address("192.0.2.200")
VIP6 = IPv6Address("2001:db8:1::200")
CLIENT4 = IPv4Address("192.0.2.100")
CLIENT6 = IPv6Address("2001:db8:1::100")

GARP_REQUEST = bytes.fromhex(
    "ffff ffff ffff 0200 5e10 0001 0806 0001 0800 0604 0001 0200 5e10 0001 c000 02c8"
    "0000 0000 0000 c000 02c8"
)
GARP_REPLY = bytes.fromhex(
    "ffff ffff ffff 0200 5e10 0001 0806 0001 0800 0604 0002 0200 5e10 0001 c000 02c8"
    "0200 5e10 0001 c000 02c8"
)
ARP_REQUEST = bytes.fromhex(
    "ffff ffff ffff 0200 5e10 0099 0806 0001 0800 0604 0001 0200 5e10 0099 c000 0264"
    "0000 0000 0000 c000 02c8"
)
ARP_REPLY = bytes.fromhex(
    "0200 5e10 0099 0200 5e10 0001 0806 0001 0800 0604 0002 0200 5e10 0001 c000 02c8"
    "0200 5e10 0099 c000 0264"
)
ARP_PROBE_REPLY = bytes.fromhex(
    "0200 5e10 0099 0200 5e10 0001 0806 0001 0800 0604 0002 0200 5e10 0001 c000 02c8"
    "0200 5e10 0099 0000 0000"
)
UNSOLICITED_NA = bytes.fromhex(
    "3333 0000 0001 0200 5e10 0001 86dd 6000 0000 0020 3aff 2001 0db8 0001 0000 0000"
    "0000 0000 0200 ff02 0000 0000 0000 0000 0000 0000 0001 8800 971a 2000 0000 2001"
    "0db8 0001 0000 0000 0000 0000 0200 0201 0200 5e10 0001"
)
NS = bytes.fromhex(
    "3333 ff00 0200 0200 5e10 0099 86dd 6000 0000 0020 3aff 2001 0db8 0001 0000 0000"
    "0000 0000 0100 ff02 0000 0000 0000 0000 0001 ff00 0200 8700 b881 0000 0000 2001"
    "0db8 0001 0000 0000 0000 0000 0200 0101 0200 5e10 0099"
)
NA_REPLY = bytes.fromhex(
    "0200 5e10 0099 0200 5e10 0001 86dd 6000 0000 0020 3aff 2001 0db8 0001 0000 0000"
    "0000 0000 0200 2001 0db8 0001 0000 0000 0000 0000 0100 8800 2764 6000 0000 2001"
    "0db8 0001 0000 0000 0000 0000 0200 0201 0200 5e10 0001"
)
DAD_NS = bytes.fromhex(
    "3333 ff00 0200 0200 5e10 0099 86dd 6000 0000 0018 3aff 0000 0000 0000 0000 0000"
    "0000 0000 0000 ff02 0000 0000 0000 0000 0001 ff00 0200 8700 48ee 0000 0000 2001"
    "0db8 0001 0000 0000 0000 0000 0200"
)
NUD_NS = bytes.fromhex(
    "0200 5e10 0001 0200 5e10 0099 86dd 6000 0000 0020 3aff 2001 0db8 0001 0000 0000"
    "0000 0000 0100 2001 0db8 0001 0000 0000 0000 0000 0200 8700 88cc 0000 0000 2001"
    "0db8 0001 0000 0000 0000 0000 0200 0101 0200 5e10 0099"
)
# The answer to DAD_NS is the unsolicited NA itself: to ff02::1, override only.
DAD_NA = UNSOLICITED_NA


def rechecked(frame: bytes) -> Packet:
    """scapy's reading of `frame`, after asserting scapy computes the same checksum."""
    pkt = Ether(frame)
    if pkt.haslayer(IPv6):
        fresh = pkt.copy()
        del fresh[IPv6].plen
        layer = fresh[IPv6].payload
        del layer.cksum
        assert bytes(fresh) == frame, "scapy computes another checksum or length"
    return pkt


# --- ARP ---------------------------------------------------------------------------------------


def test_garp_request() -> None:
    assert frames.garp_request(OWNER_MAC, VIP4) == GARP_REQUEST
    pkt = rechecked(GARP_REQUEST)
    assert (pkt.dst, pkt.src, pkt.type) == ("ff:ff:ff:ff:ff:ff", OWNER, 0x0806)
    arp = pkt[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.pdst) == (1, OWNER, str(VIP4), str(VIP4))
    assert arp.hwdst == "00:00:00:00:00:00"
    expected = Ether(dst="ff:ff:ff:ff:ff:ff", src=OWNER) / ARP(
        op=1, hwsrc=OWNER, psrc=str(VIP4), hwdst="00:00:00:00:00:00", pdst=str(VIP4)
    )
    assert bytes(expected) == GARP_REQUEST


def test_garp_reply_has_target_mac_equal_sender_mac() -> None:
    # Linux counts a reply as gratuitous (overriding inside locktime) only with tha == sha.
    assert frames.garp_reply(OWNER_MAC, VIP4) == GARP_REPLY
    arp = rechecked(GARP_REPLY)[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == (
        2,
        OWNER,
        str(VIP4),
        OWNER,
        str(VIP4),
    )


def test_arp_reply_answers_the_asker() -> None:
    request = frames.parse(ARP_REQUEST)
    assert request == ArpRequest(sender_mac=CLIENT_MAC, sender_ip=CLIENT4, target_ip=VIP4)
    assert isinstance(request, ArpRequest)
    assert not request.is_gratuitous
    assert frames.arp_reply(OWNER_MAC, VIP4, request) == ARP_REPLY
    pkt = rechecked(ARP_REPLY)
    assert (pkt.dst, pkt.src) == (CLIENT, OWNER)
    arp = pkt[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == (
        2,
        OWNER,
        str(VIP4),
        CLIENT,
        str(CLIENT4),
    )
    scapy_request = Ether(dst="ff:ff:ff:ff:ff:ff", src=CLIENT) / ARP(
        op=1, hwsrc=CLIENT, psrc=str(CLIENT4), pdst=str(VIP4)
    )
    assert bytes(scapy_request) == ARP_REQUEST
    assert frames.arp_request(CLIENT_MAC, CLIENT4, VIP4) == ARP_REQUEST


def test_arp_probe_gets_a_reply_to_zero_like_linux() -> None:
    probe = ArpRequest(sender_mac=CLIENT_MAC, sender_ip=IPv4Address(0), target_ip=VIP4)
    assert frames.arp_reply(OWNER_MAC, VIP4, probe) == ARP_PROBE_REPLY
    assert rechecked(ARP_PROBE_REPLY)[ARP].pdst == "0.0.0.0"


def test_parse_reads_gratuitous_requests_as_announcements() -> None:
    parsed = frames.parse(GARP_REQUEST)
    assert isinstance(parsed, ArpRequest)
    assert parsed.is_gratuitous
    assert parsed.sender_mac == OWNER_MAC


def test_parse_accepts_padded_frames() -> None:
    assert frames.parse(ARP_REQUEST + bytes(18)) == frames.parse(ARP_REQUEST)
    assert frames.parse(NS + bytes(4)) == frames.parse(NS)


# --- IPv6 neighbour discovery ------------------------------------------------------------------


def test_unsolicited_na() -> None:
    assert frames.unsolicited_na(OWNER_MAC, VIP6) == UNSOLICITED_NA
    pkt = rechecked(UNSOLICITED_NA)
    assert (pkt.dst, pkt.src) == ("33:33:00:00:00:01", OWNER)
    ip = pkt[IPv6]
    assert (ip.src, ip.dst, ip.hlim, ip.nh) == (str(VIP6), "ff02::1", 255, 58)
    na = pkt[ICMPv6ND_NA]
    assert (na.R, na.S, na.O, na.tgt) == (0, 0, 1, str(VIP6))
    assert pkt[ICMPv6NDOptDstLLAddr].lladdr == OWNER
    expected = (
        Ether(dst="33:33:00:00:00:01", src=OWNER)
        / IPv6(src=str(VIP6), dst="ff02::1", hlim=255)
        / ICMPv6ND_NA(R=0, S=0, O=1, tgt=str(VIP6))
        / ICMPv6NDOptDstLLAddr(lladdr=OWNER)
    )
    assert bytes(expected) == UNSOLICITED_NA


def test_ns_is_parsed() -> None:
    parsed = frames.parse(NS)
    assert parsed == NeighborSolicitation(
        eth_source=CLIENT_MAC, source_ip=CLIENT6, target=VIP6, source_lladdr=CLIENT_MAC
    )
    pkt = rechecked(NS)
    assert pkt[IPv6].dst == "ff02::1:ff00:200"
    assert pkt.dst == "33:33:ff:00:02:00"
    assert pkt[ICMPv6ND_NS].tgt == str(VIP6)
    assert pkt[ICMPv6NDOptSrcLLAddr].lladdr == CLIENT
    assert frames.neighbor_solicitation(CLIENT_MAC, CLIENT6, VIP6) == NS
    expected = (
        Ether(dst="33:33:ff:00:02:00", src=CLIENT)
        / IPv6(src=str(CLIENT6), dst="ff02::1:ff00:200", hlim=255)
        / ICMPv6ND_NS(tgt=str(VIP6))
        / ICMPv6NDOptSrcLLAddr(lladdr=CLIENT)
    )
    assert bytes(expected) == NS


def test_na_reply_is_solicited_and_unicast() -> None:
    solicitation = frames.parse(NS)
    assert isinstance(solicitation, NeighborSolicitation)
    assert frames.na_reply(OWNER_MAC, VIP6, solicitation) == NA_REPLY
    pkt = rechecked(NA_REPLY)
    assert (pkt.dst, pkt.src) == (CLIENT, OWNER)
    assert (pkt[IPv6].src, pkt[IPv6].dst, pkt[IPv6].hlim) == (str(VIP6), str(CLIENT6), 255)
    na = pkt[ICMPv6ND_NA]
    assert (na.R, na.S, na.O, na.tgt) == (0, 1, 1, str(VIP6))
    assert pkt[ICMPv6NDOptDstLLAddr].lladdr == OWNER


def test_dad_ns_is_answered_to_all_nodes_without_solicited_flag() -> None:
    dad = frames.parse(DAD_NS)
    assert dad == NeighborSolicitation(
        eth_source=CLIENT_MAC, source_ip=IPv6Address("::"), target=VIP6, source_lladdr=None
    )
    assert isinstance(dad, NeighborSolicitation)
    assert frames.neighbor_solicitation(CLIENT_MAC, IPv6Address("::"), VIP6) == DAD_NS
    rechecked(DAD_NS)
    assert frames.na_reply(OWNER_MAC, VIP6, dad) == DAD_NA
    na = rechecked(DAD_NA)[ICMPv6ND_NA]
    assert (na.S, na.O) == (0, 1)


def test_nud_ns_is_unicast_and_answered_unicast() -> None:
    nud = frames.parse(NUD_NS)
    assert isinstance(nud, NeighborSolicitation)
    assert nud.target == VIP6
    assert frames.neighbor_solicitation(CLIENT_MAC, CLIENT6, VIP6, eth_dst=OWNER_MAC) == NUD_NS
    assert rechecked(NUD_NS)[IPv6].dst == str(VIP6)
    assert frames.na_reply(OWNER_MAC, VIP6, nud) == NA_REPLY


def test_na_reply_without_lladdr_option_goes_to_the_frame_source() -> None:
    bare = NeighborSolicitation(
        eth_source=CLIENT_MAC, source_ip=CLIENT6, target=VIP6, source_lladdr=None
    )
    assert frames.na_reply(OWNER_MAC, VIP6, bare) == NA_REPLY


# --- what parse refuses ------------------------------------------------------------------------


def _ns_with(**changes: object) -> bytes:
    fields: dict[str, Any] = {"src": str(CLIENT6), "dst": "ff02::1:ff00:200", "hlim": 255}
    ns: dict[str, Any] = {"tgt": str(VIP6)}
    for key, value in changes.items():
        (ns if key in {"tgt", "code"} else fields)[key] = value
    pkt = (
        Ether(dst="33:33:ff:00:02:00", src=CLIENT)
        / IPv6(**fields)
        / ICMPv6ND_NS(**ns)
        / ICMPv6NDOptSrcLLAddr(lladdr=CLIENT)
    )
    return bytes(pkt)


def _corrupt(frame: bytes, at: int, value: int) -> bytes:
    return frame[:at] + bytes([value]) + frame[at + 1 :]


# Built when the test runs (scapy needs the real inet_ntop, see above), not at import.
REFUSED: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "truncated ARP": lambda: ARP_REQUEST[:41],
    "ARP reply": lambda: ARP_REPLY,
    "gratuitous reply": lambda: GARP_REPLY,
    "ARP for another protocol": lambda: _corrupt(ARP_REQUEST, 16, 0x86),
    "NA": lambda: UNSOLICITED_NA,
    "IPv4 frame": lambda: bytes(Ether(dst=OWNER, src=CLIENT, type=0x0800) / (b"\x45" + bytes(40))),
    "VLAN-tagged ARP": lambda: bytes(
        Ether(dst="ff:ff:ff:ff:ff:ff", src=CLIENT) / Dot1Q(vlan=5) / ARP(pdst=str(VIP4))
    ),
    "NS with a bad checksum": lambda: _corrupt(NS, 57, NS[57] ^ 1),
    "NS truncated": lambda: NS[:-4],
    "NS with hop limit 254": lambda: _ns_with(hlim=254),
    "NS with code 1": lambda: _ns_with(code=1),
    "NS for a multicast target": lambda: _ns_with(tgt="ff02::1"),
    "DAD NS with a link-layer option": lambda: _ns_with(src="::"),
    "DAD NS not to a solicited-node group": lambda: _ns_with(src="::", dst="ff02::1"),
    "NS with a zero-length option": lambda: _corrupt(NS, 79, 0),
    "not IPv6": lambda: _corrupt(NS, 14, 0x40),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_parse_refuses(name: str) -> None:
    assert frames.parse(REFUSED[name]()) is None, name


def test_the_refused_ns_variants_are_valid_apart_from_the_one_change() -> None:
    assert frames.parse(_ns_with()) == frames.parse(NS)


# --- helpers -----------------------------------------------------------------------------------


def test_solicited_node_group_and_its_mac() -> None:
    group = frames.solicited_node(IPv6Address("2001:db8:1::abcd:1234"))
    assert group == IPv6Address("ff02::1:ffcd:1234")
    assert frames.mac_str(frames.multicast_mac(group)) == "33:33:ff:cd:12:34"


@pytest.mark.parametrize("bad", ["", "02:00:5e:10:00", "02:00:5e:10:00:zz", "2:0:5e:10:0:1"])
def test_mac_bytes_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="MAC"):
        frames.mac_bytes(bad)


def test_checksum_of_odd_length_and_of_a_valid_block() -> None:
    assert frames.checksum(b"\x01") == 0xFEFF
    assert frames.checksum(b"\x12\x34" + struct.pack("!H", frames.checksum(b"\x12\x34"))) == 0


# --- the socket filter, run by a tiny classic-BPF interpreter ----------------------------------


def run_bpf(program: tuple[tuple[int, int, int, int], ...], frame: bytes) -> int:
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = program[pc]
        if code == 0x28:  # ldh [k]
            acc = int.from_bytes(frame[k : k + 2], "big") if k + 2 <= len(frame) else -1
        elif code == 0x30:  # ldb [k]
            acc = frame[k] if k < len(frame) else -1
        elif code == 0x15:  # jeq #k
            pc += jt if acc == k else jf
        elif code == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"unknown opcode {code:#x}")
        if acc == -1:
            return 0  # the kernel drops a frame read out of bounds
        pc += 1


@pytest.mark.parametrize(
    ("frame", "accepted"),
    [
        (ARP_REQUEST, True),
        (GARP_REQUEST, True),
        (NS, True),
        (DAD_NS, True),
        (ARP_REPLY, False),
        (GARP_REPLY, False),
        (UNSOLICITED_NA, False),
        (NA_REPLY, False),
        (BROADCAST + CLIENT_MAC + b"\x08\x00" + bytes(60), False),
        (ARP_REQUEST[:14], False),
    ],
)
def test_socket_filter(frame: bytes, accepted: bool) -> None:
    assert (run_bpf(frames.SOCKET_FILTER, frame) > 0) is accepted
