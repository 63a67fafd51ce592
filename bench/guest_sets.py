#!/usr/bin/env python3
"""A set of real guests (bench/RESULTS.md, "Real guests": memory per replica and a 5-replica
rolling update): `blixard up --vm-driver libvirt` (TCG here), a 5-replica set of nginx guests
(256 MiB each, booted: no snapshots), created through the Python SDK until each page answers.

- Memory per replica: each guest's qemu (resident and proportional set size, once its page
  answers), beside the same kernel, initramfs and command line booted by qemu by hand (what a
  user scripting qemu gets; `guests.py`'s baseline), in the same run; and what the agent and
  libvirtd hold more for the 5 replicas than before them, per replica.
- A rolling update of the 5 (the defaults: one at a time, `minHealthyTime` 1 s, a 1 s drain) to a
  v2 page and back, through `blixard vm update`, with a client polling the balancer (a new
  connection each): its duration and the requests that failed.

    .venv/bin/python bench/guest_sets.py [--replicas 5] [--bare 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import blixard
from guests import REPO, BareImage, bare_boot, cpu_ticks, domains, settle

CONFIG = """{ ... }: {
  microvm = { mem = 256; vcpu = 1; };
  services.nginx = { enable = true; virtualHosts.default.locations."/".return = "200 '%s'"; };
  networking.firewall.allowedTCPPorts = [ 80 ];
}
"""


def memory_kib(pid: int) -> tuple[int, int]:
    """The process's resident and proportional set sizes, KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return fields["Rss"], fields["Pss"]


def idle(limit: float = 20.0) -> None:
    """Until libvirtd, the agent and the guests have used no CPU for 0.5 s (guests booted, their
    pages served)."""
    names = ("libvirtd", "blixard-agent", "qemu-system-x86")
    deadline = time.monotonic() + limit
    last = cpu_ticks(names)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_ticks(names)
        if now - last <= 2:
            return
        last = now


def qemu_pid(domain: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text())


def page(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/", timeout=2) as r:
        return r.read().decode()


class Poller(threading.Thread):
    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.address, self.stop, self.ok, self.failed = address, threading.Event(), 0, 0

    def run(self):
        while not self.stop.is_set():
            try:
                page(self.address)
                self.ok += 1
            except Exception:  # noqa: BLE001 - every failure counts
                self.failed += 1
            time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=5)
    ap.add_argument("--bare", type=int, default=3, help="bare qemu boots for the baseline")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="blixard-bench-guest-sets-"))
    state = tmp / "libvirtd.state"
    subprocess.run([str(REPO / "scripts/libvirtd"), "start", str(state)], check=True)
    env = dict(os.environ, BLIXARD_DATA_DIR=str(tmp / "data"))

    def cli(*a: str) -> str:
        return subprocess.run([sys.executable, "-m", "blixard", *a], env=env, check=True,
                              capture_output=True, text=True).stdout

    try:
        cli("up", "--listen", "127.0.0.1:0", "--vm-driver", "libvirt", "--vm-snapshots", "0")
        info = json.loads((tmp / "data" / "server.json").read_text())
        env.update(BLIXARD_ADDR=info["address"], BLIXARD_TOKEN=info["token"])
        c = blixard.connect(info["address"], token=info["token"])
        libvirtd = int(subprocess.run(["pgrep", "-n", "-x", "-r", "R,S,D", "libvirtd"],
                                      capture_output=True, text=True, check=True).stdout.split()[0])
        settle()
        agent0, libvirtd0 = memory_kib(info["pid"])[0], memory_kib(libvirtd)[0]

        v1, v2 = tmp / "v1.nix", tmp / "v2.nix"
        v1.write_text(CONFIG % "ok")  # (guests.py's baseline waits for "ok")
        v2.write_text(CONFIG % "v2")
        began = time.monotonic()
        c.create_vm("web", config=str(v1), replicas=args.replicas)
        while True:
            st = c.vm("web").status()
            if st.get("readyReplicas") == args.replicas and st.get("endpoints"):
                break
            time.sleep(0.05)
        lb = st["endpoints"][0]["address"]
        print(f"{args.replicas} guests ready in {time.monotonic() - began:.1f} s", flush=True)
        for _ in range(args.replicas):
            page(lb)  # every nginx has served (round robin)
        idle()
        ours = [memory_kib(qemu_pid(d)) for d in domains() if d.startswith("blixard-")]
        agent1, libvirtd1 = memory_kib(info["pid"])[0], memory_kib(libvirtd)[0]
        first = sorted(d for d in domains() if d.endswith("-web-1.1"))[0]
        image = BareImage(tmp, first, "web-1.1")

        bare: list[tuple[int, int]] = []
        for _ in range(args.bare):
            bare_boot(image, tmp, False, on_ready=lambda pid: bare.append(memory_kib(pid)))

        def mib(kib: float) -> str:
            return f"{kib / 1024:.1f} MiB"

        print(f"qemu per guest, ours: RSS {mib(statistics.median(r for r, _ in ours))}, "
              f"PSS {mib(statistics.median(p for _, p in ours))} (median of {len(ours)})")
        print(f"qemu by hand:         RSS {mib(statistics.median(r for r, _ in bare))}, "
              f"PSS {mib(statistics.median(p for _, p in bare))} (median of {len(bare)})")
        print(f"agent: {mib(agent0)} -> {mib(agent1)} "
              f"({mib((agent1 - agent0) / args.replicas)} per replica); libvirtd: "
              f"{mib(libvirtd0)} -> {mib(libvirtd1)} "
              f"({mib((libvirtd1 - libvirtd0) / args.replicas)} per replica)", flush=True)

        for config, text in ((v2, "v2"), (v1, "ok")):
            poller = Poller(lb)
            poller.start()
            began = time.monotonic()
            cli("vm", "update", "web", "--config", str(config), "--strategy", "rolling")
            took = time.monotonic() - began
            poller.stop.set()
            poller.join()
            assert page(lb) == text, page(lb)
            print(f"rolling update of {args.replicas} guests to {text}: {took:.1f} s, "
                  f"{poller.ok + poller.failed} requests, {poller.failed} failed", flush=True)
        c.delete_vm("web")
    finally:
        subprocess.run([sys.executable, "-m", "blixard", "down"], env=env, capture_output=True)
        subprocess.run([str(REPO / "scripts/libvirtd"), "stop", str(state)], check=False)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
