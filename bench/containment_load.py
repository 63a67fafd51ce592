#!/usr/bin/env python3
"""Containment under load, end to end against `blixard up` on loopback (issue 11's figures):

  burst   200 concurrent calls on a cold function (concurrentExecutions 20, a 5 s handler) while a
          second client times GET /v1/functions: how many calls ran, how many were throttled and
          how fast, and the control plane's p50/p99 meanwhile.
  unauth  200 connections that each send an 8 MB body without a token: the server's peak RSS.

    python3 bench/containment_load.py [--agent PATH] [--only burst|unauth]

`--agent` picks the blixard-agent binary (default: the installed one), so an older build can be
measured in the same run as the new one. Every request goes to 127.0.0.1; each phase is bounded
in count and time and the daemon is stopped at the end.
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SLOW_HANDLER = "import time\n\ndef handler(event, context):\n    time.sleep(5)\n    return {'ok': True}\n"


def blixard():
    exe = Path(sys.executable).parent / "blixard"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "blixard.cli"]


def call(address, method, path, token, body=b"", timeout=60.0):
    host, port = address.rsplit("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = "Bearer " + token
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def rss_mib(pid):
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def burst(info):
    address, token = info["address"], info["token"]
    started = time.perf_counter()
    api_ms, stop = [], threading.Event()

    def poll_api():
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                call(address, "GET", "/v1/functions", token, timeout=30)
                api_ms.append((time.perf_counter() - t0) * 1000)
            except OSError:
                api_ms.append(30_000.0)
            time.sleep(0.01)

    def invoke(_):
        t0 = time.perf_counter()
        try:
            status = call(address, "POST", "/v1/functions/slow/invoke", token, b"{}", timeout=60)
        except (OSError, http.client.HTTPException) as e:
            status = type(e).__name__
        return status, time.perf_counter() - t0

    poller = threading.Thread(target=poll_api)
    poller.start()
    with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(invoke, range(200)))
    stop.set()
    poller.join()
    by_status = {}
    for status, seconds in results:
        by_status.setdefault(status, []).append(seconds)
    print(f"burst: 200 cold calls in {time.perf_counter() - started:.1f} s")
    for status, times in sorted(by_status.items(), key=lambda kv: str(kv[0])):
        print(f"  {status}: {len(times)} calls, p50 {statistics.median(times) * 1000:.0f} ms, "
              f"max {max(times) * 1000:.0f} ms")
    print(f"  GET /v1/functions meanwhile: {len(api_ms)} calls, p50 {percentile(api_ms, 0.5):.1f} ms, "
          f"p99 {percentile(api_ms, 0.99):.1f} ms, max {max(api_ms):.1f} ms")


def unauth(info):
    address = info["address"]
    host, port = address.rsplit("//", 1)[1].split(":")
    pid = int(info["pid"])
    before = rss_mib(pid)[0]
    body = b"[" * (8 << 20)
    head = (f"POST /v1/functions/slow/invoke HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    peak = [before]

    def send(_):
        s = socket.create_connection((host, int(port)), timeout=30)
        try:
            s.sendall(head)
            view = memoryview(body)
            while view:
                sent = s.send(view[: 1 << 20])
                view = view[sent:]
                peak[0] = max(peak[0], rss_mib(pid)[0])
            s.recv(256)
            return "sent"
        except OSError as e:
            return type(e).__name__
        finally:
            s.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
        outcomes = list(pool.map(send, range(200)))
    counts = {o: outcomes.count(o) for o in set(outcomes)}
    rss, hwm = rss_mib(pid)
    print(f"unauth: 200 connections x 8 MB without a token: outcomes {counts}")
    print(f"  server RSS before {before:.0f} MiB, peak seen {peak[0]:.0f} MiB, high-water {hwm:.0f} MiB, "
          f"after {rss:.0f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", help="blixard-agent binary (default: the installed one)")
    parser.add_argument("--only", choices=["burst", "unauth"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="blixard-containment-"))
    env = dict(os.environ, BLIXARD_DATA_DIR=str(work / "data"))
    if args.agent:
        env["BLIXARD_AGENT"] = args.agent
    try:
        (work / "code").mkdir()
        (work / "code" / "slow.py").write_text(SLOW_HANDLER)
        subprocess.run([*blixard(), "up", "--listen", "127.0.0.1:0"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        info = json.loads((work / "data" / "server.json").read_text())
        subprocess.run([*blixard(), "function", "create", "slow", "--runtime", "python",
                        "--handler", "slow:handler", "--code", str(work / "code"),
                        "--timeout", "60s", "--concurrent-executions", "20"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        if args.only in (None, "burst"):
            burst(info)
        if args.only in (None, "unauth"):
            unauth(info)
    finally:
        subprocess.run([*blixard(), "down"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
