"""What the Python benches share: polling, percentiles, finding a replica's process."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional


def wait(cond, timeout: float = 60.0, step: float = 0.01):
    """The first truthy value of `cond()` within `timeout` seconds, else TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise TimeoutError("condition not met")


def pct(values, p):
    """The p-th percentile (nearest rank) of `values`."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def replica_pid(name: str, *also: bytes) -> Optional[int]:
    """The host pid of sandbox replica `name` ("web-2"), found by its environment, which must
    hold each of `also` too (b"BLIXARD_ROLE=primary")."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"BLIXARD_REPLICA={name}".encode() in env and all(a in env for a in also):
            return int(entry)
    return None


def qemu_pid(replica: str) -> Optional[int]:
    """The qemu of the guest running `replica` ("lbg-2", domain "blixard-<hash>-lbg-2.<n>"), from
    libvirt's pid files (qemu:///system)."""
    for pidfile in Path("/run/libvirt/qemu").glob("*.pid"):
        if pidfile.stem.rsplit(".", 1)[0].endswith("-" + replica):
            try:
                pid = int(pidfile.read_text())
                os.kill(pid, 0)
                return pid
            except (OSError, ValueError):
                continue
    return None
