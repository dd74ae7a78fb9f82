#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: clusterpro_control
short_description: Start or stop a CLUSTERPRO group, resource or cluster service, shut a server down, recover a mirror
version_added: 0.1.0
description:
  - One control request per task, run with the CLUSTERPRO commands C(clpgrp), C(clprsc), C(clpcl), C(clpdown) and
    C(clpmdctrl) on a cluster server. The state is read first (C(clpstat), C(clpmdstat)); nothing runs when it
    already is as requested.
  - Refuses what would hurt the mirror, with a message saying why (DOMAIN.md refusals 4 and 5).
    Starting a group holding a mirror disk resource, or starting a mirror disk resource, on a server whose copy is
    not GREEN. Shutting a server down while a mirror is not GREEN on every server (the standby copy would not match;
    override with O(require_clean_mirrors=false)). Forced mirror recovery from a server whose copy is not GREEN while
    another server's is, or whose copy is GRAY or YELLOW.
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  kind:
    description:
      - What to act on.
      - V(group) and V(resource) - start or stop it on O(server).
      - V(cluster_service) - start or stop the cluster service on O(server).
      - V(server) - O(state=shutdown) stops the cluster service and shuts O(server) down (C(clpdown)).
      - V(mirror) - O(state=recovered) runs mirror recovery of mirror disk resource O(name) (C(clpmdctrl -r)), or
        forced recovery from O(server) with O(force=true).
    type: str
    required: true
    choices: [group, resource, cluster_service, server, mirror]
  name:
    description:
      - The group, resource or mirror disk resource name. Required for O(kind=group), O(kind=resource) and
        O(kind=mirror).
    type: str
  server:
    description:
      - The server to act on (C(-h) of the CLUSTERPRO commands); for forced mirror recovery, the server whose copy
        becomes the source.
      - Required except for O(kind=mirror) without O(force).
    type: str
  state:
    description:
      - V(started) or V(stopped) for groups, resources and the cluster service; V(shutdown) for a server;
        V(recovered) for a mirror.
    type: str
    required: true
    choices: [started, stopped, shutdown, recovered]
  stop_dependents:
    description:
      - With O(kind=resource) and O(state=stopped), also stop the resources that depend on it (C(clprsc -t -f)).
        Without it CLUSTERPRO refuses to stop a resource others depend on.
    type: bool
    default: false
  force:
    description:
      - With O(kind=mirror), forced mirror recovery from O(server) (all other copies are overwritten by a full copy).
    type: bool
    default: false
  require_clean_mirrors:
    description:
      - With O(kind=server) and O(state=shutdown), refuse unless every mirror is GREEN on every server.
    type: bool
    default: true
extends_documentation_fragment:
  - stillpoint.snapshots.clusterpro
  - stillpoint.snapshots.attributes
  - stillpoint.snapshots.attributes.actiongroup_clusterpro
attributes:
  check_mode:
    support: full
    details: Reads the state and reports the command it would run (RV(command), RV(actions) with C(planned)), without
      running it.
  diff_mode:
    support: none
    details: The result has RV(before) and RV(after) instead.
  idempotent:
    support: full
    details: A request already satisfied runs nothing and returns C(changed=false).
notes:
  - Run it on a cluster server whose cluster service is started; the commands need root (Linux) or Administrator
    (Windows).
  - On Windows forced mirror recovery (C(clpmdctrl --force)) acts from the server it runs on, so run the task on
    O(server).
  - On a Windows host (PowerShell shell) the module's action plugin runs its code on the controller and each
    CLUSTERPRO command on the host through M(ansible.windows.win_command); needs the ansible.windows collection
    on the controller (docs/clusterpro.md, "Windows cluster servers"). Not tested on a real Windows host.
seealso:
  - module: stillpoint.snapshots.clusterpro_info
  - module: stillpoint.snapshots.clusterpro_mirror_config
"""

EXAMPLES = r"""
# Seed 001 backup, steps 1-3 (run on the active server)
- name: Stop the mirror disk resource (and what depends on it) on the active server
  stillpoint.snapshots.clusterpro_control:
    kind: resource
    name: md1
    server: server1
    state: stopped
    stop_dependents: true
  become: true

- name: Shut the standby down (refused unless every mirror is GREEN/GREEN)
  stillpoint.snapshots.clusterpro_control:
    kind: server
    server: server2
    state: shutdown
  become: true

- name: Start the group again on the active server
  stillpoint.snapshots.clusterpro_control:
    kind: group
    name: failover
    server: server1
    state: started
  become: true

- name: Forced mirror recovery from server1 (refused if server1's copy is not the latest)
  stillpoint.snapshots.clusterpro_control:
    kind: mirror
    name: md1
    server: server1
    state: recovered
    force: true
  become: true
"""

RETURN = r"""
command:
  description: The command line that ran (or would run in check mode), as the command table gives it; V(null) when
    nothing was to be done.
  returned: always
  type: list
  elements: str
  sample: [clpgrp, -s, failover, -h, server1]
before:
  description: The object's state before (group - status and current server; resource - group, status, server;
    mirror - status and colors; server and cluster service - status).
  returned: always
  type: dict
  sample: {status: Offline, current: null}
after:
  description: The same, read again after the command; V(null) in check mode when something would change.
  returned: always
  type: dict
  sample: {status: Online, current: server1}
actions:
  description:
    - The changing command that ran (or, in check mode, would run); empty when nothing was to be done. Reads
      (C(clpstat), C(clpmdstat)) are not listed.
  returned: always
  type: list
  elements: dict
  contains:
    what:
      description: What the step was for.
      type: str
      sample: start group failover on server1
    cmd:
      description: The command, as a list, with the program's path as it ran.
      type: list
      elements: str
      sample: [/usr/sbin/clpgrp, -s, failover, -h, server1]
    rc:
      description: Its exit code; V(null) when it did not run (check mode) or runs no command.
      type: int
      sample: 0
    ms:
      description: Its duration in milliseconds; V(null) when it did not run (check mode) or runs no command.
      type: float
      sample: 812.4
    planned:
      description: V(true) in check mode, where the step was only planned.
      type: bool
      sample: false
  sample: [{what: start group failover on server1, cmd: [/usr/sbin/clpgrp, -s, failover, -h, server1], rc: 0, ms: 812.4,
            planned: false}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _clusterpro_run as clp_run
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CommandRunner, StillpointError


def main():
    module = AnsibleModule(argument_spec=clp_run.CONTROL_ARGS, supports_check_mode=True, **clp_run.CONTROL_RULES)
    try:
        result = clp_run.run_control(module.params, CommandRunner.from_module(module), module.check_mode)
    except StillpointError as exc:
        module.fail_json(**exc.fail_kwargs())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
