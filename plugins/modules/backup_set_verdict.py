#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_set_verdict
short_description: Record a restore drill's verdict on every member snapshot of a backup set
version_added: 0.2.0
description:
  - Writes the verdict of a restore drill (role C(stillpoint.snapshots.restore_drill)) as the JSON tag
    C(stillpoint:drill) (chunked as C(stillpoint:drill.1)... when longer than a tag value) on every member snapshot
    of the set, and removes the chunks of an earlier, longer verdict.
  - The verdict holds C(set), C(result) (V(pass) or V(fail)), C(verified_at) (UTC), C(rto_s), C(checks),
    C(instance) (the scratch instance), C(region) and C(phases). M(stillpoint.snapshots.backup_set_info) returns it
    as C(drill) and answers the newest verified set per instance (C(newest_verified)).
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  set_id:
    description: The set drilled.
    type: str
    required: true
  result:
    description: The drill's result.
    type: str
    choices: [pass, fail]
    required: true
  rto_s:
    description: Seconds from the first C(CreateVolume) call to verified (null when the drill did not get there).
    type: float
  checks:
    description: What was checked and how it ended (check name -> text).
    type: dict
    default: {}
  scratch_instance_id:
    description: The scratch instance the set was drilled on.
    type: str
  phases:
    description: Seconds per phase (name -> seconds).
    type: dict
    default: {}
  drill_region:
    description: The region the set was drilled in, recorded in the verdict (defaults to the connection's region).
    type: str
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
  - stillpoint.snapshots.attributes
  - stillpoint.snapshots.attributes.actiongroup_aws
attributes:
  check_mode:
    support: full
    details: Returns the tags it would write; writes nothing.
  diff_mode:
    support: none
    details: The tags are returned.
  idempotent:
    support: none
    details: Every drill is a new verdict with its own time.
notes:
  - "IAM: ec2:DescribeSnapshots, ec2:CreateTags and ec2:DeleteTags on the set's snapshots."
seealso:
  - module: stillpoint.snapshots.drill_scratch
  - module: stillpoint.snapshots.backup_set_info
"""

EXAMPLES = r"""
- name: Record a passed drill
  stillpoint.snapshots.backup_set_verdict:
    set_id: bs-20240302T020000Z-d4e5f6
    result: pass
    rto_s: 41.2
    checks: {filesystems: pass, manifest: none recorded}
    scratch_instance_id: i-0fedcba9876543210
"""

RETURN = r"""
verdict:
  description: The verdict recorded.
  returned: success
  type: dict
  sample: {set: bs-20240302T020000Z-d4e5f6, result: pass, verified_at: "2024-03-03T02:10:00Z", rto_s: 41.2,
           checks: {filesystems: pass}, instance: i-0fedcba9876543210, region: eu-west-1}
snapshot_ids:
  description: The member snapshots tagged.
  returned: success
  type: list
  elements: str
tags:
  description: The tags written.
  returned: success
  type: dict
removed_keys:
  description: Chunk keys of an earlier verdict removed.
  returned: success
  type: list
  elements: str
"""

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _drill as drill
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

ARGUMENT_SPEC = dict(
    set_id=dict(type="str", required=True),
    result=dict(type="str", choices=list(drill.RESULTS), required=True),
    rto_s=dict(type="float"),
    checks=dict(type="dict", default={}),
    scratch_instance_id=dict(type="str"),
    phases=dict(type="dict", default={}),
    drill_region=dict(type="str"),
)


def main():
    module = AnsibleAWSModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    client = module.client("ec2", retry_decorator=ebs.RETRY)
    try:
        value = drill.verdict(p["set_id"], p["result"], p["rto_s"], p["checks"], p["scratch_instance_id"],
                              region=p["drill_region"] or module.region, phases=p["phases"])
        result = drill.record_verdict(client, p["set_id"], value, check_mode=module.check_mode)
    except StillpointError as e:
        module.fail_json(**e.fail_kwargs())
    module.exit_json(verdict=value, **result)


if __name__ == "__main__":
    main()
