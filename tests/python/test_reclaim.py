"""What a crashed agent leaves behind is reclaimed when the next one starts on its data dir."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from conftest import Cli, write, HANDLER_PY

pytestmark = [
    pytest.mark.cli,
    pytest.mark.skipif(os.geteuid() != 0, reason="cgroups are made by a root agent"),
]


def cgroup_dirs_of(pid: int):
    """Instance cgroups named for agent `pid` under any controller's blixard/ parent."""
    found = []
    for root in Path("/sys/fs/cgroup").glob("**/blixard"):
        if root.is_dir():
            found += [p for p in root.iterdir() if p.is_dir() and f"-{pid}-" in p.name]
    return found


def wait_gone(pid: int, timeout: float = 10) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.02)
    return False


def test_kill_9_leftovers_are_reclaimed_at_the_next_start(tmp_path):
    write(tmp_path / "code" / "echo.py", HANDLER_PY)
    write(tmp_path / "echo.yaml", "runtime: python\nhandler: echo:handler\ncode: ./code\nscaling: {keepWarm: 10m}\n")
    data_dir = tmp_path / "data"
    run = Cli(data_dir, tmp_path)
    run.ok("up", "--listen", "127.0.0.1:0")
    try:
        # The data dir holds the admin token: its owner's alone.
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        pid = json.loads((data_dir / "server.json").read_text())["pid"]
        run.ok("function", "create", "echo", "--config", "echo.yaml")
        run.ok("function", "invoke", "echo", "--data", '{"x": 1}')
        assert cgroup_dirs_of(pid), "a warm instance has a cgroup"
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid)
        left = cgroup_dirs_of(pid)
        assert left, "kill -9 leaves the instance's cgroup (what this test is about)"

        run.ok("up", "--listen", "127.0.0.1:0")
        assert cgroup_dirs_of(pid) == [], f"not reclaimed: {left}"
        mounts = data_dir / "instances" / "instances"
        assert [p.name for p in mounts.iterdir() if f"-{pid}-" in p.name] == []
        # And the function still serves.
        assert json.loads(run.ok("function", "invoke", "echo", "--data", '{"x": 2}', "-o",
                                 "json").stdout)
    finally:
        run("down")
