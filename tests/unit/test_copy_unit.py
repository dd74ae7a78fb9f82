# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_set_copy's planning (_copy.py) on recorded DescribeSnapshots output (fixtures/catalog/describe_snapshots.json).

The copies found in a destination are made from the recorded source members with the library's own copy_tags, then
changed only in what a case is about (a copy's EC2 state, a duplicate, a missing member, another key).
"""

import copy
import json
import os

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _copy
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "catalog", "describe_snapshots.json")
NEW = "bs-20240302T020000Z-d4e5f6"
SRC_ACCOUNT, DST_ACCOUNT = "123456789012", "210987654321"
KEY = _copy.copy_key(SRC_ACCOUNT, "eu-west-1", NEW)


@pytest.fixture(scope="module")
def recorded():
    with open(FIXTURE) as f:
        return json.load(f)["Snapshots"]


@pytest.fixture
def source(recorded):
    items = copy.deepcopy(recorded)
    rec = [r for r in catalog.group_sets(items) if r["set_id"] == NEW][0]
    return rec, [s for s in items if s["SnapshotId"] in rec["snapshot_ids"]]


def made_copies(source, state="completed", marked="complete", kms=None):
    """What a finished run leaves in the destination: one copy per member."""
    rec, snaps = source
    cid = _copy.copy_set_id(NEW, SRC_ACCOUNT, "eu-west-1", SRC_ACCOUNT, "eu-central-1")
    out = []
    for i, snap in enumerate(snaps):
        tags = _copy.copy_tags(snap, cid, KEY, "eu-west-1", SRC_ACCOUNT, NEW, kms_key_id=kms, copied="2024-03-02T03:00:00Z")
        tags[catalog.K_STATE] = marked
        out.append({"SnapshotId": "snap-c%016d" % i, "State": state, "Progress": "100%" if state == "completed" else "40%",
                    "StartTime": "2024-03-02T03:00:%02d+00:00" % i, "OwnerId": SRC_ACCOUNT, "VolumeId": "vol-ffffffff",
                    "Tags": catalog.to_tag_list(tags)})
    return out


def by_index(plan):
    return dict((m["index"], m) for m in plan["members"])


def test_copy_set_id_keeps_the_time_is_stable_and_never_the_sources():
    a = _copy.copy_set_id(NEW, SRC_ACCOUNT, "eu-west-1", SRC_ACCOUNT, "eu-central-1")
    assert a == _copy.copy_set_id(NEW, SRC_ACCOUNT, "eu-west-1", SRC_ACCOUNT, "eu-central-1")
    assert catalog.SET_ID_RE.match(a) and a.startswith("bs-20240302T020000Z-") and a != NEW
    assert a != _copy.copy_set_id(NEW, SRC_ACCOUNT, "eu-west-1", DST_ACCOUNT, "eu-central-1")
    assert a != _copy.copy_set_id(NEW, SRC_ACCOUNT, "eu-west-1", SRC_ACCOUNT, "us-east-1")
    # a copy copied back into the source region gets an id of its own, not the source's
    back = _copy.copy_set_id(a, SRC_ACCOUNT, "eu-central-1", SRC_ACCOUNT, "eu-west-1")
    assert back not in (a, NEW)


def test_checks_refuse_with_what_to_do(source):
    rec, _snaps = source
    assert _copy.check_source([rec], NEW, "eu-west-1") is rec
    with pytest.raises(StillpointError, match="does not exist.*backup_set_info"):
        _copy.check_source([rec], "bs-20240101T000000Z-000000", "eu-west-1")
    for state, words in (("pending", "wait for it to complete"), ("partial", "can never become")):
        with pytest.raises(StillpointError, match="is %s.*%s" % (state, words)):
            _copy.check_source([dict(rec, state=state)], NEW, "eu-west-1")
    with pytest.raises(StillpointError, match="schema 3"):
        _copy.check_source([dict(rec, schema="3")], NEW, "eu-west-1")
    assert _copy.check_source([dict(rec, schema="2")], NEW, "eu-west-1")["schema"] == "2"
    with pytest.raises(StillpointError, match="the source itself"):
        _copy.check_destination("eu-west-1", SRC_ACCOUNT, "eu-west-1", SRC_ACCOUNT)
    _copy.check_destination("eu-west-1", SRC_ACCOUNT, "eu-west-1", DST_ACCOUNT)  # another account: fine
    for bad in (0, 7, 2895, 3000):
        with pytest.raises(StillpointError, match="15..2880"):
            _copy.check_options(completion_minutes=bad)
    _copy.check_options(completion_minutes=2880)


def test_copy_tags_carry_the_catalog_and_name_the_source(source):
    _rec, snaps = source
    src = snaps[1]
    src["Tags"].append({"Key": "aws:backup:source-resource", "Value": "x"})
    src["Tags"].append({"Key": "Team", "Value": "db"})
    tags = _copy.copy_tags(src, "bs-20240302T020000Z-0f0f0f", KEY, "eu-west-1", SRC_ACCOUNT, NEW,
                           kms_key_id="alias/dr", completion_minutes=60)
    old = catalog.tag_dict(src["Tags"])
    for k in (catalog.K_CREATOR, catalog.K_SCHEMA, catalog.K_SET_NAME, catalog.K_MEMBERS, catalog.K_MEMBER,
              catalog.K_LEVEL, catalog.K_CREATED, catalog.K_DEVICE, catalog.K_SOURCE_VOLUME, "Team"):
        assert tags[k] == old[k], k
    assert "aws:backup:source-resource" not in tags
    assert tags[catalog.K_SET_ID] == "bs-20240302T020000Z-0f0f0f" and tags[catalog.K_STATE] == "pending"
    assert (tags[_copy.K_COPY_OF], tags[_copy.K_SOURCE_SNAPSHOT], tags[_copy.K_KMS_KEY],
            tags[_copy.K_COMPLETION_MINUTES]) == (KEY, src["SnapshotId"], "alias/dr", "60")
    src["Tags"].extend({"Key": "t%d" % i, "Value": ""} for i in range(40))
    with pytest.raises(StillpointError, match="EC2 allows 50"):
        _copy.copy_tags(src, "bs-x", KEY, "eu-west-1", SRC_ACCOUNT, NEW)


def test_the_copy_of_a_v2_member_carries_its_own_tags_not_the_map(source):
    """A v2 member is found by the volume it was taken of; its copy's VolumeId is not that volume, so the copy
    gets the member's own tags (in CopySnapshot's TagSpecifications: no extra call) and not the map."""
    _rec, snaps = source
    src = snaps[1]
    v1 = catalog.member_record(src)
    old = catalog.tag_dict(src["Tags"])
    src["Tags"] = [t for t in src["Tags"] if t["Key"] not in (catalog.K_MEMBER, catalog.K_DEVICE, catalog.K_SOURCE_VOLUME,
                                                              catalog.K_MOUNTPOINTS)]
    entries = [["vol-other", "/dev/sdz", ""]] * v1["index"] + [[v1["source_volume"], v1["device"], ",".join(v1["mountpoints"])]]
    src["Tags"].append({"Key": catalog.K_MEMBER_MAP, "Value": json.dumps(entries)})
    src["Tags"] = [t if t["Key"] != catalog.K_SCHEMA else {"Key": catalog.K_SCHEMA, "Value": "2"} for t in src["Tags"]]
    assert catalog.member_record(src)["index"] == v1["index"]
    tags = _copy.copy_tags(src, "bs-20240302T020000Z-0f0f0f", KEY, "eu-west-1", SRC_ACCOUNT, NEW)
    for k in (catalog.K_MEMBER, catalog.K_DEVICE, catalog.K_SOURCE_VOLUME, catalog.K_MOUNTPOINTS):
        assert tags[k] == old[k], k
    assert catalog.K_MEMBER_MAP not in tags and tags[catalog.K_SCHEMA] == "2"
    copy_snap = dict(src, SnapshotId="snap-copy", VolumeId="vol-ffffffff", Tags=catalog.to_tag_list(tags))
    assert catalog.member_record(copy_snap)["index"] == v1["index"]


def test_plan_nothing_there_copies_every_member(source):
    rec, snaps = source
    plan = _copy.plan_copy(rec, snaps, [], KEY)
    assert [m["action"] for m in plan["members"]] == ["copy"] * 4
    assert [m["source_snapshot_id"] for m in plan["members"]] == rec["snapshot_ids"]
    assert plan["delete"] == [] and not plan["complete"] and not plan["marked_complete"]


def test_plan_complete_copies_need_nothing(source):
    rec, snaps = source
    plan = _copy.plan_copy(rec, snaps, made_copies(source), KEY)
    assert [m["action"] for m in plan["members"]] == ["keep"] * 4
    assert plan["complete"] and plan["marked_complete"] and plan["delete"] == []
    # completed but never marked (a run died before the mark): complete, still to be marked
    plan = _copy.plan_copy(rec, snaps, made_copies(source, marked="pending"), KEY)
    assert plan["complete"] and not plan["marked_complete"]


def test_plan_interrupted_run_waits_and_copies_what_is_missing(source):
    rec, snaps = source
    found = made_copies(source, state="pending", marked="pending")
    del found[2]
    plan = _copy.plan_copy(rec, snaps, found, KEY)
    assert [m["action"] for m in plan["members"]] == ["wait", "wait", "copy", "wait"]
    assert by_index(plan)[0]["snapshot_id"] == found[0]["SnapshotId"] and by_index(plan)[0]["progress"] == "40%"


def test_plan_deletes_failed_duplicate_stray_and_given_up_copies(source):
    rec, snaps = source
    found = made_copies(source)
    found[0]["State"] = "error"
    dup = copy.deepcopy(found[1])
    dup.update(SnapshotId="snap-dup", State="pending", StartTime="2024-03-02T02:59:00+00:00")
    stray = copy.deepcopy(found[3])
    stray.update(SnapshotId="snap-stray", Tags=[t if t["Key"] != catalog.K_MEMBER else {"Key": catalog.K_MEMBER, "Value": "9"}
                                                for t in stray["Tags"]])
    found[2]["Tags"] = [t if t["Key"] != catalog.K_STATE else {"Key": catalog.K_STATE, "Value": "partial"}
                        for t in found[2]["Tags"]]
    plan = _copy.plan_copy(rec, snaps, found + [dup, stray], KEY)
    assert [m["action"] for m in plan["members"]] == ["copy", "keep", "copy", "keep"]
    assert by_index(plan)[1]["snapshot_id"] == found[1]["SnapshotId"]  # the completed one, not the older pending one
    assert plan["delete"] == sorted([found[0]["SnapshotId"], found[2]["SnapshotId"], "snap-dup", "snap-stray"])
    assert not plan["complete"]


def test_plan_refuses_copies_made_with_another_key(source):
    rec, snaps = source
    with pytest.raises(StillpointError, match="another key than kms_key_id=alias/new.*alias/old"):
        _copy.plan_copy(rec, snaps, made_copies(source, kms="alias/old"), KEY, kms_key_id="alias/new")
    with pytest.raises(StillpointError, match=r"kms_key_id=\(none\)"):
        _copy.plan_copy(rec, snaps, made_copies(source, kms="alias/old"), KEY)
    plan = _copy.plan_copy(rec, snaps, made_copies(source, kms="alias/old"), KEY, kms_key_id="alias/old")
    assert plan["marked_complete"]


class FakeAws:
    region = "eu-west-1"

    def __init__(self):
        self.made = []

    def client(self, service, retry_decorator=None, **extra):
        self.made.append((service, extra))
        return object()


@pytest.mark.parametrize("params, expect, sts", [
    ({}, {"region": "eu-west-1"}, False),
    ({"destination_region": "eu-central-1", "endpoint_url": "http://e"}, {"region": "eu-central-1", "endpoint": "http://e"},
     False),
    ({"destination_profile": "dr"}, {"region": "eu-west-1", "profile_name": "dr", "aws_access_key_id": None,
                                     "aws_secret_access_key": None, "aws_session_token": None}, True),
    ({"destination_access_key": "AK", "destination_secret_key": "SK", "destination_account_id": DST_ACCOUNT},
     {"region": "eu-west-1", "profile_name": None, "aws_access_key_id": "AK", "aws_secret_access_key": "SK",
      "aws_session_token": None}, False),
])
def test_destination_clients(params, expect, sts):
    aws = FakeAws()
    region, _ec2, sts_client, _own = _copy.destination_clients(aws, params, "eu-west-1")
    assert region == expect["region"] and aws.made[0] == ("ec2", expect)
    assert (sts_client is not None) is sts and len(aws.made) == (2 if sts else 1)
