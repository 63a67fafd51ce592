#!/usr/bin/env python3
"""Node loss to rescheduled instance (bench/RESULTS.md, "Many nodes"): a server and two agents, each
agent in a network namespace of its own on a bridge made here; a function warm on one agent; that
agent is lost, and the time is taken from the loss to the first call answered by a new instance on
the other agent. Two kinds of loss:

- kill:  `kill -9` of the agent (its kernel closes the connection: the server knows at once);
- cut:   its link set down (no FIN, no RST: only the lease tells).

    sudo .venv/bin/python bench/node_loss.py --rounds 20 --lease 4s

Prints p50 and max per kind. Everything made here is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blixard
from blixard.cli import find_agent


def ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


def wait(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.01)
    raise TimeoutError("condition not met")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--cut-rounds", type=int, default=5)
    ap.add_argument("--lease", default="4s")
    args = ap.parse_args()
    tag = str(os.getpid() % 10000)
    subnet = f"10.{150 + os.getpid() % 50}.{os.getpid() % 250}"
    bridge = f"blb{tag}"
    work = Path(tempfile.mkdtemp(prefix="blixard-node-loss-"))
    procs = {}
    made = []
    try:
        ip("link", "add", bridge, "type", "bridge")
        made.append(bridge)
        ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        log = open(work / "server.log", "wb")
        server = subprocess.Popen([find_agent(), "--server", "--no-local-node", "--listen",
                                   f"{subnet}.1:0", "--data-dir", str(work / "s"),
                                   "--node-lease", args.lease], stdout=log, stderr=log)
        wait(lambda: (work / "s" / "server.json").exists())
        info = json.loads((work / "s" / "server.json").read_text())
        c = blixard.connect(info["address"], token=info["token"])

        def netns(i):
            ns, veth = f"bln{tag}-{i}", f"blv{tag}-{i}"
            ip("netns", "add", ns)
            made.append("netns:" + ns)
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("link", "set", veth, "master", bridge, "up")
            ip("-n", ns, "addr", "add", f"{subnet}.{i}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            return ns, veth

        spaces = {name: netns(i) for i, name in ((2, "a"), (3, "b"))}

        def start(name):
            ns, _ = spaces[name]
            procs[name] = subprocess.Popen(
                ["ip", "netns", "exec", ns, find_agent(), "--join", info["address"], "--token",
                 info["token"], "--name", name, "--data-dir", str(work / name)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait(lambda: any(n["metadata"]["name"] == name and n["status"]["phase"] == "Ready"
                             for n in c.nodes()))

        code = work / "code"
        code.mkdir()
        (code / "h.py").write_text("def handler(e, c):\n    return {}\n")
        start("a")
        start("b")
        figures = {"kill": [], "cut": []}
        for kind, rounds in (("kill", args.rounds), ("cut", args.cut_rounds)):
            for r in range(rounds):
                name = f"{kind}{r}"
                fn = c.create_function(name, runtime="python", handler="h:handler",
                                       code=str(code), memory="64M")
                on = fn.invoke_raw("{}").node
                other = "b" if on == "a" else "a"
                t0 = time.monotonic()
                if kind == "kill":
                    os.kill(procs[on].pid, signal.SIGKILL)
                    procs[on].wait()
                else:
                    ip("link", "set", spaces[on][1], "down")

                def moved():
                    try:
                        return fn.invoke_raw("{}", timeout=2).node == other
                    except blixard.errors.BlixardError:
                        return False

                wait(moved, timeout=60)
                figures[kind].append((time.monotonic() - t0) * 1000)
                print(f"{kind} {r}: {figures[kind][-1]:.0f} ms", flush=True)
                fn.delete()
                if kind == "cut":
                    ip("link", "set", spaces[on][1], "up")
                    wait(lambda: any(n["metadata"]["name"] == on and
                                     n["status"]["phase"] == "Ready" for n in c.nodes()), 60)
                else:
                    start(on)
        for kind, ms in figures.items():
            if ms:
                print(f"{kind}: p50 {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms "
                      f"over {len(ms)} (lease {args.lease})")
        return 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        if "server" in locals():
            server.send_signal(signal.SIGTERM)
            server.wait(10)
        for thing in reversed(made):
            if thing.startswith("netns:"):
                ip("netns", "del", thing[6:], check=False)
            else:
                ip("link", "del", thing, check=False)


if __name__ == "__main__":
    sys.exit(main())
