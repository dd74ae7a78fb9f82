# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_restore.same_snapshot_proof against the strict EC2 endpoint (real HTTP on 127.0.0.1).

The proof is what drbd_skip_initial_sync needs before ``new-current-uuid --clear-bitmap``:
both sides' backing volumes were created from one snapshot of one complete backup set. The set is made
by ebs_snapshot_set's own library (SnapshotSetRun: one CreateSnapshots, member tags, wait, complete
mark); the volumes by CreateVolume from its snapshots.

The module tests at the end run drbd_skip_initial_sync's main() against this endpoint, with the DRBD commands replayed
from the lab's captures (tests/unit/test_drbd.py): the proof, check mode, and an EC2 error on the way.
"""

import pytest

from ansible_collections.amazon.aws.plugins.module_utils.retries import RetryingBotoClientWrapper

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _restore as restore
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.modules import drbd_skip_initial_sync

from tests.unit.test_drbd import CLEAR, DISK, GET_GI, RES, SH_LL_DEV, cap, run_drbd_module, status

AZ = "eu-west-1a"
DEVICES = ("/dev/sdf", "/dev/sdg")


@pytest.fixture(scope="module")
def mirror_set(ec2_endpoint):  # noqa: F811
    """A complete two-member set of one instance, and a volume from each member."""
    ec2_endpoint.reset()
    raw = ec2_endpoint.client()
    client = RetryingBotoClientWrapper(raw, ebs.RETRY)
    world = ec2_endpoint.create_instance(az=AZ, volumes=[{"size": 1, "device": d} for d in DEVICES])
    plan = ebs.plan_members(ebs.describe_instance(client, world["instance_id"]))
    set_id = catalog.new_set_id()
    ec2_endpoint.pending(0, calls=1)  # this set's snapshots complete at once
    run = ebs.SnapshotSetRun(client, plan, set_id, name="drbd-proof", host="vma")
    result = run.run(ebs.NoQuiesce(), wait=True, wait_timeout=30, poll_interval=0.1)
    assert result["state"] == "complete", result
    snaps = [m["snapshot_id"] for m in result["members"]]

    def volume(snapshot_id):
        return raw.create_volume(AvailabilityZone=AZ, SnapshotId=snapshot_id, VolumeType="gp3")["VolumeId"]
    return {"client": client, "raw": raw, "set_id": set_id, "snaps": snaps, "world": world, "volume": volume}


def test_proof_for_two_volumes_of_one_snapshot(ec2, mirror_set):
    m = mirror_set
    a, b = m["volume"](m["snaps"][0]), m["volume"](m["snaps"][0])
    proof = restore.same_snapshot_proof(m["client"], m["set_id"], [a, b])
    # what EC2 says, read back independently of the library
    sources = {v["VolumeId"]: v["SnapshotId"] for v in m["raw"].describe_volumes(VolumeIds=[a, b])["Volumes"]}
    assert sources == {a: m["snaps"][0], b: m["snaps"][0]}
    assert proof["same_snapshot"] is True and proof["set_id"] == m["set_id"]
    assert proof["snapshot_id"] == m["snaps"][0] and proof["member_index"] == 0 and proof["volumes"] == sources
    assert proof["level"] == "crash"
    c, d = m["volume"](m["snaps"][1]), m["volume"](m["snaps"][1])
    second = restore.same_snapshot_proof(m["client"], m["set_id"], [c, d])
    assert second["snapshot_id"] == m["snaps"][1] and second["member_index"] == 1
    assert [c["action"] for c in ec2.calls() if not c["action"].startswith("Describe")] == [
        "CreateVolume", "CreateVolume", "CreateVolume", "CreateVolume"]  # the proof itself changes nothing


def test_refused_for_volumes_of_two_snapshots(ec2, mirror_set):
    m = mirror_set
    a, b = m["volume"](m["snaps"][0]), m["volume"](m["snaps"][1])
    with pytest.raises(StillpointError, match="different snapshots of set %s" % m["set_id"]) as info:
        restore.same_snapshot_proof(m["client"], m["set_id"], [a, b])
    assert info.value.details["sources"] == {a: m["snaps"][0], b: m["snaps"][1]}


def test_refused_for_a_volume_not_from_the_set(ec2, mirror_set):
    m = mirror_set
    a = m["volume"](m["snaps"][0])
    source = m["world"]["volumes"][0]["volume_id"]  # the original: it was never made from a snapshot
    blank = m["raw"].create_volume(AvailabilityZone=AZ, Size=1, VolumeType="gp3")["VolumeId"]
    for other, why in ((source, "no snapshot"), (blank, "no snapshot")):
        with pytest.raises(StillpointError, match="%s \\(from %s\\) were not created from a snapshot of backup set"
                           % (other, why)):
            restore.same_snapshot_proof(m["client"], m["set_id"], [a, other])
    # a snapshot of the same volume, but outside the set
    stray = m["raw"].create_snapshot(VolumeId=source)["SnapshotId"]
    ec2.pending(0, snapshot_ids=[stray])
    foreign = m["volume"](stray)
    with pytest.raises(StillpointError, match="%s \\(from %s\\)" % (foreign, stray)):
        restore.same_snapshot_proof(m["client"], m["set_id"], [a, foreign])


def test_refused_for_a_missing_volume(ec2, mirror_set):
    m = mirror_set
    a = m["volume"](m["snaps"][0])
    missing = "vol-0123456789abcdef0"
    assert m["raw"].describe_volumes(Filters=[{"Name": "volume-id", "Values": [missing]}])["Volumes"] == []
    with pytest.raises(StillpointError, match="volumes %s do not exist" % missing):
        restore.same_snapshot_proof(m["client"], m["set_id"], [a, missing])


@pytest.mark.parametrize("count", [0, 1, "same twice"])
def test_refused_for_a_single_volume(ec2, mirror_set, count):
    m = mirror_set
    a = m["volume"](m["snaps"][0])
    ids = {0: [], 1: [a], "same twice": [a, a]}[count]
    with pytest.raises(StillpointError, match="needs the backing volumes of both sides"):
        restore.same_snapshot_proof(m["client"], m["set_id"], ids)


def test_refused_for_an_unknown_or_pending_set(ec2, mirror_set):
    m = mirror_set
    a, b = m["volume"](m["snaps"][0]), m["volume"](m["snaps"][0])
    with pytest.raises(StillpointError, match="is not in the catalog"):
        restore.same_snapshot_proof(m["client"], catalog.new_set_id(), [a, b])
    # the same set with its complete mark removed is pending: no proof from it
    m["raw"].delete_tags(Resources=m["snaps"], Tags=[{"Key": catalog.K_STATE}])
    try:
        with pytest.raises(StillpointError, match="still pending, not complete"):
            restore.same_snapshot_proof(m["client"], m["set_id"], [a, b])
    finally:
        m["raw"].create_tags(Resources=m["snaps"], Tags=[{"Key": catalog.K_STATE, "Value": "complete"}])


# -- drbd_skip_initial_sync, end to end ---------------------------------------------------------------------

def skip_args(ec2, set_id, volume_ids):
    return dict(name=RES, set_id=set_id, volume_ids=volume_ids, endpoint_url=ec2.url, region=ec2.region,
                access_key="testing", secret_key="testing")


def test_module_skips_the_initial_resync_with_the_proof(ec2, mirror_set, monkeypatch):
    m = mirror_set
    a, b = m["volume"](m["snaps"][0]), m["volume"](m["snaps"][0])
    fresh = status("84-status-connected-inconsistent", proc="84-proc-connected-inconsistent")
    # check mode: before, sh-ll-dev, the proof, the planned clear (one status), after
    planned, lab = run_drbd_module(monkeypatch, drbd_skip_initial_sync, [fresh, SH_LL_DEV, fresh, fresh],
                                   skip_args(ec2, m["set_id"], [a, b]), check_mode=True, volumes={DISK: a})
    lab.done()
    assert planned["changed"] is True and planned["proof"]["snapshot_id"] == m["snaps"][0], planned
    assert planned["actions"] == [{"what": "skip the initial resync of %s (snapshot %s)" % (RES, m["snaps"][0]),
                                   "cmd": CLEAR, "rc": None, "ms": None, "planned": True}]
    # the real run: wait for the connection (connected at once), then the refusal checks and the clear
    steps = [fresh, SH_LL_DEV, fresh,  # before, sh-ll-dev, wait_connected()
             fresh, (GET_GI, cap("84-getgi-both-fresh")), (CLEAR, cap("84-clear-bitmap")),  # clear_bitmap()
             status("84-status-uptodate-verbose", proc="84-proc-after-clear-bitmap")]  # after
    done, lab = run_drbd_module(monkeypatch, drbd_skip_initial_sync, steps, skip_args(ec2, m["set_id"], [a, b]),
                                volumes={DISK: a})
    lab.done()
    assert done["changed"] is True and "failed" not in done, done
    sources = {v["VolumeId"]: v["SnapshotId"] for v in m["raw"].describe_volumes(VolumeIds=[a, b])["Volumes"]}
    assert done["proof"]["volumes"] == sources and done["proof"]["local_volume"] == a
    assert done["proof"]["same_snapshot"] is True and done["proof"]["set_id"] == m["set_id"]
    assert [(x["cmd"], x["rc"], x["planned"]) for x in done["actions"]] == [(CLEAR, 0, False)]
    assert m["snaps"][0] in done["actions"][0]["what"] and isinstance(done["actions"][0]["ms"], float)


def test_module_refuses_volumes_of_two_snapshots(ec2, mirror_set, monkeypatch):
    m = mirror_set
    a, b = m["volume"](m["snaps"][0]), m["volume"](m["snaps"][1])
    fresh = status("84-status-connected-inconsistent")
    result, lab = run_drbd_module(monkeypatch, drbd_skip_initial_sync, [fresh, SH_LL_DEV],
                                  skip_args(ec2, m["set_id"], [a, b]), volumes={DISK: a})
    lab.done()
    assert result["failed"] and "different snapshots of set %s" % m["set_id"] in result["msg"], result
    assert result["sources"] == {a: m["snaps"][0], b: m["snaps"][1]} and result["actions"] == []


def test_module_ec2_error_during_the_proof_is_a_clear_failure(ec2, mirror_set, monkeypatch):
    m = mirror_set
    a, b = m["volume"](m["snaps"][0]), m["volume"](m["snaps"][0])
    fresh = status("84-status-connected-inconsistent")
    ec2.fail_next("DescribeVolumes", "UnauthorizedOperation", "injected: not allowed", status=403)
    result, lab = run_drbd_module(monkeypatch, drbd_skip_initial_sync, [fresh, SH_LL_DEV],
                                  skip_args(ec2, m["set_id"], [a, b]), volumes={DISK: a})
    lab.done()
    assert result["failed"] and "UnauthorizedOperation" in result["msg"] and "injected: not allowed" in result["msg"]
    assert result["error_code"] == "UnauthorizedOperation" and result["actions"] == [], result
    assert CLEAR not in lab.calls
