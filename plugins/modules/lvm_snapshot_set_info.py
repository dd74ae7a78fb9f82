#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lvm_snapshot_set_info
short_description: List the named LVM snapshot sets on a host
version_added: 0.1.0
description:
  - Lists the snapshot sets that M(stillpoint.snapshots.lvm_snapshot_set) made on the host, found by their LVM tag
    C(stillpoint-set.<set_name>), one record per set with its members, whether it is complete and the consistency it
    reached.
  - Runs C(lvs) and C(vgs) (C(--reportformat json)) and reads the mount table; changes nothing.
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  set_name:
    description:
      - Only the set with this name. The result then has exactly one record, with RV(sets[].exists=false) when there is no
        such set.
      - Every set on the host when omitted.
    type: str
extends_documentation_fragment:
  - stillpoint.snapshots.attributes.info_module
notes:
  - Requires root; use C(become=true). Needs lvm2 2.02.158 or later (C(--reportformat json)).
  - The module never changes anything; C(changed) is always false.
seealso:
  - module: stillpoint.snapshots.lvm_snapshot_set
"""

EXAMPLES = r"""
- name: List every snapshot set on the host
  stillpoint.snapshots.lvm_snapshot_set_info:
  become: true
  register: lvm_sets

- name: Is the pre-upgrade set there and complete?
  stillpoint.snapshots.lvm_snapshot_set_info:
    set_name: pre-upgrade
  become: true
  register: pre_upgrade

- name: Refuse to go on without it
  ansible.builtin.assert:
    that: pre_upgrade.sets[0].complete
    fail_msg: "the pre-upgrade snapshot set is missing or partial"
"""

RETURN = r"""
sets:
  description:
    - The set named O(set_name), or every set on the host (in the order LVM lists their first member).
    - Each record is the C(snapshot_set) that M(stillpoint.snapshots.lvm_snapshot_set) returns.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The set name.
      type: str
      sample: pre-upgrade
    tag:
      description: The LVM tag that marks the set's snapshots.
      type: str
      sample: stillpoint-set.pre-upgrade
    exists:
      description: Whether any snapshot of the set exists.
      type: bool
    complete:
      description: Every member the set was made with is present and none is invalid (overflowed).
      type: bool
    expected_members:
      description: Number of members the set was made with (from its C(stillpoint-count) tag; null if unknown).
      type: int
      sample: 2
    level:
      description: The weakest member level (C(crash) or C(filesystem)); it holds for each LV on its own.
      type: str
      sample: filesystem
    cross_lv_consistent:
      description: Whether the members are of one instant.
      type: bool
    members:
      description: One record per snapshot.
      type: list
      elements: dict
      sample:
        - {vg: vgdata, lv: db, snapshot: db-snap-pre-upgrade, path: /dev/vgdata/db-snap-pre-upgrade, kind: classic,
           size: 2147483648, level: filesystem, active: true, invalid: false, merging: false, mounted_at: [],
           data_percent: 0.01, uuid: "cWJ1nE-...", created: "2026-11-21 16:55:01 +0000"}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CommandRunner, StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._lvm import SnapshotSets


def main():
    module = AnsibleModule(
        argument_spec=dict(
            set_name=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    sets = SnapshotSets(CommandRunner.from_module(module), check_mode=module.check_mode)
    try:
        result = sets.info(module.params["set_name"])
    except StillpointError as exc:
        module.fail_json(**exc.fail_kwargs())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
