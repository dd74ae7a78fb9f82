# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of stillpoint.snapshots.clusterpro_info, and the base of the CLUSTERPRO action plugins.

On a target with a POSIX shell the module runs there as usual. A Windows target (PowerShell shell)
cannot run Python modules: there the plugin runs the module's own library code on the controller, and
every CLUSTERPRO command line runs on the target through ansible.windows.win_command (argv form);
files on the target go through ansible.windows.win_tempfile, win_stat, ansible.builtin.slurp,
ansible.windows.win_copy and win_file (clusterpro_mirror_config only).

Tests only: the task variable ``_stillpoint_windows_path_test: true`` makes the plugin take the
Windows path on a POSIX target and use ansible.builtin.command, tempfile, stat, copy and file in place
of the Windows modules (slurp stays). It exists so that the Windows path can be exercised without a
Windows host; do not set it in a playbook.
"""

from __future__ import annotations

import ntpath
import posixpath

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible.utils.vars import merge_hash

from ansible_collections.stillpoint.snapshots.plugins.module_utils._clusterpro import ModuleFiles
from ansible_collections.stillpoint.snapshots.plugins.module_utils._clusterpro import ModuleRunner
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.modules import clusterpro_info

TEST_SWITCH = "_stillpoint_windows_path_test"

# what the Windows path runs on the target, and (tests only) the Linux modules in their place
WINDOWS_MODULES = dict(command="ansible.windows.win_command", tempfile="ansible.windows.win_tempfile",
                       stat="ansible.windows.win_stat", slurp="ansible.builtin.slurp", file="ansible.windows.win_file",
                       copy="ansible.windows.win_copy")
TEST_MODULES = dict(command="ansible.builtin.command", tempfile="ansible.builtin.tempfile", stat="ansible.builtin.stat",
                    slurp="ansible.builtin.slurp", file="ansible.builtin.file", copy="ansible.builtin.copy")


class ClusterproAction(ActionBase):
    """Runs the module on a POSIX target; on a Windows target runs ``run_windows`` on the controller."""

    MODULE = None  # the module's FQCN
    ARGUMENT_SPEC = None
    ARGUMENT_RULES = {}  # required_if and the like, as AnsibleModule takes them

    def run(self, tmp=None, task_vars=None):
        self._supports_check_mode = True
        self._supports_async = True
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        self._test_path = boolean(task_vars.get(TEST_SWITCH, False), strict=False)
        if not self._test_path and self._connection._shell.SHELL_FAMILY != "powershell":
            # not Windows: the module runs on the target, as without this plugin
            wrap_async = self._task.async_val and not self._connection.has_native_async
            result = merge_hash(result, self._execute_module(module_name=self.MODULE, module_args=self._task.args,
                                                             task_vars=task_vars, wrap_async=wrap_async))
            if not wrap_async:
                self._remove_tmp_path(self._connection._shell.tmpdir)
            return result
        self._modules = TEST_MODULES if self._test_path else WINDOWS_MODULES
        self._task_vars = task_vars
        try:
            if self._task.async_val:
                raise StillpointError("%s does not support async on a Windows host (its commands run one by one "
                                      "through %s)." % (self.MODULE, self._modules["command"]))
            params = self.validate_params(self.windows_spec())
            result.update(self.run_windows(params))
        except StillpointError as exc:
            result.update(exc.fail_kwargs())
            result["failed"] = True
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    # -- the Windows path --------------------------------------------------------------------------

    def windows_spec(self):
        return self.ARGUMENT_SPEC

    def run_windows(self, params):
        raise NotImplementedError

    def validate_params(self, spec):
        """The task's arguments validated by the module's own spec and rules, as AnsibleModule would."""
        validated = ArgumentSpecValidator(spec, **self.ARGUMENT_RULES).validate(dict(self._task.args))
        if validated.error_messages:
            raise StillpointError("; ".join(validated.error_messages))
        return validated.validated_parameters

    def execute(self, module, args):
        """Run one module on the target. Check mode is off for it: the library runs only reading commands
        (clpstat, clpmdstat, clpcfctrl --pull) and its work directory's upkeep in check mode."""
        saved = self._task.check_mode
        self._task.check_mode = False
        try:
            return self._execute_module(module_name=module, module_args=args, task_vars=self._task_vars)
        finally:
            self._task.check_mode = saved

    def write_file(self, path, text):
        """Write ``text`` to ``path`` on the target with the win_copy action (``content``)."""
        task = self._task.copy()
        task.args = dict(content=text, dest=path)
        task.check_mode = False
        task.diff = False
        action = self._shared_loader_obj.action_loader.get(
            self._modules["copy"], task=task, connection=self._connection, play_context=self._play_context,
            loader=self._loader, templar=self._templar, shared_loader_obj=self._shared_loader_obj)
        return action.run(task_vars=self._task_vars)

    def runner(self):
        return ModuleRunner(self.execute, self._modules["command"])

    def files(self):
        modules = dict((k, self._modules[k]) for k in ("tempfile", "stat", "slurp", "file"))
        return ModuleFiles(self.execute, modules, self.write_file, posixpath.join if self._test_path else ntpath.join)


class ActionModule(ClusterproAction):

    MODULE = "stillpoint.snapshots.clusterpro_info"
    ARGUMENT_SPEC = clusterpro_info.ARGUMENT_SPEC

    def run_windows(self, params):
        return clusterpro_info.run_info(params, self.runner())
