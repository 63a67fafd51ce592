"""Real processes: a `blixard-agent --server` and agents that join it, each agent in a network
namespace of its own with its own address on a bridge the test makes (DESIGN §1).

An agent started with `libvirt=True` runs real guests: it gets a libvirtd (and virtlogd) of its own
in its network namespace, as a node's libvirtd shares its host's network, so that its guests'
bridges, VXLAN and forwarded ports are the agent's. They share a mount namespace in which
libvirt's run, state, cache and log directories are the agent's own (see `Libvirtd`).

Everything is made here and always removed: the bridge, the namespaces, the processes. The server
listens on the bridge's address only, so no traffic leaves the machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

import blixard
from blixard.cli import find_agent
from delay_proxy import DelayProxy


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def poll(condition: Callable[[], object], timeout: float = 20.0, interval: float = 0.05):
    """The first truthy value of `condition` within `timeout` seconds, else AssertionError."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"not within {timeout}s (last value {last!r})")


# libvirt's system directories; each agent's libvirtd has its own in place of the host's.
LIBVIRT_DIRS = ("/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt")


def _gone(proc: subprocess.Popen, timeout: float) -> bool:
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


@dataclass
class Libvirtd:
    """virtlogd and libvirtd for one agent, in its network namespace, so that qemu's taps, the
    node's bridges and VXLAN, and qemu's forwarded ports share one network (on a real node they
    all use the host's). A keeper process holds a mount namespace where `LIBVIRT_DIRS` are
    bound to directories under `root` (qemu:///system then means this libvirtd, and its pid files
    under /run/libvirt/qemu are the ones the agent reads); the daemons and the agent enter it."""

    root: Path
    netns: str
    keeper: Optional[subprocess.Popen] = None
    daemons: List[subprocess.Popen] = field(default_factory=list)

    def enter(self) -> List[str]:
        assert self.keeper is not None
        return ["nsenter", f"--target={self.keeper.pid}", "--mount", "--net"]

    def virsh(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.enter(), "virsh", "-c", "qemu:///system", *args],
                              capture_output=True, text=True, timeout=30)

    def start(self) -> None:
        binds = []
        for d in LIBVIRT_DIRS:
            own = self.root / d.strip("/").replace("/", "-")
            own.mkdir(parents=True, exist_ok=True)
            binds.append(f"mount --bind {own} {d}")
        # What the host's libvirtd learnt of qemu, if it ran: its capabilities (a probe of about
        # 8 s here, before the first domain can start).
        caps = Path("/var/cache/libvirt/qemu/capabilities")
        if caps.is_dir():
            mine = self.root / "var-cache-libvirt/qemu/capabilities"
            mine.mkdir(parents=True, exist_ok=True)
            for f in caps.glob("*.xml"):
                (mine / f.name).write_bytes(f.read_bytes())
        self.keeper = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation", "private",
             "sh", "-c", " && ".join(binds) + " && echo ready && exec sleep infinity"],
            stdout=subprocess.PIPE, text=True)
        assert self.keeper.stdout.readline().strip() == "ready", "cannot bind libvirt's dirs"
        self.keeper.stdout.close()
        # In the foreground (children of the test, stopped by it), pid files of their own.
        for daemon in ("virtlogd", "libvirtd"):
            with open(self.root / f"{daemon}.log", "ab") as log:
                self.daemons.append(subprocess.Popen(
                    [*self.enter(), daemon, "--pid-file", str(self.root / f"{daemon}.pid")],
                    stdout=log, stderr=subprocess.STDOUT))
        poll(lambda: self.virsh("version").returncode == 0 or any(
            d.poll() is not None for d in self.daemons), timeout=30)
        assert self.virsh("version").returncode == 0, (self.root / "libvirtd.log").read_text()

    def stop(self) -> None:
        """Every domain destroyed, the daemons stopped, then anything left in the namespace (a
        qemu that outlived its libvirtd) killed by its pid."""
        if self.keeper is None:
            return
        if self.daemons and self.daemons[-1].poll() is None:
            listed = self.virsh("list", "--name")
            for name in listed.stdout.split():
                self.virsh("destroy", name)
        for proc in reversed(self.daemons):
            if proc.poll() is None:
                proc.terminate()
                if not _gone(proc, 15):
                    proc.kill()
                    proc.wait()
        pids = _ip("netns", "pids", self.netns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.keeper.kill()
        self.keeper.wait()
        self.keeper = None


@dataclass
class Agent:
    name: str
    netns: str
    address: str
    veth: str
    data_dir: Path
    labels: Dict[str, str]
    proc: Optional[subprocess.Popen] = None
    log: Optional[Path] = None
    libvirtd: Optional[Libvirtd] = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def cut(self) -> None:
        """The agent's link goes down (as a pulled cable: no FIN, no RST)."""
        _ip("link", "set", self.veth, "down")

    def restore(self) -> None:
        _ip("link", "set", self.veth, "up")


@dataclass
class Cluster:
    address: str
    token: str
    server: subprocess.Popen
    server_dir: Path
    # The client's files (functions' code): the server and the agents run in mount namespaces
    # where this directory is an empty tmpfs, so code can reach them only as an archive.
    client_dir: Path
    agents: Dict[str, Agent] = field(default_factory=dict)
    start_agent: Callable[..., Agent] = None  # type: ignore[assignment]

    def client(self) -> blixard.Cluster:
        return blixard.connect(self.address, token=self.token)

    def nodes(self) -> Dict[str, dict]:
        return {n["metadata"]["name"]: n for n in self.client().nodes()}

    def phase(self, name: str) -> str:
        return self.nodes().get(name, {}).get("status", {}).get("phase", "")

    def server_log(self) -> str:
        p = self.server_dir / "server.log"
        return p.read_text(errors="replace") if p.exists() else ""


def hidden(directory: Path, argv: List[str]) -> List[str]:
    """`argv` in a mount namespace of its own where `directory` is an empty tmpfs (the command
    keeps its pid: unshare and sh exec it)."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs -o size=64k,mode=0755 blixard-hidden "$0" && exec "$@"',
            str(directory), *argv]


def _stop(proc: Optional[subprocess.Popen]) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def cluster(tmp_path: Path):
    """A server on a bridge and a way to start agents in namespaces behind it."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = f"{os.getpid() % 10000}"
    bridge = f"bxb{tag}"
    subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
    made: List[str] = []
    agents: Dict[str, Agent] = {}
    proxies: List[DelayProxy] = []
    server: Optional[subprocess.Popen] = None
    try:
        _ip("link", "add", bridge, "type", "bridge")
        made.append(bridge)
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        server_dir = tmp_path / "server"
        server_dir.mkdir()
        client_dir = tmp_path / "client"
        client_dir.mkdir()
        with open(server_dir / "server.log", "wb") as log:
            server = subprocess.Popen(
                hidden(client_dir,
                       [find_agent(), "--server", "--no-local-node", "--listen", f"{subnet}.1:0",
                        "--data-dir", str(server_dir), "--node-lease", "2s"]),
                stdout=log, stderr=subprocess.STDOUT)
        state = server_dir / "server.json"
        poll(lambda: state.exists() or server.poll() is not None, timeout=30)
        assert state.exists(), (server_dir / "server.log").read_text()
        info = json.loads(state.read_text())
        c = Cluster(address=info["address"], token=info["token"], server=server,
                    server_dir=server_dir, client_dir=client_dir, agents=agents)

        def start_agent(name: str, labels: Optional[Dict[str, str]] = None,
                        token: Optional[str] = None, wait: bool = True,
                        node_name: Optional[str] = None,
                        data_paths: Optional[List[str]] = None, delay: float = 0.0,
                        libvirt: bool = False) -> Agent:
            """An agent in a namespace of its own; `delay` seconds farther from the server
            (each way, through a relay) when asked; with `libvirt`, its replicas are real guests
            of a libvirtd of its own (`Libvirtd`)."""
            index = len(agents) + 2
            agent = agents.get(name)
            if agent is None:
                netns = f"bxn{tag}-{index}"
                veth = f"bxv{tag}-{index}"
                _ip("netns", "add", netns)
                made.append("netns:" + netns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
                _ip("link", "set", veth, "master", bridge, "up")
                _ip("-n", netns, "addr", "add", f"{subnet}.{index}/24", "dev", "eth0")
                _ip("-n", netns, "link", "set", "eth0", "up")
                _ip("-n", netns, "link", "set", "lo", "up")
                agent = Agent(name=name, netns=netns, address=f"{subnet}.{index}", veth=veth,
                              data_dir=tmp_path / name, labels=labels or {})
                agents[name] = agent
            agent.data_dir.mkdir(exist_ok=True)
            agent.log = agent.data_dir / "agent.log"
            label_arg = ",".join(f"{k}={v}" for k, v in agent.labels.items())
            join = info["address"]
            if delay:
                server_host, server_port = join.rsplit("//", 1)[1].rsplit(":", 1)
                proxy = DelayProxy((f"{subnet}.1", 0), (server_host, int(server_port)), delay)
                proxies.append(proxy)
                join = "http://%s:%d" % tuple(proxy.address)
            argv = [find_agent(), "--join", join, "--token", token or c.token,
                    "--name", node_name or name, "--data-dir", str(agent.data_dir)]
            if label_arg:
                argv += ["--labels", label_arg]
            if data_paths:
                argv += ["--data-paths", ",".join(data_paths)]
            if libvirt and agent.libvirtd is None:
                agent.libvirtd = Libvirtd(root=agent.data_dir / "libvirt", netns=agent.netns)
                agent.libvirtd.start()
            if agent.libvirtd is not None:
                # (No save images: networked and volume guests boot afresh anyway.)
                argv += ["--vm-driver", "libvirt", "--vm-snapshots", "0"]
                argv = [*agent.libvirtd.enter(), *hidden(client_dir, argv)]
            else:
                argv = ["ip", "netns", "exec", agent.netns, *hidden(client_dir, argv)]
            with open(agent.log, "ab") as log:
                agent.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            if wait:
                poll(lambda: c.phase(name) == "Ready", timeout=20)
            return agent

        c.start_agent = start_agent
        yield c
    finally:
        for a in agents.values():
            _stop(a.proc)
        for a in agents.values():
            if a.libvirtd is not None:
                a.libvirtd.stop()
        _stop(server)
        for proxy in proxies:
            proxy.close()
        for thing in reversed(made):
            if thing.startswith("netns:"):
                _ip("netns", "del", thing[6:], check=False)
            else:
                _ip("link", "del", thing, check=False)
