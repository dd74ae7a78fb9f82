#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ebs_snapshot_group
short_description: Arm and seal a consistency group - the sets of several hosts at one proved instant
version_added: 0.2.0
description:
  - The controller's half of a consistency group (C(docs/groups.md)); the hosts' half is
    M(stillpoint.snapshots.ebs_snapshot_set) with O(stillpoint.snapshots.ebs_snapshot_set#module:group). Role
    C(array_backup) runs the whole procedure with C(array_backup_group=true).
  - O(state=opened) only makes the group's id, for the hosts to start with (each prepares and waits, ready, for
    the instant; C(docs/groups.md)). It makes no AWS call.
  - O(state=armed) picks the group id (or takes O(group_id)) and the common instant, O(arm_s) from now, and sizes the
    hold from the clock errors measured on the hosts (M(stillpoint.snapshots.clock_offset)). It makes no AWS call.
    Role C(array_backup) arms only once every host is ready, so O(arm_s) only has to cover handing the instant to
    the hosts (one task).
  - With O(ready_states) (what the wait printed on each host of O(hosts)) O(state=armed) reports which hosts are
    ready, failed or still pending (RV(members)) and arms only when every host is ready;
    otherwise it returns RV(released), the reason to release every host with nothing frozen, naming each host
    that is not ready and why, and no instant.
  - O(state=sealed) puts each member's frozen interval (on its own clock) on the controller's time line with the
    offsets measured before and after, and finds the instant every host was frozen at. With a positive margin the
    group is V(consistent) and every set is tagged with the verdict, the common instant, the margin and its host's
    corrected interval; then its sets count as complete. With none, the group is recorded V(inconsistent) and the
    module fails (each set stays a valid set of its host; a group restore refuses the group). When a member failed,
    or a set of the group is missing or unreported, every set of the group is deleted (all or nothing) and the
    module fails.
  - Run it once per group (C(run_once)) - O(state=opened) and O(state=armed) on the controller (C(delegate_to=localhost); it reads the
    clock the offsets were measured against and needs no AWS access), O(state=sealed) where the group's AWS access is
    (in host mode, one host of the group).
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  state:
    description: V(opened) makes the group id; V(armed) picks the instant; V(sealed) records the verdict.
    type: str
    choices: [opened, armed, sealed]
    required: true
  group_id:
    description: The group (C(bg-...)); required with O(state=sealed). With O(state=armed), a new id is made when unset.
    type: str
  arm_s:
    description:
      - Seconds from now to the common instant; every host must have its instant, and be waiting (its DryRun done),
        before then.
      - Armed after every host is ready (role C(array_backup)), it only covers handing the instant over.
    type: float
    default: 20.0
  lead_ms:
    description: How long before the instant each host starts its freeze; a host whose last sync before it was slow
      starts earlier, three such syncs before the instant (at most four leads; docs/groups.md).
    type: float
    default: 100.0
  hold_ms:
    description: The least time each host holds its freeze after the instant; raised to twice the largest clock error plus 20 ms.
    type: float
    default: 50.0
  clock_errors:
    description: The hosts' clock error bounds in seconds (C(error_s) of M(stillpoint.snapshots.clock_offset)).
    type: list
    elements: float
    default: []
  hosts:
    description:
      - The inventory hosts of the group, with O(state=sealed); the lists below are in the same order.
      - With O(state=armed), the hosts O(ready_states) are for.
    type: list
    elements: str
    default: []
  ready_states:
    description:
      - "With O(state=armed), what the wait for each host's member printed, one text per host of O(hosts) (role
        C(array_backup): C(ready <pid>), C(failed <pid>: <why>), or C(pending: <why>) when its ready timeout ended)."
      - An empty text (the host's wait did not run) counts as failed.
    type: list
    elements: str
  set_results:
    description: What M(stillpoint.snapshots.ebs_snapshot_set) returned on each host (registered, also when it failed).
    type: list
    elements: dict
    default: []
  clocks_before:
    description:
      - M(stillpoint.snapshots.clock_offset) on each host before the group's freeze.
      - With O(state=armed), when given, their C(error_s) size the hold (instead of O(clock_errors)) and their
        C(measured_at) the drift allowed since they were measured.
    type: list
    elements: dict
    default: []
  clocks_after:
    description: M(stillpoint.snapshots.clock_offset) on each host after it.
    type: list
    elements: dict
    default: []
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
  - stillpoint.snapshots.attributes
  - stillpoint.snapshots.attributes.actiongroup_aws
attributes:
  check_mode:
    support: full
    details: O(state=sealed) reports the verdict and what it would tag or delete, and changes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: A sealed group is reported unchanged.
notes:
  - "IAM: ec2:DescribeSnapshots, ec2:CreateTags, ec2:DeleteSnapshot (a failed group) on the group's snapshots."
  - The hosts' clocks are meant to be synchronized (chrony, the Amazon Time Sync Service); the verdict does not
    assume it, it uses the offsets the run measured.
seealso:
  - module: stillpoint.snapshots.ebs_snapshot_set
  - module: stillpoint.snapshots.clock_offset
"""

EXAMPLES = r"""
# role array_backup (array_backup_group=true) does all of this; docs/groups.md
- name: A new group id, for the hosts to start with (each prepares, then waits ready for the instant)
  stillpoint.snapshots.ebs_snapshot_group:
    state: opened
  run_once: true
  delegate_to: localhost
  register: opened

- name: Agree on the instant
  stillpoint.snapshots.ebs_snapshot_group:
    state: armed
    clock_errors: "{{ ansible_play_hosts_all | map('extract', hostvars, ['clock', 'error_s']) | list }}"
  run_once: true
  delegate_to: localhost
  register: armed

- name: Seal it
  stillpoint.snapshots.ebs_snapshot_group:
    state: sealed
    group_id: "{{ armed.group_id }}"
    hosts: "{{ ansible_play_hosts_all }}"
    set_results: "{{ ansible_play_hosts_all | map('extract', hostvars) | map(attribute='taken', default={}) | list }}"
    clocks_before: "{{ ansible_play_hosts_all | map('extract', hostvars) | map(attribute='clock', default={}) | list }}"
    clocks_after: "{{ ansible_play_hosts_all | map('extract', hostvars) | map(attribute='clock_after', default={}) | list }}"
  run_once: true
"""

RETURN = r"""
group_id:
  description: The group (with O(state=opened), a new one unless O(group_id) was given).
  returned: always
  type: str
  sample: bg-20261204T101500Z-1a2b3c
instant:
  description: With O(state=armed) the instant agreed; sealed, the common instant found (controller clock, epoch seconds).
  returned: success
  type: float
members:
  description:
    - With O(ready_states), each host's member after the wait - C(ready) (the hosts whose member is ready), C(failed)
      (host to why - it failed, or ended, before it was ready) and C(pending) (host to what it last said - not ready
      within the wait).
  returned: when armed with O(ready_states)
  type: dict
  sample: {ready: [db1], failed: {db2: "its module (pid 4242) ended before it said ready or failed (killed, or it crashed)"}, pending: {}}
released:
  description: With O(ready_states), why the group is released instead of armed (a host not ready); no RV(instant) then.
  returned: when a host was not ready
  type: str
lead_ms:
  description: The lead to give the hosts (O(state=armed)).
  returned: when armed
  type: float
hold_ms:
  description: The hold to give the hosts, sized from the clock errors (O(state=armed)).
  returned: when armed
  type: float
verdict:
  description: V(consistent), V(inconsistent) or V(failed) (O(state=sealed)).
  returned: when sealed
  type: str
margin_ms:
  description: How far the hosts' frozen intervals overlap beyond the clock error bounds.
  returned: when sealed
  type: float
hosts:
  description: Per host - C(set_id), C(frozen) (on the controller's time line), C(offset_ms), C(error_ms), or C(failed).
  returned: when sealed
  type: dict
sets:
  description: The sets of the group found in the catalog.
  returned: when sealed
  type: list
  elements: str
problems:
  description: Why the group is not consistent.
  returned: when sealed
  type: list
  elements: str
rollback:
  description: What a failed group's rollback deleted (C(deleted)) or left tagged partial (C(left_partial)).
  returned: when the group failed
  type: dict
"""

import time

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _group as group
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

ARGUMENT_SPEC = dict(
    state=dict(type="str", choices=["opened", "armed", "sealed"], required=True),
    group_id=dict(type="str"),
    arm_s=dict(type="float", default=20.0),
    lead_ms=dict(type="float", default=100.0),
    hold_ms=dict(type="float", default=50.0),
    clock_errors=dict(type="list", elements="float", default=[]),
    hosts=dict(type="list", elements="str", default=[]),
    ready_states=dict(type="list", elements="str"),
    set_results=dict(type="list", elements="dict", default=[]),
    clocks_before=dict(type="list", elements="dict", default=[]),
    clocks_after=dict(type="list", elements="dict", default=[]),
)


def main():
    module = AnsibleAWSModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                              required_if=[("state", "sealed", ["group_id"])])
    p = module.params
    try:
        if p["state"] == "opened":
            module.exit_json(changed=False, group_id=p["group_id"] or group.new_group_id())
        if p["state"] == "armed":
            summary = {}
            if p["ready_states"] is not None:
                summary = group.readiness(p["hosts"], p["ready_states"])
                why = group.released(summary)
                if why:
                    module.exit_json(changed=False, group_id=p["group_id"], released=why, msg="released: %s" % why, members=summary)
            clocks = [c for c in p["clocks_before"] if c and "error_s" in c]
            errors = [c["error_s"] for c in clocks] if clocks else p["clock_errors"]
            measured = [float(c["measured_at"]) for c in clocks if c.get("measured_at")]
            since = min(measured) if measured else None
            armed = group.arm(errors, time.time(), p["arm_s"], p["lead_ms"], p["hold_ms"], p["group_id"], since=since)
            if summary:
                armed.update(members=summary, msg="every host ready (%s): instant %.3f" % (", ".join(summary["ready"]), armed["instant"]))
            module.exit_json(changed=False, group_id=armed.pop("id"), **armed)
        members = group.host_parts(p["hosts"], p["set_results"], p["clocks_before"], p["clocks_after"])
        result = group.seal(module.client("ec2", retry_decorator=ebs.RETRY), p["group_id"], members, module.check_mode)
    except StillpointError as e:
        module.fail_json(**e.fail_kwargs())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
