#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ebs_volume_swap
short_description: Put the restored volumes of a backup set at the set's device names on one instance
version_added: 0.1.0
description:
  - For one instance, detaches whatever sits at the device names recorded for the members of a backup set
    and attaches the restored volumes of that set at the same names, then verifies the final mapping with
    C(DescribeInstances).
  - Restored volumes are selected by volume id (from O(volumes), or by the tag C(stillpoint:restore-id) with
    O(restore_id)), never by C(Name) tag or device enumeration.
  - "Per member, with D the recorded device, N the restored volume and S the member's source volume: D holds N
    already, nothing to do; D is free, N is attached at D; D holds S or a restored copy of the same member from an
    earlier restore, it is detached (and tagged C(stillpoint:replaced-by=N), never deleted unless
    O(delete_replaced)) and N is attached at D; D holds anything else, the swap is refused unless
    O(replace_unknown)."
  - "The swap is refused, before any change, when: a restored volume is in another availability zone than the
    instance; a restored volume is attached to another instance or at another device; a member has no restored
    volume (never part of a set); the source volume S (or another restored copy of the same member) would stay
    attached to the instance beside its copy, which carries the same filesystem, LVM PV and md UUIDs (unless
    O(allow_beside_source)); the instance is neither running nor stopped; the set is not complete."
  - All C(DetachVolume) calls are issued first and waited for together, then all C(AttachVolume) calls. A re-run
    after an interruption at any point converges without detaching or attaching anything twice; a re-run after
    success changes nothing.
  - The host side (stopping the application, unmounting, deactivating md/LVM before; reassembling after) is not
    done here; see the C(stillpoint.snapshots.array_restore) role.
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  instance_id:
    description: The instance that receives the restored volumes.
    type: str
    required: true
  set_id:
    description:
      - The backup set the volumes were restored from. Its catalog record gives each member's device name and
        source volume. The set must be complete.
    type: str
    required: true
  volumes:
    description:
      - The restored volumes, one per member, as C({index, volume_id}) items (keys other than these two are
        ignored, so the C(volumes) result of M(stillpoint.snapshots.ebs_volume_restore) can be passed as is).
      - Exactly one of O(volumes) and O(restore_id) is required.
    type: list
    elements: dict
  restore_id:
    description:
      - Find the restored volumes by their C(stillpoint:restore-id) tag, ordered by their C(stillpoint:member) tag.
        Two volumes for one member, or a volume of another set, are refused.
    type: str
  replace_unknown:
    description:
      - Also detach a volume found at a recorded device that is neither the member's source volume, nor a restored
        copy of that member, nor the restored volume. It is kept and tagged like any replaced volume.
    type: bool
    default: false
  allow_beside_source:
    description:
      - Attach a restored volume even when its source volume (or another restored copy of the same member) stays
        attached to the same instance at another device. The two then carry the same filesystem, LVM PV and md
        UUIDs; only allow this when the host is prepared for it.
    type: bool
    default: false
  delete_replaced:
    description:
      - After a verified swap, delete the volumes it replaced (including those replaced by an interrupted earlier
        run, found by their C(stillpoint:replaced-by) tag), but only those that carry the creator marker
        C(stillpoint:creator=stillpoint.snapshots) and are C(available). The original volumes of the set are never
        deleted.
    type: bool
    default: false
  force_detach:
    description:
      - Send C(DetachVolume) with C(Force). Data the host has not flushed may be lost; use only for a host that
        cannot release the device.
    type: bool
    default: false
  poll_interval:
    description: Seconds between two C(DescribeVolumes) checks while waiting for detaches and attaches.
    type: float
    default: 1.0
  detach_timeout:
    description: Seconds to wait for all detached volumes to become C(available).
    type: float
    default: 300
  attach_timeout:
    description: Seconds to wait for all attachments to become C(attached).
    type: float
    default: 300
attributes:
  check_mode:
    support: full
    details: Reads the instance, the catalog and the volumes, checks every refusal and returns the plan; detaches,
      attaches, tags and deletes nothing.
  diff_mode:
    support: full
    details: Returns the device to volume mapping of the set's devices before and after.
  idempotent:
    support: full
    details: A device that already holds its restored volume is left alone; a re-run after success makes no
      C(DetachVolume) or C(AttachVolume) call.
notes:
  - "IAM: ec2:DescribeInstances, ec2:DescribeVolumes, ec2:DescribeSnapshots, ec2:DetachVolume, ec2:AttachVolume,
    ec2:CreateTags, and ec2:DeleteVolume with O(delete_replaced)."
  - Waiting polls every O(poll_interval) seconds instead of using the 15 s delay of the stock EC2 waiters, which
    would add up to 15 s of downtime per wait.
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
  - stillpoint.snapshots.attributes
  - stillpoint.snapshots.attributes.actiongroup_aws
seealso:
  - module: stillpoint.snapshots.backup_set_info
  - module: stillpoint.snapshots.ebs_volume_restore
"""

EXAMPLES = r"""
- name: Swap in the volumes that ebs_volume_restore created
  stillpoint.snapshots.ebs_volume_swap:
    instance_id: i-0123456789abcdef0
    set_id: bs-20240302T020000Z-d4e5f6
    volumes: "{{ restored.volumes }}"
  register: swapped

- name: Same, finding the volumes by their restore id, and delete the restored copies they replace
  stillpoint.snapshots.ebs_volume_swap:
    instance_id: i-0123456789abcdef0
    set_id: bs-20240302T020000Z-d4e5f6
    restore_id: rs-0a1b2c3d4e5f
    delete_replaced: true

- name: Show the plan only
  stillpoint.snapshots.ebs_volume_swap:
    instance_id: i-0123456789abcdef0
    set_id: bs-20240302T020000Z-d4e5f6
    restore_id: rs-0a1b2c3d4e5f
  check_mode: true
  register: plan
"""

RETURN = r"""
instance_id:
  description: The instance.
  returned: always
  type: str
  sample: i-0123456789abcdef0
set_id:
  description: The backup set.
  returned: always
  type: str
  sample: bs-20240302T020000Z-d4e5f6
plan:
  description:
    - One item per member, in member order. C(action) is C(none) (the device holds the restored volume already),
      C(attach) (the device is free) or C(replace) (detach C(current), then attach C(new)); C(replaces) says what
      C(current) is (C(source), C(earlier-restore) or C(unknown)).
  returned: success, and on a refusal after planning
  type: list
  elements: dict
  sample:
    - {index: 0, device: /dev/sdf, current: vol-0a1b2c3d4e5f60718, current_device: /dev/sdf,
       new: vol-0f1e2d3c4b5a69788, source: vol-0a1b2c3d4e5f60718, action: replace, replaces: source}
detached:
  description: Volumes detached (in check mode, that would be detached).
  returned: success
  type: list
  elements: str
attached:
  description: Volumes attached (in check mode, that would be attached).
  returned: success
  type: list
  elements: str
mapping:
  description: Final mapping of the set's devices, device name to volume id, as verified with DescribeInstances
    (in check mode, the intended mapping).
  returned: success
  type: dict
  sample: {/dev/sdf: vol-0f1e2d3c4b5a69788, /dev/sdg: vol-0e1d2c3b4a5968778}
downtime_ms:
  description: From the first DetachVolume request (or the first AttachVolume when nothing was detached) to the last
    attachment confirmed, milliseconds, monotonic clock; 0 when nothing was done.
  returned: success
  type: float
detach_ms:
  description: From the first DetachVolume request to the last detached volume confirmed C(available).
  returned: success
  type: float
attach_ms:
  description: From the first AttachVolume request to the last attachment confirmed C(attached).
  returned: success
  type: float
deleted:
  description: Replaced volumes deleted (O(delete_replaced)).
  returned: success
  type: list
  elements: str
kept_replaced:
  description: Replaced volumes O(delete_replaced) did not delete, with the reason.
  returned: success
  type: list
  elements: dict
problems:
  description: Every reason the swap was refused.
  returned: on refusal
  type: list
  elements: str
"""

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _swap as swap
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

ARGUMENT_SPEC = dict(
    instance_id=dict(type="str", required=True),
    set_id=dict(type="str", required=True),
    volumes=dict(type="list", elements="dict"),
    restore_id=dict(type="str"),
    replace_unknown=dict(type="bool", default=False),
    allow_beside_source=dict(type="bool", default=False),
    delete_replaced=dict(type="bool", default=False),
    force_detach=dict(type="bool", default=False),
    poll_interval=dict(type="float", default=1.0),
    detach_timeout=dict(type="float", default=300),
    attach_timeout=dict(type="float", default=300),
)


def main():
    module = AnsibleAWSModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                              mutually_exclusive=[("volumes", "restore_id")],
                              required_one_of=[("volumes", "restore_id")])
    try:
        result = swap.swap(module.client("ec2", retry_decorator=ebs.RETRY), check_mode=module.check_mode,
                           diff=module._diff, **dict((k, module.params[k]) for k in ARGUMENT_SPEC))
    except StillpointError as e:
        module.fail_json(**e.fail_kwargs())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
