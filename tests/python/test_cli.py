"""The `blixard` console script against a `blixard up` daemon on a temporary data dir."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES, Cli, names, write

pytestmark = pytest.mark.cli

EXIT_NOT_FOUND = 3
EXIT_INVALID = 4
EXIT_EXISTS = 5
EXIT_CONFLICT = 5  # conflict and already exists share a code
EXIT_UNAVAILABLE = 6
EXIT_TIMEOUT = 8
EXIT_HANDLER = 9


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie not yet reaped by its (new) parent has stopped too
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state in ("Z", "X")
    except (OSError, IndexError):
        return True


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A working directory with handler code and configs."""
    from conftest import HANDLER_PY

    d = tmp_path_factory.mktemp("cli-work")
    write(d / "code" / "echo.py", HANDLER_PY)
    write(d / "echo.yaml", "runtime: python\nhandler: echo:handler\ncode: ./code\ntimeout: 10s\n")
    return d


@pytest.fixture(scope="module")
def cli(tmp_path_factory, work):
    """`blixard up` on a fresh data dir and a free port; `blixard down` afterwards."""
    data_dir = tmp_path_factory.mktemp("cli-data") / "blixard"
    run = Cli(data_dir, work)
    r = run("up", "--listen", "127.0.0.1:0")
    assert r.returncode == 0, r.stdout + r.stderr + _log(data_dir)
    info = json.loads((data_dir / "server.json").read_text())
    assert info["address"].startswith("http://127.0.0.1:")
    assert info["token"] in r.stdout
    pid = int(info["pid"])
    try:
        yield run
    finally:
        down = run("down")
        assert down.returncode == 0, down.stdout + down.stderr
        deadline = time.monotonic() + 10
        while not pid_gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pid_gone(pid), f"blixard-agent pid {pid} still running after `blixard down`"
        assert not (data_dir / "server.json").exists()


def _log(data_dir: Path) -> str:
    p = data_dir / "agent.log"
    return p.read_text(errors="replace") if p.exists() else ""


def fail(run: Cli, code: int, *args: str, input=None) -> str:
    """Runs a command that must fail with `code`; returns its stderr."""
    r = run(*args, input=input)
    assert r.returncode == code, (
        f"blixard {' '.join(args)}: expected exit {code}, got {r.returncode}\n"
        f"{r.stdout}\n{r.stderr}"
    )
    assert r.stderr.startswith("error: ") or code == 2, r.stderr
    return r.stderr


# ---- daemon lifecycle ----


def test_up_again_says_already_running(cli):
    r = cli.ok("up", "--listen", "127.0.0.1:0")
    assert "already running" in r.stdout


def test_status_version_nodes(cli):
    st = cli.json("status")
    assert st["nodes"] >= 1 and st["server"]["version"]
    assert "nodes:" in cli.ok("status").stdout
    v = cli.json("version")
    assert v["client"] == v["server"]
    nodes = cli.json("node", "list")["items"]
    assert len(nodes) == 1
    table = cli.ok("node", "list").stdout
    assert "NAME" in table and nodes[0]["metadata"]["name"] in table


def test_help_documents_exit_codes(cli):
    out = cli.ok("--help").stdout
    for line in ("3  not found", "4  invalid spec", "6  unavailable", "9  handler failed"):
        assert line in out


# ---- functions ----


def test_function_lifecycle(cli, work):
    created = cli.json("function", "create", "image-processor", "--config", "echo.yaml",
                       "--memory", "128M", "--timeout", "30s", "--concurrent-executions", "100")
    assert created["metadata"]["name"] == "image-processor"
    assert int(created["spec"]["memory"]) == 128
    assert created["spec"]["timeout"] == "30s"
    assert created["spec"]["concurrentExecutions"] == 100

    listed = cli.json("function", "list")
    assert "image-processor" in names(listed["items"])
    table = cli.ok("function", "list").stdout
    header = table.splitlines()[0].split()
    assert header == ["NAME", "RUNNING", "WARM", "WHERE", "MEMORY", "TIMEOUT"]
    row = next(line.split() for line in table.splitlines() if line.startswith("image-processor"))
    # Scale to zero: nothing runs before the first call.
    assert row == ["image-processor", "0", "0", "-", "128M", "30s"]

    got = cli.json("function", "get", "image-processor")
    assert got["spec"]["handler"] == "echo:handler"
    assert "echo:handler" in cli.ok("function", "get", "image-processor").stdout

    out = cli.ok("function", "invoke", "image-processor", "--data", '{"imagePath": "/data/in.jpg"}')
    assert json.loads(out.stdout)["echo"] == {"imagePath": "/data/in.jpg"}
    assert cli.json("function", "invoke", "image-processor", "--data", "[1]")["echo"] == {"value": [1]}

    write(work / "event.json", '{"from": "file"}')
    out = cli.ok("function", "invoke", "image-processor", "--data", "@event.json")
    assert json.loads(out.stdout)["echo"] == {"from": "file"}
    out = cli.ok("function", "invoke", "image-processor", "--data", "-", input='{"from": "stdin"}')
    assert json.loads(out.stdout)["echo"] == {"from": "stdin"}

    metrics = cli.json("function", "metrics", "image-processor")
    assert int(metrics["invocations"]) == 4
    assert "Invocations: 4" in cli.ok("function", "metrics", "image-processor").stdout

    cli.ok("function", "delete", "image-processor")
    assert "image-processor" not in names(cli.json("function", "list")["items"])


def test_function_create_from_flags_and_conn_flags_after_command(cli, work):
    info = json.loads((cli.data_dir / "server.json").read_text())
    r = cli("function", "create", "flagfn", "--runtime", "python", "--handler", "echo:handler",
            "--code", "code", "--memory", "64", "--addr", info["address"],
            "--token", info["token"], "-o", "json")
    assert r.returncode == 0, r.stderr
    assert int(json.loads(r.stdout)["spec"]["memory"]) == 64
    assert cli.json("function", "invoke", "flagfn", "--data", '{"a": 1}')["echo"] == {"a": 1}
    cli.ok("function", "delete", "flagfn")


def test_function_errors(cli, work):
    cli.ok("function", "create", "dup", "--config", "echo.yaml")
    try:
        err = fail(cli, EXIT_EXISTS, "function", "create", "dup", "--config", "echo.yaml")
        assert "dup" in err
        err = fail(cli, EXIT_INVALID, "function", "invoke", "dup", "--data", "{not json")
        assert "--data" in err
        fail(cli, EXIT_HANDLER, "function", "invoke", "dup", "--data", '{"raise": "x"}')
        fail(cli, EXIT_HANDLER, "function", "invoke", "dup", "--data", '{"crash": true}')
    finally:
        cli.ok("function", "delete", "dup")
    fail(cli, EXIT_NOT_FOUND, "function", "invoke", "missing-fn", "--data", "{}")
    fail(cli, EXIT_NOT_FOUND, "function", "get", "missing-fn")
    fail(cli, EXIT_NOT_FOUND, "function", "delete", "missing-fn")
    fail(cli, EXIT_INVALID, "function", "create", "my fn", "--config", "echo.yaml")
    err = fail(cli, EXIT_INVALID, "function", "create", "neg", "--config", "echo.yaml",
               "--memory", "-5M")
    assert "--memory" in err
    err = fail(cli, EXIT_INVALID, "function", "create", "badt", "--config", "echo.yaml",
               "--timeout", "forever")
    assert "--timeout" in err
    fail(cli, EXIT_INVALID, "function", "create", "nofile", "--config", "missing.yaml")
    fail(cli, 2, "function", "create", "x", "--concurrent-executions", "many")
    assert names(cli.json("function", "list")["items"]) == []


def test_function_timeout(cli, work):
    cli.ok("function", "create", "slow", "--config", "echo.yaml", "--timeout", "1s")
    try:
        fail(cli, EXIT_TIMEOUT, "function", "invoke", "slow", "--data", '{"sleep": 5}')
    finally:
        cli.ok("function", "delete", "slow")


def test_nix_config_that_does_not_evaluate(cli, work):
    write(work / "broken.nix", "{ pkgs, ... }: { microvm = { mem = ; }; }\n")
    err = fail(cli, EXIT_INVALID, "function", "create", "nixfn", "--config", "broken.nix")
    assert "broken.nix" in err


# ---- vms, triggers ----


def test_vm_lifecycle(cli, work):
    write(work / "web.yaml", 'microvm: {mem: 256, vcpu: 1}\ncommand: ["sleep", "600"]\n')
    # The seed's command names a pool that must exist: the error names the flag and the fix.
    err = fail(cli, EXIT_INVALID, "vm", "create", "webapp", "--config", "web.yaml",
               "--storage-pool", "ssd-pool")
    assert "--storage-pool" in err and "blixard storage pool create ssd-pool" in err, err
    cli.ok("storage", "pool", "create", "ssd-pool", "--path", str(work / "pool"))
    err = fail(cli, EXIT_INVALID, "vm", "create", "webapp", "--config", "web.yaml",
               "--storage-pool", "ssd-pool", "--network", "web-vlan")
    assert "--network" in err and "blixard network create web-vlan --subnet" in err, err
    # (Its replicas would make the network's bridge on this host: the e2e tests run networks,
    # in namespaces of their own.)
    created = cli.json("vm", "create", "webapp", "--config", "web.yaml", "--replicas", "1",
                       "--storage-pool", "ssd-pool", "--storage-size", "10G")
    assert created["spec"]["replicas"] == 1
    assert created["spec"]["storage"]["pool"] == "ssd-pool"
    try:
        assert "webapp" in names(cli.json("vm", "list")["items"])
        table = cli.ok("vm", "list").stdout
        assert table.splitlines()[0].split()[:3] == ["NAME", "PHASE", "READY"]
        st = cli.json("vm", "status", "webapp")
        assert st["metadata"]["name"] == "webapp"
        assert cli.ok("vm", "status", "webapp").stdout.startswith("webapp: ")
        fail(cli, EXIT_EXISTS, "vm", "create", "webapp", "--config", "web.yaml", "--replicas", "1")
        err = fail(cli, EXIT_INVALID, "vm", "create", "bad", "--config", "web.yaml",
                   "--storage-size", "-100G")
        assert "--storage-size" in err
    finally:
        deleted = cli.ok("vm", "delete", "webapp").stdout
    fail(cli, EXIT_NOT_FOUND, "vm", "status", "webapp")
    assert "its volumes are kept: webapp-1" in deleted, deleted
    cli.ok("storage", "volume", "delete", "webapp-1")
    cli.ok("storage", "pool", "delete", "ssd-pool")


DB_PY = """
import http.server as h, os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
me = os.environ["BLIXARD_REPLICA"]
if os.environ["BLIXARD_ROLE"] != "primary":
    while True:
        time.sleep(60)
log = os.path.join(os.environ["BLIXARD_VOLUME"], "primaries")
with open(log, "a") as f:
    f.write(me + "\\n")
body = ("primary %s after %s" % (me, open(log).read().split()[:-1])).encode()
class P(h.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
h.HTTPServer(("127.0.0.1", int(os.environ["PORT_5432"])), P).serve_forever()
"""


def _pid_of(replica: str, token: str) -> int:
    """The host pid of a sandbox replica, by its environment."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"TOKEN={token}".encode() in env and f"BLIXARD_REPLICA={replica}".encode() in env:
            return int(entry.name)
    return -1


def _get(address: str) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{address}/", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def test_stateful_set_fails_over_and_switches_over(cli, work):
    """Scenario 2's shape through the CLI: one primary with the volume behind the balancer, a
    standby fenced in and promoted when it dies, a switchover on purpose."""
    token = f"cli-db-{os.getpid()}"
    # (JSON is YAML; the script goes inline: a sandbox sees none of the host's /tmp.)
    write(work / "db.yaml", json.dumps({"command": ["/usr/bin/python3", "-c", DB_PY],
                                        "ports": [5432], "env": {"TOKEN": token},
                                        "memory": 64}))
    cli.ok("storage", "pool", "create", "shared", "--type", "shared-dir",
           "--path", str(work / "shared"))
    # A node-local pool cannot follow a primary: refused, naming the flag.
    cli.ok("storage", "pool", "create", "local", "--path", str(work / "local"))
    err = fail(cli, EXIT_INVALID, "vm", "create", "db", "--config", "db.yaml", "--replicas", "3",
               "--storage-pool", "local", "--primary-election-policy", "oldest-first")
    assert "--storage-pool" in err and "shared-dir" in err, err
    cli.ok("vm", "create", "db", "--config", "db.yaml", "--replicas", "3",
           "--storage-class", "replicated", "--storage-size", "1G",
           "--primary-election-policy", "oldest-first", "--wait")
    try:
        out = cli.ok("vm", "status", "db").stdout
        assert "db primary=db-1, replicas=[db-1, db-2, db-3], epoch 1" in out, out
        assert "ROLE" in out, out
        lb = cli.json("vm", "status", "db")["status"]["endpoints"][0]["address"]
        assert _get(lb) == "primary db-1 after []"
        # The primary dies: a standby is fenced in on the same volume, the balancer follows.
        os.kill(_pid_of("db-1", token), 9)
        deadline = time.monotonic() + 30
        st = {}
        while time.monotonic() < deadline:
            st = cli.json("vm", "status", "db")["status"]
            if st.get("primary") in ("db-2", "db-3") and st.get("primaryEpoch") == "2":
                break
            time.sleep(0.1)
        new = st.get("primary")
        assert new in ("db-2", "db-3") and st.get("primaryEpoch") == "2", st
        assert _get(lb) == f"primary {new} after ['db-1']"
        out = cli.ok("vm", "status", "db").stdout
        assert "last failover:" in out and "fenced" in out and "balancer-switched" in out, out
        # On purpose, to the other standby: each step printed as it happens.
        other = "db-3" if new == "db-2" else "db-2"
        out = cli.ok("vm", "switchover", "db", "--to", other).stdout
        assert "fenced" in out and f"vm db: primary={other}, epoch 3" in out, out
        assert _get(lb) == f"primary {other} after ['db-1', '{new}']"
        err = fail(cli, EXIT_INVALID, "vm", "switchover", "db", "--to", "db-9")
        assert "--to" in err and "db-9" in err, err
        # The same steps as events, from the ones the server keeps; Ctrl-C ends the watch.
        import subprocess

        watch = subprocess.Popen([*cli.cmd, "vm", "watch", "db", "--all"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=cli.env(), cwd=cli.cwd)
        import threading

        limit = threading.Timer(30, watch.kill)  # what it waits for never came: fail, not hang
        limit.start()
        try:
            seen = []
            for line in watch.stdout:
                seen.append(line)
                if " BalancerSwitched " in line and sum(" PrimaryFenced " in x for x in seen) >= 2:
                    break
            assert any(" FailoverDetected " in x and "db-1" in x for x in seen), seen
            watch.send_signal(2)
            assert watch.wait(15) == 0, watch.stderr.read()
        finally:
            limit.cancel()
            if watch.poll() is None:
                watch.kill()
                watch.wait(10)
            watch.stdout.close()
            watch.stderr.close()
    finally:
        cli.ok("vm", "delete", "db")
    cli.ok("storage", "volume", "delete", "db-data")
    cli.ok("storage", "pool", "delete", "shared")
    cli.ok("storage", "pool", "delete", "local")


def test_networks(cli):
    created = cli.json("network", "create", "web-vlan", "--subnet", "10.88.0.0/24")
    assert created["spec"]["subnet"] == "10.88.0.0/24"
    assert created["status"]["bridge"].startswith("bx-") and created["status"]["vni"] > 0
    err = fail(cli, EXIT_INVALID, "network", "create", "bad", "--subnet", "10.88.0.7/24")
    assert "--subnet" in err and "10.88.0.0/24" in err, err
    err = fail(cli, EXIT_INVALID, "network", "create", "bad", "--subnet", "nonsense")
    assert "--subnet" in err, err
    fail(cli, EXIT_EXISTS, "network", "create", "web-vlan", "--subnet", "10.89.0.0/24")
    table = cli.ok("network", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "SUBNET", "ADDRESSES", "BRIDGE", "VNI"]
    assert table[2].split()[:3] == ["web-vlan", "10.88.0.0/24", "0"]
    cli.ok("network", "delete", "web-vlan")
    fail(cli, EXIT_NOT_FOUND, "network", "delete", "web-vlan")
    assert cli.json("network", "list")["items"] == []


def test_storage_pools_and_volumes(cli, work):
    created = cli.json("storage", "pool", "create", "fast", "--path", str(work / "fast"),
                       "--class", "ssd")
    assert created["spec"] == {"type": "dir", "path": str(work / "fast"), "class": "ssd"}
    shared = cli.ok("storage", "pool", "create", "nfs", "--type", "shared-dir",
                    "--path", str(work / "nfs")).stdout
    assert "class replicated" in shared
    table = cli.ok("storage", "pool", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "CLASS", "PATH", "VOLUMES", "ALLOCATED"]
    assert [line.split()[:3] for line in table[2:]] == [
        ["fast", "dir", "ssd"], ["nfs", "shared-dir", "replicated"]]
    err = fail(cli, EXIT_INVALID, "storage", "pool", "create", "bad", "--path", "relative/dir")
    assert "--path" in err
    err = fail(cli, EXIT_INVALID, "storage", "pool", "create", "bad", "--path", "/etc/x")
    assert "/etc" in err
    fail(cli, EXIT_EXISTS, "storage", "pool", "create", "fast", "--path", str(work / "x"))
    # A set by class: each replica gets a volume in the pool serving it, on the node.
    write(work / "db.yaml", 'command: ["sh", "-c", "echo hi >$BLIXARD_VOLUME/f; exec sleep 600"]\n')
    cli.ok("vm", "create", "db", "--config", "db.yaml", "--replicas", "2", "--storage-class",
           "ssd", "--storage-size", "16M", "--wait")
    try:
        volumes = cli.json("storage", "volume", "list")["items"]
        assert [v["metadata"]["name"] for v in volumes] == ["db-1", "db-2"]
        assert {v["status"]["phase"] for v in volumes} == {"Attached"}
        assert (work / "fast" / "db-1" / "f").read_text() == "hi\n"
        listed = cli.ok("storage", "volume", "list").stdout
        assert listed.splitlines()[0].split()[:4] == ["NAME", "VM", "POOL", "SIZE"]
        assert "db-1" in listed and "fast" in listed and "16M" in listed
        err = fail(cli, EXIT_CONFLICT, "storage", "volume", "delete", "db-1")
        assert "in use by replica" in err
        err = fail(cli, EXIT_CONFLICT, "storage", "pool", "delete", "fast")
        assert "holds volumes (db-1, db-2)" in err
    finally:
        cli.ok("vm", "delete", "db")
    pool = cli.json("storage", "pool", "list")["items"][0]
    assert pool["status"]["volumes"] == 2
    for name in ("db-1", "db-2"):
        cli.ok("storage", "volume", "delete", name)
    assert not (work / "fast" / "db-1").exists()
    fail(cli, EXIT_NOT_FOUND, "storage", "volume", "delete", "db-1")
    cli.ok("storage", "pool", "delete", "fast")
    cli.ok("storage", "pool", "delete", "nfs")
    assert cli.json("storage", "pool", "list")["items"] == []


def test_apply_delete_and_triggers(cli):
    manifest = str(EXAMPLES / "platform" / "platform.yaml")
    applied = cli.json("apply", "-f", manifest)
    assert {i["action"] for i in applied["items"]} == {"created"}
    assert names(cli.json("function", "list")["items"]) == [
        "image-resizer", "order-processor", "pdf-generator"]
    assert cli.ok("apply", "-f", manifest).stdout.count("unchanged") == len(applied["items"])
    triggers = cli.json("trigger", "list")["items"]
    assert {t["spec"]["type"] for t in triggers} >= {"http", "queue", "event"}
    assert "/api/resize" in cli.ok("trigger", "list").stdout
    out = cli.json("function", "invoke", "image-resizer", "--data",
                   '{"width": 1024, "height": 512, "maxSide": 256}')
    assert out["body"] == {"width": 256, "height": 128}
    removed = cli.json("delete", "-f", manifest)
    assert {i["action"] for i in removed["items"]} == {"deleted"}
    assert cli.json("function", "list").get("items", []) == []
    assert cli.json("vm", "list").get("items", []) == []


def _shop(memory: str, extra: bool) -> str:
    text = ("apiVersion: blixard.dev/v1\nkind: Platform\nmetadata: {name: cli-shop}\nspec:\n"
            "  functions:\n"
            f"    - {{name: shop-api, config: ../echo.yaml, memory: {memory},\n"
            "       triggers: [{type: queue, source: shop-orders}]}\n")
    if extra:
        text += "    - {name: shop-extra, config: ../echo.yaml}\n"
    return text


def test_apply_dry_run_prune_moved_manifest_and_delete_stack(cli, work):
    write(work / "shop" / "v1.yaml", _shop("128M", extra=True))
    out = cli.ok("apply", "-f", "shop/v1.yaml").stdout
    assert "queue/shop-orders created" in out
    assert "function/shop-extra created" in out
    before = {f["metadata"]["name"]: f["metadata"]["resourceVersion"]
              for f in cli.json("function", "list")["items"]}

    # --dry-run prints the diff (kubectl diff's live/merged), exits 0 and changes nothing.
    write(work / "shop" / "v2.yaml", _shop("256M", extra=False))
    dry = cli.ok("apply", "-f", "shop/v2.yaml", "--dry-run", "--prune").stdout
    assert "--- live/function/shop-api\n+++ merged/function/shop-api\n@@ " in dry
    assert "\n-  memory: 128\n+  memory: 256\n" in dry
    assert "function/shop-api configured (dry run)" in dry
    assert "function/shop-extra pruned (dry run)" in dry
    assert "--- live/function/shop-extra\n+++ merged/function/shop-extra\n" in dry
    after = {f["metadata"]["name"]: f["metadata"]["resourceVersion"]
             for f in cli.json("function", "list")["items"]}
    assert after == before

    # --prune deletes what left the stack's manifest.
    out = cli.ok("apply", "-f", "shop/v2.yaml", "--prune").stdout.splitlines()
    assert "function/shop-api configured" in out
    assert "function/shop-extra pruned" in out
    assert "shop-extra" not in names(cli.json("function", "list")["items"])

    # The same manifest and its config moved to another directory: every object unchanged.
    write(work / "moved" / "deep" / "echo.yaml", (work / "echo.yaml").read_text())
    shutil.copytree(work / "code", work / "moved" / "deep" / "code")
    write(work / "moved" / "deep" / "sub" / "shop.yaml", _shop("256M", extra=False))
    moved = cli.json("apply", "-f", "moved/deep/sub/shop.yaml")
    assert {i["action"] for i in moved["items"]} == {"unchanged"}, moved

    # delete --stack deletes the whole stack, the queue made for its trigger too; no file.
    gone = cli.ok("delete", "--stack", "cli-shop").stdout.splitlines()
    assert sorted(gone) == ["function/shop-api deleted", "queue/shop-orders deleted",
                            "trigger/shop-api-queue deleted"]
    assert cli.ok("delete", "--stack", "cli-shop").stdout.strip() == "nothing to delete"


def test_apply_stack_errors_name_the_flag(cli, work):
    write(work / "plain.yaml", "apiVersion: blixard.dev/v1\nkind: Function\n"
          "metadata: {name: plain-fn}\nspec: {config: ./echo.yaml}\n")
    err = fail(cli, EXIT_INVALID, "apply", "-f", "plain.yaml", "--prune")
    assert err.startswith("error: --stack: ") and "prune needs a stack" in err
    assert "plain-fn" not in names(cli.json("function", "list")["items"])
    # --stack for a plain list; a Platform's own stack cannot be renamed by it.
    assert "function/plain-fn created" in cli.ok(
        "apply", "-f", "plain.yaml", "--stack", "tools", "--prune").stdout
    write(work / "shop" / "v2.yaml", _shop("256M", extra=False))
    err = fail(cli, EXIT_INVALID, "apply", "-f", "shop/v2.yaml", "--stack", "tools")
    assert "--stack" in err and "cli-shop" in err
    fail(cli, EXIT_INVALID, "delete")
    fail(cli, EXIT_INVALID, "delete", "-f", "plain.yaml", "--stack", "tools")
    dry = cli.ok("delete", "--stack", "tools", "--dry-run").stdout
    assert "function/plain-fn deleted (dry run)" in dry and "\n-  name: plain-fn\n" in dry
    assert "plain-fn" in names(cli.json("function", "list")["items"])
    cli.ok("delete", "--stack", "tools")
    assert "plain-fn" not in names(cli.json("function", "list")["items"])


HEADER = "apiVersion: blixard.dev/v1\nkind: Platform\nmetadata: {name: p}\nspec:\n  functions:\n"
GOOD = "    - {name: good, runtime: python, handler: 'echo:handler', code: ./code}\n"


@pytest.mark.parametrize(
    "body, expect",
    [
        (GOOD + "    - {name: typed, runtime: python, memory: {a: 1}}\n", "memory"),
        (GOOD + "    - {name: neg, runtime: python, memory: -5}\n", "memory"),
        (GOOD + "    - {name: unk, runtime: python, colour: blue}\n", "colour"),
        (GOOD + GOOD, "good"),
        (GOOD + "    - {name: has space, runtime: python}\n", "name"),
        (GOOD + "    - {name: [\n", "m.yaml"),
    ],
    ids=["wrong-type", "negative-size", "unknown-field", "duplicate-name", "name-with-space",
         "yaml-does-not-parse"],
)
def test_bad_manifest_changes_nothing(cli, work, body, expect):
    before = cli.json("function", "list")
    write(work / "m.yaml", HEADER + body)
    err = fail(cli, EXIT_INVALID, "apply", "-f", "m.yaml")
    assert expect in err
    # file:line:col comes first.
    assert err.startswith("error: ") and "m.yaml:" in err.splitlines()[0]
    assert cli.json("function", "list") == before


def test_missing_manifest(cli):
    fail(cli, EXIT_INVALID, "apply", "-f", "no-such-file.yaml")
    fail(cli, 2, "apply")


# ---- without a server ----


def test_no_server_is_unavailable(tmp_path):
    run = Cli(tmp_path / "none", tmp_path)
    err = fail(run, EXIT_UNAVAILABLE, "function", "list")
    assert "blixard up" in err
    fail(run, EXIT_UNAVAILABLE, "status")
    r = run("down")
    assert r.returncode == 0 and "not running" in r.stdout
    r = run("--addr", "http://127.0.0.1:9", "function", "list")
    assert r.returncode == EXIT_UNAVAILABLE, r.stderr


def test_up_with_unusable_data_dir(tmp_path):
    (tmp_path / "file").write_text("a regular file")
    run = Cli(tmp_path / "file" / "dir", tmp_path)
    err = fail(run, EXIT_INVALID, "up", "--listen", "127.0.0.1:0")
    assert "--data-dir" in err


# ---- serverless: triggers, logs, metrics, watch, throttling ----

EXIT_THROTTLED = 7


def _poll(condition, timeout: float = 20.0, interval: float = 0.1):
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < end, f"condition not met within {timeout}s"
        time.sleep(interval)


def _http(url: str, body: bytes = b"", method: str = "POST"):
    """(status, body) of one request; HTTP errors are answers too."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body if method != "GET" else None, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()


def _node_name(cli) -> str:
    return cli.json("node", "list")["items"][0]["metadata"]["name"]


def test_function_trigger_http_prints_a_url_that_serves_the_function(cli):
    cli.ok("function", "create", "image-processor", "--config", "echo.yaml")
    try:
        r = cli.ok("function", "trigger", "image-processor", "--http", "--path",
                   "/api/process-image")
        assert "trigger image-processor-http created" in r.stdout
        line = next(x for x in r.stdout.splitlines() if x.startswith("Now accessible at: "))
        url = line.split(": ", 1)[1]
        info = json.loads((cli.data_dir / "server.json").read_text())
        assert url == info["address"].rstrip("/") + "/api/process-image"

        # The gateway re-reads its routes within a second: poll until the path is served.
        status, body = _poll(lambda: (lambda a: a if a[0] != 404 else None)(
            _http(url + "?size=small", b'{"imagePath": "/data/in.jpg"}')))
        assert status == 200, body
        event = json.loads(body)["echo"]
        assert event["method"] == "POST" and event["path"] == "/api/process-image"
        assert json.loads(event["body"]) == {"imagePath": "/data/in.jpg"}
        assert event["query"] == {"size": "small"}

        listed = cli.json("trigger", "list")["items"]
        t = next(t for t in listed if t["metadata"]["name"] == "image-processor-http")
        assert t["spec"]["function"] == "image-processor" and t["status"]["url"] == url

        # --method limits it; --name names it; -o json gives the object and the url.
        obj = cli.json("function", "trigger", "image-processor", "--http", "--path", "/api/get",
                       "--method", "get", "--name", "ip-get")
        assert obj["metadata"]["name"] == "ip-get" and obj["spec"]["methods"] == ["GET"]
        get_url = obj["url"]
        status, _ = _poll(lambda: (lambda a: a if a[0] != 404 else None)(_http(get_url)))
        assert status == 405
        assert _http(get_url, method="GET")[0] == 200

        err = fail(cli, EXIT_INVALID, "function", "trigger", "image-processor", "--http")
        assert "--path" in err
        fail(cli, EXIT_INVALID, "function", "trigger", "image-processor", "--path", "/x")
        fail(cli, EXIT_NOT_FOUND, "function", "trigger", "missing-fn", "--http", "--path", "/m")
        fail(cli, EXIT_EXISTS, "function", "trigger", "image-processor", "--http", "--path",
             "/api/process-image")
    finally:
        for t in cli.json("trigger", "list")["items"]:
            cli.ok("trigger", "delete", t["metadata"]["name"])
        cli.ok("function", "delete", "image-processor")


def test_function_list_shows_running_warm_and_where(cli):
    cli.ok("function", "create", "lister", "--config", "echo.yaml", "--memory", "64M")
    try:
        cli.ok("function", "invoke", "lister", "--data", "{}")
        node = _node_name(cli)
        table = cli.ok("function", "list").stdout
        lines = table.splitlines()
        assert lines[0].split() == ["NAME", "RUNNING", "WARM", "WHERE", "MEMORY", "TIMEOUT"]
        row = next(x.split() for x in lines if x.startswith("lister"))
        assert row == ["lister", "0", "1", node, "64M", "10s"]
        obj = next(f for f in cli.json("function", "list")["items"]
                   if f["metadata"]["name"] == "lister")
        assert obj["status"]["instancesWarm"] == 1
        assert obj["status"]["instances"][0]["node"] == node
    finally:
        cli.ok("function", "delete", "lister")


def test_function_metrics_summary_and_table(cli):
    cli.ok("function", "create", "measured", "--config", "echo.yaml")
    try:
        for _ in range(2):
            cli.ok("function", "invoke", "measured", "--data", "{}")
        fail(cli, EXIT_HANDLER, "function", "invoke", "measured", "--data", '{"raise": "x"}')
        out = cli.ok("function", "metrics", "measured").stdout
        summary = out.splitlines()[0]
        assert summary.startswith("Invocations: 3/hour (3 total), Avg cold start: ")
        assert "ms, Avg duration: " in summary and summary.endswith("ms")
        for word in ("ERRORS", "THROTTLES", "COLD STARTS", "LATENCY", "P50", "P99",
                     "cold start", "duration"):
            assert word in out, out
        m = cli.json("function", "metrics", "measured")
        assert int(m["invocations"]) == 3 and int(m["errors"]) == 1
        assert int(m["coldStarts"]) == 1
        fail(cli, EXIT_NOT_FOUND, "function", "metrics", "missing-fn")
    finally:
        cli.ok("function", "delete", "measured")


def test_function_logs_and_follow(cli):
    import subprocess

    cli.ok("function", "create", "talker", "--config", "echo.yaml")
    try:
        cli.ok("function", "invoke", "talker", "--data", '{"print": "first words"}')
        _poll(lambda: "first words" in cli.ok("function", "logs", "talker").stdout)
        lines = [json.loads(x) for x in cli.ok("function", "logs", "talker", "-o", "json")
                 .stdout.splitlines()]
        assert any(x["text"] == "first words" and x["stream"] == "stdout" for x in lines)
        node = _node_name(cli)
        assert all(x["node"] == node for x in lines), lines  # every line says where it ran

        follow = subprocess.Popen([*cli.cmd, "function", "logs", "talker", "--follow"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=cli.env(), cwd=cli.cwd)
        try:
            assert follow.stdout.readline().strip() == "first words"
            cli.ok("function", "invoke", "talker", "--data", '{"print": "later words"}')
            assert follow.stdout.readline().strip() == "later words"
            follow.send_signal(2)  # Ctrl-C ends --follow cleanly
            assert follow.wait(15) == 0, follow.stderr.read()
        finally:
            if follow.poll() is None:
                follow.kill()
                follow.wait()
            follow.stdout.close()
            follow.stderr.close()
        fail(cli, EXIT_NOT_FOUND, "function", "logs", "missing-fn")
    finally:
        cli.ok("function", "delete", "talker")


def test_function_watch_streams_events_until_ctrl_c(cli):
    import queue
    import subprocess
    import threading

    cli.ok("function", "create", "watched", "--config", "echo.yaml")
    # --all: from the events the server keeps, so nothing is missed however fast the invoke is.
    watch = subprocess.Popen([*cli.cmd, "function", "watch", "watched", "--all"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=cli.env(), cwd=cli.cwd)
    lines: "queue.Queue[str]" = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in watch.stdout], daemon=True)
    reader.start()
    try:
        cli.ok("function", "invoke", "watched", "--data", "{}")
        node = _node_name(cli)
        seen = []
        end = time.monotonic() + 20
        while not any(" ScaledUp " in x for x in seen) or not any(" Placed " in x for x in seen):
            assert time.monotonic() < end, f"no ScaledUp/Placed line: {seen}"
            try:
                seen.append(lines.get(timeout=0.5))
            except queue.Empty:
                pass
        placed = next(x for x in seen if " Placed " in x)
        # time, reason, node, message
        clock, reason, where, *message = placed.split()
        assert len(clock) == len("12:34:56.789") and clock[2] == ":"
        assert reason == "Placed" and where == node and node in " ".join(message)
        watch.send_signal(2)  # Ctrl-C: exit 0
        assert watch.wait(15) == 0, watch.stderr.read()
    finally:
        if watch.poll() is None:
            watch.terminate()
            watch.wait(10)
        reader.join(5)
        watch.stdout.close()
        watch.stderr.close()
        cli.ok("function", "delete", "watched")
    fail(cli, EXIT_NOT_FOUND, "function", "watch", "missing-fn")


def test_function_watch_terminated_mid_stream(cli):
    import subprocess

    cli.ok("function", "create", "watched2", "--config", "echo.yaml")
    watch = subprocess.Popen([*cli.cmd, "function", "watch", "watched2", "-o", "json", "--all"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=cli.env(), cwd=cli.cwd)
    try:
        cli.ok("function", "invoke", "watched2", "--data", "{}")
        first = json.loads(watch.stdout.readline())
        assert first["name"] == "watched2" and first["type"] in ("put", "record")
    finally:
        watch.terminate()
        watch.wait(10)
        watch.stdout.close()
        cli.ok("function", "delete", "watched2")


SLOW_START_PY = """\
import time

time.sleep(3)  # imported before the instance says ready: a slow cold start


def handler(event, context):
    return event
"""


def _column(table: str, name: str) -> str:
    """The value under column `name` in the first row of a rich table (columns align left)."""
    lines = table.splitlines()
    head = next(i for i, line in enumerate(lines) if name in line)
    at = lines[head].index(name)
    row = next(line for line in lines[head + 1:] if line.strip() and set(line.strip()) != {"─"})
    return row[at:].split()[0]


def test_function_metrics_table_counts_abandoned_calls(cli, work):
    import socket
    from urllib.parse import urlparse

    write(work / "slow-code" / "slow_start.py", SLOW_START_PY)
    write(work / "slow.yaml", "runtime: python\nhandler: slow_start:handler\ncode: ./slow-code\n")
    cli.ok("function", "create", "gone", "--config", "slow.yaml")
    try:
        assert _column(cli.ok("function", "metrics", "gone").stdout, "ABANDONED") == "0"
        info = json.loads((cli.data_dir / "server.json").read_text())
        url = urlparse(info["address"])
        body = b"{}"
        request = (f"POST /v1/functions/gone/invoke HTTP/1.1\r\nHost: {url.hostname}\r\n"
                   f"Authorization: Bearer {info['token']}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                   ).encode() + body
        with socket.create_connection((url.hostname, url.port), timeout=30) as s:
            s.sendall(request)
            # Admitted and waiting for its cold start; then the client hangs up.
            _poll(lambda: int(cli.json("function", "metrics", "gone")
                              .get("concurrentExecutions", 0)) >= 1)
        _poll(lambda: int(cli.json("function", "metrics", "gone").get("abandoned", 0)) >= 1)
        out = cli.ok("function", "metrics", "gone").stdout
        assert _column(out, "ABANDONED") == "1", out
        assert _column(out, "INVOCATIONS") == "0", out
    finally:
        cli.ok("function", "delete", "gone")


def test_throttled_invoke_exits_7(cli):
    import subprocess

    cli.ok("function", "create", "narrow", "--config", "echo.yaml",
           "--concurrent-executions", "1")
    slow = None
    try:
        cli.ok("function", "invoke", "narrow", "--data", "{}")
        slow = subprocess.Popen([*cli.cmd, "function", "invoke", "narrow", "--data",
                                 '{"sleep": 3}'], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=cli.env(), cwd=cli.cwd)
        _poll(lambda: int(cli.json("function", "metrics", "narrow")
                          .get("concurrentExecutions", 0)) >= 1)
        err = fail(cli, EXIT_THROTTLED, "function", "invoke", "narrow", "--data", "{}")
        assert "throttled" in err and "retry later" in err
        out, _ = slow.communicate(timeout=30)
        assert slow.returncode == 0 and json.loads(out)["echo"] == {"sleep": 3}
    finally:
        if slow is not None and slow.poll() is None:
            slow.kill()
            slow.communicate()
        cli.ok("function", "delete", "narrow")


def test_sdk_over_http_async_invoke_logs_and_watch(cli, work):
    """The same SDK calls against the `blixard up` server (the HTTP client) instead of in-process."""
    import asyncio

    import blixard

    info = json.loads((cli.data_dir / "server.json").read_text())
    with blixard.connect(info["address"], token=info["token"]) as c:
        fn = c.create_function("remote", config=work / "echo.yaml", concurrent_executions=10)
        try:
            with c.watch("functions", "remote", timeout=20) as w:

                async def main():
                    return await asyncio.gather(
                        *(fn.invoke_async({"i": i, "print": f"remote {i}"}) for i in range(5)))

                results = asyncio.run(main())
                assert [r["echo"]["i"] for r in results] == list(range(5))
                reasons = set()
                for e in w:
                    reasons.add(e["reason"])
                    if {"ScaledUp", "Placed"} <= reasons:
                        break
                assert {"ScaledUp", "Placed"} <= reasons
            texts = _poll(lambda: (lambda t: t if {f"remote {i}" for i in range(5)} <= t else None)(
                {line["text"] for line in fn.logs()}))
            assert "remote 0" in texts
            with pytest.raises(blixard.Throttled):
                c.create_function("one", config=work / "echo.yaml", concurrent_executions=1)
                one = c.function("one")
                one.invoke({})

                async def two():
                    return await asyncio.gather(one.invoke_async({"sleep": 1.0}),
                                                one.invoke_async({"sleep": 1.0}))

                asyncio.run(two())
        finally:
            for name in ("remote", "one"):
                try:
                    c.delete_function(name)
                except blixard.NotFound:
                    pass


# ---- issue 11: values mean what they say; a full disk says so ----


def test_zero_and_out_of_range_values_are_errors_naming_the_field(cli, work):
    err = fail(cli, EXIT_INVALID, "function", "create", "z", "--config", "echo.yaml",
               "--max-instances", "0")
    assert "--max-instances" in err or "maxInstances" in err, err
    err = fail(cli, EXIT_INVALID, "function", "create", "z", "--config", "echo.yaml",
               "--memory", "0")
    assert "--memory" in err, err
    missing = work / "no-such-code"
    err = fail(cli, EXIT_INVALID, "function", "create", "z", "--config", "echo.yaml",
               "--code", str(missing))
    assert "code" in err and str(missing) in err, err
    err = fail(cli, EXIT_INVALID, "vm", "create", "huge", "--memory", "99999999G")
    assert "--memory" in err, err
    assert names(cli.json("function", "list")["items"]) == []
    assert "huge" not in names(cli.json("vm", "list")["items"])


def test_concurrent_executions_zero_throttles_every_call(cli, work):
    created = cli.json("function", "create", "closed", "--config", "echo.yaml",
                       "--concurrent-executions", "0")
    try:
        assert created["spec"].get("concurrentExecutions", 0) == 0
        err = fail(cli, EXIT_THROTTLED, "function", "invoke", "closed", "--data", "{}")
        assert "throttled" in err, err
    finally:
        cli.ok("function", "delete", "closed")


def test_invoke_timeout_must_be_positive(cli, work):
    cli.ok("function", "create", "t", "--config", "echo.yaml")
    try:
        for bad in ("0", "-1", "nan"):
            err = fail(cli, EXIT_INVALID, "function", "invoke", "t", "--data", "{}",
                       "--timeout", bad)
            assert "--timeout" in err, err
        cli.ok("function", "invoke", "t", "--data", "{}", "--timeout", "30")
    finally:
        cli.ok("function", "delete", "t")


def test_full_disk_says_disk_full_without_the_server_hint(tmp_path, work):
    """The data dir on a small tmpfs, filled: even `function delete` fails, and says why."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    run = Cli(mnt / "blixard", work)
    try:
        r = run("up", "--listen", "127.0.0.1:0")
        assert r.returncode == 0, r.stdout + r.stderr
        try:
            run.ok("function", "create", "victim", "--config", "echo.yaml")
            with open(mnt / "filler", "wb") as f:
                try:
                    while True:
                        f.write(b"x" * 65536)
                        f.flush()
                except OSError:
                    pass
            err = fail(run, EXIT_UNAVAILABLE, "function", "delete", "victim")
            assert "disk full: " in err and str(mnt / "blixard") in err, err
            assert "is the server running" not in err, err
        finally:
            (mnt / "filler").unlink(missing_ok=True)
            run("down")
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_node_list_get_cordon_uncordon_drain(cli):
    name = _node_name(cli)
    listed = cli.ok("node", "list").stdout
    assert "STATE" in listed and "INSTANCES" in listed and "Ready" in listed
    got = cli.ok("node", "get", name).stdout
    assert f"Name:      {name}" in got and "Epoch:" in got and "sandbox" in got
    assert "Data:" in got and "RTT:" in got
    assert f"node {name} cordoned" in cli.ok("node", "cordon", name).stdout
    assert "Ready,SchedulingDisabled" in cli.ok("node", "list").stdout
    cli.ok("function", "create", "on-cordoned", "--config", "echo.yaml")
    try:
        out = fail(cli, EXIT_UNAVAILABLE, "function", "invoke", "on-cordoned", "--data", "{}")
        assert "1 cordoned" in out
        assert f"node {name} uncordoned" in cli.ok("node", "uncordon", name).stdout
        cli.ok("function", "invoke", "on-cordoned", "--data", "{}")
        assert f"node {name} drained" in cli.ok("node", "drain", name).stdout
        _poll(lambda: not cli.json("function", "get", "on-cordoned").get("status", {})
              .get("instances"))
    finally:
        cli.ok("node", "uncordon", name)
        cli.ok("function", "delete", "on-cordoned")
    fail(cli, EXIT_NOT_FOUND, "node", "get", "no-such-node")


EXIT_AUTH = 10


def test_token_create_list_revoke_and_what_a_read_token_may_do(cli):
    secret = cli.ok("token", "create", "--role", "read", "--name", "cli-reader").stdout.strip()
    assert secret.startswith("blx_")
    try:
        listed = cli.ok("token", "list").stdout
        assert "cli-reader" in listed and "read" in listed and secret not in listed
        as_reader = ("--token", secret)
        cli.ok(*as_reader, "function", "list")
        out = fail(cli, EXIT_AUTH, *as_reader, "function", "create", "nope", "--config",
                   "echo.yaml")
        assert "admin" in out
        fail(cli, EXIT_AUTH, *as_reader, "token", "list")
    finally:
        assert "token cli-reader revoked" in cli.ok("token", "revoke", "cli-reader").stdout
    assert "unknown or revoked" in fail(cli, EXIT_AUTH, "--token", secret, "function", "list")
    fail(cli, EXIT_NOT_FOUND, "token", "revoke", "cli-reader")
    assert "function" in fail(cli, EXIT_INVALID, "token", "create", "--role", "read",
                              "--function", "echo")
    assert "ttl" in fail(cli, EXIT_INVALID, "token", "create", "--role", "read", "--ttl", "soon")
    made = cli.json("token", "create", "--role", "invoke", "--function", "echo", "--ttl", "12h")
    assert made["token"]["spec"]["function"] == "echo" and made["token"]["spec"]["expiresAt"]
    cli.ok("token", "revoke", made["token"]["metadata"]["name"])
