"""A server with no node of its own and agents joined to it, on loopback, as processes the test
starts and stops again (the agent-restart tests: an agent must be stopped, killed and started
again on its own data dir); a client polling a set's balancer meanwhile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

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


def restarts_keep_what_runs(setup: Joined, running: Callable[[], dict], lb: str, names: list,
                            timeout: float, before_start: Callable[[], object] = lambda: None,
                            after_start: Callable[[object], None] = lambda _: None) -> int:
    """The agent-restart scenario of docs/vms.md, "Agent restarts", for the 2-replica set "web"
    serving "kept" at `lb` on agent n1; `running()`: what runs for it on the host ({key: pid}).
    The agent stopped for an upgrade (SIGUSR2), then killed (no goodbye): each time what it ran
    runs on, the server holds it, and the agent started again takes it back (`before_start` and
    `after_start(its result)` check more around each start) while the balancer serves throughout.
    Then a scale-down stops one of what was taken back, and an agent back only after its lease
    finds the rest given up: it kills it, and a fresh one serves. Returns the requests served."""
    first = running()
    poller = Poller(lb, "kept")
    poller.start()
    try:
        for stop, taken in (("SIGUSR2", 1), ("SIGKILL", 2)):
            setup.agent.send_signal(getattr(signal, stop))
            assert setup.agent.wait(timeout=30) == (0 if stop == "SIGUSR2" else -signal.SIGKILL)
            assert running() == first, stop
            # Shown as held while the agent is away.
            held = poll(lambda: [i for i in setup.status()["instances"]
                                 if "is disconnected: held" in i.get("message", "")], 10)
            assert sorted(i["name"] for i in held) == names, held
            checked = before_start()
            setup.start_agent()
            poll(lambda: setup.phase() == "Ready", 30)
            poll(lambda: setup.agent_log().count("took back 2 replica(s)") == taken, 10)
            poll(lambda: setup.server_log().count(", 2 adopted") == taken, 10)
            ok_after = poller.ok
            poll(lambda: poller.ok > ok_after + 10, 20)  # served under the new agent too
            after_start(checked)
    finally:
        poller.stop.set()
        poller.join()
    assert not poller.failed, poller.failed[:5]
    assert running() == first, "restarted, not taken back"
    after = setup.status()
    assert sorted(i["name"] for i in after["instances"]) == names, after
    assert after["readyReplicas"] == 2, after

    # What was taken back is the agent's again: a scale-down stops one of them.
    setup.cli("vm", "scale", "web", "--replicas", "1", "--wait")
    poll(lambda: len(running()) == 1, timeout)
    assert set(running().items()) < set(first.items())

    # Back only after the lease lapsed: the server gave the replica up and placed it again
    # (nowhere to go until the node is back); the agent kills the old one.
    left = running()
    setup.agent.kill()
    setup.agent.wait()
    poll(lambda: setup.phase() == "Lost", 20)
    setup.start_agent()
    poll(lambda: setup.phase() == "Ready", 30)
    fresh = poll(lambda: setup.status().get("readyReplicas") == 1 and len(running()) == 1
                 and running() != left and running(), 2 * timeout)
    assert not set(fresh.values()) & set(left.values())
    assert get(lb) == "kept"
    return poller.ok
