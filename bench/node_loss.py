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
import statistics
import sys
import time

import blixard
from bench_util import wait
from netns_cluster import NetnsCluster


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--cut-rounds", type=int, default=5)
    ap.add_argument("--lease", default="4s")
    args = ap.parse_args()
    cluster = NetnsCluster(args.lease, "bl")
    try:
        c = cluster.client
        code = cluster.work / "code"
        code.mkdir()
        (code / "h.py").write_text("def handler(e, c):\n    return {}\n")
        cluster.start("a")
        cluster.start("b")
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
                    cluster.kill(on)
                else:
                    cluster.cut(on)

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
                    cluster.restore(on)
                    wait(lambda: cluster.ready(on), 60)
                else:
                    cluster.start(on)
        for kind, ms in figures.items():
            if ms:
                print(f"{kind}: p50 {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms "
                      f"over {len(ms)} (lease {args.lease})")
        return 0
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
