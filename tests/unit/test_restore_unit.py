# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The restore library's pure parts on recorded data.

The set record comes from the recorded catalog (fixtures/catalog/describe_snapshots.json, the 4-member set
of docs/catalog.md); the volume is a DescribeVolumes item recorded from the test endpoint (moto 5.2.5)
after a CreateVolume with the restore tags, its SnapshotId set to member 1's snapshot of that set.
"""

import copy
import hashlib
import json
import os
import re

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _restore as restore
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "catalog", "describe_snapshots.json")
SET_ID = "bs-20240302T020000Z-d4e5f6"
AZ = "eu-west-1a"
RID = "rs-9d1c2b3a4f5e"

RECORDED_VOLUME = {
    "Iops": 3000,
    "Tags": [
        {"Key": "Name", "Value": "pgdata-restore"},
        {"Key": "stillpoint:creator", "Value": "stillpoint.snapshots"},
        {"Key": "stillpoint:device", "Value": "/dev/sdg"},
        {"Key": "stillpoint:member", "Value": "1"},
        {"Key": "stillpoint:restore-id", "Value": "rs-9d1c2b3a4f5e"},
        {"Key": "stillpoint:set-id", "Value": "bs-20240302T020000Z-d4e5f6"},
        {"Key": "stillpoint:source-volume", "Value": "vol-14ee351274d08bc47"},
    ],
    "VolumeType": "gp3",
    "VolumeId": "vol-34a1262119f417768",
    "Size": 8,
    "SnapshotId": "snap-fe2febcc5bad1baac",
    "AvailabilityZone": "eu-west-1a",
    "State": "available",
    "CreateTime": "2026-11-21 13:49:26+00:00",
    "Attachments": [],
    "Encrypted": False,
}


@pytest.fixture(scope="module")
def recorded_set():
    with open(FIXTURE) as f:
        snaps = json.load(f)["Snapshots"]
    return [r for r in catalog.group_sets(snaps) if r["set_id"] == SET_ID][0]


@pytest.fixture
def record(recorded_set):
    return copy.deepcopy(recorded_set)


@pytest.fixture
def volume():
    return copy.deepcopy(RECORDED_VOLUME)


def set_tag(vol, key, value):
    vol["Tags"] = [t for t in vol["Tags"] if t["Key"] != key]
    if value is not None:
        vol["Tags"].append({"Key": key, "Value": value})


# ----------------------------------------------------------------------------- restore_id

def test_restore_id_is_the_documented_digest_and_deterministic():
    rid = restore.restore_id(SET_ID, AZ, "i-0123456789abcdef0")
    expected = hashlib.sha1(("%s|%s|%s" % (SET_ID, AZ, "i-0123456789abcdef0")).encode()).hexdigest()[:12]
    assert rid == "rs-" + expected
    assert re.match(r"^rs-[0-9a-f]{12}$", rid)
    assert restore.restore_id(SET_ID, AZ, "i-0123456789abcdef0") == rid
    # no instance is the empty string in the digest
    assert restore.restore_id(SET_ID, AZ) == restore.restore_id(SET_ID, AZ, "") == \
        "rs-" + hashlib.sha1(("%s|%s|" % (SET_ID, AZ)).encode()).hexdigest()[:12]
    others = {restore.restore_id(SET_ID, AZ), restore.restore_id(SET_ID, "eu-west-1b", "i-0123456789abcdef0"),
              restore.restore_id("bs-20240301T020000Z-a1b2c3", AZ, "i-0123456789abcdef0"), rid}
    assert len(others) == 4


@pytest.mark.parametrize("args", [(None, AZ), (SET_ID, None), ("", AZ)])
def test_restore_id_needs_set_and_zone(args):
    with pytest.raises(StillpointError):
        restore.restore_id(*args)


# ----------------------------------------------------------------------------- plan_restore

def test_plan_creates_every_member_with_all_restore_tags_on_the_create(record):
    plan = restore.plan_restore(record, {}, AZ, tags={"Name": "pgdata-restore"})
    assert plan["restore_id"] == restore.restore_id(SET_ID, AZ) and plan["set_id"] == SET_ID
    assert plan["existing"] == [] and plan["warnings"] == []
    assert [e["index"] for e in plan["to_create"]] == [0, 1, 2, 3]
    for entry, member in zip(plan["to_create"], record["members"]):
        req = entry["request"]
        assert (req["AvailabilityZone"], req["SnapshotId"], req["VolumeType"]) == (AZ, member["snapshot_id"], "gp3")
        assert "Iops" not in req and "Encrypted" not in req and "Size" not in req
        [spec] = req["TagSpecifications"]
        assert spec["ResourceType"] == "volume"
        assert catalog.tag_dict(spec["Tags"]) == {
            "Name": "pgdata-restore",
            restore.K_RESTORE_ID: plan["restore_id"], catalog.K_SET_ID: SET_ID,
            catalog.K_MEMBER: str(member["index"]), catalog.K_DEVICE: member["device"],
            catalog.K_SOURCE_VOLUME: member["source_volume"], catalog.K_CREATOR: catalog.CREATOR}
        assert (entry["device"], entry["source_volume"], entry["size"]) == (
            member["device"], member["source_volume"], member["volume_size"])
    public = restore.public_plan(plan)
    assert [p["snapshot_id"] for p in public] == record["snapshot_ids"]
    assert all("request" not in p for p in public)


def test_plan_restore_id_follows_the_instance_or_an_explicit_one(record):
    assert restore.plan_restore(record, {}, AZ, instance_id="i-0abc")["restore_id"] == \
        restore.restore_id(SET_ID, AZ, "i-0abc")
    assert restore.plan_restore(record, {}, AZ, restore_id="rs-mine")["restore_id"] == "rs-mine"


def test_plan_volume_options(record):
    req = restore.plan_restore(record, {}, AZ, volume_type="io2", iops=8000)["to_create"][0]["request"]
    assert (req["VolumeType"], req["Iops"]) == ("io2", 8000)
    plan = restore.plan_restore(record, {}, AZ, iops=6000, throughput=500, kms_key_id="alias/k")
    req = plan["to_create"][0]["request"]
    assert (req["Iops"], req["Throughput"], req["Encrypted"], req["KmsKeyId"]) == (6000, 500, True, "alias/k")
    req = restore.plan_restore(record, {}, AZ, encrypted=False)["to_create"][0]["request"]
    assert req["Encrypted"] is False


@pytest.mark.parametrize("kwargs, words", [
    ({"volume_type": "io1"}, "io1 needs iops"),
    ({"volume_type": "gp2", "iops": 3000}, "iops applies to"),
    ({"volume_type": "st1", "throughput": 250}, "throughput applies to"),
    ({"kms_key_id": "alias/k", "encrypted": False}, "kms_key_id needs encrypted"),
    ({"volume_type": "gp4"}, "not one of"),
    ({"tags": {"stillpoint:member": "9"}}, "reserved for the catalog: stillpoint:member"),
    ({"tags": dict(("k%d" % i, "v") for i in range(45))}, "45 tags given"),
    ({"tags": {"Name": "x" * 257}}, "tag Name would be 257 characters"),
])
def test_plan_refuses_bad_volume_options(record, kwargs, words):
    with pytest.raises(StillpointError) as info:
        restore.plan_restore(record, {}, AZ, **kwargs)
    assert words in info.value.msg


def test_plan_adopts_an_existing_member_volume(record, volume):
    plan = restore.plan_restore(record, {1: volume}, AZ, restore_id=RID)
    assert [e["index"] for e in plan["to_create"]] == [0, 2, 3]
    assert plan["existing"] == [{
        "index": 1, "volume_id": "vol-34a1262119f417768", "device": "/dev/sdg",
        "snapshot_id": "snap-fe2febcc5bad1baac", "source_volume": "vol-14ee351274d08bc47",
        "availability_zone": AZ, "state": "available", "created": False}]
    assert plan["warnings"] == []
    warned = restore.plan_restore(record, {1: volume}, AZ, volume_type="io1", iops=3000, restore_id=RID)
    assert warned["warnings"] and "is gp3, not io1: kept as it is" in warned["warnings"][0]


def test_plan_refuses_an_existing_volume_in_another_zone(record, volume):
    with pytest.raises(StillpointError) as info:
        restore.plan_restore(record, {1: volume}, "eu-west-1b", restore_id=RID)
    assert info.value.msg.startswith("volume vol-34a1262119f417768 (member 1 of restore %s) is in eu-west-1a, "
                                     "not in eu-west-1b as asked" % RID)


@pytest.mark.parametrize("change, words", [
    (lambda v: v.update(SnapshotId="snap-0a2c93549db21a17c"), "was created from snap-0a2c93549db21a17c"),
    (lambda v: set_tag(v, catalog.K_CREATOR, None), "not made by this restore"),
    (lambda v: set_tag(v, catalog.K_SET_ID, "bs-20240301T020000Z-a1b2c3"), "not made by this restore"),
    (lambda v: v.update(State="error"), "is in state error; delete it"),
])
def test_plan_refuses_a_volume_it_cannot_adopt(record, volume, change, words):
    change(volume)
    with pytest.raises(StillpointError) as info:
        restore.plan_restore(record, {1: volume}, AZ, restore_id=RID)
    assert words in info.value.msg


def test_plan_refuses_a_volume_for_a_member_the_set_does_not_have(record, volume):
    with pytest.raises(StillpointError) as info:
        restore.plan_restore(record, {7: volume}, AZ, restore_id=RID)
    assert "volumes for members 7, but set %s has members 0..3" % SET_ID in info.value.msg


# ----------------------------------------------------------------------------- small decisions

@pytest.mark.parametrize("states, status", [
    ({"a": "available", "b": "in-use"}, "available"),
    ({"a": "available", "b": "creating"}, "creating"),
    ({"a": "creating", "b": "error"}, "error"),
    ({"a": "available", "b": "missing"}, "error"),
    ({"a": "deleting"}, "error"),
])
def test_settle(states, status):
    assert restore.settle(states) == status


def test_fast_snapshot_restore_only_enables_what_is_off():
    states = {"snap-a": "enabled", "snap-b": "optimizing", "snap-c": "enabling", "snap-d": "disabled",
              "snap-e": "disabling"}
    assert restore.fsr_to_enable(states) == ["snap-d", "snap-e"]


def test_restore_tags_refuse_overlong_values():
    member = {"index": 0, "device": "/dev/sdf", "source_volume": "vol-1"}
    assert restore.restore_tags("rs-1", SET_ID, member)[catalog.K_MEMBER] == "0"
    with pytest.raises(StillpointError) as info:
        restore.restore_tags("rs-" + "x" * 300, SET_ID, member)
    assert "stillpoint:restore-id would be 303 characters" in info.value.msg


def test_client_token_fits_ec2s_limit():
    token = restore._client_token("rs-" + "x" * 250, 39, "0123456789ab")
    assert len(token) <= 64
    assert token != restore._client_token("rs-" + "x" * 250, 38, "0123456789ab")
