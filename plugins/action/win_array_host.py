# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of stillpoint.snapshots.win_array_host: the Windows host steps of a restore.

Sends the windows_ebs_disk role's scripts (Get-EbsArrayDisks.ps1 reads, Set-EbsArrayDisks.ps1 runs planned
steps) through ansible.windows.win_powershell and decides on the controller (module_utils/_win_restore.py). On a
Xen host (PV disks, no volume id in the serial) it reads the instance's block device mappings here
(DescribeInstances, amazon.aws's plugin helpers) at every gather and again before steps are sent.
"""

from __future__ import annotations

import os

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.amazon.aws.plugins.module_utils.modules import aws_argument_spec

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _win_restore as win
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._action import WindowsAction, execute_reading
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._aws import TaskAWS

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "roles", "windows_ebs_disk", "files")
POWERSHELL = "ansible.windows.win_powershell"


def script_text(name):
    with open(os.path.join(SCRIPTS, name), encoding="utf-8") as handle:
        return handle.read()


def script_output(name, result):
    """The one object the script writes, or a StillpointError with what win_powershell reported."""
    errors = [((e.get("exception") or {}).get("message") or e.get("output") or str(e)) if isinstance(e, dict) else str(e)
              for e in result.get("error") or []]
    if result.get("failed") or errors:
        raise StillpointError("%s on the Windows host failed: %s" % (name, "; ".join(
            [result.get("msg")] * bool(result.get("msg")) + errors) or "no message"), script=name,
            host_out=result.get("host_out"))
    out = result.get("output") or []
    if len(out) != 1 or not isinstance(out[0], dict):
        raise StillpointError("%s returned %d objects, expected one" % (name, len(out)), script=name)
    return out[0]


class ActionModule(WindowsAction):

    MODULE = "stillpoint.snapshots.win_array_host"

    def _run(self):
        spec = aws_argument_spec()
        spec.update(win.ARGUMENT_SPEC)
        validated = ArgumentSpecValidator(spec).validate(dict(self._task.args))
        if validated.error_messages:
            raise StillpointError("; ".join(validated.error_messages))
        params = validated.validated_parameters
        check = self._task.check_mode
        ec2 = []

        def describe(instance_id):
            """DescribeInstances, fresh at each call (only a Xen host asks; the client is made on first use)."""
            if not ec2:
                ec2.append(TaskAWS(self.MODULE, params).client("ec2", retry_decorator=ebs.RETRY))
            return ebs.describe_instance(ec2[0], instance_id)

        if params["state"] == "info":
            return win.info(params, self.execute, describe)
        if params["state"] == "down":
            return win.down(params, self.execute, check, describe)
        return win.up(params, self.execute, check, describe=describe)

    def execute(self, name, parameters):
        args = {"script": script_text(name), "parameters": parameters}
        if name == win.GATHER:
            result = execute_reading(self, POWERSHELL, args)  # reads only: in check mode too
        else:
            result = self._execute_module(module_name=POWERSHELL, module_args=args, task_vars=self._task_vars)
        return script_output(name, result)
