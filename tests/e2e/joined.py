"""A server with no node of its own and agents joined to it, on loopback, as processes the test
starts and stops again (the agent-restart tests: an agent must be stopped, killed and started
again on its own data dir); a client polling a set's balancer meanwhile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Sequence

import blixard

from blixard.cli import find_agent
from conftest import _stop, poll


class Joined:
    """The server, and agents named n1, n2, ... each with `agent_args` (its driver's flags)."""

    def __init__(self, tmp_path: Path, agent_args: Sequence[str] = ()):
        self.tmp = tmp_path
        self.agent_args = list(agent_args)
        self.server: subprocess.Popen | None = None
        self.agents: dict[str, subprocess.Popen] = {}
        self.address = self.token = ""

    @property
    def agent(self) -> subprocess.Popen:
        return self.agents["n1"]

    def start_server(self) -> None:
        data = self.tmp / "server"
        data.mkdir()
        with open(data / "server.log", "wb") as log:
            self.server = subprocess.Popen(
                [find_agent(), "--server", "--no-local-node", "--listen", "127.0.0.1:0",
                 "--data-dir", str(data), "--node-lease", "8s"],
                stdout=log, stderr=subprocess.STDOUT)
        state = data / "server.json"
        poll(lambda: state.exists() or self.server.poll() is not None, 30)
        info = json.loads(state.read_text())
        self.address, self.token = info["address"], info["token"]

    def agent_dir(self, name: str = "n1") -> Path:
        return self.tmp / ("agent" if name == "n1" else f"agent-{name}")

    def start_agent(self, name: str = "n1") -> None:
        data = self.agent_dir(name)
        data.mkdir(exist_ok=True)
        with open(data / "agent.log", "ab") as log:
            self.agents[name] = subprocess.Popen(
                [find_agent(), "--join", self.address, "--token", self.token, "--name", name,
                 "--data-dir", str(data), *self.agent_args],
                stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        for agent in self.agents.values():
            _stop(agent)  # what runs on it with it
        _stop(self.server)

    def agent_log(self, name: str = "n1") -> str:
        return (self.agent_dir(name) / "agent.log").read_text(errors="replace")

    def server_log(self) -> str:
        return (self.tmp / "server" / "server.log").read_text(errors="replace")

    def client(self) -> blixard.Cluster:
        return blixard.connect(self.address, token=self.token)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, BLIXARD_ADDR=self.address, BLIXARD_TOKEN=self.token)
        out = subprocess.run([sys.executable, "-m", "blixard", *args], env=env,
                             capture_output=True, text=True, timeout=240)
        if check:
            assert out.returncode == 0, out.stderr + out.stdout
        return out

    def phase(self, name: str = "n1") -> str:
        return next((n.get("status", {}).get("phase", "") for n in self.client().nodes()
                     if n["metadata"]["name"] == name), "")

    def status(self, vm: str = "web") -> dict:
        return json.loads(self.cli("vm", "status", vm, "-o", "json").stdout)["status"]


def get(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/", timeout=5) as r:
        return r.read().decode()


class Poller(threading.Thread):
    """GETs the balancer until stopped, counting the answers that are `body` and the failures."""

    def __init__(self, address: str, body: str):
        super().__init__(daemon=True)
        self.address, self.body = address, body
        self.stop, self.ok, self.failed = threading.Event(), 0, []

    def run(self):
        while not self.stop.is_set():
            try:
                assert get(self.address) == self.body
                self.ok += 1
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.failed.append(repr(e))
            time.sleep(0.05)
