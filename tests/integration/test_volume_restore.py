# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ebs_volume_restore and its library against the strict EC2 endpoint (real HTTP on 127.0.0.1).

Sets are made the way ebs_snapshot_set makes them: one CreateSnapshots call carrying the catalog's
set tags, one CreateTags with the member map, then the complete mark. The module runs in-process with the
set_module_args pattern. The endpoint keeps resources between tests, so every test restores its own
set (the restore id derives from the set id).
"""


import pytest

from ansible_collections.amazon.aws.plugins.module_utils.retries import RetryingBotoClientWrapper

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _restore as restore
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.modules import ebs_volume_restore
from tests.unit.utils import run_module


AZ = "eu-west-1a"
OTHER_AZ = "eu-west-1b"
DEVICES = ("/dev/sdf", "/dev/sdg", "/dev/sdh", "/dev/sdi")
RESTORE_KEYS = (restore.K_RESTORE_ID, catalog.K_SET_ID, catalog.K_MEMBER, catalog.K_DEVICE, catalog.K_SOURCE_VOLUME,
                catalog.K_CREATOR)


@pytest.fixture(scope="module")
def site(ec2_endpoint):  # noqa: F811
    """One client and one 4-volume instance in eu-west-1a for the whole module (instances cost time)."""
    world = ec2_endpoint.create_instance(az=AZ, volumes=[{"size": 1, "device": d} for d in DEVICES])
    return ec2_endpoint.client(), world


def take_set(ep, client, world, state="complete"):
    """A set of ``world``'s data volumes as ebs_snapshot_set records it; ``state``: complete, or pending
    (all snapshots completed, never marked complete). Returns the set id and the snapshots by member index."""
    set_id = catalog.new_set_id()
    shared = catalog.set_tags(set_id, "restore-test", len(world["volumes"]), world["instance_id"], world["az"],
                              "db1", "crash")
    items = client.create_snapshots(
        InstanceSpecification={"InstanceId": world["instance_id"], "ExcludeBootVolume": True},
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": catalog.to_tag_list(shared)}],
        Description="stillpoint.snapshots set %s" % set_id)["Snapshots"]
    by_volume = dict((it["VolumeId"], it["SnapshotId"]) for it in items)
    snaps = [by_volume[vol["volume_id"]] for vol in world["volumes"]]
    map_tags, _per_member = catalog.member_catalog_tags([(index, vol["device"], vol["volume_id"], ["/srv/data"])
                                                         for index, vol in enumerate(world["volumes"])])
    client.create_tags(Resources=snaps, Tags=catalog.to_tag_list(map_tags))
    ep.pending(0, snapshot_ids=snaps)  # copying done
    if state == "complete":
        client.create_tags(Resources=snaps, Tags=[{"Key": catalog.K_STATE, "Value": "complete"}])
    return set_id, snaps


def run(monkeypatch, ep, check_mode=False, **params):
    args = dict(endpoint_url=ep.url, access_key="testing", secret_key="testing", region=ep.region)
    args.update(params)
    return run_module(monkeypatch, ebs_volume_restore.main, args, check_mode)


def volumes_of(client, rid):
    vols = client.describe_volumes(Filters=[{"Name": "tag:%s" % restore.K_RESTORE_ID, "Values": [rid]}])["Volumes"]
    return sorted(vols, key=lambda v: int(catalog.tag_dict(v["Tags"])[catalog.K_MEMBER]))


def endpoint_volumes(client):
    """Every volume with its state, zone, attachments and tags: the endpoint's state for before/after checks."""
    return sorted((v["VolumeId"], v["State"], v["AvailabilityZone"], v.get("SnapshotId"),
                   tuple(sorted((a["InstanceId"], a["Device"]) for a in v.get("Attachments", []))),
                   tuple(sorted(catalog.tag_dict(v.get("Tags")).items())))
                  for v in client.describe_volumes()["Volumes"])


def mutating(ep):
    return [c["action"] for c in ep.calls() if not c["action"].startswith("Describe")]


def make_restored(client, set_id, rid, snaps, world, index, az=AZ):
    """A volume as a restore run leaves it (restore tags on create), made here by hand."""
    member = {"index": index, "device": world["volumes"][index]["device"],
              "source_volume": world["volumes"][index]["volume_id"]}
    tags = restore.restore_tags(rid, set_id, member)
    return client.create_volume(AvailabilityZone=az, SnapshotId=snaps[index], VolumeType="gp3", TagSpecifications=[
        {"ResourceType": "volume", "Tags": catalog.to_tag_list(tags)}])["VolumeId"]


def lib_client(client):
    """The library's view of a boto3 client: calls with ``aws_retry=True`` retry as in the modules."""
    return RetryingBotoClientWrapper(client, ebs.RETRY)


# ----------------------------------------------------------------------------- restore, re-run, check mode

def test_check_mode_restore_and_rerun(monkeypatch, ec2, site):
    client, world = site
    set_id, snaps = take_set(ec2, client, world)
    rid = restore.restore_id(set_id, AZ)

    before = endpoint_volumes(client)
    ec2.clear_calls()
    res = run(monkeypatch, ec2, check_mode=True, set_id=set_id, availability_zone=AZ)
    assert res.get("failed") is not True, res.get("msg")
    assert res["changed"] is True and res["restore_id"] == rid and res["volumes"] == []
    assert [(p["index"], p["snapshot_id"], p["device"], p["availability_zone"]) for p in res["volumes_to_create"]] == [
        (i, snaps[i], DEVICES[i], AZ) for i in range(4)]
    assert endpoint_volumes(client) == before
    assert mutating(ec2) == []

    ec2.clear_calls()
    res = run(monkeypatch, ec2, set_id=set_id, availability_zone=AZ, tags={"Name": "restore-test", "team": "db"})
    assert res.get("failed") is not True, res.get("msg")
    assert res["changed"] is True
    vols = res["volumes"]
    assert [v["index"] for v in vols] == [0, 1, 2, 3]
    assert res["created"] == [v["volume_id"] for v in vols]
    assert all(v["created"] and v["state"] == "available" and v["availability_zone"] == AZ for v in vols)
    creates = ec2.calls("CreateVolume")
    assert len(creates) == 4
    # all four requests went out before the first wait poll
    polls = [c for c in ec2.calls("DescribeVolumes") if c["params"].get("Filter.1.Name") == "volume-id"]
    assert polls and max(c["seq"] for c in creates) < min(c["seq"] for c in polls)
    for c in creates:  # the tags travel with the create, and a retry of the request could never double it
        assert c["params"]["TagSpecification.1.ResourceType"] == "volume"
        assert c["params"]["ClientToken"]
    described = volumes_of(client, rid)
    assert [v["VolumeId"] for v in described] == res["created"]
    for i, vol in enumerate(described):
        tags = catalog.tag_dict(vol["Tags"])
        assert vol["SnapshotId"] == snaps[i] and vol["AvailabilityZone"] == AZ and vol["VolumeType"] == "gp3"
        assert dict((k, tags[k]) for k in RESTORE_KEYS) == {
            restore.K_RESTORE_ID: rid, catalog.K_SET_ID: set_id, catalog.K_MEMBER: str(i),
            catalog.K_DEVICE: DEVICES[i], catalog.K_SOURCE_VOLUME: world["volumes"][i]["volume_id"],
            catalog.K_CREATOR: catalog.CREATOR}
        assert tags["Name"] == "restore-test" and tags["team"] == "db"
        assert vols[i]["source_volume"] == world["volumes"][i]["volume_id"] and vols[i]["device"] == DEVICES[i]

    ec2.clear_calls()
    again = run(monkeypatch, ec2, set_id=set_id, availability_zone=AZ, fast_snapshot_restore=True)
    assert again.get("failed") is not True, again.get("msg")
    assert again["changed"] is False
    assert ec2.calls("CreateVolume") == []
    assert mutating(ec2) == []  # nothing to create: fast snapshot restore is not even asked about
    assert [v["volume_id"] for v in again["volumes"]] == res["created"]
    assert not any(v["created"] for v in again["volumes"]) and again["created"] == []

    check = run(monkeypatch, ec2, check_mode=True, set_id=set_id, availability_zone=AZ)
    assert check["changed"] is False and check["volumes_to_create"] == []
    assert [v["volume_id"] for v in check["volumes"]] == res["created"]


def test_restore_for_an_instance_in_another_zone_with_volume_options(monkeypatch, ec2, site):
    client, world = site
    set_id, snaps = take_set(ec2, client, world)
    target = ec2.create_instance(az=OTHER_AZ, volumes=[])
    res = run(monkeypatch, ec2, set_id=set_id, instance_id=target["instance_id"], volume_type="io1", iops=3000,
              kms_key_id="alias/backup")
    assert res.get("failed") is not True, res.get("msg")
    assert res["availability_zone"] == OTHER_AZ
    assert res["restore_id"] == restore.restore_id(set_id, OTHER_AZ, target["instance_id"])
    described = volumes_of(client, res["restore_id"])
    assert [v["SnapshotId"] for v in described] == snaps
    for vol in described:
        assert (vol["AvailabilityZone"], vol["VolumeType"], vol["Iops"], vol["Encrypted"], vol["KmsKeyId"]) == (
            OTHER_AZ, "io1", 3000, True, "alias/backup")


# ----------------------------------------------------------------------------- interrupted runs

def test_killed_after_two_creates_rerun_creates_only_the_missing(monkeypatch, ec2, site):
    client, world = site
    set_id, snaps = take_set(ec2, client, world)
    rid = restore.restore_id(set_id, AZ)
    # what a run killed after its second CreateVolume leaves behind: two volumes with the restore tags
    left = [make_restored(client, set_id, rid, snaps, world, i) for i in (0, 1)]
    ec2.clear_calls()
    res = run(monkeypatch, ec2, set_id=set_id, availability_zone=AZ)
    assert res.get("failed") is not True, res.get("msg")
    assert res["changed"] is True
    assert [c["params"]["SnapshotId"] for c in ec2.calls("CreateVolume")] == snaps[2:]
    assert [(v["volume_id"], v["created"]) for v in res["volumes"][:2]] == [(left[0], False), (left[1], False)]
    assert all(v["created"] for v in res["volumes"][2:]) and len(res["created"]) == 2
    assert [v["VolumeId"] for v in volumes_of(client, rid)] == [v["volume_id"] for v in res["volumes"]]
    assert ec2.calls("DeleteVolume") == []


def test_third_create_fails_rolls_back_this_runs_volumes_only(monkeypatch, ec2, site):
    client, world = site
    set_id, snaps = take_set(ec2, client, world)
    rid = restore.restore_id(set_id, AZ)
    earlier = make_restored(client, set_id, rid, snaps, world, 3)  # from an earlier, interrupted run
    lib = lib_client(client)
    record = restore.load_set(lib, set_id)
    plan = restore.plan_restore(record, restore.find_restored(lib, rid), AZ)
    assert [e["index"] for e in plan["to_create"]] == [0, 1, 2]
    # between the check and the creates, member 2's snapshot is no longer usable: the endpoint refuses
    # the run's third CreateVolume (IncorrectState), as EC2 does for a snapshot that is not completed
    ec2.pending(30, snapshot_ids=[snaps[2]])
    ec2.clear_calls()
    with pytest.raises(StillpointError) as info:
        restore.create_missing(lib, plan)
    creates = ec2.calls("CreateVolume")
    assert [c["status"] for c in creates] == [200, 200, 400] and creates[2]["error_code"] == "IncorrectState"
    made = [v["VolumeId"] for v in client.describe_volumes(Filters=[
        {"Name": "tag:%s" % restore.K_RESTORE_ID, "Values": [rid]}])["Volumes"]]
    assert made == [earlier]  # the run's own two are gone, the earlier run's volume is kept
    deleted = [c["params"]["VolumeId"] for c in ec2.calls("DeleteVolume")]
    assert len(deleted) == 2 and earlier not in deleted
    err = info.value
    assert sorted(err.details["rollback"]["deleted"]) == sorted(deleted) and err.details["rollback"]["failed"] == []
    assert "CreateVolume failed for member 2" in err.msg and "IncorrectState" in err.msg
    assert "rolled back: deleted %s" % ", ".join(sorted(deleted)) in err.msg
    assert "kept %s from an earlier run" % earlier in err.msg

    ec2.pending(0, snapshot_ids=[snaps[2]])  # the snapshot is fine again: the re-run converges
    res = run(monkeypatch, ec2, set_id=set_id, availability_zone=AZ)
    assert res.get("failed") is not True, res.get("msg")
    assert [v["created"] for v in res["volumes"]] == [True, True, True, False]
    assert res["volumes"][3]["volume_id"] == earlier
    assert [v["SnapshotId"] for v in volumes_of(client, rid)] == snaps


def test_a_member_volume_failing_during_the_wait_rolls_back(ec2, site):
    """The wait sees a member volume fail: this run's volumes are deleted. The endpoint cannot put a volume in
    ``error`` (volumes are ``available`` at once), so here the adopted member's volume vanishes before the wait
    (deleted by someone else), which the wait treats the same way (settle() covers ``error`` on recorded states)."""
    client, world = site
    set_id, snaps = take_set(ec2, client, world)
    rid = restore.restore_id(set_id, AZ)
    earlier = make_restored(client, set_id, rid, snaps, world, 0)
    lib = lib_client(client)
    plan = restore.plan_restore(restore.load_set(lib, set_id), restore.find_restored(lib, rid), AZ)
    client.delete_volume(VolumeId=earlier)
    ec2.clear_calls()
    with pytest.raises(StillpointError) as info:
        restore.create_missing(lib, plan, sleep=lambda s: None)
    made = [c for c in ec2.calls("CreateVolume") if c["status"] == 200]
    assert len(made) == 3
    deleted = sorted(c["params"]["VolumeId"] for c in ec2.calls("DeleteVolume"))
    assert deleted == sorted(info.value.details["rollback"]["deleted"]) and len(deleted) == 3
    assert "%s (member 0) is missing" % earlier in info.value.msg
    assert "rolled back: deleted %s" % ", ".join(deleted) in info.value.msg
    assert volumes_of(client, rid) == []


def test_failed_create_in_the_module_leaves_nothing(monkeypatch, ec2, site):
    client, world = site
    set_id, _snaps = take_set(ec2, client, world)
    rid = restore.restore_id(set_id, AZ)
    ec2.fail_next("CreateVolume", "InsufficientVolumeCapacity", "There is not enough capacity to fulfill your "
                  "EBS volume provision request.")
    ec2.clear_calls()
    res = run(monkeypatch, ec2, set_id=set_id, availability_zone=AZ)
    assert res["failed"] is True
    assert "CreateVolume failed for member 0" in res["msg"] and "InsufficientVolumeCapacity" in res["msg"]
    assert "this run had created no volume" in res["msg"]
    assert len(ec2.calls("CreateVolume")) == 1  # it stopped at the first failure
    assert volumes_of(client, rid) == []


# ----------------------------------------------------------------------------- refusals

def refused(monkeypatch, ec2, **params):
    """The module's refusal message; nothing was created."""
    ec2.clear_calls()
    res = run(monkeypatch, ec2, **params)
    assert res.get("failed") is True, "expected a refusal, got %r" % res
    assert ec2.calls("CreateVolume") == []
    return res["msg"]


def lib_refusal(ec2, client, func, *args):
    """The library's refusal message (each module run costs ~0.4 s of botocore setup: the module-level
    tests above show that the message reaches the task unchanged)."""
    ec2.clear_calls()
    with pytest.raises(StillpointError) as info:
        func(lib_client(client), *args)
    assert mutating(ec2) == []
    return info.value.msg


def test_refuses_unknown_partial_and_pending_sets(monkeypatch, ec2, site):
    client, world = site
    msg = refused(monkeypatch, ec2, set_id="bs-20000101T000000Z-000000", availability_zone=AZ)
    assert "bs-20000101T000000Z-000000 is not in the catalog" in msg

    gone, snaps = take_set(ec2, client, world)
    client.delete_snapshot(SnapshotId=snaps[2])
    msg = refused(monkeypatch, ec2, set_id=gone, availability_zone=AZ)
    assert "backup set %s is partial" % gone in msg and "members missing: 2" in msg

    marked, snaps = take_set(ec2, client, world)
    client.create_tags(Resources=[snaps[1]], Tags=[{"Key": catalog.K_STATE, "Value": "partial"}])
    msg = lib_refusal(ec2, client, restore.load_set, marked)
    assert "backup set %s is partial" % marked in msg and "marked partial" in msg

    unmarked, _snaps = take_set(ec2, client, world, state="pending")
    msg = lib_refusal(ec2, client, restore.load_set, unmarked)
    assert "backup set %s is still pending" % unmarked in msg and "never marked complete" in msg

    copying, snaps = take_set(ec2, client, world)
    ec2.pending(30, snapshot_ids=[snaps[0]])
    msg = lib_refusal(ec2, client, restore.load_set, copying)
    assert "still pending" in msg and "not yet completed in EC2: %s" % snaps[0] in msg


def test_refuses_zone_mismatches_and_duplicate_members(monkeypatch, ec2, site):
    client, world = site
    set_id, snaps = take_set(ec2, client, world)
    rid = "rs-test-%s" % set_id[-6:]
    res = run(monkeypatch, ec2, set_id=set_id, availability_zone=AZ, restore_id=rid)
    assert res.get("failed") is not True, res.get("msg")

    msg = refused(monkeypatch, ec2, set_id=set_id, availability_zone=OTHER_AZ, restore_id=rid)
    first = res["volumes"][0]["volume_id"]
    assert "volume %s (member 0 of restore %s) is in %s, not in %s" % (first, rid, AZ, OTHER_AZ) in msg

    extra = make_restored(client, set_id, rid, snaps, world, 1)
    msg = refused(monkeypatch, ec2, set_id=set_id, availability_zone=AZ, restore_id=rid)
    pair = sorted([res["volumes"][1]["volume_id"], extra])
    assert "more than one volume for member 1: %s, %s" % tuple(pair) in msg and "a human must delete" in msg

    msg = lib_refusal(ec2, client, restore.resolve_availability_zone, OTHER_AZ, world["instance_id"])
    assert "instance %s is in %s, but availability_zone is %s" % (world["instance_id"], AZ, OTHER_AZ) in msg
    msg = lib_refusal(ec2, client, restore.resolve_availability_zone, "eu-west-1z")
    assert "availability zone eu-west-1z is not known" in msg


# ----------------------------------------------------------------------------- fast snapshot restore

def test_fast_snapshot_restore_refused_by_the_endpoint_fails_before_creating(monkeypatch, ec2, site):
    client, world = site
    set_id, _snaps = take_set(ec2, client, world)
    rid = restore.restore_id(set_id, AZ)
    # moto 5.2.5 does not implement the FSR actions: today the endpoint answers HTTP 500 without an EC2 error
    # document ("gave no valid answer"); an endpoint that answered InvalidAction would read "does not support"
    msg = refused(monkeypatch, ec2, set_id=set_id, availability_zone=AZ, fast_snapshot_restore=True)
    assert "DescribeFastSnapshotRestores" in msg and "support fast snapshot restore" in msg
    # what an EC2 endpoint that lacks the feature answers
    ec2.fail_next("DescribeFastSnapshotRestores", "UnsupportedOperation", "The operation is not supported.")
    msg = refused(monkeypatch, ec2, set_id=set_id, availability_zone=AZ, fast_snapshot_restore=True)
    assert "does not support fast snapshot restore (DescribeFastSnapshotRestores answered UnsupportedOperation" in msg
    assert "nothing was created" in msg
    assert volumes_of(client, rid) == []
