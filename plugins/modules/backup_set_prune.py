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
  - Deletes whole backup sets recorded by M(stillpoint.snapshots.ebs_snapshot_set) (schema v1, see
    C(docs/catalog.md)), either by retention rules or by explicit set id.
  - Retention works per group of sets with the same name and instance. A V(complete) set is kept while it is
    among the newest O(keep_last) complete sets of its group B(or) younger than O(older_than_days); it is
    deleted only when every rule given lets it go. The newest complete set of each group is always kept.
    V(pending) sets are never deleted by retention (a run may still be waiting on them); V(partial) sets are
    deleted only with O(delete_partial=true).
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
        read are refused unless O(force=true).
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
    details: With retention rules a second run deletes nothing and reports no change. An explicit O(set_ids)
      deletion refuses, on a second run, the sets that no longer exist.
notes:
  - At least one of O(keep_last), O(older_than_days), O(set_ids) or O(delete_partial=true) is required.
  - "IAM: ec2:DescribeSnapshots, ec2:DeleteSnapshot."
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
      description: Why it was kept.
      type: str
      sample: newest complete set
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
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

ARGUMENT_SPEC = dict(
    name=dict(type="str"),
    instance_id=dict(type="str"),
    keep_last=dict(type="int"),
    older_than_days=dict(type="float"),
    delete_partial=dict(type="bool", default=False),
    set_ids=dict(type="list", elements="str"),
    force=dict(type="bool", default=False),
)


def main():
    module = AnsibleAWSModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = ebs.prune(module.client("ec2", retry_decorator=ebs.RETRY), check_mode=module.check_mode,
                           **dict((k, module.params[k]) for k in ARGUMENT_SPEC))
    except StillpointError as e:
        module.fail_json(**dict(dict(changed=False, deleted=[], kept=[]), **e.fail_kwargs()))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
