# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of stillpoint.snapshots.clusterpro_mirror_config: the module on a POSIX target; on a
Windows target the module's library code on the controller (see the clusterpro_info action plugin).

There clpcfctrl's work directory and ``saved_definition`` are files on the target, reached through
ansible.windows.win_tempfile, win_stat, ansible.builtin.slurp, the win_copy action and win_file. The
``same_backup_set`` proof reads EC2 from the controller with amazon.aws's plugin helpers, from the
task's AWS options (region, endpoint_url, profile, access_key, ...) as the module takes them.
"""

from __future__ import annotations

from ansible.module_utils.common.text.converters import to_native
from ansible.utils.display import Display

from ansible_collections.amazon.aws.plugins.module_utils.modules import aws_argument_spec

from ansible_collections.stillpoint.snapshots.plugins.action.clusterpro_info import ClusterproAction
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._aws import TaskAWS
from ansible_collections.stillpoint.snapshots.plugins.modules import clusterpro_mirror_config as module

display = Display()

MODULE = "stillpoint.snapshots.clusterpro_mirror_config"


class ActionModule(ClusterproAction):

    MODULE = MODULE
    ARGUMENT_SPEC = module.ARGUMENT_SPEC

    def windows_spec(self):
        spec = aws_argument_spec()
        spec.update(self.ARGUMENT_SPEC)
        # a path on the Windows server: not expanded on the controller (type=path would expand ~ and $VARS here)
        spec["saved_definition"] = dict(spec["saved_definition"], type="str")
        return spec

    def run_windows(self, params):
        files = self.files()
        try:
            result = module.run_mirror_config(params, self.runner(), TaskAWS(MODULE, params), self._task.check_mode,
                                              self._task.diff, files=files)
        except module.AWS_ERRORS as exc:
            raise StillpointError("%s: %s" % (module.EC2_UNREADABLE % params["same_backup_set"]["set_id"], to_native(exc)),
                                  error=dict(type=type(exc).__name__))
        finally:
            for warning in files.warnings:
                display.warning(warning)
        return result
