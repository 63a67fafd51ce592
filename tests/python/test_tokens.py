"""Tokens through the Python API on the embedded cluster: created with a secret shown once,
listed without it, limited by role and function, revoked by name or id."""

from __future__ import annotations

import datetime as dt

import pytest

from blixard import errors


def test_a_token_is_shown_once_and_listed_without_its_secret(cluster):
    made = cluster.create_token("read", name="reader")
    secret = made["secret"]
    assert secret.startswith("blx_")
    [listed] = cluster.tokens()
    assert listed["metadata"]["name"] == "reader"
    assert listed["spec"]["scopes"] == ["read"]
    assert "secretSha256" not in listed["spec"] and secret not in str(listed)
    assert cluster.revoke_token(listed["spec"]["id"])["metadata"]["name"] == "reader"
    assert cluster.tokens() == []


def test_ttl_takes_seconds_a_timedelta_or_a_duration(cluster):
    for i, ttl in enumerate((3600, dt.timedelta(hours=1), "1h")):
        spec = cluster.create_token("invoke", function="echo", ttl=ttl, name=f"t{i}")["token"]["spec"]
        assert spec["function"] == "echo" and spec["expiresAt"]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"role": "root"}, "role"),
        ({"role": "read", "function": "echo"}, "function"),
        ({"role": "read", "ttl": "soon"}, "ttl"),
        ({"role": "read", "name": "Bad Name"}, "name"),
    ],
)
def test_bad_requests_name_their_field(cluster, kwargs, field):
    with pytest.raises(errors.InvalidSpec) as info:
        cluster.create_token(**kwargs)
    assert info.value.field == field


def test_revoking_an_unknown_token_is_not_found(cluster):
    with pytest.raises(errors.NotFound):
        cluster.revoke_token("nobody")
