#!/usr/bin/env python3
"""Real guests (bench/RESULTS.md, "Real guests"): a 1-replica VM set of nginx (a Nix config's
services.nginx) on `blixard up --vm-driver libvirt`, created until its page answers through the
load balancer, beside the same kernel, initramfs and command line booted by qemu directly (what a
user scripting qemu by hand gets: no libvirt, no image build, no controller) until the page
answers through a forwarded port. Both under TCG here (no usable KVM), one at a time, the kinds
alternating round by round so that all see the same machine.

With --snapshots, two servers run side by side: one whose driver restores replicas from save
images of a template guest (`--vm-snapshots 2`, the default) and one whose guests all boot
(`--vm-snapshots 0`); the same set is created on each in turn ("snapshot" and "fresh"), beside the
bare qemu boot. The snapshot server's images are made (in the background, after its first start)
before the rounds begin, and every one of its counted starts must say "restored from snapshot".

How each side learns that its guest is up, so that neither is flattered or penalised by polling:

- ours: `vm status` every 20 ms (an HTTP call to the server) until it counts the replica ready and
  shows the balancer's address, then GET / through the balancer.
- bare qemu ("ready"): the guest init's BLIXARD-READY on the agent's virtio-serial port (a unix
  socket qemu serves; the bench reads it as it arrives), then GET / through the forwarded port.
  The same word the libvirt driver waits for, without a polling interval. The ratio is against it.
- bare qemu ("polled"), the way the first figures were taken: GET / every 20 ms with a 1 s timeout
  until it answers. qemu's user network accepts a forwarded connection before the guest listens and
  holds it, so a poll made too early can wait its whole timeout: its figures come in steps of about
  a second; shown for comparison with the earlier figures only.

And when each starts: 3 s after the last qemu ended and once libvirtd and the agent are idle, the
kinds in every order in turn, the kernel, initramfs and qemu read into the page cache first. This
host (itself a VM) hands memory freed for a second or two back to its own hypervisor, and a qemu
started within a second of another's end boots 0.7-0.8 s faster; a replica ends through the
controller more slowly than the bench kills a bare qemu, so without the gap the bare boots would
be the warm ones.

Each replica's log carries the driver's timeline ("blixard: ready in ...": image, workload
archive, libvirt's start, qemu to the kernel, the kernel to the init, modules, the init to the
workload, the workload to ready); the medians of its phases are printed too.

    .venv/bin/python bench/guests.py --rounds 5 [--agent /path/to/blixard-agent] [--snapshots]
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import re
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
GUESTS = Path("/var/lib/blixard-guests")
GAP = 3.0  # seconds between one qemu's end and the next start (see main)


def answers(address: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/", timeout=timeout) as r:
            return r.read() == b"ok"
    except Exception:  # noqa: BLE001 - not yet
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True,
                          text=True).stdout


def domains() -> list[str]:
    return virsh("list", "--name").split()


class BareImage:
    """The kernel, initramfs and command line ours booted, for qemu by hand."""

    def __init__(self, tmp: Path, domain: str, replica: str):
        xml = virsh("dumpxml", domain)
        self.kernel = re.search(r"<kernel>([^<]+)</kernel>", xml).group(1)
        initrd = Path(re.search(r"<initrd>([^<]+)</initrd>", xml).group(1))
        self.base = str(initrd)
        self.cmdline = re.search(r"<cmdline>([^<]+)</cmdline>", xml).group(1)
        self.initrd = tmp / "initramfs.img"
        if not initrd.is_relative_to(GUESTS / "images"):  # an older driver's, per replica
            self.base = str(self.initrd)
        with open(self.initrd, "wb") as out:
            out.write(initrd.read_bytes())
            # The driver boots the cached base and sends the replica's archive over the agent's
            # port; by hand, the two archives go back to back in one initramfs.
            for kept in glob.glob(str(GUESTS / "*" / "replicas" / replica / "workload.cpio")):
                out.write(Path(kept).read_bytes())


def bare_boot(image: BareImage, tmp: Path, polled: bool, notes: list | None = None,
              on_ready=None) -> float:
    """Seconds from qemu's start to the page answering through its forwarded port; `on_ready`
    (if given) is called with qemu's pid then, before it is killed."""
    port = free_port()
    agent = tmp / f"agent-{port}.sock"
    began = time.monotonic()
    qemu = subprocess.Popen([
        "qemu-system-x86_64", "-accel", "tcg", "-M",
        "microvm,x-option-roms=off,pit=off,pic=off,rtc=on", "-cpu", "max", "-m", "256",
        "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-kernel", image.kernel, "-initrd", str(image.initrd), "-append", image.cmdline,
        "-serial", "null", "-fsdev", "local,id=usr,path=/usr,security_model=none,readonly=on",
        "-device", "virtio-9p-device,fsdev=usr,mount_tag=usr",
        "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:80",
        "-device", "virtio-net-device,netdev=n0",
        "-device", "virtio-serial-device",
        "-chardev", f"socket,id=agent,path={agent},server=on,wait=off",
        "-device", "virtserialport,chardev=agent,name=org.blixard.agent"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if polled:
            while not answers(f"127.0.0.1:{port}"):
                time.sleep(0.02)
            return time.monotonic() - began
        conn = socket.socket(socket.AF_UNIX)
        while True:
            try:
                conn.connect(str(agent))
                break
            except OSError:
                time.sleep(0.002)
        said = b""
        with conn:
            while b"BLIXARD-READY\n" not in said:
                chunk = conn.recv(4096)
                if not chunk:
                    raise RuntimeError("the bare guest closed its agent port: " + said.decode())
                said += chunk
        ready = time.monotonic() - began
        while not answers(f"127.0.0.1:{port}"):
            time.sleep(0.005)
        took = time.monotonic() - began
        if notes is not None:
            times = [x for x in said.decode().splitlines() if x.startswith("BLIXARD-TIMES")]
            notes.append(f"READY at {ready:.2f} s ({times[0][14:] if times else 'no times'})")
        if on_ready is not None:
            on_ready(qemu.pid)
        return took
    finally:
        qemu.kill()
        qemu.wait()


def warm(image: BareImage, saves: list[str]) -> None:
    """Reads what every start reads first into the page cache: this host (itself a VM) gives
    its idle page cache back within seconds, and a start that finds qemu, the 63 MB kernel or a
    save image evicted waits for the disk, whichever side it is on."""
    for path in (image.kernel, image.initrd, image.base, shutil.which("qemu-system-x86_64"),
                 *saves):
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass


def cpu_ticks(names: tuple[str, ...]) -> int:
    total = 0
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        if text[text.index("(") + 1:text.rindex(")")] in names:
            fields = text[text.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def settle(limit: float = 10.0) -> None:
    """Until no qemu runs and libvirtd and the agent have been idle for 0.3 s: libvirt's clean-up
    of a destroyed guest goes on for about a second after the domain is gone, and the next start
    (ours or bare) must not pay for it."""
    deadline = time.monotonic() + limit
    while subprocess.run(["pgrep", "-x", "qemu-system-x86"], capture_output=True).returncode == 0:
        time.sleep(0.01)
    names = ("libvirtd", "blixard-agent")
    last = cpu_ticks(names)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = cpu_ticks(names)
        if now == last:
            return
        last = now


PHASE = re.compile(r"([a-z' ]+?) (-?\d+) ms")


def timeline(c, vm: str) -> tuple[dict[str, float], str]:
    """The phases of the driver's "blixard: ready in ..." line, in seconds, and the line."""
    for line in c.vm(vm).logs():
        text = line.get("text", "")
        if line.get("stream") == "blixard" and text.startswith("blixard: ready in "):
            return ({name.strip(): int(ms) / 1000 for name, ms in
                     PHASE.findall(text.replace("blixard: ready in", "total").replace(":", ","))},
                    text)
    return {}, ""


def save_images(since: float) -> list[str]:
    """The save images of the drivers started after `since` (a driver remakes its snapshots/)."""
    found = []
    for d in glob.glob(str(GUESTS / "*" / "snapshots")):
        if os.stat(d).st_mtime >= since:
            found += glob.glob(os.path.join(d, "*.save"))
    return sorted(found)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--agent", help="blixard-agent to run (default: the one beside this Python)")
    ap.add_argument("--no-polled", action="store_true", help="skip the polled bare baseline")
    ap.add_argument("--snapshots", action="store_true",
                    help="also a server restoring replicas from save images (see above)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="blixard-bench-guests-"))
    began_at = time.time() - 1
    state = tmp / "libvirtd.state"
    subprocess.run([str(REPO / "scripts/libvirtd"), "start", str(state)], check=True)

    def env_for(data: str) -> dict[str, str]:
        env = dict(os.environ, BLIXARD_DATA_DIR=str(tmp / data))
        if args.agent:
            env["BLIXARD_AGENT"] = args.agent
        return env

    def cli(env: dict[str, str], *a: str) -> str:
        return subprocess.run([sys.executable, "-m", "blixard", *a], env=env, check=True,
                              capture_output=True, text=True).stdout

    def connect(data: str):
        info = json.loads((tmp / data / "server.json").read_text())
        return blixard.connect(info["address"], token=info["token"])

    config = tmp / "page.nix"
    config.write_text(CONFIG)
    results: dict[str, list[float]] = {"ours": [], "snapshot": [], "bare": [], "polled": []}
    phases: dict[str, list[dict[str, float]]] = {"ours": [], "snapshot": []}
    not_restored: list[str] = []
    image = None
    servers = ["data"] + (["snap"] if args.snapshots else [])
    try:
        # "data": every guest boots (the driver's fresh boot); "snap": restored from snapshots.
        cli(env_for("data"), "up", "--listen", "127.0.0.1:0", "--vm-driver", "libvirt",
            *(["--vm-snapshots", "0"] if args.snapshots else []))
        c = connect("data")
        s = None
        if args.snapshots:
            cli(env_for("snap"), "up", "--listen", "127.0.0.1:0", "--vm-driver", "libvirt")
            s = connect("snap")

        def run_ours(client, kind: str, name: str) -> None:
            nonlocal image
            began = time.monotonic()
            client.create_vm(name, config=str(config))
            while True:
                st = client.vm(name).status()
                if st.get("readyReplicas") == 1 and st.get("endpoints"):
                    if answers(st["endpoints"][0]["address"]):
                        break
                time.sleep(0.02)
            results[kind].append(time.monotonic() - began)
            got, text = timeline(client, name)
            phases[kind].append(got)
            if kind == "snapshot" and "restored from snapshot" not in text:
                not_restored.append(f"{name}: {text}")
            if image is None:  # the same image for the baseline
                names = [d for d in domains() if d.endswith(f"-{name}-1.1")] or domains()
                image = BareImage(tmp, names[0], f"{name}-1.1")
            client.delete_vm(name)
            while domains():
                time.sleep(0.05)

        run_ours(c, "ours", "first")  # the image for the baseline; libvirt's first start
        print(f"first start (not counted): {results['ours'][0]:.2f} s", flush=True)
        if s is not None:
            run_ours(s, "snapshot", "first")  # its shape's first start boots; images follow
            deadline = time.monotonic() + 300
            while len(save_images(began_at)) < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError("the snapshot server made no save images in 300 s")
                time.sleep(0.2)
            print(f"save images: {', '.join(save_images(began_at))} "
                  f"({sum(os.path.getsize(p) for p in save_images(began_at)) / 1e6:.0f} MB)",
                  flush=True)
        for kind in phases:
            results[kind].clear()
            phases[kind].clear()
        not_restored.clear()
        for i in range(args.rounds):
            notes: list[str] = []
            kinds = [("ours", lambda: run_ours(c, "ours", f"g{i}")),
                     ("bare", lambda: results["bare"].append(bare_boot(image, tmp, False, notes)))]
            if s is not None:
                kinds.append(("snapshot", lambda: run_ours(s, "snapshot", f"g{i}")))
            if not args.no_polled:
                kinds.append(("polled",
                              lambda: results["polled"].append(bare_boot(image, tmp, True))))
            # Each start once the machine has settled from the last one and 3 s after the last
            # qemu ended, in every order in turn. This host (itself a VM) hands memory freed for
            # a second or two back to its own hypervisor: a qemu started within a second of
            # another's end boots 0.7-0.8 s faster (its kernel too) than one started 3 s after,
            # and a guest stopped through the controller takes longer to end than a bare qemu
            # killed by the bench, so without the gap the bare boots would mostly be the warm ones.
            orders = list(itertools.permutations(kinds))
            for _, run in orders[(i * 7) % len(orders)]:
                settle()
                time.sleep(GAP)
                warm(image, save_images(began_at))
                run()
            print(f"round {i + 1}: " + ", ".join(
                f"{k} {results[k][-1]:.2f} s" for k, _ in kinds) + f"; bare: {'; '.join(notes)}",
                flush=True)
    finally:
        for server in servers:
            subprocess.run([sys.executable, "-m", "blixard", "down"], env=env_for(server),
                           capture_output=True)
        subprocess.run([str(REPO / "scripts/libvirtd"), "stop", str(state)])
        shutil.rmtree(tmp, ignore_errors=True)

    def line(name: str, xs: list[float]) -> str:
        return f"{name:<48} p50 {statistics.median(xs):6.2f} s  max {max(xs):6.2f} s  (n={len(xs)})"

    ours, bare, polled = results["ours"], results["bare"], results["polled"]
    print(f"machine: {os.cpu_count()} cpus, affinity {sorted(os.sched_getaffinity(0))}, "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    print(line("vm create -> page through the balancer" +
               (" (fresh boot)" if args.snapshots else ""), ours))
    if results["snapshot"]:
        print(line("vm create -> page, restored from a snapshot", results["snapshot"]))
    print(line("bare qemu, same image -> READY -> page", bare))
    if polled:
        print(line("bare qemu, same image, page polled (1 s timeout)", polled))
    print(f"ratio (p50) against bare READY -> page: "
          f"{statistics.median(ours) / statistics.median(bare):.2f}x")
    if results["snapshot"]:
        print(f"ratio (p50) snapshot against bare READY -> page: "
              f"{statistics.median(results['snapshot']) / statistics.median(bare):.2f}x, "
              f"against the fresh boot: "
              f"{statistics.median(results['snapshot']) / statistics.median(ours):.2f}x")
        if not_restored:
            print("NOT restored (counted anyway): " + "; ".join(not_restored))
    if polled:
        print(f"ratio (p50) against bare polled: "
              f"{statistics.median(ours) / statistics.median(polled):.2f}x")
    for kind, got in phases.items():
        if any(got):
            names = [n for n in got[0] if all(n in p for p in got)]
            print(f"driver timeline ({kind}), medians: " +
                  ", ".join(f"{n} {statistics.median(p[n] for p in got) * 1000:.0f} ms"
                            for n in names))


if __name__ == "__main__":
    main()
