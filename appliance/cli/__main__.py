"""`python -m appliance.cli` runs the raftlb CLI (used to start agents with this interpreter)."""

from appliance.cli.main import main

main()
