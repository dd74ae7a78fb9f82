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
  - Freezes filesystems (C(FIFREEZE)) in the given order and thaws them (C(FITHAW)) in reverse order.
  - The freeze is held by a B(guardian) process, not by this module. The guardian thaws on its own when
    I(deadline) passes, so a lost controller, a killed module or a broken connection never leaves a filesystem
    frozen for longer than I(deadline) seconds.
  - With I(state=frozen) the module returns as soon as everything is frozen, with a I(token). Thaw with
    I(state=thawed) and that I(token) before I(deadline) passes, or from a raw command that talks to the
    guardian's socket (the controller mode of C(stillpoint.snapshots.ebs_snapshot_set) does that).
  - Refuses to freeze C(/), the filesystem holding Ansible's remote tmp dir, the Python interpreter or the
    working directory, anything in I(protect_paths), a directory that is not a mountpoint, the same filesystem
    twice (bind mounts, btrfs subvolumes) and filesystem types that cannot be frozen.
  - A filesystem already frozen by someone else is never thawed by the guardian. The freeze fails, what this
    run froze is thawed again, and I(force=true) is the way for an administrator to thaw it.
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  mountpoints:
    description:
      - Mountpoints to freeze, in order. Each must be the mountpoint of a filesystem, not a directory inside it.
      - Required with I(state=frozen), and with I(state=thawed) when I(force=true).
      - With I(state=thawed) and I(token), optional; ignored.
    type: list
    elements: path
  state:
    description:
      - C(frozen) freezes I(mountpoints) under a new guardian and returns its I(token).
      - C(thawed) thaws the freeze of I(token), or with I(force=true) runs a plain thaw on I(mountpoints).
    type: str
    choices: [frozen, thawed]
    default: frozen
  deadline:
    description:
      - Seconds after the first freeze starts at which the guardian thaws everything on its own.
      - A thaw that comes later finds the filesystems already thawed and reports C(deadline_thawed=true);
        whatever was taken after the deadline is no longer filesystem-consistent.
      - At most 300.
    type: float
    default: 10.0
  token:
    description:
      - The I(token) returned by I(state=frozen). With I(state=thawed), thaws that freeze.
    type: str
  force:
    description:
      - With I(state=thawed) and no I(token), run a plain C(FITHAW) on each of I(mountpoints). This is how an
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
attributes:
  check_mode:
    support: full
    description:
      - With I(state=frozen), validates the mountpoints and returns the plan; nothing is frozen.
      - With I(state=thawed) and I(token), asks the guardian for its state; nothing is thawed.
      - With I(force=true), nothing is thawed and C(changed) is always true, because finding out whether a
        filesystem is frozen would need a freeze or a thaw.
  diff_mode:
    support: none
    description: Nothing to compare; the result reports what was frozen or thawed.
  idempotent:
    support: partial
    description:
      - I(state=frozen) starts a new freeze on every run.
      - I(state=thawed) reports C(changed=false) once the freeze has been thawed.
notes:
  - Requires root (C(CAP_SYS_ADMIN)); use C(become=true).
  - Writers on a frozen filesystem block uninterruptibly until the thaw. Keep I(deadline) short.
  - On Linux kernels before 6.6 a freeze and a device-mapper snapshot (C(lvcreate -s)) of the same filesystem
    conflict; let LVM freeze the filesystem itself in that case.
  - The guardian exits once it has thawed and the thaw was reported, or C(grace) (600 s) after it thawed on
    its own. A second I(state=thawed) with the same I(token) after that reports C(changed=false) and a warning.
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
  description: Names the guardian; pass it to I(state=thawed) or to the raw thaw script.
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
  description: The validated freeze plan, in freeze order.
  returned: state=frozen
  type: list
  elements: dict
  sample: [{"mountpoint": "/srv/data", "fstype": "xfs", "source": "/dev/md0", "dev": "9:0", "mount_id": 88}]
mounts:
  description:
    - Per filesystem. After a freeze, in freeze order with C(freeze_ms). After a thaw, in thaw order with
      C(thaw_ms) (and C(error) when it was not frozen any more). With I(force=true), C(thawed) per mountpoint.
  returned: always, except in check mode
  type: list
  elements: dict
  sample: [{"mountpoint": "/srv/data", "freeze_ms": 12.431}]
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
guardian:
  description: C(running) or C(gone) (the guardian had already thawed and exited, or was killed).
  returned: state=thawed with token
  type: str
  sample: running
"""

import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _freeze
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError


def run_freeze(module, result):
    params = module.params
    plan = _freeze.check_mountpoints(params["mountpoints"], protect_paths=_freeze.module_protect_paths(module))
    result["plan"] = plan
    result["python"] = sys.executable
    if module.check_mode:
        result["changed"] = True
        result["msg"] = "check mode: would freeze %s" % ", ".join(m["mountpoint"] for m in plan)
        return
    guardian = _freeze.Guardian.start(plan, deadline=params["deadline"])
    try:
        frozen = guardian.freeze()
        guardian.detach()
    except BaseException:
        guardian.close()  # thaws whatever is still frozen
        raise
    result.update(
        changed=True,
        token=guardian.token,
        guardian_pid=guardian.pid,
        deadline=guardian.deadline,
        mounts=frozen["mounts"],
        frozen_at=frozen["frozen_at"],
        msg="frozen %s until the thaw or the deadline (%gs)" % (", ".join(m["mountpoint"] for m in plan),
                                                                params["deadline"]),
    )


def run_thaw_token(module, result):
    token = module.params["token"]
    try:
        guardian = _freeze.Guardian.connect(token)
    except StillpointError as exc:
        if not exc.details.get("gone"):
            raise
        result.update(changed=False, guardian="gone", already_thawed=True, mounts=[])
        module.warn("no guardian for token %s any more: it thawed and exited (after a reported thaw, or %gs after "
                    "thawing on its own), or it was killed. Nothing to thaw through it; if a filesystem is still "
                    "frozen, use force=true with its mountpoint." % (token, _freeze.DEFAULT_GRACE))
        return
    with guardian:
        result["guardian_pid"] = guardian.pid
        result["guardian"] = "running"
        if module.check_mode:
            status = guardian.status()
            result["changed"] = status["state"] == "frozen"
            result["state"] = status["state"]
            result["mounts"] = status["mounts"]
            return
        record = guardian.thaw()
    result.update(record)
    result["changed"] = not record.get("already_thawed", False)
    if record.get("deadline_thawed"):
        module.warn("the freeze outlived its budget: the guardian thawed at the deadline (%gs) before this thaw. "
                    "Anything taken after the deadline is only crash-consistent." % record.get("deadline_s", 0))
    for mount in record.get("mounts", []):
        if mount.get("error"):
            module.warn("%s: %s" % (mount["mountpoint"], mount["error"]))


def run_thaw_force(module, result):
    mountpoints = module.params["mountpoints"]
    if module.check_mode:
        result["changed"] = True
        result["msg"] = "check mode: would thaw %s if frozen" % ", ".join(mountpoints)
        return
    results = _freeze.force_thaw(mountpoints)
    result["mounts"] = results
    result["changed"] = any(r["thawed"] for r in results)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            mountpoints=dict(type="list", elements="path"),
            state=dict(type="str", choices=["frozen", "thawed"], default="frozen"),
            deadline=dict(type="float", default=_freeze.DEFAULT_DEADLINE),
            token=dict(type="str", no_log=False),
            force=dict(type="bool", default=False),
            protect_paths=dict(type="list", elements="path", default=[]),
        ),
        required_if=[("state", "frozen", ["mountpoints"])],
        supports_check_mode=True,
    )
    params = module.params
    result = dict(changed=False)
    try:
        if params["state"] == "frozen":
            if params["token"] or params["force"]:
                raise StillpointError("token and force only go with state=thawed")
            run_freeze(module, result)
        elif params["token"]:
            if params["force"]:
                raise StillpointError("give either token (thaw the freeze it names) or force=true with mountpoints "
                                      "(plain thaw), not both")
            run_thaw_token(module, result)
        elif params["force"]:
            if not params["mountpoints"]:
                raise StillpointError("force=true needs mountpoints: the filesystems to thaw")
            run_thaw_force(module, result)
        else:
            raise StillpointError("state=thawed needs token (from state=frozen), or force=true with mountpoints to "
                                  "thaw a freeze made by something else")
    except StillpointError as exc:
        result.update(exc.fail_kwargs())
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
