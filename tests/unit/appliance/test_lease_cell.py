"""The lease cell shared by the heartbeat helper and the agent (appliance/lease_cell.py)."""

from __future__ import annotations

import subprocess
import sys

from appliance.lease_cell import NO_LEASE, LeaseCell

WRITER = """
import sys
from appliance.lease_cell import LeaseCell
cell = LeaseCell(int(sys.argv[1]))
cell.write(int(sys.argv[2]), float(sys.argv[3]))
"""


def test_a_lease_written_by_another_process_is_read_here() -> None:
    cell = LeaseCell.create()
    try:
        assert cell.read() == NO_LEASE
        subprocess.run(
            [sys.executable, "-c", WRITER, str(cell.fd), "4", "123.5"],
            check=True,
            pass_fds=(cell.fd,),
            timeout=60,
        )
        assert cell.read() == (4, 123.5)
        cell.write(None, 7.0)
        assert cell.read() == (None, 7.0)
    finally:
        cell.close()


def test_a_torn_record_reads_as_no_lease() -> None:
    cell = LeaseCell.create()
    try:
        cell.write(2, 1e9)
        cell._map[10] ^= 0xFF  # a byte of the epoch changed under the reader (a racing write)
        assert cell.read() == NO_LEASE
    finally:
        cell.close()


def test_a_closed_cell_holds_no_lease() -> None:
    cell = LeaseCell.create()
    cell.write(1, 1e9)
    cell.close()
    assert cell.read() == NO_LEASE
