# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_set_info and backup_set_prune against the strict EC2 endpoint (real HTTP on 127.0.0.1).

Sets are made the way ebs_snapshot_set makes them: one CreateSnapshots call with the catalog's
set tags, one CreateTags per member (the form schema 2 falls back to when its member map would not
fit), then the complete mark. The modules run in-process with the set_module_args pattern. The
endpoint keeps resources between tests, so every test works on its own series name and instance.
"""

import datetime
import uuid

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.modules import backup_set_info
from ansible_collections.stillpoint.snapshots.plugins.modules import backup_set_prune
from tests.unit.utils import run_module

UTC = datetime.timezone.utc
OTHER_ACCOUNT = "555566667777"  # owner of the foreign snapshots made here (not the endpoint's default one)


def days_ago(days):
    return (datetime.datetime.now(UTC) - datetime.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_id_at(days):
    when = datetime.datetime.now(UTC) - datetime.timedelta(days=days)
    return catalog.new_set_id(when)


def new_instance(ep, volumes=3):
    return ep.create_instance(volumes=[{"size": 1, "device": "/dev/sd%s" % "fghij"[i]} for i in range(volumes)])


class Lab:
    """An instance with three data volumes, a series name of the test's own, and helpers to record
    sets of that instance in the catalog."""

    def __init__(self, ep, client, world):
        self.ep = ep
        self.client = client
        self.name = "t-%s" % uuid.uuid4().hex[:8]
        self.world = world
        self.instance_id = world["instance_id"]

    def take(self, days, state="complete", level="filesystem", name=None):
        """A set created ``days`` ago; ``state``: complete (marked), pending (never marked)."""
        set_id = set_id_at(days)
        shared = catalog.set_tags(set_id, name or self.name, len(self.world["volumes"]), self.instance_id,
                                  self.world["az"], "db1", level, created=days_ago(days), freeze_ms=12.0)
        items = self.client.create_snapshots(
            InstanceSpecification={"InstanceId": self.instance_id, "ExcludeBootVolume": True},
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": catalog.to_tag_list(shared)}],
            Description="stillpoint.snapshots set %s" % set_id)["Snapshots"]
        by_volume = dict((it["VolumeId"], it["SnapshotId"]) for it in items)
        for index, vol in enumerate(self.world["volumes"]):
            self.client.create_tags(Resources=[by_volume[vol["volume_id"]]], Tags=catalog.to_tag_list(
                catalog.member_tags(index, vol["device"], vol["volume_id"], ["/srv/data"])))
        ids = list(by_volume.values())
        self.ep.pending(0, snapshot_ids=ids)  # copying done
        if state == "complete":
            self.client.create_tags(Resources=ids, Tags=[{"Key": catalog.K_STATE, "Value": "complete"}])
        return set_id, ids

    def args(self, **kw):
        out = dict(endpoint_url=self.ep.url, access_key="testing", secret_key="testing", region=self.ep.region)
        out.update(kw)
        return out

    def all_snapshots(self):
        """Every snapshot the endpoint lists (any owner): id -> tags."""
        snaps = self.client.describe_snapshots()["Snapshots"]
        return dict((s["SnapshotId"], catalog.tag_dict(s.get("Tags"))) for s in snaps)


def run(monkeypatch, module, args, check_mode=False):
    return run_module(monkeypatch, module.main, args, check_mode)


@pytest.fixture(scope="module")
def site(ec2_endpoint):  # noqa: F811
    """One boto3 client and one instance for the module (each costs a few tenths of a second)."""
    return ec2_endpoint.client(), new_instance(ec2_endpoint)


@pytest.fixture
def lab(ec2, site):  # noqa: F811
    return Lab(ec2, *site)


# ----------------------------------------------------------------------------- backup_set_info

def test_info_groups_orders_filters_and_queries(monkeypatch, ec2, site):  # noqa: F811
    lab = Lab(ec2, site[0], new_instance(ec2))  # its own instance: the instance_id filter below sees only it
    old, old_ids = lab.take(3, level="application")
    mid = lab.take(2, level="filesystem")[0]
    new = lab.take(1, state="pending")[0]
    other = lab.take(1.5, name=lab.name + "-logs")[0]
    # our own snapshot that carries a set id but no creator marker, and a foreign one that carries both
    stray = lab.client.create_snapshot(VolumeId=lab.world["volumes"][0]["volume_id"])["SnapshotId"]
    lab.client.create_tags(Resources=[stray], Tags=[{"Key": catalog.K_SET_ID, "Value": old},
                                                    {"Key": catalog.K_MEMBER, "Value": "0"}])
    foreign = lab.ep.add_foreign_snapshot(owner_id=OTHER_ACCOUNT, tags={
        catalog.K_CREATOR: catalog.CREATOR, catalog.K_SET_ID: old, catalog.K_SET_NAME: lab.name, catalog.K_MEMBER: "1"})

    before = lab.all_snapshots()
    res = run(monkeypatch, backup_set_info, lab.args(name=lab.name), check_mode=True)
    assert res["changed"] is False
    assert lab.all_snapshots() == before
    sets = res["sets"]
    assert [s["set_id"] for s in sets] == [new, mid, old]
    assert [s["state"] for s in sets] == ["pending", "complete", "complete"]
    assert sets[0]["problems"] == ["all snapshots completed but the set was never marked complete"]
    oldest = sets[2]
    assert oldest["level"] == "application" and sets[1]["level"] == "filesystem"
    assert sorted(oldest["snapshot_ids"]) == sorted(old_ids)
    assert stray not in oldest["snapshot_ids"] and foreign not in oldest["snapshot_ids"]
    assert [m["index"] for m in oldest["members"]] == [0, 1, 2]
    assert [m["source_volume"] for m in oldest["members"]] == [v["volume_id"] for v in lab.world["volumes"]]
    assert all(m["state"] == "completed" for m in oldest["members"])
    assert oldest["member_count"] == 3 and oldest["instance_id"] == lab.instance_id and oldest["host"] == "db1"
    assert "result" not in res

    args = lab.args(instance_id=lab.instance_id, state=["complete"], latest=True, query="[0].members[].snapshot_id")
    res = run(monkeypatch, backup_set_info, args)
    assert [s["set_id"] for s in res["sets"]] == [other]  # the -logs set is the newest complete one here
    assert res["result"] == res["sets"][0]["snapshot_ids"]

    args = lab.args(name=lab.name, host="db1", state=["complete"], latest=True, query="[].{id: set_id, n: member_count}")
    res = run(monkeypatch, backup_set_info, args)
    assert [s["set_id"] for s in res["sets"]] == [mid]
    assert res["result"] == [{"id": mid, "n": 3}]


def test_info_reports_partial_and_pending_sets(monkeypatch, lab):
    broken, ids = lab.take(2)
    lab.client.delete_snapshot(SnapshotId=ids[1])
    copying, cids = lab.take(1)
    lab.ep.pending(30, snapshot_ids=cids[:1])  # member 0 is copying again
    args = lab.args(name=lab.name, state=["partial", "pending"], query="[?state=='partial'].set_id")
    res = run(monkeypatch, backup_set_info, args)
    by_id = dict((s["set_id"], s) for s in res["sets"])
    assert sorted(by_id) == sorted([broken, copying])
    assert by_id[broken]["state"] == "partial"
    assert by_id[broken]["problems"][0].startswith("2 snapshots for 3 members")
    assert by_id[copying]["state"] == "pending"
    assert any(cids[0] in p for p in by_id[copying]["problems"])
    assert res["result"] == [broken]


def test_info_refuses_an_invalid_query_before_any_call(monkeypatch, lab):
    lab.ep.clear_calls()
    res = run(monkeypatch, backup_set_info, lab.args(name=lab.name, query="[?state=="))
    assert res["failed"] is True
    assert res["msg"].startswith("query is not a valid JMESPath expression")
    assert lab.ep.calls("DescribeSnapshots") == []


# ----------------------------------------------------------------------------- backup_set_prune

def test_prune_keep_last_check_mode_real_run_and_again(monkeypatch, lab):
    made = [lab.take(d) for d in (5, 4, 3, 2, 1)]  # oldest first
    pending = lab.take(0.5, state="pending")[0]
    oldest_id = made[0][0]
    stray = lab.client.create_snapshot(VolumeId=lab.world["volumes"][0]["volume_id"])["SnapshotId"]
    lab.client.create_tags(Resources=[stray], Tags=[{"Key": catalog.K_SET_ID, "Value": oldest_id},
                                                    {"Key": catalog.K_SET_NAME, "Value": lab.name},
                                                    {"Key": catalog.K_INSTANCE, "Value": lab.instance_id}])
    foreign = lab.ep.add_foreign_snapshot(owner_id=OTHER_ACCOUNT, tags={
        catalog.K_CREATOR: catalog.CREATOR, catalog.K_SET_ID: oldest_id, catalog.K_SET_NAME: lab.name,
        catalog.K_INSTANCE: lab.instance_id})
    args = lab.args(name=lab.name, instance_id=lab.instance_id, keep_last=2)
    doomed = [sid for sid, _ids in made[:3]]
    doomed_snaps = sorted(s for _sid, ids in made[:3] for s in ids)

    before = lab.all_snapshots()
    lab.ep.clear_calls()
    res = run(monkeypatch, backup_set_prune, args, check_mode=True)
    assert lab.all_snapshots() == before
    assert lab.ep.calls("DeleteSnapshot") == []
    assert res["changed"] is True
    assert sorted(d["set_id"] for d in res["deleted"]) == sorted(doomed)
    assert sorted(s for d in res["deleted"] for s in d["snapshot_ids"]) == doomed_snaps
    kept = dict((k["set_id"], k["reason"]) for k in res["kept"])
    assert kept == {made[4][0]: "newest complete set", made[3][0]: "among the newest 2",
                    pending: "pending: never pruned"}
    assert res["diff"]["before"]["set_ids"] == [pending] + [sid for sid, _ids in reversed(made)]
    assert res["diff"]["after"]["set_ids"] == [pending, made[4][0], made[3][0]]

    res = run(monkeypatch, backup_set_prune, args)
    assert res["changed"] is True
    assert sorted(d["set_id"] for d in res["deleted"]) == sorted(doomed)
    deleted_calls = sorted(c["params"]["SnapshotId"] for c in lab.ep.calls("DeleteSnapshot"))
    assert deleted_calls == doomed_snaps
    after = lab.all_snapshots()
    assert not set(doomed_snaps) & set(after)
    assert set(before) - set(after) == set(doomed_snaps)
    assert stray in after and foreign in after

    lab.ep.clear_calls()
    res = run(monkeypatch, backup_set_prune, args)
    assert res["changed"] is False
    assert res["deleted"] == []
    assert lab.ep.calls("DeleteSnapshot") == []
    assert lab.all_snapshots() == after


def test_prune_older_than_and_partial(monkeypatch, lab):
    old = lab.take(10)[0]
    young = lab.take(2)[0]
    newest = lab.take(1)[0]
    broken, bids = lab.take(3)
    lab.client.delete_snapshot(SnapshotId=bids[0])
    args = lab.args(name=lab.name, older_than_days=5)
    res = run(monkeypatch, backup_set_prune, args)
    assert [d["set_id"] for d in res["deleted"]] == [old]
    assert res["deleted"][0]["reason"] == "older than 5.0 days"
    kept = dict((k["set_id"], k["reason"]) for k in res["kept"])
    assert kept[broken] == "partial set kept (delete_partial is false)"
    assert kept[young] == "younger than 5.0 days" and kept[newest] == "newest complete set"

    res = run(monkeypatch, backup_set_prune, lab.args(name=lab.name, delete_partial=True))
    assert [d["set_id"] for d in res["deleted"]] == [broken]
    assert sorted(res["deleted"][0]["snapshot_ids"]) == sorted(bids[1:])
    assert not set(bids) & set(lab.all_snapshots())


def test_prune_explicit_set_ids_and_refusals(monkeypatch, lab):
    older, older_ids = lab.take(3)
    newest = lab.take(2)[0]
    pending = lab.take(1, state="pending")[0]
    unmarked_id = set_id_at(4)
    stray = lab.client.create_snapshot(VolumeId=lab.world["volumes"][0]["volume_id"])["SnapshotId"]
    lab.client.create_tags(Resources=[stray], Tags=[{"Key": catalog.K_SET_ID, "Value": unmarked_id}])
    foreign_id = set_id_at(5)
    foreign = lab.ep.add_foreign_snapshot(owner_id=OTHER_ACCOUNT, tags={
        catalog.K_CREATOR: catalog.CREATOR, catalog.K_SET_ID: foreign_id, catalog.K_SET_NAME: lab.name,
        catalog.K_SCHEMA: "1", catalog.K_MEMBERS: "1", catalog.K_MEMBER: "0", catalog.K_STATE: "complete"})
    missing_id = "bs-20200101T000000Z-000000"
    before = lab.all_snapshots()

    def refused(set_ids, **kw):
        lab.ep.clear_calls()
        res = run(monkeypatch, backup_set_prune, lab.args(set_ids=set_ids, **kw))
        assert res["failed"] is True
        assert not res.get("changed")
        assert lab.ep.calls("DeleteSnapshot") == []
        assert lab.all_snapshots() == before
        return res["msg"]

    # every refusal is reported at once, and one refused id stops the whole request: the valid
    # `older` is not deleted either
    msg = refused([older, missing_id, "snap-0123", unmarked_id, foreign_id, newest, pending])
    assert msg.startswith("refused, nothing was deleted: ")
    assert older not in msg
    assert "set %s does not exist in this account and region |" % missing_id in msg
    assert "set snap-0123 does not exist in this account and region (set ids look like bs-YYYYMMDDTHHMMSSZ-xxxxxx)" \
        in msg
    assert ("set %s is not ours: its snapshots %s carry the set id but not the creator marker "
            "stillpoint:creator=stillpoint.snapshots" % (unmarked_id, stray)) in msg
    assert "set %s does not exist in this account and region" % foreign_id in msg  # another account's
    assert "set %s is the newest complete set of %s on %s; set force=true" % (newest, lab.name, lab.instance_id) \
        in msg
    assert "set %s is pending" % pending in msg
    assert "belongs to name=%s" % lab.name in refused([older], name=lab.name + "-other")
    assert refused([], keep_last=None).startswith("nothing to do")
    assert refused(None, keep_last=0).startswith("keep_last must be at least 1")

    res = run(monkeypatch, backup_set_prune, lab.args(set_ids=[older]))
    assert res["changed"] is True
    assert res["deleted"] == [dict(set_id=older, name=lab.name, instance_id=lab.instance_id, state="complete",
                                   created=res["deleted"][0]["created"], reason="named in set_ids",
                                   snapshot_ids=res["deleted"][0]["snapshot_ids"])]
    assert sorted(res["deleted"][0]["snapshot_ids"]) == sorted(older_ids)
    assert not set(older_ids) & set(lab.all_snapshots())

    res = run(monkeypatch, backup_set_prune, lab.args(set_ids=[newest, pending], force=True))
    assert sorted(d["set_id"] for d in res["deleted"]) == sorted([newest, pending])
    after = lab.all_snapshots()
    assert stray in after and foreign in after


def test_prune_reports_a_refused_deletion_and_cleans_up_after(monkeypatch, lab):
    old, old_ids = lab.take(3)
    lab.take(1)
    lab.ep.fail_next("DeleteSnapshot", "InvalidSnapshot.InUse", message="The snapshot is currently in use by ami-1")
    args = lab.args(name=lab.name, keep_last=1)
    res = run(monkeypatch, backup_set_prune, args)
    assert res["failed"] is True
    assert res["changed"] is True  # two of the three members are gone
    stuck = [c["params"]["SnapshotId"] for c in lab.ep.calls("DeleteSnapshot") if c["error_code"]]
    assert len(stuck) == 1 and stuck[0] in old_ids
    assert "could not delete 1 snapshot(s) of set(s) %s" % old in res["msg"]
    assert stuck[0] in res["msg"] and "InvalidSnapshot.InUse" in res["msg"]
    assert res["errors"][0]["snapshot_id"] == stuck[0]
    assert sorted(res["deleted"][0]["snapshot_ids"]) == sorted(set(old_ids) - set(stuck))
    assert old in res["diff"]["after"]["set_ids"]

    # what is left of the set now reads partial, and delete_partial clears it
    res = run(monkeypatch, backup_set_prune, lab.args(name=lab.name, keep_last=1, delete_partial=True))
    assert [(d["set_id"], d["state"], d["snapshot_ids"]) for d in res["deleted"]] == [(old, "partial", stuck)]
    assert not set(old_ids) & set(lab.all_snapshots())
