"""The `blixard` command line: noun-verb commands over the Python SDK (click + rich).

The CLI talks to a server through ``blixard.connect`` (the C++ HTTP client); ``blixard up`` starts
one as a background daemon (``blixard-agent --server``) for a data directory, whose
``server.json`` tells later commands where it listens and which token to use.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import click

from . import errors
from .errors import BlixardError, InvalidSpec, NotFound, Unavailable

# ---- exit codes -------------------------------------------------------------------------------

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_CODES: Dict[str, int] = {
    "internal": 1,
    "not_found": 3,
    "invalid_spec": 4,
    "already_exists": 5,
    "conflict": 5,
    "unavailable": 6,
    "throttled": 7,
    "timeout": 8,
    "handler_failed": 9,
    "unauthenticated": 10,
    "permission_denied": 10,
    "payload_too_large": 11,
}

EXIT_CODE_HELP = """\b
Exit codes:
   0  ok
   1  internal or other error
   2  usage error (bad command line)
   3  not found
   4  invalid spec (manifest, config, flag value, name, payload)
   5  already exists / conflict
   6  unavailable (no server: run `blixard up`)
   7  throttled
   8  timeout
   9  handler failed
  10  unauthenticated / permission denied
  11  payload too large

\b
Environment: BLIXARD_ADDR, BLIXARD_TOKEN, BLIXARD_DATA_DIR (default ~/.blixard),
BLIXARD_OUTPUT (table|json), BLIXARD_AGENT (path of blixard-agent)."""

DEFAULT_DATA_DIR = "~/.blixard"
UP_DEADLINE_S = 30.0
DOWN_DEADLINE_S = 20.0


def exit_code_for(err: BlixardError) -> int:
    return EXIT_CODES.get(err.code, EXIT_INTERNAL)


# ---- output ----------------------------------------------------------------------------------


def _stdout_console():
    from rich.console import Console

    # Tables are for people; when piped, do not wrap at 80 columns.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False, soft_wrap=False)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str = "") -> None:
    from rich import box
    from rich.table import Table

    rows = list(rows)
    if not rows and empty:
        click.echo(empty)
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    _stdout_console().print(table)


class Ctx:
    """What the global options resolved to, shared by every command."""

    def __init__(self, addr: Optional[str], token: Optional[str], data_dir: str, output: str):
        self.addr = addr
        self.token = token
        self.data_dir = Path(os.path.expanduser(data_dir))
        self.output = output
        self._cluster = None
        self.resolved_addr = addr or ""
        self.resolved_token = token or ""
        # Maps the spec field names used in overrides back to the flags that set them, so an
        # error about "memory" reads "--memory: ...".
        self.flag_for_field: Dict[str, str] = {}

    @property
    def server_file(self) -> Path:
        return self.data_dir / "server.json"

    def cluster(self):
        if self._cluster is None:
            from .cluster import Cluster

            addr, token = self.addr, self.token
            if not addr:
                info = read_server_file(self.data_dir)
                if info is None:
                    raise Unavailable(
                        f"no server running for data dir {self.data_dir}: run `blixard up` "
                        "(or pass --addr / set BLIXARD_ADDR)"
                    )
                addr = info.get("address", "")
                if token is None:
                    token = info.get("token", "")
            elif token is None:
                info = read_server_file(self.data_dir)
                if info and info.get("address") == addr:
                    token = info.get("token", "")
            self.resolved_addr = addr
            self.resolved_token = token or ""
            try:
                self._cluster = Cluster.connect(addr, token or "")
            except Unavailable as e:
                raise Unavailable(
                    f"cannot reach the server at {addr}: {e.message} (run `blixard up`)",
                    field=e.field,
                ) from e
        return self._cluster

    def close(self) -> None:
        if self._cluster is not None:
            try:
                self._cluster.close()
            finally:
                self._cluster = None


def _set_global(name: str):
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is not None:
            obj = ctx.find_object(Ctx)
            if obj is not None:
                setattr(obj, name, Path(os.path.expanduser(value)) if name == "data_dir" else value)

    return callback


def output_option(f: Callable) -> Callable:
    """``-o table|json`` and the connection flags on every command, so they may stand after
    the command as well as before it (``blixard function list -o json --addr URL``)."""
    for name, flag, metavar in (
        ("data_dir", "--data-dir", "DIR"),
        ("token", "--token", "TOKEN"),
        ("addr", "--addr", "URL"),
    ):
        f = click.option(
            flag,
            metavar=metavar,
            default=None,
            expose_value=False,
            is_eager=True,
            callback=_set_global(name),
            help=f"Same as the global {flag}.",
        )(f)
    return click.option(
        "-o",
        "--output",
        "output",
        type=click.Choice(["table", "json"]),
        default=None,
        help="Output format: tables for people, json (proto canonical JSON) for programs.",
    )(f)


def _out(ctx_obj: Ctx, output: Optional[str]) -> str:
    return output or ctx_obj.output


pass_ctx = click.make_pass_decorator(Ctx)


# ---- helpers for object fields -----------------------------------------------------------------


def _mib(v: Any) -> str:
    if v in (None, "", 0, "0"):
        return "-"
    n = int(v)
    if n >= 1024:
        return f"{n / 1024:.1f}".removesuffix(".0") + "G"
    return f"{n}M"


def _int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


def _list_json(raw: str) -> Dict[str, Any]:
    """A list message for -o json, with ``items`` present even when empty."""
    obj = json.loads(raw)
    obj.setdefault("items", [])
    return obj


def _name(obj: Dict[str, Any]) -> str:
    return obj.get("metadata", {}).get("name", "")


# ---- the daemon: server.json, pids -----------------------------------------------------------


def read_server_file(data_dir: Path) -> Optional[Dict[str, Any]]:
    try:
        with open(data_dir / "server.json", encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _is_agent(pid: int) -> bool:
    """Guards against a recycled pid in a stale server.json."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"blixard-agent" in f.read()
    except OSError:
        return True


def running_server(data_dir: Path) -> Optional[Dict[str, Any]]:
    info = read_server_file(data_dir)
    if info is None:
        return None
    pid = _int(info.get("pid"))
    if pid_alive(pid) and _is_agent(pid):
        return info
    return None


def find_agent() -> str:
    env = os.environ.get("BLIXARD_AGENT")
    if env:
        return env
    candidates = [
        Path(sysconfig.get_path("scripts")) / "blixard-agent",
        Path(sys.executable).parent / "blixard-agent",
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("blixard-agent")
    if found:
        return found
    raise BlixardError(
        "blixard-agent not found beside this Python or on PATH (set BLIXARD_AGENT)",
        code="internal",
    )


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ---- the CLI -----------------------------------------------------------------------------------


@click.group(
    epilog=EXIT_CODE_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--addr",
    envvar="BLIXARD_ADDR",
    default=None,
    metavar="URL",
    help="Server URL (e.g. http://127.0.0.1:7070); default: the one `blixard up` started.",
)
@click.option("--token", envvar="BLIXARD_TOKEN", default=None, help="Bearer token.")
@click.option(
    "--data-dir",
    envvar="BLIXARD_DATA_DIR",
    default=DEFAULT_DATA_DIR,
    show_default=True,
    metavar="DIR",
    help="Where `blixard up` keeps the daemon's state, server.json and agent.log.",
)
@click.option(
    "-o",
    "--output",
    envvar="BLIXARD_OUTPUT",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format for every command.",
)
@click.version_option(None, "--version", package_name="blixard", message="blixard %(version)s")
@click.pass_context
def cli(ctx: click.Context, addr, token, data_dir, output) -> None:
    """Blixard: microVMs and serverless functions on one cluster."""
    ctx.obj = Ctx(addr, token, data_dir, output)
    ctx.call_on_close(ctx.obj.close)


# ---- up / down / status / version ----


@cli.command()
@click.option(
    "--listen",
    default="127.0.0.1:7070",
    show_default=True,
    metavar="HOST:PORT",
    help="Address to listen on (port 0 picks a free one).",
)
@click.option("--log-level", default=None, help="Agent log level (debug, info, warn, error).")
@click.option(
    "--vm-driver",
    type=click.Choice(["sandbox", "libvirt"]),
    default="sandbox",
    show_default=True,
    help="What runs VM replicas: a confined process, or a real guest through libvirtd "
    "(KVM where the CPU has it, TCG otherwise).",
)
@click.option("--libvirt-uri", default=None, help="libvirt to use (default qemu:///system).")
@click.option(
    "--vm-snapshots",
    type=click.IntRange(0, 999),
    default=None,
    help="With --vm-driver libvirt: save images kept per guest shape to restore replicas from "
    "instead of booting them (default 2; 0: every guest boots).",
)
@click.option(
    "--timeout",
    "deadline",
    type=float,
    default=UP_DEADLINE_S,
    show_default=True,
    help="Seconds to wait for the server to listen.",
)
@output_option
@pass_ctx
def up(c: Ctx, listen: str, log_level: Optional[str], vm_driver: str,
       libvirt_uri: Optional[str], vm_snapshots: Optional[int], deadline: float,
       output) -> None:
    """Start a server + local agent as a background daemon for --data-dir."""
    out = _out(c, output)
    running = running_server(c.data_dir)
    if running:
        if out == "json":
            print_json(dict(running, dataDir=str(c.data_dir), alreadyRunning=True))
        else:
            click.echo(
                f"blixard is already running for {c.data_dir} at {running.get('address')} "
                f"(pid {running.get('pid')})"
            )
        return
    try:
        # Only its owner may look inside: it holds the admin token and the store.
        c.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_path = c.data_dir / "agent.log"
        log = open(log_path, "ab")
    except OSError as e:
        raise InvalidSpec(
            f"cannot use {c.data_dir} as data dir: {e.strerror or e}", field="--data-dir"
        ) from e
    # A stale server.json (the daemon was killed) would be mistaken for the new one's.
    try:
        c.server_file.unlink()
    except FileNotFoundError:
        pass

    argv = [find_agent(), "--server", "--data-dir", str(c.data_dir), "--listen", listen]
    argv += ["--python", sys.executable, "--vm-driver", vm_driver]
    if libvirt_uri:
        argv += ["--libvirt-uri", libvirt_uri]
    if vm_snapshots is not None:
        argv += ["--vm-snapshots", str(vm_snapshots)]
    if log_level:
        argv += ["--log-level", log_level]
    with log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    end = time.monotonic() + deadline
    info = None
    while time.monotonic() < end:
        info = read_server_file(c.data_dir)
        if info is not None and _int(info.get("pid")) == proc.pid:
            break
        info = None
        if proc.poll() is not None:
            tail = _log_tail(log_path)
            raise BlixardError(
                f"blixard-agent exited with status {proc.returncode} before listening"
                + (f"; {log_path}:\n{tail}" if tail else ""),
                code="unavailable",
            )
        time.sleep(0.05)
    if info is None:
        proc.kill()
        proc.wait()
        raise errors.Timeout(
            f"blixard-agent did not listen within {deadline:g}s; see {log_path}",
        )
    # The daemon outlives us on purpose: do not let Popen's finalizer warn about it.
    proc.returncode = 0
    if out == "json":
        print_json(dict(info, dataDir=str(c.data_dir), log=str(log_path)))
    else:
        click.echo(f"blixard is up at {info.get('address')} (pid {info.get('pid')})")
        click.echo(f"  data dir:    {c.data_dir}")
        click.echo(f"  log:         {log_path}")
        click.echo(f"  admin token: {info.get('token', '')}")


@cli.command()
@click.option(
    "--timeout",
    "deadline",
    type=float,
    default=DOWN_DEADLINE_S,
    show_default=True,
    help="Seconds to wait after SIGTERM before SIGKILL.",
)
@output_option
@pass_ctx
def down(c: Ctx, deadline: float, output) -> None:
    """Stop the daemon `blixard up` started for --data-dir."""
    info = read_server_file(c.data_dir)
    pid = _int(info.get("pid")) if info else 0
    if not info or not pid_alive(pid) or not _is_agent(pid):
        if info:
            c.server_file.unlink(missing_ok=True)
        click.echo(f"blixard is not running for {c.data_dir}")
        return
    os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, deadline):
        click.echo(f"pid {pid} did not stop within {deadline:g}s; killing it", err=True)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_gone(pid, 5.0)
    c.server_file.unlink(missing_ok=True)
    click.echo(f"blixard stopped (pid {pid})")


def _wait_gone(pid: int, deadline: float) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


@cli.command()
@output_option
@pass_ctx
def status(c: Ctx, output) -> None:
    """Show the server, its nodes and how many objects it holds."""
    cl = c.cluster()
    info = cl.info()
    nodes = cl.nodes()
    fns = cl.functions()
    vms = cl.vms()
    if _out(c, output) == "json":
        print_json(
            {
                "server": dict(info, address=info.get("address") or c.resolved_addr),
                "nodes": len(nodes),
                "nodesReady": sum(1 for n in nodes if n.get("status", {}).get("phase") == "Ready"),
                "functions": len(fns),
                "vms": len(vms),
                "triggers": len(cl.triggers()),
            }
        )
        return
    ready = sum(1 for n in nodes if n.get("status", {}).get("phase") == "Ready")
    click.echo(f"server:    {info.get('address') or c.resolved_addr} (version {info.get('version')})")
    click.echo(f"revision:  {info.get('revision', 0)}")
    click.echo(f"nodes:     {len(nodes)} ({ready} ready)")
    click.echo(f"functions: {len(fns)}")
    click.echo(f"vms:       {len(vms)}")


@cli.command()
@output_option
@pass_ctx
def version(c: Ctx, output) -> None:
    """Print the client's version and, when one is reachable, the server's."""
    from . import __version__

    server = None
    try:
        server = c.cluster().info().get("version")
    except BlixardError:
        pass
    if _out(c, output) == "json":
        print_json({"client": __version__, "server": server})
    else:
        click.echo(f"client: {__version__}")
        click.echo(f"server: {server or '(not reachable)'}")


# ---- function ----


@cli.group()
def function() -> None:
    """Serverless functions: create, list, get, invoke, trigger, logs, metrics, watch, delete."""


def _where(status: Dict[str, Any]) -> str:
    """The nodes a function's instances run on: ``node1`` or ``node1 (2), node3``."""
    counts: Dict[str, int] = {}
    for i in status.get("instances", []):
        node = i.get("node")
        if node and i.get("phase") != "Stopping":
            counts[node] = counts.get(node, 0) + 1
    if not counts:
        return "-"
    return ", ".join(n if k == 1 else f"{n} ({k})" for n, k in sorted(counts.items()))


def _function_rows(items: List[Dict[str, Any]]):
    for f in items:
        spec = f.get("spec", {})
        st = f.get("status", {})
        yield (
            _name(f),
            _int(st.get("instancesRunning")),
            _int(st.get("instancesWarm")),
            _where(st),
            _mib(spec.get("memory")),
            spec.get("timeout", "-"),
        )


# Scenario 0's shape: how many instances run and are warm, and where.
FUNCTION_COLUMNS = ("NAME", "RUNNING", "WARM", "WHERE", "MEMORY", "TIMEOUT")

# CLI flag -> (python keyword, spec field path used in errors)
FUNCTION_FLAGS = {
    "handler": "--handler",
    "runtime": "--runtime",
    "code": "--code",
    "memory": "--memory",
    "timeout": "--timeout",
    "concurrentExecutions": "--concurrent-executions",
    "scaling.minInstances": "--min-instances",
    "scaling.maxInstances": "--max-instances",
    "minInstances": "--min-instances",
    "maxInstances": "--max-instances",
    "network": "--network",
    "ephemeralStorage": "--ephemeral-storage",
}
VM_FLAGS = {
    "replicas": "--replicas",
    "memory": "--memory",
    "vcpu": "--vcpu",
    "storage.pool": "--storage-pool",
    "storage.class": "--storage-class",
    "storage.size": "--storage-size",
    "pool": "--storage-pool",
    "class": "--storage-class",
    "size": "--storage-size",
    "network": "--network",
    "primaryElectionPolicy": "--primary-election-policy",
}


def _config_path(config: Optional[str]) -> Optional[str]:
    if config is None:
        return None
    if not os.path.exists(config):
        raise InvalidSpec(f"no such file: {config}", field="--config")
    return config


@function.command("create")
@click.argument("name")
@click.option("--config", metavar="FILE", help="Config file: YAML, JSON or Nix.")
@click.option("--handler", help="module:function (python) — overrides the config.")
@click.option("--runtime", help="python or exec.")
@click.option("--code", metavar="DIR", help="Directory holding the handler's code.")
@click.option("--memory", metavar="SIZE", help="Memory limit, e.g. 128M, 1G (bare number: MiB).")
@click.option("--timeout", metavar="DURATION", help="Per-invocation timeout, e.g. 30s, 2m.")
@click.option("--concurrent-executions", type=int, metavar="N", help="Cap on calls in flight.")
@click.option("--min-instances", type=int, metavar="N", help="Instances kept warm.")
@click.option("--max-instances", type=int, metavar="N", help="Cap on instances.")
@click.option("--network", metavar="none|host",
              help="none (default): a loopback of the instance's own; host: the host's network.")
@click.option("--ephemeral-storage", metavar="SIZE",
              help="Size of the instance's /tmp (in its memory), e.g. 64M; at most --memory.")
@output_option
@pass_ctx
def function_create(c: Ctx, name, config, output, **flags) -> None:
    """Create function NAME from --config and/or flags (flags win over the file)."""
    c.flag_for_field = FUNCTION_FLAGS
    cl = c.cluster()
    fn = cl.create_function(name, _config_path(config), **flags)
    obj = fn.get()
    if _out(c, output) == "json":
        print_json(obj)
    else:
        click.echo(f"function {name} created")


@function.command("list")
@output_option
@pass_ctx
def function_list(c: Ctx, output) -> None:
    """List functions with their instances running and warm."""
    raw = c.cluster()._core.functions()
    if _out(c, output) == "json":
        print_json(_list_json(raw))
        return
    items = json.loads(raw).get("items", [])
    print_table(FUNCTION_COLUMNS, _function_rows(items), empty="No functions.")


@function.command("get")
@click.argument("name")
@output_option
@pass_ctx
def function_get(c: Ctx, name, output) -> None:
    """Show one function's spec and status."""
    obj = c.cluster().function(name).get()
    if _out(c, output) == "json":
        print_json(obj)
        return
    spec, st = obj.get("spec", {}), obj.get("status", {})
    print_table(FUNCTION_COLUMNS, _function_rows([obj]))
    details = [
        ("handler", spec.get("handler") or " ".join(spec.get("command", [])) or "-"),
        ("code", spec.get("codeDigest") or "-"),
        ("config", spec.get("config") or "-"),
        ("concurrent executions", spec.get("concurrentExecutions") or "-"),
        ("min/max instances", "{}/{}".format(
            _int(spec.get("scaling", {}).get("minInstances")),
            spec.get("scaling", {}).get("maxInstances") or "-")),
    ]
    for k, v in details:
        click.echo(f"{k + ':':24}{v}")
    instances = st.get("instances", [])
    if instances:
        click.echo("")
        print_table(
            ("INSTANCE", "NODE", "PHASE", "IN FLIGHT"),
            ((i.get("name"), i.get("node"), i.get("phase"), _int(i.get("inFlight")))
             for i in instances),
        )


def _read_data(data: str) -> str:
    if data == "-":
        return sys.stdin.read()
    if data.startswith("@"):
        path = data[1:]
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except OSError as e:
            raise InvalidSpec(f"cannot read {path}: {e.strerror or e}", field="--data") from e
    return data


@function.command("invoke")
@click.argument("name")
@click.option(
    "--data",
    "-d",
    default="null",
    show_default=True,
    metavar="JSON|@FILE|-",
    help="The event: JSON text, @file to read it from a file, - for stdin.",
)
@click.option("--timeout", type=float, default=None, metavar="SECONDS", help="Client-side deadline.")
@click.option("--async", "is_async", is_flag=True,
              help="Queue the call durably and print its invocation id at once; the server runs "
                   "it and retries a failure twice (see `blixard invocation get ID`).")
@output_option
@pass_ctx
def function_invoke(c: Ctx, name, data, timeout, is_async, output) -> None:
    """Invoke function NAME and print its result (JSON)."""
    payload = _read_data(data)
    try:
        json.loads(payload)
    except ValueError as e:
        raise InvalidSpec(f"payload is not JSON: {e}", field="--data") from e
    if is_async:
        if timeout is not None:
            raise InvalidSpec("--timeout waits for a result; --async does not wait",
                              field="--timeout")
        inv = json.loads(c.cluster()._core.submit_invocation(name, payload))
        if _out(c, output) == "json":
            print_json(inv)
        else:
            click.echo(inv.get("id", ""))
        return
    # 0, negative and nan are not deadlines (0 would silently mean "the function's own").
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise InvalidSpec(f"timeout must be a positive number of seconds, not {timeout}",
                          field="--timeout")
    r = c.cluster().function(name).invoke_raw(payload, timeout=timeout)
    if _out(c, output) == "json":
        try:
            result = json.loads(r.result) if r.result.strip() else None
        except ValueError:
            result = r.result
        print_json(result)
    else:
        click.echo(r.result)
    if sys.stderr.isatty():
        how = "cold start" if r.cold_start else "warm"
        _stderr_console().print(
            f"[dim]{how}, {r.duration_ms:.1f} ms on {r.node or '?'} ({r.request_id})[/dim]"
        )


def _count(n: Any) -> str:
    """1234 -> 1.2k, as in scenario 0's "Invocations: 1.2k/hour"."""
    v = _int(n)
    for div, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if v >= div:
            return f"{v / div:.1f}".removesuffix(".0") + suffix
    return str(v)


def _ms(v: Any) -> str:
    x = float(v or 0)
    if x == 0:
        return "-"
    if x < 10:
        return f"{x:.1f}ms"
    if x >= 10_000:
        return f"{x / 1000:.1f}s"
    return f"{x:.0f}ms"


@function.command("metrics")
@click.argument("name")
@output_option
@pass_ctx
def function_metrics(c: Ctx, name, output) -> None:
    """Invocations, errors, throttles, abandoned calls, cold starts and latencies of function NAME.

    A call is abandoned when its client hung up while it waited for an instance: it was not run."""
    m = c.cluster().function(name).metrics()
    if _out(c, output) == "json":
        print_json(m)
        return
    cold, dur = m.get("coldStart", {}), m.get("duration", {})
    click.echo(
        f"Invocations: {_count(m.get('invocationsLastHour'))}/hour "
        f"({_count(m.get('invocations'))} total), "
        f"Avg cold start: {_ms(cold.get('avgMs'))}, Avg duration: {_ms(dur.get('avgMs'))}"
    )
    click.echo("")
    by_node = m.get("instancesByNode", {})
    print_table(
        ("INVOCATIONS", "LAST HOUR", "ERRORS", "THROTTLES", "TIMEOUTS", "ABANDONED", "COLD STARTS",
         "IN FLIGHT", "BUSY", "WARM"),
        [(
            _int(m.get("invocations")),
            _int(m.get("invocationsLastHour")),
            _int(m.get("errors")),
            _int(m.get("throttles")),
            _int(m.get("timeouts")),
            _int(m.get("abandoned")),
            _int(m.get("coldStarts")),
            _int(m.get("concurrentExecutions")),
            _int(m.get("instancesBusy")),
            _int(m.get("instancesWarm")),
        )],
    )
    click.echo("")
    print_table(
        ("LATENCY", "COUNT", "AVG", "P50", "P99"),
        [
            (label, _int(s.get("count")), _ms(s.get("avgMs")), _ms(s.get("p50Ms")),
             _ms(s.get("p99Ms")))
            for label, s in (("cold start", cold), ("duration", dur))
        ],
    )
    if by_node:
        click.echo("")
        click.echo("Instances by node: " + ", ".join(
            f"{n}={_int(k)}" for n, k in sorted(by_node.items())))


@function.command("trigger")
@click.argument("name")
@click.option("--http", "http", is_flag=True, help="Serve --path on the server's HTTP gateway.")
@click.option("--path", metavar="PATH", help="URL path of an --http trigger, e.g. /api/x.")
@click.option(
    "--method",
    "methods",
    multiple=True,
    metavar="METHOD",
    help="Allowed HTTP method (repeatable); default: any.",
)
@click.option("--queue", metavar="SOURCE", help="Run on messages of queue SOURCE instead.")
@click.option("--event", metavar="SOURCE", help="Run on events of SOURCE instead.")
@click.option("--batch-size", type=int, metavar="N",
              help="--queue: messages per call (default 10).")
@click.option("--batch-window", metavar="DURATION",
              help="--queue: wait this long for a batch to fill (default 0s).")
@click.option("--name", "trigger_name", metavar="TRIGGER", help="Trigger name [NAME-http].")
@output_option
@pass_ctx
def function_trigger(c: Ctx, name, http, path, methods, queue, event, batch_size, batch_window,
                     trigger_name, output) -> None:
    """Make function NAME reachable: `--http --path /api/x` routes that URL path to it."""
    kinds = [k for k, on in (("http", http), ("queue", queue), ("event", event)) if on]
    if len(kinds) != 1:
        raise InvalidSpec("give exactly one of --http, --queue SOURCE, --event SOURCE",
                          field="--http")
    kind = kinds[0]
    if kind == "http":
        if not path:
            raise InvalidSpec("an --http trigger needs --path (e.g. /api/process-image)",
                              field="--path")
        if not path.startswith("/"):
            path = "/" + path
    elif path or methods:
        raise InvalidSpec("--path and --method are for --http triggers", field="--path")
    if kind != "queue" and (batch_size is not None or batch_window is not None):
        raise InvalidSpec("--batch-size and --batch-window are for --queue triggers",
                          field="--batch-size" if batch_size is not None else "--batch-window")
    c.flag_for_field = {"path": "--path", "methods": "--method", "source": f"--{kind}",
                        "metadata.name": "--name", "name": "--name",
                        "batchSize": "--batch-size", "batchWindow": "--batch-window",
                        "batch_window": "--batch-window"}
    cl = c.cluster()
    cl.function(name).get()  # not_found before creating anything
    tname = trigger_name or f"{name}-{kind}"
    t = cl.create_trigger(
        tname,
        function=name,
        type=kind,
        path=path if kind == "http" else None,
        source=queue or event,
        methods=[m.upper() for m in methods] if methods else None,
        batch_size=batch_size,
        batch_window=batch_window,
    )
    obj = t.get()
    url = ""
    if kind == "http":
        url = obj.get("status", {}).get("url") or (c.resolved_addr.rstrip("/") + path)
    if _out(c, output) == "json":
        print_json(dict(obj, url=url) if url else obj)
        return
    click.echo(f"trigger {tname} created for function {name}")
    if url:
        click.echo(f"Now accessible at: {url}")


def _clock(ts: str) -> str:
    """An RFC 3339 timestamp as local HH:MM:SS.mmm (now when there is none)."""
    import datetime as dt

    when = None
    if ts:
        try:
            when = dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone()
        except ValueError:
            when = None
    when = when or dt.datetime.now().astimezone()
    return when.strftime("%H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def _event_line(e: Dict[str, Any]) -> str:
    """One watch event as ``time  reason  node  message``."""
    if e.get("type") == "record":
        reason, message = e.get("reason") or "Record", e.get("message", "")
    elif e.get("type") == "delete":
        reason, message = "Deleted", f"{e.get('kind', '').rstrip('s')} {e.get('name')} deleted"
    else:
        obj = e.get("object") or {}
        version = obj.get("metadata", {}).get("resourceVersion", "")
        reason = "Changed"
        message = f"{e.get('kind', '').rstrip('s')} {e.get('name')} stored"
        if version:
            message += f" (version {version})"
    return f"{_clock(e.get('time', ''))}  {reason:<11} {e.get('node') or '-':<12} {message}"


def _print_json_line(obj: Any) -> None:
    click.echo(json.dumps(obj, separators=(",", ":")))


@function.command("logs")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("--prefix", is_flag=True, help="Start each line with its instance and stream.")
@output_option
@pass_ctx
def function_logs(c: Ctx, name, follow, prefix, output) -> None:
    """Print what function NAME's instances wrote to stdout and stderr."""
    _print_logs(c.cluster().function(name).logs(follow=follow), _out(c, output) == "json",
                prefix)


def _print_logs(stream, as_json: bool, prefix: bool) -> None:
    """Lines of a LogStream: JSON lines, "[node/instance stream] text" or the text alone; Ctrl-C
    ends a --follow without an error."""
    try:
        for line in stream:
            if as_json:
                _print_json_line(line)
            elif prefix:
                where = f"{line['node']}/" if line.get("node") else ""
                click.echo(f"[{where}{line.get('instance')} {line.get('stream')}] "
                           f"{line.get('text')}")
            else:
                click.echo(line.get("text", ""))
    except KeyboardInterrupt:
        pass  # the way to stop --follow: not an error
    finally:
        stream.close()


@function.command("watch")
@click.argument("name")
@click.option("--all", "from_start", is_flag=True, help="Start with the events the server keeps.")
@output_option
@pass_ctx
def function_watch(c: Ctx, name, from_start, output) -> None:
    """Stream function NAME's events live until Ctrl-C: scale-up/down, placement, throttles,
    failures and changes, one line each (time, reason, node, message)."""
    cl = c.cluster()
    cl.function(name).get()  # not_found for an unknown function
    _print_watch(cl.function(name).watch(after=0 if from_start else None),
                 _out(c, output) == "json")


def _print_watch(watch, as_json: bool) -> None:
    """A watch's events as JSON lines or one line each, until Ctrl-C (exit 0) or its end."""
    try:
        for e in watch:
            if as_json:
                _print_json_line(e)
            else:
                click.echo(_event_line(e))
    except KeyboardInterrupt:
        pass  # Ctrl-C ends a watch: exit 0
    finally:
        watch.close()


@function.command("delete")
@click.argument("name")
@output_option
@pass_ctx
def function_delete(c: Ctx, name, output) -> None:
    """Delete function NAME (its instances stop)."""
    c.cluster().delete_function(name)
    click.echo(f"function {name} deleted")


# ---- vm ----


@cli.group()
def vm() -> None:
    """Long-lived replicated microVMs: create, start, stop, scale, list, status, delete."""


VM_COLUMNS = ("NAME", "PHASE", "READY", "MEMORY", "VCPU", "PRIMARY")


wait_option = click.option(
    "--wait", is_flag=True,
    help="Return once every replica is ready (exit 8 after 2 minutes, with why not).")


def _stored_version(vm) -> int:
    """The resource version of the set's spec as stored now."""
    return _int(vm.get().get("metadata", {}).get("resourceVersion"))


def _observed(status: Dict[str, Any], stored: int) -> bool:
    """Whether the controller has acted on the spec stored at version `stored` (before, the
    status is the previous spec's)."""
    return _int(status.get("observedVersion")) >= stored


def _wait_ready(c: Ctx, name: str, timeout: float = 120.0) -> Dict[str, Any]:
    """Polls VM set NAME until its ready replicas reach its wanted count (or it is stopped)."""
    vm = c.cluster().vm(name)
    stored = _stored_version(vm)
    deadline = time.monotonic() + timeout
    while True:
        obj = vm.get()
        st, spec = obj.get("status", {}), obj.get("spec", {})
        seen = _observed(st, stored)
        wanted = 0 if spec.get("stopped") else _int(spec.get("replicas"))
        if seen and st.get("phase") in ("Running", "Stopped") and not st.get("rollout") and (
                len(st.get("instances", [])) == wanted):
            return obj
        if time.monotonic() >= deadline:
            why = st.get("rollout") or st.get("message") or st.get("phase", "Pending")
            raise errors.Timeout(f"vm {name}: {_int(st.get('readyReplicas'))}/{wanted} ready "
                                 f"after {timeout:.0f}s: {why}")
        time.sleep(0.1)


def _vm_rows(items: List[Dict[str, Any]]):
    for v in items:
        spec, st = v.get("spec", {}), v.get("status", {})
        replicas = _int(spec.get("replicas"))
        yield (
            _name(v),
            st.get("phase", "Pending"),
            f"{_int(st.get('readyReplicas'))}/{replicas}",
            _mib(spec.get("memory") or spec.get("microvm", {}).get("mem")),
            spec.get("vcpu") or spec.get("microvm", {}).get("vcpu") or "-",
            st.get("primary") or "-",
        )


@vm.command("create")
@click.argument("name")
@click.option("--config", metavar="FILE", help="Config: Nix module, YAML or JSON.")
@click.option("--replicas", type=int, metavar="N", help="Number of replicas.")
@click.option("--memory", metavar="SIZE", help="Memory per replica, e.g. 512M, 2G.")
@click.option("--vcpu", type=int, metavar="N", help="vCPUs per replica.")
@click.option("--storage-pool", metavar="POOL",
              help="Storage pool of the replicas' volumes (`blixard storage pool create`).")
@click.option("--storage-class", metavar="CLASS",
              help="Storage class of the volumes: a pool serving it is used.")
@click.option("--storage-size", metavar="SIZE", help="Volume size, e.g. 100G (default 1G).")
@click.option("--network", metavar="NET",
              help="Network its replicas join (`blixard network create`).")
@click.option(
    "--primary-election-policy",
    metavar="POLICY",
    help="Give the set one primary, elected oldest-first, newest-first or lowest-ordinal: the "
    "only replica with the volume and the load balancer's connections (default: none).",
)
@wait_option
@output_option
@pass_ctx
def vm_create(c: Ctx, name, config, replicas, wait, output, **flags) -> None:
    """Create VM set NAME from --config and/or flags (flags win over the file); its replicas
    start at once (placed by the scheduler)."""
    c.flag_for_field = VM_FLAGS
    v = c.cluster().create_vm(name, _config_path(config), replicas=replicas, **flags)
    obj = _wait_ready(c, name) if wait else v.get()
    if _out(c, output) == "json":
        print_json(obj)
    elif wait:
        click.echo(f"vm {name} created: {_int(obj['status'].get('readyReplicas'))} replicas ready")
    else:
        click.echo(f"vm {name} created")


@vm.command("list")
@output_option
@pass_ctx
def vm_list(c: Ctx, output) -> None:
    """List VM sets."""
    raw = c.cluster()._core.vms()
    if _out(c, output) == "json":
        print_json(_list_json(raw))
        return
    print_table(VM_COLUMNS, _vm_rows(json.loads(raw).get("items", [])), empty="No VMs.")


@vm.command("status")
@click.argument("name")
@output_option
@pass_ctx
def vm_status(c: Ctx, name, output) -> None:
    """Show a VM set's replicas, where they run and which is primary."""
    obj = c.cluster().vm(name).get()
    if _out(c, output) == "json":
        print_json(obj)
        return
    st = obj.get("status", {})
    instances = st.get("instances", [])
    nodes = sorted({i.get("node") for i in instances if i.get("node")})
    line = f"{name}: {st.get('phase', 'Pending')}"
    line += f", {_int(st.get('readyReplicas'))}/{_int(obj.get('spec', {}).get('replicas'))} ready"
    if st.get("primary"):
        line += f", primary={st['primary']}"
    if nodes:
        line += f", running on [{', '.join(nodes)}]"
    click.echo(line)
    roles = any(i.get("role") for i in instances)
    if obj.get("spec", {}).get("primaryElectionPolicy"):
        # The seed's shape: "postgres primary=postgres-2, replicas=[postgres-2, postgres-3]".
        running = sorted({i.get("name") for i in instances if i.get("phase") == "Running"},
                         key=_ordinal)
        click.echo(f"{name} primary={st.get('primary') or '(none)'}, "
                   f"replicas=[{', '.join(running)}], epoch {_int(st.get('primaryEpoch'))}")
        _print_failover(st.get("failover", []))
    if st.get("message"):
        click.echo(f"  {st['message']}")
    for e in st.get("endpoints", []):
        click.echo(f"  port {e.get('port')}: {e.get('address')}")
    if instances:
        click.echo("")
        # ADDRESS: each replica's on the set's network, when it has one.
        networked = any(i.get("networkAddress") for i in instances)
        print_table(
            ("INSTANCE", "NODE", "PHASE")
            + (("ROLE",) if roles else ())
            + ("DRIVER",)
            + (("ADDRESS",) if networked else ())
            + ("PORTS", "RESTARTS", "MESSAGE"),
            (
                (i.get("name"), i.get("node") or "-", i.get("phase"))
                + ((i.get("role") or "-",) if roles else ())
                + ("/".join(x for x in (i.get("driver"), i.get("accel")) if x) or "-",)
                + ((i.get("networkAddress") or "-",) if networked else ())
                + (_ports(i) or "-", _int(i.get("restarts")), i.get("message", ""))
                for i in instances
            ),
        )


def _ordinal(replica: str) -> int:
    """3 for "postgres-3" (replicas sort by ordinal, not as text)."""
    tail = replica.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _elapsed_ms(duration: Any) -> int:
    """A Duration's JSON ("0.012s") in milliseconds."""
    text = str(duration or "0s").rstrip("s")
    try:
        return round(float(text) * 1000)
    except ValueError:
        return 0


def _print_failover(steps: List[Dict[str, Any]]) -> None:
    """The last failover's (or switchover's) steps, each timed from its detection."""
    if not steps:
        return
    click.echo("  last failover:")
    for step in steps:
        click.echo(f"    +{_elapsed_ms(step.get('elapsed')):>6} ms  {step.get('step', ''):<18}"
                   f"{step.get('message', '')}")


def _ports(instance: Dict[str, Any]) -> str:
    """"80->41235" per declared port, at the replica's node address when it has one."""
    address = instance.get("address")
    ports = sorted((int(k), v) for k, v in (instance.get("hostPorts") or {}).items())
    return ", ".join(f"{p}->{address + ':' if address else ''}{h}" for p, h in ports)


@vm.command("logs")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("--prefix", is_flag=True, help="Start each line with its replica and stream.")
@output_option
@pass_ctx
def vm_logs(c: Ctx, name, follow, prefix, output) -> None:
    """Print the console of VM set NAME's replicas, or of one replica (NAME-N)."""
    as_json = _out(c, output) == "json"
    cl = c.cluster()
    vm_name, replica = name, None
    try:
        cl.vm(name).get()
    except NotFound:
        # "webapp-2": replica 2 of webapp.
        base, _, ordinal = name.rpartition("-")
        if not base or not ordinal.isdigit():
            raise
        cl.vm(base).get()  # not_found names the set when it does not exist either
        vm_name, replica = base, name
    # A set's lines are prefixed with their replica; one replica's need not be.
    _print_logs(cl.vm(vm_name).logs(follow=follow, replica=replica), as_json,
                prefix or replica is None)


@vm.command("update")
@click.argument("name")
@click.option("--config", metavar="FILE", required=True, help="The new config.")
@click.option("--strategy", type=click.Choice(["rolling", "recreate"]),
              help="rolling (default): one replica at a time, the new one healthy before the "
                   "old one stops; recreate: stop, then start.")
@click.option("--memory", metavar="SIZE", help="Memory per replica, e.g. 512M, 2G.")
@click.option("--vcpu", type=int, metavar="N", help="vCPUs per replica.")
@click.option("--healthy-deadline", metavar="DURATION",
              help="How long each new replica has to be ready and healthy for minHealthyTime "
                   "(default 5m); past it, it is stopped and the rollout halts.")
@click.option("--progress-deadline", metavar="DURATION",
              help="Halt the rollout when no replica became healthy within this (default 10m; "
                   "0: no deadline).")
@click.option("--auto-revert/--no-auto-revert", default=None,
              help="On a halt, roll every replica back to the last revision all of them ran.")
@click.option("--detach", is_flag=True, help="Return once the new revision is stored.")
@output_option
@pass_ctx
def vm_update(c: Ctx, name, config, strategy, memory, vcpu, healthy_deadline, progress_deadline,
              auto_revert, detach, output) -> None:
    """Roll VM set NAME to a new config; shows the rollout live unless --detach (Ctrl-C stops
    watching, not the rollout). Exit 9 when the rollout halts (the set keeps serving the last
    revision that ran, or reverts to it with --auto-revert)."""
    given = {field: (flag, value) for field, flag, value in (
        ("healthyDeadline", "--healthy-deadline", healthy_deadline),
        ("progressDeadline", "--progress-deadline", progress_deadline),
        ("autoRevert", "--auto-revert", auto_revert)) if value is not None}
    update_strategy = {field: value for field, (_, value) in given.items()} or None
    # (An error about a timing names its flag only when the flag set it, not the config.)
    c.flag_for_field = dict(VM_FLAGS, **{f"updateStrategy.{field}": flag
                                         for field, (flag, _) in given.items()})
    cl = c.cluster()
    vm = cl.update_vm(name, _config_path(config), strategy=strategy, memory=memory, vcpu=vcpu,
                      update_strategy=update_strategy)
    _follow_rollout(vm, name, detach, _out(c, output) == "json")


def _follow_rollout(vm, name: str, detach: bool, as_json: bool) -> None:
    """After an update or rollback: prints the rollout's progress until it is out, or raises
    HandlerFailed (exit 9) when it halts; returns at once with --detach."""
    stored = _stored_version(vm)
    deadline = time.monotonic() + 30
    while not _observed(st := vm.status(), stored) and time.monotonic() < deadline:
        time.sleep(0.05)
    revision = _int(st.get("revision"))
    if detach:
        if as_json:
            print_json(vm.get())
        else:
            click.echo(f"vm {name}: revision {revision} stored; `blixard vm status {name}` "
                       "shows the rollout")
        return
    last = None
    try:
        while True:
            st = vm.status()
            rollout = st.get("rollout", "")
            if rollout and rollout != last and not as_json:
                click.echo(f"vm {name}: {rollout}")
            last = rollout
            if "halted" in rollout:
                raise errors.HandlerFailed(rollout)
            if not rollout:
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        return  # the rollout goes on without us
    if as_json:
        print_json(vm.get())
    else:
        click.echo(f"vm {name}: revision {_int(st.get('revision'))} is out "
                   f"({_int(st.get('readyReplicas'))} replicas ready)")


@vm.command("rollback")
@click.argument("name")
@click.option("--to-revision", type=int, metavar="N",
              help="A revision `vm history` lists (default: the one before the newest).")
@click.option("--detach", is_flag=True, help="Return once the new revision is stored.")
@output_option
@pass_ctx
def vm_rollback(c: Ctx, name, to_revision, detach, output) -> None:
    """Roll VM set NAME back to an earlier revision's spec (as a new revision, by its update
    strategy); progress as `vm update`."""
    c.flag_for_field = {"revision": "--to-revision"}
    vm = c.cluster().vm(name)
    vm.rollback(to_revision)
    _follow_rollout(vm, name, detach, _out(c, output) == "json")


@vm.command("switchover")
@click.argument("name")
@click.option("--to", "replica", required=True, metavar="REPLICA",
              help="The standby to promote, e.g. postgres-2.")
@click.option("--detach", is_flag=True, help="Return once asked, without waiting.")
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Seconds to wait for the new primary.")
@output_option
@pass_ctx
def vm_switchover(c: Ctx, name, replica, detach, timeout, output) -> None:
    """Make REPLICA the primary of VM set NAME on purpose: the old primary stops cleanly (no
    write lost), then REPLICA is fenced in, promoted and given the volume and the load
    balancer. Prints each step as it happens."""
    c.flag_for_field = {"primary": "--to"}
    vm = c.cluster().vm(name)
    before = _int(vm.status().get("primaryEpoch"))
    vm.switchover(replica)
    as_json = _out(c, output) == "json"
    if detach:
        if as_json:
            print_json(vm.get())
        else:
            click.echo(f"vm {name}: switchover to {replica} asked")
        return
    shown, deadline = 0, time.monotonic() + timeout
    while True:
        st = vm.status()
        steps = st.get("failover", [])
        if _int(st.get("primaryEpoch")) > before and not as_json:
            for step in steps[shown:]:
                click.echo(f"+{_elapsed_ms(step.get('elapsed')):>6} ms  "
                           f"{step.get('step', ''):<18}{step.get('message', '')}")
            shown = len(steps)
        if st.get("primary") == replica and _int(st.get("primaryEpoch")) > before:
            break
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"{replica} is not primary after {timeout:g}s (primary: "
                f"{st.get('primary') or 'none'}); see `blixard vm watch {name}`")
        time.sleep(0.1)
    if as_json:
        print_json(vm.get())
    else:
        click.echo(f"vm {name}: primary={replica}, epoch {_int(st.get('primaryEpoch'))}")


@vm.command("watch")
@click.argument("name")
@click.option("--all", "from_start", is_flag=True, help="Start with the events the server keeps.")
@output_option
@pass_ctx
def vm_watch(c: Ctx, name, from_start, output) -> None:
    """Stream VM set NAME's events live until Ctrl-C: replicas started, failed and replaced,
    rollouts, and each step of a failover (detected, fenced, promoted, volume attached,
    balancer switched) with its time since the failure."""
    cl = c.cluster()
    cl.vm(name).get()  # not_found for an unknown set
    _print_watch(cl.vm(name).watch(after=0 if from_start else None), _out(c, output) == "json")


@vm.command("history")
@click.argument("name")
@output_option
@pass_ctx
def vm_history(c: Ctx, name, output) -> None:
    """VM set NAME's kept revisions: when each was made and what it changed."""
    st = c.cluster().vm(name).status()
    revisions = st.get("revisions", [])
    if _out(c, output) == "json":
        print_json({"items": revisions})
        return
    newest, serving = _int(st.get("revision")), _int(st.get("servingRevision"))
    rows, previous = [], None
    for r in revisions:
        spec = r.get("spec", {})
        changed = sorted(k for k in set(spec) | set(previous or {})
                         if previous is not None and spec.get(k) != previous.get(k))
        mark = []
        if _int(r.get("revision")) == newest:
            mark.append("newest")
        if _int(r.get("revision")) == serving:
            mark.append("serving")
        rows.append((r.get("revision"), r.get("createdAt", "-"),
                     spec.get("updateStrategy", {}).get("type", "rolling"),
                     ", ".join(changed) if previous is not None else "(first kept)",
                     ", ".join(mark)))
        previous = spec
    print_table(("REVISION", "CREATED", "STRATEGY", "CHANGED", ""), rows,
                empty=f"vm {name} has no revisions yet.")


@vm.command("start")
@click.argument("name")
@wait_option
@output_option
@pass_ctx
def vm_start(c: Ctx, name, wait, output) -> None:
    """Run VM set NAME's replicas (again, after `vm stop`)."""
    v = c.cluster().vm(name).start()
    if wait:
        v = _wait_ready(c, name)
    if _out(c, output) == "json":
        print_json(v)
    else:
        click.echo(f"vm {name} starting {_int(v.get('spec', {}).get('replicas'))} replicas")


@vm.command("stop")
@click.argument("name")
@output_option
@pass_ctx
def vm_stop(c: Ctx, name, output) -> None:
    """Stop every replica of VM set NAME (the set and its spec stay)."""
    v = c.cluster().vm(name).stop()
    if _out(c, output) == "json":
        print_json(v)
    else:
        click.echo(f"vm {name} stopping")


@vm.command("scale")
@click.argument("name")
@click.option("--replicas", type=int, metavar="N", required=True, help="Replicas wanted (1+).")
@wait_option
@output_option
@pass_ctx
def vm_scale(c: Ctx, name, replicas, wait, output) -> None:
    """Set VM set NAME's replicas; new ones are placed by the scheduler, the highest ordinals
    stop first."""
    c.flag_for_field = {"replicas": "--replicas"}
    v = c.cluster().vm(name).scale(replicas)
    if wait:
        v = _wait_ready(c, name)
    if _out(c, output) == "json":
        print_json(v)
    else:
        click.echo(f"vm {name} scaled to {replicas} replicas")


@vm.command("delete")
@click.argument("name")
@output_option
@pass_ctx
def vm_delete(c: Ctx, name, output) -> None:
    """Delete VM set NAME (its replicas stop; its volumes are kept: `blixard storage volume
    delete` removes them)."""
    c.cluster().delete_vm(name)
    click.echo(f"vm {name} deleted")
    kept = [_name(v) for v in c.cluster().volumes() if v.get("spec", {}).get("vm") == name]
    if kept:
        click.echo(f"its volumes are kept: {', '.join(kept)} (`blixard storage volume delete "
                   "NAME` removes one)")


# ---- storage ----


@cli.group()
def storage() -> None:
    """Storage pools, and the volumes VM sets keep their data on (one per replica)."""


@storage.group("pool")
def storage_pool() -> None:
    """Storage pools: where volumes are made."""


POOL_FLAGS = {"type": "--type", "path": "--path", "class": "--class"}


@storage_pool.command("create")
@click.argument("name")
@click.option(
    "--type",
    "pool_type",
    type=click.Choice(["dir", "shared-dir"]),
    default="dir",
    show_default=True,
    help="dir: a directory on each node (a volume stays on its node); shared-dir: a directory "
    "every node mounts (NFS, CephFS), so a volume follows its replica.",
)
@click.option("--path", required=True, metavar="DIR", help="The pool's directory on the nodes.")
@click.option(
    "--class",
    "storage_class",
    metavar="CLASS",
    help="What --storage-class names it by (default: local for dir, replicated for shared-dir).",
)
@output_option
@pass_ctx
def storage_pool_create(c: Ctx, name, pool_type, path, storage_class, output) -> None:
    """Create storage pool NAME."""
    c.flag_for_field = POOL_FLAGS
    obj = c.cluster().create_storage_pool(name, path, pool_type, storage_class)
    if _out(c, output) == "json":
        print_json(obj)
    else:
        spec = obj.get("spec", {})
        click.echo(f"storage pool {name} created ({spec.get('type')} {spec.get('path')}, "
                   f"class {spec.get('class')})")


@storage_pool.command("list")
@output_option
@pass_ctx
def storage_pool_list(c: Ctx, output) -> None:
    """List storage pools."""
    raw = c.cluster()._core.storage_pools()
    if _out(c, output) == "json":
        print_json(_list_json(raw))
        return
    rows = []
    for p in json.loads(raw).get("items", []):
        spec, st = p.get("spec", {}), p.get("status", {})
        rows.append((_name(p), spec.get("type", ""), spec.get("class", ""), spec.get("path", ""),
                     _int(st.get("volumes")), _mib(st.get("allocated"))))
    print_table(("NAME", "TYPE", "CLASS", "PATH", "VOLUMES", "ALLOCATED"), rows,
                empty="No storage pools.")


@storage_pool.command("delete")
@click.argument("name")
@pass_ctx
def storage_pool_delete(c: Ctx, name) -> None:
    """Delete storage pool NAME (refused while a VM names it or a volume lives in it)."""
    c.cluster().delete_storage_pool(name)
    click.echo(f"storage pool {name} deleted")


@storage.group("volume")
def storage_volume() -> None:
    """Volumes: one per replica of a VM set with storage, kept until deleted."""


@storage_volume.command("list")
@output_option
@pass_ctx
def storage_volume_list(c: Ctx, output) -> None:
    """List volumes: their pool, size, node and the replica writing to them."""
    raw = c.cluster()._core.volumes()
    if _out(c, output) == "json":
        print_json(_list_json(raw))
        return
    rows = []
    for v in json.loads(raw).get("items", []):
        spec, st = v.get("spec", {}), v.get("status", {})
        storage = spec.get("storage", {})
        rows.append((_name(v), spec.get("vm", ""), storage.get("pool", ""),
                     _mib(storage.get("size")), st.get("phase", ""), st.get("node") or "-",
                     st.get("attachedTo") or "-"))
    print_table(("NAME", "VM", "POOL", "SIZE", "PHASE", "NODE", "ATTACHED TO"), rows,
                empty="No volumes.")


@storage_volume.command("delete")
@click.argument("name")
@pass_ctx
def storage_volume_delete(c: Ctx, name) -> None:
    """Delete volume NAME and its data (refused while its VM set still wants it)."""
    c.cluster().delete_volume(name)
    click.echo(f"volume {name} deleted")


# ---- network ----


@cli.group()
def network() -> None:
    """Private networks of VM replicas: a subnet, a bridge per node, an address per replica,
    a VXLAN overlay between nodes."""


@network.command("create")
@click.argument("name")
@click.option("--subnet", required=True, metavar="CIDR", help="IPv4 subnet, e.g. 10.88.0.0/24.")
@output_option
@pass_ctx
def network_create(c: Ctx, name, subnet, output) -> None:
    """Create network NAME (VM sets join it with `vm create --network NAME`)."""
    c.flag_for_field = {"subnet": "--subnet"}
    obj = c.cluster().create_network(name, subnet)
    if _out(c, output) == "json":
        print_json(obj)
    else:
        click.echo(f"network {name} created ({obj.get('spec', {}).get('subnet')})")


@network.command("list")
@output_option
@pass_ctx
def network_list(c: Ctx, output) -> None:
    """List networks: subnet, addresses handed out, the bridge and VXLAN id on each node."""
    raw = c.cluster()._core.networks()
    if _out(c, output) == "json":
        print_json(_list_json(raw))
        return
    rows = []
    for n in json.loads(raw).get("items", []):
        st = n.get("status", {})
        rows.append((_name(n), n.get("spec", {}).get("subnet", ""), _int(st.get("addresses")),
                     st.get("bridge", ""), _int(st.get("vni"))))
    print_table(("NAME", "SUBNET", "ADDRESSES", "BRIDGE", "VNI"), rows, empty="No networks.")


@network.command("delete")
@click.argument("name")
@pass_ctx
def network_delete(c: Ctx, name) -> None:
    """Delete network NAME (refused while a VM names it)."""
    c.cluster().delete_network(name)
    click.echo(f"network {name} deleted")


# ---- trigger / node ----


def _json_data(data: str, field: str = "--data") -> str:
    """--data as JSON text (from @file or - too), checked here so the error names the flag."""
    text = _read_data(data)
    try:
        json.loads(text)
    except ValueError as e:
        raise InvalidSpec(f"not JSON: {e}", field=field) from e
    return text


def _age(seconds: Any) -> str:
    s = float(seconds or 0)
    if s <= 0:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


@cli.group()
def queue() -> None:
    """Durable queues: messages on disk before `send` returns, delivered at least once to queue
    triggers (or taken with `receive`), dead-lettered after --max-receives failures."""


@queue.command("create")
@click.argument("name")
@click.option("--visibility-timeout", metavar="DURATION",
              help="How long a received message stays hidden (default 30s; a trigger's: six "
                   "times its function's timeout).")
@click.option("--max-receives", type=int, metavar="N",
              help="Failed deliveries before a message moves to the dead-letter queue "
                   "(default: retried forever).")
@click.option("--dead-letter", "dead_letter", metavar="QUEUE",
              help="Where a message goes after --max-receives failures.")
@output_option
@pass_ctx
def queue_create(c: Ctx, name, visibility_timeout, max_receives, dead_letter, output) -> None:
    """Create queue NAME."""
    c.flag_for_field.update({"visibilityTimeout": "--visibility-timeout",
                             "maxReceives": "--max-receives",
                             "deadLetterQueue": "--dead-letter"})
    q = c.cluster().create_queue(name, visibility_timeout=visibility_timeout,
                                 max_receives=max_receives, dead_letter_queue=dead_letter)
    if _out(c, output) == "json":
        print_json(q.get())
    else:
        click.echo(f"queue {name} created")


@queue.command("list")
@click.option("--all", "show_all", is_flag=True,
              help="Also the server's own queues (event triggers', async invocations' and "
                   "their dead letters).")
@output_option
@pass_ctx
def queue_list(c: Ctx, show_all, output) -> None:
    """List queues: depth, in flight, age of the oldest message, dead-lettered."""
    items = [q for q in c.cluster().queues() if show_all or ":" not in _name(q)]
    if _out(c, output) == "json":
        print_json({"items": items})
        return
    rows = []
    for q in items:
        st = q.get("status", {})
        spec = q.get("spec", {})
        rows.append((_name(q), str(_int(st.get("depth"))), str(_int(st.get("inFlight"))),
                     _age(st.get("oldestAgeSeconds")), str(_int(st.get("deadLettered"))),
                     spec.get("deadLetterQueue") or "-"))
    print_table(("NAME", "DEPTH", "IN FLIGHT", "OLDEST", "DEAD-LETTERED", "DEAD-LETTER QUEUE"),
                rows, empty="No queues.")


@queue.command("get")
@click.argument("name")
@output_option
@pass_ctx
def queue_get(c: Ctx, name, output) -> None:
    """Show queue NAME: its settings and status."""
    print_json(c.cluster().queue(name).get())


@queue.command("send")
@click.argument("name")
@click.option("--data", "-d", default="null", show_default=True, metavar="JSON|@FILE|-",
              help="The message: JSON text, @file to read it from a file, - for stdin.")
@output_option
@pass_ctx
def queue_send(c: Ctx, name, data, output) -> None:
    """Send one message to queue NAME; prints its id once it is on the server's disk."""
    ids = c.cluster()._core.send_messages(name, [_json_data(data)])
    if _out(c, output) == "json":
        print_json({"queue": name, "ids": list(ids)})
    else:
        click.echo(ids[0])


def _print_messages(items: List[Dict[str, Any]], as_json: bool, empty: str) -> None:
    if as_json:
        print_json({"items": items})
        return
    rows = [(m.get("id", ""), str(_int(m.get("receives"))), m.get("receipt") or "-",
             m.get("body", "")) for m in items]
    print_table(("ID", "RECEIVES", "RECEIPT", "BODY"), rows, empty=empty)


@queue.command("receive")
@click.argument("name")
@click.option("--max", "max_", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option("--wait", type=click.FloatRange(0, 20), default=0, metavar="SECONDS",
              help="Wait up to this long for a message (at most 20).")
@click.option("--visibility-timeout", metavar="DURATION",
              help="Hide what is received this long (default: the queue's).")
@click.option("--ack", is_flag=True, help="Acknowledge what is received at once.")
@output_option
@pass_ctx
def queue_receive(c: Ctx, name, max_, wait, visibility_timeout, ack, output) -> None:
    """Take messages from queue NAME; acknowledge them with `queue ack NAME RECEIPT...` (or
    --ack), or they come back after the visibility timeout."""
    c.flag_for_field.update({"visibility_timeout": "--visibility-timeout",
                             "visibilityTimeout": "--visibility-timeout"})
    q = c.cluster().queue(name)
    items = q.receive(max_, wait=wait, visibility_timeout=visibility_timeout)
    if ack and items:
        q.ack([m["receipt"] for m in items])
    _print_messages(items, _out(c, output) == "json", "No messages.")


@queue.command("peek")
@click.argument("name")
@click.option("--max", "max_", type=click.IntRange(1, 1000), default=10, show_default=True)
@output_option
@pass_ctx
def queue_peek(c: Ctx, name, max_, output) -> None:
    """Show messages of queue NAME that a receive could take, without taking them."""
    _print_messages(c.cluster().queue(name).peek(max_), _out(c, output) == "json", "No messages.")


@queue.command("ack")
@click.argument("name")
@click.argument("receipts", nargs=-1, required=True)
@pass_ctx
def queue_ack(c: Ctx, name, receipts) -> None:
    """Acknowledge received messages of queue NAME by receipt: they are gone."""
    n = c.cluster().queue(name).ack(list(receipts))
    click.echo(f"{n} acknowledged")


@queue.command("purge")
@click.argument("name")
@pass_ctx
def queue_purge(c: Ctx, name) -> None:
    """Remove every message of queue NAME."""
    n = c.cluster().queue(name).purge()
    click.echo(f"{n} messages purged from {name}")


@queue.command("delete")
@click.argument("name")
@pass_ctx
def queue_delete(c: Ctx, name) -> None:
    """Delete queue NAME and its messages."""
    c.cluster().delete_queue(name)
    click.echo(f"queue {name} deleted")


@cli.group()
def event() -> None:
    """Named events: each goes durably to every function with an event trigger on its source."""


@event.command("publish")
@click.argument("source")
@click.option("--data", "-d", default="null", show_default=True, metavar="JSON|@FILE|-",
              help="The event's data: JSON text, @file, - for stdin.")
@output_option
@pass_ctx
def event_publish(c: Ctx, source, data, output) -> None:
    """Publish an event on SOURCE (e.g. invoice-created)."""
    out = json.loads(c.cluster()._core.publish_event(source, _json_data(data)))
    if _out(c, output) == "json":
        print_json(out)
        return
    triggers = out.get("triggers", [])
    if triggers:
        click.echo(f"published to {len(triggers)} trigger(s): {', '.join(triggers)}")
    else:
        click.echo(f"published; no event trigger listens on {source}")


@cli.group()
def invocation() -> None:
    """Async invocations (`function invoke --async`)."""


@invocation.command("get")
@click.argument("id")
@output_option
@pass_ctx
def invocation_get(c: Ctx, id, output) -> None:
    """Show async invocation ID: queued, running, retrying, succeeded (with its result) or
    failed (with the last error; the call is in the function's dead-letter queue)."""
    inv = c.cluster().invocation(id)
    if _out(c, output) == "json":
        print_json(inv)
        return
    click.echo(f"invocation {inv.get('id')} of {inv.get('function')}: {inv.get('state')} "
               f"after {_int(inv.get('attempts'))} attempt(s)")
    if "result" in inv:
        click.echo(json.dumps(inv["result"]))
    err = inv.get("error")
    if err:
        click.echo(f"error: {err.get('code')}: {err.get('message')}")


@cli.group()
def trigger() -> None:
    """Triggers: what makes a function run besides a direct call (create them with
    `blixard function trigger` or `blixard apply`)."""


@trigger.command("list")
@output_option
@pass_ctx
def trigger_list(c: Ctx, output) -> None:
    """List triggers."""
    raw = c.cluster()._core.triggers()
    if _out(c, output) == "json":
        print_json(_list_json(raw))
        return
    rows = []
    for t in json.loads(raw).get("items", []):
        spec = t.get("spec", {})
        rows.append(
            (
                _name(t),
                spec.get("type", ""),
                spec.get("function", ""),
                spec.get("path") or spec.get("source") or "-",
                t.get("status", {}).get("url") or "-",
            )
        )
    print_table(("NAME", "TYPE", "FUNCTION", "PATH/SOURCE", "URL"), rows, empty="No triggers.")


@trigger.command("delete")
@click.argument("name")
@output_option
@pass_ctx
def trigger_delete(c: Ctx, name, output) -> None:
    """Delete trigger NAME (an http path stops being served within a second)."""
    c.cluster().delete_trigger(name)
    click.echo(f"trigger {name} deleted")


@cli.group()
def node() -> None:
    """Nodes: the machines that run instances."""


@node.command("list")
@output_option
@pass_ctx
def node_list(c: Ctx, output) -> None:
    """List nodes with their capacity and labels."""
    raw = c.cluster()._core.nodes()
    if _out(c, output) == "json":
        print_json(_list_json(raw))
        return
    rows = [_node_row(n) for n in json.loads(raw).get("items", [])]
    print_table(("NAME", "STATE", "ADDRESS", "MEMORY", "VCPU", "INSTANCES", "LABELS"), rows,
                empty="No nodes.")


def _node_row(n: Dict[str, Any]) -> tuple:
    spec, st = n.get("spec", {}), n.get("status", {})
    labels = ",".join(f"{k}={v}" for k, v in sorted(spec.get("labels", {}).items()))
    state = st.get("phase", "")
    if st.get("unschedulable"):
        state += ",SchedulingDisabled"  # kubectl's word for a cordoned node
    return (
        _name(n),
        state,
        spec.get("address") or "-",
        f"{_mib(st.get('allocatedMemoryMib'))}/{_mib(spec.get('memoryMib'))}",
        f"{_int(st.get('allocatedVcpu'))}/{_int(spec.get('vcpu'))}",
        str(_int(st.get("instances"))),
        labels or "-",
    )


@node.command("get")
@click.argument("name")
@output_option
@pass_ctx
def node_get(c: Ctx, name, output) -> None:
    """Show node NAME: state, address, capacity, allocation, labels, epoch, last change."""
    n = c.cluster().node(name)
    if _out(c, output) == "json":
        print_json(n)
        return
    row = _node_row(n)
    st = n.get("status", {})
    for key, value in zip(("Name", "State", "Address", "Memory", "VCPU", "Instances", "Labels"),
                          row):
        click.echo(f"{key + ':':<11}{value}")
    click.echo(f"{'Drivers:':<11}{', '.join(n.get('spec', {}).get('drivers', [])) or '-'}")
    click.echo(f"{'Data:':<11}{', '.join(n.get('spec', {}).get('dataPaths', [])) or '-'}")
    rtt = st.get("rttUs")
    click.echo(f"{'RTT:':<11}{'%.2f ms' % (int(rtt) / 1000) if rtt else '-'} (to this server)")
    peers = st.get("peerRttUs", {})
    click.echo(f"{'Peers:':<11}" + (", ".join(f"{p} {int(us) / 1000:.2f} ms"
                                              for p, us in sorted(peers.items())) or "-"))
    click.echo(f"{'Epoch:':<11}{_int(st.get('epoch'))}")
    click.echo(f"{'Changed:':<11}{st.get('lastHeartbeat', '-')} ({st.get('message') or '-'})")


def _node_action(verb: str, done: str):
    @node.command(verb)
    @click.argument("name")
    @output_option
    @pass_ctx
    def command(c: Ctx, name, output) -> None:
        n = getattr(c.cluster(), f"{verb}_node")(name)
        if _out(c, output) == "json":
            print_json(n)
            return
        click.echo(f"node {name} {done}")

    command.__doc__ = {
        "cordon": "New work avoids node NAME; what runs there stays.",
        "uncordon": "Node NAME takes new work again.",
        "drain": "Cordon node NAME and move its instances off (idle now, busy when done).",
    }[verb]
    return command


node_cordon = _node_action("cordon", "cordoned")
node_uncordon = _node_action("uncordon", "uncordoned")
node_drain = _node_action("drain", "drained")


# ---- tokens ----


@cli.group()
def token() -> None:
    """Bearer tokens: create (the secret is shown once), list, revoke."""


@token.command("create")
@click.option("--role", required=True, type=click.Choice(["admin", "read", "invoke", "node"]),
              help="admin: everything; read: GETs; invoke: calls; node: joining agents.")
@click.option("--function", "function", metavar="NAME", help="Limit an invoke token to NAME.")
@click.option("--ttl", metavar="DURATION", help="Expire after DURATION, e.g. 12h, 30d.")
@click.option("--name", metavar="NAME", help="Token name (default token-<id>).")
@output_option
@pass_ctx
def token_create(c: Ctx, role, function, ttl, name, output) -> None:
    """Create a token and print its secret (the server keeps only its hash)."""
    if function and role != "invoke":
        raise InvalidSpec("--function limits an invoke token: use it with --role invoke",
                          field="function")
    created = c.cluster().create_token(role, function=function, ttl=ttl, name=name)
    if _out(c, output) == "json":
        print_json(created)
        return
    t = created.get("token", {})
    click.echo(f"token {t.get('metadata', {}).get('name')} created ({_token_scope(t)}); "
               "its secret, shown only now:", err=True)
    click.echo(created.get("secret", ""))


def _token_scope(t: Dict[str, Any]) -> str:
    spec = t.get("spec", {})
    role = ",".join(spec.get("scopes", [])) or "-"
    return f"{role} {spec['function']}" if spec.get("function") else role


@token.command("list")
@output_option
@pass_ctx
def token_list(c: Ctx, output) -> None:
    """List tokens (never their secrets)."""
    items = c.cluster().tokens()
    if _out(c, output) == "json":
        print_json({"items": items})
        return
    rows = [(t.get("metadata", {}).get("name"), t.get("spec", {}).get("id"), _token_scope(t),
             t.get("spec", {}).get("expiresAt", "never"),
             t.get("metadata", {}).get("createdAt", "-")) for t in items]
    print_table(("NAME", "ID", "ROLE", "EXPIRES", "CREATED"), rows, empty="No tokens.")


@token.command("revoke")
@click.argument("name")
@output_option
@pass_ctx
def token_revoke(c: Ctx, name, output) -> None:
    """Revoke token NAME (a name or an id) at once."""
    t = c.cluster().revoke_token(name)
    if _out(c, output) == "json":
        print_json(t)
        return
    click.echo(f"token {t.get('metadata', {}).get('name')} revoked")


# ---- apply / delete ----


def _print_apply(result: Dict[str, Any], out: str, verb: str, dry_run: bool = False) -> None:
    if out == "json":
        print_json(result)
        return
    items = result.get("items", [])
    if not items:
        click.echo(f"nothing to {verb}")
        return
    # A dry run shows what would change (kubectl diff), then the summary lines.
    for it in items:
        if it.get("diff"):
            click.echo(it["diff"], nl=False)
    suffix = " (dry run)" if dry_run else ""
    for it in items:
        click.echo(f"{it.get('kind', '').lower()}/{it.get('name')} {it.get('action')}{suffix}")


_DRY_RUN_HELP = "Change nothing: print what would change, each change as a diff (live/merged)."


@cli.command()
@click.option("-f", "--filename", "file", required=True, metavar="FILE", help="Manifest (YAML/JSON).")
@click.option("--dry-run", is_flag=True, help=_DRY_RUN_HELP)
@click.option("--prune", is_flag=True,
              help="Also delete the stack's objects the manifest no longer holds.")
@click.option("--stack", metavar="NAME",
              help="The stack of a manifest without a Platform (a Platform's is its name).")
@output_option
@pass_ctx
def apply(c: Ctx, file: str, dry_run: bool, prune: bool, stack: Optional[str], output) -> None:
    """Create or update every object of a manifest, all or nothing.

    Each object is reported created, configured (its own declaration changed), unchanged or,
    with --prune, pruned. --dry-run exits 0 whether or not anything would change.
    """
    if not os.path.exists(file):
        raise InvalidSpec(f"no such file: {file}", field="-f")
    c.flag_for_field = {"stack": "--stack"}
    result = c.cluster().apply(file, dry_run=dry_run, prune=prune, stack=stack)
    _print_apply(result, _out(c, output), "apply", dry_run)


@cli.command("delete")
@click.option("-f", "--filename", "file", metavar="FILE", help="Manifest (YAML/JSON).")
@click.option("--stack", metavar="NAME", help="Delete every object of this stack (no file).")
@click.option("--dry-run", is_flag=True, help=_DRY_RUN_HELP)
@output_option
@pass_ctx
def delete_cmd(c: Ctx, file: Optional[str], stack: Optional[str], dry_run: bool, output) -> None:
    """Delete every object a manifest names, or every object of a stack, all or nothing."""
    if (file is None) == (stack is None):
        raise InvalidSpec("give -f FILE or --stack NAME (one of them)", field="-f")
    if file is not None and not os.path.exists(file):
        raise InvalidSpec(f"no such file: {file}", field="-f")
    c.flag_for_field = {"stack": "--stack"}
    if stack is not None:
        result = c.cluster().delete(stack=stack, dry_run=dry_run)
    else:
        result = c.cluster().delete(file, dry_run=dry_run)
    _print_apply(result, _out(c, output), "delete", dry_run)


# ---- dashboard ----


@cli.command()
@click.option("--stack", metavar="NAME", help="Show only the VMs and functions of stack NAME.")
@click.option("--terminal", is_flag=True, help="The same view here, live, until Ctrl-C.")
@click.option("--no-browser", is_flag=True, help="Print the URL without opening a browser.")
@click.option("--ttl", metavar="DURATION", default="12h", show_default=True,
              help="How long the page's read-only token lasts.")
@output_option
@pass_ctx
def dashboard(c: Ctx, stack, terminal, no_browser, ttl, output) -> None:
    """Open the server's dashboard (/ui/): prints its URL with a new read-only token, as Jupyter
    does, and opens a browser where there is a display. --terminal shows the same view here,
    live; -o json prints it once."""
    from . import dashboard as dash

    cl = c.cluster()
    addr = c.resolved_addr
    token = c.resolved_token
    if _out(c, output) == "json":
        feed = dash.Feed()
        feed.seed(cl)
        print_json(dash.snapshot(cl, addr, token, feed, stack or ""))
        return
    if terminal:
        dash.run_terminal(cl, addr, token, stack or "")
        return
    secret = ""
    if not dash.server_is_open(addr):
        name = dash.new_token_name()
        try:
            secret = cl.create_token("read", ttl=ttl, name=name).get("secret", "")
            click.echo(f"read-only token {name} created, expires in {ttl} "
                       f"(`blixard token revoke {name}` ends it)", err=True)
        except errors.PermissionDenied:
            # Only an admin makes tokens: a reader's own token serves the page as well.
            secret = token
            click.echo("this token may not create tokens: the URL carries it instead", err=True)
    url = dash.dashboard_url(addr, secret, stack or "")
    click.echo("To see the dashboard, open this URL in a browser:", err=True)
    click.echo(url)
    if not no_browser and dash.browser_available():
        dash.open_browser(url)


# ---- entry point -------------------------------------------------------------------------------


def _flag_error(err: BlixardError, ctx_obj: Optional[Ctx]) -> BlixardError:
    """Names the flag for an error about a field that a flag set (``--memory: ...``)."""
    if ctx_obj is None or not err.field or err.file:
        return err
    field = err.field[5:] if err.field.startswith("spec.") else err.field
    flag = ctx_obj.flag_for_field.get(field)
    if flag is None:
        return err
    return errors.error_class(err.code)(
        err.message, code=err.code, field=flag, line=err.line, column=err.column
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: runs the CLI and turns errors into messages and exit codes."""
    ctx_holder: Dict[str, Any] = {}

    def _remember(ctx: click.Context) -> None:
        ctx_holder["obj"] = ctx.obj

    try:
        with cli.make_context("blixard", list(sys.argv[1:] if argv is None else argv)) as ctx:
            try:
                cli.invoke(ctx)
            finally:
                _remember(ctx)
        return EXIT_OK
    except click.exceptions.Exit as e:
        return e.exit_code
    except BrokenPipeError:
        # Piped into `head` and the reader left: what was printed is all it wanted (as `ls | head`).
        # Python would complain flushing stdout on exit too: point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return EXIT_INTERNAL
    except BlixardError as e:
        e = _flag_error(e, ctx_holder.get("obj"))
        text = e.describe()
        # Only a server that cannot be reached is helped by `blixard up`; one that answered
        # (a full disk, a shutdown in progress) is running already.
        if (e.code == "unavailable" and (e.message or "").startswith("cannot reach ")
                and "blixard up" not in text):
            text += " (is the server running? start one with `blixard up`)"
        elif e.code == "throttled":
            text += (" (too many calls in flight: retry later, or raise"
                     " --concurrent-executions / --max-instances)")
        click.echo(f"error: {text}", err=True)
        return exit_code_for(e)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
