#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fsfreeze
short_description: Freeze and thaw Linux filesystems under a guardian that always thaws
version_added: 0.1.0
description:
  - Freezes filesystems (C(FIFREEZE)) all at once and thaws them (C(FITHAW)) all at once. Where one of them is
    mounted inside another, the inner one is frozen first and thawed last (waves by nesting depth).
  - The freeze is held by a B(guardian) process, not by this module. The guardian thaws on its own when
    O(deadline) passes, so a lost controller, a killed module or a broken connection never leaves a filesystem
    frozen for longer than O(deadline) seconds.
  - With O(state=frozen) the module returns as soon as everything is frozen, with a RV(token). Thaw with
    O(state=thawed) and that O(token) before O(deadline) passes, or from a raw command that talks to the
    guardian's socket (the controller mode of C(stillpoint.snapshots.ebs_snapshot_set) does that).
  - Refuses to freeze C(/), the filesystem holding Ansible's remote tmp dir, the Python interpreter or the
    working directory, anything in O(protect_paths), a directory that is not a mountpoint, the same filesystem
    twice (bind mounts, btrfs subvolumes) and filesystem types that cannot be frozen.
  - A filesystem already frozen by someone else is never thawed by the guardian. The freeze fails, what this
    run froze is thawed again, and O(force=true) is the way for an administrator to thaw it.
  - With O(application) the guardian also holds the application's backup lock across the freeze (the controller
    mode of C(stillpoint.snapshots.ebs_snapshot_set)). It opens the application's session and takes the lock within
    O(lock_wait_timeout) right before it freezes, and releases the lock right after its thaw; the thaw's record says
    whether the lock was confirmed held. The client session is the guardian's child and dies with it, and a
    B(keeper) process holds the module's end of the connection, so that a killed guardian is thawed by the keeper
    and a killed keeper makes the guardian thaw and release. See C(docs/applications.md).
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  mountpoints:
    description:
      - Mountpoints to freeze. Each must be the mountpoint of a filesystem, not a directory inside it. The order does
        not matter; nested mountpoints are frozen inner first.
      - Required with O(state=frozen), and with O(state=thawed) when O(force=true).
      - With O(state=thawed) and O(token), optional; ignored.
    type: list
    elements: path
  state:
    description:
      - V(frozen) freezes O(mountpoints) under a new guardian and returns its RV(token).
      - V(thawed) thaws the freeze of O(token), or with O(force=true) runs a plain thaw on O(mountpoints).
    type: str
    choices: [frozen, thawed]
    default: frozen
  deadline:
    description:
      - Seconds after the first freeze starts at which the guardian thaws everything on its own.
      - A thaw that comes later finds the filesystems already thawed and reports RV(deadline_thawed=true);
        whatever was taken after the deadline is no longer filesystem-consistent.
      - At most 300.
    type: float
    default: 10.0
  token:
    description:
      - The RV(token) returned by O(state=frozen). With O(state=thawed), thaws that freeze.
    type: str
  force:
    description:
      - With O(state=thawed) and no O(token), run a plain C(FITHAW) on each of O(mountpoints). This is how an
        administrator recovers a filesystem left frozen by another tool or a killed process.
      - A filesystem that is not frozen is left alone (C(changed=false) for it).
      - Only use it when you know that nobody still needs the freeze.
    type: bool
    default: false
  protect_paths:
    description:
      - Extra paths whose filesystems must never be frozen (for example where the application or its logs
        live). Ansible's remote tmp dir, the Python interpreter, the Python library directories and the
        working directory are always protected.
    type: list
    elements: path
    default: []
  application:
    description:
      - With O(state=frozen), the guardian holds this application's backup lock across the freeze. V(mariadb) and
        V(mysql) (C(BACKUP STAGE) or C(FLUSH TABLES WITH READ LOCK)), V(postgresql) (C(CHECKPOINT) and the recorded
        LSNs), V(held_hook) (O(application_hook) runs until the thaw).
      - The options mean what they mean in M(stillpoint.snapshots.ebs_snapshot_set), which passes them in controller
        mode.
    type: str
    choices: [mariadb, mysql, postgresql, held_hook]
  application_hook:
    description: The command (argv list) of O(application=held_hook).
    type: list
    elements: str
    default: []
  lock_wait_timeout:
    description:
      - Seconds the application's lock may take to be granted. After that the session is ended (nothing waits
        behind it) and, with O(on_quiesce_failure=abort), nothing is frozen.
    type: float
    default: 10.0
  on_quiesce_failure:
    description:
      - V(abort) refuses the freeze when the application's lock cannot be taken; V(continue) freezes anyway and
        RV(application) says the lock was not taken.
    type: str
    choices: [abort, continue]
    default: abort
extends_documentation_fragment:
  - stillpoint.snapshots.application
  - stillpoint.snapshots.attributes
attributes:
  check_mode:
    support: full
    details:
      - With O(state=frozen), validates the mountpoints and returns the plan; nothing is frozen.
      - With O(state=thawed) and O(token), asks the guardian for its state; nothing is thawed.
      - With O(force=true), nothing is thawed and C(changed) is always true, because finding out whether a
        filesystem is frozen would need a freeze or a thaw.
  diff_mode:
    support: none
    details: Nothing to compare; the result reports what was frozen or thawed.
  idempotent:
    support: partial
    details:
      - O(state=frozen) starts a new freeze on every run.
      - O(state=thawed) reports C(changed=false) once the freeze has been thawed.
notes:
  - Requires root (C(CAP_SYS_ADMIN)); use C(become=true).
  - Writers on a frozen filesystem block uninterruptibly until the thaw. Keep O(deadline) short.
  - On Linux kernels before 6.6 a freeze and a device-mapper snapshot (C(lvcreate -s)) of the same filesystem
    conflict; let LVM freeze the filesystem itself in that case.
  - The guardian exits once it has thawed and the thaw was reported, or C(grace) (600 s) after it thawed on
    its own. A second O(state=thawed) with the same O(token) after that reports C(changed=false) and a warning.
seealso:
  - module: stillpoint.snapshots.ebs_snapshot_set
  - name: fsfreeze(8)
    description: The util-linux command behind the same ioctls.
    link: https://man7.org/linux/man-pages/man8/fsfreeze.8.html
"""

EXAMPLES = r"""
- name: Freeze the data filesystems (guardian thaws by itself after 10 s)
  stillpoint.snapshots.fsfreeze:
    mountpoints:
      - /srv/data
      - /srv/logs
    deadline: 10
  become: true
  register: frozen

- name: Thaw them again
  stillpoint.snapshots.fsfreeze:
    state: thawed
    token: "{{ frozen.token }}"
  become: true
  register: thawed

- name: The freeze must not have outlived its budget
  ansible.builtin.assert:
    that: not thawed.deadline_thawed
    fail_msg: "the guardian thawed at the deadline: the snapshot is not filesystem-consistent"

- name: Check what would be frozen
  stillpoint.snapshots.fsfreeze:
    mountpoints: [/srv/data]
  check_mode: true

- name: Recover a filesystem some other tool left frozen
  stillpoint.snapshots.fsfreeze:
    state: thawed
    mountpoints: [/srv/data]
    force: true
  become: true
"""

RETURN = r"""
token:
  description: Names the guardian; pass it to O(state=thawed) or to the raw thaw script.
  returned: state=frozen, not in check mode
  type: str
  sample: 5f0c6a0b7e1d4c2fa1b3e8d9c0a7b6e5
guardian_pid:
  description: Process id of the guardian holding the freeze.
  returned: state=frozen, not in check mode; state=thawed with token while the guardian runs
  type: int
  sample: 41234
deadline:
  description: Epoch seconds at which the guardian thaws on its own.
  returned: state=frozen, not in check mode
  type: float
  sample: 1767225600.5
python:
  description: The Python interpreter the module ran with; the controller runs the raw thaw script with it.
  returned: state=frozen
  type: str
  sample: /usr/bin/python3
plan:
  description: The validated freeze plan, in the given order.
  returned: state=frozen
  type: list
  elements: dict
  sample: [{"mountpoint": "/srv/data", "fstype": "xfs", "source": "/dev/md0", "dev": "9:0", "mount_id": 88}]
mounts:
  description:
    - Per filesystem. After a freeze, in freeze order (wave by wave) with C(freeze_ms), C(wave), C(index) (in
      O(mountpoints)) and the instants C(freeze_start) and C(freeze_end). After a thaw, in thaw order with
      C(thaw_ms), C(thaw_start), C(thaw_end) (and C(error) when it was not frozen any more). With O(force=true),
      C(thawed) per mountpoint.
    - The instants are the guardian's C(CLOCK_MONOTONIC) seconds (what C(time.monotonic()) reads on the host).
  returned: always, except in check mode
  type: list
  elements: dict
  sample: [{"mountpoint": "/srv/data", "index": 0, "wave": 0, "freeze_ms": 12.431, "freeze_start": 5123.0012,
            "freeze_end": 5123.0136}]
freeze_span_ms:
  description: From the freeze request to the end of the last C(FIFREEZE), in milliseconds (the filesystems freeze
    at the same time, so this stays close to the time of one).
  returned: state=frozen, not in check mode
  type: float
  sample: 41.7
window_ms:
  description: First freeze start to last thaw end, in milliseconds, measured by the guardian (monotonic clock).
  returned: state=thawed with token
  type: float
  sample: 812.5
deadline_thawed:
  description:
    - True when the deadline, not this thaw, ended the freeze. Anything taken after the deadline is not
      filesystem-consistent, so lower the consistency claim.
  returned: state=thawed with token
  type: bool
  sample: false
thawed_by:
  description: What ended the freeze, C(client), C(deadline), C(disconnect) or C(signal).
  returned: state=thawed with token, when the guardian still answered
  type: str
  sample: client
already_thawed:
  description: The freeze had already ended before this run.
  returned: state=thawed with token
  type: bool
  sample: false
application:
  description:
    - With O(application), what the quiescer did - C(kind), C(lock), C(locked), C(confirmed), C(lock_wait_ms),
      C(held_ms), C(locked_at), C(released_at), C(recorded) (binary log position and GTID, or LSNs), C(problem).
    - After O(state=frozen) the lock (C(locked)); after the thaw with the token its release (C(confirmed) is true only
      when the thaw was asked for and the quiescer confirmed its lock on the same session).
  returned: with O(application), not in check mode; state=thawed with token when the guardian held an application
  type: dict
  sample: {"kind": "mariadb", "lock": "backup_stage", "locked": true, "confirmed": true, "held_ms": 812.4}
application_record:
  description: What the catalog records for the application (C(stillpoint:app)), from the guardian's release.
  returned: state=thawed with token when the guardian held an application
  type: dict
  sample: {"kind": "mariadb", "lock": "backup_stage", "confirmed": true, "binlog_file": "bin.000001"}
actions:
  description: The lock's step (the application's client, its exit status and time), as in ebs_snapshot_set.
  returned: state=frozen with O(application), not in check mode
  type: list
  elements: dict
guardian:
  description: C(running) or C(gone) (the guardian had already thawed and exited, or was killed).
  returned: state=thawed with token
  type: str
  sample: running
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _freeze
from ansible_collections.stillpoint.snapshots.plugins.module_utils._app_quiesce import APPLICATIONS
from ansible_collections.stillpoint.snapshots.plugins.module_utils._app_quiesce import CONNECTION_ARGS
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            mountpoints=dict(type="list", elements="path"),
            state=dict(type="str", choices=["frozen", "thawed"], default="frozen"),
            deadline=dict(type="float", default=_freeze.DEFAULT_DEADLINE),
            token=dict(type="str", no_log=False),
            force=dict(type="bool", default=False),
            protect_paths=dict(type="list", elements="path", default=[]),
            application=dict(type="str", choices=list(APPLICATIONS)),
            application_hook=dict(type="list", elements="str", default=[]),
            lock_wait_timeout=dict(type="float", default=10.0),
            on_quiesce_failure=dict(type="str", choices=["abort", "continue"], default="abort"),
            **CONNECTION_ARGS
        ),
        required_if=[("state", "frozen", ["mountpoints"])],
        supports_check_mode=True,
    )
    try:
        module.exit_json(**_freeze.fsfreeze(module.params, module.check_mode, _freeze.module_protect_paths(module),
                                            warn=module.warn))
    except StillpointError as exc:
        module.fail_json(**exc.fail_kwargs())


if __name__ == "__main__":
    main()
