# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of stillpoint.snapshots.win_vss_snapshot_set: the controller half.

Runs the Windows module (win_vss_snapshot_set.ps1: facts only, over WinRM) on the host, decides and
drives the rest from here with amazon.aws's plugin helpers: Systems Manager's AWSEC2-CreateVssSnapshot
on the instance, the proof through the EC2 API, the catalog tags (module_utils/_vss.py).
"""

from __future__ import annotations

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.utils.display import Display

from ansible_collections.amazon.aws.plugins.module_utils.modules import aws_argument_spec

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _vss as vss
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._action import WindowsAction, execute_reading
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._aws import TaskAWS

display = Display()


class ActionModule(WindowsAction):

    MODULE = vss.WINDOWS_MODULE

    def _run(self):
        spec = aws_argument_spec()
        spec.update(vss.ARGUMENT_SPEC)
        validated = ArgumentSpecValidator(spec).validate(dict(self._task.args))
        if validated.error_messages:
            raise StillpointError("; ".join(validated.error_messages))
        params = validated.validated_parameters
        return vss.take(params, self.execute, TaskAWS(vss.WINDOWS_MODULE, params), self._task.check_mode,
                        on_progress=lambda s: display.display("set after %ss: %s" % (s["elapsed_s"], s["states"])))

    def execute(self, module, args):
        """The Windows module only reads: it runs in check mode too."""
        return execute_reading(self, module, args)
