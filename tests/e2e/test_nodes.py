"""Many nodes on real processes: agents join over the network, functions run across them, a
killed agent's work moves, a cut link is fenced and rejoins, bad peers are refused."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

import blixard
from conftest import poll

HANDLER = '''\
import os
import time


def handler(event, context):
    if event.get("sleep"):
        time.sleep(float(event["sleep"]))
    return {"pid": os.getpid(), "instance": os.environ.get("BLIXARD_INSTANCE")}
'''


@pytest.fixture
def code(cluster) -> Path:
    """The functions' code, in the client's directory: neither the server nor an agent sees it."""
    d = cluster.client_dir / "code"
    d.mkdir()
    (d / "nodes.py").write_text(HANDLER)
    return d


def create(c, name: str, code: Path, **extra):
    spec = {"runtime": "python", "handler": "nodes:handler", "code": str(code),
            "memory": "64M", "timeout": "30s", "env": {"E2E_TOKEN": f"e2e-{os.getpid()}-{name}"}}
    spec.update(extra)
    return c.create_function(name, **spec)


def call(fn, data=None):
    """One invocation: its result decoded in .json(), where it ran in .node."""
    return fn.invoke_raw(json.dumps(data or {}))


def instances_on(fn) -> dict:
    out: dict = {}
    for i in fn.status().get("instances", []):
        if i.get("phase") in ("Warm", "Busy"):
            out[i["node"]] = out.get(i["node"], 0) + 1
    return out


def busy_on(fn, node: str) -> bool:
    return any(
        i["node"] == node and i.get("phase") == "Busy" for i in fn.status().get("instances", [])
    )


def test_agents_join_with_labels_and_capacity(cluster):
    cluster.start_agent("node1", {"zone": "az1"})
    cluster.start_agent("node2", {"zone": "az2", "gpu": "available"})
    nodes = cluster.nodes()
    assert set(nodes) == {"node1", "node2"}
    n2 = nodes["node2"]
    assert n2["status"]["phase"] == "Ready"
    assert n2["spec"]["labels"]["gpu"] == "available"
    assert n2["spec"]["labels"]["zone"] == "az2"
    assert "arch" in n2["spec"]["labels"] and "kvm" in n2["spec"]["labels"]
    assert int(n2["spec"]["memoryMib"]) > 0 and n2["spec"]["vcpu"] >= 1
    assert int(n2["status"]["epoch"]) >= 1


def test_a_second_agent_with_a_taken_name_is_refused(cluster):
    cluster.start_agent("node1")
    impostor = cluster.start_agent("impostor", node_name="node1", wait=False)
    poll(lambda: "is in use" in impostor.log_text(), timeout=15)
    assert 'node name "node1" is in use' in impostor.log_text()
    assert cluster.phase("node1") == "Ready"
    assert "impostor" not in cluster.nodes()


def test_calls_run_on_agents_and_spread_over_them(cluster, code):
    cluster.start_agent("node1", {"zone": "az1"})
    cluster.start_agent("node2", {"zone": "az2"})
    c = cluster.client()
    fn = create(c, "spread", code, placement={"strategy": "spread"})
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: call(fn, {"sleep": 0.5}), range(8)))
    assert {r.node for r in results} == {"node1", "node2"}, (
        "\n".join(placements(c, "spread")), {n: (v["status"].get("rttUs"), v["status"].get(
            "allocatedMemoryMib")) for n, v in cluster.nodes().items()})
    assert set(instances_on(fn)) == {"node1", "node2"}
    # A warm call goes to a warm instance, wherever it runs.
    again = call(fn)
    assert not again.cold_start and again.node in ("node1", "node2")
    listed = c.function("spread").status()
    assert all(i["node"] in ("node1", "node2") for i in listed["instances"])
    # The instances are stored objects: a watch of the store from the function's revision sees
    # them come up on both agents.
    rev = int(c.function("spread").get()["metadata"]["resourceVersion"])
    seen = set()
    with c.watch("instances", "spread", from_revision=rev + 1, timeout=10) as w:
        for e in w:
            if e["type"] == "put":
                seen.add(e["object"]["node"])
            if seen == {"node1", "node2"}:
                break
    assert seen == {"node1", "node2"}


def test_a_killed_agent_is_lost_its_calls_fail_and_new_calls_go_elsewhere(cluster, code):
    a1 = cluster.start_agent("node1")
    c = cluster.client()
    fn = create(c, "moves", code)
    assert call(fn).node == "node1"
    cluster.start_agent("node2")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(call, fn, {"sleep": 30})
        # The call is on node1's instance once that instance is busy.
        poll(lambda: busy_on(fn, "node1"), timeout=10)
        killed = time.monotonic()
        os.kill(a1.proc.pid, signal.SIGKILL)
        with pytest.raises(blixard.errors.Unavailable) as e:
            pending.result(timeout=10)
        failed_after = time.monotonic() - killed
    assert "node1" in str(e.value)
    assert failed_after < 5, failed_after
    poll(lambda: cluster.phase("node1") == "Lost", timeout=10)
    lost_after = time.monotonic() - killed
    assert lost_after < 5, lost_after
    assert call(fn).node == "node2"


def test_a_cut_link_is_fenced_and_the_agent_rejoins_without_its_stale_instance(cluster, code):
    a1 = cluster.start_agent("node1")
    c = cluster.client()
    fn = create(c, "fenced", code)
    first = call(fn)
    assert first.node == "node1"
    stale = first.json()["instance"]
    epoch = int(cluster.nodes()["node1"]["status"]["epoch"])
    cluster.start_agent("node2")
    a1.cut()
    poll(lambda: cluster.phase("node1") == "Lost", timeout=10)
    assert call(fn).node == "node2"
    a1.restore()
    poll(lambda: cluster.phase("node1") == "Ready", timeout=30)
    assert int(cluster.nodes()["node1"]["status"]["epoch"]) > epoch

    # Its instance from before the cut is gone (each instance has a cgroup of its own name).
    def stale_alive():
        for pid in os.listdir("/proc"):
            try:
                if pid.isdigit() and stale in Path(f"/proc/{pid}/cgroup").read_text():
                    return True
            except OSError:
                pass
        return False

    poll(lambda: not stale_alive(), timeout=10)
    assert call(fn).json()["instance"] != stale


def _ws_connect(address: str, token: str):
    """A raw WebSocket upgrade of /v1/agent: the socket and the response head."""
    u = urlparse(address)
    s = socket.create_connection((u.hostname, u.port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /v1/agent HTTP/1.1\r\nHost: {u.hostname}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    return s, head


def test_a_wrong_token_gets_401_and_no_node(cluster):
    s, head = _ws_connect(cluster.address, "not-the-token")
    assert head.startswith(b"HTTP/1.1 401"), head
    s.close()
    bad = cluster.start_agent("intruder", token="wrong", wait=False)
    poll(lambda: "refused the join: HTTP 401" in bad.log_text(), timeout=10)
    assert "intruder" not in cluster.nodes()


def test_an_agent_joins_with_a_node_token_and_a_read_token_gets_403(cluster):
    admin = cluster.client()
    node_secret = admin.create_token("node", name="agents")["secret"]
    cluster.start_agent("node1", token=node_secret)
    assert cluster.phase("node1") == "Ready"
    read_secret = admin.create_token("read", name="reader")["secret"]
    s, head = _ws_connect(cluster.address, read_secret)
    assert head.startswith(b"HTTP/1.1 403"), head
    s.close()
    reader = cluster.start_agent("reader-agent", token=read_secret, wait=False)
    poll(lambda: "refused the join: HTTP 403" in reader.log_text(), timeout=10)
    assert "blixard token create --role node" in reader.log_text()
    assert "reader-agent" not in cluster.nodes()


def test_a_malformed_frame_closes_that_connection_only(cluster):
    cluster.start_agent("node1")
    s, head = _ws_connect(cluster.address, cluster.token)
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = b"\xff\xfe not a protobuf frame"
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    s.sendall(bytes([0x82, 0x80 | len(payload)]) + mask + masked)
    reply = s.recv(4096)
    assert reply[:1] == b"\x88", reply  # a close frame
    s.close()
    assert cluster.phase("node1") == "Ready"
    assert cluster.server.poll() is None


def test_code_travels_as_an_archive_to_agents_that_cannot_see_the_client(cluster, code):
    a1 = cluster.start_agent("node1")
    cluster.start_agent("node2")
    # Where the client keeps the code, the server and the agents see an empty directory.
    assert (code / "nodes.py").exists()
    for pid in (cluster.server.pid, a1.proc.pid):
        assert os.listdir(f"/proc/{pid}/root{cluster.client_dir}") == []

    c = cluster.client()
    fn = create(c, "travels", code, placement={"strategy": "spread"})
    digest = fn.get()["spec"]["codeDigest"]
    assert digest.startswith("sha256:") and "code" not in fn.get()["spec"]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: call(fn, {"sleep": 0.5}), range(8)))
    assert {r.node for r in results} == {"node1", "node2"}, (
        [r.cold_start for r in results], placements(c, "travels"))
    # Each agent fetched the archive once and keeps it unpacked under its own data dir.
    for name in ("node1", "node2"):
        kept = cluster.agents[name].data_dir / "code" / digest.split(":", 1)[1]
        assert (kept / "nodes.py").read_text() == HANDLER

    # New code is a new digest: applied, new instances run it on the agents.
    (code / "nodes.py").write_text(HANDLER.replace('"pid"', '"version": 2, "pid"'))
    result = c.apply_objects({"functions": [{"metadata": {"name": "travels"}, "spec": {
        "runtime": "python", "handler": "nodes:handler", "code": str(code), "memory": 64,
        "timeout": "30s", "env": {"E2E_TOKEN": f"e2e-{os.getpid()}-travels"},
        "placement": {"strategy": "spread"}}}]})
    assert [i["action"] for i in result["items"]] == ["configured"]
    assert fn.get()["spec"]["codeDigest"] != digest
    poll(lambda: call(fn).json().get("version") == 2, timeout=20)


def placements(c, function: str) -> list:
    """Every placement decision recorded for `function` so far (for failure messages)."""
    out = []
    with c.watch("functions", function, after=0, timeout=2) as w:
        for e in w:
            if e["type"] == "record" and e["reason"] == "Placed":
                out.append(e["message"])
    return out


def placement(c, function: str) -> str:
    """The first placement decision recorded for `function` ("placed on ...: reasons")."""
    with c.watch("functions", function, after=0, timeout=10) as w:
        for e in w:
            if e["type"] == "record" and e["reason"] == "Placed":
                return e["message"]
    raise AssertionError(f"no placement of {function} recorded")


def test_scenario0_data_locality_and_latency_win_when_all_else_is_equal(cluster, code):
    # Three alike nodes but for where they are and what they hold: "near" is next to the server,
    # "far" and "holder" 15 ms away each way, and "holder" holds /data. "near" joins last, so
    # ties (equal scores go to the first node) would not pick it.
    cluster.start_agent("far", {"zone": "az1"}, delay=0.015)
    cluster.start_agent("holder", {"zone": "az1"}, data_paths=["/data"], delay=0.015)
    cluster.start_agent("near", {"zone": "az1"})
    nodes = poll(lambda: (lambda n: n if all(int(n[x]["status"].get("rttUs", 0)) > 0
                                             for x in ("near", "far", "holder")) else None)(
        cluster.nodes()), timeout=10)
    assert int(nodes["far"]["status"]["rttUs"]) > 25_000 > int(nodes["near"]["status"]["rttUs"])
    assert nodes["holder"]["spec"]["dataPaths"] == ["/data"]

    c = cluster.client()
    # Scenario 0: the image's path comes in the event; the node holding it wins over a nearer one.
    images = create(c, "image-processor", code, placement={"dataPathFrom": "imagePath"})
    first = call(images, {"imagePath": "/data/input.jpg"})
    assert first.node == "holder" and first.cold_start
    assert "holds /data" in placement(c, "image-processor")
    # Without data to be near, the nearest node wins; the decision says how near.
    other = create(c, "resizer", code)
    assert call(other).node == "near"
    assert "ms from caller" in placement(c, "resizer")
    # A path no node holds leaves latency to decide.
    elsewhere = create(c, "elsewhere", code, placement={"dataPathFrom": "input.path"})
    assert call(elsewhere, {"input": {"path": "/srv/none.jpg"}}).node == "near"


def test_scenario3_placement_rules_land_where_they_should(cluster, code):
    # Scenario 3's cluster: zones az1..az3, one node with a GPU, one with fast storage.
    cluster.start_agent("node1", {"zone": "az1", "storage": "fast"})
    cluster.start_agent("node2", {"zone": "az2"})
    cluster.start_agent("node3", {"zone": "az3", "gpu": "available"})
    c = cluster.client()
    # image-resizer: "run on any node, prefer those with GPU".
    resizer = create(c, "image-resizer", code, memory="64M",
                     placement={"nodeAffinity": {"preferred": {"gpu": "available"}}})
    assert call(resizer).node == "node3"
    assert "gpu=available" in placement(c, "image-resizer")
    # postgres-db's rule, for a function: only nodes with storage=fast.
    pinned = create(c, "pinned", code, placement={"nodeSelector": {"storage": "fast"}})
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        nodes = {r.node for r in pool.map(lambda _: call(pinned, {"sleep": 0.5}), range(3))}
    assert nodes == {"node1"}
    # redis-cache's rule: spread across availability zones, one instance per zone.
    spread = create(c, "spread-zones", code, placement={"spreadAcross": "availability-zones"})
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        nodes = [r.node for r in pool.map(lambda _: call(spread, {"sleep": 1.0}), range(3))]
    assert sorted(nodes) == ["node1", "node2", "node3"], nodes
    # No node fits: the refusal says why, kube-style.
    nowhere = create(c, "nowhere", code, placement={"nodeSelector": {"storage": "tape"}})
    with pytest.raises(blixard.errors.Unavailable) as e:
        call(nowhere)
    assert "0 of 3 nodes fit" in str(e.value)


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_a_100_mb_body_is_refused_without_the_server_growing_by_it(cluster):
    host, port = urlparse(cluster.address).hostname, urlparse(cluster.address).port
    before = _rss_kib(cluster.server.pid)
    chunk = b"x" * (1 << 20)
    # An API body past its limit: 413; a gateway body for a path no trigger serves: 404.
    for target, token, status in (("/v1/apply", cluster.token, b"413"),
                                  ("/api/anything", None, b"404")):
        s = socket.create_connection((host, port), timeout=10)
        head = f"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        s.sendall((head + "\r\n").encode())
        answer = b""
        try:
            for _ in range(100):  # 100 MiB, chunked: no length to refuse it by up front
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-way and closed: what the server was meant to do
        try:
            answer = s.recv(4096)
        except (ConnectionResetError, socket.timeout):
            pass
        s.close()
        assert answer.startswith(b"HTTP/1.1 " + status), (target, answer[:200])
        assert cluster.server.poll() is None
    grown = _rss_kib(cluster.server.pid) - before
    assert grown < 32 * 1024, f"the server grew by {grown} KiB"
    assert cluster.client().functions() == []


def test_agents_time_each_other_and_a_call_from_a_node_lands_on_it(cluster, code):
    for name in ("node1", "node2", "node3"):
        cluster.start_agent(name, {"zone": "az1"})
    # Each agent times its round trips to the others over UDP probes (soon after it joins).
    def peers_measured():
        nodes = cluster.nodes()
        return all(set(nodes[n]["status"].get("peerRttUs", {})) == {"node1", "node2", "node3"} - {n}
                   for n in nodes)
    poll(peers_measured, timeout=20)
    rtts = [int(v) for n in cluster.nodes().values() for v in n["status"]["peerRttUs"].values()]
    assert all(0 < v < 5_000_000 for v in rtts), rtts

    # A client in node2's network namespace: the server knows the call comes from node2, and
    # the cold start lands there ("on the caller's node"), though node1 would win a tie.
    c = cluster.client()
    create(c, "local-first", code)
    script = ("import sys, blixard\n"
              "c = blixard.connect(sys.argv[1], token=sys.argv[2])\n"
              "print(c.function('local-first').invoke_raw('{}').node)\n")
    out = subprocess.run(
        ["ip", "netns", "exec", cluster.agents["node2"].netns, sys.executable, "-c", script,
         cluster.address, cluster.token], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "node2"
    assert "on the caller's node" in placement(c, "local-first")
