"""The sysctls a forwarding node needs: set by the agent, reported when wrong."""

from __future__ import annotations

from pathlib import Path

from appliance.dataplane.nft import FORWARDING_SYSCTLS, set_forwarding_sysctls, sysctl_problems


def fake_proc(tmp_path: Path, value: str) -> Path:
    for key in FORWARDING_SYSCTLS:
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_text(value + "\n")
    return tmp_path


def test_wrong_sysctls_are_named_with_what_they_should_be(tmp_path: Path) -> None:
    root = fake_proc(tmp_path, "1")
    assert sysctl_problems(root) == [
        "net.ipv4.conf.all.send_redirects=1 (want 0)",
        "net.ipv4.conf.default.send_redirects=1 (want 0)",
    ]
    assert set_forwarding_sysctls(root) == []
    assert sysctl_problems(root) == []


def test_a_sysctl_that_cannot_be_set_says_how_to_set_it(tmp_path: Path) -> None:
    root = fake_proc(tmp_path, "0")
    (root / "net/ipv4/ip_forward").unlink()
    (root / "net/ipv4/ip_forward").mkdir()  # unwritable as a file
    problems = set_forwarding_sysctls(root)
    assert len(problems) == 1
    assert "sysctl -w net.ipv4.ip_forward=1" in problems[0]
    assert "net.ipv4.ip_forward=unreadable (want 1)" in sysctl_problems(root)
