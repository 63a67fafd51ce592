"""Scenario 2 of the seed as written, through the CLI, on three agents in network namespaces:
PostgreSQL 15 from `postgres.nix` as a 3-replica set with a primary on a shared pool, a client
writing through the load balancer's port 5432 with Debian's psql, the primary's agent killed
(`kill -9`): a standby is fenced in and promoted on the volume, every acknowledged row is there,
and `vm status postgres` prints the seed's `postgres primary=..., replicas=[...]`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import poll

SEED = Path(__file__).resolve().parents[1] / "data" / "specs" / "scenario2" / "postgres.nix"
PSQL = "/usr/bin/psql"


def cli(cluster, *args: str, cwd: Path) -> str:
    env = dict(os.environ, BLIXARD_ADDR=cluster.address, BLIXARD_TOKEN=cluster.token)
    out = subprocess.run([sys.executable, "-m", "blixard", *args], env=env, capture_output=True,
                         text=True, timeout=120, cwd=cwd)
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


def status(cluster, cwd: Path) -> dict:
    return json.loads(cli(cluster, "vm", "status", "postgres", "-o", "json", cwd=cwd))["status"]


def psql(address: str, sql: str) -> subprocess.CompletedProcess:
    """`sql` as the seed's app_user on app_db, through `address` (the balancer)."""
    host, port = address.rsplit(":", 1)
    return subprocess.run(
        [PSQL, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", port,
         "-U", "app_user", "-d", "app_db", "-c", sql],
        env=dict(os.environ, PGPASSWORD="secure_password", PGCONNECT_TIMEOUT="3"),
        capture_output=True, text=True, timeout=30)


def test_scenario2_as_written_fails_over_without_losing_a_row(cluster, tmp_path):
    if not Path(PSQL).exists() or not Path("/usr/lib/postgresql/15/bin/postgres").exists():
        pytest.skip("PostgreSQL 15 is missing (scripts/bootstrap installs it)")
    for name in ("node1", "node2", "node3"):
        cluster.start_agent(name)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(SEED, work / "postgres.nix")
    # The pool the seed's `--storage-class replicated` names: a directory every agent sees.
    cli(cluster, "storage", "pool", "create", "ceph-pool", "--type", "shared-dir",
        "--path", str(tmp_path / "shared"), cwd=work)
    # The seed's commands, as written.
    cli(cluster, "vm", "create", "postgres", "--config", "postgres.nix", "--replicas", "3",
        "--storage-class", "replicated", "--storage-size", "100G",
        "--primary-election-policy", "oldest-first", cwd=work)
    cli(cluster, "vm", "start", "postgres", cwd=work)
    st = poll(lambda: (lambda s: s if s.get("primary") and s.get("readyReplicas") == 3
                       and s.get("endpoints") else None)(status(cluster, work)), timeout=120)
    old = st["primary"]
    out = cli(cluster, "vm", "status", "postgres", cwd=work)
    assert f"postgres primary={old}, replicas=[postgres-1, postgres-2, postgres-3]" in out, out
    lb = st["endpoints"][0]["address"]

    # The database the seed's initialScript made, with its settings, through the balancer.
    poll(lambda: psql(lb, "SELECT 1").returncode == 0, timeout=60)
    assert psql(lb, "SHOW max_connections").stdout.strip() == "200"
    assert psql(lb, "SHOW shared_buffers").stdout.strip() == "256MB"
    created = psql(lb, "CREATE SCHEMA app; CREATE TABLE app.orders (id int PRIMARY KEY)")
    assert created.returncode == 0, created.stderr
    acknowledged = []
    for i in range(1, 51):
        if psql(lb, f"INSERT INTO app.orders VALUES ({i})").returncode == 0:
            acknowledged.append(i)
    assert len(acknowledged) == 50

    # The primary's node goes: a standby takes over the volume, PostgreSQL recovers from its WAL.
    node = next(i["node"] for i in st["instances"] if i["name"] == old)
    agent = cluster.agents[node]
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(10)
    st = poll(lambda: (lambda s: s if s.get("primary") not in (None, "", old) else None)(
        status(cluster, work)), timeout=60)
    new = st["primary"]
    poll(lambda: psql(lb, "SELECT 1").returncode == 0, timeout=60)
    rows = psql(lb, "SELECT id FROM app.orders ORDER BY id").stdout.split()
    assert [int(r) for r in rows] == acknowledged, rows
    assert psql(lb, "INSERT INTO app.orders VALUES (51)").returncode == 0
    # The seed's shape: the new primary among the replicas running now (the old one's slot comes
    # back as a standby once it is placed again).
    out = cli(cluster, "vm", "status", "postgres", cwd=work)
    assert f"postgres primary={new}, replicas=[" in out, out
    assert "fenced" in out and "balancer-switched" in out, out
    steps = [s["step"] for s in st["failover"]]
    assert steps[0] == "detected", steps
    poll(lambda: (lambda s: s.get("readyReplicas") == 3 and any(
        i["name"] == old and i.get("role") == "replica" for i in s["instances"]))(
        status(cluster, work)), timeout=60)
