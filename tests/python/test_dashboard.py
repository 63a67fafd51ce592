"""`blixard dashboard` and the server's /ui/ page: the URL and its read-only token, the page in
headless Chromium (Debian's `chromium`) showing what `function list` and `vm status` show, and the
same view in the terminal and as JSON."""

from __future__ import annotations

import html.parser
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from conftest import REPO, Cli, HANDLER_PY, write

pytestmark = pytest.mark.cli

STACK = "shop"
MANIFEST = f"""\
apiVersion: blixard.dev/v1
kind: Platform
metadata: {{name: {STACK}}}
spec:
  vms:
    - {{name: web, config: ./web.yaml, replicas: 2}}
  functions:
    - {{name: orders, runtime: python, handler: 'echo:handler', code: ./code, memory: 64M}}
    - {{name: resizer, runtime: python, handler: 'echo:handler', code: ./code, memory: 64M}}
"""


def artifacts_dir() -> Path:
    """Where screenshots go: $BLIXARD_TEST_ARTIFACTS, else test-artifacts/ in the checkout."""
    d = Path(os.environ.get("BLIXARD_TEST_ARTIFACTS") or REPO / "test-artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


def wait_for(what: str, check, timeout: float = 30.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("dash-work")
    write(d / "code" / "echo.py", HANDLER_PY)
    write(d / "echo.yaml", "runtime: python\nhandler: echo:handler\ncode: ./code\n")
    write(d / "web.yaml", 'microvm: {mem: 64, vcpu: 1}\ncommand: ["sleep", "600"]\n')
    write(d / "shop.yaml", MANIFEST)
    return d


@pytest.fixture(scope="module")
def cli(tmp_path_factory, work):
    """`blixard up` on a free port with the stack applied, one function outside it, and a call
    to `orders` (so it has a warm instance and a placement decision)."""
    data_dir = tmp_path_factory.mktemp("dash-data") / "blixard"
    run = Cli(data_dir, work)
    up = run("up", "--listen", "127.0.0.1:0")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        run.ok("apply", "-f", "shop.yaml")
        run.ok("function", "create", "outside", "--config", "echo.yaml")
        run.ok("function", "invoke", "orders", "--data", "{}")

        def web_ready():
            st = run.json("vm", "status", "web")["status"]
            return st.get("readyReplicas") == 2 and all(
                i.get("node") for i in st.get("instances", []))

        wait_for("vm web 2/2 ready", web_ready, timeout=60, every=0.25)
        yield run
    finally:
        down = run("down")
        assert down.returncode == 0, down.stdout + down.stderr


def server(cli: Cli) -> Dict[str, str]:
    return json.loads((cli.data_dir / "server.json").read_text())


def request(url: str, token: str, method: str = "GET", body: Optional[bytes] = None) -> int:
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def dashboard_url(cli: Cli, *args: str) -> str:
    r = cli.ok("dashboard", "--no-browser", *args)
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout  # the URL alone on stdout, for scripts
    return lines[0]


def token_of(url: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(url).fragment)["token"][0]


# ---- the page in headless Chromium --------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "the dashboard's tests need Debian's chromium (scripts/bootstrap installs it)"
    return found


def headless(url: str, *args: str, budget_ms: int = 6000) -> subprocess.CompletedProcess:
    """Runs the page until the virtual time budget is spent (its watch stream stays open)."""
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", "--disable-extensions", "--disable-background-networking",
         f"--virtual-time-budget={budget_ms}", *args, url],
        capture_output=True, text=True, timeout=120)


class Dom(html.parser.HTMLParser):
    """The elements of a dumped DOM that carry data-* attributes, and the text of ids."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: List[Dict[str, str]] = []
        self.texts: Dict[str, str] = {}
        self._open: List[tuple] = []  # (tag, id or None)
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        a["tag"] = tag
        self.elements.append(a)
        if tag not in ("meta", "link", "br", "input", "img", "line", "polyline"):
            self._open.append((tag, a.get("id")))
            if a.get("id"):
                self.texts.setdefault(a["id"], "")

    def handle_endtag(self, tag):
        while self._open:
            t, _ = self._open.pop()
            if t == tag:
                break

    def handle_data(self, data):
        for _, i in self._open:
            if i:
                self.texts[i] += data

    def find(self, tag: str, **attrs: str) -> List[Dict[str, str]]:
        return [e for e in self.elements if e["tag"] == tag
                and all(e.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def test_dashboard_prints_a_url_with_a_read_only_token(cli):
    url = dashboard_url(cli, "--stack", STACK)
    addr = server(cli)["address"]
    parts = urllib.parse.urlsplit(url)
    assert url.startswith(addr + "/ui/")
    assert urllib.parse.parse_qs(parts.query) == {"stack": [STACK]}
    secret = token_of(url)
    assert secret.startswith("blx_") and secret != server(cli)["token"]
    # It reads...
    assert request(addr + "/v1/functions", secret) == 200
    assert request(addr + "/v1/events?after=-1", secret) == 200
    # ...and writes nothing.
    body = json.dumps({"metadata": {"name": "nope"}, "spec": {"runtime": "python"}}).encode()
    assert request(addr + "/v1/functions", secret, "POST", body) == 403
    assert request(addr + "/v1/functions/orders", secret, "DELETE") == 403
    assert request(addr + "/v1/tokens", secret) == 403
    made = [t for t in cli.json("token", "list")["items"]
            if t["metadata"]["name"].startswith("dashboard-")]
    assert made and all(t["spec"]["scopes"] == ["read"] and t["spec"].get("expiresAt")
                        for t in made)
    # The page itself is public: it holds no data.
    with urllib.request.urlopen(addr + "/ui/", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]


def test_the_page_shows_what_function_list_and_vm_status_show(cli):
    url = dashboard_url(cli, "--stack", STACK)
    shot = artifacts_dir() / "dashboard.png"
    if shot.exists():
        shot.unlink()
    r = headless(url, "--dump-dom")
    assert r.returncode == 0, r.stderr[-2000:]
    dom = Dom(r.stdout)
    assert dom.find("span", id="conn")[0]["data-state"] == "live", r.stdout[-3000:]
    assert dom.find("div", id="error")[0].get("hidden") is not None, dom.texts.get("error")

    # Functions: as `function list` counts them, per node too; only the stack's.
    listed = {f["metadata"]["name"]: f for f in cli.json("function", "list")["items"]}
    rows = {e["data-name"]: e for e in dom.find("tr") if "data-running" in e}
    assert set(rows) == {"orders", "resizer"}, rows  # `outside` is not in the stack
    for name, row in rows.items():
        st = listed[name]["status"]
        assert int(row["data-running"]) == st.get("instancesRunning", 0), name
        assert int(row["data-warm"]) == st.get("instancesWarm", 0), name
    warm_nodes = {i["node"] for i in listed["orders"]["status"]["instances"]}
    assert warm_nodes and {e["data-node"] for e in dom.find("div") if "data-warm" in e} == warm_nodes
    summary = dom.texts["summary-functions"]
    node = sorted(warm_nodes)[0]
    assert f"orders (0 running, 1 warm on node {node})" in summary, summary
    assert "resizer (0 running, 0 warm)" in summary and "outside" not in summary, summary

    # VMs: as `vm status` shows them: ready/replicas and each replica's node.
    vm = cli.json("vm", "status", "web")
    row = dom.find("tr", data_name="web")[0]
    assert (int(row["data-ready"]), int(row["data-replicas"])) == (2, 2)
    replicas = {e["data-replica"]: e["data-node"] for e in dom.find("span") if "data-replica" in e}
    assert replicas == {i["name"]: i["node"] for i in vm["status"]["instances"]}
    assert "web (2/2 running)" in dom.texts["summary-vms"], dom.texts["summary-vms"]

    # Nodes: what `node list` shows; placements: the scheduler's decision for orders, with its node.
    nodes = cli.json("node", "list")["items"]
    assert {e["data-name"] for e in dom.find("tr") if e.get("data-name") and "data-ready" not in e
            and "data-running" not in e} >= {n["metadata"]["name"] for n in nodes}
    placed = [e for e in dom.find("li", data_reason="Placed") if e["data-name"] == "orders"]
    assert placed and placed[0]["data-node"] == node, dom.texts.get("placements")
    # Queues: a panel when the server lists them, hidden while it has no such endpoint.
    panel = dom.find("section", id="queues-panel")[0]
    addr = server(cli)["address"]
    if request(addr + "/v1/queues", server(cli)["token"]) == 404:
        assert panel.get("hidden") is not None
    else:
        assert panel.get("hidden") is None

    # The screenshot, kept with the test's artefacts.
    r = headless(url, f"--screenshot={shot}", "--window-size=1400,1000")
    assert r.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, r.stderr[-2000:]


def test_the_page_says_when_its_token_is_refused(cli):
    addr = server(cli)["address"]
    for url, says in ((f"{addr}/ui/#token=blx_0_{'0' * 64}", "refused this page's token"),
                      (f"{addr}/ui/", "needs a token")):
        r = headless(url, "--dump-dom", budget_ms=3000)
        dom = Dom(r.stdout)
        box = dom.find("div", id="error")[0]
        assert box.get("hidden") is None and box["data-kind"] == "auth", r.stdout[-2000:]
        assert says in dom.texts["error"], dom.texts["error"]
        assert dom.find("span", id="conn")[0]["data-state"] == "error"


def test_the_page_renders_data_as_text_never_markup():
    app = (REPO / "ui" / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in app, sink
    page = (REPO / "ui" / "index.html").read_text()
    assert "<script>" not in page and "http://" not in page.replace("http://www.w3.org", "")
    assert "https://" not in page and "https://" not in app


# ---- the terminal and JSON views ----------------------------------------------------------------


def test_json_snapshot_is_the_same_view(cli):
    view = cli.json("dashboard", "--stack", STACK)
    assert view["stack"] == STACK
    listed = {f["metadata"]["name"]: f["status"] for f in cli.json("function", "list")["items"]}
    assert {f["name"] for f in view["functions"]} == {"orders", "resizer"}
    for f in view["functions"]:
        assert (f["running"], f["warm"]) == (listed[f["name"]].get("instancesRunning", 0),
                                             listed[f["name"]].get("instancesWarm", 0))
    orders = next(f for f in view["functions"] if f["name"] == "orders")
    assert sum(orders["invocationsPerSecond"]) >= 1 or orders["nodes"]  # seen in the last minute
    assert [(v["name"], v["ready"], v["replicas"]) for v in view["vms"]] == [("web", 2, 2)]
    assert view["nodes"] and all(n["memoryMib"] > 0 for n in view["nodes"])
    assert any(p["name"] == "orders" and p["reason"] == "Placed" and p["node"]
               for p in view["placements"])
    everything = cli.json("dashboard")
    assert "outside" in {f["name"] for f in everything["functions"]}


def test_terminal_view_runs_until_ctrl_c(cli):
    proc = subprocess.Popen([*cli.cmd, "dashboard", "--terminal", "--stack", STACK],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**cli.env(), "COLUMNS": "200"}, cwd=cli.cwd)
    out: List[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        # Piped, it prints a frame at once and one per change.
        wait_for("a first frame", lambda: any("Last placement" in x or "Nodes" in x for x in out))
        cli.ok("function", "invoke", "resizer", "--data", "{}")
        wait_for("a frame after the call",
                 lambda: any("resizer (0 running, 1 warm" in x for x in out), timeout=30)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(5)
        proc.stdout.close()
        proc.stderr.close()
    text = "".join(out)
    assert "Long-lived VMs: web (2/2 running)" in text, text[-2000:]
    assert "outside" not in text


# ---- a server without tokens ----------------------------------------------------------------------


class _Open(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        body = b'{"version": "x"}'
        self.send_response(200 if self.path == "/v1/info" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_an_open_server_gets_a_url_without_a_token():
    from blixard import dashboard as dash

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Open)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        addr = f"http://127.0.0.1:{httpd.server_address[1]}"
        assert dash.server_is_open(addr)
        assert dash.dashboard_url(addr, "", "a b") == addr + "/ui/?stack=a+b"
        assert dash.dashboard_url(addr, "blx_1", "") == addr + "/ui/#token=blx_1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)
