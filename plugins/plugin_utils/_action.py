# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The end every controller-side action run shares: the library's error becomes the task's
failure (its ``msg`` and context), and the task's remote temporary directory is removed in any case; the
base of the Windows modules' controller halves."""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError


def run_on_controller(action, result, work):
    """``result`` updated with ``work()`` (a dict), or with the StillpointError it raised."""
    try:
        result.update(work())
    except StillpointError as exc:
        result.update(exc.fail_kwargs())
        result["failed"] = True
    finally:
        action._remove_tmp_path(action._connection._shell.tmpdir)
    return result


def execute_reading(action, module, args):
    """Run ``module`` with ``args`` on the task's host with check mode off for that run (the task's own check mode
    is restored after): for the modules whose library only reads in check mode, so that a check-mode run can plan
    from what the host really holds. ``action`` keeps its task variables in ``_task_vars``."""
    saved = action._task.check_mode
    action._task.check_mode = False
    try:
        return action._execute_module(module_name=module, module_args=args, task_vars=action._task_vars)
    finally:
        action._task.check_mode = saved


class WindowsAction(ActionBase):
    """The controller half of a Windows module: check mode supported, no async, the task variables kept in
    ``_task_vars``, a host whose connection is not a PowerShell one refused, then ``self._run()`` (a dict, or a
    StillpointError) under :func:`run_on_controller`. ``MODULE`` names the module in the refusal."""

    MODULE = None

    def run(self, tmp=None, task_vars=None):
        self._supports_check_mode = True
        self._supports_async = False
        result = super().run(tmp, task_vars)
        del tmp
        self._task_vars = task_vars or {}
        return run_on_controller(self, result, self._checked_run)

    def _checked_run(self):
        family = self._connection._shell.SHELL_FAMILY
        if family != "powershell":
            raise StillpointError("%s runs on Windows hosts only (WinRM or PSRP, shell family powershell); %s has the "
                                  "%s shell family" % (self.MODULE, self._task_vars.get("inventory_hostname"), family))
        return self._run()

    def _run(self):
        raise NotImplementedError
