# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_set_prune's GFS rules, snapshot locks and the Recycle Bin against the strict EC2 endpoint.

Sets are recorded as ebs_snapshot_set records them (the catalog's set and member tags, the default
description with the set id), one CreateSnapshot per member so that a set can live in any region of the
endpoint; their creation time tags are fixed dates, so what GFS keeps follows from the calendar. The
endpoint emulates LockSnapshot/DescribeLockedSnapshots and the Recycle Bin (tests/ec2_endpoint/_locks.py).
"""

import datetime
import os
import uuid

import pytest
from ansible.module_utils import basic

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.modules import backup_set_info
from ansible_collections.stillpoint.snapshots.plugins.modules import backup_set_prune
from tests.support.world import ROOT, run_playbook, task
from tests.unit.utils import run_module

UTC = datetime.timezone.utc
OTHER_REGION = "us-east-1"


def at(text):
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


class Site:
    """A series of sets in one region: ``volumes`` volumes, a name and an instance id of the test's own."""

    def __init__(self, ep, region=None, volumes=2):
        self.ep = ep
        self.region = region or ep.region
        self.client = ep.client(region=self.region)
        az = self.region + "a"
        self.volumes = [self.client.create_volume(AvailabilityZone=az, Size=1)["VolumeId"] for _i in range(volumes)]
        self.name = "r-%s" % uuid.uuid4().hex[:8]
        self.instance_id = "i-%s" % uuid.uuid4().hex[:17]
        self.az = az

    def take(self, when, state="complete"):
        """A set created at ``when`` (a datetime); ``state``: complete, pending (never marked) or partial
        (complete, then a member deleted)."""
        set_id = catalog.new_set_id(when)
        shared = catalog.set_tags(set_id, self.name, len(self.volumes), self.instance_id, self.az, "db1", "filesystem",
                                  state="pending" if state == "pending" else "complete", created=catalog.utc_iso(when))
        self.ep.pending(0, calls=len(self.volumes))
        ids = []
        for index, vol in enumerate(self.volumes):
            tags = dict(shared, **catalog.member_tags(index, "/dev/sd" + "fghij"[index], vol, ["/srv"]))
            ids.append(self.client.create_snapshot(
                VolumeId=vol, Description="stillpoint.snapshots set %s" % set_id,
                TagSpecifications=[{"ResourceType": "snapshot", "Tags": catalog.to_tag_list(tags)}])["SnapshotId"])
        if state == "partial":
            self.client.delete_snapshot(SnapshotId=ids[-1])
        return set_id, ids

    def args(self, **kw):
        out = dict(endpoint_url=self.ep.url, access_key="testing", secret_key="testing", region=self.region,
                   name=self.name)
        out.update(kw)
        return out

    def snapshot_ids(self):
        return set(s["SnapshotId"] for s in self.client.describe_snapshots(OwnerIds=["self"])["Snapshots"])


def run(monkeypatch, module, args, check_mode=False):
    return run_module(monkeypatch, module.main, args, check_mode)


def deleted_ids(ep):
    return sorted(c["params"]["SnapshotId"] for c in ep.calls("DeleteSnapshot") if c["status"] == 200)


# ----------------------------------------------------------------------------- GFS

def test_gfs_keeps_what_the_calendar_says(monkeypatch, ec2):
    site = Site(ec2)
    made = dict((day, site.take(at(day + " 02:00"))) for day in (
        "2023-12-31", "2024-01-15", "2024-02-10", "2024-02-20", "2024-03-01", "2024-03-05", "2024-03-30",
        "2024-03-31", "2024-04-01"))
    partial, partial_ids = site.take(at("2024-04-01 14:00"), state="partial")
    pending = site.take(at("2024-04-02 02:00"), state="pending")[0]
    # complete sets, newest first: 04-01 (Mon, ISO 2024-W14), 03-31 (Sun, W13), 03-30 (W13), 03-05 (Tue, W10),
    # 03-01 (Fri, W09), 02-20, 02-10, 01-15, 2023-12-31
    # daily 2: 04-01, 03-31; weekly 3: 04-01, 03-31, 03-05; monthly 3: 04-01, 03-31, 02-20; yearly 2: 04-01, 12-31
    kept_days = ["2024-04-01", "2024-03-31", "2024-03-05", "2024-02-20", "2023-12-31"]
    doomed_days = ["2024-03-30", "2024-03-01", "2024-02-10", "2024-01-15"]
    args = site.args(keep_daily=2, keep_weekly=3, keep_monthly=3, keep_yearly=2)
    doomed_snaps = sorted(s for d in doomed_days for s in made[d][1])
    before = site.snapshot_ids()

    ec2.clear_calls()
    res = run(monkeypatch, backup_set_prune, args, check_mode=True)
    assert res["changed"] is True and deleted_ids(ec2) == [] and site.snapshot_ids() == before
    assert sorted(d["set_id"] for d in res["deleted"]) == sorted(made[d][0] for d in doomed_days)
    kept = dict((k["set_id"], k["reason"]) for k in res["kept"])
    assert kept == {
        made["2024-04-01"][0]: "newest complete set",
        made["2024-03-31"][0]: "keep_daily=2: newest of day 2024-03-31; keep_weekly=3: newest of week 2024-W13; "
                               "keep_monthly=3: newest of month 2024-03",
        made["2024-03-05"][0]: "keep_weekly=3: newest of week 2024-W10",
        made["2024-02-20"][0]: "keep_monthly=3: newest of month 2024-02",
        made["2023-12-31"][0]: "keep_yearly=2: newest of year 2023",
        partial: "partial set kept (delete_partial is false)",
        pending: "pending: never pruned"}
    assert [k["set_id"] for k in res["kept"]][:3] == [pending, partial, made["2024-04-01"][0]]  # newest first
    assert set(d["reason"] for d in res["deleted"]) == {
        "not the newest of a period kept by keep_daily=2, keep_weekly=3, keep_monthly=3, keep_yearly=2"}

    res = run(monkeypatch, backup_set_prune, args)
    assert res["changed"] is True and res["locked"] == []
    assert deleted_ids(ec2) == doomed_snaps
    assert site.snapshot_ids() == before - set(doomed_snaps)
    assert all(s in site.snapshot_ids() for d in kept_days for s in made[d][1])
    assert set(partial_ids[:-1]) <= site.snapshot_ids()

    ec2.clear_calls()
    res = run(monkeypatch, backup_set_prune, args)
    assert res["changed"] is False and res["deleted"] == [] and ec2.calls("DeleteSnapshot") == []
    assert ec2.calls("DescribeLockedSnapshots") == []  # nothing to delete nor lock: the locks are not needed


def test_gfs_refusals(monkeypatch, ec2):
    site = Site(ec2, volumes=1)
    site.take(at("2024-01-01 02:00"))
    ec2.clear_calls()
    for args, message in ((dict(keep_daily=0), "keep_daily must be at least 1"),
                          (dict(delete_partial=True, lock=dict(mode="governance", duration=1)),
                           "lock locks the sets that retention keeps"),
                          (dict(keep_last=1, lock=dict(mode="governance", duration=1, cool_off_period=2)),
                           "lock.cool_off_period is only for mode=compliance")):
        res = run(monkeypatch, backup_set_prune, site.args(**args))
        assert res["failed"] is True and res["msg"].startswith(message), res["msg"]
    res = run(monkeypatch, backup_set_prune, site.args(keep_last=1, lock=dict(mode="governance")))
    assert res["failed"] is True and "one of the following is required: duration, expiration_date" in res["msg"]
    assert ec2.calls() == []


# ----------------------------------------------------------------------------- locks

def test_lock_the_kept_sets_idempotently(monkeypatch, ec2):
    site = Site(ec2)
    made = [site.take(at("2024-05-%02d 02:00" % d)) for d in range(1, 6)]  # oldest first
    kept_snaps = sorted(made[4][1] + made[3][1])
    args = site.args(keep_last=2, lock=dict(mode="governance", duration=30))

    ec2.clear_calls()
    res = run(monkeypatch, backup_set_prune, args, check_mode=True)
    assert res["changed"] is True and ec2.calls("LockSnapshot") == [] and ec2.calls("DeleteSnapshot") == []
    assert sorted(x["snapshot_id"] for x in res["locked"]) == kept_snaps
    assert set((x["mode"], x["duration"]) for x in res["locked"]) == {("governance", 30)}

    res = run(monkeypatch, backup_set_prune, args)
    calls = ec2.calls("LockSnapshot")
    assert sorted(c["params"]["SnapshotId"] for c in calls) == kept_snaps
    assert all(c["params"]["LockMode"] == "governance" and c["params"]["LockDuration"] == "30" for c in calls)
    assert all(x["lock_state"] == "governance" for x in res["locked"])
    # the locks came first, then the deletions
    assert max(c["seq"] for c in calls) < min(c["seq"] for c in ec2.calls("DeleteSnapshot"))
    assert deleted_ids(ec2) == sorted(s for _sid, ids in made[:3] for s in ids)
    locks = dict((i["SnapshotId"], i) for i in site.client.describe_locked_snapshots()["Snapshots"])
    assert set(kept_snaps) <= set(locks)

    ec2.clear_calls()
    res = run(monkeypatch, backup_set_prune, args)
    assert res["changed"] is False and res["locked"] == [] and res["deleted"] == []
    assert ec2.calls("LockSnapshot") == [] and ec2.calls("DeleteSnapshot") == []
    res = run(monkeypatch, backup_set_prune, args, check_mode=True)
    assert res["changed"] is False and res["locked"] == []

    # compliance asked over a longer governance lock: compliance, and the 30 days stay (never shorter)
    ec2.clear_calls()
    res = run(monkeypatch, backup_set_prune, site.args(keep_last=2, lock=dict(mode="compliance", duration=10,
                                                                              cool_off_period=1)))
    assert res["changed"] is True
    assert sorted(x["snapshot_id"] for x in res["locked"]) == kept_snaps
    for x in res["locked"]:
        assert x["lock_state"] == "compliance-cooloff" and x["duration"] == 30 and x["mode"] == "compliance"
        assert x["lock_expires_on"] >= catalog.utc_iso(locks[x["snapshot_id"]]["LockExpiresOn"])
    ec2.clear_calls()
    res = run(monkeypatch, backup_set_prune, site.args(keep_last=2, lock=dict(mode="governance", duration=30)))
    assert res["changed"] is False and ec2.calls("LockSnapshot") == []


def test_locked_sets_are_never_pruned(monkeypatch, ec2):
    site = Site(ec2)
    made = [site.take(at("2024-06-%02d 02:00" % d)) for d in range(1, 5)]  # oldest first
    locked_id, locked_snaps = made[0]
    site.client.lock_snapshot(SnapshotId=locked_snaps[1], LockMode="governance", LockDuration=7)  # one member only
    ec2.clear_calls()
    res = run(monkeypatch, backup_set_prune, site.args(keep_last=1, older_than_days=0))
    kept = dict((k["set_id"], k) for k in res["kept"])
    assert kept[locked_id]["reason"] == "locked"
    assert [(lk["snapshot_id"], lk["state"]) for lk in kept[locked_id]["locks"]] == [(locked_snaps[1], "governance")]
    assert sorted(d["set_id"] for d in res["deleted"]) == sorted(sid for sid, _ids in made[1:3])
    touched = [c["params"]["SnapshotId"] for c in ec2.calls("DeleteSnapshot")]
    assert not set(touched) & set(locked_snaps)  # neither the locked member nor its unlocked sibling
    assert all(c["status"] == 200 for c in ec2.calls("DeleteSnapshot"))
    assert set(locked_snaps) <= site.snapshot_ids()

    # named and forced: refused with the lock and its expiry, nothing deleted
    expires = catalog.utc_iso(site.client.describe_locked_snapshots(SnapshotIds=[locked_snaps[1]])["Snapshots"][0]
                              ["LockExpiresOn"])
    ec2.clear_calls()
    res = run(monkeypatch, backup_set_prune, site.args(set_ids=[locked_id], force=True))
    assert res["failed"] is True and ec2.calls("DeleteSnapshot") == []
    assert res["msg"].startswith("refused, nothing was deleted: set %s is locked (%s governance until %s)"
                                 % (locked_id, locked_snaps[1], expires))
    assert "force does not override a lock" in res["msg"]

    # the endpoint itself refuses such a deletion
    with pytest.raises(Exception, match="SnapshotLocked"):
        site.client.delete_snapshot(SnapshotId=locked_snaps[1])
    # unlocked, it goes like any other
    site.client.unlock_snapshot(SnapshotId=locked_snaps[1])
    res = run(monkeypatch, backup_set_prune, site.args(set_ids=[locked_id]))
    assert res["changed"] is True and not set(locked_snaps) & site.snapshot_ids()


# ----------------------------------------------------------------------------- regions

def test_prune_in_one_region_does_not_touch_the_other(monkeypatch, ec2):
    home = Site(ec2)
    away = Site(ec2, region=OTHER_REGION)
    away.name = home.name  # the same series in both regions
    home_sets = [home.take(at("2024-07-%02d 02:00" % d)) for d in range(1, 4)]
    away_sets = [away.take(at("2024-07-%02d 02:00" % d)) for d in range(1, 4)]
    home_before = home.snapshot_ids()
    ec2.clear_calls()
    res = run(monkeypatch, backup_set_prune, away.args(keep_last=1, lock=dict(mode="governance", duration=3)))
    assert sorted(d["set_id"] for d in res["deleted"]) == sorted(sid for sid, _ids in away_sets[:2])
    assert set(c["region"] for c in ec2.calls()) == {OTHER_REGION}
    assert deleted_ids(ec2) == sorted(s for _sid, ids in away_sets[:2] for s in ids)
    assert home.snapshot_ids() == home_before
    home_locked = set(i["SnapshotId"] for i in home.client.describe_locked_snapshots()["Snapshots"])
    assert not home_locked & set(s for _sid, ids in home_sets for s in ids)
    assert set(away_sets[2][1]) <= set(i["SnapshotId"] for i in away.client.describe_locked_snapshots()["Snapshots"])
    # and the home region's own run sees only its own sets
    res = run(monkeypatch, backup_set_prune, home.args(keep_last=3), check_mode=True)
    assert sorted(k["set_id"] for k in res["kept"]) == sorted(sid for sid, _ids in home_sets)


# ----------------------------------------------------------------------------- the Recycle Bin

def test_a_set_in_the_recycle_bin_says_how_to_recover_it(monkeypatch, ec2):
    site = Site(ec2)
    binned, binned_ids = site.take(at("2024-08-01 02:00"))
    newest = site.take(at("2024-08-02 02:00"))[0]
    ec2.control("recycle_bin", snapshot_ids=binned_ids, retain_days=7)
    warnings = []
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda self, text: warnings.append(text))

    res = run(monkeypatch, backup_set_info, site.args(set_id=binned))
    assert res["sets"] == []
    bin_ = res["recycle_bin"]
    assert bin_["set_id"] == binned and bin_["snapshot_ids"] == sorted(binned_ids)
    assert sorted(bin_["exit_times"]) == sorted(binned_ids)
    for text in (bin_["msg"], warnings[0]):
        assert text.startswith("set %s: 2 snapshot(s) of it are in the Recycle Bin (%s; the first leaves the bin for "
                               "good at " % (binned, ", ".join(sorted(binned_ids))))
        assert "Recover them with RestoreSnapshotFromRecycleBin, one call per snapshot" in text

    # backup_set_prune's refusal of the id says the same
    res = run(monkeypatch, backup_set_prune, site.args(set_ids=[binned]))
    assert res["failed"] is True
    assert "set %s does not exist in this account and region; set %s: 2 snapshot(s) of it are in the Recycle Bin" \
        % (binned, binned) in res["msg"]

    # one member back: the set is partial, the other one is still reported in the bin
    site.client.restore_snapshot_from_recycle_bin(SnapshotId=binned_ids[0])
    res = run(monkeypatch, backup_set_info, site.args(set_id=binned))
    assert [s["state"] for s in res["sets"]] == ["partial"]
    assert res["recycle_bin"]["snapshot_ids"] == [binned_ids[1]]
    site.client.restore_snapshot_from_recycle_bin(SnapshotId=binned_ids[1])
    res = run(monkeypatch, backup_set_info, site.args(set_id=binned))
    assert [s["state"] for s in res["sets"]] == ["complete"] and "recycle_bin" not in res

    # a set that a prune deleted under a Recycle Bin retention rule is found there afterwards
    ec2.control("recycle_bin_rule", retain_days=1)
    res = run(monkeypatch, backup_set_prune, site.args(keep_last=1))
    assert [d["set_id"] for d in res["deleted"]] == [binned]
    res = run(monkeypatch, backup_set_info, site.args(set_id=binned))
    assert res["sets"] == [] and res["recycle_bin"]["snapshot_ids"] == sorted(binned_ids)
    res = run(monkeypatch, backup_set_info, site.args(set_id=newest))
    assert "recycle_bin" not in res
    # ... until its retention is over
    ec2.control("lock_clock", advance=2 * 86400)
    res = run(monkeypatch, backup_set_info, site.args(set_id=binned))
    assert res["sets"] == [] and "recycle_bin" not in res


# ----------------------------------------------------------------------------- an SDK without snapshot locks

def old_sdk_client(ep, tmp_path, region):
    """A real botocore client whose EC2 model lacks the snapshot lock API, as botocore < 1.34 (Debian 12's
    python3-botocore 1.29, the lab's guests) is: the model file with those operations taken out, found first
    on the loader's search path."""
    import json

    import boto3
    import botocore.session

    session = botocore.session.get_session()
    loader = session.get_component("data_loader")
    version = loader.determine_latest_version("ec2", "service-2")
    model = loader.load_service_model("ec2", "service-2", version)
    for op in ("DescribeLockedSnapshots", "LockSnapshot", "UnlockSnapshot"):
        model["operations"].pop(op)
    where = tmp_path / "models" / "ec2" / version
    where.mkdir(parents=True)
    (where / "service-2.json").write_text(json.dumps(model))
    loader.search_paths.insert(0, str(tmp_path / "models"))
    client = boto3.session.Session(botocore_session=session, region_name=region).client(
        "ec2", endpoint_url=ep.url, aws_access_key_id="testing", aws_secret_access_key="testing")
    from ansible_collections.amazon.aws.plugins.module_utils.retries import RetryingBotoClientWrapper
    from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
    return RetryingBotoClientWrapper(client, ebs.RETRY)


def test_an_sdk_without_snapshot_locks_prunes_with_a_warning_and_refuses_to_lock(ec2, tmp_path):
    from ansible_collections.stillpoint.snapshots.plugins.module_utils import _retention as retention
    from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

    site = Site(ec2)
    old, new = site.take(at("2026-01-01 02:00")), site.take(at("2026-01-02 02:00"))
    client = old_sdk_client(ec2, tmp_path, site.region)
    assert not retention.sdk_has_locks(client)
    ec2.clear_calls()
    with pytest.raises(StillpointError) as refused:
        retention.prune(client, name=site.name, keep_last=1, lock={"mode": "governance", "duration": 7})
    assert "botocore >= 1.34" in refused.value.msg and "nothing was deleted or locked" in refused.value.msg
    assert deleted_ids(ec2) == [] and ec2.calls("LockSnapshot") == []
    result = retention.prune(client, name=site.name, keep_last=1)
    assert result["changed"] and [d["set_id"] for d in result["deleted"]] == [old[0]]
    assert deleted_ids(ec2) == sorted(old[1]) and ec2.calls("DescribeLockedSnapshots") == []
    assert "snapshot locks were not read" in result["warnings"][0]
    assert set(new[1]) <= site.snapshot_ids()


def test_prune_playbook_gfs_and_lock_from_survey_text(ec2):
    """playbooks/prune.yml as an AWX survey sends it: GFS counts and the lock as text, 0 and "" as off."""
    site = Site(ec2)
    made = [site.take(at("2024-05-%02d 02:00" % d)) for d in range(1, 11)]  # ten daily sets, oldest first
    extravars = {"prune_name": site.name, "prune_keep_last": "0", "prune_keep_daily": "3", "prune_keep_weekly": "0",
                 "prune_keep_monthly": "", "prune_keep_yearly": "0", "prune_lock_mode": "governance",
                 "prune_lock_days": "30", "prune_lock_cool_off_hours": "0",
                 "prune_aws_endpoint_url": ec2.url, "prune_aws_region": ec2.region}
    playbook = os.path.join(ROOT, "playbooks", "prune.yml")
    rc, res, _raw = run_playbook(playbook, ec2, extravars, check=True)
    assert rc == 0, res
    assert ec2.calls("LockSnapshot") == [] and ec2.calls("DeleteSnapshot") == []
    rc, res, raw = run_playbook(playbook, ec2, extravars)
    assert rc == 0, res
    pruned = task(res, "Apply retention")
    kept = [sid for sid, _ids in made[-3:]]
    assert sorted(k["set_id"] for k in pruned["kept"]) == sorted(kept)
    assert sorted(d["set_id"] for d in pruned["deleted"]) == sorted(sid for sid, _ids in made[:-3])
    locked = sorted(c["params"]["SnapshotId"] for c in ec2.calls("LockSnapshot"))
    assert locked == sorted(s for _sid, ids in made[-3:] for s in ids)
    assert all(c["params"]["LockMode"] == "governance" and c["params"]["LockDuration"] == "30"
               for c in ec2.calls("LockSnapshot"))
    assert sorted(raw["global_custom_stats"]["stillpoint_pruned_sets"]) == sorted(sid for sid, _ids in made[:-3])
    # a second run: nothing to delete, nothing to lock
    ec2.clear_calls()
    rc, res, _raw = run_playbook(playbook, ec2, extravars)
    assert rc == 0 and task(res, "Apply retention")["changed"] is False
    assert ec2.calls("LockSnapshot") == [] and ec2.calls("DeleteSnapshot") == []
