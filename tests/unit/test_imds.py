# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_imds against the IMDSv2 emulator (real HTTP on 127.0.0.1; never 169.254.169.254)."""

from __future__ import annotations

import json
import socket
import time
from urllib.error import HTTPError
from urllib.request import ProxyHandler, Request, build_opener

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._imds import (
    DEFAULT_ENDPOINT,
    Imds,
    endpoint_from_env,
)
from tests.ec2_endpoint.imds import ImdsServer

ENV = ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "AWS_EC2_METADATA_DISABLED",
       "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    srv = ImdsServer(region="eu-west-1").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def closed_port():
    """A port on 127.0.0.1 that nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def raw(url, method="GET", headers=None):
    """Status and body of one plain HTTP request (no proxy)."""
    req = Request(url, method=method, headers=headers or {}, data=b"" if method == "PUT" else None)
    try:
        with build_opener(ProxyHandler({})).open(req, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except HTTPError as e:
        return e.code, e.read().decode()


# --- the emulator speaks IMDSv2 and only IMDSv2 ---------------------------------------------


def test_emulator_refuses_imdsv1_and_bad_tokens(server):
    base = server.url
    assert raw(base + "/latest/meta-data/instance-id")[0] == 401  # IMDSv1: no token
    assert raw(base + "/latest/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": "forged"})[0] == 401
    assert raw(base + "/latest/api/token", "PUT")[0] == 400  # TTL header missing
    assert raw(base + "/latest/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "0"})[0] == 400
    assert raw(base + "/latest/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "21601"})[0] == 400
    assert raw(base + "/latest/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "60",
                                                   "X-Forwarded-For": "10.0.0.1"})[0] == 403
    status, token = raw(base + "/latest/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    assert status == 200 and token
    auth = {"X-aws-ec2-metadata-token": token}
    assert raw(base + "/latest/meta-data/instance-id", headers=auth) == (200, server.instance_id)
    assert raw(base + "/latest/meta-data/placement/", headers=auth) == (200, "availability-zone\nregion")
    assert "placement/" in raw(base + "/latest/meta-data/", headers=auth)[1].split("\n")
    assert raw(base + "/latest/meta-data/nothing-here", headers=auth)[0] == 404
    status, body = raw(base + "/latest/dynamic/instance-identity/document", headers=auth)
    doc = json.loads(body)
    assert (doc["instanceId"], doc["region"], doc["availabilityZone"]) == (
        server.instance_id, server.region, server.availability_zone)
    server.expire_tokens()
    assert raw(base + "/latest/meta-data/instance-id", headers=auth)[0] == 401
    assert [r[2] for r in server.requests] == [401, 401, 400, 400, 400, 403, 200, 200, 200, 200, 404, 200, 401]


def test_emulator_identity_defaults_and_changes():
    srv = ImdsServer(region="us-east-2")
    assert srv.instance_id.startswith("i-") and len(srv.instance_id) == 19
    assert srv.availability_zone == "us-east-2a"
    srv.set_identity(region="ap-northeast-1")
    assert srv.availability_zone == "ap-northeast-1a"
    srv.set_identity(instance_id="i-0123456789abcdef0", az="ap-northeast-1c")
    assert (srv.instance_id, srv.region, srv.availability_zone) == (
        "i-0123456789abcdef0", "ap-northeast-1", "ap-northeast-1c")
    assert srv.url is None  # not started: nothing bound


# --- the client ------------------------------------------------------------------------------


def test_instance_identity_and_get(server):
    imds = Imds(server.url)
    ident = imds.instance_identity()
    assert ident == dict(instance_id=server.instance_id, region=server.region,
                         availability_zone=server.availability_zone)
    assert imds.get("instance-id") == server.instance_id
    assert imds.get("/placement/availability-zone") == server.availability_zone
    assert imds.get("placement/region") == server.region
    # one token for the session, sent with every GET
    methods = [m for m, _path, _status in server.requests]
    assert methods == ["PUT", "GET", "GET", "GET", "GET"]
    assert all(status == 200 for _m, _p, status in server.requests)

    server.set_identity(instance_id="i-0fedcba9876543210", region="eu-central-1", az="eu-central-1b")
    assert imds.instance_identity() == dict(instance_id="i-0fedcba9876543210", region="eu-central-1",
                                            availability_zone="eu-central-1b")


def test_token_is_a_fresh_put_each_call(server):
    imds = Imds(server.url)
    t1, t2 = imds.token(), imds.token()
    assert t1 and t2 and t1 != t2
    assert [r[:2] for r in server.requests] == [("PUT", "/latest/api/token")] * 2


def test_refused_token_is_renewed_once(server):
    imds = Imds(server.url)
    assert imds.get("instance-id") == server.instance_id
    server.expire_tokens()
    assert imds.get("instance-id") == server.instance_id
    assert [(m, s) for m, _p, s in server.requests] == [("PUT", 200), ("GET", 200), ("GET", 401), ("PUT", 200),
                                                        ("GET", 200)]


def test_service_that_never_accepts_the_token_fails_without_a_retry_storm(server, monkeypatch):
    monkeypatch.setattr(server, "_token_valid", lambda token: False)
    with pytest.raises(StillpointError) as e:
        Imds(server.url).instance_identity()
    msg = e.value.msg
    assert msg.startswith("Could not find the instance id from IMDS at %s" % server.url)
    assert "HTTP 401" in msg and "instance_id" in msg and "AWS_EC2_METADATA_SERVICE_ENDPOINT" in msg
    assert e.value.details["status"] == 401
    assert [m for m, _p, _s in server.requests] == ["PUT", "GET", "PUT", "GET"]


def test_unreachable_endpoint(closed_port):
    url = "http://127.0.0.1:%d" % closed_port
    t0 = time.monotonic()
    with pytest.raises(StillpointError) as e:
        Imds(url, timeout=1.0).instance_identity()
    assert time.monotonic() - t0 < 2
    msg = e.value.msg
    assert msg.startswith("Could not find the instance id from IMDS at %s" % url)
    assert "pass instance_id explicitly" in msg.lower() and "AWS_EC2_METADATA_SERVICE_ENDPOINT" in msg
    assert e.value.details["endpoint"] == url


def test_silent_endpoint_times_out_quickly():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)  # accepts the TCP handshake, never answers
    try:
        url = "http://127.0.0.1:%d" % s.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(StillpointError) as e:
            Imds(url, timeout=0.3).instance_identity()
        assert time.monotonic() - t0 < 1.5
        assert url in e.value.msg and "not reachable" in e.value.msg
    finally:
        s.close()


def test_endpoint_precedence(server, closed_port, monkeypatch):
    assert endpoint_from_env() == DEFAULT_ENDPOINT
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv6")
    assert endpoint_from_env() == "http://[fd00:ec2::254]"
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url + "/")
    assert endpoint_from_env() == server.url  # the variable beats the default, slash dropped
    assert Imds().instance_identity()["instance_id"] == server.instance_id
    dead = "http://127.0.0.1:%d" % closed_port
    assert endpoint_from_env(dead) == dead  # the explicit option beats the variable
    with pytest.raises(StillpointError) as e:
        Imds(dead).instance_identity()
    assert dead in e.value.msg
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", dead)
    assert Imds(server.url).instance_identity()["instance_id"] == server.instance_id
    with pytest.raises(StillpointError) as e:
        endpoint_from_env("169.254.169.254")
    assert "must be a URL" in e.value.msg


def test_proxy_variables_are_ignored(server, closed_port, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:%d" % closed_port)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:%d" % closed_port)
    assert Imds(server.url).instance_identity()["instance_id"] == server.instance_id


def test_disabled_by_environment(server, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StillpointError) as e:
        Imds(server.url).instance_identity()
    assert "AWS_EC2_METADATA_DISABLED" in e.value.msg and "instance_id" in e.value.msg
    assert server.requests == []


def test_incomplete_identity_document(server):
    server.set_identity(instance_id="")
    with pytest.raises(StillpointError) as e:
        Imds(server.url).instance_identity()
    assert "Could not find the instance id" in e.value.msg and "instanceId" in e.value.msg
