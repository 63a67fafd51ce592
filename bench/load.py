#!/usr/bin/env python3
"""End-to-end load driver for an HTTP trigger: N keep-alive connections POST a JSON body to a URL
for a fixed time, then print calls/s, p50/p99 latency and the status codes seen.

    python3 bench/load.py http://127.0.0.1:7070/api/echo --connections 2 --seconds 5

Python's own client costs tens of microseconds per call, so this measures a deployed server end to
end (CLI `blixard up` + `blixard function trigger`), not the gateway's overhead: for that, use
bench/invoke_bench (a C++ client, with a bare-server baseline in the same run).
"""

import argparse
import collections
import http.client
import json
import statistics
import threading
import time
import urllib.parse


def worker(url, body, deadline, latencies, statuses, lock):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=30)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    headers = {"Content-Type": "application/json"}
    mine, codes = [], collections.Counter()
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            codes[response.status] += 1
        except (OSError, http.client.HTTPException) as e:
            codes[type(e).__name__] += 1
            conn.close()
            conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=30)
            continue
        mine.append(time.perf_counter() - t0)
    conn.close()
    with lock:
        latencies.extend(mine)
        statuses.update(codes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--body", default=json.dumps({"x": 1}))
    args = parser.parse_args()

    latencies, statuses, lock = [], collections.Counter(), threading.Lock()
    start = time.perf_counter()
    deadline = start + args.seconds
    threads = [
        threading.Thread(
            target=worker, args=(args.url, args.body.encode(), deadline, latencies, statuses, lock)
        )
        for _ in range(args.connections)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if not latencies:
        print(f"no successful calls; statuses: {dict(statuses)}")
        return 1
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1e6
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e6
    print(
        f"{len(latencies)} calls in {elapsed:.2f} s over {args.connections} connection(s): "
        f"{len(latencies) / elapsed:.0f}/s, p50 {p50:.0f} us, p99 {p99:.0f} us, "
        f"mean {statistics.mean(latencies) * 1e6:.0f} us; statuses {dict(statuses)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
