# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_set_copy against the strict EC2 endpoint (real HTTP on 127.0.0.1): two regions, two accounts.

Source sets are made the way ebs_snapshot_set makes them (one CreateSnapshots call with the set tags, one
CreateTags with the member map, the complete mark). The module runs in-process (set_module_args pattern); the
destination is eu-central-1 of the same endpoint, the second account is STS AssumeRole into 210987654321
(``Endpoint.account_credentials``). Calls are counted in the endpoint's call log.
"""

import time
import uuid

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _copy
from ansible_collections.stillpoint.snapshots.plugins.modules import backup_set_copy
from ansible_collections.stillpoint.snapshots.plugins.modules import backup_set_info
from tests.unit.utils import run_module

DEST = "eu-central-1"
CHANGING = ("Create", "Copy", "Delete", "Modify", "Attach", "Detach")


def run(monkeypatch, module, args, check_mode=False):
    return run_module(monkeypatch, module.main, args, check_mode)


def changing(ep):
    return [(c["action"], c["region"]) for c in ep.calls() if c["action"].startswith(CHANGING)]


class Source:
    """An instance with ``n`` data volumes in the endpoint's region and sets of it in the catalog."""

    def __init__(self, ep, n=3):
        self.ep = ep
        self.client = ep.client()
        self.world = ep.create_instance(volumes=[{"size": 1, "device": "/dev/sd%s" % "fghij"[i]} for i in range(n)])
        self.name = "copy-%s" % uuid.uuid4().hex[:8]

    def take(self, state="complete"):
        set_id = catalog.new_set_id()
        shared = catalog.set_tags(set_id, self.name, len(self.world["volumes"]), self.world["instance_id"],
                                  self.world["az"], "db1", "filesystem", freeze_ms=12.0,
                                  array={"kind": "md", "level": 0})
        items = self.client.create_snapshots(
            InstanceSpecification={"InstanceId": self.world["instance_id"], "ExcludeBootVolume": True},
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": catalog.to_tag_list(shared)}])["Snapshots"]
        by_volume = dict((it["VolumeId"], it["SnapshotId"]) for it in items)
        ids = [by_volume[v["volume_id"]] for v in self.world["volumes"]]
        map_tags, _per_member = catalog.member_catalog_tags([(index, vol["device"], vol["volume_id"], ["/srv/data"])
                                                             for index, vol in enumerate(self.world["volumes"])])
        self.client.create_tags(Resources=ids, Tags=catalog.to_tag_list(map_tags))
        self.ep.pending(0, snapshot_ids=ids)
        if state in ("complete", "partial"):
            self.client.create_tags(Resources=ids, Tags=[{"Key": catalog.K_STATE, "Value": state}])
        self.ep.clear_calls()  # the log holds the module's calls only
        return set_id, ids

    def args(self, set_id, **kw):
        out = dict(endpoint_url=self.ep.url, access_key="testing", secret_key="testing", region=self.ep.region,
                   set_id=set_id, destination_region=DEST, poll_interval=0.1, wait_timeout=30)
        out.update(kw)
        return out


def copies(ep, key, region=DEST, credentials=None):
    snaps = ep.client(region=region, credentials=credentials).describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:%s" % _copy.K_COPY_OF, "Values": [key]}])["Snapshots"]
    return sorted(snaps, key=lambda s: catalog.as_int(catalog.tag_dict(s["Tags"]).get(catalog.K_MEMBER), -1))


@pytest.fixture(scope="module")
def source(ec2_endpoint):
    return Source(ec2_endpoint)


def test_copy_to_a_second_region_check_mode_run_and_rerun(monkeypatch, ec2, source):
    set_id, src_ids = source.take()
    plan = run(monkeypatch, backup_set_copy, source.args(set_id), check_mode=True)
    assert plan["changed"] is True, plan
    assert [p["source_snapshot_id"] for p in plan["planned"]["copy"]] == src_ids
    assert changing(ec2) == []  # check mode: describes only

    began = time.monotonic()
    res = run(monkeypatch, backup_set_copy, source.args(set_id))
    took = time.monotonic() - began
    assert res["changed"] is True and res["state"] == "complete", res
    assert res["copy_calls"] == 3 and res["source_set_id"] == set_id and res["set_id"] != set_id
    assert catalog.SET_ID_RE.match(res["set_id"]) and res["set_id"][:19] == set_id[:19]
    calls = ec2.calls("CopySnapshot")
    assert [(c["region"], c["params"]["SourceRegion"], c["params"]["SourceSnapshotId"]) for c in calls] == \
        [(DEST, ec2.region, sid) for sid in src_ids]
    # pending with progress first, then completed: the wait saw both
    states = [set(s["states"].values()) for s in res["progress"]]
    assert "pending" in states[0] and states[-1] == {"completed"}
    key = _copy.copy_key("123456789012", ec2.region, set_id)
    made = copies(ec2, key)
    assert [s["SnapshotId"] for s in made] == res["snapshot_ids"]
    src_tags = catalog.tag_dict(source.client.describe_snapshots(SnapshotIds=[src_ids[1]])["Snapshots"][0]["Tags"])
    tags = catalog.tag_dict(made[1]["Tags"])
    for k in (catalog.K_SET_NAME, catalog.K_LEVEL, catalog.K_CREATED, catalog.K_INSTANCE, catalog.K_ARRAY,
              catalog.K_MEMBERS, catalog.K_CREATOR, catalog.K_SCHEMA):
        assert tags[k] == src_tags[k], k
    # the source (schema 2) has the member map; the copy has the member's own tags instead (its VolumeId is not
    # the volume the map names)
    src_member = catalog.member_record(source.client.describe_snapshots(SnapshotIds=[src_ids[1]])["Snapshots"][0])
    assert catalog.K_MEMBER_MAP in src_tags and catalog.K_MEMBER_MAP not in tags
    assert (tags[catalog.K_MEMBER], tags[catalog.K_DEVICE], tags[catalog.K_SOURCE_VOLUME]) == \
        ("1", src_member["device"], src_member["source_volume"])
    assert tags[catalog.K_SET_ID] == res["set_id"] and tags[catalog.K_STATE] == "complete"
    assert tags[_copy.K_SOURCE_REGION] == ec2.region and tags[_copy.K_SOURCE_SET_ID] == set_id
    assert tags[_copy.K_SOURCE_ACCOUNT] == "123456789012" and tags[_copy.K_SOURCE_SNAPSHOT] == src_ids[1]
    assert all(catalog.is_ours(s) for s in made)

    info = run(monkeypatch, backup_set_info, dict(endpoint_url=ec2.url, access_key="testing", secret_key="testing",
                                                  region=DEST, name=source.name))
    assert [(s["set_id"], s["state"], s["member_count"]) for s in info["sets"]] == [(res["set_id"], "complete", 3)]
    assert info["sets"][0]["array"] == {"kind": "md", "level": 0}

    ec2.clear_calls()
    again = run(monkeypatch, backup_set_copy, source.args(set_id))
    assert again["changed"] is False and again["state"] == "complete" and again["copy_calls"] == 0, again
    assert [m["action"] for m in again["members"]] == ["keep"] * 3
    assert changing(ec2) == []
    planned = run(monkeypatch, backup_set_copy, source.args(set_id), check_mode=True)
    assert planned["changed"] is False and planned["planned"]["copy"] == []
    print("copy of 3 members: %.2f s, re-run: 0 CopySnapshot calls" % took)


def test_interrupted_copy_converges(monkeypatch, ec2, source):
    set_id, src_ids = source.take()
    first = run(monkeypatch, backup_set_copy, source.args(set_id, wait=False))
    assert first["changed"] is True and first["state"] == "pending" and first["copy_calls"] == 3, first
    key = _copy.copy_key("123456789012", ec2.region, set_id)
    # a member's copy lost meanwhile (the run died before copying it, or someone deleted it)
    ec2.client(region=DEST).delete_snapshot(SnapshotId=first["snapshot_ids"][2])
    ec2.pending(3, snapshot_ids=first["snapshot_ids"][:2])  # still copying when the re-run looks
    ec2.clear_calls()
    second = run(monkeypatch, backup_set_copy, source.args(set_id))
    assert second["state"] == "complete" and second["copy_calls"] == 1, second
    assert [m["action"] for m in second["members"]] == ["wait", "wait", "copy"]
    assert [c["params"]["SourceSnapshotId"] for c in ec2.calls("CopySnapshot")] == [src_ids[2]]
    assert second["snapshot_ids"][:2] == first["snapshot_ids"][:2]
    assert len(copies(ec2, key)) == 3


def test_member_failing_mid_copy_leaves_nothing_then_rerun_completes(monkeypatch, ec2, source):
    set_id, src_ids = source.take()
    key = _copy.copy_key("123456789012", ec2.region, set_id)
    ec2.fail_copy(1, message="copy failed (test)")
    res = run(monkeypatch, backup_set_copy, source.args(set_id))
    assert res.get("failed") and "is error" in res["msg"], res
    assert "whole copy set" in res["msg"] and res["rollback"]["left_partial"] == []
    assert len(res["rollback"]["deleted"]) == 3
    assert copies(ec2, key) == []
    again = run(monkeypatch, backup_set_copy, source.args(set_id))
    assert again["state"] == "complete" and again["copy_calls"] == 3, again


def test_member_failing_and_deletion_refused_leaves_all_partial(monkeypatch, ec2, source):
    set_id, _src = source.take()
    key = _copy.copy_key("123456789012", ec2.region, set_id)
    ec2.fail_copy(0)
    ec2.fail_next("DeleteSnapshot", "UnauthorizedOperation", count=3)
    res = run(monkeypatch, backup_set_copy, source.args(set_id))
    assert res.get("failed") and len(res["rollback"]["left_partial"]) == 3, res
    left = copies(ec2, key)
    assert len(left) == 3 and all(catalog.tag_dict(s["Tags"])[catalog.K_STATE] == "partial" for s in left)
    info = run(monkeypatch, backup_set_info, dict(endpoint_url=ec2.url, access_key="testing", secret_key="testing",
                                                  region=DEST, set_id=res["set_id"]))
    assert [s["state"] for s in info["sets"]] == ["partial"]
    # a re-run deletes the broken copies and copies again
    again = run(monkeypatch, backup_set_copy, source.args(set_id))
    assert again["state"] == "complete" and again["copy_calls"] == 3 and len(again["deleted"]) == 3, again


def test_a_failed_copy_call_removes_this_runs_copies(monkeypatch, ec2, source):
    set_id, _src = source.take()
    key = _copy.copy_key("123456789012", ec2.region, set_id)
    ec2.fail_next("CopySnapshot", "InvalidParameterValue", message="refused (test)", after=2)
    res = run(monkeypatch, backup_set_copy, source.args(set_id))
    assert res.get("failed") and "refused (test)" in res["msg"], res
    assert res["copy_calls"] == 2 and len(res["rollback"]["deleted"]) == 2 and copies(ec2, key) == []
    assert [c["status"] for c in ec2.calls("CopySnapshot")] == [200, 200, 400]
    assert [c["params"]["SnapshotId"] for c in ec2.calls("DeleteSnapshot")] == res["rollback"]["deleted"]


def test_kms_rekey_and_time_based_copy_recorded(monkeypatch, ec2, source):
    set_id, _src = source.take()
    args = source.args(set_id, kms_key_id="alias/dr-backups", completion_duration_minutes=30)
    res = run(monkeypatch, backup_set_copy, args)
    assert res["state"] == "complete", res
    for call in ec2.calls("CopySnapshot"):
        assert call["params"]["Encrypted"] == "true" and call["params"]["KmsKeyId"] == "alias/dr-backups"
        assert call["params"]["CompletionDurationMinutes"] == "30"
    key = _copy.copy_key("123456789012", ec2.region, set_id)
    for snap in copies(ec2, key):
        tags = catalog.tag_dict(snap["Tags"])
        assert snap["Encrypted"] is True and snap["KmsKeyId"] == "alias/dr-backups"
        assert snap["TransferType"] == "time-based" and snap["CompletionDurationMinutes"] == 30
        assert tags[_copy.K_KMS_KEY] == "alias/dr-backups" and tags[_copy.K_COMPLETION_MINUTES] == "30"
    ec2.clear_calls()
    other = run(monkeypatch, backup_set_copy, source.args(set_id, kms_key_id="alias/another"))
    assert other.get("failed") and "another key" in other["msg"] and changing(ec2) == [], other
    bad = run(monkeypatch, backup_set_copy, source.args(set_id, completion_duration_minutes=7))
    assert bad.get("failed") and "15..2880" in bad["msg"] and changing(ec2) == []


def test_refusals_change_nothing(monkeypatch, ec2, source):
    pending_id, _p = source.take(state="pending")
    partial_id, _q = source.take(state="partial")
    complete_id, _c = source.take()
    ec2.clear_calls()
    cases = [
        (source.args(pending_id), "is pending"),
        (source.args(partial_id), "is partial"),
        (source.args("bs-20200101T000000Z-abcdef"), "does not exist"),
        (source.args(complete_id, destination_region=ec2.region), "the source itself"),
    ]
    for args, words in cases:
        res = run(monkeypatch, backup_set_copy, args)
        assert res.get("failed") and words in res["msg"] and "nothing was copied" in res["msg"], (words, res)
    assert changing(ec2) == []


def test_cross_account_copy_with_two_credentials(monkeypatch, ec2, source):
    set_id, src_ids = source.take()
    other = ec2.account_credentials()
    args = source.args(set_id, destination_access_key=other["AWS_ACCESS_KEY_ID"],
                       destination_secret_key=other["AWS_SECRET_ACCESS_KEY"],
                       destination_session_token=other["AWS_SESSION_TOKEN"])
    plan = run(monkeypatch, backup_set_copy, args, check_mode=True)
    assert plan["cross_account"] is True and plan["destination_account"] == other["account_id"], plan
    assert plan["planned"]["share"] == sorted(src_ids) and changing(ec2) == []

    res = run(monkeypatch, backup_set_copy, args)
    assert res["state"] == "complete" and res["copy_calls"] == 3, res
    assert sorted(res["shared"]) == sorted(src_ids) and sorted(res["unshared"]) == sorted(src_ids)
    mods = [(c["region"], c["params"]["OperationType"]) for c in ec2.calls("ModifySnapshotAttribute")]
    assert mods == [(ec2.region, "add")] * 3 + [(ec2.region, "remove")] * 3
    # shared before the first copy, unshared after the complete mark (the last CreateTags)
    shares = [c["seq"] for c in ec2.calls("ModifySnapshotAttribute")]
    assert shares[2] < ec2.calls("CopySnapshot")[0]["seq"] and shares[3] > ec2.calls("CreateTags")[-1]["seq"]
    for sid in src_ids:
        perms = source.client.describe_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission")
        assert perms["CreateVolumePermissions"] == []
    key = _copy.copy_key("123456789012", ec2.region, set_id)
    made = copies(ec2, key, credentials=other)
    assert len(made) == 3 and all(s["OwnerId"] == other["account_id"] for s in made)
    assert copies(ec2, key) == []  # nothing in the source account's destination region
    assert catalog.tag_dict(made[0]["Tags"])[_copy.K_SOURCE_ACCOUNT] == "123456789012"
    info = run(monkeypatch, backup_set_info, dict(
        endpoint_url=ec2.url, access_key=other["AWS_ACCESS_KEY_ID"], secret_key=other["AWS_SECRET_ACCESS_KEY"],
        session_token=other["AWS_SESSION_TOKEN"], region=DEST, set_id=res["set_id"]))
    assert [s["state"] for s in info["sets"]] == ["complete"]

    ec2.clear_calls()
    again = run(monkeypatch, backup_set_copy, args)
    assert again["changed"] is False and again["copy_calls"] == 0 and changing(ec2) == [], again


def test_endpoint_cross_account_copy_needs_the_share(ec2, source):
    set_id, src_ids = source.take()
    other = ec2.account_credentials()
    dest = ec2.client(region=DEST, credentials=other)
    with pytest.raises(Exception) as info:
        dest.copy_snapshot(SourceSnapshotId=src_ids[0], SourceRegion=ec2.region)
    assert "InvalidSnapshot.NotFound" in str(info.value)
    busy = source.client.create_snapshot(VolumeId=source.world["volumes"][0]["volume_id"])["SnapshotId"]
    with pytest.raises(Exception) as info:
        ec2.client(region=DEST).copy_snapshot(SourceSnapshotId=busy, SourceRegion=ec2.region)
    assert "IncorrectState" in str(info.value)  # a pending source
    with pytest.raises(Exception) as info:
        ec2.client(region=DEST).copy_snapshot(SourceSnapshotId=src_ids[0], SourceRegion=ec2.region, KmsKeyId="k")
    assert "InvalidParameterDependency" in str(info.value)


# ----------------------------------------------------------------------------- restore from the copy

def _restore_requirements():
    from tests.support.loopfs import missing_requirements
    return missing_requirements("ext4")


@pytest.mark.skipif(_restore_requirements() is not None, reason=str(_restore_requirements()))
def test_restore_from_the_copy_in_the_other_region(monkeypatch, ec2, tmp_path):
    """Disaster recovery end to end: a set of a local instance (loop devices, ext4 with data) is taken with
    playbooks/backup.yml, copied to eu-central-1 with backup_set_copy; the source instance is then gone, and
    playbooks/restore.yml (role array_restore) restores the COPY onto a new instance in eu-central-1: the same
    bytes come back (checksums equal)."""
    import os
    import subprocess

    from tests.integration.test_restore_playbook import RESTORE
    from tests.integration.test_restore_playbook import backup
    from tests.support.mounts import mounts
    from tests.support.world import EmulatedInstance
    from tests.support.world import checksum
    from tests.support.world import run_playbook
    from tests.support.world import task
    from tests.support.world import write_data

    with EmulatedInstance(ec2, n=2, local=True) as inst:
        sums = write_data(inst.mountpoints)
        mountpoints = list(inst.mountpoints)
        set_id = backup(ec2, inst)["set_id"]
        copy = run(monkeypatch, backup_set_copy, dict(
            endpoint_url=ec2.url, access_key="testing", secret_key="testing", region=ec2.region, set_id=set_id,
            destination_region=DEST, poll_interval=0.1, wait_timeout=30))
        assert copy["state"] == "complete", copy
        for sid, src in zip(copy["snapshot_ids"], copy["members"]):  # the copy's bytes are the source's
            assert checksum(ec2.snapshot_file(sid)) == checksum(ec2.snapshot_file(src["source_snapshot_id"]))
    # the source site is gone (instance, loop devices, files); a new instance in the other region
    by_id = str(tmp_path / "by-id")
    dr = ec2.create_instance(region=DEST, local=True, by_id_dir=by_id, volumes=[])
    dest = ec2.client(region=DEST)
    try:
        ec2.set_imds(instance_id=dr["instance_id"], az=dr["az"], region=DEST)
        ec2.clear_calls()
        rc, res, _raw = run_playbook(RESTORE, ec2, {
            "restore_hosts": "localhost", "restore_become": False, "array_restore_set_id": copy["set_id"],
            "array_restore_instance_id": dr["instance_id"], "array_restore_by_id_dir": by_id,
            "array_restore_aws_endpoint_url": ec2.url, "array_restore_aws_region": DEST,
            "array_restore_device_timeout": 30})
        assert rc == 0, res
        restored = task(res, "Create the volumes from the set in the instance's zone (before any downtime)")
        assert [v["device"] for v in restored["volumes"]] == ["/dev/sdf", "/dev/sdg"]
        assert set(c["region"] for c in ec2.calls() if c["action"] in ("CreateVolume", "AttachVolume")) == {DEST}
        assert all(checksum(p) == s for p, s in sums.items())
    finally:
        for mp in mountpoints:
            if any(m == mp for _s, m, _d in mounts()):
                subprocess.run(["umount", mp], check=False)
        dest.terminate_instances(InstanceIds=[dr["instance_id"]])  # releases its loop devices
        for mp in mountpoints:
            parent = os.path.dirname(mp)
            if parent.startswith("/tmp/stillpoint-local-") and not any(
                    m.startswith(parent + "/") for _s, m, _d in mounts()):
                subprocess.run(["rm", "-rf", parent], check=False)
        ec2.set_imds(region=ec2.region)
