#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: drill_scratch
short_description: Create a restore drill's scratch volumes from a complete set on a scratch instance, or remove them
version_added: 0.2.0
description:
  - The EC2 side of the role C(stillpoint.snapshots.restore_drill).
  - >-
    With O(state=present), restores the complete backup set O(set_id) onto the scratch instance O(instance_id):
    one volume per member in the instance's zone, each tagged from its C(CreateVolume) call on with
    C(stillpoint:drill-of=<set id>), C(stillpoint:drill-instance=<instance>) and the restore tags of
    M(stillpoint.snapshots.ebs_volume_restore) (restore id C(dr-...)), then attaches them at free device names of the
    instance (never a name in use; nothing of the instance is detached).
  - Refuses, before any change, the set's own source instance (a drill never touches the source), a set that is not
    complete (never part of a set), and a scratch instance that still has drill volumes (remove them first with
    O(state=absent)).
  - With O(state=absent), finds every drill volume made for O(instance_id) (of any set, or of O(set_id) only), detaches
    it from the instance and deletes it. A drill volume attached to another instance is refused (nothing changed).
  - >-
    Both return the clone maps the host side needs (RV(clone) for O(state=present); RV(sets) for O(state=absent)):
    every filesystem under C(<root>/<set id><recorded mountpoint>), volume groups C(<vg>_drill), md arrays
    C(/dev/md/<name>_drill).
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  state:
    description: V(present) creates and attaches the scratch volumes, V(absent) removes them.
    type: str
    choices: [present, absent]
    required: true
  instance_id:
    description: The scratch instance.
    type: str
    required: true
  set_id:
    description:
      - The set to drill (required with O(state=present)).
      - With O(state=absent), only the drill volumes of this set; omitted, those of every set.
    type: str
  volume_type:
    description: EBS volume type of the scratch volumes.
    type: str
    choices: [standard, gp2, gp3, io1, io2, st1, sc1]
    default: gp3
  root:
    description: The directory under which the copies are mounted (C(<root>/<set id>/...)).
    type: path
    default: /mnt/stillpoint-drill
  device_names:
    description: Device names to attach at, in order of preference; those the instance uses are skipped.
    type: list
    elements: str
  wait_timeout:
    description: Seconds to wait for the volumes to become available, attached, or detached.
    type: int
    default: 900
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
  - stillpoint.snapshots.attributes
  - stillpoint.snapshots.attributes.actiongroup_aws
attributes:
  check_mode:
    support: full
    details: Returns the plan (volumes to create and the device names; volumes to detach and delete); only Describe
      calls are made.
  diff_mode:
    support: none
    details: Scratch volumes are created or removed; there is nothing to compare.
  idempotent:
    support: partial
    details: O(state=absent) is idempotent (nothing left, C(changed=false)). O(state=present) refuses to run twice
      without an O(state=absent) between (a drill starts from nothing).
notes:
  - "IAM: ec2:DescribeSnapshots, ec2:DescribeInstances, ec2:DescribeVolumes, ec2:CreateVolume, ec2:CreateTags (tags
    on create), ec2:AttachVolume, ec2:DetachVolume, ec2:DeleteVolume (own drill volumes only)."
seealso:
  - module: stillpoint.snapshots.backup_set_verdict
  - module: stillpoint.snapshots.ebs_volume_restore
"""

EXAMPLES = r"""
- name: Remove what an interrupted drill left on the scratch instance
  stillpoint.snapshots.drill_scratch:
    state: absent
    instance_id: i-0fedcba9876543210

- name: Scratch volumes of a set on the scratch instance
  stillpoint.snapshots.drill_scratch:
    state: present
    set_id: bs-20240302T020000Z-d4e5f6
    instance_id: i-0fedcba9876543210
  register: scratch
"""

RETURN = r"""
volumes:
  description: With O(state=present), one record per member (C(index), C(volume_id) (null in check mode), C(device)
    where it is attached, C(recorded_device), C(snapshot_id)).
  returned: state=present
  type: list
  elements: dict
clone:
  description: With O(state=present), C(mountpoint_map), C(vg_map), C(md_map) and C(root) for
    M(stillpoint.snapshots.array_host) with C(import_clone).
  returned: state=present
  type: dict
set:
  description: The set's catalog record (as M(stillpoint.snapshots.backup_set_info) returns it).
  returned: state=present
  type: dict
started_at:
  description: Epoch seconds of the first C(CreateVolume) call (the start of the recovery time).
  returned: state=present, not in check mode
  type: float
phases:
  description: Seconds of C(create_s) (first create call to all available) and C(attach_s).
  returned: state=present, not in check mode
  type: dict
plan:
  description: With O(state=absent), per drill volume C(volume_id), C(set_id), C(action) (C(detach), C(delete),
    C(wait)), C(device), C(state).
  returned: state=absent
  type: list
  elements: dict
removed:
  description: With O(state=absent), the volumes deleted.
  returned: state=absent
  type: list
  elements: str
sets:
  description: With O(state=absent), the sets of the drill volumes found, with their C(layout) and clone maps, for
    the host side to take their copies down first.
  returned: state=absent
  type: list
  elements: dict
"""

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _drill as drill
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _restore as restore
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

ARGUMENT_SPEC = dict(
    state=dict(type="str", choices=["present", "absent"], required=True),
    instance_id=dict(type="str", required=True),
    set_id=dict(type="str"),
    volume_type=dict(type="str", default="gp3", choices=list(restore.VOLUME_TYPES)),
    root=dict(type="path", default=drill.DEFAULT_ROOT),
    device_names=dict(type="list", elements="str"),
    wait_timeout=dict(type="int", default=900),
)


def main():
    module = AnsibleAWSModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                              required_if=[("state", "present", ["set_id"])])
    p = module.params
    client = module.client("ec2", retry_decorator=ebs.RETRY)
    try:
        if p["state"] == "present":
            result = drill.create_scratch(client, p["set_id"], p["instance_id"], volume_type=p["volume_type"],
                                          root=p["root"], candidates=tuple(p["device_names"] or drill.DEVICE_CANDIDATES),
                                          check_mode=module.check_mode, timeout=p["wait_timeout"])
        else:
            result = drill.remove_scratch(client, p["instance_id"], set_id=p["set_id"], root=p["root"],
                                          check_mode=module.check_mode, timeout=p["wait_timeout"])
    except StillpointError as e:
        module.fail_json(**e.fail_kwargs())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
