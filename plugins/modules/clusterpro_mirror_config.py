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
        off needs O(same_backup_set).
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
        description: The backup set id (C(bs-YYYYMMDDTHHMMSSZ-xxxxxx)) both volumes were restored from.
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
  edition:
    description: The CLUSTERPRO edition; selects the command lines.
    type: str
    choices: [linux, windows]
    default: linux
  version:
    description: The CLUSTERPRO X version (C(4), C(5.1) ...); only the major version matters.
    type: str
    default: "4"
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
attributes:
  check_mode:
    support: full
    description: Pulls and edits the configuration and reports the result without saving or pushing anything.
  diff_mode:
    support: full
    description: C(diff) holds the resource and the start attribute of the groups it changes, before and after.
  idempotent:
    support: full
    description: A resource already absent, or present with the requested setting, is left alone (C(changed=false)).
notes:
  - Run it on one cluster server (the configuration is distributed to all by C(clpcfctrl --push)); needs root
    (Linux) or Administrator (Windows).
  - AWS access (boto3, credentials; C(ec2:DescribeVolumes) and C(ec2:DescribeSnapshots)) is needed only for
    O(same_backup_set).
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
    cluster_partition, mount_point); null when absent.
  returned: always
  type: dict
  sample: {group: failover, initial_mirror_construction: true, data_partition: /dev/xvdb2}
after:
  description: The same after the change (or as it would be in check mode); null when absent.
  returned: always
  type: dict
  sample: {group: failover, initial_mirror_construction: false, data_partition: /dev/xvdb2}
group_start:
  description:
    - The start attribute (V(automatic) or V(manual)) of each group this run changes, before and after (or as it
      would be in check mode). Removal sets the groups that hold the resource or depend on it to V(manual); adding
      back restores the saved attribute. A group that no longer exists has null values.
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
  returned: when state=absent and the resource was removed
  type: dict
snapshot_id:
  description: The one snapshot both mirror volumes come from, when initial mirror construction was turned off.
  returned: when initial_mirror_construction was turned off
  type: str
  sample: snap-0123456789abcdef0
proof:
  description: What EC2 answered for O(same_backup_set) - the set, the one snapshot, its member index, and per volume
    the snapshot it was created from.
  returned: when O(same_backup_set) was checked
  type: dict
  sample: {set_id: bs-20261121T101500Z-3f2a1c, snapshot_id: snap-0123456789abcdef0, member_index: 0,
           volumes: {vol-0a1b2c3d4e5f60718: snap-0123456789abcdef0, vol-0f1e2d3c4b5a69788: snap-0123456789abcdef0}}
"""

try:
    import botocore.exceptions
    AWS_ERRORS = (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)
except ImportError:
    AWS_ERRORS = ()  # module.client() reports a missing boto3/botocore when AWS is needed

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _clusterpro as clp
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _restore as restore
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CommandRunner, StillpointError

VOLUME_SPEC = dict(
    server=dict(type="str", required=True),
    volume_id=dict(type="str", required=True),
    instance_id=dict(type="str"),
)


def prove_from_ec2(module, spec):
    """The same_backup_set proof, read from EC2: each volume's origin snapshot (DescribeVolumes), that
    snapshot's membership of the complete set (catalog tags), one snapshot for all, and each volume
    attached to its server's instance when one is named."""
    volumes = spec["volumes"] or []
    ids = [v["volume_id"] for v in volumes]
    client = module.client("ec2", retry_decorator=ebs.RETRY)
    try:
        proof = restore.same_snapshot_proof(client, spec["set_id"], ids)
    except StillpointError as exc:
        exc.msg = ("Refused: initial mirror construction stays on, the mirror volumes are not proved to come from one "
                   "snapshot of backup set %s: %s" % (spec["set_id"], exc.msg))
        raise
    described = dict((v["VolumeId"], v) for v in restore.describe_volumes(client, [{"Name": "volume-id", "Values": ids}]))
    for vol in volumes:
        if not vol.get("instance_id"):
            continue
        attached = [a.get("InstanceId") for a in described[vol["volume_id"]].get("Attachments") or []
                    if a.get("State") in ("attaching", "attached")]
        if vol["instance_id"] not in attached:
            raise StillpointError("Refused: volume %s of server %s is not attached to instance %s (attached to: %s); "
                                  "the proof must be about the disks the servers use." % (
                                      vol["volume_id"], vol["server"], vol["instance_id"], ", ".join(attached) or "none"))
    checked = dict(set_id=spec["set_id"], volumes=[
        dict(server=v["server"], volume_id=v["volume_id"], snapshot_id=proof["volumes"][v["volume_id"]],
             set_id=spec["set_id"]) for v in volumes])
    return checked, proof


ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", choices=["absent", "present"], default="present"),
    saved_definition=dict(type="path", required=True),
    initial_mirror_construction=dict(type="bool", default=True),
    same_backup_set=dict(type="dict", options=dict(
        set_id=dict(type="str", required=True),
        volumes=dict(type="list", elements="dict", required=True, options=VOLUME_SPEC),
    )),
    stop_cluster=dict(type="bool", default=False),
    edition=dict(type="str", choices=["linux", "windows"], default="linux"),
    version=dict(type="str", default="4"),
)

EC2_UNREADABLE = ("Refused: initial mirror construction stays on, EC2 could not be read to prove that the mirror "
                  "volumes come from one snapshot of backup set %s (DescribeVolumes, DescribeSnapshots); nothing "
                  "was changed")


def needs_proof(params):
    return bool(params["same_backup_set"]) and params["state"] == "present" and not params["initial_mirror_construction"]


def run_mirror_config(params, runner, aws, check_mode, diff, files=None):
    """The module's result for ``params`` (validated against ARGUMENT_SPEC and amazon.aws's options).
    ``aws`` has ``client(service, retry_decorator=...)`` (the AnsibleAWSModule, or amazon.aws's
    AWSPluginBase on the controller); ``files`` reaches the server's files (default: local).
    Raises StillpointError; botocore errors of the proof (AWS_ERRORS) are left to the caller,
    whose message is EC2_UNREADABLE. Shared with the action plugin's Windows path."""
    proof = checked = None
    if needs_proof(params):
        checked, proof = prove_from_ec2(aws, params["same_backup_set"])
    result = clp.mirror_config(runner, params["edition"], params["version"], params["name"], params["state"],
                               params["saved_definition"], initial_mirror_construction=params["initial_mirror_construction"],
                               same_backup_set=checked, stop_cluster=params["stop_cluster"], check_mode=check_mode,
                               files=files)
    if proof is not None:
        result["proof"] = proof
    if diff:
        result["diff"] = dict(
            before=dict(mirror=result["before"], group_start=dict((g, v["before"]) for g, v in result["group_start"].items())),
            after=dict(mirror=result["after"], group_start=dict((g, v["after"]) for g, v in result["group_start"].items())))
    return result


def main():
    module = AnsibleAWSModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True, check_boto3=False)
    p = module.params
    try:
        result = run_mirror_config(p, CommandRunner.from_module(module), module, module.check_mode, module._diff)
    except AWS_ERRORS as exc:
        module.fail_json_aws(exc, msg=EC2_UNREADABLE % p["same_backup_set"]["set_id"])
    except StillpointError as exc:
        module.fail_json(**exc.fail_kwargs())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
