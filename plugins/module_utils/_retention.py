# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_set_prune's EC2 side: retention over whole sets (keep_last, older_than_days, GFS), EBS snapshot
locks on the sets it keeps, never a DeleteSnapshot of a locked snapshot, and the Recycle Bin look-up that
backup_set_info and the absent-set refusal use. The policy itself is pure (_catalog.prune_decision).

EC2 calls: DescribeSnapshots, DescribeLockedSnapshots (before any deletion or lock; not when the plan deletes
and locks nothing), LockSnapshot (only with ``lock``), DeleteSnapshot, ListSnapshotsInRecycleBin (only to
explain a set id that is not there).
"""

from __future__ import annotations

import datetime

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

GFS_OPTIONS = tuple(rule for rule, _unit in catalog.GFS_RULES)


@ebs.RETRY
def _locked_page(client, **kwargs):
    return client.describe_locked_snapshots(**kwargs)


# EBS snapshot lock arrived in botocore 1.34.x (November 2023); Debian 12's python3-botocore (1.29) has none
LOCK_OPERATION = "DescribeLockedSnapshots"


def sdk_has_locks(client):
    """Whether this client's SDK knows the snapshot lock API (an older one cannot even send the call)."""
    return LOCK_OPERATION in client.meta.service_model.operation_names


def _sdk_version():
    try:
        import botocore
    except ImportError:  # the module reports a missing SDK before any call
        return "?"
    return botocore.__version__


def locked_snapshots(client):
    """Every DescribeLockedSnapshots item of this account and region (paged by NextToken; the SDK has no
    paginator for it). Listing them all, rather than by id, cannot fail on a snapshot deleted meanwhile.
    None when the SDK predates snapshot locks (see :func:`prune`)."""
    if not sdk_has_locks(client):
        return None
    items, kwargs = [], {"MaxResults": 1000}
    try:
        while True:
            page = _locked_page(client, **kwargs)
            items.extend(page.get("Snapshots", []))
            if not page.get("NextToken"):
                return items
            kwargs["NextToken"] = page["NextToken"]
    except ebs.aws_errors() as e:
        raise ebs.aws_error("DescribeLockedSnapshots (a prune reads the snapshot locks before it deletes or locks "
                            "anything, so that it never tries to delete a locked snapshot; the identity needs "
                            "ec2:DescribeLockedSnapshots); nothing was deleted", e)


def recycle_bin_members(client, set_id):
    """The snapshots of ``set_id`` in the Recycle Bin, found by the set id in their description (the bin lists
    no tags; ebs_snapshot_set's default description is ``stillpoint.snapshots set <set id>``)."""
    try:
        items = ebs.paginate(client, "list_snapshots_in_recycle_bin", "Snapshots")
    except ebs.aws_errors() as e:
        raise ebs.aws_error("ListSnapshotsInRecycleBin (looking for the snapshots of set %s)" % set_id, e)
    return [i for i in items if set_id in (i.get("Description") or "").split()]


def recovery_hint(set_id, items):
    """How to get a set's snapshots back out of the Recycle Bin."""
    ids = sorted(i["SnapshotId"] for i in items)
    exits = sorted(catalog.utc_iso(catalog.parse_time(i["RecycleBinExitTime"])) for i in items
                   if i.get("RecycleBinExitTime"))
    until = "; the first leaves the bin for good at %s" % exits[0] if exits else ""
    return ("set %s: %d snapshot(s) of it are in the Recycle Bin (%s%s). Recover them with RestoreSnapshotFromRecycleBin, "
            "one call per snapshot (aws ec2 restore-snapshot-from-recycle-bin --snapshot-id <id>; IAM "
            "ec2:RestoreSnapshotFromRecycleBin), then read the catalog again"
            % (set_id, len(ids), ", ".join(ids), until))


def recycle_bin_report(client, set_id):
    """``{set_id, snapshot_ids, exit_times, msg}`` for a set whose snapshots sit in the Recycle Bin, else None."""
    items = recycle_bin_members(client, set_id)
    if not items:
        return None
    return dict(set_id=set_id, snapshot_ids=sorted(i["SnapshotId"] for i in items),
                exit_times=dict((i["SnapshotId"], catalog.utc_iso(catalog.parse_time(i.get("RecycleBinExitTime"))))
                                for i in items if i.get("RecycleBinExitTime")),
                msg=recovery_hint(set_id, items))


def why_absent(client, sid, name, instance_id):
    """Why ``sid`` is not among the sets read: another name/instance, not ours, in the Recycle Bin, or not there."""
    elsewhere = ebs.catalog_sets(client, set_id=sid) if name or instance_id else []
    tagged = ebs.describe_snapshots(client, filters=[{"Name": "tag:%s" % catalog.K_SET_ID, "Values": [sid]}]) \
        if not elsewhere else []
    reason = catalog.absent_refusal(sid, elsewhere, [s["SnapshotId"] for s in tagged])
    if elsewhere or tagged:
        return reason
    try:
        found = recycle_bin_report(client, sid)
    except StillpointError as e:
        return "%s (the Recycle Bin could not be searched: %s)" % (reason, e.msg)
    return "%s; %s" % (reason, found["msg"]) if found else reason


def _lock(client, kwargs):
    try:
        return client.lock_snapshot(aws_retry=True, **kwargs)
    except ebs.aws_errors() as e:
        raise ebs.aws_error("LockSnapshot %s" % kwargs["SnapshotId"], e)


def _lock_entry(set_id, kwargs):
    entry = dict(set_id=set_id, snapshot_id=kwargs["SnapshotId"], mode=kwargs["LockMode"],
                 duration=kwargs.get("LockDuration"), cool_off_period=kwargs.get("CoolOffPeriod"),
                 expiration_date=catalog.utc_iso(kwargs["ExpirationDate"]) if kwargs.get("ExpirationDate") else None)
    return entry


def prune(client, name=None, instance_id=None, keep_last=None, older_than_days=None, delete_partial=False,
          set_ids=None, force=False, keep_daily=None, keep_weekly=None, keep_monthly=None, keep_yearly=None,
          lock=None, check_mode=False, now=None):
    """backup_set_prune: apply :func:`_catalog.prune_decision` to the catalog of this client's region, lock the
    kept sets (``lock``), then delete what the policy lets go.

    Returns ``{changed, deleted, kept, locked, diff}``. Refusals raise before anything changes; a lock that
    cannot be made raises before anything is deleted; snapshots that could not be deleted raise after the
    others were, with the result so far.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    gfs = dict(keep_daily=keep_daily, keep_weekly=keep_weekly, keep_monthly=keep_monthly, keep_yearly=keep_yearly)
    catalog.check_prune_rules(keep_last, older_than_days, set_ids, delete_partial, gfs=gfs, lock=lock, now=now)
    spec = catalog.check_lock(lock, now) if lock else None
    records = ebs.catalog_sets(client, name=name, instance_id=instance_id)

    def decide(locked):
        return catalog.prune_decision(records, keep_last, older_than_days, delete_partial, set_ids, force,
                                      lambda sid: why_absent(client, sid, name, instance_id), now=now, gfs=gfs,
                                      locked=locked)

    # the locks are read whenever something could be deleted or locked (a plan without them that deletes
    # nothing stays so with them: a lock only ever keeps more)
    decision = decide({}) if records and not spec and not set_ids else None
    lock_items = locked_snapshots(client) if records and (decision is None or decision["delete"]) else []
    warnings = []
    if lock_items is None:
        # an SDK without the lock API can neither read nor make locks. Refuse to lock; otherwise go on
        # without them: EC2 itself refuses DeleteSnapshot of a locked snapshot, and that refusal is
        # reported below with its set (which is then partial), as any other failed deletion is.
        sdk = "botocore %s" % _sdk_version()
        if spec:
            raise StillpointError("lock needs an SDK that knows EBS snapshot locks (LockSnapshot, DescribeLockedSnapshots: "
                                  "botocore >= 1.34); this host has %s. Upgrade boto3/botocore where the module runs, "
                                  "or run the prune in controller mode; nothing was deleted or locked" % sdk)
        warnings.append("snapshot locks were not read: %s predates EBS snapshot locks (DescribeLockedSnapshots, "
                        "botocore >= 1.34). A snapshot locked by another tool is refused by EC2 at deletion and "
                        "reported with its set" % sdk)
        lock_items = []
    if decision is None or lock_items:
        decision = decide(catalog.locks_by_set(records, lock_items, now))
    requests = []
    if spec:
        current = dict((i.get("SnapshotId"), i) for i in lock_items)
        for rec in catalog.lock_sets(decision["keep"]):
            for sid in rec["snapshot_ids"]:
                kwargs = catalog.lock_request(sid, current.get(sid), spec, now)
                if kwargs:
                    requests.append((rec["set_id"], kwargs))
    result = dict(changed=False, deleted=[], kept=decision["kept"], locked=[], diff=decision["diff"], warnings=warnings)
    if check_mode:
        result.update(changed=bool(decision["delete"] or requests), locked=[_lock_entry(s, k) for s, k in requests],
                      deleted=[dict(catalog.summary(rec, why), snapshot_ids=list(rec["snapshot_ids"]))
                               for rec, why in decision["delete"]])
        return result
    for set_id, kwargs in requests:  # protect what is kept before anything is deleted
        try:
            answer = _lock(client, kwargs)
        except StillpointError as e:
            so_far = dict(result)
            so_far["changed"] = bool(result["locked"])
            raise StillpointError("%s; nothing was deleted" % e.msg, **so_far)
        result["locked"].append(dict(_lock_entry(set_id, kwargs), lock_state=answer.get("LockState"),
                                     lock_expires_on=catalog.utc_iso(catalog.parse_time(answer.get("LockExpiresOn")))
                                     if answer.get("LockExpiresOn") else None))
        result["changed"] = True
    failures = []
    for rec, why in decision["delete"]:
        gone, failed = ebs.delete_ours(client, rec["snapshot_ids"])
        if gone:
            result["changed"] = True
            result["deleted"].append(dict(catalog.summary(rec, why), snapshot_ids=gone))
        failures.extend(dict(f, set_id=rec["set_id"]) for f in failed)
    if failures:
        left = sorted(set(f["set_id"] for f in failures))
        before = decision["diff"]["before"]["set_ids"]
        doomed = set(rec["set_id"] for rec, _why in decision["delete"])
        result["diff"]["after"]["set_ids"] = [sid for sid in before if sid not in doomed or sid in left]
        raise StillpointError("could not delete %d snapshot(s) of set(s) %s: %s. A set that lost some of its members "
                              "is now reported partial; fix the cause and prune again"
                              % (len(failures), ", ".join(left),
                                 "; ".join("%s: %s" % (f["snapshot_id"], f["error"]) for f in failures)),
                              errors=failures, **result)
    return result
