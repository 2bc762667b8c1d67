"""Installing the lab's optional tools (keepalived, nginx, HAProxy, wrk) with apt-get."""

from __future__ import annotations

import os
import subprocess

from appliance.lab.netlab import Progress


def apt_install(packages: list[str], why: str, progress: Progress) -> str | None:
    """apt-get install `packages`; None when it worked, else apt-get's complaint. A fresh
    machine's package lists may be empty or old: then they are read (apt-get update) and the
    install tried once more."""
    progress(f"installing {', '.join(packages)} (apt-get) {why}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    result = subprocess.run(install, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0 and "Unable to locate package" in result.stderr:
        progress("apt-get update (the package lists do not have them)")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False, env=env)
        result = subprocess.run(install, capture_output=True, text=True, check=False, env=env)
    return None if result.returncode == 0 else result.stderr.strip()[-500:]
