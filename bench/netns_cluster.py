"""A server and agents as real processes, each agent in a network namespace of its own on a bridge
made here (as tests/e2e/conftest.py does for the tests), for the benches that lose nodes
(node_loss.py, failover.py). Everything made is removed by close()."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import blixard
from bench_util import wait
from blixard.cli import find_agent


def ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


class NetnsCluster:
    """`blixard-agent --server --no-local-node` on a bridge, agents joined from namespaces."""

    def __init__(self, lease: str, prefix: str):
        self.tag = str(os.getpid() % 10000)
        self.subnet = f"10.{150 + os.getpid() % 50}.{os.getpid() % 250}"
        self.bridge = f"{prefix}b{self.tag}"
        self.prefix = prefix
        self.work = Path(tempfile.mkdtemp(prefix=f"blixard-{prefix}-"))
        self.procs: Dict[str, subprocess.Popen] = {}
        self.spaces: Dict[str, Tuple[str, str]] = {}
        self._made: List[str] = []
        self.server = None
        ip("link", "add", self.bridge, "type", "bridge")
        self._made.append(self.bridge)
        ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        log = open(self.work / "server.log", "wb")
        self.server = subprocess.Popen(
            [find_agent(), "--server", "--no-local-node", "--listen", f"{self.subnet}.1:0",
             "--data-dir", str(self.work / "s"), "--node-lease", lease],
            stdout=log, stderr=log)
        wait(lambda: (self.work / "s" / "server.json").exists())
        self.info = json.loads((self.work / "s" / "server.json").read_text())
        self.client = blixard.connect(self.info["address"], token=self.info["token"])

    def _netns(self, name: str) -> Tuple[str, str]:
        if name not in self.spaces:
            i = len(self.spaces) + 2
            ns, veth = f"{self.prefix}n{self.tag}-{i}", f"{self.prefix}v{self.tag}-{i}"
            ip("netns", "add", ns)
            self._made.append("netns:" + ns)
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("link", "set", veth, "master", self.bridge, "up")
            ip("-n", ns, "addr", "add", f"{self.subnet}.{i}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            self.spaces[name] = (ns, veth)
        return self.spaces[name]

    def ready(self, name: str) -> bool:
        return any(n["metadata"]["name"] == name and n["status"]["phase"] == "Ready"
                   for n in self.client.nodes())

    def start(self, name: str) -> None:
        """Starts (or starts again) agent `name` and waits until its node is Ready."""
        ns, _ = self._netns(name)
        log = open(self.work / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", ns, find_agent(), "--join", self.info["address"], "--token",
             self.info["token"], "--name", name, "--data-dir", str(self.work / name)],
            stdout=log, stderr=log)
        wait(lambda: self.ready(name), 60)

    def kill(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait()

    def cut(self, name: str) -> None:
        ip("link", "set", self._netns(name)[1], "down")

    def restore(self, name: str) -> None:
        ip("link", "set", self._netns(name)[1], "up")

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            self.server.wait(10)
        for thing in reversed(self._made):
            if thing.startswith("netns:"):
                ip("netns", "del", thing[6:], check=False)
            else:
                ip("link", "del", thing, check=False)
        shutil.rmtree(self.work, ignore_errors=True)
