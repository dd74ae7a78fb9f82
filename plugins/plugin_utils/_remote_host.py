# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's side of ebs_snapshot_set's controller mode, driven from an action plugin: the freeze held
on the host by the fsfreeze module's guardian and ended by one raw command, and the application hooks
run on the host as raw commands."""

from __future__ import annotations

import json
import shlex

from ansible.module_utils.common.text.converters import to_text
from ansible.utils.display import Display

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._freeze import RAW_THAW_SCRIPT
from ansible_collections.stillpoint.snapshots.plugins.module_utils._quiesce import Hooks

display = Display()


class RemoteQuiescer:
    """The freeze lives on the host under the guardian; the thaw is one raw command."""

    def __init__(self, action, task_vars, mountpoints, deadline, protect_paths, level):
        self.action = action
        self.task_vars = task_vars
        self.mountpoints = mountpoints
        self.deadline = deadline
        self.protect_paths = protect_paths
        self.level = level
        self.token = None
        self.python = None

    def freeze(self):
        res = self.action._execute_module(
            module_name="stillpoint.snapshots.fsfreeze",
            module_args=dict(mountpoints=self.mountpoints, state="frozen", deadline=self.deadline,
                             protect_paths=self.protect_paths),
            task_vars=self.task_vars)
        if res.get("failed"):
            raise StillpointError("freeze on the host failed: %s" % res.get("msg"), freeze=res)
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
            return reply
        # The raw path failed (odd shell, become quirk): thaw through the module, never leave it frozen.
        display.warning("raw thaw failed (rc=%s: %s); thawing through the fsfreeze module"
                        % (res.get("rc"), to_text(res.get("stderr", "")).strip()))
        mod = self.action._execute_module(
            module_name="stillpoint.snapshots.fsfreeze",
            module_args=dict(state="thawed", token=self.token), task_vars=self.task_vars)
        if mod.get("failed"):
            raise StillpointError("thaw on the host failed: %s (the guardian thaws at its deadline)" % mod.get("msg"))
        return mod


class RemoteHooks(Hooks):
    """Hooks run on the host as raw commands (controller mode)."""

    def __init__(self, action, pre, post, timeout, on_failure):
        def run_argv(argv):
            res = action._low_level_execute_command(" ".join(shlex.quote(a) for a in argv), sudoable=True)
            return res.get("rc"), to_text(res.get("stdout", "")), to_text(res.get("stderr", ""))
        super().__init__(run_argv, pre, post, timeout, on_failure)
