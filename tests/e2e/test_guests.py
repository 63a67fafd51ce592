"""Scenario 1 with real guests, through the CLI as a user runs it: `blixard up --vm-driver
libvirt` (libvirtd started here if it is not running, and stopped again), the seed's webapp.nix
verbatim as three microVMs serving nginx's page through the load balancer, a scale, a rolling
update to a v2 page with a client polling the balancer (no failed request), a broken v3 that halts
while v2 keeps serving, a rollback, and no guest left behind after `vm delete`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import poll

REPO = Path(__file__).resolve().parents[2]
SEED_WEBAPP = REPO / "tests/data/specs/scenario1/webapp.nix"

# v2 and a broken v3: the same set, its page changed (v3's nginx refuses its own config).
PAGE = """{ pkgs, ... }: {
  microvm = { mem = 256; vcpu = 1; };
  services.nginx = {
    enable = true;
    virtualHosts.default.locations."/".%s;
  };
  networking.firewall.allowedTCPPorts = [ 80 ];
}
"""


@pytest.fixture
def guests(tmp_path):
    """`blixard` on a fresh data dir with the libvirt driver; yields a CLI runner."""
    state = tmp_path / "libvirtd.state"
    subprocess.run([str(REPO / "scripts/libvirtd"), "start", str(state)], check=True)
    env = dict(os.environ, BLIXARD_DATA_DIR=str(tmp_path / "data"))
    env.pop("BLIXARD_ADDR", None)
    env.pop("BLIXARD_TOKEN", None)

    def cli(*args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, "-m", "blixard", *args], env=env,
                             capture_output=True, text=True, timeout=timeout)
        if check:
            assert out.returncode == 0, out.stderr + out.stdout
        return out

    try:
        cli("up", "--listen", "127.0.0.1:0", "--vm-driver", "libvirt")
        yield cli
    finally:
        cli("down", check=False)
        subprocess.run([str(REPO / "scripts/libvirtd"), "stop", str(state)], check=False)


def status(cli, name: str) -> dict:
    return json.loads(cli("vm", "status", name, "-o", "json").stdout)["status"]


def get(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/", timeout=5) as r:
        return r.read().decode()


def domains() -> list[str]:
    """Our running domains: the replicas' guests, and for a few seconds after a shape's first
    start a template the driver boots and saves for snapshot starts (it runs until saved)."""
    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--name"],
                         capture_output=True, text=True, check=True)
    return [n for n in out.stdout.split() if n.startswith("blixard-")]


class Poller(threading.Thread):
    """GETs the balancer until stopped, counting answers by body and failures."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.address, self.stop, self.ok, self.failed = address, threading.Event(), [], []

    def run(self):
        while not self.stop.is_set():
            try:
                self.ok.append(get(self.address))
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.failed.append(repr(e))
            time.sleep(0.02)


def test_scenario1_seed_webapp_nix_as_real_guests(guests, tmp_path):
    cli = guests
    cli("vm", "create", "webapp", "--config", str(SEED_WEBAPP), "--replicas", "3", "--wait")
    st = status(cli, "webapp")
    assert st["readyReplicas"] == 3
    drivers = {i["driver"] + "/" + i["accel"] for i in st["instances"]}
    assert drivers <= {"libvirt/tcg", "libvirt/kvm"} and len(drivers) == 1, drivers
    text = cli("vm", "status", "webapp").stdout
    assert "running on [local]" in text and "libvirt/" in text, text
    lb = poll(lambda: status(cli, "webapp").get("endpoints"), 10)[0]["address"]
    page = get(lb)
    assert "Welcome to nginx!" in page, page
    assert "port 80 accepts connections" in cli("vm", "logs", "webapp-2").stdout
    poll(lambda: len(domains()) == 3, 60)  # (a snapshot template may still be being saved)

    cli("vm", "scale", "webapp", "--replicas", "4", "--wait")
    assert status(cli, "webapp")["readyReplicas"] == 4
    cli("vm", "scale", "webapp", "--replicas", "2", "--wait")
    poll(lambda: len(domains()) == 2, 30)

    v2, v3 = tmp_path / "webapp-v2.nix", tmp_path / "webapp-v3.nix"
    v2.write_text(PAGE % "return = \"200 'v2 page'\"")
    v3.write_text(PAGE % "proxyPass = \"nothttp://x\"")  # nginx: invalid URL prefix
    poller = Poller(lb)
    poller.start()
    try:
        cli("vm", "update", "webapp", "--config", str(v2), "--strategy", "rolling")
        assert get(lb) == "v2 page"
        broken = cli("vm", "update", "webapp", "--config", str(v3), check=False)
        assert broken.returncode == 9, broken.stdout + broken.stderr
        assert "halted" in broken.stdout + broken.stderr
        assert int(status(cli, "webapp")["servingRevision"]) == 2  # int64: a JSON string
        assert get(lb) == "v2 page"
    finally:
        poller.stop.set()
        poller.join()
    assert not poller.failed, poller.failed[:5]
    assert "v2 page" in poller.ok and len(poller.ok) > 50, len(poller.ok)
    print(f"rolling update over guests: {len(poller.ok)} requests, {len(poller.failed)} failed")

    cli("vm", "rollback", "webapp", "--to-revision", "1")
    assert "Welcome to nginx!" in get(lb)

    cli("vm", "delete", "webapp")
    poll(lambda: not domains(), 60)
