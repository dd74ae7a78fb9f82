# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""EC2's token buckets in the strict endpoint (tests/ec2_endpoint/_buckets.py), and ebs_snapshot_set against them:
no freeze is held across a throttle, freeze cycles are recorded."""

from __future__ import annotations

import botocore.exceptions
import pytest

from tests.ec2_endpoint import _buckets


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make(**kw):
    clock = Clock()
    b = _buckets.Buckets(clock=clock, account_of=lambda environ: environ.get("account", "111111111111"),
                         volumes_of=lambda account, region, action, params: [params.get("VolumeId", "vol-1")],
                         default_account="111111111111", **kw)
    b.op(on=True)
    return b, clock


def take(b, action, params=None, region="eu-west-1", account="111111111111", dry_run=False):
    fault = b.take({"account": account}, action, region, params or {}, dry_run)
    return None if fault is None else fault["code"]


def burst(b, action, n, **kw):
    return [take(b, action, **kw) for _ in range(n)]


# --------------------------------------------------------------------------- the buckets alone (injected clock)

def test_documented_categories():
    assert _buckets.category("CreateSnapshots") == ("uncategorized", 100, 5.0)
    assert _buckets.category("CreateSnapshot") == ("uncategorized", 100, 5.0)
    assert _buckets.category("CreateTags") == ("uncategorized", 100, 10.0)
    for action in ("CopySnapshot", "AttachVolume", "DetachVolume", "StopInstances", "LockSnapshot"):
        assert _buckets.category(action) == ("mutating", 50, 5.0), action
    assert _buckets.category("AuthorizeSecurityGroupIngress") == ("resource-intensive", 50, 5.0)
    assert _buckets.category("DescribeVolumes") == ("unfiltered-non-mutating", 50, 10.0)
    assert _buckets.category("DescribeVolumes", {"Filter.1.Name": "volume-id"}) == ("non-mutating", 100, 20.0)
    assert _buckets.category("DescribeSnapshots", {"MaxResults": "1000"}) == ("non-mutating", 100, 20.0)
    assert _buckets.category("DescribeLockedSnapshots") == ("non-mutating", 100, 20.0)


def test_burst_beyond_the_size_is_throttled_then_refills_up_to_the_max():
    b, clock = make()
    b.op(per_volume_interval=0)
    assert burst(b, "CreateSnapshots", 100).count(None) == 100  # size 100
    assert take(b, "CreateSnapshots") == "RequestLimitExceeded"
    clock.t += 1.0  # 5 tokens a second
    assert burst(b, "CreateSnapshots", 7).count(None) == 5
    clock.t += 3600.0  # never more than the max
    assert burst(b, "CreateSnapshots", 120).count(None) == 100
    assert b.state()["throttled"]["CreateSnapshots RequestLimitExceeded"] == 1 + 2 + 20


def test_one_bucket_per_action_account_and_region():
    b, clock = make()
    assert burst(b, "AttachVolume", 51).count("RequestLimitExceeded") == 1
    assert take(b, "DetachVolume") is None  # another action
    assert take(b, "AttachVolume", region="us-east-1") is None  # another region
    assert take(b, "AttachVolume", account="222222222222") is None  # another account
    assert take(b, "DescribeVolumes", params={"Filter.1.Name": "x"}) is None
    assert burst(b, "DescribeVolumes", 51).count("RequestLimitExceeded") == 1  # unfiltered: 50, separate
    assert take(b, "DescribeVolumes", params={"MaxResults": "5"}) is None  # the paginated bucket still has tokens


def test_resource_bucket_and_overrides_and_scale():
    b, clock = make()
    b.op(overrides={"StopInstances/resource": [3, 1.0]})
    two = {"InstanceId.1": "i-1", "InstanceId.2": "i-2"}
    assert take(b, "StopInstances", params=two) is None
    assert take(b, "StopInstances", params=two) == "RequestLimitExceeded"  # 1 resource token left, 2 needed
    assert take(b, "StopInstances", params={"InstanceId.1": "i-1"}) is None
    b2, _clock = make()
    b2.op(scale=0.1)
    assert burst(b2, "CreateSnapshots", 11, params={"VolumeId": "y"}).count(None) == 1  # per volume
    b2.op(per_volume_interval=0)
    assert burst(b2, "CreateSnapshots", 11).count(None) == 9  # size 10 at scale 0.1, one taken above


def test_dry_run_option_and_per_volume_rate():
    b, clock = make()
    b.op(levels={"CreateSnapshots": 0})
    assert take(b, "CreateSnapshots", dry_run=True) == "RequestLimitExceeded"
    b.op(dry_run_consumes=False)
    assert take(b, "CreateSnapshots", dry_run=True) is None
    clock.t += 1.0
    assert take(b, "CreateSnapshot", params={"VolumeId": "vol-a"}) is None
    assert take(b, "CreateSnapshot", params={"VolumeId": "vol-a"}) == "SnapshotCreationPerVolumeRateExceeded"
    assert take(b, "CreateSnapshot", params={"VolumeId": "vol-b"}) is None
    clock.t += 15.0
    assert take(b, "CreateSnapshot", params={"VolumeId": "vol-a"}) is None


# --------------------------------------------------------------------------- through the server

def client(ec2, **kw):
    return ec2.client(retries={"total_max_attempts": 1}, **kw)


def code_of(call):
    try:
        call()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    return None, 200


def test_off_by_default_and_reset_turns_them_off(ec2):
    assert ec2.buckets()["on"] is False
    ec2.buckets(on=True)
    ec2.reset()
    state = ec2.buckets()
    assert state["on"] is False and state["levels"] == []


def test_endpoint_burst_refill_shared_and_per_region(ec2):
    ec2.buckets(on=True, overrides={"DescribeVolumes": [3, 0.01]})
    one, two = client(ec2), client(ec2)
    results = [code_of(lambda: (one if i % 2 else two).describe_volumes()) for i in range(5)]
    assert results.count((None, 200)) == 3  # two clients of one account/region share the bucket
    assert results.count(("RequestLimitExceeded", 503)) == 2
    assert code_of(lambda: client(ec2, region_name="us-east-1").describe_volumes()) == (None, 200)
    other = ec2.account_credentials()
    assert code_of(lambda: ec2.client(credentials=other, retries={"total_max_attempts": 1})
                   .describe_volumes()) == (None, 200)  # another account
    calls = ec2.calls("DescribeVolumes")
    assert [c["error_code"] for c in calls].count("RequestLimitExceeded") == 2
    assert all(c["injected"] == "bucket" for c in calls if c["error_code"])
    assert ec2.bucket_level("DescribeVolumes", kind="unfiltered") < 1
    ec2.buckets(advance=100.0)  # 0.01 token/s: one token
    results = [code_of(lambda: one.describe_volumes()) for _ in range(3)]
    assert results.count((None, 200)) == 1
    assert ec2.buckets()["throttled"]["DescribeVolumes RequestLimitExceeded"] == 4


def test_endpoint_dry_run_and_per_volume(ec2):
    inst = ec2.create_instance(volumes=[{"size": 1, "device": "/dev/sdf"}])
    volume_id = inst["volumes"][0]["volume_id"]
    c = client(ec2)
    ec2.buckets(on=True, levels={"CreateSnapshot": 0})
    assert code_of(lambda: c.create_snapshot(VolumeId=volume_id, DryRun=True)) == ("RequestLimitExceeded", 503)
    ec2.buckets(dry_run_consumes=False)
    assert code_of(lambda: c.create_snapshot(VolumeId=volume_id, DryRun=True))[0] == "DryRunOperation"
    ec2.buckets(advance=1.0)
    assert code_of(lambda: c.create_snapshot(VolumeId=volume_id)) == (None, 200)
    assert code_of(lambda: c.create_snapshot(VolumeId=volume_id)) == ("SnapshotCreationPerVolumeRateExceeded", 400)
    ec2.buckets(advance=15.0)
    assert code_of(lambda: c.create_snapshot(VolumeId=volume_id)) == (None, 200)
