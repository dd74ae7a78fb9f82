#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# The module is an action plugin (plugins/action/win_array_host.py) that sends the windows_ebs_disk role's
# PowerShell scripts through ansible.windows.win_powershell; this file holds its documentation only.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: win_array_host
short_description: Windows host steps of a restore - disks by EBS volume id offline, online, foreign pack import, drive letters back
version_added: 0.2.0
description:
  - The Windows counterpart of M(stillpoint.snapshots.array_host), used by the role C(stillpoint.snapshots.array_restore)
    for sets taken by M(stillpoint.snapshots.win_vss_snapshot_set) (array kind C(windows-volumes)). Every disk is found
    by the EBS volume id in its NVMe serial number (Get-Disk C(SerialNumber)), or on a Xen instance by its PV location
    (below), never by disk number.
  - The role C(stillpoint.snapshots.clusterpro_mirror_restore) uses it too, for seed 001's restore steps 3 and 4 on a
    Windows cluster server - V(down) with O(refuse_missing), V(up) with O(partition_letters) (the mirror disk's
    letters by partition number), O(devices) and O(verify=false).
  - V(down) takes the disks of O(volume_ids) (the volumes about to be detached) offline with diskpart C(offline disk);
    the boot or system disk is refused. A source volume of O(source_volume_ids) that stays attached (a copy beside its
    source) is refused before anything changes unless O(import_clone).
  - 'V(up) waits up to O(device_timeout) seconds for the disks of O(volume_ids), then in rounds, each planned from what
    the host holds at that moment: a copy whose disk signature (MBR) or disk GUID (GPT) collides with a disk of the host
    is refused, or given a new one (diskpart C(uniqueid disk id=)) with O(import_clone); C(online disk), C(attributes
    disk clear readonly), C(import) of a foreign dynamic pack; then every volume O(layout) records gets back its drive
    letter or mount folder (or the one O(path_map) names), the volume found by the restored disks it lies on (diskpart
    C(detail volume)). A letter held by another volume is refused, never taken away; a letter Windows gave the
    restored volume on arrival is removed. Finally C(chkdsk) without C(/f) (read-only) on every volume with
    O(verify); any exit code but 0 fails the task.'
  - A copy of a dynamic pack is never brought up beside its source pack (refused).
  - V(info) reads only.
  - Check mode reads the host and returns the planned steps of the first round; it runs no C(chkdsk) (the step script
    does not run in check mode), also when nothing is left to do.
  - Nothing was ever run on a Windows host in this project; docs/windows-vss.md lists every command line, its source
    and whether it was verified.
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  state:
    description: V(info) reads, V(down) before the swap, V(up) after it.
    type: str
    required: true
    choices: [info, down, up]
  volume_ids:
    description: V(down) - the EBS volumes about to be detached. V(up) - the restored volumes, in member order.
    type: list
    elements: str
    default: []
  source_volume_ids:
    description: The set's source volume of each member, in member order (the catalog's C(source_volume)).
    type: list
    elements: str
    default: []
  layout:
    description: The set's array record from the catalog (C(kind=windows-volumes), C(volumes) with C(path) and C(volume_ids)).
    type: dict
    default: {}
  import_clone:
    description: Bring a copy up beside its source - a new disk signature or GUID for each disk that collides, and every
      volume at the path O(path_map) gives it (required for every recorded path, never one of the set's own).
    type: bool
    default: false
  path_map:
    description: Recorded path (C(E:\), C(C:\mnt\data\)) -> new drive letter or mount folder.
    type: dict
    default: {}
  verify:
    description: Run C(chkdsk) read-only (without C(/f)) on every restored volume. The CLUSTERPRO restore sets V(false) -
      seed 001 step 4 only brings the disk online with its letters; the mirror is checked by CLUSTERPRO (GREEN/GREEN).
    type: bool
    default: true
  device_timeout:
    description: Seconds to wait for the restored volumes to appear as disks.
    type: float
    default: 120
  expect_instance_id:
    description: Refuse the host unless its instance metadata (IMDSv2) names this instance.
    type: str
  instance_id:
    description:
      - The instance the restore targets (the role passes its target). Used on a Xen host only - the host's instance
        metadata must name this instance, else the host is refused before anything changes. Ignored on an NVMe host.
    type: str
  imds_endpoint:
    description: Instance metadata endpoint on the host; empty uses http://169.254.169.254.
    type: str
  partition_letters:
    description:
      - "V(up) - restored volume id (one of O(volume_ids)) -> partition number -> drive letter (D to Z), for a restored
        basic disk whose letters were recorded by partition number (the CLUSTERPRO catalog's C(drive_letters), e.g.
        C({\"1\": \"R\", \"2\": \"M\"}))."
      - Each partition is matched to its diskpart volume - Get-Partition's partition of that
        number, diskpart's C(detail partition) of the partition with that number at the same offset, one volume on it
        (refused otherwise) - and the step script checks that again right before C(assign). A letter held by a volume
        of another disk is refused, never taken away; a letter Windows gave the restored disk's other partition on
        arrival is removed from it first.
      - May be used with or without O(layout); with it alone O(source_volume_ids) may be empty.
    type: dict
    default: {}
  devices:
    description:
      - Volume id -> the device name EC2 reports the volume attached at now (C(xvdf), C(/dev/xvdf)), read by the
        caller (the CLUSTERPRO restore reads them with C(amazon.aws.ec2_instance_info) on its api host; the swap
        attaches the restored volume at the same name). Used on a Xen host only, instead of the instance metadata and
        DescribeInstances - no EC2 call, no instance metadata. A PV disk at a location none of them names is not acted
        on. The names are trusted as given - they must be what EC2 says at the time of the task.
    type: dict
    default: {}
  refuse_missing:
    description:
      - V(down) - refuse a volume of O(volume_ids) the host shows no disk of, instead of passing over it (the default,
        so that a re-run of V(down) after the swap finds nothing to do). For a caller that knows from EC2 that the
        volume is attached to this host's instance - a host that does not show it may be the wrong inventory host. On
        a Xen host a volume whose location holds no PV disk is refused either way.
    type: bool
    default: false
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
  - stillpoint.snapshots.attributes
  - stillpoint.snapshots.attributes.actiongroup_aws
attributes:
  check_mode:
    support: full
    details: Reads the host and returns the steps it would run; runs none of them.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Each state plans from what the host holds; a second run finds nothing left to do.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: windows
requirements:
  - ansible.windows (win_powershell)
notes:
  - The host needs diskpart, chkdsk and the Storage module's Get-Disk (Windows Server 2012 and later).
  - "Xen instances (AWS PV or Citrix PV drivers, e.g. t2, m4, c4): a disk without a C(vol...) serial whose Get-Disk
    Path holds C(PROD_PVDISK) is found by its Win32_DiskDrive location as AWS documents it (bus 0, LUN 0, target 0 is
    C(/dev/sda1), targets 1 to 25 are C(xvdb) to C(xvdz)) through the block device mappings of the instance the
    host's own instance metadata (IMDSv2) names, read on the controller with DescribeInstances (the AWS options
    below) at every gather of every state and again right before steps are sent. After the swap the restored volume
    is attached at the old device name, so it is the disk at the old target id. Each step names the disk's location;
    the PowerShell finds the one PV disk there right before the change."
  - "Refused on a Xen host, never guessed, before any step of the round is sent: no instance id from the instance
    metadata, or one other than O(instance_id) or O(expect_instance_id); a disk whose device name is in no block
    device mapping or in two; two disks at one location; a volume to take down or bring up attached at a device name with no EBS location
    in AWS's table (the instance store's C(xvdca) to C(xvdcl), or C(/dev/sdf)); a volume to take down that the host
    shows at no location; mappings that changed between the gather and the steps; a restored volume not at its
    location within O(device_timeout). This mapping never ran on Windows."
  - On an NVMe host nothing of this runs and no EC2 call is made. With O(devices) no EC2 call is made on a Xen host
    either, and the host's instance metadata is not asked (unless O(expect_instance_id)).
"""

EXAMPLES = r"""
- name: Take the disks of the volumes to be replaced offline
  stillpoint.snapshots.win_array_host:
    state: down
    volume_ids: [vol-0123456789abcdef0, vol-0123456789abcdef1]

- name: Bring the restored array up with its drive letters, check it read-only
  stillpoint.snapshots.win_array_host:
    state: up
    volume_ids: "{{ restored.volumes | sort(attribute='index') | map(attribute='volume_id') }}"
    source_volume_ids: "{{ set.members | sort(attribute='index') | map(attribute='source_volume') }}"
    layout: "{{ set.array }}"

- name: Bring a restored basic disk up with its letters by partition number (as clusterpro_mirror_restore does)
  stillpoint.snapshots.win_array_host:
    state: up
    volume_ids: [vol-0123456789abcdef2]
    partition_letters: {vol-0123456789abcdef2: {"1": R, "2": M}}
    devices: {vol-0123456789abcdef2: xvdf}
    verify: false
"""

RETURN = r"""
actions:
  description: The steps, in order (C(planned) in check mode).
  returned: down, up
  type: list
  elements: dict
volumes:
  description: Each recorded volume with the path it has now, its diskpart volume number, type and status.
  returned: up
  type: list
  elements: dict
chkdsk:
  description: Each read-only chkdsk - path, exit code, its documented meaning and the last lines of its output.
  returned: up with verify
  type: list
  elements: dict
instance_id:
  description: The host's instance id from its instance metadata, when asked.
  returned: always
  type: str
disks:
  description: The host's EBS disks (V(info)); on a Xen host each with its PV location C(pv_target) and C(device) name.
  returned: info
  type: list
  elements: dict
"""
