"""Scenario 3's queue and event half through the CLI, on a `blixard up` daemon: the manifest
applied verbatim creates orders-queue; an order is processed once though the handler crashes on
its first delivery; a poison message is dead-lettered; an invoice-created event reaches
pdf-generator; an async invocation is retried and reported; and a message sent just before the
server is killed with kill -9 is processed after `blixard up` brings it back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES, Cli, wait_for

pytestmark = pytest.mark.cli




@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """A daemon with the scenario-3 platform applied from a copy of examples/platform."""
    work = tmp_path_factory.mktemp("platform")
    shutil.copytree(EXAMPLES / "platform", work / "platform")
    run = Cli(tmp_path_factory.mktemp("platform-data") / "blixard", work)
    r = run("up", "--listen", "127.0.0.1:0")
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        # The dead-letter queue first, then orders-queue with its redrive: the manifest's trigger
        # names orders-queue, which apply would otherwise create with the defaults.
        run.ok("queue", "create", "orders-dlq")
        run.ok("queue", "create", "orders-queue", "--max-receives", "3",
               "--dead-letter", "orders-dlq", "--visibility-timeout", "2m")
        out = run.ok("apply", "-f", "platform/platform.yaml").stdout
        assert "function/order-processor created" in out, out
        yield run
    finally:
        run("down")


def logged(run: Cli, function: str, key: str) -> list:
    """The `key` field of each JSON line the function printed."""
    out = []
    r = run.ok("function", "logs", function)
    for text in r.stdout.splitlines():
        try:
            value = json.loads(text[text.index("{"):])
        except ValueError:
            continue
        if isinstance(value, dict) and key in value:
            out.append(value[key])
    return out


def orders_processed(run: Cli) -> list:
    return sorted(p["orderId"] for p in logged(run, "order-processor", "processed"))


def depth(run: Cli, queue: str) -> tuple:
    st = run.json("queue", "get", queue).get("status", {})
    return st.get("depth", 0), st.get("inFlight", 0)


def test_an_order_is_processed_once_though_the_handler_crashes_first(platform):
    platform.ok("queue", "send", "orders-queue", "--data",
                '{"orderId": "C-1", "items": [{"price": 3, "quantity": 2}]}')
    platform.ok("queue", "send", "orders-queue", "--data",
                '{"orderId": "C-2", "crashOnFirstDelivery": true}')
    wait_for(lambda: {"C-1", "C-2"} <= set(orders_processed(platform)), timeout=40)
    wait_for(lambda: depth(platform, "orders-queue") == (0, 0), timeout=40)
    assert orders_processed(platform).count("C-1") == 1
    assert orders_processed(platform).count("C-2") == 1


def test_a_poison_message_lands_in_the_dead_letter_queue(platform):
    platform.ok("queue", "send", "orders-queue", "--data", '"not an order"')
    wait_for(lambda: platform.json("queue", "peek", "orders-dlq")["items"], timeout=60)
    assert platform.json("queue", "peek", "orders-dlq")["items"][0]["body"] == '"not an order"'
    table = platform.ok("queue", "list").stdout
    assert "orders-queue" in table and "orders-dlq" in table


def test_an_invoice_event_reaches_pdf_generator(platform):
    out = platform.ok("event", "publish", "invoice-created", "--data",
                      '{"invoiceId": "INV-42", "lines": {"widget": 3}}').stdout
    assert "pdf-generator" in out, out
    wait_for(lambda: "INV-42" in logged(platform, "pdf-generator", "rendered"), timeout=40)


def test_async_invoke_prints_an_id_and_the_invocation_its_outcome(platform):
    inv = platform.ok("function", "invoke", "order-processor", "--async", "--data",
                      '{"orderId": "D-1", "items": [{"price": 4}]}').stdout.strip()
    assert inv.isdigit(), inv
    done = wait_for(lambda: (lambda i: i if i["state"] == "succeeded" else None)(
        platform.json("invocation", "get", inv)), timeout=40)
    assert done["result"]["orderId"] == "D-1"
    assert "succeeded" in platform.ok("invocation", "get", inv).stdout
    r = platform("invocation", "get", "424242424")
    assert r.returncode == 3 and "no invocation" in r.stderr, r.stderr
    r = platform("function", "invoke", "order-processor", "--async", "--data", "{oops")
    assert r.returncode == 4 and "--data" in r.stderr, r.stderr


def test_function_trigger_takes_a_queue_triggers_batch_settings(platform):
    out = platform.json("function", "trigger", "order-processor", "--queue", "orders-queue",
                        "--batch-size", "5", "--batch-window", "1s", "--name", "batched")
    assert out["spec"]["batchSize"] == 5 and out["spec"]["batchWindow"] == "1s", out
    platform.ok("trigger", "delete", "batched")
    r = platform("function", "trigger", "order-processor", "--event", "x", "--batch-size", "5")
    assert r.returncode == 4 and "--batch-size" in r.stderr, r.stderr
    r = platform("function", "trigger", "order-processor", "--queue", "orders-queue",
                 "--batch-window", "10m", "--name", "too-long")
    assert r.returncode == 4 and "--batch-window" in r.stderr, r.stderr


def test_a_message_sent_before_kill_9_is_processed_after_restart(platform):
    info = json.loads((platform.data_dir / "server.json").read_text())
    # Slow enough to be in flight when the server dies: delivered again after the restart.
    platform.ok("queue", "send", "orders-queue", "--data",
                '{"orderId": "K-1", "delaySeconds": 5}')
    wait_for(lambda: depth(platform, "orders-queue")[1] == 1, timeout=40)
    os.kill(int(info["pid"]), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(int(info["pid"]), 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    r = platform("up", "--listen", "127.0.0.1:0")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: "K-1" in orders_processed(platform), timeout=60)
    wait_for(lambda: depth(platform, "orders-queue") == (0, 0), timeout=40)
