# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of stillpoint.snapshots.ebs_snapshot_set.

host mode: runs the module on the host (it freezes, calls EC2 and thaws in one process), then
polls completion in short module runs so that progress is shown on the controller.

controller mode: the host has no AWS access. Runs ``ebs_mount_info`` on the host (outside the
window), ``fsfreeze state=frozen`` (the guardian holds the freeze and the module returns), makes
the one CreateSnapshots call here, and thaws with a single raw command that talks to the guardian,
so no second module transfer sits inside the window. Waiting happens after the thaw, here.
With ``application`` the guardian also holds the application's lock: it takes it in the freeze request
right before it freezes and releases it right after the thaw, whose reply says whether the lock was
confirmed held (docs/applications.md, "Controller mode").
"""

from __future__ import annotations

import socket

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.amazon.aws.plugins.module_utils.modules import aws_argument_spec

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _snapshot_set as snapshot_set
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._setplan import ARGUMENT_SPEC
from ansible_collections.stillpoint.snapshots.plugins.module_utils._setplan import build_plan
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils import _pacer
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._action import run_on_controller
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._aws import TaskAWS
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._remote_host import RemoteHooks
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._remote_host import RemoteQuiescer
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._remote_host import application_args

display = Display()

MODULE = "stillpoint.snapshots.ebs_snapshot_set"
PROGRESS_STEP = 60  # seconds per waiting module run in host mode


def progress_line(set_id, sample):
    parts = ["%s %s" % (sid, sample["progress"].get(sid) or sample["states"][sid]) for sid in sorted(sample["states"])]
    return "set %s after %ss: %s" % (set_id, sample["elapsed_s"], ", ".join(parts))


class ActionModule(ActionBase):

    _supports_async = True

    def run(self, tmp=None, task_vars=None):
        self._supports_check_mode = True
        result = super().run(tmp, task_vars)
        del tmp
        spec = aws_argument_spec()
        spec.update(ARGUMENT_SPEC)
        params = self.validate_argument_spec(argument_spec=spec)[1]
        if params["group"] and params["mode"] == "controller":
            result.update(failed=True, msg="group is host mode only in this version: each host makes its own call "
                          "inside its own frozen interval (a call from the controller would add a task boundary to "
                          "every host's window); use mode=host")
            return result
        try:
            _pacer.share(params["pacer"] or {})  # its options checked before anything, check mode too
        except StillpointError as exc:
            result.update(failed=True, msg=exc.msg)
            return result
        if self._task.async_val:
            return self._host_async(result, params, task_vars)
        mode = self._controller if params["mode"] == "controller" else self._host
        return run_on_controller(self, result, lambda: mode(params, task_vars))

    def _host_async(self, result, params, task_vars):
        """``async``: the module in one run in the background (a group member waiting for its instant,
        docs/groups.md); it waits for completion itself (no progress lines), async_status collects it."""
        if params["mode"] == "controller":
            result.update(failed=True, msg="async is host mode only: in controller mode the EC2 call is made by this "
                          "action plugin on the controller")
            return result
        args = dict(self._task.args)
        args.pop("mode", None)
        wrap_async = self._task.async_val and not self._connection.has_native_async
        result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars,
                                           wrap_async=wrap_async))
        return result

    # ------------------------------------------------------------------ host mode
    def _host(self, params, task_vars):
        args = dict(self._task.args)
        args.pop("mode", None)
        want_wait = params["wait"]
        if self._task.check_mode:
            return self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
        # no freeze without a token: the host's set starts when the run's pacer has its tokens (docs/throttling.md);
        # a group's members call at one instant, unpaced
        pacer, waited = (None, None) if params["group"] else _pacer.admit(params)
        if want_wait:  # the set in one run, then its progress in short waiting runs
            args.setdefault("set_id", catalog.new_set_id())
            args["wait"] = False
        first = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
        if pacer is not None:
            _pacer.learn(pacer, first)
            first["pacer"] = _pacer.admitted(pacer, waited)
        if not want_wait or first.get("failed") or first.get("state") == "complete":
            return first
        remaining = params["wait_timeout"]
        last = first
        while remaining > 0:
            step = min(PROGRESS_STEP, remaining)
            waited = self._execute_module(
                module_name=MODULE, task_vars=task_vars,
                module_args=dict(args, wait=True, wait_timeout=step, on_wait_timeout="return"))
            for sample in waited.get("progress", []):
                display.display(progress_line(args["set_id"], sample))
            if waited.get("failed") or waited.get("state") != "pending":
                last = waited
                break
            remaining -= step
        else:
            last = dict(last, failed=params["on_wait_timeout"] == "fail", timed_out=True,
                        msg=snapshot_set.still_pending(args["set_id"], params["wait_timeout"]))
        out = dict(first)
        final_keys = ("state", "progress", "failed", "msg", "timed_out", "rollback", "exception")
        out.update(dict((k, v) for k, v in last.items() if k in final_keys))
        out["changed"] = True
        return out

    # ------------------------------------------------------------------ controller mode
    def _controller(self, params, task_vars):
        app = application_args(params)
        if app:
            if params["pre_hook"] or params["post_hook"]:
                raise StillpointError("application=%s holds the application itself: drop pre_hook/post_hook (or run "
                                      "your own command as application=held_hook)" % params["application"])
            if not params["freeze"]:
                raise StillpointError("application=%s in controller mode needs freeze=true: the lock is held by the "
                                      "freeze guardian on the host" % params["application"])
        aws = TaskAWS(MODULE, params)
        client = aws.client("ec2", retry_decorator=ebs.RETRY)
        if params["set_id"]:
            found = ebs.existing_set(client, params["set_id"], self._task.check_mode, False)
            if found is not None:
                if found["state"] == "pending" and params["wait"]:
                    found.update(ebs.finish(client, found["snapshot_ids"], params["wait_timeout"], params["poll_interval"],
                                            on_progress=lambda s: display.display(progress_line(params["set_id"], s))))
                    found["changed"] = found["state"] == "complete"
                return found
        host = self._execute_module(
            module_name="stillpoint.snapshots.ebs_mount_info", task_vars=task_vars,
            module_args=dict(mountpoints=params["mountpoints"], exclude_mountpoints=params["exclude_mountpoints"],
                             by_id_dir=params["by_id_dir"], check_freeze=params["freeze"],
                             protect_paths=params["protect_paths"]))
        if host.get("failed"):
            raise StillpointError("on the host: %s" % host.get("msg"), host=host)
        plan = build_plan(client, params, host)
        if app and not plan["freeze_plan"]:
            raise StillpointError("application=%s in controller mode needs a freeze (mountpoints): the lock is held by "
                                  "the freeze guardian on the host" % params["application"])
        if plan["freeze_plan"]:
            quiescer = RemoteQuiescer(self, task_vars, [p["mountpoint"] for p in plan["freeze_plan"]],
                                      params["freeze_deadline"], params["protect_paths"], plan["public"]["level"],
                                      application=app)
        else:
            quiescer = ebs.NoQuiesce(plan["public"]["level"])
        if self._task.check_mode:
            if app:
                quiescer.check()  # the host checks the quiescer's options and finds its client; starts nothing
            return snapshot_set.check_mode_result(plan, params, on=host.get("hostname"))
        hooks = quiescer.app if app else None
        if params["pre_hook"] or params["post_hook"]:
            hooks = RemoteHooks(self, params["pre_hook"], params["post_hook"], params["hook_timeout"],
                                params["on_hook_failure"])
        params = dict(params, set_id=params["set_id"] or catalog.new_set_id())
        # no freeze without a token: the forks of this run take CreateSnapshots tokens in turn (docs/throttling.md)
        call_client = _pacer.pace(aws.client("ec2", config=ebs.no_retry_config()), params)
        try:
            result = snapshot_set.take(client, call_client, plan, params, quiescer, hooks,
                                       host.get("hostname") or socket.gethostname(), log=display.vvv, warn=display.warning,
                                       on_progress=lambda s: display.display(progress_line(params["set_id"], s)))
        except StillpointError as e:
            e.details.update(_pacer.report(call_client))
            raise
        return dict(result, **_pacer.report(call_client))
