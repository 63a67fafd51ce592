#!/usr/bin/env python3
"""Real guests (bench/RESULTS.md, "Guests"): a 1-replica VM set of nginx (a Nix config's
services.nginx) on `blixard up --vm-driver libvirt`, created until its page answers through the
load balancer, beside the same kernel and initramfs booted by qemu directly (what a user scripting
qemu by hand gets: no libvirt, no image build, no controller) until the page answers through a
forwarded port. Both under TCG here (no usable KVM), one at a time.

    .venv/bin/python bench/guests.py --rounds 5
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import blixard

REPO = Path(__file__).resolve().parents[1]
CONFIG = """{ ... }: {
  microvm = { mem = 256; vcpu = 1; };
  services.nginx = { enable = true; virtualHosts.default.locations."/".return = "200 'ok'"; };
  networking.firewall.allowedTCPPorts = [ 80 ];
}
"""


def answers(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/", timeout=1) as r:
            return r.read() == b"ok"
    except Exception:  # noqa: BLE001 - not yet
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="blixard-bench-guests-"))
    state = tmp / "libvirtd.state"
    subprocess.run([str(REPO / "scripts/libvirtd"), "start", str(state)], check=True)
    env = dict(os.environ, BLIXARD_DATA_DIR=str(tmp / "data"))

    def cli(*a: str) -> str:
        return subprocess.run([sys.executable, "-m", "blixard", *a], env=env, check=True,
                              capture_output=True, text=True).stdout

    config = tmp / "page.nix"
    config.write_text(CONFIG)
    ours, bare = [], []
    image = None
    try:
        cli("up", "--listen", "127.0.0.1:0", "--vm-driver", "libvirt")
        info = json.loads((tmp / "data" / "server.json").read_text())
        c = blixard.connect(info["address"], token=info["token"])
        for i in range(args.rounds):
            began = time.monotonic()
            c.create_vm(f"g{i}", config=str(config))
            while True:
                st = c.vm(f"g{i}").status()
                if st.get("readyReplicas") == 1 and st.get("endpoints"):
                    lb = st["endpoints"][0]["address"]
                    if answers(lb):
                        break
                time.sleep(0.02)
            ours.append(time.monotonic() - began)
            if image is None:  # the same image for the baseline
                found = glob.glob("/var/lib/blixard/guests-*/replicas/" + f"g{i}-1.*")
                image = tmp / "initramfs.img"
                shutil.copy(Path(found[0]) / "initramfs.img", image)
                kernel = next(Path(found[0]).parent.parent.glob("images/vmlinux-*"))
                cmdline = subprocess.run(
                    ["virsh", "-c", "qemu:///system", "dumpxml",
                     subprocess.run(["virsh", "-c", "qemu:///system", "list", "--name"],
                                    capture_output=True, text=True).stdout.split()[0]],
                    capture_output=True, text=True).stdout.split("<cmdline>")[1].split("<")[0]
            c.delete_vm(f"g{i}")
            while subprocess.run(["virsh", "-c", "qemu:///system", "list", "--name"],
                                 capture_output=True, text=True).stdout.strip():
                time.sleep(0.05)
        for _ in range(args.rounds):
            port = free_port()
            began = time.monotonic()
            qemu = subprocess.Popen([
                "qemu-system-x86_64", "-accel", "tcg", "-M",
                "microvm,x-option-roms=off,pit=off,pic=off,rtc=on", "-cpu", "max", "-m", "256",
                "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
                "-kernel", str(kernel), "-initrd", str(image), "-append", cmdline,
                "-serial", "null", "-fsdev", "local,id=usr,path=/usr,security_model=none,readonly=on",
                "-device", "virtio-9p-device,fsdev=usr,mount_tag=usr",
                "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:80",
                "-device", "virtio-net-device,netdev=n0",
                "-device", "virtio-serial-device", "-chardev", "null,id=agent",
                "-device", "virtserialport,chardev=agent,name=org.blixard.agent"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                while not answers(f"127.0.0.1:{port}"):
                    time.sleep(0.02)
                bare.append(time.monotonic() - began)
            finally:
                qemu.kill()
                qemu.wait()
    finally:
        subprocess.run([sys.executable, "-m", "blixard", "down"], env=env, capture_output=True)
        subprocess.run([str(REPO / "scripts/libvirtd"), "stop", str(state)])
        shutil.rmtree(tmp, ignore_errors=True)

    def line(name: str, xs: list[float]) -> str:
        return f"{name:<44} p50 {statistics.median(xs):6.2f} s  max {max(xs):6.2f} s  (n={len(xs)})"

    print(line("vm create -> page through the balancer", ours))
    print(line("bare qemu, same kernel+initramfs -> page", bare))
    print(f"ratio (p50): {statistics.median(ours) / statistics.median(bare):.2f}x")


if __name__ == "__main__":
    main()
