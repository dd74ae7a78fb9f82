#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: drbd_info
short_description: DRBD resources, roles, disk and connection states, sync progress and out-of-sync amount
version_added: 0.1.0
description:
  - Reads DRBD's own status on the host. DRBD 9 with C(drbdsetup status --json); DRBD 8.4 with
    C(drbdsetup status --verbose --statistics) (what C(drbdadm status) prints, with counters) and C(/proc/drbd)
    for the resync speed and time left.
  - Each resource comes whole (devices, connections, peer devices) and as a two-node RV(summary) (role, disk,
    connection, peer role and disk, replication state, out-of-sync KiB, sync percent, C(in_sync)).
  - Generation identifiers (C(drbdadm get-gi)) on request (O(gi)).
options:
  name:
    description: Only this resource. A resource that is not up is returned with RV(summary.configured=false).
    type: str
  backing:
    description: With O(name), also report the backing disk (C(drbdadm sh-ll-dev)) and its EBS volume id (by NVMe
      serial or C(/dev/disk/by-id) link), even when the resource is down.
    type: bool
    default: true
  gi:
    description: Also read each resource's generation identifiers (current, bitmap, history UUIDs and flags).
    type: bool
    default: false
extends_documentation_fragment:
  - stillpoint.snapshots.attributes.info_module
author:
  - stillpoint.snapshots maintainers (@stillpoint)
"""

EXAMPLES = r"""
- name: Is r0 clean on both sides?
  stillpoint.snapshots.drbd_info:
    name: r0
  register: drbd

- name: Refuse to go on unless UpToDate/UpToDate
  ansible.builtin.assert:
    that: drbd.summary.in_sync
    fail_msg: "r0 is {{ drbd.summary.disk }}/{{ drbd.summary.peer_disk }} ({{ drbd.summary.replication }})"
"""

RETURN = r"""
kernel_version:
  description: The DRBD kernel module's version (first line of C(/proc/drbd)).
  returned: always
  type: str
  sample: 8.4.11
resources:
  description: Every resource (or the one named), as DRBD reports it, normalised across 8.4 and 9.
  returned: always
  type: list
  elements: dict
  sample:
    - name: r0
      role: Primary
      devices: [{volume: 0, minor: 0, disk: UpToDate, size_kib: 1048508}]
      connections:
        - peer: vmb
          connection: Connected
          peer_role: Secondary
          peer_devices: [{volume: 0, replication: SyncSource, peer_disk: Inconsistent, out_of_sync_kib: 827324,
                          sent_kib: 221184, received_kib: 0, sync_percent: 21.1}]
summary:
  description: With O(name), the two-node summary of that resource (first volume, first peer).
  returned: when O(name) is set
  type: dict
  sample: {name: r0, configured: true, role: Primary, disk: UpToDate, connection: Connected, peer_role: Secondary,
           peer_disk: UpToDate, replication: Established, out_of_sync_kib: 0, syncing: false, in_sync: true}
  contains:
    configured:
      description: Whether the resource is up; when false the state keys are null.
      type: bool
    in_sync:
      description: Every peer connected and UpToDate, the local disk UpToDate, nothing resyncing.
      type: bool
    syncing:
      description: A resync runs with some peer.
      type: bool
    peers:
      description: Every peer's C(peer), C(connection), C(peer_role), C(peer_disk), C(replication) and counters (three
        or more nodes; the top-level peer keys are the first peer's).
      type: list
      elements: dict
    backing_disk:
      description: With O(backing), the backing disk as configured (C(drbdadm sh-ll-dev)).
      type: str
    volume_id:
      description: With O(backing), the EBS volume of the backing disk; null when it is not an EBS volume.
      type: str
summaries:
  description: The summary of every resource, by name.
  returned: always
  type: dict
gi:
  description: With O(gi), generation identifiers by resource name (C(current), C(bitmap), C(history), C(flags),
    C(just_created)).
  returned: when O(gi=true)
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _drbd
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CommandRunner, StillpointError


def main():
    module = AnsibleModule(argument_spec=dict(name=dict(type="str"), gi=dict(type="bool", default=False),
                                              backing=dict(type="bool", default=True)),
                           supports_check_mode=True)
    params = module.params
    try:
        result = _drbd.info(_drbd.Drbd(CommandRunner.from_module(module)), name=params["name"],
                            backing=params["backing"], gi=params["gi"])
    except StillpointError as e:
        module.fail_json(**e.fail_kwargs())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
