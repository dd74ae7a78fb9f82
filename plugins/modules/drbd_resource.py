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
    metadata (O(create_md)), up/attach (O(state=up)), O(connection=connected), skipping the initial resync
    (O(skip_initial_sync)), O(role=secondary), O(connection=disconnected) (optionally inside a freeze),
    O(role=primary), O(wait_sync). O(state=down) demotes (O(role=secondary)) and takes the resource down."
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
      - C(up) brings the resource up (C(drbdadm up)) or attaches a Diskless one; C(down) takes it down
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
    description: C(connected) connects a StandAlone resource; C(disconnected) disconnects it (the peer keeps its
      disk state; the bitmap records what changes meanwhile, so a later C(connected) resyncs only that).
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
        (C(drbdadm sh-ll-dev)).
    type: str
  skip_initial_sync:
    description:
      - Skip the initial resync (C(drbdadm new-current-uuid --clear-bitmap)) after both sides were restored from
        the same snapshot and their metadata recreated. The EC2 catalog must prove it.
    type: dict
    suboptions:
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
    description: Seconds to wait for the peer to connect before O(skip_initial_sync).
    type: int
    default: 120
  wait_sync:
    description: Wait until both disks are UpToDate, reporting progress and the amount resynced.
    type: bool
    default: false
  sync_timeout:
    description: Seconds to wait with O(wait_sync).
    type: int
    default: 3600
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
notes:
  - AWS access (boto3 and credentials on this host) is needed only for O(skip_initial_sync).
attributes:
  check_mode:
    support: full
    description: Reads the state, checks every refusal and returns the planned C(actions); changes nothing.
  diff_mode:
    support: full
    description: C(before)/C(after) of the resource summary.
  idempotent:
    support: full
    description: A resource already in the wanted state is left alone.
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
  description: The resource summary after the run (see M(stillpoint.snapshots.drbd_info) C(summary)).
  returned: always
  type: dict
actions:
  description: What was done (or would be, in check mode), in order, with the command and its duration.
  returned: always
  type: list
  elements: dict
  sample: [{what: "promote r0", cmd: ["/usr/sbin/drbdadm", "primary", "r0"], rc: 0, ms: 140.2}]
split:
  description: With O(connection=disconnected), when the split happened (C(split_time), UTC) and, with O(freeze),
    the freeze window (C(window_ms)) and whether the deadline thawed (C(deadline_thawed)).
  returned: when the resource was disconnected
  type: dict
sync:
  description: With O(wait_sync), C(seconds), the out-of-sync amount at the start (C(start.out_of_sync_kib)),
    C(received_kib)/C(sent_kib) during the wait (DRBD's own counters) and C(progress).
  returned: when O(wait_sync=true)
  type: dict
proof:
  description: With O(skip_initial_sync), what the catalog proved (set, snapshot, volumes).
  returned: when O(skip_initial_sync) is set
  type: dict
"""

import time

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _freeze
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _restore as restore
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CommandRunner, StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import DeviceResolver
from ansible_collections.stillpoint.snapshots.plugins.module_utils._drbd import Drbd, Resource

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
    skip_initial_sync=dict(type="dict", options=dict(
        set_id=dict(type="str", required=True),
        volume_ids=dict(type="list", elements="str", required=True),
    )),
    connect_timeout=dict(type="int", default=120),
    wait_sync=dict(type="bool", default=False),
    sync_timeout=dict(type="int", default=3600),
)


def _disk_path(value):
    if value and value.startswith("vol-"):
        found = DeviceResolver().devices_for_volume(value)
        if not found:
            raise StillpointError("replaced_disk %s: no disk of this EBS volume is attached to this host" % value)
        return found[0]
    return value


def _prove(module, res, params):
    proof_in = params["skip_initial_sync"]
    local = res.drbd.backing_disk(res.name)
    resolver = DeviceResolver()
    local_volume = resolver.volume_for_path(local)
    if local_volume not in proof_in["volume_ids"]:
        raise StillpointError("this host's backing disk %s is volume %s, which is not among skip_initial_sync."
                              "volume_ids %s" % (local, local_volume, proof_in["volume_ids"]))
    client = module.client("ec2", retry_decorator=ebs.RETRY)
    proof = restore.same_snapshot_proof(client, proof_in["set_id"], proof_in["volume_ids"])
    proof["local_volume"] = local_volume
    return proof


def _wait_connected(res, timeout):
    deadline = time.monotonic() + timeout
    while True:
        st = res.drbd.status(res.name)
        if st["connection"] == "Connected" or time.monotonic() > deadline:
            return st
        time.sleep(1.0)


def run(module, res, params, result):
    changed = False
    if params["state"] == "down":
        if params["role"] == "secondary":
            changed |= res.demote()
        changed |= res.down()
        return changed
    if params["create_md"]:
        changed |= res.create_md(replaced_disk=_disk_path(params["replaced_disk"]))
    changed |= res.up()
    if params["connection"] == "connected":
        changed |= res.connect()
    if params["skip_initial_sync"]:
        result["proof"] = _prove(module, res, params)
        if not res.check_mode:
            _wait_connected(res, params["connect_timeout"])
        changed |= res.clear_bitmap(result["proof"]) if not res.check_mode else _planned_clear(res, result["proof"])
    if params["role"] == "secondary":
        changed |= res.demote()
    if params["connection"] == "disconnected":
        freezer = None
        if params["freeze"]:
            plan = _freeze.check_mountpoints(params["freeze"], protect_paths=_freeze.module_protect_paths(module))
            freezer = None if res.check_mode else _freeze.Guardian.start(plan, deadline=params["freeze_deadline"])
            result["freeze_plan"] = plan
        try:
            split = res.disconnect(freezer=freezer if freezer is not None else (True if params["freeze"] else None))
        finally:
            if freezer is not None:
                freezer.close()
        if split is not None:
            result["split"] = {k: v for k, v in split.items() if k != "planned"}
            changed = True
    if params["role"] == "primary":
        changed |= res.promote(force=params["force"])
    if params["wait_sync"] and not res.check_mode:
        result["sync"] = res.wait_sync(params["sync_timeout"])
    return changed


def _planned_clear(res, proof):
    st = res.drbd.status(res.name)
    if st["in_sync"]:
        return False
    res.actions.append({"what": "skip the initial resync of %s (snapshot %s)" % (res.name, proof["snapshot_id"]),
                        "cmd": ["drbdadm", "new-current-uuid", "--clear-bitmap", res.name]})
    return True


def main():
    module = AnsibleAWSModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True, check_boto3=False)
    params = module.params
    if params["freeze"] and params["connection"] != "disconnected":
        module.fail_json(msg="freeze is only used to split the mirror: set connection: disconnected with it")
    if params["replaced_disk"] and not params["create_md"]:
        module.fail_json(msg="replaced_disk only means something with create_md: true")
    drbd = Drbd(CommandRunner.from_module(module))
    res = Resource(drbd, params["name"], check_mode=module.check_mode)
    result = dict(changed=False)
    try:
        before = drbd.status(params["name"])
        result["changed"] = bool(run(module, res, params, result))
        after = drbd.status(params["name"])
    except StillpointError as e:
        kwargs = e.fail_kwargs()
        kwargs.setdefault("actions", res.actions)
        module.fail_json(**kwargs)
    result.update(status=after, actions=res.actions, warnings=res.warnings or None)
    if not result["warnings"]:
        result.pop("warnings")
    if module._diff:
        result["diff"] = dict(before=before, after=after)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
