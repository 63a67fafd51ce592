"""Durable queues, queue and event triggers, and async invocations through the Python SDK, on an
embedded cluster: send/receive/ack by hand, delivery to a function at least once (a crash on the
first delivery processes the order once), poison messages dead-lettered, events fanned out, and
async invocations retried twice with their outcome kept."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from blixard import errors
from conftest import EXAMPLES, write, wait_for




@pytest.fixture
def orders_fn(cluster, tmp_path):
    """The scenario-3 order processor (examples/platform), from a copy of its code."""
    code = tmp_path / "orders-code"
    shutil.copytree(EXAMPLES / "platform" / "functions" / "order-processor", code)
    config = write(tmp_path / "orders.yaml",
                   "runtime: python\nhandler: orders:handler\ncode: ./orders-code\ntimeout: 10s\n")
    return cluster.create_function("order-processor", config=config)


def processed(fn) -> list:
    """Order ids the handler printed as processed, in order."""
    out = []
    for line in fn.logs():
        try:
            out.append(json.loads(line["text"])["processed"]["orderId"])
        except (ValueError, KeyError, TypeError):
            pass
    return out


def test_send_receive_ack_peek_purge(cluster):
    q = cluster.create_queue("jobs", visibility_timeout="30s")
    ids = q.send_batch([{"n": 1}, {"n": 2}, {"n": 3}])
    assert len(ids) == 3
    st = q.status()
    assert st["depth"] == 3 and st.get("inFlight", 0) == 0
    assert [json.loads(m["body"]) for m in q.peek()] == [{"n": 1}, {"n": 2}, {"n": 3}]
    got = q.receive(2)
    assert [json.loads(m["body"])["n"] for m in got] == [1, 2]
    assert all(m["receives"] == 1 for m in got)
    assert q.status()["inFlight"] == 2
    assert [json.loads(m["body"])["n"] for m in q.peek()] == [3]  # the taken are hidden
    assert q.ack([m["receipt"] for m in got]) == 2
    assert q.ack(got[0]["receipt"]) == 0  # acknowledged already
    assert q.purge() == 1
    assert q.status().get("depth", 0) == 0
    assert q.receive(1, wait=0.2) == []
    assert "jobs" in [i["metadata"]["name"] for i in cluster.queues()]


def test_queue_errors_name_what_is_wrong(cluster):
    with pytest.raises(errors.NotFound) as e:
        cluster.queue("nope").send({"x": 1})
    assert "blixard queue create nope" in str(e.value)
    q = cluster.create_queue("small")
    with pytest.raises(errors.PayloadTooLarge):
        q.send("x" * 300_000)
    with pytest.raises(errors.InvalidSpec) as e:
        q.receive(5000)
    assert e.value.field == "max"
    with pytest.raises(errors.InvalidSpec) as e:
        q.receive(1, wait=30)
    assert e.value.field == "wait"
    with pytest.raises(errors.AlreadyExists):
        cluster.create_queue("small")


def test_a_received_message_comes_back_after_its_visibility_timeout(cluster):
    q = cluster.create_queue("vis")
    q.send("m")
    first = q.receive(1, visibility_timeout=0.2)
    assert len(first) == 1
    again = q.receive(1, wait=10)  # back after the timeout and the first retry's backoff
    assert len(again) == 1 and again[0]["id"] == first[0]["id"] and again[0]["receives"] == 2
    assert q.ack(first[0]["receipt"]) == 0  # that delivery's receipt is stale
    assert q.ack(again[0]["receipt"]) == 1


def test_queue_trigger_processes_each_order_once_though_the_handler_crashes(cluster, orders_fn):
    cluster.create_queue("orders-queue", max_receives=5)
    cluster.create_trigger("orders", function="order-processor", type="queue",
                           source="orders-queue")
    q = cluster.queue("orders-queue")
    q.send({"orderId": "A-1", "items": [{"price": 2.5, "quantity": 2}]})
    q.send({"orderId": "A-2", "crashOnFirstDelivery": True, "items": [{"price": 1}]})
    wait_for(lambda: sorted(processed(orders_fn)) == ["A-1", "A-2"], timeout=30)
    wait_for(lambda: q.status().get("depth", 0) == 0 and q.status().get("inFlight", 0) == 0)
    time.sleep(0.5)  # nothing more arrives late: each order was processed exactly once
    assert sorted(processed(orders_fn)) == ["A-1", "A-2"]


def test_a_poison_message_is_dead_lettered_after_max_receives(cluster, orders_fn):
    cluster.create_queue("orders-dlq")
    q = cluster.create_queue("orders-queue", max_receives=2, dead_letter_queue="orders-dlq")
    cluster.create_trigger("orders", function="order-processor", type="queue",
                           source="orders-queue")
    q.send("not an order")
    q.send({"orderId": "B-1"})
    dead = wait_for(lambda: cluster.queue("orders-dlq").peek(), timeout=30)
    assert [m["body"] for m in dead] == ['"not an order"']
    assert processed(orders_fn) == ["B-1"]
    st = wait_for(lambda: q.status() if q.status().get("deadLettered") else None)
    assert st["deadLettered"] == 1 and st.get("depth", 0) == 0


def test_an_event_reaches_every_trigger_on_its_source(cluster, echo_config):
    cluster.create_function("echo", config=echo_config)
    cluster.create_function("echo2", config=echo_config)
    cluster.create_trigger("e1", function="echo", type="event", source="invoice-created")
    cluster.create_trigger("e2", function="echo2", type="event", source="invoice-created")
    out = cluster.publish("invoice-created", {"invoiceId": "INV-7"})
    assert sorted(out["triggers"]) == ["e1", "e2"]
    assert cluster.publish("nobody-listens", 1).get("triggers", []) == []
    with pytest.raises(errors.InvalidSpec) as e:
        cluster.publish("two words", 1)
    assert e.value.field == "source"
    for name in ("echo", "echo2"):
        # The echo handler returns its event; the event trigger's queue empties once it ran.
        queue = f"event:e{1 if name == 'echo' else 2}"
        wait_for(lambda q=queue: cluster.queue(q).status().get("depth", 0) == 0
                 and cluster.queue(q).status().get("inFlight", 0) == 0)
        wait_for(lambda n=name: int(cluster.function(n).metrics().get("invocations", 0)) >= 1)


def test_async_invocations_succeed_or_fail_after_two_retries(cluster, echo_config):
    fn = cluster.create_function("echo", config=echo_config)
    inv = fn.submit({"hello": 1})
    assert inv["state"] == "queued" and inv["id"]
    done = wait_for(lambda: (lambda i: i if i["state"] == "succeeded" else None)(
        cluster.invocation(inv["id"])))
    assert done["result"]["echo"] == {"hello": 1}
    assert done["attempts"] == 1
    bad = fn.submit({"raise": "always"})
    failed = wait_for(lambda: (lambda i: i if i["state"] == "failed" else None)(
        cluster.invocation(bad["id"])), timeout=60)
    assert failed["attempts"] == 3
    assert failed["error"]["code"] == "handler_failed"
    dead = cluster.queue("async:echo:dead").peek()
    assert [json.loads(m["body"]) for m in dead] == [{"raise": "always"}]
    with pytest.raises(errors.NotFound):
        cluster.invocation("987654321")
    with pytest.raises(errors.InvalidSpec):
        cluster.invocation("not-a-number")
    with pytest.raises(errors.NotFound):
        cluster.function("nope").submit({})


def test_the_clusters_own_records_are_event_sources(cluster, echo_config):
    watcher = cluster.create_function("watcher", config=echo_config)
    cluster.create_trigger("on-failure", function="watcher", type="event",
                           source="blixard.functions.Failed")
    failing = cluster.create_function("failing", config=echo_config)

    def fail_once_and_look():
        # Each crashed instance records Failed; the server follows its stream once the trigger
        # is known, so some crash soon reaches the watcher.
        with pytest.raises(errors.BlixardError):
            failing.invoke({"crash": True})
        return int(watcher.metrics().get("invocations", 0)) >= 1

    wait_for(fail_once_and_look, timeout=30, interval=0.2)
    # The watcher got the record as its event's data.
    assert cluster.queue("event:on-failure").status().get("deadLettered", 0) == 0
