#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: role_inputs
short_description: Type and validate a role's public variables as AWX surveys send them, before the role changes anything
version_added: 0.1.0
description:
  - The first task of every role of this collection. Reads the calling role's variables for its entry point
    (C(meta/argument_specs.yml)) from the play, types them and validates them, and returns them under their names
    without the role prefix (C(array_backup_mountpoints) becomes C(mountpoints)). The role's tasks use only those.
  - >-
    Accepted as AWX surveys and C(-e key=value) send them: lists as text (V(/data, /logs), one item per line, or a
    JSON list; items are stripped and empty ones dropped), booleans as text (V(true)/V(false), V(yes)/V(no), V(1)/V(0)),
    numbers as text (V(7), V(2.5)), mappings as a JSON object or V(key=value, key2=value2). V("") and V(null) mean unset:
    the value in the role's C(defaults/main.yml) applies.
  - Anything else fails the task with one line per variable naming it, the value it got and the value expected;
    then ansible-core's own checks of the spec apply to the typed values (choices, required, sub-options).
  - Runs on the controller only; changes nothing and needs no connection to the host.
  - AWX extra variables take precedence over every other variable (also over C(set_fact)), so a role cannot
    replace a survey's text in place; it registers this task's result and reads its inputs from there.
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  role:
    description:
      - The role whose variables are checked; the task must belong to it. Defaults to the task's own role.
    type: str
  entry_point:
    description:
      - The argument spec entry point. Defaults to the tasks file the role was entered by (C(main), or
        C(tasks_from) of M(ansible.builtin.include_role)).
    type: str
extends_documentation_fragment:
  - stillpoint.snapshots.attributes.info_module
notes:
  - ansible-core validates a role's arguments before its first task with the same spec. Typed specs in this
    collection have no C(default) (the defaults live in C(defaults/main.yml)) so that V(null) passes that check.
    V("") for a C(bool), C(int), C(float) or C(dict) variable is still refused there, before any task, with a message
    naming the variable.
seealso:
  - module: ansible.builtin.validate_argument_spec
"""

EXAMPLES = r"""
# roles/<role>/tasks/main.yml, first task
- name: Check the inputs (survey text typed; nothing changes before this passes)
  stillpoint.snapshots.role_inputs:
  register: __array_backup_in

- name: Use them
  ansible.builtin.debug:
    msg: "{{ __array_backup_in.mountpoints | join(' ') }}"
"""

RETURN = r"""
_value:
  description:
    - One key per variable of the entry point's spec, named without the role's prefix, with its typed value
      (the default when unset; V(null) for an unset variable without a default).
  returned: success
  type: raw
  sample: {mountpoints: [/data, /logs], wait: false, keep_last: 0, tags: {}}
"""

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec=dict(role=dict(type="str"), entry_point=dict(type="str")),
                           supports_check_mode=True)
    module.fail_json(msg="stillpoint.snapshots.role_inputs runs on the controller as an action plugin, "
                         "as a task of a role of this collection")


if __name__ == "__main__":
    main()
