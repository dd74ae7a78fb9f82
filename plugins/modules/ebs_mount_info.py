#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ebs_mount_info
short_description: Find the EBS volumes under mountpoints, or the disks and mounts of EBS volumes
version_added: 0.1.0
description:
  - Resolves each mountpoint to its block devices (through partitions, md and LVM) and their EBS volume ids,
    by NVMe serial or the udev links C(nvme-Amazon_Elastic_Block_Store_vol...), never by device name or order.
  - With O(check_freeze), also validates that the filesystems may be frozen (not C(/), not the filesystem
    holding Ansible's remote tmp dir, the Python interpreter or the working directory, a freezable type).
  - With O(volume_ids), the other way round - finds each volume's disks on this host (by NVMe serial or
    the udev links in O(by_id_dir), never by device name) and what is mounted from them, for example to
    unmount a disk before it is detached, or to wait until an attached volume shows up.
  - With O(expect_instance_id), first proves that this host is that EC2 instance, from its own instance metadata
    (IMDSv2 identity document), and fails before anything else when it is another instance or the metadata service
    cannot tell. Run it on a play host before a procedure changes anything for the instance it believes the host is
    (the role C(stillpoint.snapshots.array_restore) does).
  - Needs no AWS access; M(stillpoint.snapshots.ebs_snapshot_set) runs it on the host in controller mode.
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  mountpoints:
    description: Mountpoints to resolve.
    type: list
    elements: path
    default: []
  exclude_mountpoints:
    description: Mountpoints to resolve as well, reported separately (their volumes are excluded from sets).
    type: list
    elements: path
    default: []
  volume_ids:
    description:
      - EBS volume ids (C(vol-...)) to look for on this host; the result is in RV(volumes), in this order.
      - A volume that is not attached (or not yet visible) is returned with RV(volumes[].present=false); it is not an error.
    type: list
    elements: str
    default: []
  check_freeze:
    description: Also validate that O(mountpoints) may be frozen, and fail with the reason if not.
    type: bool
    default: false
  protect_paths:
    description: Extra paths whose filesystems must never be frozen.
    type: list
    elements: path
    default: []
  expect_instance_id:
    description:
      - The EC2 instance id (C(i-...)) this host must be. Its instance id is read from the instance metadata service
        (IMDSv2, O(imds_endpoint)); when it differs, or cannot be read, the module fails naming both (RV(instance)
        holds what the service said) and looks at nothing else.
      - Unset, the metadata service is not asked.
    type: str
  imds_endpoint:
    description:
      - Instance metadata endpoint used with O(expect_instance_id). Defaults to E(AWS_EC2_METADATA_SERVICE_ENDPOINT)
        on the host, else C(http://169.254.169.254).
    type: str
extends_documentation_fragment:
  - stillpoint.snapshots.attributes.info_module
  - stillpoint.snapshots.devices
"""

EXAMPLES = r"""
- name: Which EBS volumes hold /data?
  stillpoint.snapshots.ebs_mount_info:
    mountpoints: [/data]
  register: data_volumes

- name: Show them
  ansible.builtin.debug:
    msg: "{{ data_volumes.mounts[0].volume_ids }}"

- name: Unmount everything that is mounted from a volume before it is detached
  stillpoint.snapshots.ebs_mount_info:
    volume_ids: [vol-0123456789abcdef0]
  register: old_disk

- name: Unmount it (the last mounted first)
  when: old_disk.volumes[0].mountpoints | length > 0
  ansible.builtin.command:
    argv: "{{ ['umount'] + old_disk.volumes[0].mountpoints }}"
  changed_when: true

- name: Refuse to go on unless this host is the instance the backup set was taken from
  stillpoint.snapshots.ebs_mount_info:
    expect_instance_id: "{{ backup_set.instance_id }}"

- name: Wait until an attached volume shows up on the host
  stillpoint.snapshots.ebs_mount_info:
    volume_ids: [vol-0fedcba9876543210]
  register: new_disk
  until: new_disk.volumes[0].present
  retries: 120
  delay: 1
"""

RETURN = r"""
mounts:
  description: One entry per mountpoint, in the given order.
  returned: always
  type: list
  elements: dict
  sample: [{mountpoint: /data, fstype: xfs, source: /dev/md0, volume_ids: [vol-0a, vol-0b],
            disks: [{name: nvme1n1, volume_id: vol-0a, dev_path: /dev/nvme1n1}]}]
exclude_mounts:
  description: The same for O(exclude_mountpoints).
  returned: always
  type: list
  elements: dict
freeze_plan:
  description: The validated freeze plan (mountpoint, fstype, source, dev) when O(check_freeze) is set.
  returned: when check_freeze
  type: list
  elements: dict
volumes:
  description: One entry per item of O(volume_ids), in the given order.
  returned: always
  type: list
  elements: dict
  contains:
    volume_id:
      description: The volume id (with the dash).
      type: str
      sample: vol-0123456789abcdef0
    devices:
      description: The C(/dev) paths of the whole disks that are this volume (found by NVMe serial or by-id link).
      type: list
      elements: str
      sample: [/dev/nvme1n1]
    mountpoints:
      description:
        - Every mount of a filesystem on those disks, on their partitions, or on a device-mapper or md device above
          them (bind mounts too).
        - One entry per mount, the last mounted first (the order to unmount them in).
      type: list
      elements: str
      sample: [/srv/export, /data]
    present:
      description: Whether the volume's disk is on this host.
      type: bool
      sample: true
hostname:
  description: The host's name, as recorded in the catalog.
  returned: always
  type: str
instance:
  description:
    - What the instance metadata service says this host is, with the endpoint asked. Also returned when the module
      fails because the host is another instance; null when the service could not be read.
  returned: when expect_instance_id is set
  type: dict
  sample: {instance_id: i-0123456789abcdef0, region: eu-west-1, availability_zone: eu-west-1a,
           endpoint: "http://169.254.169.254"}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CommandRunner
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import DEVICES_ARGS
from ansible_collections.stillpoint.snapshots.plugins.module_utils._imds import check_instance
from ansible_collections.stillpoint.snapshots.plugins.module_utils._setplan import mount_info


def main():
    module = AnsibleModule(
        argument_spec=dict(
            mountpoints=dict(type="list", elements="path", default=[]),
            volume_ids=dict(type="list", elements="str", default=[]),
            exclude_mountpoints=dict(type="list", elements="path", default=[]),
            check_freeze=dict(type="bool", default=False),
            protect_paths=dict(type="list", elements="path", default=[]),
            expect_instance_id=dict(type="str"),
            imds_endpoint=dict(type="str"),
            **DEVICES_ARGS
        ),
        supports_check_mode=True,
    )
    try:
        result = {}
        if module.params["expect_instance_id"] is not None:  # first: nothing else is looked at on another host
            result["instance"] = check_instance(module.params["expect_instance_id"], module.params["imds_endpoint"])
        result.update(mount_info(module.params, CommandRunner.from_module(module), protect_paths=[module.tmpdir],
                                 warn=module.warn))
        module.exit_json(**result)
    except StillpointError as exc:
        module.fail_json(**exc.fail_kwargs())


if __name__ == "__main__":
    main()
