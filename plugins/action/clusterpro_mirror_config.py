# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of stillpoint.snapshots.clusterpro_mirror_config: the module on a POSIX target; on a
Windows target the module's run function on the controller (plugin_utils/_clusterpro.py).

There clpcfctrl's work directory and ``saved_definition`` are files on the target, reached through
ansible.windows.win_tempfile, win_stat, ansible.builtin.slurp, the win_copy action and win_file. The
``same_backup_set`` proof reads EC2 from the controller with amazon.aws's plugin helpers, from the
task's AWS options (region, endpoint_url, profile, access_key, ...) as the module takes them.
"""

from __future__ import annotations

from ansible_collections.amazon.aws.plugins.module_utils.modules import aws_argument_spec

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _clusterpro_run as clp_run
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._aws import TaskAWS
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._clusterpro import ClusterproAction


class ActionModule(ClusterproAction):

    MODULE = "stillpoint.snapshots.clusterpro_mirror_config"
    ARGUMENT_SPEC = clp_run.MIRROR_CONFIG_ARGS

    def windows_spec(self):
        spec = aws_argument_spec()
        spec.update(self.ARGUMENT_SPEC)
        # a path on the Windows server: not expanded on the controller (type=path would expand ~ and $VARS here)
        spec["saved_definition"] = dict(spec["saved_definition"], type="str")
        return spec

    def run_windows(self, params):
        files = self.files()
        try:
            return clp_run.run_mirror_config(params, self.runner(), TaskAWS(self.MODULE, params), self._task.check_mode,
                                             self._task.diff, files=files)
        finally:
            self.warn(files.warnings)
