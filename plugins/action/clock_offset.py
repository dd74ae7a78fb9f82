# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of stillpoint.snapshots.clock_offset: the host's clock read by its Python interpreter through the
task's connection, between two readings of the controller's clock (plugins/module_utils/_group.py)."""

from __future__ import annotations

import shlex
import time

from ansible.plugins.action import ActionBase

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _group as group
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._action import run_on_controller

READ = "import time; print(repr(time.time()))"


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _supports_check_mode = True

    def _python(self, task_vars):
        if task_vars.get("ansible_python_interpreter"):
            return self._templar.template(task_vars["ansible_python_interpreter"])
        discovered = (task_vars.get("ansible_facts") or {}).get("discovered_interpreter_python")
        return discovered or "/usr/bin/python3"

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = self.validate_argument_spec(argument_spec=dict(samples=dict(type="int", default=5)))[1]
        task_vars = task_vars or {}
        return run_on_controller(self, result, lambda: self._measure(max(1, args["samples"]), self._python(task_vars)))

    def _measure(self, count, python):
        cmd = "%s -c %s" % (shlex.quote(python), shlex.quote(READ))
        samples = []
        for _i in range(count):
            sent = time.time()
            res = self._low_level_execute_command(cmd)
            received = time.time()
            if res.get("rc") != 0:
                raise StillpointError("reading the host's clock with %s failed" % python, rc=res.get("rc"),
                                      stdout=res.get("stdout"), stderr=res.get("stderr"))
            try:
                samples.append((sent, float(res["stdout"].strip().splitlines()[-1]), received))
            except (ValueError, IndexError) as exc:
                raise StillpointError("the host's clock reading is not a number: %r" % res.get("stdout"),
                                      stdout=res.get("stdout")) from exc
        out = group.offset_from_samples(samples)
        return dict(changed=False, **dict((k, round(v, 6) if isinstance(v, float) else v) for k, v in out.items()))
