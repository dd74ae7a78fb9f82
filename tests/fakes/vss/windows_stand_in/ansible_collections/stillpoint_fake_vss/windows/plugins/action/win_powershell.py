# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""FAKE, tests only: the controller side of the stand-in win_powershell. A task's ``path`` (a role's files/ script,
as the windows_ebs_disk role's tasks name them) is read on the controller and sent as ``script``, which is what
ansible.windows.win_powershell's own action plugin does with a local path; then the FAKE module runs."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):

    def run(self, tmp=None, task_vars=None):
        self._supports_check_mode = True
        result = super(ActionModule, self).run(tmp, task_vars or {})
        args = dict(self._task.args)
        path = args.pop("path", None)
        if path:
            if args.get("script"):
                raise AnsibleActionFail("parameters are mutually exclusive: path, script")
            with open(self._find_needle("files", path), encoding="utf-8") as handle:
                args["script"] = handle.read()
        result.update(self._execute_module(module_name="stillpoint_fake_vss.windows.win_powershell", module_args=args,
                                           task_vars=task_vars or {}))
        return result
