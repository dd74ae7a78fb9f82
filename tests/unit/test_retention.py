# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""GFS retention and snapshot locks in the catalog's pure prune policy (_catalog.prune_plan/prune_decision).

The expected sets come from the calendar (month ends from ``calendar.monthrange``, ISO weeks written out
by hand), not from the code under test. The clock is injected (``now``).
"""

import calendar
import datetime

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

UTC = datetime.timezone.utc
NOW = datetime.datetime(2024, 1, 1, 0, 0, tzinfo=UTC)


def rec(when, state="complete", name="pgdata", instance="i-a", schema="1", tag=""):
    sid = "bs-%s-%s%s" % (when.strftime("%Y%m%dT%H%M%SZ"), instance, tag)
    return {"set_id": sid, "name": name, "instance_id": instance, "state": state, "schema": schema,
            "created": catalog.utc_iso(when), "snapshot_ids": ["snap-%s-%d" % (sid, i) for i in range(2)],
            "problems": []}


def year_of_daily_sets(year=2023, instance="i-a", hour=2):
    first = datetime.datetime(year, 1, 1, hour, tzinfo=UTC)
    days = 366 if calendar.isleap(year) else 365
    return [rec(first + datetime.timedelta(days=d), instance=instance) for d in range(days)]


def plan(records, now=NOW, **kw):
    keep, delete = catalog.prune_plan(records, now=now, **kw)
    assert len(keep) + len(delete) == len(records)
    return (dict((r["created"][:10], why) for r, why in keep if r["instance_id"] == "i-a"),
            dict((r["created"][:10], why) for r, why in delete if r["instance_id"] == "i-a"))


def month_ends(year):
    return ["%04d-%02d-%02d" % (year, m, calendar.monthrange(year, m)[1]) for m in range(1, 13)]


GFS = dict(keep_daily=7, keep_weekly=4, keep_monthly=12, keep_yearly=3)


def test_gfs_over_a_year_of_daily_sets():
    records = year_of_daily_sets()
    keep, delete = plan(records, gfs=GFS)
    daily = ["2023-12-%02d" % d for d in range(25, 32)]
    # 2023-12-31 is a Sunday: ISO weeks 2023-W52 (Dec 25..31), W51 (..24), W50 (..17), W49 (..10)
    weekly = ["2023-12-31", "2023-12-24", "2023-12-17", "2023-12-10"]
    monthly = month_ends(2023)
    yearly = ["2023-12-31"]  # only one year has sets: keep_yearly=3 keeps what there is
    expected = set(daily) | set(weekly) | set(monthly) | set(yearly)
    assert len(expected) == 21
    assert set(keep) == expected
    assert len(delete) == 365 - 21
    assert keep["2023-12-31"] == "newest complete set"
    assert keep["2023-12-24"] == "keep_weekly=4: newest of week 2023-W51"
    assert keep["2023-11-30"] == "keep_monthly=12: newest of month 2023-11"
    assert keep["2023-12-28"] == "keep_daily=7: newest of day 2023-12-28"
    assert set(delete.values()) == {"not the newest of a period kept by keep_daily=7, keep_weekly=4, keep_monthly=12, "
                                    "keep_yearly=3"}


def test_gfs_reason_names_every_rule_that_keeps_a_set():
    keep, _delete = plan(year_of_daily_sets(), gfs=dict(keep_daily=3, keep_weekly=2, keep_monthly=2), keep_last=2)
    # Dec 30: among the newest 2 and the daily set of its day; Dec 24: weekly; Nov 30: monthly
    assert keep["2023-12-30"] == "among the newest 2; keep_daily=3: newest of day 2023-12-30"
    assert keep["2023-12-24"] == "keep_weekly=2: newest of week 2023-W51"
    assert keep["2023-11-30"] == "keep_monthly=2: newest of month 2023-11"
    assert sorted(keep) == ["2023-11-30", "2023-12-24", "2023-12-29", "2023-12-30", "2023-12-31"]


def test_gfs_is_a_union_with_keep_last_and_older_than():
    records = year_of_daily_sets()
    keep, _delete = plan(records, keep_last=30, gfs=dict(keep_monthly=12))
    assert len(keep) == 30 + 11  # Dec 2..31, and the month ends Jan..Nov (Dec 31 is both)
    keep, _delete = plan(records, older_than_days=10, gfs=dict(keep_monthly=3))
    # sets at 02:00: Dec 22 is 9.9 days old at NOW, Dec 21 10.9; month ends Oct 31, Nov 30 (Dec 31 already in)
    assert sorted(keep) == ["2023-10-31", "2023-11-30"] + ["2023-12-%02d" % d for d in range(22, 32)]


def test_yearly_and_iso_weeks_across_the_new_year():
    start = datetime.datetime(2024, 7, 1, 2, tzinfo=UTC)
    records = [rec(start + datetime.timedelta(days=d)) for d in range(365)]  # 2024-07-01 .. 2025-06-30
    now = datetime.datetime(2025, 7, 1, tzinfo=UTC)
    keep, _delete = plan(records, now=now, gfs=dict(keep_yearly=5))
    assert sorted(keep) == ["2024-12-31", "2025-06-30"]
    # ISO week 2025-W01 runs Mon 2024-12-30 .. Sun 2025-01-05: its newest set is Jan 5, not Dec 31
    end = datetime.datetime(2025, 1, 5, 2, tzinfo=UTC)
    records = [rec(end - datetime.timedelta(days=d)) for d in range(14)]
    keep, _delete = plan(records, now=end, gfs=dict(keep_weekly=2))
    assert sorted(keep) == ["2024-12-29", "2025-01-05"]
    assert keep["2024-12-29"] == "keep_weekly=2: newest of week 2024-W52"


def test_partial_and_pending_sets_never_represent_a_period():
    records = year_of_daily_sets()
    dec31 = datetime.datetime(2023, 12, 31, 2, tzinfo=UTC)
    later_partial = rec(dec31 + datetime.timedelta(hours=12), state="partial", tag="-p")
    later_pending = rec(dec31 + datetime.timedelta(hours=13), state="pending", tag="-q")
    nov_partial = rec(datetime.datetime(2023, 11, 30, 20, tzinfo=UTC), state="partial", tag="-p")
    keep, delete = catalog.prune_plan(records + [later_partial, later_pending, nov_partial], now=NOW,
                                      gfs=dict(keep_daily=1, keep_monthly=2), delete_partial=True)
    why = dict((r["set_id"], w) for r, w in keep)
    gone = dict((r["set_id"], w) for r, w in delete)
    assert gone[later_partial["set_id"]] == gone[nov_partial["set_id"]] == "partial set"
    assert why[later_pending["set_id"]] == "pending: never pruned"
    # the complete set of 02:00 is the newest complete set of Dec 31; Nov 30's complete set keeps November
    assert why[records[-1]["set_id"]] == "newest complete set"
    nov30 = [r for r in records if r["created"].startswith("2023-11-30")][0]
    assert why[nov30["set_id"]] == "keep_monthly=2: newest of month 2023-11"


def test_a_gap_in_backups_does_not_shrink_what_gfs_keeps():
    records = [r for r in year_of_daily_sets() if r["created"] < "2023-12-20"]  # nothing since Dec 19
    keep, _delete = plan(records, gfs=dict(keep_daily=3))
    assert sorted(keep) == ["2023-12-17", "2023-12-18", "2023-12-19"]


def test_gfs_is_per_name_and_instance():
    records = year_of_daily_sets() + year_of_daily_sets(instance="i-b")
    keep, delete = catalog.prune_plan(records, now=NOW, gfs=dict(keep_monthly=12))
    assert len(keep) == 24 and len(delete) == 2 * 365 - 24
    assert sorted(set(r["instance_id"] for r, _w in keep)) == ["i-a", "i-b"]


def test_check_prune_rules_for_gfs_and_lock():
    catalog.check_prune_rules(gfs=dict(keep_daily=1))
    with pytest.raises(StillpointError, match="^nothing to do: give keep_last, older_than_days, keep_daily"):
        catalog.check_prune_rules(gfs=dict(keep_daily=None))
    with pytest.raises(StillpointError, match="keep_weekly must be at least 1"):
        catalog.check_prune_rules(gfs=dict(keep_weekly=0))
    lock = dict(mode="governance", duration=30)
    with pytest.raises(StillpointError, match="lock locks the sets that retention keeps"):
        catalog.check_prune_rules(delete_partial=True, lock=lock)
    catalog.check_prune_rules(gfs=dict(keep_daily=7), lock=lock)
    bad = [(dict(mode="legal-hold", duration=1), "lock.mode must be one of governance, compliance"),
           (dict(mode="governance"), "exactly one of duration"),
           (dict(mode="governance", duration=1, expiration_date="2030-01-01T00:00:00Z"), "exactly one of duration"),
           (dict(mode="governance", duration=0), "lock.duration must be 1..36500"),
           (dict(mode="governance", duration=1, cool_off_period=2), "only for mode=compliance"),
           (dict(mode="compliance", duration=1, cool_off_period=73), "cool_off_period must be 1..72"),
           (dict(mode="compliance", expiration_date="2023-12-31T00:00:00Z"), "is not in the future"),
           (dict(mode="compliance", expiration_date="next tuesday"), "is not an ISO 8601 time")]
    for spec, message in bad:
        with pytest.raises(StillpointError, match=message):
            catalog.check_prune_rules(keep_last=1, lock=spec, now=NOW)


# ----------------------------------------------------------------------------- locks

def lock_item(sid, state, expires, duration=None, created=None):
    item = {"SnapshotId": sid, "LockState": state, "LockExpiresOn": expires, "LockCreatedOn": created or NOW}
    if duration is not None:
        item["LockDuration"] = duration
    return item


def test_a_locked_set_is_kept_by_retention_and_refused_by_set_ids():
    records = sorted(year_of_daily_sets()[-10:], key=lambda r: r["created"], reverse=True)
    old = records[-1]
    later = NOW + datetime.timedelta(days=3)
    items = [lock_item(old["snapshot_ids"][1], "governance", later),
             lock_item(records[-2]["snapshot_ids"][0], "expired", NOW - datetime.timedelta(days=1))]
    locked = catalog.locks_by_set(records, items, now=NOW)
    assert locked == {old["set_id"]: [dict(snapshot_id=old["snapshot_ids"][1], state="governance",
                                           expires_on="2024-01-04T00:00:00Z")]}
    decision = catalog.prune_decision(records, keep_last=2, now=NOW, locked=locked)
    kept = dict((k["set_id"], k) for k in decision["kept"])
    assert kept[old["set_id"]]["reason"] == "locked"
    assert kept[old["set_id"]]["locks"] == locked[old["set_id"]]
    assert old["set_id"] not in [r["set_id"] for r, _w in decision["delete"]]
    assert len(decision["delete"]) == 7  # the expired lock on the second oldest does not hold it
    assert old["set_id"] in decision["diff"]["after"]["set_ids"]
    for force in (False, True):
        with pytest.raises(StillpointError) as info:
            catalog.prune_decision(records, set_ids=[old["set_id"], records[-2]["set_id"]], force=force, now=NOW,
                                   locked=locked, why_absent=lambda sid: "absent")
        assert info.value.msg == (
            "refused, nothing was deleted: set %s is locked (%s governance until 2024-01-04T00:00:00Z): EC2 refuses to "
            "delete a locked snapshot and force does not override a lock; wait for the lock to expire, or unlock a "
            "governance lock (or a compliance lock still in its cooling-off period) with UnlockSnapshot first"
            % (old["set_id"], old["snapshot_ids"][1]))


def test_lock_sets_are_the_complete_sets_a_rule_keeps():
    records = year_of_daily_sets()[-5:]
    records.append(rec(NOW - datetime.timedelta(hours=1), state="pending", tag="-p"))
    records.append(rec(NOW - datetime.timedelta(hours=2), state="partial", tag="-q"))
    decision = catalog.prune_decision(records, keep_last=2, now=NOW)
    assert [r["created"][:10] for r in catalog.lock_sets(decision["keep"])] == ["2023-12-31", "2023-12-30"]
    decision = catalog.prune_decision(records, delete_partial=True, now=NOW)
    assert [r["created"][:10] for r in catalog.lock_sets(decision["keep"])] == ["2023-12-31"]  # "no rule given"


def test_lock_request_never_weakens_and_is_idempotent():
    gov30 = catalog.check_lock(dict(mode="governance", duration=30), NOW)
    comp30 = catalog.check_lock(dict(mode="compliance", duration=30, cool_off_period=24), NOW)
    until = catalog.check_lock(dict(mode="governance", expiration_date="2024-06-01T00:00:00Z"), NOW)
    in30 = NOW + datetime.timedelta(days=30)
    assert catalog.lock_request("snap-1", None, gov30, NOW) == dict(SnapshotId="snap-1", LockMode="governance",
                                                                    LockDuration=30)
    assert catalog.lock_request("snap-1", None, comp30, NOW) == dict(SnapshotId="snap-1", LockMode="compliance",
                                                                     LockDuration=30, CoolOffPeriod=24)
    # already locked that long (a later run: the lock was made 10 days ago with the same duration)
    assert catalog.lock_request("snap-1", lock_item("snap-1", "governance", in30, 30), gov30, NOW) is None
    made = NOW - datetime.timedelta(days=10)
    assert catalog.lock_request("snap-1", lock_item("snap-1", "compliance", made + datetime.timedelta(days=30), 30,
                                                    created=made), comp30, NOW) is None
    # a longer one is extended; an expired one is made again
    assert catalog.lock_request("snap-1", lock_item("snap-1", "governance", NOW + datetime.timedelta(days=7), 7),
                                gov30, NOW)["LockDuration"] == 30
    assert catalog.lock_request("snap-1", lock_item("snap-1", "expired", NOW, 7), comp30, NOW)["CoolOffPeriod"] == 24
    # compliance already: a governance spec keeps compliance, no new cool-off
    ask = catalog.lock_request("snap-1", lock_item("snap-1", "compliance", NOW + datetime.timedelta(days=7), 7), gov30,
                               NOW)
    assert ask == dict(SnapshotId="snap-1", LockMode="compliance", LockDuration=30)
    # governance for 100 days, compliance for 30 asked: compliance, and not shorter than the 100 days
    long_gov = NOW + datetime.timedelta(days=100)
    ask = catalog.lock_request("snap-1", lock_item("snap-1", "governance", long_gov, 100), comp30, NOW)
    assert ask == dict(SnapshotId="snap-1", LockMode="compliance", LockDuration=100, CoolOffPeriod=24)
    ask = catalog.lock_request("snap-1", lock_item("snap-1", "governance", long_gov), comp30, NOW)  # a date lock
    assert ask == dict(SnapshotId="snap-1", LockMode="compliance", ExpirationDate=long_gov, CoolOffPeriod=24)
    # a date lock counts as long as the duration it spans, or as what is left of it
    assert catalog.lock_request("snap-1", lock_item("snap-1", "governance", long_gov), comp30, long_gov) is not None
    assert catalog.lock_request("snap-1", lock_item("snap-1", "governance", long_gov), gov30, NOW) is None
    short = lock_item("snap-1", "governance", NOW + datetime.timedelta(days=20), created=NOW - datetime.timedelta(days=5))
    assert catalog.lock_request("snap-1", short, gov30, NOW)["LockDuration"] == 30
    # by date: covered when the lock ends on or after it
    assert catalog.lock_request("snap-1", lock_item("snap-1", "governance", until["expiration_date"]), until, NOW) is None
    assert catalog.lock_request("snap-1", lock_item("snap-1", "governance", in30, 30), until, NOW)["ExpirationDate"] \
        == until["expiration_date"]
