#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: clusterpro_info
short_description: Read the state of a CLUSTERPRO / EXPRESSCLUSTER X cluster and its mirror disks
version_added: 0.1.0
description:
  - Runs C(clpstat), C(clpmdstat -l) and C(clpmdstat -m <md>) on a cluster server and returns the servers, groups
    (with the server each is active on), resources, monitors and, per mirror disk resource, the mirror status and
    the mirror color of each server.
  - A mirror is clean (C(clean) in its RV(mirrors) entry) when its color is GREEN on every server; take a standby
    snapshot only then (seed 001). RV(clean) says whether every returned mirror is.
  - Changes nothing.
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  mirrors:
    description:
      - Only these mirror disk resources. Every one C(clpmdstat -l) lists when omitted.
    type: list
    elements: str
  require_clean:
    description:
      - Fail unless every returned mirror is GREEN on every server.
    type: bool
    default: false
extends_documentation_fragment:
  - stillpoint.snapshots.clusterpro
  - stillpoint.snapshots.attributes
  - stillpoint.snapshots.attributes.info_module
  - stillpoint.snapshots.attributes.actiongroup_clusterpro
notes:
  - Run it on a cluster server with the cluster service started; C(clpstat) fails on a server whose service is
    stopped. The CLUSTERPRO commands need Administrator (Windows) or root (Linux) rights.
  - On a Windows host (PowerShell shell) the module's action plugin runs its code on the controller and each
    CLUSTERPRO command on the host through M(ansible.windows.win_command); needs the ansible.windows collection
    on the controller (docs/clusterpro.md, "Windows cluster servers"). Not tested on a real Windows host.
seealso:
  - module: stillpoint.snapshots.clusterpro_control
  - module: stillpoint.snapshots.clusterpro_mirror_config
"""

EXAMPLES = r"""
- name: Read the cluster
  stillpoint.snapshots.clusterpro_info:
  become: true
  register: cluster

- name: Refuse the standby snapshot unless md1 is GREEN on both servers
  stillpoint.snapshots.clusterpro_info:
    mirrors: [md1]
    require_clean: true
  become: true

- name: Where is the failover group active?
  ansible.builtin.debug:
    msg: "{{ cluster.groups.failover.current }}"

- name: A Windows cluster (X 5.1), edition and version set once for every CLUSTERPRO task of the block
  module_defaults:
    group/stillpoint.snapshots.clusterpro:
      edition: windows
      version: "5.1"
  block:
    - name: Read the cluster
      stillpoint.snapshots.clusterpro_info:
      register: cluster
"""

RETURN = r"""
cluster:
  description: The cluster name.
  returned: always
  type: str
  sample: cluster
local_server:
  description: The server the module ran on (marked C(*) by clpstat).
  returned: always
  type: str
  sample: server1
servers:
  description: Per server, its status (C(Online), C(Offline) ...), whether it is the local one and its heartbeats.
  returned: always
  type: dict
  sample: {server1: {status: Online, local: true, heartbeats: {lankhb1: Normal}}}
groups:
  description: Per group, its status, the server it is active on (C(current), V(null) when none) and its resources.
  returned: always
  type: dict
  sample: {failover: {status: Online, current: server1, resources: {fip1: Online, md1: Online}}}
resources:
  description: Per resource, its group, status and server.
  returned: always
  type: dict
  sample: {md1: {group: failover, status: Online, server: server1}}
monitors:
  description: Per monitor resource, its status.
  returned: always
  type: dict
  sample: {mdw1: Normal}
mirrors:
  description: Per mirror disk resource, the C(Mirror Status) line, the server order, each server's color and the
    other rows of C(clpmdstat -m), and C(clean) (V(true) when GREEN on every server).
  returned: always
  type: dict
  sample: {md1: {status: Normal, servers: [server1, server2], colors: {server1: GREEN, server2: GREEN}, clean: true}}
clean:
  description: Whether every returned mirror is GREEN on every server.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _clusterpro_run as clp_run
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CommandRunner, StillpointError


def main():
    module = AnsibleModule(argument_spec=clp_run.INFO_ARGS, supports_check_mode=True)
    try:
        result = clp_run.run_info(module.params, CommandRunner.from_module(module))
    except StillpointError as exc:
        module.fail_json(**exc.fail_kwargs())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
