"""Serverless functions through the Python SDK: metrics, logs, watch, async invoke, throttling,
warm pools, Ctrl-C and http triggers, on an embedded cluster."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from blixard import errors
from conftest import wait_for




@pytest.fixture
def echo(cluster, echo_config):
    return cluster.create_function("echo", config=echo_config)


# ---- metrics ----


def test_metrics_count_invocations_errors_and_cold_starts(echo):
    for i in range(3):
        echo.invoke({"i": i})
    with pytest.raises(errors.HandlerFailed):
        echo.invoke({"raise": "x"})
    m = echo.metrics()
    assert m["function"] == "echo"
    assert int(m["invocations"]) == 4
    assert int(m["invocationsLastHour"]) == 4
    assert int(m["errors"]) == 1
    assert int(m.get("throttles", 0)) == 0
    # One instance served every call: one cold start, with its init time measured.
    assert int(m["coldStarts"]) == 1
    assert int(m["coldStart"]["count"]) == 1
    assert float(m["coldStart"]["avgMs"]) > 0
    assert int(m["duration"]["count"]) >= 3
    d = m["duration"]
    assert 0 < float(d["p50Ms"]) <= float(d["p99Ms"])


def test_metrics_of_unknown_function(cluster):
    with pytest.raises(errors.NotFound):
        cluster.function("nope").metrics()


# ---- warm pools ----


def test_warm_reuse_visible_in_status(echo, cluster):
    assert echo.invoke_raw("{}").cold_start is True
    st = echo.get()["status"]
    assert int(st.get("instancesWarm", 0)) == 1
    assert int(st.get("instancesRunning", 0)) == 0
    (inst,) = st["instances"]
    node = cluster.nodes()[0]["metadata"]["name"]
    assert inst["node"] == node
    assert inst["phase"] == "Warm"
    again = echo.invoke_raw("{}")
    assert again.cold_start is False and again.node == node
    # Still the one instance, warm again.
    st = echo.get()["status"]
    assert [i["name"] for i in st["instances"]] == [inst["name"]]
    assert int(echo.metrics()["coldStarts"]) == 1


# ---- logs ----


def test_logs_hold_the_handlers_print_output(echo):
    echo.invoke({"print": "hello from the handler"})
    echo.invoke({"eprint": "to stderr"})

    def seen():
        lines = list(echo.logs())
        texts = {(line["stream"], line["text"]) for line in lines}
        if ("stdout", "hello from the handler") in texts and ("stderr", "to stderr") in texts:
            return lines
        return None

    lines = wait_for(seen)
    assert all(line["instance"] for line in lines)
    seqs = [line["sequence"] for line in lines]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # Continuing after the last line gives nothing old.
    assert list(echo.logs(after=seqs[-1])) == []


def test_logs_follow_gets_new_lines_and_ends_when_the_function_is_deleted(echo, cluster):
    echo.invoke({})
    stream = echo.logs(follow=True, timeout=30)
    echo.invoke({"print": "line one"})
    for line in stream:
        if line["text"] == "line one":
            break
    else:
        pytest.fail("followed logs ended before the printed line")
    started = time.monotonic()
    cluster.delete_function("echo")
    for _ in stream:  # drains whatever is left, then ends
        pass
    assert time.monotonic() - started < 10, "a followed stream must end when the function is deleted"


def test_logs_close_ends_iteration(echo):
    stream = echo.logs(follow=True)
    stream.close()
    assert list(stream) == []


def test_logs_of_unknown_function_fail_at_once(cluster):
    with pytest.raises(errors.NotFound):
        cluster.function("nope").logs()


# ---- watch ----


def test_watch_yields_scaled_up_and_placed_after_an_invoke(echo, cluster):
    node = cluster.nodes()[0]["metadata"]["name"]
    with cluster.watch("functions", "echo", timeout=20) as w:
        echo.invoke({})
        reasons = {}
        for e in w:
            assert e["name"] == "echo"
            if e["type"] == "record":
                reasons.setdefault(e["reason"], e)
            if {"ScaledUp", "Placed"} <= reasons.keys():
                break
    assert {"ScaledUp", "Placed"} <= reasons.keys(), reasons
    placed = reasons["Placed"]
    assert placed["node"] == node
    assert node in placed["message"]
    assert placed["time"] and placed["sequence"] > 0


def test_watch_sees_object_changes_and_fn_watch_filters(cluster, echo_config):
    w = cluster.watch(timeout=20)
    cluster.create_function("a", config=echo_config)
    fn = cluster.create_function("b", config=echo_config)
    fw_other = fn.watch(timeout=20)
    cluster.delete_function("a")
    seen = []
    for e in w:
        if e["type"] in ("put", "delete"):
            seen.append((e["type"], e["name"]))
            if e["type"] == "put":
                assert e["object"]["metadata"]["name"] == e["name"]
        if ("delete", "a") in seen:
            break
    assert seen.index(("put", "a")) < seen.index(("put", "b")) < seen.index(("delete", "a"))
    w.close()
    # fn.watch() is only about its function: invoking b shows up, a's deletion does not.
    fn.invoke({})
    for e in fw_other:
        assert e["name"] == "b"
        if e["type"] == "record" and e["reason"] == "ScaledUp":
            break
    else:
        pytest.fail("fn.watch() saw no ScaledUp")


def test_watch_resumes_from_a_position(echo, cluster):
    w = cluster.watch("functions", "echo", timeout=10)
    echo.invoke({})
    first = next(iter(w))
    again = cluster.watch("functions", "echo", after=first["sequence"] - 1, timeout=10)
    assert next(iter(again))["sequence"] == first["sequence"]


def test_instances_are_stored_objects_watched_from_a_store_revision(echo, cluster):
    rev = int(echo.get()["metadata"]["resourceVersion"])
    echo.invoke({})
    with cluster.watch("instances", "echo", from_revision=rev + 1, timeout=10) as w:
        put = next(w)
    assert put["type"] == "put" and put["kind"] == "instances"
    assert put["name"].startswith("echo/local/") and put["storeRevision"] > rev
    assert put["object"]["node"] == "local" and put["object"]["phase"] == "Warm"
    [instance] = echo.status()["instances"]
    assert put["name"] == f"echo/local/{instance['name']}"
    # The function's own put is at its revision: a watch from there starts with it.
    with cluster.watch("functions", from_revision=rev, timeout=10) as w:
        assert next(w)["storeRevision"] == rev


def test_a_store_watch_names_a_bad_revision(cluster):
    with pytest.raises(errors.InvalidSpec) as info:
        cluster.watch(from_revision=0)
    assert info.value.field == "from"
    with pytest.raises(ValueError):
        cluster.watch(after=0, from_revision=1)


def test_watch_on_closed_cluster_is_unavailable(tmp_path):
    import blixard

    c = blixard.Cluster.local(tmp_path / "state")
    w = c.watch(timeout=5)
    c.close()
    with pytest.raises(errors.Unavailable):
        next(w)


# ---- async invoke ----


def test_invoke_async_gathers_five_calls_without_worker_threads(cluster, echo_config):
    fn = cluster.create_function("echo", config=echo_config, concurrent_executions=10)
    threads_before = threading.active_count()
    peak = [threads_before]

    async def main():
        async def sample():
            while True:
                peak[0] = max(peak[0], threading.active_count())
                await asyncio.sleep(0.01)

        sampler = asyncio.ensure_future(sample())
        try:
            started = time.monotonic()
            results = await asyncio.gather(
                *(fn.invoke_async({"i": i, "sleep": 0.5}) for i in range(5))
            )
            return results, time.monotonic() - started
        finally:
            sampler.cancel()

    results, took = asyncio.run(main())
    assert [r["echo"]["i"] for r in results] == list(range(5))
    assert len({r["requestId"] for r in results}) == 5
    # In parallel (5 x 0.5 s one after another would be 2.5 s), and no Python thread per call.
    assert took < 2.3, took
    assert peak[0] == threads_before


def test_invoke_async_errors_and_timeout(echo, cluster):
    async def main():
        with pytest.raises(errors.HandlerFailed, match="boom"):
            await echo.invoke_async({"raise": "x"})
        with pytest.raises(errors.NotFound):
            await cluster.function("nope").invoke_async({})
        raw = await echo.invoke_raw_async('{"x": 1}', timeout=10)
        # A per-call timeout shorter than the function's.
        started = time.monotonic()
        with pytest.raises(errors.Timeout):
            await echo.invoke_async({"sleep": 5}, timeout=0.5)
        assert time.monotonic() - started < 4
        return raw

    raw = asyncio.run(main())
    assert raw.json()["echo"] == {"x": 1} and raw.request_id


def test_invoke_async_cancelled_await_is_harmless(echo):
    async def main():
        task = asyncio.ensure_future(echo.invoke_async({"sleep": 0.5}))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The abandoned call ends server-side; the next one is served.
        return await echo.invoke_async({"after": 1})

    assert asyncio.run(main())["echo"] == {"after": 1}


def test_sync_invoke_with_timeout(echo):
    assert echo.invoke({"ok": 1}, timeout=10)["echo"] == {"ok": 1}
    started = time.monotonic()
    with pytest.raises(errors.Timeout):
        echo.invoke({"sleep": 5}, timeout=0.5)
    assert time.monotonic() - started < 4


# ---- throttling ----


def test_concurrent_calls_past_the_limit_are_throttled(cluster, echo_config):
    fn = cluster.create_function("one", config=echo_config, concurrent_executions=1)
    fn.invoke({})  # warm, so both calls below find the instance ready

    async def main():
        return await asyncio.gather(
            fn.invoke_async({"sleep": 1.0}), fn.invoke_async({"sleep": 1.0}),
            return_exceptions=True,
        )

    started = time.monotonic()
    results = asyncio.run(main())
    throttled = [r for r in results if isinstance(r, errors.Throttled)]
    ok = [r for r in results if isinstance(r, dict)]
    assert len(throttled) == 1 and len(ok) == 1, results
    assert throttled[0].code == "throttled" and "throttled" in str(throttled[0])
    assert time.monotonic() - started < 5
    assert int(fn.metrics()["throttles"]) == 1


def test_sync_invoke_throttled_while_another_call_runs(cluster, echo_config):
    fn = cluster.create_function("one", config=echo_config, concurrent_executions=1)
    fn.invoke({})
    done = threading.Event()
    t = threading.Thread(target=lambda: (fn.invoke({"sleep": 1.5}), done.set()))
    t.start()
    try:
        wait_for(lambda: int(fn.metrics().get("concurrentExecutions", 0)) >= 1)
        started = time.monotonic()
        with pytest.raises(errors.Throttled):
            fn.invoke({})
        assert time.monotonic() - started < 1.0, "a throttled call must fail at once"
    finally:
        t.join(10)
    assert done.is_set()


# ---- Ctrl-C ----


def test_ctrl_c_interrupts_a_waiting_invoke(echo):
    echo.invoke({})
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            echo.invoke({"sleep": 3})
    finally:
        timer.cancel()
    assert time.monotonic() - started < 2.0
    # The interrupted call went on server-side; the function still serves.
    assert echo.invoke({"next": 1})["echo"] == {"next": 1}


def test_ctrl_c_interrupts_a_watch(echo, cluster):
    w = cluster.watch("functions", "echo")
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in w:
                pass
    finally:
        timer.cancel()
    assert time.monotonic() - started < 2.0


# ---- triggers ----


def test_create_http_trigger_convenience(echo, cluster):
    t = cluster.create_trigger("echo-http", function="echo", http=True, path="/api/echo",
                               methods=["post"])
    spec = t.get()["spec"]
    assert spec["type"] == "http" and spec["path"] == "/api/echo"
    assert spec["function"] == "echo" and spec["methods"] == ["POST"]
    assert isinstance(t.url(), str)
    with pytest.raises(errors.InvalidSpec) as e:
        cluster.create_trigger("bad", function="echo", http=True, path="no-slash")
    assert "path" in e.value.field
