#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ebs_volume_restore
short_description: Create one EBS volume per member of a complete backup set, all or none, idempotently
version_added: 0.1.0
description:
  - Reads the backup set O(set_id) from the catalog (snapshot tags, see C(docs/catalog.md)) and creates one volume
    per member in one availability zone, from the member's snapshot.
  - Only a V(complete) set is restored. A V(partial) set (a member missing or in error) or a V(pending) one (still
    copying, or never marked complete) is refused with the reasons; a part of a set is never restored.
  - "Every volume carries its restore tags from the C(CreateVolume) call on (C(TagSpecifications)):
    C(stillpoint:restore-id), C(stillpoint:set-id), C(stillpoint:member), C(stillpoint:device) (the member's
    recorded device name), C(stillpoint:source-volume), C(stillpoint:creator). A re-run with the same restore id
    finds the volumes an earlier (even interrupted) run created and creates only the missing members."
  - All or nothing. When a C(CreateVolume) call fails or a volume ends in C(error), every volume this run created
    is deleted again (never a volume it did not create) and the task fails saying what was rolled back.
  - Volumes of the restore that already exist are adopted only when they are in the asked zone, come from the
    member's snapshot and carry the set id and creator marker. Anything else (a volume in another zone, two
    volumes for one member, a volume in C(error)) is refused for a human to sort out.
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  set_id:
    description: The backup set to restore (C(bs-YYYYMMDDTHHMMSSZ-xxxxxx)); see M(stillpoint.snapshots.backup_set_info).
    type: str
    required: true
  availability_zone:
    description:
      - Zone to create the volumes in. Checked to exist in the region.
      - With O(instance_id) it must be the instance's zone (it may be omitted then).
    type: str
  instance_id:
    description:
      - The instance the volumes are meant for; the zone is read from it (C(DescribeInstances)).
      - Part of the default O(restore_id). Nothing is attached here; see M(stillpoint.snapshots.ebs_volume_swap).
    type: str
  restore_id:
    description:
      - Identifier of this restore, tagged on every volume as C(stillpoint:restore-id).
      - "Defaults to C(rs-) and the first 12 hex digits of the SHA-1 of C(set_id|availability_zone|instance_id)
        (instance id empty when not given), so that a re-run with the same arguments finds the volumes of an
        earlier run."
    type: str
  volume_type:
    description: EBS volume type of the new volumes.
    type: str
    choices: [standard, gp2, gp3, io1, io2, st1, sc1]
    default: gp3
  iops:
    description: Provisioned IOPS (C(gp3), C(io1), C(io2); required for C(io1) and C(io2)).
    type: int
  throughput:
    description: Throughput in MiB/s (C(gp3) only).
    type: int
  kms_key_id:
    description: KMS key for encrypted volumes (implies O(encrypted=true)).
    type: str
  encrypted:
    description:
      - Encrypt the new volumes. Volumes from encrypted snapshots are always encrypted.
      - Left to EC2 (account default, snapshot) when omitted.
    type: bool
  tags:
    description: Extra tags on every new volume (keys must not start with C(stillpoint:)).
    type: dict
  fast_snapshot_restore:
    description:
      - Enable fast snapshot restore for the set's snapshots in the zone before creating the volumes, and report
        its state. Only done when there is something to create.
      - The module does not wait for C(enabled) (EC2 takes about an hour per TiB; volumes created while it is
        C(enabling) or C(optimizing) get part of the benefit), and it never disables it again. Fast snapshot restore
        is billed per snapshot, zone and hour until disabled.
      - An endpoint that does not support it makes the task fail before anything is created.
    type: bool
    default: false
  wait:
    description: Wait until every volume is C(available) (or C(in-use)).
    type: bool
    default: true
  wait_timeout:
    description:
      - Seconds to wait. On timeout the task fails but deletes nothing; a re-run adopts the volumes and waits again.
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
    details: Reads the set and the volumes that already exist and returns the plan (RV(volumes_to_create));
      creates and enables nothing.
  diff_mode:
    support: none
    details: New volumes are created; there is nothing to compare.
  idempotent:
    support: full
    details: A re-run with the same arguments finds the volumes it created (by restore id) and creates nothing.
notes:
  - "IAM: ec2:DescribeSnapshots, ec2:DescribeVolumes, ec2:CreateVolume, ec2:CreateTags (tags on create),
    ec2:DeleteVolume (rollback), ec2:DescribeInstances (O(instance_id)), ec2:DescribeAvailabilityZones
    (O(availability_zone)), ec2:DescribeFastSnapshotRestores and ec2:EnableFastSnapshotRestores
    (O(fast_snapshot_restore)), kms:CreateGrant and friends for encrypted volumes."
seealso:
  - module: stillpoint.snapshots.backup_set_info
  - module: stillpoint.snapshots.ebs_snapshot_set
"""

EXAMPLES = r"""
- name: Restore the newest complete pgdata set for db1
  stillpoint.snapshots.backup_set_info:
    name: pgdata
    state: [complete]
    latest: true
  register: newest

- name: One volume per member, in db1's zone
  stillpoint.snapshots.ebs_volume_restore:
    set_id: "{{ newest.sets[0].set_id }}"
    instance_id: i-0123456789abcdef0
    volume_type: gp3
    throughput: 250
    tags:
      Name: pgdata-restore
  register: restored

- name: Into a given zone, encrypted, with fast snapshot restore
  stillpoint.snapshots.ebs_volume_restore:
    set_id: bs-20240302T020000Z-d4e5f6
    availability_zone: eu-west-1b
    kms_key_id: alias/backup
    fast_snapshot_restore: true
"""

RETURN = r"""
restore_id:
  description: The restore id tagged on the volumes (C(stillpoint:restore-id)).
  returned: always
  type: str
  sample: rs-3f2a9c41d07b
set_id:
  description: The set restored.
  returned: always
  type: str
  sample: bs-20240302T020000Z-d4e5f6
availability_zone:
  description: The zone of the volumes.
  returned: when the zone was resolved
  type: str
  sample: eu-west-1a
volumes:
  description:
    - One record per member, ordered by member index. In check mode only the volumes that already exist.
  returned: success
  type: list
  elements: dict
  contains:
    index:
      description: Member index in the set.
      type: int
    volume_id:
      description: The volume.
      type: str
    device:
      description: The member's recorded device name on the source instance.
      type: str
    snapshot_id:
      description: The member's snapshot.
      type: str
    source_volume:
      description: The volume the snapshot was taken of.
      type: str
    availability_zone:
      description: Zone of the volume.
      type: str
    state:
      description: EC2 state of the volume (C(available), C(in-use), or C(creating) without O(wait)).
      type: str
    created:
      description: Whether this run created the volume (false when an earlier run did).
      type: bool
  sample:
    - {index: 0, volume_id: vol-0a1b2c3d4e5f60718, device: /dev/sdf, snapshot_id: snap-0a2c93549db21a17c,
       source_volume: vol-4ca1c73a7c6abd230, availability_zone: eu-west-1a, state: available, created: true}
created:
  description: Ids of the volumes this run created.
  returned: success
  type: list
  elements: str
volumes_to_create:
  description: The members that have no volume yet (C(index), C(snapshot_id), C(device), C(source_volume),
    C(availability_zone), C(volume_type), C(size)); what check mode would create.
  returned: success
  type: list
  elements: dict
fast_snapshot_restore:
  description: Fast snapshot restore per snapshot (C(states)) and the snapshots enabled by this run (C(enabled);
    in check mode, those it would enable).
  returned: when O(fast_snapshot_restore=true) and there was something to create
  type: dict
  sample: {states: {snap-0a2c93549db21a17c: enabling}, enabled: [snap-0a2c93549db21a17c]}
rollback:
  description: On failure, the volumes this run created and deleted again (C(deleted)) and those it could not
    delete (C(failed)).
  returned: when a failure rolled volumes back
  type: dict
"""

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _restore as restore
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

ARGUMENT_SPEC = dict(
    set_id=dict(type="str", required=True),
    availability_zone=dict(type="str"),
    instance_id=dict(type="str"),
    restore_id=dict(type="str"),
    volume_type=dict(type="str", default="gp3", choices=list(restore.VOLUME_TYPES)),
    iops=dict(type="int"),
    throughput=dict(type="int"),
    kms_key_id=dict(type="str"),
    encrypted=dict(type="bool"),
    tags=dict(type="dict"),
    fast_snapshot_restore=dict(type="bool", default=False),
    wait=dict(type="bool", default=True),
    wait_timeout=dict(type="int", default=900),
)


def main():
    module = AnsibleAWSModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                              required_one_of=[("availability_zone", "instance_id")])
    try:
        result = restore.restore(module.client("ec2", retry_decorator=ebs.RETRY), check_mode=module.check_mode,
                                 warn=module.warn, **dict((k, module.params[k]) for k in ARGUMENT_SPEC))
    except StillpointError as e:
        module.fail_json(**e.fail_kwargs())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
