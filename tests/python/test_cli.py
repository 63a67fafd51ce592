"""The `blixard` console script against a `blixard up` daemon on a temporary data dir."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES, Cli, names, write

pytestmark = pytest.mark.cli

EXIT_NOT_FOUND = 3
EXIT_INVALID = 4
EXIT_EXISTS = 5
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
    assert header == ["NAME", "RUNTIME", "MEMORY", "TIMEOUT", "RUNNING", "WARM"]
    row = next(line.split() for line in table.splitlines() if line.startswith("image-processor"))
    assert row[:4] == ["image-processor", "python", "128M", "30s"]

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
    created = cli.json("vm", "create", "webapp", "--config", "web.yaml", "--replicas", "1",
                       "--storage-pool", "ssd-pool", "--storage-size", "10G", "--network", "web-vlan",
                       "--primary-election-policy", "oldest-first")
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
        cli.ok("vm", "delete", "webapp")
    fail(cli, EXIT_NOT_FOUND, "vm", "status", "webapp")


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
