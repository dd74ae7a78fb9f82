# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of stillpoint.snapshots.role_inputs: a role's public variables, read from the play, typed and
validated on the controller against the role's own meta/argument_specs.yml and defaults/main.yml
(plugins/module_utils/_inputs.py). Changes nothing, needs no connection to the host."""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _inputs as inputs
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

ARGUMENT_SPEC = {
    "role": {"type": "str"},
    "entry_point": {"type": "str"},
}


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def _role(self, name):
        role = self._task._role
        if role is None:
            raise AnsibleActionFail("stillpoint.snapshots.role_inputs runs as a task of a role (it reads the role's "
                                    "meta/argument_specs.yml and defaults/main.yml)")
        own = role.get_name(include_role_fqcn=False)
        if name and name != own:
            raise AnsibleActionFail("role=%s, but this task belongs to the role %s" % (name, own))
        return own, role._role_path, role._from_files.get("tasks", "main")

    def _load(self, path):
        if not os.path.isfile(path):
            return {}
        return self._loader.load_from_file(path) or {}

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
        name, path, entry = self._role(args.get("role"))
        entry = args.get("entry_point") or entry
        specs = self._load(os.path.join(path, "meta", "argument_specs.yml")).get("argument_specs") or {}
        if entry not in specs:
            raise AnsibleActionFail("the role %s has no argument spec for its entry point %s" % (name, entry))
        options = specs[entry].get("options") or {}
        defaults = self._templar.template(self._load(os.path.join(path, "defaults", "main.yml")))
        values = dict((key, self._templar.template(task_vars[key])) for key in options if key in task_vars)
        try:
            typed = inputs.check(name, options, values, defaults)
        except StillpointError as exc:
            result.update(exc.fail_kwargs())
            result["failed"] = True
            return result
        prefix = name + "_"
        result.update(dict((key[len(prefix):] if key.startswith(prefix) else key, value) for key, value in typed.items()))
        result["changed"] = False
        return result
