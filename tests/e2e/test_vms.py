"""Scenario 1 on the sandbox driver, through the CLI, on three agents in network namespaces: a VM
set's replicas placed one per node, served through the server's load balancer, scaled, and
replaced when one is killed from the host. The same with real guests: test_guests_cluster.py."""

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

from conftest import poll

# A replica: an HTTP server on its port 80 (the host port in PORT_80), answering with its name.
WEBAPP = """\
type: long-lived
memory: 64M
vcpu: 2
ports: [80]
command:
  - /usr/bin/python3
  - -c
  - |
    import http.server, os, signal, sys
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    name = os.environ["BLIXARD_REPLICA"].encode()
    print("serving", name.decode(), "on", os.environ["PORT_80"], flush=True)
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(name)))
            self.end_headers()
            self.wfile.write(name)
        def log_message(self, *args):
            pass
    http.server.ThreadingHTTPServer(("", int(os.environ["PORT_80"])), Page).serve_forever()
"""


def cli(cluster, *args: str) -> str:
    env = dict(os.environ, BLIXARD_ADDR=cluster.address, BLIXARD_TOKEN=cluster.token)
    out = subprocess.run([sys.executable, "-m", "blixard", *args], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


def status(cluster, name: str) -> dict:
    return json.loads(cli(cluster, "vm", "status", name, "-o", "json"))["status"]


def ready(cluster, name: str, count: int):
    st = status(cluster, name)
    return st if st.get("phase") == "Running" and st.get("readyReplicas") == count and len(
        st.get("instances", [])) == count else None


def get(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/", timeout=5) as r:
        return r.read().decode()


def three_agents(cluster):
    for name in ("node1", "node2", "node3"):
        cluster.start_agent(name)


def test_scenario1_replicas_spread_serve_through_the_balancer_scale_and_are_replaced(
        cluster, tmp_path: Path):
    three_agents(cluster)
    config = cluster.client_dir / "webapp.yaml"
    config.write_text(WEBAPP)
    cli(cluster, "vm", "create", "webapp", "--config", str(config), "--replicas", "3")
    cli(cluster, "vm", "start", "webapp")
    st = poll(lambda: ready(cluster, "webapp", 3), timeout=30)
    nodes = sorted(i["node"] for i in st["instances"])
    assert nodes == ["node1", "node2", "node3"], st
    assert all(i["driver"] == "sandbox" for i in st["instances"]), st
    text = cli(cluster, "vm", "status", "webapp")
    assert "running on [node1, node2, node3]" in text, text

    # Each replica's console, all of them or one.
    logs = poll(lambda: (t := cli(cluster, "vm", "logs", "webapp")).count("serving") == 3 and t,
                timeout=10)
    assert "webapp-1 stdout] serving webapp-1" in logs, logs
    one = cli(cluster, "vm", "logs", "webapp-2")
    assert one.startswith("serving webapp-2 on ") and "webapp-1" not in one, one

    # The balancer: one address, round robin over the three replicas.
    lb = poll(lambda: status(cluster, "webapp").get("endpoints"), timeout=10)[0]
    assert lb["port"] == 80
    seen = {get(lb["address"]) for _ in range(9)}
    assert seen == {"webapp-1", "webapp-2", "webapp-3"}, seen

    # Scale to 5 and back to 3 through the CLI.
    cli(cluster, "vm", "scale", "webapp", "--replicas", "5")
    poll(lambda: ready(cluster, "webapp", 5), timeout=30)
    poll(lambda: {get(lb["address"]) for _ in range(15)} == {f"webapp-{i}" for i in range(1, 6)},
         timeout=10)
    cli(cluster, "vm", "scale", "webapp", "--replicas", "3")
    poll(lambda: ready(cluster, "webapp", 3), timeout=30)

    # A replica killed from the host is replaced, and a client polling the balancer meanwhile
    # sees at most the connections that were on the killed one fail.
    failures, answers, stop = [], [], threading.Event()

    def client():
        while not stop.is_set():
            try:
                answers.append(get(lb["address"]))
            except OSError as e:
                failures.append(repr(e))
            time.sleep(0.01)

    poller = threading.Thread(target=client)
    poller.start()
    try:
        victim = next(i for i in status(cluster, "webapp")["instances"] if i["name"] == "webapp-2")
        pid = _replica_pid("webapp-2")
        assert pid, "webapp-2's process not found"
        os.kill(pid, signal.SIGKILL)
        # (At least once: on a loaded machine a replacement may itself fail and go again.)
        try:
            st = poll(lambda: (s := ready(cluster, "webapp", 3)) and next(
                i for i in s["instances"] if i["name"] == "webapp-2").get("restarts", 0) >= 1
                and s, timeout=60)
        except AssertionError as e:
            raise AssertionError(f"{e}: {json.dumps(status(cluster, 'webapp'), indent=1)}") from e
        poll(lambda: "webapp-2" in {get(lb["address"]) for _ in range(6)}, timeout=10)
    finally:
        stop.set()
        poller.join()
    assert len(answers) > 20, answers
    # A connection already on its way to the killed replica may fail; nothing after it did.
    assert len(failures) <= 2, failures
    assert victim["node"] in ("node1", "node2", "node3")

    cli(cluster, "vm", "stop", "webapp")
    poll(lambda: status(cluster, "webapp").get("phase") == "Stopped", timeout=30)
    assert _replica_pid("webapp-1") is None
    cli(cluster, "vm", "delete", "webapp")


def test_naming_a_vm_that_does_not_exist_or_a_bad_scale_says_so(cluster):
    env = dict(os.environ, BLIXARD_ADDR=cluster.address, BLIXARD_TOKEN=cluster.token)
    out = subprocess.run([sys.executable, "-m", "blixard", "vm", "scale", "nothing",
                          "--replicas", "2"], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "nothing" in out.stderr and "not found" in out.stderr.lower(), out.stderr
    cluster.start_agent("node1")
    config = cluster.client_dir / "webapp.yaml"
    config.write_text(WEBAPP)
    cli(cluster, "vm", "create", "webapp", "--config", str(config), "--replicas", "1")
    out = subprocess.run([sys.executable, "-m", "blixard", "vm", "scale", "webapp",
                          "--replicas", "0"], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "--replicas" in out.stderr and "vm stop" in out.stderr, out.stderr


def _replica_pid(replica: str):
    """The host pid of a replica's process (its BLIXARD_REPLICA), or None."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if f"BLIXARD_REPLICA={replica}".encode() in env:
            return int(entry)
    return None


def _page_config(path: Path, text: str, broken: bool = False) -> Path:
    """WEBAPP serving `text` instead of its name (a broken one exits before it serves)."""
    body = WEBAPP.replace('name = os.environ["BLIXARD_REPLICA"].encode()',
                          f'name = b"{text} " + os.environ["BLIXARD_REPLICA"].encode()')
    if broken:
        body = body.replace("import http.server, os, signal, sys",
                            "import sys; sys.exit('no config for v2')")
    body = body.replace("vcpu: 2", "vcpu: 2\nupdateStrategy: {minHealthyTime: 300ms}")
    path.write_text(body)
    return path


class Poller:
    """A client polling the balancer (a new connection per request) until stopped."""

    def __init__(self, address: str):
        self.address, self.answers, self.failures = address, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.answers.append(get(self.address))
            except OSError as e:
                self.failures.append(repr(e))
            time.sleep(0.005)

    def stop(self):
        self._stop.set()
        self._thread.join()


def test_scenario1_rolling_update_serves_every_request_and_a_broken_one_halts(cluster):
    three_agents(cluster)
    v1 = _page_config(cluster.client_dir / "webapp.yaml", "v1")
    cli(cluster, "vm", "create", "webapp", "--config", str(v1), "--replicas", "3")
    poll(lambda: ready(cluster, "webapp", 3), timeout=30)
    lb = poll(lambda: status(cluster, "webapp").get("endpoints"), timeout=10)[0]["address"]

    # A rolling update to v2 while a client polls the balancer: no request fails.
    poller = Poller(lb)
    try:
        v2 = _page_config(cluster.client_dir / "webapp-v2.yaml", "v2")
        out = cli(cluster, "vm", "update", "webapp", "--config", str(v2), "--strategy", "rolling")
    finally:
        poller.stop()
    assert "rolling out revision 2" in out and "revision 2 is out" in out, out
    assert poller.failures == [], poller.failures[:5]
    assert len(poller.answers) > 50, len(poller.answers)
    assert any(a.startswith("v1 ") for a in poller.answers)
    assert {get(lb).split()[0] for _ in range(9)} == {"v2"}
    # The old ones drain, then go; what serves is revision 2.
    st = poll(lambda: (s := status(cluster, "webapp")) and len(s["instances"]) == 3 and s,
              timeout=15)
    assert [int(i["revision"]) for i in st["instances"]] == [2, 2, 2], st

    # A broken v3: the rollout halts, the command says so (exit 9), v2 is served throughout.
    poller = Poller(lb)
    try:
        broken = _page_config(cluster.client_dir / "webapp-v3.yaml", "v3", broken=True)
        env = dict(os.environ, BLIXARD_ADDR=cluster.address, BLIXARD_TOKEN=cluster.token)
        out = subprocess.run([sys.executable, "-m", "blixard", "vm", "update", "webapp",
                              "--config", str(broken)], env=env, capture_output=True, text=True,
                             timeout=60)
    finally:
        poller.stop()
    assert out.returncode == 9, out.stdout + out.stderr
    assert "halted" in out.stderr and "no config for v2" in out.stderr, out.stderr
    assert poller.failures == [], poller.failures[:5]
    assert {a.split()[0] for a in poller.answers} == {"v2"}, set(poller.answers)
    st = status(cluster, "webapp")
    assert st["phase"] == "Running" and int(st["servingRevision"]) == 2, st

    # History lists the revisions; rollback returns to v2's spec as revision 4, served by all.
    history = cli(cluster, "vm", "history", "webapp")
    assert "newest" in history and "serving" in history, history
    out = cli(cluster, "vm", "rollback", "webapp")
    assert "revision 4 is out" in out, out
    assert {get(lb).split()[0] for _ in range(9)} == {"v2"}
    assert int(status(cluster, "webapp")["revision"]) == 4


# Scenario 1's replica on a network: its name on "/", and on "/via/<address>" what the replica at
# that address serves (a request from one replica to another over the network).
NETWORKED = """\
type: long-lived
memory: 64M
ports: [80]
command:
  - /usr/bin/python3
  - -c
  - |
    import http.server, os, signal, socketserver, sys, urllib.request
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    name = os.environ["BLIXARD_REPLICA"]
    open(os.path.join(os.environ["BLIXARD_VOLUME"], "owner"), "w").write(name)
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/via/"):
                try:
                    body = urllib.request.urlopen(f"http://{self.path[5:]}/", timeout=5).read()
                except OSError as e:
                    body = f"failed: {e}".encode()
            else:
                body = name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    socketserver.ThreadingTCPServer(("", int(os.environ["PORT_80"])), Page).serve_forever()
"""


def test_scenario1_as_written_a_pool_and_a_network_across_three_nodes(cluster, tmp_path: Path):
    """The seed's command as written, once ssd-pool and web-vlan exist: each replica gets a
    volume on its node and an address on web-vlan, and replicas on different nodes reach each
    other by address through the agents' VXLAN overlay."""
    three_agents(cluster)
    config = cluster.client_dir / "webapp.yaml"
    config.write_text(NETWORKED)
    cli(cluster, "storage", "pool", "create", "ssd-pool", "--type", "dir",
        "--path", str(tmp_path / "ssd"))
    cli(cluster, "network", "create", "web-vlan", "--subnet", "10.88.0.0/24")
    cli(cluster, "vm", "create", "webapp", "--config", str(config), "--replicas", "3",
        "--storage-pool", "ssd-pool", "--network", "web-vlan")
    cli(cluster, "vm", "start", "webapp")
    st = poll(lambda: ready(cluster, "webapp", 3), timeout=40)
    assert "running on [node1, node2, node3]" in cli(cluster, "vm", "status", "webapp")
    by_name = {i["name"]: i for i in st["instances"]}
    addresses = {name: i["networkAddress"] for name, i in by_name.items()}
    assert sorted(addresses.values()) == ["10.88.0.2", "10.88.0.3", "10.88.0.4"], st
    assert "ADDRESS" in cli(cluster, "vm", "status", "webapp")

    # Through the balancer, whichever replica answers fetches webapp-3's page by its address:
    # from the two other nodes that crosses the overlay.
    lb = poll(lambda: status(cluster, "webapp").get("endpoints"), timeout=10)[0]["address"]
    assert {get(lb) for _ in range(6)} == {"webapp-1", "webapp-2", "webapp-3"}
    for target in ("webapp-1", "webapp-3"):
        via = [get(f"{lb}/via/{addresses[target]}") for _ in range(6)]
        assert via == [target] * 6, via

    # Each replica wrote to its own volume, on its node, in the pool's directory.
    volumes = json.loads(cli(cluster, "storage", "volume", "list", "-o", "json"))["items"]
    assert {v["metadata"]["name"]: v["status"]["node"] for v in volumes} == {
        name: i["node"] for name, i in by_name.items()}
    for name in by_name:
        assert (tmp_path / "ssd" / name / "owner").read_text() == name

    cli(cluster, "vm", "delete", "webapp")
    poll(lambda: json.loads(cli(cluster, "network", "list", "-o", "json"))["items"][0].get(
        "status", {}).get("addresses", 0) == 0, timeout=30)
    poll(lambda: all(v["status"]["phase"] == "Available" for v in json.loads(
        cli(cluster, "storage", "volume", "list", "-o", "json"))["items"]), timeout=30)
    for name in by_name:
        cli(cluster, "storage", "volume", "delete", name)
    cli(cluster, "storage", "pool", "delete", "ssd-pool")
    cli(cluster, "network", "delete", "web-vlan")


def test_a_node_that_joins_later_is_reached_over_the_overlay(cluster, tmp_path: Path):
    """The agents already running hear of a node that joins (their VXLAN flood lists take it in):
    a replica on an old node reaches one started on the new node, by address."""
    cluster.start_agent("node1")
    cluster.start_agent("node2")
    config = cluster.client_dir / "webapp.yaml"
    config.write_text(NETWORKED)
    cli(cluster, "storage", "pool", "create", "ssd-pool", "--path", str(tmp_path / "ssd"))
    cli(cluster, "network", "create", "web-vlan", "--subnet", "10.88.0.0/24")
    cli(cluster, "vm", "create", "webapp", "--config", str(config), "--replicas", "2",
        "--storage-pool", "ssd-pool", "--network", "web-vlan")
    poll(lambda: ready(cluster, "webapp", 2), timeout=40)
    cluster.start_agent("node3")
    cli(cluster, "vm", "scale", "webapp", "--replicas", "3")
    st = poll(lambda: ready(cluster, "webapp", 3), timeout=40)
    by_name = {i["name"]: i for i in st["instances"]}
    assert by_name["webapp-3"]["node"] == "node3", st  # spread: the empty node
    # From each old node's replica (through its own host port) to the new one's address.
    target = by_name["webapp-3"]["networkAddress"]
    for name in ("webapp-1", "webapp-2"):
        i = by_name[name]
        port = i["hostPorts"]["80"]
        poll(lambda: get(f"{i['address']}:{port}/via/{target}") == "webapp-3", timeout=10)
    cli(cluster, "vm", "delete", "webapp")
