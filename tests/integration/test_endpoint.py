# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The strict EC2 endpoint does what moto alone does not, seen through boto3 over HTTP."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request

import botocore.exceptions
import pytest

from tests.ec2_endpoint import _sparse

MiB = 1 << 20


def no_retry(ec2):
    return ec2.client(retries={"total_max_attempts": 1})


def refused(call, code, status=400):
    """Run ``call``; it must fail with EC2 error ``code`` and HTTP ``status``; returns the message."""
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call()
    error = info.value.response["Error"]
    assert error["Code"] == code, error
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    return error["Message"]


def snapshot(client, snapshot_id):
    return client.describe_snapshots(OwnerIds=["self"], SnapshotIds=[snapshot_id])["Snapshots"][0]


def wait_state(client, snapshot_ids, timeout=5.0):
    """Poll until no snapshot is pending; returns {id: snapshot}."""
    deadline = time.monotonic() + timeout
    while True:
        snaps = dict((s["SnapshotId"], s) for s in
                     client.describe_snapshots(OwnerIds=["self"], SnapshotIds=list(snapshot_ids))["Snapshots"])
        if all(s["State"] != "pending" for s in snaps.values()):
            return snaps
        assert time.monotonic() < deadline, snaps
        time.sleep(0.05)


def volume_states(client, volume_id):
    vol = client.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
    return vol["State"], [a["State"] for a in vol["Attachments"]]


def write_at(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_at(path, offset, size):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def sparse_image(path, size, chunks):
    """A sparse file of ``size`` bytes with ``chunks`` = {offset: bytes} written."""
    with open(path, "wb") as f:
        f.truncate(size)
    for offset, data in chunks.items():
        write_at(path, offset, data)
    return str(path)


# --------------------------------------------------------------------------- snapshot lifecycle

def test_snapshot_is_pending_with_rising_progress_then_completed(ec2):
    client = ec2.client()
    world = ec2.create_instance(volumes=[{"size": 1}])
    volume_id = world["volumes"][0]["volume_id"]
    ec2.pending(0.6)
    t0 = time.monotonic()
    created = client.create_snapshot(VolumeId=volume_id)
    sid = created["SnapshotId"]
    assert created["State"] == "pending"

    pending_ids = [s["SnapshotId"] for s in client.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "status", "Values": ["pending"]}])["Snapshots"]]
    assert sid in pending_ids

    seen = []
    while True:
        snap = snapshot(client, sid)
        seen.append((snap["State"], int(snap["Progress"].rstrip("%"))))
        if snap["State"] != "pending":
            break
        time.sleep(0.08)
    elapsed = time.monotonic() - t0
    assert seen[-1] == ("completed", 100)
    assert elapsed >= 0.6
    progress = [p for state, p in seen if state == "pending"]
    assert progress == sorted(progress), seen
    assert len(set(progress)) >= 3 and all(0 <= p < 100 for p in progress), seen

    completed_ids = [s["SnapshotId"] for s in client.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "status", "Values": ["completed"]}])["Snapshots"]]
    assert sid in completed_ids


def test_pending_time_per_call_and_per_snapshot(ec2):
    client = ec2.client()
    volume_id = ec2.create_instance(volumes=[{"size": 1}])["volumes"][0]["volume_id"]
    ec2.pending(30)
    ec2.pending(0, calls=1)
    first = client.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    second = client.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    assert snapshot(client, first)["State"] == "completed"
    assert snapshot(client, second)["State"] == "pending"
    ec2.pending(0, snapshot_ids=[second])
    assert snapshot(client, second)["State"] == "completed"


def test_marked_snapshot_ends_in_error_after_its_pending_time(ec2):
    client = ec2.client()
    volume_id = ec2.create_instance(volumes=[{"size": 1}])["volumes"][0]["volume_id"]
    ec2.pending(0.3)
    sid = client.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    assert ec2.fail_snapshot(sid, message="disk on fire") == "pending"
    snap = wait_state(client, [sid])[sid]
    assert snap["State"] == "error"
    assert snap["StateMessage"] == "disk on fire"


# --------------------------------------------------------------------------- CreateSnapshots

def test_create_snapshots_items_exclusions_and_tags(ec2):
    client = ec2.client()
    world = ec2.create_instance(volumes=[
        {"size": 1, "device": "/dev/sdf", "tags": {"Name": "data-a", "aws:internal": "x"}},
        {"size": 2, "device": "/dev/sdg", "tags": {"Name": "data-b"}},
        {"size": 3, "device": "/dev/sdh", "tags": {"Name": "data-c"}},
    ])
    iid = world["instance_id"]
    vol_a, vol_b, vol_c = [v["volume_id"] for v in world["volumes"]]
    ec2.pending(5)

    items = client.create_snapshots(
        InstanceSpecification={"InstanceId": iid, "ExcludeBootVolume": True, "ExcludeDataVolumeIds": [vol_c]},
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": "set", "Value": "s1"}]}],
        CopyTagsFromSource="volume")["Snapshots"]
    assert sorted(i["VolumeId"] for i in items) == sorted([vol_a, vol_b])
    sizes = {vol_a: 1, vol_b: 2}
    for item in items:
        assert item["State"] == "pending"
        assert item["Progress"].endswith("%")
        assert item["VolumeSize"] == sizes[item["VolumeId"]]
        assert item["OwnerId"] == "123456789012"
        tags = dict((t["Key"], t["Value"]) for t in item["Tags"])
        assert tags["set"] == "s1"
        assert tags["Name"] == ("data-a" if item["VolumeId"] == vol_a else "data-b")
        assert "aws:internal" not in tags
    assert len(set(i["StartTime"] for i in items)) == 1

    plain = client.create_snapshots(
        InstanceSpecification={"InstanceId": iid},
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": "set", "Value": "s2"}]}])["Snapshots"]
    assert sorted(i["VolumeId"] for i in plain) == sorted([world["boot_volume_id"], vol_a, vol_b, vol_c])
    for item in plain:
        assert dict((t["Key"], t["Value"]) for t in item["Tags"]) == {"set": "s2"}

    message = refused(lambda: client.create_snapshots(InstanceSpecification={
        "InstanceId": iid, "ExcludeDataVolumeIds": [world["boot_volume_id"]]}), "InvalidParameterValue")
    assert "ExcludeBootVolume" in message


def test_fail_member_k_of_the_next_create_snapshots(ec2):
    client = ec2.client()
    world = ec2.create_instance(volumes=[{"size": 1}, {"size": 1}, {"size": 1}])
    ec2.pending(0.3)
    ec2.fail_member(1)
    items = client.create_snapshots(InstanceSpecification={"InstanceId": world["instance_id"],
                                                           "ExcludeBootVolume": True})["Snapshots"]
    again = client.create_snapshots(InstanceSpecification={"InstanceId": world["instance_id"],
                                                           "ExcludeBootVolume": True})["Snapshots"]
    assert all(i["State"] == "pending" for i in items)
    ids = [i["SnapshotId"] for i in items]
    final = wait_state(client, ids + [i["SnapshotId"] for i in again])
    assert [final[sid]["State"] for sid in ids] == ["completed", "error", "completed"]
    assert final[ids[1]]["StateMessage"]
    assert all(final[i["SnapshotId"]]["State"] == "completed" for i in again)


# --------------------------------------------------------------------------- attach / detach

def test_attach_refusals_and_attaching_state(ec2):
    client = ec2.client()
    ec2.delays(attach_seconds=0.3)
    world = ec2.create_instance(az="eu-west-1a", volumes=[{"size": 1, "device": "/dev/sdf"}])
    iid = world["instance_id"]
    in_use = world["volumes"][0]["volume_id"]
    other_az = client.create_volume(Size=1, AvailabilityZone="eu-west-1b")["VolumeId"]
    free = client.create_volume(Size=1, AvailabilityZone="eu-west-1a")["VolumeId"]

    message = refused(lambda: client.attach_volume(VolumeId=other_az, InstanceId=iid, Device="/dev/sdg"),
                      "InvalidVolume.ZoneMismatch")
    assert other_az in message and iid in message
    message = refused(lambda: client.attach_volume(VolumeId=free, InstanceId=iid, Device="/dev/sdf"),
                      "InvalidParameterValue")
    assert "/dev/sdf is already in use" in message
    message = refused(lambda: client.attach_volume(VolumeId=in_use, InstanceId=iid, Device="/dev/sdh"),
                      "VolumeInUse")
    assert in_use in message
    assert volume_states(client, free) == ("available", [])

    assert client.attach_volume(VolumeId=free, InstanceId=iid, Device="/dev/sdg")["State"] == "attaching"
    assert volume_states(client, free) == ("in-use", ["attaching"])
    time.sleep(0.35)
    assert volume_states(client, free) == ("in-use", ["attached"])


def test_detach_refusals_and_detaching_state(ec2):
    client = ec2.client()
    ec2.delays(detach_seconds=0.3)
    one = ec2.create_instance(volumes=[{"size": 1, "device": "/dev/sdf"}])
    two = ec2.create_instance(volumes=[{"size": 1, "device": "/dev/sdf"}])
    volume_id = one["volumes"][0]["volume_id"]

    refused(lambda: client.detach_volume(VolumeId=volume_id, InstanceId=one["instance_id"], Device="/dev/sdz"),
            "InvalidAttachment.NotFound")
    # the other instance has a /dev/sdf too: moto alone would detach the wrong mapping here
    refused(lambda: client.detach_volume(VolumeId=volume_id, InstanceId=two["instance_id"], Device="/dev/sdf"),
            "InvalidAttachment.NotFound")
    assert volume_states(client, volume_id) == ("in-use", ["attached"])
    assert volume_states(client, two["volumes"][0]["volume_id"]) == ("in-use", ["attached"])

    answer = client.detach_volume(VolumeId=volume_id, InstanceId=one["instance_id"], Device="/dev/sdf")
    assert answer["State"] == "detaching"
    assert volume_states(client, volume_id) == ("in-use", ["detaching"])
    refused(lambda: client.attach_volume(VolumeId=volume_id, InstanceId=one["instance_id"], Device="/dev/sdf"),
            "IncorrectState")
    time.sleep(0.35)
    assert volume_states(client, volume_id) == ("available", [])
    refused(lambda: client.detach_volume(VolumeId=volume_id), "IncorrectState")


# --------------------------------------------------------------------------- ownership

def test_owner_self_hides_foreign_snapshots_which_cannot_be_deleted(ec2):
    client = no_retry(ec2)
    world = ec2.create_instance(volumes=[{"size": 1}])
    volume_id = world["volumes"][0]["volume_id"]
    ours = client.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    foreign = ec2.add_foreign_snapshot(volume_id=volume_id, tags={"stillpoint:creator": "stillpoint.snapshots"})

    mine = [s["SnapshotId"] for s in client.describe_snapshots(OwnerIds=["self"])["Snapshots"]]
    assert ours in mine and foreign not in mine
    assert all(s["OwnerId"] == "123456789012" for s in client.describe_snapshots(OwnerIds=["self"])["Snapshots"])
    everyone = [s["SnapshotId"] for s in client.describe_snapshots()["Snapshots"]]
    assert ours in everyone and foreign in everyone
    theirs = [s["SnapshotId"] for s in client.describe_snapshots(OwnerIds=["210987654321"])["Snapshots"]]
    assert theirs == [foreign]
    by_tag = client.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:stillpoint:creator", "Values": ["stillpoint.snapshots"]}])["Snapshots"]
    assert foreign not in [s["SnapshotId"] for s in by_tag]

    refused(lambda: client.delete_snapshot(SnapshotId=foreign), "UnauthorizedOperation")
    refused(lambda: client.create_tags(Resources=[foreign], Tags=[{"Key": "k", "Value": "v"}]),
            "UnauthorizedOperation")
    assert foreign in [s["SnapshotId"] for s in client.describe_snapshots()["Snapshots"]]
    client.delete_snapshot(SnapshotId=ours)
    refused(lambda: client.describe_snapshots(SnapshotIds=[ours]), "InvalidSnapshot.NotFound")


def test_describe_snapshots_paginates(ec2):
    client = ec2.client()
    volume_id = ec2.create_instance(volumes=[{"size": 1}])["volumes"][0]["volume_id"]
    made = set(client.create_snapshot(VolumeId=volume_id)["SnapshotId"] for dummy in range(7))
    pages = list(client.get_paginator("describe_snapshots").paginate(
        OwnerIds=["self"], Filters=[{"Name": "volume-id", "Values": [volume_id]}], PaginationConfig={"PageSize": 5}))
    assert [len(p["Snapshots"]) for p in pages] == [5, 2]
    assert set(s["SnapshotId"] for p in pages for s in p["Snapshots"]) == made


# --------------------------------------------------------------------------- faults

def test_throttling_errors_have_the_real_codes_and_statuses(ec2):
    world = ec2.create_instance(volumes=[{"size": 1}])
    spec = {"InstanceId": world["instance_id"], "ExcludeBootVolume": True}
    strict = no_retry(ec2)

    ec2.throttle("CreateSnapshots", 1)
    refused(lambda: strict.create_snapshots(InstanceSpecification=spec), "RequestLimitExceeded", 503)
    ec2.throttle("CreateSnapshots", 1, code="SnapshotCreationPerVolumeRateExceeded")
    message = refused(lambda: strict.create_snapshots(InstanceSpecification=spec),
                      "SnapshotCreationPerVolumeRateExceeded", 400)
    assert "per volume CreateSnapshot request rate" in message
    assert len(strict.create_snapshots(InstanceSpecification=spec)["Snapshots"]) == 1

    # botocore sees RequestLimitExceeded as throttling and retries it on its own
    ec2.clear_calls()
    ec2.throttle("CreateSnapshots", 1)
    retrying = ec2.client(retries={"mode": "standard", "max_attempts": 2})
    assert len(retrying.create_snapshots(InstanceSpecification=spec)["Snapshots"]) == 1
    calls = ec2.calls("CreateSnapshots")
    assert [(c["status"], c["error_code"], c["injected"]) for c in calls] == [
        (503, "RequestLimitExceeded", "throttle"), (200, None, None)]


def test_fail_next_call_with_any_code(ec2):
    client = no_retry(ec2)
    ec2.fail_next("DescribeVolumes", "UnauthorizedOperation", "You are not authorized to perform this operation.")
    message = refused(client.describe_volumes, "UnauthorizedOperation")
    assert message == "You are not authorized to perform this operation."
    client.describe_volumes()  # only the next call
    ec2.fail_next("DescribeInstances", "InternalError", status=500)
    refused(client.describe_instances, "InternalError", 500)


def test_latency_per_action(ec2):
    client = ec2.client()
    ec2.clear_calls()
    ec2.latency("DescribeVolumes", 300)
    t0 = time.monotonic()
    client.describe_volumes()
    assert time.monotonic() - t0 >= 0.3  # a lower bound: load can only make it longer
    client.describe_instances()
    ec2.latency("DescribeVolumes", 0)
    client.describe_volumes()
    # which calls were delayed is read from the endpoint's log, not guessed from the clock
    calls = [(c["action"], c.get("latency_ms")) for c in ec2.calls()
             if c["action"] in ("DescribeVolumes", "DescribeInstances")]
    assert calls == [("DescribeVolumes", 300), ("DescribeInstances", None), ("DescribeVolumes", None)], calls
    delayed = ec2.calls("DescribeVolumes")[0]
    assert delayed["t_end"] - delayed["t_start"] >= 0.3


def test_reset_clears_faults_and_the_call_log(ec2):
    client = no_retry(ec2)
    ec2.throttle("DescribeVolumes", 5)
    refused(client.describe_volumes, "RequestLimitExceeded", 503)
    assert ec2.calls()
    ec2.reset()
    assert ec2.calls() == []
    client.describe_volumes()
    assert [c["status"] for c in ec2.calls("DescribeVolumes")] == [200]


# --------------------------------------------------------------------------- call log

def test_call_log_counts_calls_per_action(ec2):
    client = no_retry(ec2)
    world = ec2.create_instance(volumes=[{"size": 1}, {"size": 1}])
    assert ec2.calls() == []  # building the world is not logged
    before = time.monotonic()
    client.create_snapshots(InstanceSpecification={"InstanceId": world["instance_id"], "ExcludeBootVolume": True})
    refused(lambda: client.create_snapshots(InstanceSpecification={"InstanceId": "i-00000000000000000"}),
            "InvalidInstanceID.NotFound")
    after = time.monotonic()

    calls = ec2.calls("CreateSnapshots")
    assert len(calls) == 2
    ok, bad = calls
    assert ok["status"] == 200 and ok["error_code"] is None
    assert ok["params"]["InstanceSpecification.InstanceId"] == world["instance_id"]
    assert ok["params"]["InstanceSpecification.ExcludeBootVolume"] == "true"
    assert bad["status"] == 400 and bad["error_code"] == "InvalidInstanceID.NotFound"
    assert before <= ok["t_start"] <= ok["t_end"] <= bad["t_start"] <= bad["t_end"] <= after
    assert ok["seq"] < bad["seq"]
    assert ec2.calls("CreateSnapshot") == []
    assert set(c["action"] for c in ec2.calls()) == {"CreateSnapshots"}


# --------------------------------------------------------------------------- file-backed volumes

def test_snapshot_holds_the_backing_file_as_of_the_call(ec2, tmp_path):
    client = no_retry(ec2)
    old, new = b"before-snapshot!" * 256, b"AFTER-SNAPSHOT!!" * 256
    image = sparse_image(tmp_path / "disk.img", 64 * MiB, {0: old, 40 * MiB: old})
    world = ec2.create_instance(volumes=[{"size": 1, "device": "/dev/sdf", "backing_file": image}])
    volume_id = world["volumes"][0]["volume_id"]
    assert ec2.volume_file(volume_id) == image

    ec2.pending(0.3)
    sid = client.create_snapshots(InstanceSpecification={"InstanceId": world["instance_id"],
                                                         "ExcludeBootVolume": True})["Snapshots"][0]["SnapshotId"]
    write_at(image, 40 * MiB, new)
    snap_file = ec2.snapshot_file(sid)
    assert read_at(snap_file, 40 * MiB, len(old)) == old
    assert os.path.getsize(snap_file) == 64 * MiB
    assert os.stat(snap_file).st_blocks * 512 < 4 * MiB  # holes stayed holes

    refused(lambda: client.create_volume(SnapshotId=sid, AvailabilityZone=world["az"]), "IncorrectState")
    assert wait_state(client, [sid])[sid]["State"] == "completed"
    restored = client.create_volume(SnapshotId=sid, AvailabilityZone=world["az"])["VolumeId"]
    restored_file = ec2.volume_file(restored)
    assert restored_file not in (image, snap_file)
    assert read_at(restored_file, 0, len(old)) == old
    assert read_at(restored_file, 40 * MiB, len(old)) == old
    assert read_at(image, 40 * MiB, len(new)) == new

    client.delete_volume(VolumeId=restored)
    client.delete_snapshot(SnapshotId=sid)
    assert not os.path.exists(restored_file) and not os.path.exists(snap_file)
    assert os.path.exists(image)  # the test's own file is never removed


def test_sparse_copy_of_a_64_mib_image_copies_only_its_data_extents(tmp_path):
    data = os.urandom(MiB)
    chunks = {0: data, 20 * MiB: data * 2, 63 * MiB: data}
    image = sparse_image(tmp_path / "disk.img", 64 * MiB, chunks)
    copy = str(tmp_path / "copy.img")
    copied = _sparse.sparse_copy(image, copy)
    assert 4 * MiB <= copied < 8 * MiB  # the data extents, not the 64 MiB (what makes it take milliseconds)
    assert os.path.getsize(copy) == 64 * MiB
    assert os.stat(copy).st_blocks * 512 < 8 * MiB
    for offset, written in chunks.items():
        assert read_at(copy, offset, len(written)) == written
    assert read_at(copy, 10 * MiB, MiB) == bytes(MiB)


# --------------------------------------------------------------------------- IMDS

def test_imds_reports_the_identity_set_through_the_control_api(ec2):
    world = ec2.create_instance(az="eu-west-1b")
    ec2.set_imds(instance_id=world["instance_id"], az="eu-west-1b")
    token_request = urllib.request.Request(ec2.imds_url + "/latest/api/token", method="PUT",
                                           headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    with urllib.request.urlopen(token_request, timeout=5) as r:
        token = r.read().decode()

    def get(path, headers):
        request = urllib.request.Request(ec2.imds_url + path, headers=headers)
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.read().decode()

    assert get("/latest/meta-data/instance-id", {"X-aws-ec2-metadata-token": token}) == world["instance_id"]
    assert get("/latest/meta-data/placement/availability-zone",
               {"X-aws-ec2-metadata-token": token}) == "eu-west-1b"
    with pytest.raises(urllib.error.HTTPError) as info:
        get("/latest/meta-data/instance-id", {})
    assert info.value.code == 401
    assert ec2.env()["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == ec2.imds_url
    assert "AWS_ENDPOINT_URL" not in ec2.env()


def test_describe_volumes_gives_every_volume_a_snapshot_id(ec2):
    # EC2 answers snapshotId "" for a volume not made from a snapshot; moto omits it (amazon.aws ec2_vol_info
    # indexes it). A volume made from a snapshot keeps its id.
    client = ec2.client()
    blank = client.create_volume(AvailabilityZone=ec2.region + "a", Size=1)["VolumeId"]
    snap = client.create_snapshot(VolumeId=blank)["SnapshotId"]
    wait_state(client, [snap])
    copy = client.create_volume(AvailabilityZone=ec2.region + "a", SnapshotId=snap)["VolumeId"]
    vols = {v["VolumeId"]: v for v in client.describe_volumes(VolumeIds=[blank, copy])["Volumes"]}
    assert vols[blank]["SnapshotId"] == ""
    assert vols[copy]["SnapshotId"] == snap
    assert vols[copy]["Size"] == 1 and vols[blank]["State"] == "available"
