"""Shared fixtures: an embedded cluster per test, handler code on disk, and the CLI runner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

import blixard

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

HANDLER_PY = '''\
"""Test handler: echoes its event, or misbehaves on request."""
import os
import sys
import time

CALLS = 0


def handler(event, context):
    global CALLS
    CALLS += 1
    event = event if isinstance(event, dict) else {"value": event}
    if event.get("crash"):
        sys.stderr.write("crashing on purpose\\n")
        sys.stderr.flush()
        os._exit(3)
    if event.get("print"):
        print(event["print"], flush=True)
    if event.get("eprint"):
        sys.stderr.write(str(event["eprint"]) + "\\n")
        sys.stderr.flush()
    if event.get("raise"):
        raise RuntimeError("boom: " + str(event["raise"]))
    if event.get("sleep"):
        time.sleep(float(event["sleep"]))
    return {"echo": event, "calls": CALLS, "requestId": context.request_id}
'''


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    """A directory holding echo.py with `handler(event, context)`."""
    write(tmp_path / "code" / "echo.py", HANDLER_PY)
    return tmp_path / "code"


@pytest.fixture
def echo_config(tmp_path: Path, code_dir: Path) -> Path:
    """A YAML function config naming the echo handler (relative code path)."""
    return write(
        tmp_path / "echo.yaml",
        """\
        runtime: python
        handler: echo:handler
        code: ./code
        memory: 128M
        timeout: 10s
        """,
    )


@pytest.fixture
def cluster(tmp_path: Path):
    """An embedded cluster (server + agent in this process) on a fresh data dir."""
    c = blixard.Cluster.local(tmp_path / "state")
    try:
        yield c
    finally:
        c.close()


def wait_for(condition, timeout: float = 15.0, interval: float = 0.05):
    """Polls `condition` until it returns something truthy (and returns that); fails the test
    after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)


def names(items: List[Dict]) -> List[str]:
    return sorted(i["metadata"]["name"] for i in items)


# ---- the CLI ----


def blixard_command() -> List[str]:
    """The installed console script; `python -m blixard.cli` where it is not on disk."""
    script = Path(sys.executable).parent / "blixard"
    if script.is_file():
        return [str(script)]
    found = shutil.which("blixard")
    if found:
        return [found]
    return [sys.executable, "-m", "blixard.cli"]


class Cli:
    """Runs `blixard ...` in a subprocess against one data dir."""

    def __init__(self, data_dir: Path, cwd: Path):
        self.data_dir = data_dir
        self.cwd = cwd
        self.cmd = blixard_command()

    def env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLIXARD_")}
        env["BLIXARD_DATA_DIR"] = str(self.data_dir)
        if "BLIXARD_AGENT" in os.environ:
            env["BLIXARD_AGENT"] = os.environ["BLIXARD_AGENT"]
        return env

    def __call__(
        self, *args: str, input: Optional[str] = None, timeout: float = 90
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.cmd, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            cwd=self.cwd,
        )

    def ok(self, *args: str, input: Optional[str] = None) -> subprocess.CompletedProcess:
        r = self(*args, input=input)
        assert r.returncode == 0, f"blixard {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    def json(self, *args: str, input: Optional[str] = None):
        return json.loads(self.ok(*args, "-o", "json", input=input).stdout)
