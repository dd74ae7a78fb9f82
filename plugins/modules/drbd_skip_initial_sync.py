#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: drbd_skip_initial_sync
short_description: Skip a DRBD resource's initial resync when the catalog proves both sides are one snapshot
version_added: 0.2.0
description:
  - "After both sides of a DRBD resource were restored from the same snapshot of one backup set and their metadata
    recreated (M(stillpoint.snapshots.drbd_resource) with O(stillpoint.snapshots.drbd_resource#module:create_md)
    and O(stillpoint.snapshots.drbd_resource#module:connection=connected)), skips the initial resync: waits until
    the peer is connected and runs C(drbdadm new-current-uuid --clear-bitmap) on this host (LINBIT user's guide,
    \"Skipping the initial resync\"). Both disks become UpToDate without copying a block."
  - "Refused (DOMAIN.md refusal 2, seed 003) unless the EC2 catalog proves that this host's backing volume and
    every volume in O(volume_ids) were created from one snapshot of one complete backup set O(set_id) (RV(proof)),
    the metadata is freshly created (current UUID C(0000000000000004)) and both sides are connected and
    Inconsistent. A resource already in sync is left alone."
  - Run it on one of the two nodes. The DRBD steps without EC2 are M(stillpoint.snapshots.drbd_resource), which
    needs no boto3.
options:
  name:
    description: The DRBD resource.
    type: str
    required: true
  set_id:
    description: The backup set both sides were restored from.
    type: str
    required: true
  volume_ids:
    description: The backing EBS volumes of both sides (this host's must be among them).
    type: list
    elements: str
    required: true
  connect_timeout:
    description: Seconds to wait for the peer to connect before the bitmap is cleared.
    type: int
    default: 120
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
  - stillpoint.snapshots.attributes
  - stillpoint.snapshots.attributes.actiongroup_aws
notes:
  - Calls C(ec2:DescribeVolumes) and C(ec2:DescribeSnapshots) (the proof); nothing else in EC2.
  - Every EC2 failure of the proof (the service's answer, or none at all - no network, a bad O(endpoint_url), no
    credentials) fails the task with a message that names the calls and what to check; nothing is changed.
seealso:
  - module: stillpoint.snapshots.drbd_resource
  - module: stillpoint.snapshots.drbd_info
attributes:
  check_mode:
    support: full
    details:
      - Checks the catalog proof and the resource's state and returns the planned RV(actions) (each with
        C(planned=true)); nothing is changed or waited for.
  diff_mode:
    support: full
    details: C(before)/C(after) of the resource summary (as RV(status)).
  idempotent:
    support: full
    details: A resource already UpToDate on both sides is left alone (RV(actions) empty, C(changed=false)).
author:
  - stillpoint.snapshots maintainers (@stillpoint)
"""

EXAMPLES = r"""
- name: Both sides restored from one snapshot - metadata recreated and connected on both nodes first
  stillpoint.snapshots.drbd_resource:
    name: r0
    create_md: true
    replaced_disk: vol-0123456789abcdef0
    connection: connected

- name: Skip the initial resync (AWS options from module_defaults), on one node
  module_defaults:
    group/stillpoint.snapshots.aws:
      region: eu-west-1
  stillpoint.snapshots.drbd_skip_initial_sync:
    name: r0
    set_id: 20240101T000000Z-1a2b3c4d
    volume_ids: [vol-0123456789abcdef0, vol-0fedcba9876543210]
  run_once: true
"""

RETURN = r"""
status:
  description: The resource summary after the run, the same as RV(stillpoint.snapshots.drbd_info#module:summary).
  returned: always
  type: dict
actions:
  description: What was done (in check mode, what would be done), in order, one entry a command, in the shape
    of RV(stillpoint.snapshots.drbd_resource#module:actions).
  returned: always
  type: list
  elements: dict
  sample: [{what: "skip the initial resync of r0 (snapshot snap-0123456789abcdef0)",
            cmd: ["/usr/sbin/drbdadm", "new-current-uuid", "--clear-bitmap", "r0"],
            rc: 0, ms: 90.1, planned: false}]
proof:
  description: What the catalog proved.
  returned: success
  type: dict
  contains:
    same_snapshot:
      description: Always true (otherwise the module fails).
      type: bool
    set_id:
      description: The backup set.
      type: str
    snapshot_id:
      description: The one snapshot every listed volume was created from.
      type: str
    member_index:
      description: That snapshot's member index in the set.
      type: int
    volumes:
      description: Each listed volume's source snapshot, as EC2 reports it.
      type: dict
    level:
      description: The consistency level the set recorded.
      type: str
    local_volume:
      description: This host's backing volume.
      type: str
"""

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _drbd
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CommandRunner, StillpointError

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    set_id=dict(type="str", required=True),
    volume_ids=dict(type="list", elements="str", required=True),
    connect_timeout=dict(type="int", default=120),
)


def main():
    module = AnsibleAWSModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    drbd = _drbd.Drbd(CommandRunner.from_module(module))
    try:
        result = _drbd.skip_initial_sync(drbd, module.params, check_mode=module.check_mode, diff=module._diff,
                                         ec2=lambda: module.client("ec2", retry_decorator=ebs.RETRY))
    except StillpointError as e:
        module.fail_json(**e.fail_kwargs())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
