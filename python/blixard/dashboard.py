"""`blixard dashboard`: the URL of the server's /ui/ page with a read-only token, and the same view
in a terminal (rich, live) or as one JSON snapshot.

The view is a summary of what `vm status`, `function list`, `node list` and the watch stream show:
VM sets with their replicas' nodes and primary, functions with instances running and warm per
node and their invocation and cold-start rates, queues (where the server has them), nodes with
their allocation, and the last placement decisions.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict, deque
from typing import Any, Deque, Dict, Iterable, List, Optional, Tuple

# Record reasons that say where something was placed (functions: Placed with the scheduler's
# reasons; VM sets: a replica started on a node, a primary elected or promoted, a replica failed).
PLACEMENT_REASONS = ("Placed", "ReplicaStarted", "PrimaryElected", "PrimaryPromoted",
                     "ReplicaFailed")
CHART_WINDOW_S = 60
PLACEMENTS_SHOWN = 10
REFRESH_S = 1.0
TOKEN_TTL = "12h"


def _int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


def _name(obj: Dict[str, Any]) -> str:
    return obj.get("metadata", {}).get("name", "")


def _mib(v: Any) -> str:
    n = _int(v)
    if not n:
        return "-"
    if n >= 1024:
        return f"{n / 1024:.1f}".removesuffix(".0") + "G"
    return f"{n}M"


# ---- the URL ------------------------------------------------------------------------------------


def dashboard_url(addr: str, secret: str = "", stack: str = "") -> str:
    """``http://HOST:PORT/ui/`` with the stack filter in the query and the token in the fragment:
    a fragment never reaches a server (no access log, no proxy, no Referer), and the page moves
    it out of the address bar at once."""
    url = addr.rstrip("/") + "/ui/"
    if stack:
        url += "?" + urllib.parse.urlencode({"stack": stack})
    if secret:
        url += "#" + urllib.parse.urlencode({"token": secret})
    return url


def server_is_open(addr: str, timeout: float = 5.0) -> bool:
    """Whether the server answers the API without a token (it was started without one)."""
    try:
        with urllib.request.urlopen(addr.rstrip("/") + "/v1/info", timeout=timeout) as r:
            return 200 <= r.status < 300
    except urllib.error.HTTPError:
        return False  # 401: it needs one
    except (urllib.error.URLError, OSError):
        return False  # unreachable: the caller's own request reports that


def browser_available() -> bool:
    """A graphical session to open a browser in: X11 or Wayland, or a desktop OS."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_browser(url: str) -> bool:
    import webbrowser

    try:
        return bool(webbrowser.open(url, new=2))
    except Exception:  # noqa: BLE001 - a browser that fails to start is not the command's failure
        return False


def new_token_name() -> str:
    return "dashboard-" + secrets.token_hex(4)


# ---- the view -----------------------------------------------------------------------------------


def _get_json(addr: str, path: str, token: str, timeout: float = 10.0) -> Optional[Dict[str, Any]]:
    """GET a JSON answer straight over HTTP (for endpoints the SDK does not know yet); None for a
    404 (the server has no such endpoint)."""
    req = urllib.request.Request(addr.rstrip("/") + path, headers={"Accept": "application/json"})
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        if e.code in (404, 405, 501):
            return None
        raise
    except (urllib.error.URLError, OSError, ValueError):
        return None


def per_node(fn: Dict[str, Any]) -> Dict[str, Dict[str, int]]:
    """Instances running (Busy) and warm per node, as `function list` counts them."""
    out: Dict[str, Dict[str, int]] = {}
    for i in fn.get("status", {}).get("instances", []):
        node = i.get("node")
        if not node or i.get("phase") == "Stopping":
            continue
        n = out.setdefault(node, {"running": 0, "warm": 0, "starting": 0})
        phase = i.get("phase")
        n["running" if phase == "Busy" else "warm" if phase == "Warm" else "starting"] += 1
    return dict(sorted(out.items()))


class Rates:
    """Invocations and cold starts per second of each function over the last minute, counted
    from the watch stream's Invoked and ColdStart records."""

    def __init__(self) -> None:
        self._inv: Dict[str, Dict[int, int]] = defaultdict(dict)
        self._cold: Dict[str, Dict[int, int]] = defaultdict(dict)

    def add(self, e: Dict[str, Any]) -> None:
        if e.get("type") != "record" or e.get("kind") != "functions":
            return
        if e.get("reason") not in ("Invoked", "ColdStart"):
            return
        second = int(min(_event_time(e), time.time()))
        inv = self._inv[e.get("name", "")]
        inv[second] = inv.get(second, 0) + 1
        if e.get("reason") == "ColdStart":
            cold = self._cold[e.get("name", "")]
            cold[second] = cold.get(second, 0) + 1

    def series(self, fn: str, now: Optional[float] = None) -> Tuple[List[int], List[int]]:
        end = int(now if now is not None else time.time())
        seconds = range(end - CHART_WINDOW_S + 1, end + 1)
        inv, cold = self._inv.get(fn, {}), self._cold.get(fn, {})
        for d in (inv, cold):
            for k in [k for k in d if k < seconds.start]:
                del d[k]
        return [inv.get(s, 0) for s in seconds], [cold.get(s, 0) for s in seconds]


def _event_time(e: Dict[str, Any]) -> float:
    import datetime as dt

    ts = e.get("time") or ""
    try:
        return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


class Feed:
    """Placement decisions and rates from the events, seeded from what the server keeps."""

    def __init__(self) -> None:
        self.rates = Rates()
        self.placements: Deque[Dict[str, Any]] = deque(maxlen=100)

    def add(self, e: Dict[str, Any]) -> None:
        self.rates.add(e)
        if e.get("type") == "record" and e.get("reason") in PLACEMENT_REASONS:
            self.placements.append({k: e.get(k, "") for k in
                                    ("time", "kind", "name", "node", "reason", "message")})

    def seed(self, cluster) -> int:
        """Reads the events the server keeps; returns the sequence to follow from."""
        batch = json.loads(cluster._core.events("", "", 0, 0))
        for e in batch.get("events", []):
            self.add(e)
        return _int(batch.get("next"))


def snapshot(cluster, addr: str, token: str, feed: Feed, stack: str = "") -> Dict[str, Any]:
    """The dashboard's view now: plain data the terminal renders and `-o json` prints."""
    def in_stack(o: Dict[str, Any]) -> bool:
        return not stack or o.get("metadata", {}).get("stack") == stack

    vms = [v for v in json.loads(cluster._core.vms()).get("items", []) if in_stack(v)]
    fns = [f for f in json.loads(cluster._core.functions()).get("items", []) if in_stack(f)]
    nodes = json.loads(cluster._core.nodes()).get("items", [])
    raw_queues = _get_json(addr, "/v1/queues", token)
    queues = None if raw_queues is None else [q for q in raw_queues.get("items", [])
                                              if in_stack(q)]
    now = time.time()
    view: Dict[str, Any] = {"stack": stack, "vms": [], "functions": [], "queues": None,
                            "nodes": [], "placements": []}
    for v in vms:
        spec, st = v.get("spec", {}), v.get("status", {})
        view["vms"].append({
            "name": _name(v),
            "phase": st.get("phase", "Pending"),
            "ready": _int(st.get("readyReplicas")),
            "replicas": _int(spec.get("replicas")),
            "primary": st.get("primary", ""),
            "instances": [{"name": i.get("name", ""), "node": i.get("node", ""),
                           "phase": i.get("phase", ""), "role": i.get("role", ""),
                           "primary": bool(i.get("primary")) or i.get("name") == st.get("primary")}
                          for i in st.get("instances", [])],
        })
    for f in fns:
        spec, st = f.get("spec", {}), f.get("status", {})
        inv, cold = feed.rates.series(_name(f), now)
        view["functions"].append({
            "name": _name(f),
            "running": _int(st.get("instancesRunning")),
            "warm": _int(st.get("instancesWarm")),
            "nodes": per_node(f),
            "memory": _mib(spec.get("memory")),
            "timeout": spec.get("timeout", "-"),
            "invocationsPerSecond": inv,
            "coldStartsPerSecond": cold,
        })
    if queues is not None:
        view["queues"] = [{"name": _name(q), "depth": _int(q.get("status", {}).get("depth")),
                           "inFlight": _int(q.get("status", {}).get("inFlight")),
                           "oldestAgeSeconds": q.get("status", {}).get("oldestAgeSeconds", 0)}
                          for q in queues]
    for n in nodes:
        spec, st = n.get("spec", {}), n.get("status", {})
        view["nodes"].append({
            "name": _name(n),
            "state": st.get("phase", "") + (",SchedulingDisabled" if st.get("unschedulable")
                                             else ""),
            "address": spec.get("address", ""),
            "allocatedMemoryMib": _int(st.get("allocatedMemoryMib")),
            "memoryMib": _int(spec.get("memoryMib")),
            "allocatedVcpu": _int(st.get("allocatedVcpu")),
            "vcpu": _int(spec.get("vcpu")),
            "instances": _int(st.get("instances")),
            "labels": dict(sorted(spec.get("labels", {}).items())),
        })
    shown = {("vms", v["name"]) for v in view["vms"]} | {("functions", f["name"])
                                                          for f in view["functions"]}
    view["placements"] = [p for p in feed.placements
                          if not stack or (p["kind"], p["name"]) in shown][-PLACEMENTS_SHOWN:]
    return view


def summary_lines(view: Dict[str, Any]) -> List[str]:
    """Scenario 3's two lines: "Long-lived VMs: postgres (3/3 running), ..." and the functions'."""
    vms = [f"{v['name']} ({v['ready']}/{v['replicas']} running)" for v in view["vms"]]
    fns = []
    for f in view["functions"]:
        s = f"{f['name']} ({f['running']} running, {f['warm']} warm"
        if f["nodes"]:
            s += f" on {'nodes' if len(f['nodes']) > 1 else 'node'} {','.join(f['nodes'])}"
        fns.append(s + ")")
    return [f"Long-lived VMs: {', '.join(vms) or 'none'}",
            f"Serverless functions: {', '.join(fns) or 'none'}"]


# ---- the terminal -----------------------------------------------------------------------------

_BARS = " ▁▂▃▄▅▆▇█"


def sparkline(values: Iterable[int]) -> str:
    values = list(values)
    top = max(values) if values else 0
    if not top:
        return _BARS[0] * len(values)
    return "".join(_BARS[min(8, (v * 8 + top - 1) // top)] for v in values)


def render(view: Dict[str, Any], *, status: str = ""):
    """The view as rich renderables: the summary, then a table per panel."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    def table(title: str, columns: Iterable[str]) -> Table:
        t = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, header_style="bold", expand=False)
        for c in columns:
            t.add_column(c, overflow="fold")
        return t

    parts: List[Any] = []
    head = Text("Blixard dashboard", style="bold")
    head.append(f"  {'stack ' + view['stack'] if view['stack'] else 'all stacks'}", style="dim")
    if status:
        head.append(f"  {status}", style="dim")
    parts.append(head)
    for line in summary_lines(view):
        parts.append(Text(line))

    vms = table("Long-lived VMs", ("NAME", "PHASE", "READY", "PRIMARY", "REPLICAS (NODE)"))
    for v in view["vms"]:
        replicas = ", ".join(f"{i['name']}@{i['node'] or '-'}" + ("*" if i["primary"] else "")
                             for i in v["instances"]) or "-"
        vms.add_row(v["name"], v["phase"], f"{v['ready']}/{v['replicas']}", v["primary"] or "-",
                    replicas)
    parts.append(vms if view["vms"] else Text("Long-lived VMs: none", style="dim"))

    fns = table("Serverless functions",
                ("NAME", "RUNNING", "WARM", "PER NODE", "MEMORY", "TIMEOUT", "INVOCATIONS/S (60 s)",
                 "COLD STARTS"))
    for f in view["functions"]:
        where = "\n".join(f"{n}: {c['running']} running, {c['warm']} warm"
                          for n, c in f["nodes"].items()) or "-"
        inv, cold = f["invocationsPerSecond"], f["coldStartsPerSecond"]
        fns.add_row(f["name"], str(f["running"]), str(f["warm"]), where, f["memory"],
                    str(f["timeout"]), f"{sparkline(inv[-30:])} {sum(inv)}/min",
                    f"{sparkline(cold[-30:])} {sum(cold)}/min")
    parts.append(fns if view["functions"] else Text("Serverless functions: none", style="dim"))

    if view["queues"] is not None:
        qs = table("Queues", ("NAME", "DEPTH", "IN FLIGHT", "OLDEST"))
        for q in view["queues"]:
            qs.add_row(q["name"], str(q["depth"]), str(q["inFlight"]),
                       f"{float(q['oldestAgeSeconds'] or 0):.1f}s")
        parts.append(qs)

    nodes = table("Nodes", ("NAME", "STATE", "ADDRESS", "MEMORY", "VCPU", "INSTANCES", "LABELS"))
    for n in view["nodes"]:
        nodes.add_row(n["name"], n["state"], n["address"] or "-",
                      f"{_mib(n['allocatedMemoryMib'])}/{_mib(n['memoryMib'])}",
                      f"{n['allocatedVcpu']}/{n['vcpu']}", str(n["instances"]),
                      ",".join(f"{k}={v}" for k, v in n["labels"].items()) or "-")
    parts.append(nodes)

    placed = table("Last placement decisions", ("TIME", "WHAT", "NODE", "WHY"))
    for p in reversed(view["placements"]):
        what = f"{p['reason']} {'vm' if p['kind'] == 'vms' else 'function'} {p['name']}"
        placed.add_row(_clock(p["time"]), what, p["node"] or "-", p["message"])
    parts.append(placed if view["placements"] else
                 Text("Last placement decisions: none yet", style="dim"))
    return Group(*parts)


def _clock(ts: str) -> str:
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone().strftime(
            "%H:%M:%S")
    except ValueError:
        return "-"


def run_terminal(cluster, addr: str, token: str, stack: str = "") -> None:
    """The view with rich's Live, read again when the watch stream says something changed (at most
    once a second) and every few seconds anyway (busy and warm are live state, not events), until
    Ctrl-C. Piped, it prints a frame whenever the view changes instead (as `top -b` does)."""
    import contextlib

    from rich.console import Console
    from rich.live import Live

    feed = Feed()
    after = feed.seed(cluster)
    events: "queue.Queue[Dict[str, Any]]" = queue.Queue()
    watch = cluster.watch(after=after)

    def pump() -> None:
        try:
            for e in watch:
                events.put(e)
        except Exception as e:  # noqa: BLE001 - shown on screen, the view keeps its last state
            events.put({"type": "_error", "message": str(e)})

    pumper = threading.Thread(target=pump, name="dashboard-watch", daemon=True)
    pumper.start()
    console = Console(highlight=False)
    status = "live"

    def frame():
        return render(snapshot(cluster, addr, token, feed, stack), status=status)

    try:
        with contextlib.ExitStack() as stack_:
            if console.is_terminal:
                live = stack_.enter_context(Live(frame(), console=console, refresh_per_second=4))
                show = live.update
            else:
                printed = [""]

                def show(renderable) -> None:
                    with console.capture() as cap:
                        console.print(renderable)
                    text = cap.get()
                    if text != printed[0]:
                        printed[0] = text
                        sys.stdout.write(text + "\n")
                        sys.stdout.flush()

                show(frame())
            last = time.monotonic()
            while True:
                changed = False
                deadline = time.monotonic() + REFRESH_S
                while time.monotonic() < deadline:
                    try:
                        e = events.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if e.get("type") == "_error":
                        status = "watch ended: " + e.get("message", "")
                    else:
                        feed.add(e)
                    changed = True
                now = time.monotonic()
                if changed or now - last >= 5 * REFRESH_S:
                    show(frame())
                    last = now
    except KeyboardInterrupt:
        pass  # Ctrl-C ends it: exit 0
    finally:
        # The pump's long poll ends within its slice (a second): let it go before the caller
        # closes the cluster under it.
        watch.close()
        pumper.join(5)
