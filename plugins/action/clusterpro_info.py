# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of stillpoint.snapshots.clusterpro_info: the module on a POSIX target; on a Windows
target the module's run function on the controller, each CLUSTERPRO command through
ansible.windows.win_command (plugin_utils/_clusterpro.py)."""

from __future__ import annotations

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _clusterpro_run as clp_run
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._clusterpro import ClusterproAction


class ActionModule(ClusterproAction):

    MODULE = "stillpoint.snapshots.clusterpro_info"
    ARGUMENT_SPEC = clp_run.INFO_ARGS

    def run_windows(self, params):
        return clp_run.run_info(params, self.runner())
