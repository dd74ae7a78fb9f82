#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# The module is win_vss_snapshot_set.ps1 (the Windows half) with its action plugin (the controller half);
# this file holds its documentation only.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: win_vss_snapshot_set
short_description: Application-consistent EBS snapshot set of a Windows (dynamic-disk) array through AWS VSS
version_added: 0.2.0
description:
  - Takes a VSS application-consistent EBS snapshot set of the volumes named in O(members) (drive letters or mount
    folders; spanned, striped or mirrored dynamic volumes included) on a Windows EC2 instance reached over WinRM or
    PSRP, and records it as a set of the collection's backup catalog (level C(application)), so that
    M(stillpoint.snapshots.backup_set_info) and M(stillpoint.snapshots.backup_set_prune) treat it as any other set.
  - 'Preflight, on the host (the Windows module only reads): AwsVssComponents installed and at least
    O(min_agent_version); every VSS writer C([1] Stable) with C(No error) (C(vssadmin list writers)); no snapshot set
    in progress (writers waiting, a running C(ec2-vss-agent.exe)); every disk under the named volumes online, the
    dynamic pack healthy, each disk mapped to its EBS volume id by its NVMe serial number (C(vol0123...) is
    C(vol-0123...)), or on a Xen instance by its PV target id (see the notes); every volume on those disks named. Any
    failure refuses the run before anything is created.'
  - 'The snapshot: the controller runs the Systems Manager document C(AWSEC2-CreateVssSnapshot) on the instance (the
    AWS VSS agent makes one CreateSnapshots call for the instance inside VSS flush-and-hold, at most 10 seconds, and
    tags the snapshots C(AppConsistent) and C(AwsVssConfig)). C(CopyOnly) is on by default so that SQL Server''s
    differential backup chain survives. The agent''s own command line is not documented by AWS, so it is not run
    directly.'
  - 'The proof, through the EC2 API: every member has exactly one snapshot, all of one VSS snapshot set
    (C(AwsVssConfig)), each with C(AppConsistent=true), and the command succeeded. Otherwise every snapshot of the run
    is deleted (all or nothing) and the task fails with the writer states. AWS snapshots every attached volume
    (the boot volume excluded unless named); the snapshots of volumes that are not members are deleted.'
  - Check mode runs the preflight and the EC2 look-ups only.
  - The host needs SSM Agent and an instance profile with the AWS VSS permissions; see docs/windows-vss.md, which
    also lists every Windows command line and whether it was verified.
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  members:
    description:
      - The array's volumes, by drive letter (C(E:)) or mount folder (C(C:\mnt\data)). Every volume on the disks
        under them must be named. The EBS volumes are found from the disks, never by disk order.
    type: list
    elements: str
    required: true
  name:
    description: The set's name in the catalog (C(stillpoint:set-name)).
    type: str
  set_id:
    description:
      - Re-run for a known set id returns that set (and waits for it with O(wait)) instead of taking a new one.
    type: str
  writers:
    description:
      - Include the application VSS writers (level C(application)). V(false) passes C(NoWriters=True); the set is
        then recorded C(filesystem), and only when the command succeeded.
    type: bool
    default: true
  copy_only:
    description: VSS copy-only backup (C(CopyOnly=True)); keeps SQL Server's differential chain intact.
    type: bool
    default: true
  description:
    description: The snapshots' description.
    type: str
  min_agent_version:
    description:
      - Refuse an older AwsVssComponents. 2.3.3 is the version that makes sure the EC2 VSS provider is used; 2.3.1
        added the C(AwsVssConfig) tag the proof reads; 2.1.0 the single CreateSnapshots call.
    type: str
    default: 2.3.3
  command_timeout:
    description: Seconds for the SSM command (its C(executionTimeout)).
    type: int
    default: 600
  wait:
    description: Wait until every snapshot is completed, then mark the set complete.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait with O(wait).
    type: int
    default: 14400
  poll_interval:
    description: Seconds between completion checks.
    type: float
    default: 15.0
  report:
    description:
      - What the Windows half returns when run on its own. The action plugin sets it; leave the default.
    type: str
    choices: [preflight, writers]
    default: preflight
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
  - stillpoint.snapshots.attributes
  - stillpoint.snapshots.attributes.actiongroup_aws
attributes:
  check_mode:
    support: full
    details: Runs the preflight on the host and the EC2 look-ups; sends no SSM command and creates nothing.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details: Every run without O(set_id) takes a new set; with a known O(set_id) it returns that set unchanged.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: windows
notes:
  - Windows cannot run in this project's test suite. The controller half is tested against a strict EC2 endpoint
    with a FAKE AWS VSS agent; the PowerShell is only parsed. docs/windows-vss.md says what was never executed.
  - "Xen instances (AWS PV or Citrix PV drivers, e.g. t2, m4, c4): a disk without a C(vol...) serial whose Get-Disk
    Path holds C(PROD_PVDISK) is mapped by its Win32_DiskDrive location as AWS documents it (bus 0, LUN 0, target 0
    is C(/dev/sda1), targets 1 to 25 are C(xvdb) to C(xvdz)) to the block device mapping of that device name, with
    or without C(/dev/), of the instance the host's own instance metadata (IMDSv2) names. Refused, never guessed:
    no instance metadata, a device name in no mapping or in two, two disks on one volume, an instance store disk
    (targets 78 to 89), any other location, or an attached mapping at a PV location where the host shows no disk.
    A volume attached under another name (C(/dev/sdf)) is refused. This mapping never ran on Windows."
  - The catalog's array record says per volume how each disk was mapped (C(mapped_by), C(nvme-serial) or
    C(pv-target)). The restore (M(stillpoint.snapshots.win_array_host)) does not handle Xen disks yet and refuses them.
  - "IAM, the task's credentials (shipped as iam/win_vss_snapshot_set.json): ssm:SendCommand on the document
    AWSEC2-CreateVssSnapshot and the instance, ssm:GetCommandInvocation, ec2:DescribeInstances, ec2:DescribeVolumes,
    ec2:DescribeSnapshots, and ec2:CreateTags and ec2:DeleteSnapshot on snapshots carrying stillpoint:creator."
seealso:
  - name: Application consistent Windows VSS based Amazon EBS snapshots
    description: AWS's VSS solution, its SSM documents, parameters, tags, IAM policy and version history.
    link: https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/application-consistent-snapshots.html
"""

EXAMPLES = r"""
- name: Application-consistent set of the dynamic volumes E and F (SQL Server data and log)
  stillpoint.snapshots.win_vss_snapshot_set:
    members: ['E:', 'F:']
    name: sql01
    region: eu-west-1

- name: Preflight only
  stillpoint.snapshots.win_vss_snapshot_set:
    members: ['E:', 'C:\mnt\logs']
  check_mode: true
"""

RETURN = r"""
set_id:
  description: The catalog set id (C(stillpoint:set-id)); null in check mode.
  returned: always
  type: str
state:
  description: The catalog state, C(complete) after O(wait), else C(pending).
  returned: success
  type: str
level:
  description: C(application), or C(filesystem) with O(writers=false); never more than the proof showed.
  returned: success
  type: str
instance_id:
  description: The instance the members are attached to.
  returned: always
  type: str
members:
  description: The members (C(index), C(volume_id), C(device), and C(snapshot_id) after the run).
  returned: always
  type: list
  elements: dict
snapshot_ids:
  description: The members' snapshots.
  returned: success
  type: list
  elements: str
vss_set_id:
  description: The VSS snapshot-set id read from C(AwsVssConfig), when it carries one.
  returned: success
  type: str
array:
  description:
    - The named volumes and their EBS volume ids (recorded in C(stillpoint:array)), C(kind=windows-volumes).
    - Each of C(volumes) is C(path), C(volume_ids), C(mapped_by) (per volume id, C(nvme-serial) or C(pv-target)) and
      C(identity), what the volume looked like in diskpart's volume table (C(label), C(fs), C(size)); a restore tells
      apart volumes on the same disks by it.
  returned: always
  type: dict
  sample: {"kind": "windows-volumes", "volumes": [{"path": "E:\\", "volume_ids": ["vol-0bbbbbbbbbbbbbbb1"],
           "mapped_by": ["nvme-serial"], "identity": {"label": "SQLDATA", "fs": "NTFS", "size": "19 GB"}}]}
writers:
  description: The VSS writers (C(name), C(state), C(last_error), ...) as the preflight read them; on failure, as
    read after the failed run.
  returned: always
  type: list
  elements: dict
agent_version:
  description: The AwsVssComponents version found on the host.
  returned: always
  type: str
command:
  description: The SSM command (C(command_id), C(status), C(stdout), C(stderr)).
  returned: when the command was sent
  type: dict
rollback:
  description: On failure, what was deleted (C(deleted)) and what could not be (C(left_partial)).
  returned: failure after the command
  type: dict
other_snapshots:
  description: Snapshots of attached volumes outside the array that the agent made too, and their deletion.
  returned: success
  type: dict
"""
