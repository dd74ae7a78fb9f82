#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_set_info
short_description: List the backup sets recorded in the snapshot catalog
version_added: 0.1.0
description:
  - Reads the backup catalog that M(stillpoint.snapshots.ebs_snapshot_set) writes into EBS snapshot tags
    (schema v2, and v1 sets, see C(docs/catalog.md)) and returns one record per backup set, newest first.
  - Only snapshots of this account (C(OwnerIds=self)) that carry the C(stillpoint:creator) marker are read.
  - The state of each set is derived from the facts, never taken on trust. V(complete) means every member
    C(0..n-1) is present, all are C(completed) in EC2 and the set was marked complete after the wait.
    V(partial) means the set can never become a valid backup (a member is missing or in error, or a rollback
    left it behind). V(pending) is everything else. The reasons are in each record's C(problems).
  - The consistency level of a set is the weakest level any of its members claims.
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  set_id:
    description:
      - Only the set with this id (C(bs-YYYYMMDDTHHMMSSZ-xxxxxx)).
      - When the set is not found among the live snapshots, or some of its members are missing, the Recycle Bin is
        searched for its snapshots (by the set id in their description, which the bin lists; it lists no tags).
        What is there is returned in RV(recycle_bin), with a warning that says how to recover them.
    type: str
  name:
    description: Only sets of this backup series name.
    type: str
  instance_id:
    description: Only sets taken from this instance.
    type: str
  group_id:
    description: Only the sets of this consistency group (C(stillpoint:group-id), see M(stillpoint.snapshots.ebs_snapshot_group)).
    type: str
    version_added: 0.2.0
  host:
    description: Only sets whose recorded host name is this one.
    type: str
  copy_regions:
    description:
      - Regions to look for copies of each set in (M(stillpoint.snapshots.backup_set_copy)); name the region of the
        connection too to find copies there. A copy is a set whose C(stillpoint:copy-of) tag names the set and the
        region of the connection; see RV(sets[].copies). Empty, copies are not looked for (no extra calls).
      - Only copies readable with this connection's account are found (a copy in another account is not listed).
    type: list
    elements: str
    default: []
    version_added: 0.2.0
  verified_only:
    description:
      - Only sets whose last restore drill passed (the role C(stillpoint.snapshots.restore_drill) records it on every
        member as C(stillpoint:drill)); see RV(sets[].drill).
    type: bool
    default: false
    version_added: 0.2.0
  newest_verified:
    description:
      - Also return RV(newest_verified), the newest complete verified set per instance and set name in this region.
      - Read over all sets of the catalog that the other filters (O(name), O(instance_id), O(host)) leave.
    type: bool
    default: false
    version_added: 0.2.0
  state:
    description: Only sets in one of these states. All states when omitted.
    type: list
    elements: str
    choices: [complete, pending, partial]
  latest:
    description:
      - Return only the newest set among those that match (by the set's creation time).
      - Combine with O(state=[complete]) to find the set to restore from.
    type: bool
    default: false
  query:
    description:
      - A JMESPath expression applied to the list of matching sets (after O(latest)); its output is returned in
        RV(result). Needs the C(jmespath) Python library.
      - An invalid expression fails the task before any API call.
    type: str
notes:
  - The module never changes anything; C(changed) is always false.
  - "IAM: ec2:DescribeSnapshots; ec2:ListSnapshotsInRecycleBin with O(set_id) when the set is missing or partial
    (optional: without it a warning says the bin could not be searched)."
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
  - stillpoint.snapshots.attributes.info_module
  - stillpoint.snapshots.attributes.actiongroup_aws
requirements:
  - jmespath (only for O(query))
"""

EXAMPLES = r"""
- name: Every set of the pgdata series on one instance
  stillpoint.snapshots.backup_set_info:
    name: pgdata
    instance_id: i-0123456789abcdef0
  register: catalog

- name: The newest complete set, to restore from
  stillpoint.snapshots.backup_set_info:
    name: pgdata
    state: [complete]
    latest: true
  register: newest

- name: Snapshot ids of member 0 of every complete application-consistent set
  stillpoint.snapshots.backup_set_info:
    state: [complete]
    query: "[?level=='application'].members[] | [?index==`0`].snapshot_id"
  register: firsts

- name: Sets that need attention, with the reasons
  stillpoint.snapshots.backup_set_info:
    state: [partial, pending]
    query: "[].{id: set_id, state: state, why: problems}"
  register: attention

- name: The newest set of each instance that a restore drill proved, and the copies of the sets in two regions
  stillpoint.snapshots.backup_set_info:
    newest_verified: true
    copy_regions: [eu-west-1, eu-central-1]
  register: proved
"""

RETURN = r"""
sets:
  description: The matching sets, newest first (only the newest with O(latest)).
  returned: always
  type: list
  elements: dict
  contains:
    set_id:
      description: The set id.
      type: str
      sample: bs-20240302T020000Z-d4e5f6
    name:
      description: The backup series name.
      type: str
      sample: pgdata
    schema:
      description: Catalog schema version the set was written with.
      type: str
      sample: "1"
    state:
      description: V(complete), V(pending) or V(partial), derived as described above.
      type: str
      sample: complete
    problems:
      description: Why the set is not V(complete) (empty for a complete set).
      type: list
      elements: str
      sample: []
    level:
      description: The weakest consistency level any member claims (C(crash), C(filesystem), C(application)).
      type: str
      sample: filesystem
    member_count:
      description: Number of members the set was taken with.
      type: int
      sample: 4
    members:
      description: One record per snapshot, ordered by member index.
      type: list
      elements: dict
      sample:
        - index: 0
          snapshot_id: snap-0a1b2c3d4e5f60718
          state: completed
          progress: "100%"
          device: /dev/sdf
          source_volume: vol-0a1b2c3d4e5f60718
          volume_size: 8
          mountpoints: [/srv/pg]
          start_time: "2024-03-02T02:00:00Z"
          state_message: null
    snapshot_ids:
      description: The members' snapshot ids in member order.
      type: list
      elements: str
    instance_id:
      description: The instance the set was taken from.
      type: str
    availability_zone:
      description: The instance's availability zone at the time.
      type: str
    host:
      description: Host name recorded by the run.
      type: str
    created:
      description: Creation time of the set (UTC, ISO 8601).
      type: str
      sample: "2024-03-02T02:00:00Z"
    freeze_ms:
      description: How long the filesystems were frozen, in milliseconds (null if not recorded).
      type: float
    procedure:
      description: Name of the procedure that took the set.
      type: str
    array:
      description: The array descriptor recorded with the set (null if none).
      type: dict
    application:
      description: What the held application quiescer held and recorded (C(stillpoint:app); kind, lock, confirmed,
        held_ms, binlog_file, binlog_position, gtid), null if none.
      type: dict
    group_id:
      description: The consistency group the set belongs to (null if none); its sets count only once it is sealed.
      type: str
      version_added: 0.2.0
    group:
      description:
        - The group's seal on this set (C(stillpoint:group)), null before the seal - C(verdict) (V(consistent) or
          V(inconsistent)), C(instant) (the common instant, controller clock), C(margin_ms), C(size), and this host's
          C(frozen) interval on the controller's time line with C(offset_ms) and C(error_ms).
      type: dict
      version_added: 0.2.0
    drill:
      description:
        - The last restore drill's verdict (C(stillpoint:drill)), null if the set was never drilled. C(result)
          (V(pass) or V(fail)), C(verified_at), C(rto_s) (first CreateVolume call to verified), C(checks), C(instance)
          (the scratch instance), C(region), C(phases), and C(members_agree) (false when the members carry
          different verdicts, or some none; a verdict a copy inherited from its source is not counted).
      type: dict
      version_added: 0.2.0
      sample: {set: bs-20240302T020000Z-d4e5f6, result: pass, verified_at: "2024-03-03T02:10:00Z", rto_s: 41.2,
               checks: {filesystems: pass, manifest: none recorded}, instance: i-0fedcba9876543210,
               members_agree: true}
    copies:
      description: Copy sets of this set in O(copy_regions) (C(set_id), C(region), C(marked), the copies' state tags).
      returned: when O(copy_regions) is given
      type: list
      elements: dict
      version_added: 0.2.0
      sample: [{set_id: bs-20240302T020000Z-9f3e1a, region: eu-central-1, marked: [complete]}]
newest_verified:
  description: The newest complete set whose last drill passed, per instance and set name, in this region
    (C(instance_id), C(host), C(name), C(set_id), C(created), C(verified_at), C(rto_s), C(region)).
  returned: when O(newest_verified=true)
  type: list
  elements: dict
  version_added: 0.2.0
recycle_bin:
  description: Snapshots of the set named by O(set_id) that sit in the Recycle Bin, and how to recover them.
  returned: when O(set_id) is given, the set is missing or partial, and some of its snapshots are in the bin
  type: dict
  version_added: 0.2.0
  contains:
    set_id:
      description: The set id.
      type: str
    snapshot_ids:
      description: Its snapshots in the bin.
      type: list
      elements: str
    exit_times:
      description: Snapshot id -> when it leaves the bin for good.
      type: dict
    msg:
      description: What to do (C(RestoreSnapshotFromRecycleBin) per snapshot).
      type: str
result:
  description: The output of O(query) applied to RV(sets).
  returned: when O(query) is set
  type: raw
  sample: ["snap-0a1b2c3d4e5f60718"]
"""

import traceback

JMESPATH_IMPORT_ERROR = None
try:
    import jmespath
except ImportError:
    JMESPATH_IMPORT_ERROR = traceback.format_exc()

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _retention as retention
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

ARGUMENT_SPEC = dict(
    set_id=dict(type="str"),
    name=dict(type="str"),
    instance_id=dict(type="str"),
    host=dict(type="str"),
    group_id=dict(type="str"),
    state=dict(type="list", elements="str", choices=list(catalog.STATES)),
    latest=dict(type="bool", default=False),
    query=dict(type="str"),
    copy_regions=dict(type="list", elements="str", default=[]),
    verified_only=dict(type="bool", default=False),
    newest_verified=dict(type="bool", default=False),
)


def compile_query(module, text):
    if JMESPATH_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("jmespath"), exception=JMESPATH_IMPORT_ERROR)
    try:
        return jmespath.compile(text)
    except jmespath.exceptions.JMESPathError as e:
        module.fail_json(msg="query is not a valid JMESPath expression: %s" % e, query=text)


def main():
    module = AnsibleAWSModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    expression = compile_query(module, p["query"]) if p["query"] is not None else None
    client = module.client("ec2", retry_decorator=ebs.RETRY)
    try:
        snapshots = ebs.catalog_snapshots(client, set_id=p["set_id"], name=p["name"], instance_id=p["instance_id"],
                                          group_id=p["group_id"])
        records = catalog.select_sets(catalog.group_sets(snapshots), set_id=p["set_id"], name=p["name"],
                                      instance_id=p["instance_id"], host=p["host"])
        for rec in records:
            rec["drill"] = catalog.drill_of(snapshots, rec["set_id"])
        newest = catalog.newest_verified(records, module.region) if p["newest_verified"] else None
        sets = catalog.select_sets(records, states=p["state"])
        if p["verified_only"]:
            sets = [rec for rec in sets if catalog.verified(rec)]
        sets = sets[:1] if p["latest"] else sets
        if sets and p["copy_regions"]:
            everywhere = []
            for region in dict.fromkeys(p["copy_regions"]):
                if region == module.region:
                    other = client
                else:
                    other = module.client("ec2", retry_decorator=ebs.RETRY, region=region)
                everywhere.append((region, ebs.catalog_snapshots(other)))
            for rec in sets:
                rec["copies"] = [c for region, snaps in everywhere
                                 for c in catalog.copies_of(snaps, rec["set_id"], region, source_region=module.region)]
    except StillpointError as e:
        module.fail_json(**e.fail_kwargs())
    result = dict(changed=False, sets=sets)
    if newest is not None:
        result["newest_verified"] = newest
    if p["set_id"] and (not sets or sets[0]["state"] == "partial"):
        try:
            found = retention.recycle_bin_report(client, p["set_id"])
        except StillpointError as e:
            module.warn("set %s: the Recycle Bin could not be searched for its snapshots: %s" % (p["set_id"], e.msg))
            found = None
        if found:
            result["recycle_bin"] = found
            module.warn(found["msg"])
    if expression is not None:
        try:
            result["result"] = expression.search(sets)
        except jmespath.exceptions.JMESPathError as e:
            module.fail_json(msg="query %r failed on the sets: %s" % (p["query"], e), sets=sets)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
