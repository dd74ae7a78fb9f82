# -*- coding: utf-8 -*-
"""Planning a set from a DescribeInstances record, pairing results, backoff between cycles."""

import random

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

# Shape of a DescribeInstances Instances[] item (only the fields the planner reads).
INSTANCE = {
    "InstanceId": "i-0123456789abcdef0",
    "RootDeviceName": "/dev/xvda",
    "Placement": {"AvailabilityZone": "eu-west-1a"},
    "BlockDeviceMappings": [
        {"DeviceName": "/dev/xvda", "Ebs": {"VolumeId": "vol-boot"}},
        {"DeviceName": "/dev/sdh", "Ebs": {"VolumeId": "vol-h"}},
        {"DeviceName": "/dev/sdf", "Ebs": {"VolumeId": "vol-f"}},
        {"DeviceName": "/dev/sdg", "Ebs": {"VolumeId": "vol-g"}},
    ],
}


def test_all_data_volumes_by_device_order_boot_excluded():
    plan = ebs.plan_members(INSTANCE)
    assert [m["volume_id"] for m in plan["members"]] == ["vol-f", "vol-g", "vol-h"]
    assert [m["index"] for m in plan["members"]] == [0, 1, 2]
    assert plan["exclude_boot_volume"] is True
    assert plan["exclude_data_volume_ids"] == []
    assert plan["availability_zone"] == "eu-west-1a"


def test_include_keeps_given_order_and_excludes_the_rest_in_the_call():
    plan = ebs.plan_members(INSTANCE, include_volume_ids=["vol-h", "vol-f"], member_order=["vol-h", "vol-f"])
    assert [m["volume_id"] for m in plan["members"]] == ["vol-h", "vol-f"]
    assert plan["exclude_data_volume_ids"] == ["vol-g"]


def test_boot_volume_included_when_named():
    plan = ebs.plan_members(INSTANCE, include_volume_ids=["vol-boot", "vol-f"])
    assert plan["exclude_boot_volume"] is False
    assert {m["volume_id"] for m in plan["members"]} == {"vol-boot", "vol-f"}


def test_boot_volume_included_when_not_excluded():
    plan = ebs.plan_members(INSTANCE, exclude_boot_volume=False)
    assert plan["exclude_boot_volume"] is False
    assert len(plan["members"]) == 4


def test_exclusion_by_id():
    plan = ebs.plan_members(INSTANCE, exclude_volume_ids=["vol-g"])
    assert [m["volume_id"] for m in plan["members"]] == ["vol-f", "vol-h"]
    assert plan["exclude_data_volume_ids"] == ["vol-g"]


def test_refuses_volume_not_attached():
    with pytest.raises(StillpointError) as e:
        ebs.plan_members(INSTANCE, include_volume_ids=["vol-f", "vol-elsewhere"])
    assert "vol-elsewhere is not attached to i-0123456789abcdef0" in e.value.msg


def test_refuses_empty_set():
    with pytest.raises(StillpointError) as e:
        ebs.plan_members(INSTANCE, exclude_volume_ids=["vol-f", "vol-g", "vol-h"])
    assert "no volume left to snapshot" in e.value.msg


def test_match_members_pairs_by_volume_and_reports_differences():
    plan = ebs.plan_members(INSTANCE)
    items = [{"VolumeId": "vol-g", "SnapshotId": "snap-g", "State": "pending"},
             {"VolumeId": "vol-f", "SnapshotId": "snap-f", "State": "pending"},
             {"VolumeId": "vol-x", "SnapshotId": "snap-x", "State": "pending"}]
    members, missing, unexpected = ebs.match_members(plan, items)
    assert [(m["volume_id"], m["snapshot_id"]) for m in members] == [("vol-f", "snap-f"), ("vol-g", "snap-g")]
    assert missing == ["vol-h"]
    assert unexpected == ["snap-x"]


def test_backoff_rate_exceeded_is_at_least_15_seconds():
    backoff = ebs.CycleBackoff(rng=random.Random(1))
    delays = [backoff.delay(ebs.RATE_CODE) for _attempt in range(50)]
    assert min(delays) >= 15.0
    assert max(delays) <= 20.0


def test_backoff_request_limit_is_jittered_and_grows_but_never_zero():
    backoff = ebs.CycleBackoff(base=0.5, cap=20.0, rng=random.Random(2))
    delays = [backoff.delay("RequestLimitExceeded") for _attempt in range(8)]
    for attempt, d in enumerate(delays, start=1):
        step = min(20.0, 0.5 * 2 ** (attempt - 1))
        assert step / 2 <= d <= step
    assert len(set(delays)) == len(delays)  # jittered


def test_create_call_is_one_request_with_exclusions_and_tags():
    calls = []

    class Recorder:
        """Records the request a real client would send (no network)."""

        def create_snapshots(self, **kwargs):
            calls.append(kwargs)
            return {"Snapshots": []}

    plan = ebs.plan_members(INSTANCE, include_volume_ids=["vol-f"])
    ebs.create_call(Recorder(), plan, {"stillpoint:set-id": "bs-x"}, "desc", copy_tags_from_source=True)
    assert len(calls) == 1
    spec = calls[0]["InstanceSpecification"]
    assert spec == {"InstanceId": "i-0123456789abcdef0", "ExcludeBootVolume": True,
                    "ExcludeDataVolumeIds": ["vol-g", "vol-h"]}
    assert calls[0]["CopyTagsFromSource"] == "volume"
    assert calls[0]["TagSpecifications"] == [{"ResourceType": "snapshot",
                                              "Tags": [{"Key": "stillpoint:set-id", "Value": "bs-x"}]}]
