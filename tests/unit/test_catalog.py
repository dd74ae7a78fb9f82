# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The catalog library on recorded DescribeSnapshots output (fixtures/catalog/describe_snapshots.json).

Each case starts from the recorded items and changes only what the case is about (a member's EC2
state, a tag, a missing member), so the rest of the data stays exactly as EC2's API shapes it.
"""

import copy
import datetime
import json
import os
import random

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "catalog", "describe_snapshots.json")
OLD, NEW = "bs-20240301T020000Z-a1b2c3", "bs-20240302T020000Z-d4e5f6"
UTC = datetime.timezone.utc


@pytest.fixture(scope="module")
def recorded():
    with open(FIXTURE) as f:
        return json.load(f)


@pytest.fixture
def snaps(recorded):
    return copy.deepcopy(recorded["Snapshots"])


def members_of(snaps, set_id):
    return [s for s in snaps if catalog.is_ours(s) and catalog.tag_dict(s["Tags"]).get(catalog.K_SET_ID) == set_id]


def set_tag(snap, key, value):
    snap["Tags"] = [t for t in snap["Tags"] if t["Key"] != key]
    if value is not None:
        snap["Tags"].append({"Key": key, "Value": value})


def member(snaps, set_id, index):
    for s in members_of(snaps, set_id):
        if catalog.tag_dict(s["Tags"]).get(catalog.K_MEMBER) == str(index):
            return s
    raise AssertionError("no member %s in %s" % (index, set_id))


def one(snaps, set_id):
    recs = [r for r in catalog.group_sets(snaps) if r["set_id"] == set_id]
    assert len(recs) == 1
    return recs[0]


# ----------------------------------------------------------------------------- grouping

def test_groups_only_marked_snapshots_newest_first(recorded, snaps):
    records = catalog.group_sets(snaps)
    assert [r["set_id"] for r in records] == [NEW, OLD]
    marked = [s["SnapshotId"] for s in snaps if catalog.is_ours(s)]
    grouped = [sid for r in records for sid in r["snapshot_ids"]]
    assert sorted(grouped) == sorted(marked)
    # the snapshot that carries NEW's set id without the creator marker is not a member
    stray = [s for s in snaps if not catalog.is_ours(s) and catalog.tag_dict(s["Tags"]).get(catalog.K_SET_ID)]
    assert len(stray) == 1
    assert stray[0]["SnapshotId"] not in grouped
    for rec in records:
        assert rec["state"] == "complete", rec["problems"]
        assert rec["problems"] == []
        assert rec["member_count"] == 4
        assert rec["instance_id"] == recorded["instance_id"]
        assert rec["name"] == "pgdata"
        assert rec["schema"] == "1"
        assert rec["host"] == "db1.example.internal"
        assert rec["freeze_ms"] == pytest.approx(41.734)
        assert rec["array"]["kind"] == "md"


def test_members_ordered_by_index_whatever_the_api_order(snaps):
    expected = one(snaps, NEW)
    for seed in range(5):
        shuffled = list(snaps)
        random.Random(seed).shuffle(shuffled)
        rec = one(shuffled, NEW)
        assert [m["index"] for m in rec["members"]] == [0, 1, 2, 3]
        assert rec["snapshot_ids"] == expected["snapshot_ids"]
    assert [m["device"] for m in expected["members"]] == ["/dev/sdf", "/dev/sdg", "/dev/sdh", "/dev/sdi"]
    assert expected["array"]["members"] == [m["source_volume"] for m in expected["members"]]
    assert all(m["mountpoints"] == ["/srv/pg"] for m in expected["members"])


def test_order_is_by_creation_time_not_by_set_id(snaps):
    # an older set whose id sorts last still comes last
    for s in members_of(snaps, NEW):
        set_tag(s, catalog.K_CREATED, "2024-02-28T23:59:59Z")
    assert [r["set_id"] for r in catalog.group_sets(snaps)] == [OLD, NEW]


def test_select_sets_filters(snaps):
    records = catalog.group_sets(snaps)
    assert [r["set_id"] for r in catalog.select_sets(records, set_id=OLD)] == [OLD]
    assert catalog.select_sets(records, name="other") == []
    assert catalog.select_sets(records, host="db1.example.internal") == records
    member(snaps, OLD, 2)["State"] = "error"
    records = catalog.group_sets(snaps)
    assert [r["set_id"] for r in catalog.select_sets(records, states=["partial"])] == [OLD]
    assert [r["set_id"] for r in catalog.select_sets(records, states=["complete", "pending"])] == [NEW]


# ----------------------------------------------------------------------------- state derivation

def test_complete_needs_the_complete_mark(snaps):
    for s in members_of(snaps, NEW):
        set_tag(s, catalog.K_STATE, "pending")
    rec = one(snaps, NEW)
    assert rec["state"] == "pending"
    assert rec["problems"] == ["all snapshots completed but the set was never marked complete"]


def test_pending_while_ec2_is_still_copying(snaps):
    m = member(snaps, NEW, 1)
    m["State"], m["Progress"] = "pending", "37%"
    rec = one(snaps, NEW)
    assert rec["state"] == "pending"
    assert any(m["SnapshotId"] in p for p in rec["problems"])
    assert rec["members"][1]["progress"] == "37%"


def test_pending_while_members_are_being_tagged(snaps):
    # between CreateSnapshots (set tags) and CreateTags (member tags)
    for s in members_of(snaps, NEW):
        set_tag(s, catalog.K_STATE, "pending")
        for key in (catalog.K_MEMBER, catalog.K_DEVICE, catalog.K_SOURCE_VOLUME, catalog.K_MOUNTPOINTS):
            set_tag(s, key, None)
    rec = one(snaps, NEW)
    assert rec["state"] == "pending"
    assert rec["problems"] == ["4 snapshot(s) without a member index (not yet tagged)"]
    assert rec["member_count"] == 4 and len(rec["members"]) == 4


def test_partial_when_a_member_is_in_error(snaps):
    bad = member(snaps, NEW, 3)
    bad["State"], bad["StateMessage"] = "error", "internal error"
    rec = one(snaps, NEW)
    assert rec["state"] == "partial"
    assert any(bad["SnapshotId"] in p for p in rec["problems"])
    assert rec["members"][3]["state_message"] == "internal error"


@pytest.mark.parametrize("tag_state", ["complete", "pending"])
def test_partial_when_a_member_snapshot_is_gone(snaps, tag_state):
    gone = member(snaps, NEW, 2)
    snaps.remove(gone)
    for s in members_of(snaps, NEW):
        set_tag(s, catalog.K_STATE, tag_state)
    rec = one(snaps, NEW)
    assert rec["state"] == "partial"
    assert rec["problems"][0] == "3 snapshots for 4 members (members missing: 2)"
    assert [m["index"] for m in rec["members"]] == [0, 1, 3]


def test_partial_when_one_member_says_partial(snaps):
    set_tag(member(snaps, NEW, 0), catalog.K_STATE, "partial")
    rec = one(snaps, NEW)
    assert rec["state"] == "partial"
    assert "marked partial (a rollback could not delete it)" in rec["problems"]


def test_partial_when_marked_complete_with_an_untagged_member(snaps):
    set_tag(member(snaps, NEW, 1), catalog.K_MEMBER, None)
    rec = one(snaps, NEW)
    assert rec["state"] == "partial"


def test_partial_when_two_snapshots_claim_one_index(snaps):
    set_tag(member(snaps, NEW, 3), catalog.K_MEMBER, "1")
    rec = one(snaps, NEW)
    assert rec["state"] == "partial"
    assert "members missing: 3" in rec["problems"]
    assert "member indexes used twice: 1" in rec["problems"]


def test_partial_without_a_member_count(snaps):
    for s in members_of(snaps, NEW):
        set_tag(s, catalog.K_MEMBERS, None)
    assert one(snaps, NEW)["state"] == "partial"


def test_pending_while_the_complete_mark_is_being_applied(snaps):
    for i in (0, 1):
        set_tag(member(snaps, NEW, i), catalog.K_STATE, "pending")
    rec = one(snaps, NEW)
    assert rec["state"] == "pending"
    assert rec["problems"] == ["members disagree on the set state: complete, pending"]


def test_unknown_schema_is_never_complete(snaps):
    for s in members_of(snaps, NEW):
        set_tag(s, catalog.K_SCHEMA, "3")
    rec = one(snaps, NEW)
    assert rec["schema"] == "3"
    assert rec["state"] == "pending"
    assert "schema 3" in rec["problems"][0] and "reads schema 1 and 2" in rec["problems"][0]


# ----------------------------------------------------------------------------- schema 2: the member map

PER_MEMBER = (catalog.K_MEMBER, catalog.K_DEVICE, catalog.K_SOURCE_VOLUME, catalog.K_MOUNTPOINTS)


def to_v2(snaps, set_id):
    """Rewrite a recorded v1 set as v2 writes it: no per-member tags, one member map on every member."""
    members = [catalog.member_record(s) for s in members_of(snaps, set_id)]
    map_tags = catalog.member_map_tags([(m["index"], m["device"], m["source_volume"], m["mountpoints"]) for m in members])
    for s in members_of(snaps, set_id):
        for key in PER_MEMBER:
            set_tag(s, key, None)
        set_tag(s, catalog.K_SCHEMA, "2")
        for key, value in map_tags.items():
            set_tag(s, key, value)
    return map_tags


def test_a_v2_set_reads_as_its_v1_self(snaps):
    v1 = one(copy.deepcopy(snaps), NEW)
    map_tags = to_v2(snaps, NEW)
    assert list(map_tags) == [catalog.K_MEMBER_MAP]  # 4 members fit one tag value
    v2 = one(snaps, NEW)
    assert v2["schema"] == "2" and v2["state"] == "complete" == v1["state"]
    assert v2["members"] == v1["members"]
    assert [m["index"] for m in v2["members"]] == [0, 1, 2, 3]
    assert any(m["mountpoints"] for m in v2["members"])


def test_a_v2_member_without_the_map_has_no_index(snaps):
    to_v2(snaps, NEW)
    victim = members_of(snaps, NEW)[0]
    set_tag(victim, catalog.K_MEMBER_MAP, None)  # the CreateTags with the level and the map did not reach it
    rec = one(snaps, NEW)
    assert rec["state"] == "partial"
    assert "1 snapshot(s) without a member index in a set marked complete" in rec["problems"]
    for s in members_of(snaps, NEW):
        set_tag(s, catalog.K_STATE, "pending")
    rec = one(snaps, NEW)
    assert rec["state"] == "pending" and "1 snapshot(s) without a member index (not yet tagged)" in rec["problems"]


def test_a_member_map_naming_the_volume_twice_or_unreadable_gives_no_index(snaps):
    to_v2(snaps, NEW)
    victim = members_of(snaps, NEW)[0]
    vol = victim["VolumeId"]
    set_tag(victim, catalog.K_MEMBER_MAP, json.dumps([[vol, "/dev/sdf", ""], [vol, "/dev/sdg", ""]]))
    assert catalog.member_record(victim)["index"] is None
    set_tag(victim, catalog.K_MEMBER_MAP, "[[")
    assert catalog.member_record(victim)["index"] is None
    assert one(snaps, NEW)["state"] == "partial"


def test_a_members_own_tags_win_over_the_map(snaps):
    to_v2(snaps, NEW)
    victim = members_of(snaps, NEW)[0]
    mapped = catalog.member_record(victim)
    for key, value in catalog.member_tags(mapped["index"], "/dev/xvdq", mapped["source_volume"], ["/own"]).items():
        set_tag(victim, key, value)
    rec = catalog.member_record(victim)
    assert (rec["index"], rec["device"], rec["mountpoints"]) == (mapped["index"], "/dev/xvdq", ["/own"])


def test_member_map_is_chunked_and_none_when_it_cannot_fit():
    many = [(i, "/dev/sd%s" % chr(ord("f") + i % 20), "vol-%017x" % i, ["/srv/data%02d" % i]) for i in range(20)]
    tags = catalog.member_map_tags(many)
    assert len(tags) > 1 and all(len(v) <= catalog.TAG_VALUE_MAX for v in tags.values())
    assert catalog.decode_json(tags, catalog.K_MEMBER_MAP)[7] == ["vol-%017x" % 7, "/dev/sdm", "/srv/data07"]
    huge = [(i, "/dev/sdf", "vol-%017x" % i, ["/srv/%s" % ("x" * 60)]) for i in range(40)]
    assert catalog.member_map_tags(huge) is None
    with pytest.raises(StillpointError, match="member indexes must be 0..1"):
        catalog.member_map_tags([(0, "/dev/sdf", "vol-1", ()), (2, "/dev/sdg", "vol-2", ())])


# ----------------------------------------------------------------------------- consistency level

def test_level_is_the_weakest_any_member_claims(snaps):
    assert one(snaps, NEW)["level"] == "application"
    set_tag(member(snaps, NEW, 2), catalog.K_LEVEL, "filesystem")
    assert one(snaps, NEW)["level"] == "filesystem"
    set_tag(member(snaps, NEW, 0), catalog.K_LEVEL, "crash")
    assert one(snaps, NEW)["level"] == "crash"


@pytest.mark.parametrize("value", [None, "", "superb"])
def test_unreadable_level_counts_as_crash(snaps, value):
    set_tag(member(snaps, NEW, 1), catalog.K_LEVEL, value)
    assert one(snaps, NEW)["level"] == "crash"


def test_set_tags_refuse_an_unknown_level_or_state():
    with pytest.raises(StillpointError, match="unknown consistency level"):
        catalog.set_tags("bs-x", "n", 2, "i-1", "az", "h", "perfect")
    with pytest.raises(StillpointError, match="unknown set state"):
        catalog.set_tags("bs-x", "n", 2, "i-1", "az", "h", "crash", state="done")


# ----------------------------------------------------------------------------- tags, limits, chunking

def test_set_and_member_tags_round_trip_through_describe_shape(recorded):
    array = {"kind": "lvm", "vg": "vgdata", "lvs": ["lv%02d" % i for i in range(40)],
             "pvs": ["vol-%017x" % (i * 7919) for i in range(16)]}
    shared = catalog.set_tags("bs-20240303T020000Z-0a0b0c", "pgdata", 2, "i-0123", "eu-west-1a", "db1", "filesystem",
                              state="complete", created="2024-03-03T02:00:00Z", freeze_ms=12.5, array=array)
    keys = sorted(k for k in shared if k.startswith(catalog.K_ARRAY))
    text = json.dumps(array, separators=(",", ":"), sort_keys=True)
    assert len(text) > 2 * catalog.TAG_VALUE_MAX  # really chunked
    assert keys == [catalog.K_ARRAY] + ["%s.%d" % (catalog.K_ARRAY, i) for i in range(1, len(keys))]
    assert len(keys) == -(-len(text) // catalog.TAG_VALUE_MAX)
    assert all(len(v) <= catalog.TAG_VALUE_MAX for v in shared.values())
    assert all(k.startswith(catalog.PREFIX) for k in shared)
    items = []
    for i in range(2):
        tags = dict(shared)
        tags.update(catalog.member_tags(i, "/dev/sd%s" % "fg"[i], "vol-%d" % i, ["/srv/a", "/srv/b"]))
        items.append({"SnapshotId": "snap-%d" % i, "VolumeId": "vol-%d" % i, "State": "completed",
                      "Progress": "100%", "StartTime": "2024-03-03T02:00:01+00:00", "VolumeSize": 8,
                      "OwnerId": recorded["Snapshots"][-1]["OwnerId"], "Tags": catalog.to_tag_list(tags)})
    rec = catalog.group_sets(items)[0]
    assert rec["array"] == array
    assert rec["state"] == "complete"
    assert rec["freeze_ms"] == 12.5
    assert rec["members"][1]["mountpoints"] == ["/srv/a", "/srv/b"]


def test_small_array_is_one_tag():
    tags = catalog.encode_json(catalog.K_ARRAY, {"kind": "md"})
    assert tags == {catalog.K_ARRAY: '{"kind":"md"}'}
    assert catalog.decode_json(tags, catalog.K_ARRAY) == {"kind": "md"}


def test_array_descriptor_larger_than_eight_chunks_is_refused():
    with pytest.raises(StillpointError, match="array descriptor too large"):
        catalog.encode_json(catalog.K_ARRAY, {"x": "a" * (8 * catalog.TAG_VALUE_MAX)})


def test_a_value_over_256_characters_is_refused_not_truncated():
    ok = catalog.set_tags("bs-x", "n" * 256, 1, "i-1", "az", "h", "crash")
    assert len(ok[catalog.K_SET_NAME]) == 256
    with pytest.raises(StillpointError, match=r"stillpoint:set-name would be 257 characters; EC2 allows 256"):
        catalog.set_tags("bs-x", "n" * 257, 1, "i-1", "az", "h", "crash")
    mounts = ["/srv/data/volume%03d" % i for i in range(20)]
    with pytest.raises(StillpointError, match="stillpoint:mountpoints"):
        catalog.member_tags(0, "/dev/sdf", "vol-1", mounts)


def test_set_id_format():
    now = datetime.datetime(2024, 3, 2, 2, 0, 0, tzinfo=UTC)
    assert catalog.new_set_id(now, "d4e5f6") == NEW
    a, b = catalog.new_set_id(now), catalog.new_set_id(now)
    assert a != b and len(a) == len(NEW) and a.startswith("bs-20240302T020000Z-")


# ----------------------------------------------------------------------------- prune_plan

def make_sets(template, specs):
    """DescribeSnapshots items for sets built from the recorded set ``template`` (a list of its items).

    ``specs``: (set_id, name, instance_id, created, state) tuples; ``state`` is the derived state wanted.
    """
    out = []
    for n, (set_id, name, instance_id, created, state) in enumerate(specs):
        for snap in copy.deepcopy(template):
            snap["SnapshotId"] = "snap-%05d%s" % (n, snap["SnapshotId"][-6:])
            set_tag(snap, catalog.K_SET_ID, set_id)
            set_tag(snap, catalog.K_SET_NAME, name)
            set_tag(snap, catalog.K_INSTANCE, instance_id)
            set_tag(snap, catalog.K_CREATED, created)
            set_tag(snap, catalog.K_STATE, {"complete": "complete", "pending": "pending", "partial": "partial"}[state])
            out.append(snap)
    return out


NOW = datetime.datetime(2024, 3, 31, 12, 0, 0, tzinfo=UTC)


def day(d):
    return (NOW - datetime.timedelta(days=d)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def template(snaps):
    return members_of(snaps, NEW)


def plan(records, **kw):
    keep, delete = catalog.prune_plan(records, now=NOW, **kw)
    assert len(keep) + len(delete) == len(records)
    return dict((r["set_id"], why) for r, why in keep), dict((r["set_id"], why) for r, why in delete)


def daily(template, n, name="pgdata", instance="i-a", state="complete"):
    return make_sets(template, [("s-%s-%s-%02d" % (name, instance, d), name, instance, day(d), state)
                                for d in range(n)])


def test_keep_last(template):
    records = catalog.group_sets(daily(template, 5))
    assert all(r["state"] == "complete" for r in records)
    keep, delete = plan(records, keep_last=2)
    assert sorted(keep) == ["s-pgdata-i-a-00", "s-pgdata-i-a-01"]
    assert keep["s-pgdata-i-a-00"] == "newest complete set"
    assert sorted(delete) == ["s-pgdata-i-a-02", "s-pgdata-i-a-03", "s-pgdata-i-a-04"]
    assert set(delete.values()) == {"beyond keep_last=2"}


def test_keep_last_below_one_is_refused(template):
    with pytest.raises(StillpointError, match="keep_last must be at least 1"):
        catalog.prune_plan(catalog.group_sets(daily(template, 2)), keep_last=0)
    with pytest.raises(StillpointError, match="older_than_days must not be negative"):
        catalog.prune_plan([], older_than_days=-1)


def test_the_newest_complete_set_is_never_deleted(template):
    specs = [("s-new-partial", "pgdata", "i-a", day(0), "partial"),
             ("s-new-pending", "pgdata", "i-a", day(1), "pending"),
             ("s-complete-old", "pgdata", "i-a", day(300), "complete"),
             ("s-complete-older", "pgdata", "i-a", day(400), "complete")]
    records = catalog.group_sets(make_sets(template, specs))
    keep, delete = plan(records, keep_last=1, older_than_days=0, delete_partial=True)
    assert keep["s-complete-old"] == "newest complete set"
    assert keep["s-new-pending"] == "pending: never pruned"
    assert delete == {"s-new-partial": "partial set", "s-complete-older": "beyond keep_last=1 and older than 0 days"}


def test_pending_is_never_pruned(template):
    records = catalog.group_sets(daily(template, 4, state="pending"))
    assert all(r["state"] == "pending" for r in records)
    keep, delete = plan(records, keep_last=1, older_than_days=0, delete_partial=True)
    assert delete == {}
    assert set(keep.values()) == {"pending: never pruned"}


def test_partial_only_with_delete_partial(template):
    broken = make_sets(template, [("s-broken", "pgdata", "i-a", day(10), "partial")])
    records = catalog.group_sets(daily(template, 3) + broken)
    keep, delete = plan(records, keep_last=5)
    assert keep["s-broken"] == "partial set kept (delete_partial is false)" and delete == {}
    keep, delete = plan(records, delete_partial=True)
    assert delete == {"s-broken": "partial set"}
    assert keep["s-pgdata-i-a-02"] == "no retention rule given"


def test_retention_is_per_name_and_instance(template):
    items = daily(template, 3) + daily(template, 3, instance="i-b") + daily(template, 3, name="logs")
    records = catalog.group_sets(items)
    keep, delete = plan(records, keep_last=1)
    assert sorted(keep) == ["s-logs-i-a-00", "s-pgdata-i-a-00", "s-pgdata-i-b-00"]
    assert len(delete) == 6


def test_keep_last_or_younger_keeps(template):
    records = catalog.group_sets(daily(template, 10))
    keep, delete = plan(records, keep_last=3, older_than_days=5.5)
    # days 0..2: among the newest 3; days 3..5: beyond keep_last but younger than 5.5 days
    assert sorted(keep) == ["s-pgdata-i-a-%02d" % d for d in range(6)]
    assert keep["s-pgdata-i-a-04"] == "younger than 5.5 days"
    assert sorted(delete) == ["s-pgdata-i-a-%02d" % d for d in range(6, 10)]
    assert set(delete.values()) == {"beyond keep_last=3 and older than 5.5 days"}
    # the reverse: a long keep_last holds old sets that older_than_days alone would drop
    keep, delete = plan(records, keep_last=8, older_than_days=1)
    assert sorted(delete) == ["s-pgdata-i-a-08", "s-pgdata-i-a-09"]
    assert keep["s-pgdata-i-a-07"] == "among the newest 8"


def test_older_than_alone(template):
    records = catalog.group_sets(daily(template, 6))
    keep, delete = plan(records, older_than_days=2.5)
    assert sorted(keep) == ["s-pgdata-i-a-00", "s-pgdata-i-a-01", "s-pgdata-i-a-02"]
    assert set(delete.values()) == {"older than 2.5 days"}


def test_plan_does_not_depend_on_input_order(template):
    records = catalog.group_sets(daily(template, 6) + daily(template, 4, instance="i-b"))
    expected = plan(records, keep_last=2)
    for seed in range(4):
        shuffled = list(records)
        random.Random(seed).shuffle(shuffled)
        assert plan(shuffled, keep_last=2) == expected


def test_unknown_schema_is_never_pruned(template):
    items = daily(template, 4)
    for snap in items:
        if catalog.tag_dict(snap["Tags"])[catalog.K_SET_ID].endswith("-03"):
            set_tag(snap, catalog.K_SCHEMA, "3")
    keep, delete = plan(catalog.group_sets(items), keep_last=1, older_than_days=0)
    assert keep["s-pgdata-i-a-03"].startswith("schema 3 is not read by this version")
    assert sorted(delete) == ["s-pgdata-i-a-01", "s-pgdata-i-a-02"]


def test_no_rule_deletes_nothing(template):
    keep, delete = plan(catalog.group_sets(daily(template, 3)))
    assert delete == {}


# ----------------------------------------------------------------------------- documented queries

# ----------------------------------------------------------------------------- explicit deletion (backup_set_prune)

def test_prune_needs_a_rule_and_refuses_bad_ones():
    with pytest.raises(StillpointError, match="^nothing to do"):
        catalog.check_prune_rules()
    with pytest.raises(StillpointError, match="keep_last must be at least 1"):
        catalog.check_prune_rules(keep_last=0)
    with pytest.raises(StillpointError, match="older_than_days must not be negative"):
        catalog.check_prune_rules(older_than_days=-1)
    for rules in (dict(keep_last=1), dict(older_than_days=0), dict(set_ids=["bs-x"]), dict(delete_partial=True)):
        catalog.check_prune_rules(**rules)


def test_explicit_sets_refuse_all_at_once_in_the_order_given(template):
    specs = [("s-newest", "pgdata", "i-a", day(0), "complete"),
             ("s-older", "pgdata", "i-a", day(1), "complete"),
             ("s-pending", "pgdata", "i-a", day(2), "pending")]
    records = catalog.group_sets(make_sets(template, specs))
    asked = []

    def why_absent(sid):
        asked.append(sid)
        return "set %s: absent" % sid

    with pytest.raises(StillpointError) as info:
        catalog.explicit_sets(records, ["s-pending", "s-gone", "s-older", "s-newest"], False, why_absent)
    refused = info.value.details["refused"]
    assert [r.split()[1] for r in refused] == ["s-pending", "s-gone:", "s-newest"]
    assert "is pending" in refused[0] and "is the newest complete set of pgdata on i-a" in refused[2]
    assert info.value.msg.startswith("refused, nothing was deleted: ") and asked == ["s-gone"]
    chosen = catalog.explicit_sets(records, ["s-older", "s-older"], False, why_absent)
    assert [r["set_id"] for r in chosen] == ["s-older"]
    forced = catalog.explicit_sets(records, ["s-newest", "s-pending"], True, why_absent)
    assert [r["set_id"] for r in forced] == ["s-newest", "s-pending"]


def test_absent_refusal_says_why():
    other = [{"name": "logs", "instance_id": "i-b"}]
    assert catalog.absent_refusal("bs-x", other, []).startswith(
        "set bs-x belongs to name=logs instance_id=i-b, not to the name/instance_id given")
    foreign = catalog.absent_refusal("bs-x", [], ["snap-2", "snap-1"])
    assert "is not ours: its snapshots snap-1, snap-2 carry the set id but not the creator marker" in foreign
    assert catalog.absent_refusal(NEW, [], []) == "set %s does not exist in this account and region" % NEW
    assert catalog.absent_refusal("oops", [], []).endswith("(set ids look like bs-YYYYMMDDTHHMMSSZ-xxxxxx)")


def test_prune_decision_puts_named_sets_first_and_retains_the_rest(template):
    records = catalog.group_sets(daily(template, 4))
    decision = catalog.prune_decision(records, keep_last=2, set_ids=["s-pgdata-i-a-01"], now=NOW,
                                      why_absent=lambda sid: "absent")
    assert [(r["set_id"], why) for r, why in decision["delete"]] == [
        ("s-pgdata-i-a-01", "named in set_ids"), ("s-pgdata-i-a-03", "beyond keep_last=2")]
    assert [k["set_id"] for k in decision["kept"]] == ["s-pgdata-i-a-00", "s-pgdata-i-a-02"]
    assert decision["diff"] == {"before": {"set_ids": ["s-pgdata-i-a-0%d" % d for d in range(4)]},
                                "after": {"set_ids": ["s-pgdata-i-a-00", "s-pgdata-i-a-02"]}}


def documented_queries():
    """The JMESPath expressions of docs/catalog.md's backup_set_info table and the module's EXAMPLES."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "docs", "catalog.md")) as f:
        doc = f.read()
    table = doc.split("### With `backup_set_info`")[1].split("###")[0]
    queries = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.replace("\\|", "\0").split("|")]
        if len(cells) == 4 and cells[2].startswith("`") and not cells[2].startswith("`query"):
            queries.append(cells[2].strip("`").strip().replace("\0", "|"))
    with open(os.path.join(root, "plugins", "modules", "backup_set_info.py")) as f:
        examples = f.read().split('EXAMPLES = r"""')[1].split('"""')[0]
    for line in examples.splitlines():
        if line.strip().startswith("query:"):
            queries.append(json.loads(line.split("query:", 1)[1].strip()))
    return queries


def test_documented_queries_run_on_the_recorded_catalog(snaps):
    jmespath = pytest.importorskip("jmespath")
    queries = documented_queries()
    assert len(queries) >= 12
    records = catalog.group_sets(snaps)
    results = dict((q, jmespath.search(q, records)) for q in queries)
    newest = records[0]
    assert results["[].set_id"] == [NEW, OLD]
    assert results["[?state=='complete'] | [0].snapshot_ids"] == newest["snapshot_ids"]
    assert results["[?level=='application'].members[] | [?index==`0`].snapshot_id"] == [newest["snapshot_ids"][0]]
    assert results["[?created < '2024-03-02'].set_id"] == [OLD]
    assert results["length([?state=='complete'])"] == 2
    assert results["[?array.kind=='md'] | [0].array.members"] == [m["source_volume"] for m in newest["members"]]
