# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""FAKE, tests only: stands in for ansible.windows.win_powershell on the stand-in Windows host.

It runs no PowerShell. It recognises the windows_ebs_disk role's scripts (win_array_host's two scripts and the
CLUSTERPRO backup's single-disk script, -Action Get) by their exact text and does what each
one does against the FAKE Windows disk subsystem (tests/fakes/vss/disks.py) whose state file is
STILLPOINT_FAKE_WINDOWS_STATE; the repository root (to import it) is STILLPOINT_FAKE_WINDOWS_ROOT. Any other
script fails. The result has win_powershell's shape (output: the objects written, error: the error records).
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: win_powershell
short_description: FAKE - ansible.windows.win_powershell on the FAKE Windows disk subsystem (tests only)
description:
  - Recognises the windows_ebs_disk role's scripts and does what they do against the FAKE model. Tests only.
options:
  script:
    description: The script text.
    type: str
  parameters:
    description: The script's parameters.
    type: dict
author:
  - stillpoint.snapshots maintainers (@stillpoint)
"""

import os
import sys

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec=dict(script=dict(type="str", required=True), parameters=dict(type="dict", default={}),
                                              path=dict(type="str")),
                           supports_check_mode=True)
    root = os.environ["STILLPOINT_FAKE_WINDOWS_ROOT"]
    sys.path.insert(0, root)
    from tests.fakes.vss import disks  # noqa: E402 (the repository is only known at run time)

    files = os.path.join(root, "roles", "windows_ebs_disk", "files")
    name = None
    for candidate in disks.SCRIPTS + (disks.SINGLE_SCRIPT,):
        with open(os.path.join(files, candidate), encoding="utf-8") as handle:
            if handle.read() == module.params["script"]:
                name = candidate
    if name is None:
        module.fail_json(msg="FAKE win_powershell: not one of the windows_ebs_disk scripts", output=[], error=[])
    if name == disks.SINGLE_SCRIPT:  # -Action Get only: it reads, in check mode too (the role's task has check_mode: false)
        out, changed, err = disks.run_single_script(module.params["parameters"], os.environ["STILLPOINT_FAKE_WINDOWS_STATE"])
        if err is not None:
            module.fail_json(msg="FAKE win_powershell: %s threw" % name, output=[],
                             error=[{"exception": {"message": err}, "output": err}])
        module.exit_json(changed=changed, output=out, error=[], host_out="")
    if module.check_mode and name != disks.SCRIPTS[0]:
        module.exit_json(changed=True, output=[], error=[], host_out="FAKE: check mode, %s not run" % name)
    out, err = disks.run_script(name, module.params["parameters"], os.environ["STILLPOINT_FAKE_WINDOWS_STATE"])
    if err is not None:
        module.fail_json(msg="FAKE win_powershell: %s threw" % name, output=[],
                         error=[{"exception": {"message": err}, "output": err}])
    changed = name == disks.SCRIPTS[1] and any(r["op"] != "chkdsk" for r in out["results"])
    module.exit_json(changed=changed, output=[out], error=[], host_out="")


if __name__ == "__main__":
    main()
