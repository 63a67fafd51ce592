"""Node operations on the embedded cluster (its one in-process node): get, cordon, uncordon,
drain; and what the pools do about them."""

from __future__ import annotations

import time

import pytest

from blixard import errors


def _node(cluster):
    [node] = cluster.nodes()
    return node


def test_the_local_node_is_ready_with_an_epoch_and_counts_what_it_runs(cluster, echo_config):
    node = _node(cluster)
    name = node["metadata"]["name"]
    assert node["status"]["phase"] == "Ready"
    assert int(node["status"]["epoch"]) >= 1
    assert node["spec"]["drivers"] == ["sandbox"]
    fn = cluster.create_function("echo", config=echo_config)
    fn.invoke({"x": 1})
    got = cluster.node(name)
    assert got["status"]["instances"] == 1
    assert int(got["status"]["allocatedMemoryMib"]) == 128


def test_a_cordoned_node_keeps_its_warm_instance_but_takes_no_new_one(cluster, echo_config):
    name = _node(cluster)["metadata"]["name"]
    fn = cluster.create_function("echo", config=echo_config)
    fn.invoke({})
    cordoned = cluster.cordon_node(name)
    assert cordoned["status"]["unschedulable"] is True
    assert fn.invoke({"still": "warm"})["echo"] == {"still": "warm"}
    other = cluster.create_function("other", config=echo_config)
    with pytest.raises(errors.Unavailable, match="1 cordoned"):
        other.invoke({})
    assert "unschedulable" not in cluster.uncordon_node(name)["status"]
    assert other.invoke({"y": 2})["echo"] == {"y": 2}


def test_draining_moves_instances_off_the_node(cluster, echo_config):
    name = _node(cluster)["metadata"]["name"]
    fn = cluster.create_function("echo", config=echo_config)
    fn.invoke({})
    assert fn.status()["instancesWarm"] == 1
    cluster.drain_node(name)
    deadline = time.monotonic() + 10
    while fn.status().get("instances") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not fn.status().get("instances")
    with pytest.raises(errors.Unavailable, match="cordoned"):
        fn.invoke({})


def test_an_unknown_node_is_not_found_naming_it(cluster):
    with pytest.raises(errors.NotFound, match='node "nope"'):
        cluster.node("nope")
    with pytest.raises(errors.NotFound):
        cluster.cordon_node("nope")
