#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: drbd_resource
short_description: Bring a DRBD resource up or down, connect, switch roles, create metadata, wait for sync, safely
version_added: 0.1.0
description:
  - "Drives one DRBD resource (defined in C(/etc/drbd.d)) on this host towards the wanted state, in this order:
    metadata (O(create_md)), up/attach (O(state=up)), O(connection=connected), O(role=secondary),
    O(connection=disconnected) (optionally inside a freeze), O(role=primary), O(wait_sync). O(state=down) demotes
    (O(role=secondary)) and takes the resource down."
  - "Refuses what would lose data (seed 003, DOMAIN.md): promoting a disk that is not UpToDate (Inconsistent,
    Outdated, Diskless) unless O(force); even with O(force), promoting when the peer's disk is UpToDate (that
    would make this side the sync source and overwrite the good copy: promote the survivor instead) or when
    the local backing disk shows no data signature (it looks empty); promoting while the peer is Primary
    unless dual-primary (C(allow-two-primaries)) is configured; C(create-md) over a disk that holds data or
    DRBD metadata unless it is declared O(replaced_disk); C(new-current-uuid --clear-bitmap) unless the
    catalog proves that both sides' backing volumes were created from one snapshot of one complete backup
    set, the metadata is freshly created and both sides are connected and Inconsistent."
  - Works with DRBD 8.4 (kernel) and 9; status is read as M(stillpoint.snapshots.drbd_info) does.
options:
  name:
    description: The DRBD resource.
    type: str
    required: true
  state:
    description:
      - V(up) brings the resource up (C(drbdadm up)) or attaches a Diskless one; V(down) takes it down
        (refused while Primary unless O(role=secondary) is also asked).
    type: str
    choices: [up, down]
    default: up
  role:
    description: The wanted role on this host. See the refusals above.
    type: str
    choices: [primary, secondary]
  force:
    description:
      - Allow promoting a disk that is not UpToDate (C(drbdadm primary --force)), making it the sync source.
        Still refused when the peer's disk is UpToDate or Consistent, or when the local disk looks empty.
    type: bool
    default: false
  connection:
    description: V(connected) connects a StandAlone resource; V(disconnected) disconnects it (the peer keeps its
      disk state; the bitmap records what changes meanwhile, so a later V(connected) resyncs only that).
    type: str
    choices: [connected, disconnected]
  freeze:
    description:
      - With O(connection=disconnected), freeze these filesystems (mounted on this resource, this host) through
        the freeze guardian (dead-man thaw, O(freeze_deadline)), disconnect, thaw. The peer then holds a
        filesystem-consistent copy of the split instant. Refused unless the resource is UpToDate/UpToDate first.
      - The same refusals as M(stillpoint.snapshots.fsfreeze) (C(/), the filesystem Ansible runs from, ...).
    type: list
    elements: path
    default: []
  freeze_deadline:
    description: Seconds after which the guardian thaws on its own (the split is then recorded as crash level).
    type: float
    default: 10
  create_md:
    description:
      - Create DRBD metadata on the backing disk (C(drbdadm create-md)) when the resource is not attached.
        A disk holding a filesystem, other data or DRBD metadata is refused unless it is O(replaced_disk).
    type: bool
    default: false
  replaced_disk:
    description:
      - The backing disk that was replaced or restored, whose metadata may be (re)created over what it holds, as a
        device path or an EBS volume id (resolved on this host by NVMe serial). Must be this resource's disk
        (C(drbdadm sh-ll-dev)). Only with O(create_md=true).
    type: str
  wait_sync:
    description: Wait until both disks are UpToDate, reporting progress and the amount resynced (RV(sync)).
    type: bool
    default: false
  sync_timeout:
    description: Seconds to wait with O(wait_sync).
    type: int
    default: 3600
extends_documentation_fragment:
  - stillpoint.snapshots.attributes
notes:
  - "Skipping the initial resync after both sides were restored from one snapshot (C(new-current-uuid
    --clear-bitmap)) is M(stillpoint.snapshots.drbd_skip_initial_sync): the only DRBD step that needs the EC2
    catalog, kept apart so that this module needs no boto3 and starts without importing it."
seealso:
  - module: stillpoint.snapshots.drbd_skip_initial_sync
  - module: stillpoint.snapshots.drbd_info
attributes:
  check_mode:
    support: full
    details:
      - Reads the state, checks every refusal and returns the planned RV(actions) (RV(actions[].planned=true));
        nothing is changed, frozen or waited for.
  diff_mode:
    support: full
    details: C(before)/C(after) of the resource summary (as RV(status)).
  idempotent:
    support: full
    details: A resource already in the wanted state is left alone (RV(actions) empty, C(changed=false)).
author:
  - stillpoint.snapshots maintainers (@stillpoint)
"""

EXAMPLES = r"""
- name: Seed 003, step 1 - promote the surviving node first
  stillpoint.snapshots.drbd_resource:
    name: r0
    role: primary

- name: Seed 003 - metadata on the new disk, then resync from the survivor
  stillpoint.snapshots.drbd_resource:
    name: r0
    create_md: true
    replaced_disk: vol-0123456789abcdef0
    wait_sync: true

- name: Split the mirror for a backup (on the primary) - freeze, disconnect, thaw
  stillpoint.snapshots.drbd_resource:
    name: r0
    connection: disconnected
    freeze: [/srv/data]
"""

RETURN = r"""
status:
  description: The resource summary after the run, the same as RV(stillpoint.snapshots.drbd_info#module:summary).
  returned: always
  type: dict
actions:
  description:
    - What was done (in check mode, what would be done), in order, one entry a command.
  returned: always
  type: list
  elements: dict
  contains:
    what:
      description: What the command was for.
      type: str
      sample: promote r0
    cmd:
      description: The command, as a list.
      type: list
      elements: str
      sample: [/usr/sbin/drbdadm, primary, r0]
    rc:
      description: Its exit code; null when it did not run (check mode).
      type: int
      sample: 0
    ms:
      description: Its duration in milliseconds; null when it did not run (check mode).
      type: float
      sample: 140.2
    planned:
      description: True in check mode, where the command was only planned.
      type: bool
      sample: false
  sample: [{what: "promote r0", cmd: ["/usr/sbin/drbdadm", "primary", "r0"], rc: 0, ms: 140.2, planned: false}]
split:
  description:
    - With O(connection=disconnected), when the split happened and, with O(freeze), the freeze window.
    - In check mode an empty dict (nothing was split).
  returned: when the resource was (or, in check mode, would be) disconnected
  type: dict
  contains:
    split_time:
      description: When the mirror was split (UTC).
      type: str
      sample: "2024-01-01T00:00:00Z"
    window_ms:
      description: With O(freeze), how long the filesystems were frozen.
      type: float
    deadline_thawed:
      description: With O(freeze), whether the guardian's deadline thawed before the disconnect ended (the split is
        then crash level only).
      type: bool
    freeze:
      description: With O(freeze), the guardian's freeze record (C(mounts)).
      type: dict
    thaw:
      description: With O(freeze), the guardian's thaw record (C(mounts), C(window_ms), C(thawed_by)).
      type: dict
freeze_plan:
  description: With O(freeze), the checked freeze plan, in order (C(mountpoint), C(fstype), C(source), C(dev),
    C(mount_id) of each filesystem).
  returned: when O(freeze) is set
  type: list
  elements: dict
sync:
  description: With O(wait_sync), what the wait saw.
  returned: when O(wait_sync=true), not in check mode
  type: dict
  contains:
    seconds:
      description: How long the wait took.
      type: float
    start:
      description: C(out_of_sync_kib), C(received_kib) and C(sent_kib) at the start.
      type: dict
    received_kib:
      description: KiB received during the wait (DRBD's own counter; null when DRBD shows none).
      type: int
    sent_kib:
      description: KiB sent during the wait (DRBD's own counter; null when DRBD shows none).
      type: int
    progress:
      description: C(t_s), C(percent) and C(out_of_sync_kib) each time the sync percentage moved.
      type: list
      elements: dict
    status:
      description: The resource summary at the end of the wait.
      type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _drbd
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CommandRunner, StillpointError

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", default="up", choices=["up", "down"]),
    role=dict(type="str", choices=["primary", "secondary"]),
    force=dict(type="bool", default=False),
    connection=dict(type="str", choices=["connected", "disconnected"]),
    freeze=dict(type="list", elements="path", default=[]),
    freeze_deadline=dict(type="float", default=10.0),
    create_md=dict(type="bool", default=False),
    replaced_disk=dict(type="str"),
    wait_sync=dict(type="bool", default=False),
    sync_timeout=dict(type="int", default=3600),
)


def _protect_paths(module):
    # imported only when a split freezes: the freeze library is the largest of all, its compile a cost to every run
    from ansible_collections.stillpoint.snapshots.plugins.module_utils import _freeze
    return _freeze.module_protect_paths(module)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    drbd = _drbd.Drbd(CommandRunner.from_module(module))
    try:
        result = _drbd.ensure(drbd, module.params, check_mode=module.check_mode, diff=module._diff,
                              protect_paths=lambda: _protect_paths(module))
    except StillpointError as e:
        module.fail_json(**e.fail_kwargs())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
