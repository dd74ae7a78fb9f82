# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's side of ebs_snapshot_set's controller mode, driven from an action plugin: the freeze held
on the host by the fsfreeze module's guardian and ended by one raw command, the application's lock held by
that guardian across the freeze (``application``), and the application hooks run on the host as raw
commands."""

from __future__ import annotations

import json
import shlex

from ansible.module_utils.common.text.converters import to_text
from ansible.utils.display import Display

from ansible_collections.stillpoint.snapshots.plugins.module_utils._app_quiesce import CONNECTION_ARGS
from ansible_collections.stillpoint.snapshots.plugins.module_utils._app_quiesce import GuardedQuiescer
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._freeze import RAW_THAW_SCRIPT
from ansible_collections.stillpoint.snapshots.plugins.module_utils._quiesce import Hooks

display = Display()

# ebs_snapshot_set's options that the fsfreeze module takes to hold the application in its guardian
APPLICATION_ARGS = ("application", "application_hook", "lock_wait_timeout", "on_quiesce_failure") + tuple(CONNECTION_ARGS)


def application_args(params):
    """The application's options for fsfreeze (the password among them: fsfreeze declares it no_log), or {}."""
    if not params.get("application"):
        return {}
    return dict((k, params[k]) for k in APPLICATION_ARGS if params.get(k) not in (None, "", []))


def without_invocation(res):
    """A module's result to carry in an error: its ``invocation`` (the arguments, however masked) left out."""
    return dict((k, v) for k, v in res.items() if k != "invocation")


def ended_by_the_run(record):
    """A thaw record as the set's level sees it: a freeze the guardian ended on its own before the run's thaw (its
    deadline; SIGTERM; its keeper gone) may have ended during the call, so it counts as the deadline does."""
    if record.get("thawed_by") not in (None, "client") and not record.get("deadline_thawed"):
        return dict(record, deadline_thawed=True)
    return record


class RemoteQuiescer:
    """The freeze lives on the host under the guardian; the thaw is one raw command.

    With ``application`` (fsfreeze's application options, see :func:`application_args`) the guardian also takes
    the application's lock before it freezes and releases it after the thaw; :attr:`app` (an
    _app_quiesce.GuardedQuiescer) is what _ebs.SnapshotSetRun sees of it, fed with the freeze's and the thaw's
    reports."""

    def __init__(self, action, task_vars, mountpoints, deadline, protect_paths, level, application=None):
        self.action = action
        self.task_vars = task_vars
        self.mountpoints = mountpoints
        self.deadline = deadline
        self.protect_paths = protect_paths
        self.level = level
        self.token = None
        self.python = None
        self.application = dict(application or {})
        self.app = GuardedQuiescer(self.application["application"], self.application.get("on_quiesce_failure", "abort")) \
            if self.application else None

    def check(self):
        """Check mode with an application: fsfreeze plans on the host (mountpoints, the quiescer's options and its
        client found); nothing is started or frozen."""
        res = self.action._execute_module(
            module_name="stillpoint.snapshots.fsfreeze",
            module_args=dict(self.application, mountpoints=self.mountpoints, state="frozen", deadline=self.deadline,
                             protect_paths=self.protect_paths),
            task_vars=self.task_vars)
        if res.get("failed"):
            raise StillpointError("on the host: %s" % res.get("msg"), freeze=without_invocation(res))
        return res

    def freeze(self):
        res = self.action._execute_module(
            module_name="stillpoint.snapshots.fsfreeze",
            module_args=dict(self.application, mountpoints=self.mountpoints, state="frozen", deadline=self.deadline,
                             protect_paths=self.protect_paths),
            task_vars=self.task_vars)
        if self.app is not None:
            self.app.frozen(res)
        if res.get("failed"):
            if self.app is not None and res.get("application"):  # the lock was refused: nothing was frozen
                raise StillpointError("on the host: %s" % res.get("msg"), application=res.get("application"),
                                      actions=res.get("actions") or [])
            raise StillpointError("freeze on the host failed: %s" % res.get("msg"), freeze=without_invocation(res))
        self.token, self.python = res["token"], res["python"]
        return {"mounts": res.get("mounts", []), "token": self.token, "guardian_pid": res.get("guardian_pid"),
                "deadline": res.get("deadline")}

    def thaw(self):
        cmd = "%s -c %s %s thaw" % (shlex.quote(self.python), shlex.quote(RAW_THAW_SCRIPT), shlex.quote(self.token))
        res = self.action._low_level_execute_command(cmd, sudoable=True)
        try:
            reply = json.loads(to_text(res.get("stdout", "")).strip().splitlines()[-1])
        except (ValueError, IndexError):
            reply = None
        if res.get("rc") == 0 and isinstance(reply, dict) and "window_ms" in reply:
            if self.app is not None:
                self.app.thawed(reply)
            return ended_by_the_run(reply)
        # The raw path failed (odd shell, become quirk): thaw through the module, never leave it frozen.
        display.warning("raw thaw failed (rc=%s: %s); thawing through the fsfreeze module"
                        % (res.get("rc"), to_text(res.get("stderr", "")).strip()))
        mod = self.action._execute_module(
            module_name="stillpoint.snapshots.fsfreeze",
            module_args=dict(state="thawed", token=self.token), task_vars=self.task_vars)
        if self.app is not None:
            self.app.thawed(mod)
            if mod.get("guardian") == "gone":
                # the guardian died (its keeper thawed then, its client session and the lock went with it): when,
                # relative to the call, nobody knows, so the set may not claim the freeze either
                mod = dict(mod, deadline_thawed=True, guardian_lost=True,
                           msg="the freeze guardian was gone at the thaw: the freeze may have ended during the call")
        if mod.get("failed"):
            raise StillpointError("thaw on the host failed: %s (the guardian thaws at its deadline)" % mod.get("msg"))
        return ended_by_the_run(without_invocation(mod))


class RemoteHooks(Hooks):
    """Hooks run on the host as raw commands (controller mode)."""

    def __init__(self, action, pre, post, timeout, on_failure):
        def run_argv(argv):
            res = action._low_level_execute_command(" ".join(shlex.quote(a) for a in argv), sudoable=True)
            return res.get("rc"), to_text(res.get("stdout", "")), to_text(res.get("stderr", ""))
        super().__init__(run_argv, pre, post, timeout, on_failure)
