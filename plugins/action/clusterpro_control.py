# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of stillpoint.snapshots.clusterpro_control: the module on a POSIX target; on a Windows
target the module's library code on the controller, each CLUSTERPRO command through
ansible.windows.win_command (see the clusterpro_info action plugin)."""

from __future__ import annotations

from ansible_collections.stillpoint.snapshots.plugins.action.clusterpro_info import ClusterproAction
from ansible_collections.stillpoint.snapshots.plugins.modules import clusterpro_control


class ActionModule(ClusterproAction):

    MODULE = "stillpoint.snapshots.clusterpro_control"
    ARGUMENT_SPEC = clusterpro_control.ARGUMENT_SPEC
    ARGUMENT_RULES = clusterpro_control.ARGUMENT_RULES

    def run_windows(self, params):
        return clusterpro_control.run_control(params, self.runner(), self._task.check_mode)
