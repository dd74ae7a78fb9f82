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
    return [take(b, action, **kw) for _i in range(n)]


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
    results = [code_of((one if i % 2 else two).describe_volumes) for i in range(5)]
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
    results = [code_of(one.describe_volumes) for _i in range(3)]
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


# --------------------------------------------------------------------------- ebs_snapshot_set against the buckets

def _loop_requirements():
    from tests.support.loopfs import missing_requirements
    return missing_requirements()


needs_loops = pytest.mark.skipif(_loop_requirements() is not None, reason=str(_loop_requirements()))
TASK = "take set"


@pytest.fixture
def inst(ec2):
    from tests.support.world import EmulatedInstance
    with EmulatedInstance(ec2, n=2) as emulated:
        yield emulated
        assert_thawed(emulated)


def assert_thawed(inst):
    from tests.support.loopfs import probe_frozen
    for mp in inst.mountpoints:
        assert not probe_frozen(mp), "%s left frozen" % mp


def run_set(tmp_path, ec2, inst, **args):
    from tests.support.world import run_playbook, write_playbook
    params = {"mountpoints": inst.mountpoints, "by_id_dir": inst.by_id_dir, "endpoint_url": ec2.url,
              "region": ec2.region, "poll_interval": 0.2, "name": "buckets"}
    params.update(args)
    book = write_playbook(tmp_path, [{"name": TASK, "stillpoint.snapshots.ebs_snapshot_set": params, "register": "out"}])
    rc, results, _raw = run_playbook(book, ec2)
    return rc, results[TASK]


def drain_hook(ec2, action="CreateSnapshots"):
    """A pre-freeze hook (runs after the DryRun probe, just before the freeze) that empties ``action``'s bucket."""
    import sys
    code = ("import json, urllib.request as u; u.urlopen(u.Request(%r, data=json.dumps({'levels': {%r: 0}}).encode(), "
            "method='POST', headers={'Content-Type': 'application/json'}), timeout=10).read()"
            % (ec2.control_url + "/buckets", action))
    return [sys.executable, "-c", code]


def own_snapshot_ids(ec2):
    return {s["SnapshotId"] for s in ec2.client().describe_snapshots(OwnerIds=["self"])["Snapshots"]}


def set_tags(ec2, set_id):
    snaps = ec2.client().describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:stillpoint:set-id", "Values": [set_id]}])["Snapshots"]
    return [dict((t["Key"], t["Value"]) for t in s["Tags"]) for s in snaps]


def inside(call, interval):
    return interval["frozen_at"] <= call["t_start"] and call["t_end"] <= interval["thawed_at"]


def assert_no_call_across_a_throttle(ec2, intervals):
    """Each real CreateSnapshots lies inside exactly one frozen interval, one call per interval, and every
    freeze after the first is preceded (after the previous thaw) by a DryRun that got through."""
    calls = ec2.calls("CreateSnapshots")
    assert len(calls) == len(intervals)
    for call, interval in zip(calls, intervals):
        assert inside(call, interval), (call, interval)
        assert sum(1 for c in calls if inside(c, interval)) == 1
    dry = ec2.calls("CreateSnapshots", dry_run=None)
    for before, after in zip(intervals, intervals[1:]):
        assert any(d["error_code"] == "DryRunOperation" and before["thawed_at"] <= d["t_start"]
                   and d["t_end"] <= after["frozen_at"] for d in dry), (before, after, dry)


@needs_loops
def test_set_with_buckets_on_freezes_once(tmp_path, ec2, inst):
    ec2.buckets(on=True)
    rc, res = run_set(tmp_path, ec2, inst)
    assert rc == 0, res.get("msg")
    assert res["state"] == "complete" and res["freeze_cycles"] == 1
    assert [t["stillpoint:freeze-cycles"] for t in set_tags(ec2, res["set_id"])] == ["1", "1"]
    assert_no_call_across_a_throttle(ec2, res["freeze_intervals"])


@needs_loops
@pytest.mark.parametrize("mode", ["host", "controller"])
def test_drained_bucket_thaws_and_refuses_by_default(tmp_path, ec2, inst, mode):
    before = own_snapshot_ids(ec2)
    ec2.buckets(on=True, overrides={"CreateSnapshots": [100, 0.001]})
    rc, res = run_set(tmp_path, ec2, inst, pre_hook=drain_hook(ec2), mode=mode)
    assert rc != 0
    assert "RequestLimitExceeded" in res["msg"] and "not retried while frozen" in res["msg"], res["msg"]
    assert "nothing created" in res["msg"] and "max_freeze_cycles" in res["msg"]
    assert res["freeze_cycles"] == 1
    calls = ec2.calls("CreateSnapshots")
    assert [(c["error_code"], c["injected"]) for c in calls] == [("RequestLimitExceeded", "bucket")]
    assert_no_call_across_a_throttle(ec2, res["freeze_intervals"])
    assert own_snapshot_ids(ec2) == before
    assert_thawed(inst)


@needs_loops
def test_drained_bucket_refreezes_only_when_allowed_and_counts_cycles(tmp_path, ec2, inst):
    ec2.buckets(on=True, overrides={"CreateSnapshots": [100, 2.0]})  # a token every 0.5 s once drained
    rc, res = run_set(tmp_path, ec2, inst, pre_hook=drain_hook(ec2), max_freeze_cycles=10, throttle_wait=30)
    assert rc == 0, res.get("msg")
    calls = ec2.calls("CreateSnapshots")
    throttled = [c for c in calls if c["error_code"] == "RequestLimitExceeded"]
    assert len(throttled) >= 1 and calls[-1]["error_code"] is None
    assert res["freeze_cycles"] == len(calls) == len(throttled) + 1 <= 10
    assert_no_call_across_a_throttle(ec2, res["freeze_intervals"])
    tags = set_tags(ec2, res["set_id"])
    assert len(tags) == 2 and all(t["stillpoint:freeze-cycles"] == str(res["freeze_cycles"]) for t in tags)
    assert all(t["stillpoint:state"] == "complete" for t in tags)


@needs_loops
def test_probe_waits_outside_the_freeze_then_refuses(tmp_path, ec2, inst):
    before = own_snapshot_ids(ec2)
    ec2.buckets(on=True, overrides={"CreateSnapshots": [100, 0.0]}, levels={"CreateSnapshots": 0})
    rc, res = run_set(tmp_path, ec2, inst, throttle_wait=1.0)
    assert rc != 0
    assert "throttle_wait" in res["msg"] and "nothing was frozen or created" in res["msg"], res["msg"]
    assert ec2.calls("CreateSnapshots") == []
    dry = ec2.calls("CreateSnapshots", dry_run=None)
    assert len(dry) >= 2 and all(d["error_code"] == "RequestLimitExceeded" for d in dry)
    assert res["freeze_cycles"] == 0 and res["probes"][0]["throttled"] == len(dry)
    assert own_snapshot_ids(ec2) == before


# --------------------------------------------------------------------------- the run's probe and cycles alone

class FakeCall:
    """A call client whose create_snapshots answers from a script of error codes (None: success)."""

    def __init__(self, dry, real, log):
        self.dry, self.real, self.log = list(dry), list(real), log

    def create_snapshots(self, **kw):
        dry = kw.get("DryRun", False)
        code = (self.dry if dry else self.real).pop(0)
        self.log.append(("dry" if dry else "call", code))
        if code is None and not dry:
            return {"Snapshots": [{"VolumeId": "vol-1", "SnapshotId": "snap-1", "State": "pending"}]}
        raise botocore.exceptions.ClientError({"Error": {"Code": code or "DryRunOperation", "Message": "m"}},
                                              "CreateSnapshots")


class FakeQuiescer:
    level = "filesystem"

    def __init__(self, log):
        self.log = log

    def freeze(self):
        self.log.append(("freeze", None))
        return {"mounts": []}

    def thaw(self):
        self.log.append(("thaw", None))
        return {"mounts": [], "window_ms": 1.0, "deadline_thawed": False}


def fake_run(dry, real, **kw):
    from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs
    log, clock = [], Clock()

    def sleep(s):
        log.append(("sleep", s))  # exact: rounded values could sum past the budget
        clock.t += s

    plan = {"instance_id": "i-1", "availability_zone": "eu-west-1a", "exclude_boot_volume": True,
            "exclude_data_volume_ids": [], "members": [{"index": 0, "volume_id": "vol-1", "device": "/dev/sdf"}]}
    run = _ebs.SnapshotSetRun(FakeCall(dry, real, log), plan, "bs-test", sleep=sleep, clock=clock, **kw)
    return run, log


def test_probe_waits_outside_any_freeze_within_its_budget():
    from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
    run, log = fake_run(["RequestLimitExceeded", "RequestLimitExceeded", None], [None])
    items, _froze, _thawed = run.take(FakeQuiescer(log), "filesystem")
    assert [k for k, _v in log].index("freeze") > max(i for i, (k, _v) in enumerate(log) if k in ("dry", "sleep"))
    assert run.probes == [{"cycle": 1, "attempts": 3, "throttled": 2, "waited_s": run.probes[0]["waited_s"]}]
    assert log[-3:] == [("freeze", None), ("call", None), ("thaw", None)] and len(run.cycles) == 1
    run, log = fake_run(["RequestLimitExceeded"] * 100, [], throttle_wait=5.0)
    with pytest.raises(StillpointError) as info:
        run.take(FakeQuiescer(log), "filesystem")
    assert "nothing was frozen or created" in info.value.msg and ("freeze", None) not in log
    assert sum(s for k, s in log if k == "sleep") <= 5.0 + 1e-6
    assert info.value.details["freeze_cycles"] == 0


def test_throttled_in_the_freeze_is_refused_unless_cycles_are_allowed():
    from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
    run, log = fake_run([None], ["RequestLimitExceeded"])
    with pytest.raises(StillpointError) as info:
        run.take(FakeQuiescer(log), "filesystem")
    assert [k for k, _v in log] == ["dry", "freeze", "call", "thaw"]  # no sleep, no second freeze
    assert info.value.details["freeze_cycles"] == 1 and "max_freeze_cycles" in info.value.msg
    run, log = fake_run([None, None], ["RequestLimitExceeded", None], max_cycles=3)
    run.take(FakeQuiescer(log), "filesystem")
    kinds = [k for k, _v in log]
    assert kinds == ["dry", "freeze", "call", "thaw", "sleep", "dry", "freeze", "call", "thaw"]
    assert len(run.cycles) == 2 and [p["cycle"] for p in run.probes] == [1, 2]
