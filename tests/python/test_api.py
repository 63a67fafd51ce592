"""The Python SDK on an embedded cluster: objects, invocations, errors, manifests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import blixard
from blixard import errors

from conftest import EXAMPLES, names, write


def test_version_and_package_shape():
    assert blixard.__version__ == (Path(__file__).resolve().parents[2] / "VERSION").read_text().strip()
    assert blixard.connect is not None
    assert issubclass(errors.InvalidSpec, ValueError)
    assert issubclass(errors.NotFound, KeyError)
    assert issubclass(errors.Timeout, TimeoutError)
    assert issubclass(errors.Unavailable, ConnectionError)
    for cls in (errors.AlreadyExists, errors.Conflict, errors.Throttled, errors.HandlerFailed,
                errors.PayloadTooLarge, errors.Unauthenticated, errors.PermissionDenied):
        assert issubclass(cls, errors.BlixardError)


def test_every_core_code_has_an_exception_class():
    from blixard import _core

    for code in _core.errc_names():
        cls = errors.error_class(code)
        assert cls.code == code, code


def test_info_and_nodes(cluster):
    info = cluster.info()
    assert info["version"] == blixard.__version__
    nodes = cluster.nodes()
    assert len(nodes) == 1
    assert nodes[0]["metadata"]["name"]


def test_function_create_get_list_delete(cluster, echo_config):
    assert cluster.functions() == []
    fn = cluster.create_function("echo", config=echo_config, memory="256M", timeout="30s",
                                 concurrent_executions=10, max_instances=3)
    assert fn.name == "echo"
    obj = fn.get()
    assert obj["metadata"]["name"] == "echo"
    spec = obj["spec"]
    # Overrides win over the file.
    assert int(spec["memory"]) == 256
    assert spec["timeout"] == "30s"
    assert spec["concurrentExecutions"] == 10
    assert spec["scaling"]["maxInstances"] == 3
    assert spec["handler"] == "echo:handler"
    assert spec["runtime"] == "python"
    # `code` is resolved relative to the config file, and travels as an archive: the spec names
    # its digest, the same as that of the directory named outright.
    assert "code" not in spec and spec["codeDigest"].startswith("sha256:")
    named = cluster.create_function("echo-abs", config=echo_config,
                                    code=str(echo_config.parent / "code"))
    assert named.get()["spec"]["codeDigest"] == spec["codeDigest"]
    named.delete()

    cluster.create_function("echo2", config=echo_config)
    assert names(cluster.functions()) == ["echo", "echo2"]
    assert cluster.function("echo2").get()["spec"]["timeout"] == "10s"

    fn.delete()
    cluster.delete_function("echo2")
    assert cluster.functions() == []
    with pytest.raises(errors.NotFound):
        fn.get()


def test_function_from_keywords_only(cluster, code_dir):
    fn = cluster.create_function("kw", runtime="python", handler="echo:handler", code=code_dir,
                                 memory=64, timeout=5)
    spec = fn.get()["spec"]
    assert int(spec["memory"]) == 64
    assert spec["timeout"] == "5s"
    assert fn.invoke({"x": 1})["echo"] == {"x": 1}


def test_invoke_python_handler(cluster, echo_config):
    fn = cluster.create_function("echo", config=echo_config)
    out = fn.invoke({"x": 1, "s": "é"})
    assert out["echo"] == {"x": 1, "s": "é"}
    assert out["requestId"]
    raw = fn.invoke_raw('{"x": 2}')
    assert raw.json()["echo"] == {"x": 2}
    assert raw.request_id and raw.node
    assert raw.duration_ms >= 0


def test_function_metrics_count_invocations(cluster, echo_config):
    fn = cluster.create_function("echo", config=echo_config)
    fn.invoke({})
    with pytest.raises(errors.HandlerFailed):
        fn.invoke({"raise": "x"})
    m = fn.metrics()
    assert int(m["invocations"]) == 2
    assert int(m["errors"]) == 1
    assert int(m.get("coldStarts", 0)) >= 1


def test_second_invoke_is_warm(cluster, echo_config):
    fn = cluster.create_function("echo", config=echo_config)
    first = fn.invoke_raw("{}")
    assert first.cold_start is True
    # The instance stays warm: same process (its call counter goes on), no cold start.
    again = fn.invoke_raw("{}")
    assert again.cold_start is False
    assert again.json()["calls"] == first.json()["calls"] + 1
    status = fn.get().get("status", {})
    assert status.get("instancesRunning", 0) + status.get("instancesWarm", 0) >= 1


def test_invoke_async_runs_calls_concurrently(cluster, echo_config):
    import asyncio

    fn = cluster.create_function("echo", config=echo_config, concurrent_executions=10)

    async def main():
        return await asyncio.gather(*(fn.invoke_async({"i": i}) for i in range(4)))

    results = asyncio.run(main())
    assert [r["echo"] for r in results] == [{"i": i} for i in range(4)]


def exec_config(tmp_path, code_dir):
    """An exec function config: the package's standalone handler runtime (any program speaking the
    instance protocol is an exec handler) serving echo:handler from its code directory."""
    import shutil

    import blixard.handler_runtime as rt

    shutil.copy(rt.__file__, code_dir / "runtime.py")
    return write(tmp_path / "exec.yaml", f"""\
    runtime: exec
    command: ["{sys.executable}", "runtime.py", "echo:handler", "."]
    code: ./code
    timeout: 30s
    """)


def test_invoke_exec_handler(cluster, tmp_path, code_dir):
    fn = cluster.create_function("ex", config=exec_config(tmp_path, code_dir))
    assert fn.get()["spec"]["runtime"] == "exec"
    assert fn.invoke([1, 2, 3])["echo"] == {"value": [1, 2, 3]}


def test_concurrent_exec_cold_starts_all_succeed(cluster, tmp_path, code_dir):
    # Exec instances are spawned with CLONE_VM from the agent's threads: concurrent starts share
    # the agent's "dumpable" flag while they change ids, which once failed some of them with
    # "creating the user namespace: Permission denied". Every call needs its own instance here.
    import asyncio

    config = exec_config(tmp_path, code_dir)
    calls = 12
    for round in range(3):
        fn = cluster.create_function(
            f"burst{round}", config=config, concurrent_executions=calls, max_instances=calls
        )

        async def main():
            return await asyncio.gather(
                *(fn.invoke_async({"i": i, "sleep": 0.5}) for i in range(calls)),
                return_exceptions=True,
            )

        results = asyncio.run(main())
        failures = [repr(r) for r in results if isinstance(r, BaseException)]
        assert not failures, f"round {round}: {len(failures)} of {calls} failed: {failures[0]}"
        assert sorted(r["echo"]["i"] for r in results) == list(range(calls))


def test_handler_crash_is_handler_failed_and_instance_replaced(cluster, echo_config):
    fn = cluster.create_function("echo", config=echo_config)
    with pytest.raises(errors.HandlerFailed) as e:
        fn.invoke({"crash": True})
    assert e.value.code == "handler_failed"
    with pytest.raises(errors.HandlerFailed, match="boom"):
        fn.invoke({"raise": "bad input"})
    # The function still serves later calls.
    assert fn.invoke({"ok": 1})["echo"] == {"ok": 1}


def test_handler_timeout(cluster, echo_config):
    fn = cluster.create_function("slow", config=echo_config, timeout="1s")
    with pytest.raises(errors.Timeout) as e:
        fn.invoke({"sleep": 5})
    assert isinstance(e.value, TimeoutError)
    assert fn.invoke({"after": True})["echo"] == {"after": True}


def test_payload_not_json(cluster, echo_config):
    fn = cluster.create_function("echo", config=echo_config)
    with pytest.raises(errors.InvalidSpec) as e:
        fn.invoke_raw("{not json")
    assert isinstance(e.value, ValueError)
    with pytest.raises(errors.InvalidSpec):
        fn.invoke(object())


def test_invoke_missing_function(cluster):
    with pytest.raises(errors.NotFound) as e:
        cluster.function("nope").invoke({})
    assert isinstance(e.value, KeyError)
    assert "nope" in str(e.value)


def test_create_existing_name(cluster, echo_config):
    cluster.create_function("echo", config=echo_config)
    with pytest.raises(errors.AlreadyExists):
        cluster.create_function("echo", config=echo_config)


def test_bad_names_and_flags(cluster, echo_config):
    with pytest.raises(errors.InvalidSpec):
        cluster.create_function("has space", config=echo_config)
    with pytest.raises(errors.InvalidSpec) as e:
        cluster.create_function("neg", config=echo_config, memory="-5M")
    assert "memory" in e.value.field
    with pytest.raises(errors.InvalidSpec) as e:
        cluster.create_function("badt", config=echo_config, timeout="soon")
    assert "timeout" in e.value.field
    assert cluster.functions() == []


def test_missing_config_file(cluster, tmp_path):
    with pytest.raises(errors.InvalidSpec):
        cluster.create_function("f", config=tmp_path / "missing.yaml")


def test_nix_config_that_does_not_evaluate(cluster, tmp_path):
    bad = write(tmp_path / "bad.nix", "{ pkgs, ... }: { microvm = { mem = ; }; }\n")
    with pytest.raises(errors.InvalidSpec) as e:
        cluster.create_function("nixfn", config=bad)
    assert "bad.nix" in str(e.value)


def test_vms_create_status_list_delete(cluster, tmp_path):
    cfg = write(tmp_path / "web.yaml", """\
    microvm:
      mem: 256
      vcpu: 1
    command: ["sleep", "600"]
    """)
    pool = cluster.create_storage_pool("ssd-pool", tmp_path / "pool")
    assert pool["spec"]["class"] == "local"
    assert pool.get("status", {}).get("volumes", 0) == 0
    with pytest.raises(errors.InvalidSpec, match="blixard network create web-vlan"):
        cluster.create_vm("web", config=cfg, replicas=2, network="web-vlan")
    net = cluster.create_network("web-vlan", "10.88.0.0/24")
    assert net["spec"]["subnet"] == "10.88.0.0/24"
    assert names(cluster.networks()) == ["web-vlan"]
    vm = cluster.create_vm("web", config=cfg, replicas=2, storage_pool="ssd-pool",
                           storage_size="10G", stopped=True, network="web-vlan")
    obj = vm.get()
    assert obj["spec"]["replicas"] == 2
    assert obj["spec"]["storage"]["pool"] == "ssd-pool"
    assert obj["spec"]["network"] == "web-vlan"
    assert isinstance(vm.status(), dict)
    assert names(cluster.vms()) == ["web"]
    with pytest.raises(errors.Conflict):
        cluster.delete_network("web-vlan")
    cluster.delete_vm("web")
    assert cluster.vms() == []
    with pytest.raises(errors.NotFound):
        cluster.vm("web").status()
    cluster.delete_network("web-vlan")
    assert cluster.networks() == []


def test_triggers(cluster, echo_config):
    cluster.create_function("echo", config=echo_config)
    t = cluster.create_trigger("echo-http", function="echo", type="http", path="/api/echo")
    assert t.get()["spec"]["path"] == "/api/echo"
    q = cluster.create_trigger("echo-q", function="echo", type="queue", source="orders")
    assert q.get()["spec"]["source"] == "orders"
    assert names(cluster.triggers()) == ["echo-http", "echo-q"]
    cluster.delete_trigger("echo-q")
    assert names(cluster.triggers()) == ["echo-http"]


def test_objects_kept_across_reopen(tmp_path, echo_config):
    state = tmp_path / "state"
    with blixard.Cluster.local(state) as c:
        c.create_function("echo", config=echo_config)
        c.create_trigger("t", function="echo", type="event", source="ev")
    with blixard.Cluster.local(state) as c:
        assert names(c.functions()) == ["echo"]
        assert names(c.triggers()) == ["t"]
        assert c.function("echo").invoke({"back": 1})["echo"] == {"back": 1}


def test_closed_cluster_fails_cleanly(tmp_path):
    c = blixard.Cluster.local(tmp_path / "state")
    c.close()
    c.close()  # idempotent
    assert c.closed
    with pytest.raises(errors.Unavailable):
        c.functions()


def test_apply_platform_example(cluster):
    result = cluster.apply(EXAMPLES / "platform" / "platform.yaml")
    actions = {(i["kind"].lower(), i["name"]): i["action"] for i in result["items"]}
    assert actions[("function", "order-processor")] == "created"
    assert actions[("vm", "postgres-db")] == "created"
    assert actions[("trigger", "image-resizer-http")] == "created"
    # The queue its queue trigger reads did not exist: apply made it for the trigger.
    assert actions[("queue", "orders-queue")] == "created"
    assert names(cluster.functions()) == ["image-resizer", "order-processor", "pdf-generator"]
    assert names(cluster.vms()) == ["postgres-db", "redis-cache"]
    out = cluster.function("order-processor").invoke(
        {"orderId": "o-1", "items": [{"price": 2.5, "quantity": 2}]})
    assert out["status"] == "accepted" and out["total"] == 5.0
    # Applying again changes nothing.
    again = cluster.apply(EXAMPLES / "platform" / "platform.yaml")
    assert {i["action"] for i in again["items"]} == {"unchanged"}
    removed = cluster.delete(EXAMPLES / "platform" / "platform.yaml")
    assert {i["action"] for i in removed["items"]} == {"deleted"}
    assert cluster.functions() == [] and cluster.vms() == []


def test_apply_dry_run_prune_and_delete_a_stack(cluster, tmp_path, code_dir):
    def manifest(memory: str, extra: bool) -> Path:
        body = ("apiVersion: blixard.dev/v1\nkind: Platform\nmetadata: {name: shop}\nspec:\n"
                "  functions:\n"
                '    - {name: api, runtime: python, handler: "echo:handler", code: ./code, '
                f"memory: {memory}}}\n")
        if extra:
            body += '    - {name: extra, runtime: python, handler: "echo:handler", code: ./code}\n'
        return write(tmp_path / "shop.yaml", body)

    cluster.apply(manifest("128M", extra=True))
    dry = cluster.apply(manifest("256M", extra=False), dry_run=True, prune=True)
    by_name = {i["name"]: i for i in dry["items"]}
    assert by_name["api"]["action"] == "configured"
    assert "-  memory: 128\n+  memory: 256\n" in by_name["api"]["diff"]
    assert by_name["extra"]["action"] == "pruned"
    assert names(cluster.functions()) == ["api", "extra"], "a dry run changed something"
    assert cluster.function("api").get()["spec"]["memory"] == "128"

    applied = cluster.apply(manifest("256M", extra=False), prune=True)
    assert [(i["name"], i["action"]) for i in applied["items"]] == [
        ("api", "configured"), ("extra", "pruned")]
    assert "diff" not in applied["items"][0]
    with pytest.raises(errors.InvalidSpec) as e:
        cluster.delete(manifest("256M", extra=False), stack="shop")
    assert e.value.field == "stack"
    assert [i["action"] for i in cluster.delete(stack="shop")["items"]] == ["deleted"]
    assert cluster.functions() == []


BAD_MEMORY = """\
apiVersion: blixard.dev/v1
kind: Platform
metadata:
  name: shop
spec:
  functions:
    - name: ok-fn
      runtime: python
      handler: echo:handler
      code: ./code
    - name: bad-fn
      runtime: python
      handler: echo:handler
      code: ./code
      memory: -5
"""


def test_bad_manifest_names_field_and_line(cluster, tmp_path, code_dir):
    manifest = write(tmp_path / "bad.yaml", BAD_MEMORY)
    with pytest.raises(errors.InvalidSpec) as e:
        cluster.apply(manifest)
    err = e.value
    assert err.field == "spec.functions[1].memory"
    assert err.line == 15
    assert err.column > 0
    assert err.file.endswith("bad.yaml")
    assert str(err).startswith(f"{err.file}:15:")
    # Nothing was applied: the good function of the same manifest is absent too.
    assert cluster.functions() == []


def test_failed_apply_changes_nothing(cluster, tmp_path, code_dir, echo_config):
    cluster.create_function("keep", config=echo_config)
    before = cluster.functions()
    manifest = write(tmp_path / "dup.yaml", """\
    apiVersion: blixard.dev/v1
    kind: Platform
    metadata: {name: dup}
    spec:
      functions:
        - {name: one, runtime: python, handler: "echo:handler", code: ./code}
        - {name: one, runtime: python, handler: "echo:handler", code: ./code}
    """)
    with pytest.raises(errors.InvalidSpec):
        cluster.apply(manifest)
    assert cluster.functions() == before


@pytest.mark.parametrize(
    "body, field_part",
    [
        ("spec:\n  functions:\n    - name: f\n      memory: [1, 2]\n", "memory"),
        ("spec:\n  functions:\n    - name: f\n      colour: blue\n", "colour"),
        ("spec:\n  functions:\n    - name: has space\n      runtime: python\n", "name"),
        ("spec:\n  functions: [\n", ""),
    ],
    ids=["wrong-type", "unknown-field", "name-with-space", "yaml-does-not-parse"],
)
def test_manifest_errors(cluster, tmp_path, body, field_part):
    manifest = write(tmp_path / "m.yaml",
                     "apiVersion: blixard.dev/v1\nkind: Platform\nmetadata: {name: p}\n" + body)
    with pytest.raises(errors.InvalidSpec) as e:
        cluster.apply(manifest)
    assert field_part in e.value.field
    assert e.value.line > 0
    assert cluster.functions() == []
