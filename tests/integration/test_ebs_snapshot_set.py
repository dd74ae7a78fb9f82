# -*- coding: utf-8 -*-
"""ebs_snapshot_set end to end: ansible-playbook on localhost, real freezes of loop filesystems that
the tests created, a real HTTP EC2 endpoint on 127.0.0.1 (tests/ec2_endpoint)."""

import json
import os
import time

import pytest
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog

from tests.support.loopfs import missing_requirements
from tests.support.loopfs import probe_frozen
from tests.support.world import EmulatedInstance
from tests.support.world import run_playbook
from tests.support.world import write_playbook

pytestmark = pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements()))

TASK = "take set"


def set_task(ec2, inst, **args):
    params = {
        "mountpoints": inst.mountpoints,
        "by_id_dir": inst.by_id_dir,
        "endpoint_url": ec2.url,
        "region": ec2.region,
        "poll_interval": 0.2,
        "name": "itest",
    }
    params.update(args)
    return {"name": TASK, "stillpoint.snapshots.ebs_snapshot_set": params, "register": "out"}


def run(tmp_path, ec2, inst, check=False, **args):
    book = write_playbook(tmp_path, [set_task(ec2, inst, **args)])
    rc, results, _raw = run_playbook(book, ec2, check=check)
    return rc, results[TASK]


def set_snapshots(ec2, set_id):
    client = ec2.client()
    snaps = client.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:stillpoint:set-id", "Values": [set_id]}])["Snapshots"]
    return sorted(snaps, key=lambda s: catalog.member_record(s)["index"])


def all_own_snapshot_ids(ec2):
    return {s["SnapshotId"] for s in ec2.client().describe_snapshots(OwnerIds=["self"])["Snapshots"]}


def assert_thawed(inst):
    for mp in inst.mountpoints:
        assert not probe_frozen(mp), "%s left frozen" % mp


@pytest.fixture
def inst(ec2):
    with EmulatedInstance(ec2, n=3) as emulated:
        yield emulated
        assert_thawed(emulated)


@pytest.mark.parametrize("mode", ["host", "controller"])
def test_set_complete_one_call_catalog_recorded(tmp_path, ec2, inst, mode):
    # long enough for several progress samples even on a loaded machine (3 s was eaten at load 8: the
    # thaw and tagging before the first poll took longer there)
    ec2.pending(8, calls=1)
    rc, res = run(tmp_path, ec2, inst, mode=mode)
    assert rc == 0, res.get("msg")
    assert res["changed"] is True
    assert res["state"] == "complete"
    assert res["level"] == "filesystem"
    assert res["create_calls"] == 1
    assert len(ec2.calls("CreateSnapshots")) == 1
    assert ec2.calls("CreateSnapshot") == []
    # permissions and parameters were checked with DryRun before anything was frozen
    dry = ec2.calls("CreateSnapshots", dry_run=None)
    assert len(dry) == 1 and dry[0]["error_code"] == "DryRunOperation"
    assert dry[0]["t_end"] <= ec2.calls("CreateSnapshots")[0]["t_start"]
    assert res["freeze_window_ms"] > 0
    assert [m["volume_id"] for m in res["members"]] == inst.volume_ids
    # progress was sampled while the endpoint kept the snapshots pending
    assert any(st == "pending" for s in res["progress"] for st in s["states"].values())
    snaps = set_snapshots(ec2, res["set_id"])
    assert [s["VolumeId"] for s in snaps] == inst.volume_ids
    for i, snap in enumerate(snaps):
        tags = {t["Key"]: t["Value"] for t in snap["Tags"]}
        assert snap["State"] == "completed"
        assert tags["stillpoint:state"] == "complete"
        assert tags["stillpoint:level"] == "filesystem"
        assert tags["stillpoint:schema"] == "2"
        assert tags["stillpoint:members"] == "3"
        # schema 2: every member carries the one member map, in member order, and no tags of its own
        assert json.loads(tags["stillpoint:member-map"]) == [
            [inst.volume_ids[j], "/dev/sd%s" % "fgh"[j], inst.mountpoints[j]] for j in range(3)]
        assert not [k for k in tags if k in ("stillpoint:member", "stillpoint:device", "stillpoint:source-volume")]
        member = catalog.member_record(snap)
        assert (member["index"], member["device"], member["source_volume"], member["mountpoints"]) == \
            (i, "/dev/sd%s" % "fgh"[i], inst.volume_ids[i], [inst.mountpoints[i]])
        assert tags["stillpoint:instance"] == inst.instance_id
        assert tags["stillpoint:creator"] == "stillpoint.snapshots"
        assert float(tags["stillpoint:freeze-ms"]) == pytest.approx(res["freeze_window_ms"], abs=0.001)
        layout = json.loads("".join(tags[k] for k in sorted(tags) if k.startswith("stillpoint:array")))
        assert layout["filesystems"] == [{"mountpoint": mp, "fstype": "ext4", "options": "rw,relatime",
                                          "members": [j]} for j, mp in enumerate(inst.mountpoints)]
    # the array descriptor names every member: not sent per member inside the freeze, but once, after the thaw,
    # in the CreateTags that writes the level for all of them
    [call] = ec2.calls("CreateSnapshots")
    sent = [v for k, v in call["params"].items() if k.endswith(".Key")]
    assert "stillpoint:set-id" in sent and not [k for k in sent if k.startswith("stillpoint:array")]
    with_array = [c for c in ec2.calls("CreateTags") if "stillpoint:array" in c["params"].values()]
    assert len(with_array) == 1
    assert sorted(v for k, v in with_array[0]["params"].items() if k.startswith("ResourceId")) == \
        sorted(s["SnapshotId"] for s in snaps)
    assert with_array[0]["t_start"] > call["t_end"]
    # the level, the descriptor and the member map in that one call; then only the complete mark: 2 CreateTags a set
    assert "stillpoint:member-map" in with_array[0]["params"].values()
    assert len(ec2.calls("CreateTags")) == 2


def test_check_mode_touches_nothing(tmp_path, ec2, inst):
    before = all_own_snapshot_ids(ec2)
    rc, res = run(tmp_path, ec2, inst, check=True)
    assert rc == 0, res.get("msg")
    assert res["changed"] is True
    assert res["plan"]["freeze"] == inst.mountpoints
    assert [m["volume_id"] for m in res["plan"]["members"]] == inst.volume_ids
    assert res["plan"]["level"] == "filesystem"
    assert all_own_snapshot_ids(ec2) == before
    mutating = [c for c in ec2.calls() if not c["action"].startswith("Describe")]
    assert mutating == []


def test_rerun_with_set_id_is_idempotent(tmp_path, ec2, inst):
    rc, first = run(tmp_path, ec2, inst, set_id="bs-itest-idem")
    assert rc == 0 and first["state"] == "complete"
    ec2.clear_calls()
    rc, second = run(tmp_path, ec2, inst, set_id="bs-itest-idem")
    assert rc == 0
    assert second["changed"] is False
    assert second["state"] == "complete"
    assert ec2.calls("CreateSnapshots") == []
    assert second["snapshot_ids"] == first["snapshot_ids"]


def test_api_failure_mid_freeze_thaws_and_leaves_no_snapshot(tmp_path, ec2, inst):
    before = all_own_snapshot_ids(ec2)
    ec2.fail_next("CreateSnapshots", "InternalError", "injected failure")
    rc, res = run(tmp_path, ec2, inst)
    assert rc != 0
    assert "CreateSnapshots failed" in res["msg"] and "filesystems thawed, nothing created" in res["msg"]
    assert all_own_snapshot_ids(ec2) == before
    assert_thawed(inst)


@pytest.mark.parametrize("pending", [1.0, 0.05], ids=["fails-while-waiting", "failed-before-the-wait"])
def test_failed_member_rolls_back_whole_set(tmp_path, ec2, inst, pending):
    before = all_own_snapshot_ids(ec2)
    ec2.pending(pending, calls=1)  # 0.05 s: the member is in error before the first wait poll
    ec2.fail_member(1)
    rc, res = run(tmp_path, ec2, inst)
    assert rc != 0
    assert "snapshot set failed" in res["msg"] and "the whole set was deleted" in res["msg"]
    if pending < 0.5:  # seen by the host-mode waiting run (existing_set), not during a wait
        assert "snapshots in error" in res["msg"] and "(set %s)" % res["set_id"] in res["msg"]
    assert len(res["rollback"]["deleted"]) == 3
    assert all_own_snapshot_ids(ec2) == before
    assert len(ec2.calls("DeleteSnapshot")) == 3


def test_throttling_thaws_backs_off_and_completes(tmp_path, ec2, inst):
    ec2.throttle("CreateSnapshots", count=2, code="RequestLimitExceeded")
    rc, res = run(tmp_path, ec2, inst, max_freeze_cycles=3)  # re-freezing only when allowed
    assert rc == 0, res.get("msg")
    assert res["state"] == "complete"
    assert res["create_calls"] == 3
    assert res["cycles"] == 3
    statuses = [c["error_code"] for c in ec2.calls("CreateSnapshots")]
    assert statuses == ["RequestLimitExceeded", "RequestLimitExceeded", None]


def test_per_volume_rate_backoff_is_at_least_15s(tmp_path, ec2, inst):
    ec2.throttle("CreateSnapshots", count=1, code="SnapshotCreationPerVolumeRateExceeded")
    rc, res = run(tmp_path, ec2, inst, max_freeze_cycles=2)
    assert rc == 0, res.get("msg")
    calls = ec2.calls("CreateSnapshots")
    assert [c["error_code"] for c in calls] == ["SnapshotCreationPerVolumeRateExceeded", None]
    assert calls[1]["t_start"] - calls[0]["t_end"] >= 15.0


def test_throttling_while_the_application_is_held_is_not_retried(tmp_path, ec2, inst):
    """A held quiescer (here the generic held hook) is not held through a back-off: one call, then the run thaws,
    releases the application and fails, nothing created."""
    before = all_own_snapshot_ids(ec2)
    released = tmp_path / "released"
    hook = ["sh", "-c", "echo READY; cat >/dev/null; echo released > %s" % released]
    ec2.throttle("CreateSnapshots", count=1, code="RequestLimitExceeded")
    rc, res = run(tmp_path, ec2, inst, application="held_hook", application_hook=hook)
    assert rc != 0
    assert "while the application was held; not retried" in res["msg"], res["msg"]
    assert [c["error_code"] for c in ec2.calls("CreateSnapshots")] == ["RequestLimitExceeded"]
    assert released.read_text().strip() == "released"
    assert all_own_snapshot_ids(ec2) == before
    assert_thawed(inst)


def test_pre_hook_failure_aborts_before_anything(tmp_path, ec2, inst):
    before = all_own_snapshot_ids(ec2)
    rc, res = run(tmp_path, ec2, inst, pre_hook=["false"])
    assert rc != 0
    assert "pre-freeze hook" in res["msg"] and "nothing was frozen or snapshotted" in res["msg"]
    assert ec2.calls("CreateSnapshots") == []
    assert all_own_snapshot_ids(ec2) == before


def test_pre_hook_failure_continue_records_filesystem(tmp_path, ec2, inst):
    rc, res = run(tmp_path, ec2, inst, pre_hook=["false"], on_hook_failure="continue")
    assert rc == 0, res.get("msg")
    assert res["level"] == "filesystem"


def test_hooks_ok_give_application_level_and_run_in_order(tmp_path, ec2, inst):
    log = tmp_path / "hooks.log"
    rc, res = run(tmp_path, ec2, inst, pre_hook=["sh", "-c", "echo pre >> %s" % log],
                  post_hook=["sh", "-c", "echo post >> %s" % log])
    assert rc == 0, res.get("msg")
    assert res["level"] == "application"
    assert log.read_text().split() == ["pre", "post"]
    # the hooks are the commands this run ran: actions in the collection's one result shape
    assert [(a["what"], a["cmd"], a["rc"], a["planned"]) for a in res["actions"]] == [
        ("pre-freeze hook", ["sh", "-c", "echo pre >> %s" % log], 0, False),
        ("post-thaw hook", ["sh", "-c", "echo post >> %s" % log], 0, False)]
    assert all(a["ms"] >= 0 and a["timed_out"] is False for a in res["actions"])


@pytest.mark.parametrize("mode", ["host", "controller"])
def test_check_mode_plans_the_hooks_and_runs_none(tmp_path, ec2, inst, mode):
    log = tmp_path / "hooks.log"
    rc, res = run(tmp_path, ec2, inst, check=True, mode=mode, pre_hook=["sh", "-c", "echo pre >> %s" % log])
    assert rc == 0, res.get("msg")
    assert res["changed"] is True and res["msg"].startswith("check mode: would freeze ")
    assert res["actions"] == [dict(what="pre-freeze hook", cmd=["sh", "-c", "echo pre >> %s" % log], rc=None, ms=None,
                                   planned=True)]
    assert not log.exists()
    assert [c for c in ec2.calls() if not c["action"].startswith("Describe")] == []


def test_no_mountpoints_is_crash_consistent(tmp_path, ec2, inst):
    rc, res = run(tmp_path, ec2, inst, mountpoints=[], volume_ids=inst.volume_ids[:2])
    assert rc == 0, res.get("msg")
    assert res["level"] == "crash"
    assert res["freeze"] == {"mounts": []}
    assert [m["volume_id"] for m in res["members"]] == inst.volume_ids[:2]


def test_quiesced_level_is_recorded_without_a_freeze_and_refused_with_one(tmp_path, ec2, inst):
    # volumes quiesced elsewhere (a DRBD secondary split off under a freeze): the set says so
    rc, res = run(tmp_path, ec2, inst, mountpoints=[], volume_ids=inst.volume_ids[:1], quiesced_level="filesystem",
                  procedure="drbd_mirror_backup")
    assert rc == 0, res.get("msg")
    assert res["level"] == "filesystem"
    tags = {t["Key"]: t["Value"] for t in set_snapshots(ec2, res["set_id"])[0]["Tags"]}
    assert tags["stillpoint:level"] == "filesystem"
    assert tags["stillpoint:procedure"] == "drbd_mirror_backup"
    # with a freeze of its own the run decides the level itself: the claim is refused before anything
    calls = len(ec2.calls("CreateSnapshots"))
    rc, res = run(tmp_path, ec2, inst, quiesced_level="filesystem")
    assert rc != 0
    assert "quiesced_level is for sets taken without a freeze" in res["msg"]
    assert len(ec2.calls("CreateSnapshots")) == calls
    assert_thawed(inst)


def test_refuses_root_filesystem(tmp_path, ec2, inst):
    rc, res = run(tmp_path, ec2, inst, mountpoints=["/"], exclude_boot_volume=True)
    assert rc != 0
    assert "/" in res["msg"]
    assert ec2.calls("CreateSnapshots") == []


def test_refuses_part_of_an_array(tmp_path, ec2, inst):
    rc, res = run(tmp_path, ec2, inst, exclude_volume_ids=[inst.volume_ids[0]])
    assert rc != 0
    assert "refusing to snapshot part of a filesystem or array" in res["msg"]
    assert ec2.calls("CreateSnapshots") == []


def test_snapshot_holds_content_as_of_the_call(tmp_path, ec2):
    with EmulatedInstance(ec2, n=2, backed=True) as inst:
        for i, mp in enumerate(inst.mountpoints):
            with open(os.path.join(mp, "data.txt"), "w") as handle:
                handle.write("before-%d\n" % i)
        rc, res = run(tmp_path, ec2, inst)
        assert rc == 0, res.get("msg")
        for mp in inst.mountpoints:
            with open(os.path.join(mp, "data.txt"), "w") as handle:
                handle.write("after\n")
            os.sync()
        for i, member in enumerate(res["members"]):
            image = ec2.snapshot_file(member["snapshot_id"])
            with open(image, "rb") as handle:
                blob = handle.read()
            assert ("before-%d\n" % i).encode() in blob
        assert_thawed(inst)


def test_guardian_deadline_during_call_lowers_level(tmp_path, ec2, inst):
    ec2.latency("CreateSnapshots", 1500)
    t0 = time.monotonic()
    rc, res = run(tmp_path, ec2, inst, freeze_deadline=0.5)
    assert rc == 0, res.get("msg")
    assert res["thaw"]["deadline_thawed"] is True
    assert res["level"] == "crash"
    tags = {t["Key"]: t["Value"] for t in set_snapshots(ec2, res["set_id"])[0]["Tags"]}
    assert tags["stillpoint:level"] == "crash"
    assert time.monotonic() - t0 < 60


def test_a_member_map_too_large_for_the_catalog_falls_back_to_the_members_own_tags(tmp_path, ec2):
    """Catalog schema 2 writes the members' records as one member map (at most 8 tag values, 2048 characters). An
    instance with more volumes than that holds (56 here: some instance types take 128 EBS volumes) gets no map and
    one CreateTags per member after the level, as schema 1 did, and its set reads complete all the same."""
    devices = ["/dev/xvd%s%s" % (a, b) for a in "bcd" for b in "abcdefghijklmnopqrstuvwxyz"][:56]
    world = ec2.create_instance(volumes=[{"size": 1, "device": d} for d in devices])
    volume_ids = [v["volume_id"] for v in world["volumes"]]
    task = {"name": TASK, "register": "out", "stillpoint.snapshots.ebs_snapshot_set": {
        "mode": "controller", "instance_id": world["instance_id"], "volume_ids": volume_ids, "name": "wide",
        "endpoint_url": ec2.url, "region": ec2.region, "poll_interval": 0.2}}
    ec2.clear_calls()
    rc, results, _raw = run_playbook(write_playbook(tmp_path, [task]), ec2)
    res = results[TASK]
    assert rc == 0 and res["state"] == "complete" and res["level"] == "crash", res
    [record] = catalog.group_sets(set_snapshots(ec2, res["set_id"]))
    assert record["state"] == "complete" and record["schema"] == "2"
    members = [(m["index"], m["device"], m["source_volume"]) for m in record["members"]]
    assert members == [(i, devices[i], volume_ids[i]) for i in range(56)]
    tags_calls = ec2.calls("CreateTags")
    keys = [set(v for k, v in c["params"].items() if k.endswith(".Key")) for c in tags_calls]
    assert not [k for ks in keys for k in ks if k.startswith("stillpoint:member-map")]
    # the level (one call for all), one call per member, the complete mark
    assert len(tags_calls) == 1 + 56 + 1
    assert "stillpoint:level" in keys[0] and all("stillpoint:member" in ks for ks in keys[1:-1])
    assert keys[-1] == {"stillpoint:state"}
