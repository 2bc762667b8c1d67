"""The neighbour asker's pure parts: reply parsing and who-answered analysis."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from announce import frames
from appliance.lab.neighask import (
    ID_SENDER4,
    Reply,
    Run,
    double_answers,
    id_mac,
    parse_reply,
    reply_runs,
)

OWNER = bytes.fromhex("02aabbccddee")


def test_parse_the_announcers_arp_reply_to_an_asked_request() -> None:
    request = frames.parse(frames.arp_request(id_mac(7), ID_SENDER4, IPv4Address("192.0.2.200")))
    assert isinstance(request, frames.ArpRequest)
    frame = frames.arp_reply(OWNER, IPv4Address("192.0.2.200"), request)
    assert parse_reply(frame, 1.5) == Reply(7, "192.0.2.200", "02:aa:bb:cc:dd:ee", 1.5)


def test_parse_the_announcers_na_to_an_asked_solicitation() -> None:
    vip = IPv6Address("2001:db8:1::200")
    asked = frames.neighbor_solicitation(id_mac(9), IPv6Address("2001:db8:1::ff:9"), vip)
    solicitation = frames.parse(asked)
    assert isinstance(solicitation, frames.NeighborSolicitation)
    frame = frames.na_reply(OWNER, vip, solicitation)
    assert parse_reply(frame, 2.0) == Reply(9, "2001:db8:1::200", "02:aa:bb:cc:dd:ee", 2.0)


def test_frames_not_addressed_to_an_id_mac_are_ignored() -> None:
    assert parse_reply(frames.garp_reply(OWNER, IPv4Address("192.0.2.200")), 0.0) is None
    assert parse_reply(frames.unsolicited_na(OWNER, IPv6Address("2001:db8:1::200")), 0.0) is None
    assert parse_reply(b"\x02\xfe" + bytes(10), 0.0) is None  # too short to be anything


def r(ident: int, mac: str, at: float, vip: str = "192.0.2.200") -> Reply:
    return Reply(ident, vip, mac, at)


def test_runs_follow_arrival_order_per_vip() -> None:
    replies = [r(3, "b", 0.3), r(1, "a", 0.1), r(2, "a", 0.2), r(4, "b", 0.4), r(5, "x", 0.5, "v6")]
    assert reply_runs(replies, "192.0.2.200") == [Run("a", 0.1, 0.2, 2), Run("b", 0.3, 0.4, 2)]
    assert reply_runs(replies, "v6") == [Run("x", 0.5, 0.5, 1)]
    assert reply_runs([], "192.0.2.200") == []


def test_alternating_answers_show_as_more_runs() -> None:
    replies = [r(1, "a", 0.1), r(2, "b", 0.2), r(3, "a", 0.3)]
    assert [run.mac for run in reply_runs(replies, "192.0.2.200")] == ["a", "b", "a"]


def test_double_answers_are_requests_answered_by_two_macs() -> None:
    replies = [r(1, "a", 0.1), r(1, "a", 0.11), r(2, "a", 0.2), r(2, "b", 0.21)]
    assert double_answers(replies) == {2: {"a", "b"}}
