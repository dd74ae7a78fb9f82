# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The CLUSTERPRO modules on a Windows cluster server, from the controller.

On a target with a POSIX shell a CLUSTERPRO module runs there as usual. A Windows target (shell
family ``powershell``) cannot run Python modules: there :class:`ClusterproAction` validates the task
with the module's own argument spec, runs the module's own run function
(``module_utils/_clusterpro_run.py``) on the controller, and every CLUSTERPRO command line on the
target through ansible.windows.win_command (argv form, :class:`ModuleRunner`). Files on the target
(clusterpro_mirror_config only) go through ansible.windows.win_tempfile, win_stat,
ansible.builtin.slurp, the ansible.windows.win_copy action and win_file (:class:`ModuleFiles`);
paths are joined by the target's shell plugin.
"""

from __future__ import annotations

import base64

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible.utils.vars import merge_hash

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._action import execute_reading, run_on_controller

display = Display()

# what the Windows path runs on the target
WINDOWS_MODULES = dict(command="ansible.windows.win_command", tempfile="ansible.windows.win_tempfile",
                       stat="ansible.windows.win_stat", slurp="ansible.builtin.slurp", file="ansible.windows.win_file",
                       copy="ansible.windows.win_copy")


class ModuleRunner:
    """A runner (see CommandRunner) that runs each argv through a command module on the target.

    ``execute(module, args)`` runs one module and returns its result dict (the action plugin's
    ``_execute_module``); ``module`` takes ``argv`` (and ``stdin``) and returns ``rc``, ``stdout``,
    ``stderr``, as ansible.windows.win_command does. Programs are found on the target's PATH
    (``bin(name)`` is ``name``)."""

    def __init__(self, execute, module):
        self._execute = execute
        self.module = module

    @staticmethod
    def bin(name):
        return name

    def __call__(self, argv, check=True, data=None, what=None):
        args = dict(argv=[str(a) for a in argv])
        if data is not None:
            args["stdin"] = data
        res = self._execute(self.module, args)
        if res.get("rc") is None:
            raise StillpointError("%s could not run %s on the server: %s"
                                  % (self.module, " ".join(args["argv"]), res.get("msg") or "no return code"),
                                  cmd=args["argv"], result=res)
        rc, out, err = res["rc"], res.get("stdout") or "", res.get("stderr") or ""
        if check and rc != 0:
            raise StillpointError(
                "%s failed (rc=%s): %s" % (what or argv[0], rc, (err or out).strip()),
                rc=rc, stdout=out, stderr=err, cmd=args["argv"],
            )
        return rc, out, err


class ModuleFiles:
    """File operations on the target through modules (the methods of ``_clusterpro_run.LocalFiles``).

    ``execute(module, args)`` runs one module and returns its result; ``modules`` maps ``tempfile``,
    ``stat``, ``slurp`` and ``file`` to module names (ansible.windows.win_tempfile, win_stat,
    ansible.builtin.slurp, ansible.windows.win_file); ``write(path, text)`` writes a file on the target
    (the win_copy action with ``content``); ``join`` joins the target's paths (its shell plugin's).
    A work directory that cannot be removed is reported in ``warnings``, not raised."""

    def __init__(self, execute, modules, write, join):
        self._execute = execute
        self.modules = modules
        self._write = write
        self.join = join
        self.warnings = []

    def _run(self, key, args, what):
        res = self._execute(self.modules[key], args)
        if res.get("failed"):
            raise StillpointError("%s on the server failed (%s): %s" % (what, self.modules[key], res.get("msg")),
                                  result=res)
        return res

    def make_workdir(self):
        res = self._run("tempfile", dict(state="directory", prefix="stillpoint-clpconf-"), "creating a work directory")
        if not res.get("path"):
            raise StillpointError("%s returned no path for the work directory." % self.modules["tempfile"], result=res)
        return res["path"]

    def remove_workdir(self, path):
        res = self._execute(self.modules["file"], dict(path=path, state="absent"))
        if res.get("failed"):
            self.warnings.append("could not remove the work directory %s on the server: %s" % (path, res.get("msg")))

    def read(self, path):
        stat = self._run("stat", dict(path=path, get_checksum=False), "reading %s" % path).get("stat") or {}
        if not stat.get("exists"):
            return None
        res = self._run("slurp", dict(src=path), "reading %s" % path)
        try:
            return base64.b64decode(res["content"]).decode("utf-8")
        except (KeyError, TypeError, ValueError) as exc:
            raise StillpointError("%s returned no readable UTF-8 content for %s (%s)." % (self.modules["slurp"], path, exc))

    def write(self, path, text):
        res = self._write(path, text)
        if res.get("failed"):
            raise StillpointError("writing %s on the server failed: %s" % (path, res.get("msg")), result=res)


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
        if self._connection._shell.SHELL_FAMILY != "powershell":
            # not Windows: the module runs on the target, as without this plugin
            wrap_async = self._task.async_val and not self._connection.has_native_async
            result = merge_hash(result, self._execute_module(module_name=self.MODULE, module_args=self._task.args,
                                                             task_vars=task_vars, wrap_async=wrap_async))
            if not wrap_async:
                self._remove_tmp_path(self._connection._shell.tmpdir)
            return result
        self._task_vars = task_vars

        def windows():
            if self._task.async_val:
                raise StillpointError("%s does not support async on a Windows host (its commands run one by one "
                                      "through %s)." % (self.MODULE, WINDOWS_MODULES["command"]))
            return self.run_windows(self.validate_params(self.windows_spec()))
        return run_on_controller(self, result, windows)

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
        return execute_reading(self, module, args)

    def write_file(self, path, text):
        """Write ``text`` to ``path`` on the target with the win_copy action (``content``)."""
        task = self._task.copy()
        task.args = dict(content=text, dest=path)
        task.check_mode = False
        task.diff = False
        action = self._shared_loader_obj.action_loader.get(
            WINDOWS_MODULES["copy"], task=task, connection=self._connection, play_context=self._play_context,
            loader=self._loader, templar=self._templar, shared_loader_obj=self._shared_loader_obj)
        return action.run(task_vars=self._task_vars)

    def runner(self):
        return ModuleRunner(self.execute, WINDOWS_MODULES["command"])

    def files(self):
        modules = dict((k, WINDOWS_MODULES[k]) for k in ("tempfile", "stat", "slurp", "file"))
        return ModuleFiles(self.execute, modules, self.write_file, self._connection._shell.join_path)

    @staticmethod
    def warn(warnings):
        for warning in warnings:
            display.warning(warning)
