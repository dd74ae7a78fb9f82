#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ebs_mount_info
short_description: Find the EBS volumes under mountpoints, and check whether they may be frozen
version_added: 0.1.0
description:
  - Resolves each mountpoint to its block devices (through partitions, md and LVM) and their EBS volume ids,
    by NVMe serial or the udev links C(nvme-Amazon_Elastic_Block_Store_vol...), never by device name or order.
  - With I(check_freeze), also validates that the filesystems may be frozen (not C(/), not the filesystem
    holding Ansible's remote tmp dir, the Python interpreter or the working directory, a freezable type).
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
  by_id_dir:
    description: Where the udev links for EBS volumes are.
    type: path
    default: /dev/disk/by-id
  check_freeze:
    description: Also validate that I(mountpoints) may be frozen, and fail with the reason if not.
    type: bool
    default: false
  protect_paths:
    description: Extra paths whose filesystems must never be frozen.
    type: list
    elements: path
    default: []
attributes:
  check_mode:
    support: full
    description: Read-only.
  diff_mode:
    support: none
    description: Read-only.
  idempotent:
    support: full
    description: Read-only; the same system gives the same answer.
"""

EXAMPLES = r"""
- name: Which EBS volumes hold /data?
  stillpoint.snapshots.ebs_mount_info:
    mountpoints: [/data]
  register: data_volumes

- name: Show them
  ansible.builtin.debug:
    msg: "{{ data_volumes.mounts[0].volume_ids }}"
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
  description: The same for I(exclude_mountpoints).
  returned: always
  type: list
  elements: dict
freeze_plan:
  description: The validated freeze plan (mountpoint, fstype, source, dev) when I(check_freeze) is set.
  returned: when check_freeze
  type: list
  elements: dict
hostname:
  description: The host's name, as recorded in the catalog.
  returned: always
  type: str
"""

import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CommandRunner
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._setplan import resolve_on_host


def main():
    module = AnsibleModule(
        argument_spec=dict(
            mountpoints=dict(type="list", elements="path", default=[]),
            exclude_mountpoints=dict(type="list", elements="path", default=[]),
            by_id_dir=dict(type="path", default="/dev/disk/by-id"),
            check_freeze=dict(type="bool", default=False),
            protect_paths=dict(type="list", elements="path", default=[]),
        ),
        supports_check_mode=True,
    )
    params = dict(module.params, freeze=module.params["check_freeze"])
    try:
        # with a runner, the md arrays and LVM volume groups under the mountpoints are discovered too
        host = resolve_on_host(params, protect_paths=[module.tmpdir], runner=CommandRunner.from_module(module))
    except StillpointError as e:
        module.fail_json(**e.fail_kwargs())
    for warning in host.pop("warnings"):
        module.warn(warning)
    module.exit_json(changed=False, hostname=socket.gethostname(), **host)


if __name__ == "__main__":
    main()
