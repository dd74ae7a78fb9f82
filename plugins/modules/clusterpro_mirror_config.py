#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: clusterpro_mirror_config
short_description: Remove a CLUSTERPRO mirror disk resource and add it back without initial mirror construction
version_added: 0.1.0
description:
  - The configuration steps of the seed 001 restore. The cluster configuration is pulled with C(clpcfctrl --pull),
    edited, and pushed back with C(clpcfctrl --push).
  - O(state=absent) removes mirror disk resource O(name) from the configuration, with its place in its group, the
    dependencies other resources had on it and its mirror monitors (C(mdw), C(mdnw)), and saves all of that to
    O(saved_definition) so it can be put back unchanged.
  - O(state=present) puts it back from O(saved_definition), every setting as it was, except initial mirror
    construction (C(parameters/fullcopy)), which is set from O(initial_mirror_construction). If the resource is
    already configured, only that setting is changed.
  - Turning initial mirror construction off is refused unless O(same_backup_set) proves that both servers' mirror
    volumes were created from one snapshot of one backup set (DOMAIN.md refusal 3). Otherwise the two copies may
    differ and the mirror would show GREEN over different data.
  - Adding or removing a mirror disk resource needs the cluster stopped; refused while the cluster service runs
    unless O(stop_cluster=true), which stops it on every server first (C(clpcl -t -a)).
  - The group start attribute follows seed 001. In the push that removes the resource, the groups that hold it or
    depend on it (the groups of resources that depend on it, and groups whose startup waits for one of those) are
    set to manual startup, so that nothing starts by itself without the mirror disk. Their previous attribute is
    saved in O(saved_definition). The push that adds the resource back restores it (automatic startup, unless a
    group was manual before). In clp.conf this is C(group/start), C(0) manual and C(1) (or no element) automatic.
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  name:
    description: The mirror disk resource.
    type: str
    required: true
  state:
    description:
      - V(absent) - remove it and save its definition; V(present) - add it back from the saved definition, or
        set initial mirror construction on the configured resource.
    type: str
    choices: [absent, present]
    default: present
  saved_definition:
    description:
      - A file on the server where O(state=absent) saves the removed resource's definition (JSON) and from which
        O(state=present) restores it. Keep it until the resource is back.
    type: path
    required: true
  initial_mirror_construction:
    description:
      - Whether the mirror is built by a full copy from the active server when the resource is added. Turning it
        off (V(false)) needs O(same_backup_set).
    type: bool
    default: true
  same_backup_set:
    description:
      - The volumes whose common origin must be proved before initial mirror construction is turned off. Required
        when O(initial_mirror_construction=false).
      - The proof is read from EC2, never taken from the operator. C(DescribeVolumes) gives the snapshot each volume
        was created from. The backup catalog (snapshot tags) must show that this snapshot is a member of the
        complete backup set O(same_backup_set.set_id), and every volume must come from that same snapshot.
      - Needs AWS access (boto3 and credentials) on the cluster server that runs the task (on the controller when
        the server is a Windows host).
    type: dict
    suboptions:
      set_id:
        description: The backup set id (V(bs-YYYYMMDDTHHMMSSZ-xxxxxx)) both volumes were restored from.
        type: str
        required: true
      volumes:
        description: One entry per server of the cluster.
        type: list
        elements: dict
        required: true
        suboptions:
          server:
            description: The cluster server the volume belongs to.
            type: str
            required: true
          volume_id:
            description: The EBS volume holding the server's mirror partitions.
            type: str
            required: true
          instance_id:
            description:
              - The server's EC2 instance. When given, the volume must be attached to it (C(DescribeVolumes)),
                so that the proof is about the disk the server really uses.
            type: str
  stop_cluster:
    description:
      - Stop the cluster service on every server (C(clpcl -t -a)) when it runs and a push needs it stopped.
    type: bool
    default: false
extends_documentation_fragment:
  - stillpoint.snapshots.clusterpro
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
  - stillpoint.snapshots.attributes
  - stillpoint.snapshots.attributes.actiongroup_clusterpro
  - stillpoint.snapshots.attributes.actiongroup_aws
attributes:
  check_mode:
    support: full
    details: Pulls and edits the configuration and reports the result, with the push in RV(actions) as C(planned),
      without saving or pushing anything.
  diff_mode:
    support: full
    details: C(diff) holds the resource and the start attribute of the groups it changes, before and after.
  idempotent:
    support: full
    details: A resource already absent, or present with the requested setting, is left alone (C(changed=false)).
  action_group:
    # member of both groups: the two fragments' blocks do not merge, so the module says it whole
    description:
      - Set O(edition) and O(version) once with C(module_defaults) and the group C(group/stillpoint.snapshots.clusterpro),
        and the AWS options of the O(same_backup_set) proof with the group C(group/stillpoint.snapshots.aws) (or
        C(group/amazon.aws.aws), which it extends).
    membership:
      - stillpoint.snapshots.aws
      - stillpoint.snapshots.clusterpro
notes:
  - Run it on one cluster server (the configuration is distributed to all by C(clpcfctrl --push)); needs root
    (Linux) or Administrator (Windows).
  - AWS access (boto3, credentials; C(ec2:DescribeVolumes) and C(ec2:DescribeSnapshots)) is needed only for
    O(same_backup_set). Every EC2 failure of the proof (the service's answer, or none at all - no network, a bad
    O(endpoint_url), no credentials) is a refusal that names the calls and what to check; nothing changes.
  - The group start attribute is set to manual only together with the removal, and put back only together with
    the addition from O(saved_definition). A resource removed with this module and never added back leaves its
    groups on manual startup.
  - The clp.conf element of the group start attribute is verified for X 4.x; for X 5.x the same element is assumed.
  - On a Windows host (PowerShell shell) the module's action plugin runs its code on the controller. The
    CLUSTERPRO commands run on the host through M(ansible.windows.win_command); clp.conf's work directory and
    O(saved_definition) are reached with M(ansible.windows.win_tempfile), M(ansible.windows.win_stat),
    M(ansible.builtin.slurp), M(ansible.windows.win_copy) and M(ansible.windows.win_file). The O(same_backup_set)
    proof then reads EC2 from the controller (boto3 and credentials there). Needs the ansible.windows collection on
    the controller (docs/clusterpro.md, "Windows cluster servers"). Not tested on a real Windows host.
seealso:
  - module: stillpoint.snapshots.clusterpro_info
  - module: stillpoint.snapshots.clusterpro_control
"""

EXAMPLES = r"""
- name: Seed 001 restore step 1 - remove the mirror disk resource (cluster stopped first; dependent groups set to manual start)
  stillpoint.snapshots.clusterpro_mirror_config:
    name: md1
    state: absent
    saved_definition: /var/lib/stillpoint/md1.json
    stop_cluster: true
  become: true

# ... both servers' volumes replaced by volumes created from the standby's snapshot ...

- name: Seed 001 restore step 5 - add it back without initial mirror construction (group start attribute back to automatic)
  stillpoint.snapshots.clusterpro_mirror_config:
    name: md1
    state: present
    saved_definition: /var/lib/stillpoint/md1.json
    initial_mirror_construction: false
    same_backup_set:
      set_id: bs-20261121T101500Z-3f2a1c
      volumes:
        - {server: server1, volume_id: vol-0a1b2c3d4e5f60718, instance_id: i-0123456789abcdef0}
        - {server: server2, volume_id: vol-0f1e2d3c4b5a69788, instance_id: i-0fedcba9876543210}
  become: true
"""

RETURN = r"""
name:
  description: The mirror disk resource.
  returned: always
  type: str
  sample: md1
before:
  description: The resource in the configuration before (group, initial_mirror_construction, data_partition,
    cluster_partition, mount_point); V(null) when absent.
  returned: always
  type: dict
  sample: {group: failover, initial_mirror_construction: true, data_partition: /dev/xvdb2}
after:
  description: The same after the change (or as it would be in check mode); V(null) when absent.
  returned: always
  type: dict
  sample: {group: failover, initial_mirror_construction: false, data_partition: /dev/xvdb2}
group_start:
  description:
    - The start attribute (V(automatic) or V(manual)) of each group this run changes, before and after (or as it
      would be in check mode). Removal sets the groups that hold the resource or depend on it to V(manual); adding
      back restores the saved attribute. A group that no longer exists has V(null) values.
    - Empty when no group start attribute is touched (nothing to do, or only initial mirror construction changed).
  returned: always
  type: dict
  sample: {failover: {before: automatic, after: manual}}
pushed:
  description: Whether a configuration was pushed with clpcfctrl.
  returned: always
  type: bool
stopped_cluster:
  description: Whether the module stopped the cluster service (O(stop_cluster)).
  returned: always
  type: bool
saved_definition:
  description: The path of the saved definition.
  returned: always
  type: str
definition:
  description: The removed resource's saved definition (resource XML, group and position, dependents, monitors,
    and the previous start attribute of the groups set to manual startup, C(group_start), raw clp.conf values).
  returned: when O(state=absent) and the resource was removed
  type: dict
snapshot_id:
  description: The one snapshot both mirror volumes come from, when initial mirror construction was turned off.
  returned: when O(initial_mirror_construction) was turned off
  type: str
  sample: snap-0123456789abcdef0
actions:
  description:
    - The changing steps that ran (or, in check mode, would run), in order - C(clpcl -t -a) when the cluster was
      stopped, saving the definition (no command), C(clpcfctrl --push); empty when nothing was to be done. Reads
      (C(clpstat), C(clpcfctrl --pull)) are not listed.
  returned: always
  type: list
  elements: dict
  contains:
    what:
      description: What the step was for.
      type: str
      sample: "push the configuration: remove mirror disk resource md1"
    cmd:
      description: The command, as a list, with the program's path as it ran; empty for a step without a command.
      type: list
      elements: str
      sample: [/usr/sbin/clpcfctrl, --push, -l, -x, /tmp/stillpoint-clpconf-x1y2]
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
  sample: [{what: "push the configuration: remove mirror disk resource md1",
            cmd: [/usr/sbin/clpcfctrl, --push, -l, -x, /tmp/stillpoint-clpconf-x1y2], rc: 0, ms: 2310.5, planned: false}]
proof:
  description: What EC2 answered for O(same_backup_set) - the set, the one snapshot, its member index, and per volume
    the snapshot it was created from.
  returned: when O(same_backup_set) was checked
  type: dict
  sample: {set_id: bs-20261121T101500Z-3f2a1c, snapshot_id: snap-0123456789abcdef0, member_index: 0,
           volumes: {vol-0a1b2c3d4e5f60718: snap-0123456789abcdef0, vol-0f1e2d3c4b5a69788: snap-0123456789abcdef0}}
"""

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _clusterpro_run as clp_run
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CommandRunner, StillpointError


def main():
    module = AnsibleAWSModule(argument_spec=clp_run.MIRROR_CONFIG_ARGS, supports_check_mode=True, check_boto3=False)
    try:
        result = clp_run.run_mirror_config(module.params, CommandRunner.from_module(module), module, module.check_mode,
                                           module._diff)
    except StillpointError as exc:
        module.fail_json(**exc.fail_kwargs())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
