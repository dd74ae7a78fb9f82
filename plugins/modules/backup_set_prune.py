#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_set_prune
short_description: Apply retention to the backup sets of the snapshot catalog
version_added: 0.1.0
description:
  - Deletes whole backup sets recorded by M(stillpoint.snapshots.ebs_snapshot_set) (schema v2 and v1, see
    C(docs/catalog.md)), either by retention rules or by explicit set id.
  - Retention works per group of sets with the same name and instance, in the region of the connection (run it
    once per region). A V(complete) set is kept while it is among the newest O(keep_last) complete sets of its
    group B(or) younger than O(older_than_days) B(or) the newest complete set of one of the periods a
    grandfather-father-son rule keeps (O(keep_daily), O(keep_weekly), O(keep_monthly), O(keep_yearly)); it is
    deleted only when every rule given lets it go, and each kept set's C(reason) names every rule that keeps it.
    The newest complete set of each group is always kept. V(pending) sets are never deleted by retention (a run
    may still be waiting on them); V(partial) sets are deleted only with O(delete_partial=true) and never count
    as the set of a period.
  - A set with a snapshot under an EBS snapshot lock is never deleted. The locks are read
    (C(DescribeLockedSnapshots)) before anything is deleted or locked (a run that would do neither does not read
    them); a set retention would delete is kept with the
    reason C(locked), and a locked set named in O(set_ids) is refused even with O(force=true).
  - With O(lock), the snapshots of every V(complete) set a retention rule keeps are locked (C(LockSnapshot)),
    before anything is deleted. A snapshot that already has an equal or longer lock of an equal or stronger
    mode is left alone; an existing lock is never shortened nor turned from compliance into governance.
  - Only snapshots of this account (C(OwnerIds=self)) carrying the C(stillpoint:creator) marker are ever
    deleted; each snapshot is read again and checked for the marker right before its deletion. Snapshots that
    merely carry a matching C(stillpoint:set-id) tag are left alone.
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  name:
    description: Only sets of this backup series name.
    type: str
  instance_id:
    description: Only sets taken from this instance.
    type: str
  keep_last:
    description:
      - Keep the newest this many V(complete) sets of each group. At least 1.
    type: int
  keep_daily:
    description:
      - Keep the newest V(complete) set of each of the this many most recent days (UTC) that have one. At least 1.
      - Days without a complete set do not count, so a gap in the backups never makes retention keep fewer sets.
    type: int
    version_added: 0.2.0
  keep_weekly:
    description: Keep the newest V(complete) set of each of the this many most recent ISO weeks (UTC, Monday to
      Sunday) that have one. At least 1.
    type: int
    version_added: 0.2.0
  keep_monthly:
    description: Keep the newest V(complete) set of each of the this many most recent calendar months (UTC) that
      have one. At least 1.
    type: int
    version_added: 0.2.0
  keep_yearly:
    description: Keep the newest V(complete) set of each of the this many most recent calendar years (UTC) that
      have one. At least 1.
    type: int
    version_added: 0.2.0
  lock:
    description:
      - Lock the snapshots of the V(complete) sets that a retention rule keeps (EBS snapshot lock), so that nobody
        can delete them before the lock expires. Needs a retention rule (O(keep_last), O(older_than_days) or a
        C(keep_*) rule). The locks are made before anything is deleted; a lock that fails stops the run with
        nothing deleted.
      - Idempotent. A snapshot locked already with the same or a longer duration (or a later expiry) and the same
        or a stronger mode gets no call; a later run does not extend a lock it made.
    type: dict
    version_added: 0.2.0
    suboptions:
      mode:
        description:
          - V(governance) can be changed or removed by a user allowed to (C(ec2:UnlockSnapshot)).
          - V(compliance) cannot be removed nor shortened by anyone after its cooling-off period.
        type: str
        choices: [governance, compliance]
        required: true
      duration:
        description: Lock for this many days (1 to 36500). Exactly one of O(lock.duration) and
          O(lock.expiration_date).
        type: int
      expiration_date:
        description: Lock until this time (ISO 8601, UTC unless it says otherwise).
        type: str
      cool_off_period:
        description: For V(compliance) only, hours (1 to 72) during which the lock can still be removed or changed.
        type: int
  older_than_days:
    description:
      - Keep V(complete) sets younger than this many days (by the set's creation time; fractions allowed).
      - With O(keep_last) too, a set is deleted only when it is beyond O(keep_last) B(and) older than this.
    type: float
  delete_partial:
    description: Delete V(partial) sets (sets that can never become a valid backup).
    type: bool
    default: false
  set_ids:
    description:
      - Delete exactly these sets. Each must exist in this account and region, be ours (creator marker), and
        match O(name) and O(instance_id) when those are given; otherwise the task fails and deletes nothing.
      - The newest V(complete) set of a group, a V(pending) set and a set of a schema this version does not
        read are refused unless O(force=true). A locked set is refused, also with O(force=true), with the lock and
        its expiry in the message.
      - A set id that is not among the live snapshots is looked up in the Recycle Bin; the refusal then names its
        snapshots there and says how to recover them (C(RestoreSnapshotFromRecycleBin)).
      - May be combined with the retention rules; retention is then applied to the sets that remain.
      - A set that was already deleted no longer exists, so running the same explicit deletion again fails
        with the "does not exist" refusal; use retention rules for repeatable runs.
    type: list
    elements: str
  force:
    description: Allow O(set_ids) to delete the newest complete set of its group, a pending set, or a set of
      an unknown schema.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details: Computes and returns the plan; deletes nothing. C(changed) tells whether a real run would
      delete something.
  diff_mode:
    support: full
    details: Returns the set ids before and after.
  idempotent:
    support: partial
    details: With retention rules a second run deletes nothing, locks nothing and reports no change. An explicit
      O(set_ids) deletion refuses, on a second run, the sets that no longer exist.
notes:
  - At least one of O(keep_last), O(older_than_days), O(keep_daily), O(keep_weekly), O(keep_monthly),
    O(keep_yearly), O(set_ids) or O(delete_partial=true) is required.
  - "IAM: ec2:DescribeSnapshots, ec2:DescribeLockedSnapshots (when a run would delete or lock something),
    ec2:DeleteSnapshot; ec2:LockSnapshot with O(lock); ec2:ListSnapshotsInRecycleBin to explain a set id of
    O(set_ids) that is not there (optional: without it the refusal says the bin could not be searched)."
  - See C(docs/retention.md) for GFS, locks and the Recycle Bin.
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
  - stillpoint.snapshots.attributes
  - stillpoint.snapshots.attributes.actiongroup_aws
"""

EXAMPLES = r"""
- name: Keep the last 7 complete sets of each series on each instance
  stillpoint.snapshots.backup_set_prune:
    keep_last: 7

- name: Keep a week, but never fewer than 3 sets, and clear out broken sets
  stillpoint.snapshots.backup_set_prune:
    name: pgdata
    keep_last: 3
    older_than_days: 7
    delete_partial: true

- name: Show what retention would delete
  stillpoint.snapshots.backup_set_prune:
    keep_last: 7
  check_mode: true
  register: plan

- name: Grandfather-father-son, and a 35-day governance lock on every set it keeps
  stillpoint.snapshots.backup_set_prune:
    keep_daily: 7
    keep_weekly: 4
    keep_monthly: 12
    keep_yearly: 3
    lock:
      mode: governance
      duration: 35

- name: The same retention in the disaster-recovery region
  stillpoint.snapshots.backup_set_prune:
    region: eu-central-1
    keep_daily: 7
    keep_monthly: 12

- name: Delete one set by id
  stillpoint.snapshots.backup_set_prune:
    set_ids: [bs-20240301T020000Z-a1b2c3]
"""

RETURN = r"""
deleted:
  description: The sets deleted (in check mode, the sets that would be deleted).
  returned: always
  type: list
  elements: dict
  contains:
    set_id:
      description: The set id.
      type: str
      sample: bs-20240301T020000Z-a1b2c3
    name:
      description: The set's series name.
      type: str
    instance_id:
      description: The set's instance.
      type: str
    state:
      description: The set's state before deletion.
      type: str
    created:
      description: The set's creation time.
      type: str
    reason:
      description: Why it was deleted.
      type: str
      sample: beyond keep_last=7
    snapshot_ids:
      description: The snapshots deleted (in check mode, the set's snapshots).
      type: list
      elements: str
kept:
  description: The sets kept, each with the reason.
  returned: always
  type: list
  elements: dict
  contains:
    set_id:
      description: The set id.
      type: str
    name:
      description: The set's series name.
      type: str
    instance_id:
      description: The set's instance.
      type: str
    state:
      description: The set's state.
      type: str
    created:
      description: The set's creation time.
      type: str
    reason:
      description: Why it was kept. Every rule that keeps it, separated by C(; ), or V(locked) when only an EBS
        snapshot lock keeps it from being deleted.
      type: str
      sample: "among the newest 7; keep_monthly=12: newest of month 2024-03"
    locks:
      description: The active locks on the set's snapshots (only for locked sets).
      type: list
      elements: dict
      returned: when a snapshot of the set is locked
      sample: [{snapshot_id: snap-0a1b2c3d4e5f60718, state: governance, expires_on: "2024-04-30T02:00:00Z"}]
locked:
  description: The LockSnapshot calls made (in check mode, the calls a real run would make), one per snapshot.
  returned: always
  type: list
  elements: dict
  contains:
    set_id:
      description: The set the snapshot belongs to.
      type: str
    snapshot_id:
      description: The snapshot locked.
      type: str
    mode:
      description: V(governance) or V(compliance).
      type: str
    duration:
      description: Days, when locked by duration.
      type: int
    expiration_date:
      description: Expiry asked for, when locked until a date (or when an existing longer lock was kept).
      type: str
    cool_off_period:
      description: Compliance cooling-off hours, if asked.
      type: int
    lock_state:
      description: The state EC2 answered (not in check mode).
      type: str
    lock_expires_on:
      description: The expiry EC2 answered (not in check mode).
      type: str
diff:
  description: Set ids (newest first) before and after.
  returned: always
  type: dict
  contains:
    before:
      description: "C({set_ids: [...]}) before the run."
      type: dict
    after:
      description: "C({set_ids: [...]}) after the run (in check mode, after a real run)."
      type: dict
"""

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _retention as retention
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

ARGUMENT_SPEC = dict(
    name=dict(type="str"),
    instance_id=dict(type="str"),
    keep_last=dict(type="int"),
    keep_daily=dict(type="int"),
    keep_weekly=dict(type="int"),
    keep_monthly=dict(type="int"),
    keep_yearly=dict(type="int"),
    lock=dict(type="dict", options=dict(
        mode=dict(type="str", choices=["governance", "compliance"], required=True),
        duration=dict(type="int"),
        expiration_date=dict(type="str"),
        cool_off_period=dict(type="int"),
    ), mutually_exclusive=[["duration", "expiration_date"]], required_one_of=[["duration", "expiration_date"]]),
    older_than_days=dict(type="float"),
    delete_partial=dict(type="bool", default=False),
    set_ids=dict(type="list", elements="str"),
    force=dict(type="bool", default=False),
)


def main():
    module = AnsibleAWSModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = retention.prune(module.client("ec2", retry_decorator=ebs.RETRY), check_mode=module.check_mode,
                                 **dict((k, module.params[k]) for k in ARGUMENT_SPEC))
    except StillpointError as e:
        module.fail_json(**dict(dict(changed=False, deleted=[], kept=[], locked=[]), **e.fail_kwargs()))
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
