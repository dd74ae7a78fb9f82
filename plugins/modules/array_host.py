#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: array_host
short_description: Take a backup set's filesystems, LVM and md arrays down, or bring restored volumes up
version_added: 0.1.0
description:
  - The host side of a restore, run on the instance. It knows the set's layout from the catalog (the array descriptor
    that M(stillpoint.snapshots.backup_set_info) returns as C(array)) and finds every disk by EBS volume id (NVMe
    serial or the udev links C(nvme-Amazon_Elastic_Block_Store_vol...)), never by device name or enumeration order.
  - With O(state=down), before the volumes are detached, runs O(stop_command), unmounts every filesystem of the layout
    (deepest first), deactivates its volume groups (C(vgchange -an)) and stops its md arrays (C(mdadm --stop)). A busy
    filesystem is refused, naming the processes that hold it (C(fuser -vm)), unless O(force_unmount=true).
  - With O(state=up), after the restored volumes are attached, waits for each one by volume id, assembles each md
    array with its members in the recorded order (C(mdadm --assemble), refused when the members' md UUID is not the
    recorded one), activates each volume group (C(vgchange -ay), refused when its UUID is not the recorded one),
    checks each filesystem read-only (O(verify)), mounts it, checks O(sentinel) and O(checksum_command), and runs
    O(start_command).
  - A restored copy whose md array (same UUID) is already running on the host over other volumes, whose volume group
    is up from other PVs, or whose mountpoint is in use, is refused. Such a copy sits beside its source (or another
    copy) and carries the same md, LVM and filesystem UUIDs. O(import_clone) brings such a copy up under new UUIDs and names.
  - An md array that udev assembled from the restored volumes under another name (C(/dev/md127)), even with its volume
    group already activated by LVM's event activation, is taken over when nothing uses it (C(vgchange -an),
    C(mdadm --stop)), then assembled in the recorded order at the recorded device.
  - Refusals that can be known in advance come before anything is changed.
  - Never reads or writes C(/etc/fstab) (nor C(mdadm.conf) or the LVM configuration); mounts are made for the running
    system only. Keep C(/etc/fstab) entries of restored filesystems by UUID or label, or add them yourself.
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  state:
    description:
      - V(down) takes the layout's filesystems, volume groups and md arrays down so that the volumes can be detached.
      - V(up) brings the restored volumes up and mounts the layout's filesystems.
    type: str
    choices: [down, up]
    required: true
  layout:
    description:
      - The set's array descriptor from the catalog (C(array) of a M(stillpoint.snapshots.backup_set_info) record).
      - C(filesystems), a list of C({mountpoint, fstype, options, members}), where C(members) are member indexes,
        C(options) the mount options (a comma-separated string or a list), and optionally C(device), the md device
        (C(/dev/md0)) or logical volume (C(/dev/<vg>/<lv>)) of this layout the filesystem sits on, or
        C(partition), a partition number on the single member volume. A filesystem spanning several members
        without C(device) must be btrfs; it is mounted with C(device=) for every member.
      - C(md) (optional), a list of C({device, uuid, level, chunk, members}), where C(members) are the member indexes
        in md role order (role 0 first), C(uuid) the array UUID (C(mdadm --detail) form; any case and separators).
      - C(lvm) (optional), a list of C({vg, uuid, pvs, lvs}), where C(pvs) are member indexes or md devices of this
        layout, C(lvs) the names of the logical volumes that must exist.
      - Other keys are ignored.
    type: dict
    required: true
  volume_ids:
    description:
      - The EBS volume id of each member, by member index (item 0 is member 0).
      - With O(state=up), required; the restored volumes.
      - With O(state=down), optional; the current volumes. When given, a mounted filesystem of the layout that is not
        on these volumes is refused, and after the run each volume's device must be released (no filesystem, md or
        device-mapper holds it), so that it can be detached.
    type: list
    elements: str
    default: []
  stop_command:
    description:
      - Application hook run (argv list, no shell) before anything is unmounted with O(state=down).
      - Runs under coreutils C(timeout) with O(hook_timeout). A failure refuses the rest.
    type: list
    elements: str
    default: []
  start_command:
    description:
      - Application hook run (argv list, no shell) after everything is mounted and verified with O(state=up).
    type: list
    elements: str
    default: []
  hook_timeout:
    description: Seconds each hook and the O(checksum_command) may run before they are killed.
    type: float
    default: 60
  run_hooks:
    description:
      - V(always) runs the hooks on every run, also when nothing is to be taken down or brought up (so that a run
        interrupted between mounting and the start hook starts the application when it is run again). The hooks
        must then be idempotent (C(systemctl stop/start) are); running them does not count as a change.
      - V(on_change) runs O(stop_command) only when something is mounted or active, and O(start_command) only when
        this run assembled, activated or mounted something.
    type: str
    choices: [always, on_change]
    default: always
  device_timeout:
    description:
      - With O(state=up), seconds to wait for every restored volume's disk to appear (by volume id).
      - Also bounds the wait for C(/dev/<vg>/<lv>) to appear after activation (at most 30 s).
    type: float
    default: 120
  verify:
    description:
      - With O(state=up), check each filesystem read-only before mounting it, C(e2fsck -f -n) for ext2/3/4,
        C(xfs_repair -n) for xfs, C(btrfs check --readonly) for btrfs. A failed check mounts nothing and says which
        filesystem on which volume failed.
      - A copy whose journal or log was not replayed (a crash-consistent set) may fail the check; the message says so.
      - Filesystems that are already mounted from the right device are not checked again.
    type: bool
    default: true
  sentinel:
    description:
      - A path relative to each mountpoint that must exist after mounting (for example a marker file the application
        keeps there). When one is missing the filesystems stay mounted for inspection and O(start_command) is not run.
    type: str
  checksum_command:
    description:
      - A command (argv list, no shell) run after mounting and the sentinel check; it must exit 0, or
        O(start_command) is not run. For example C([sha256sum, --quiet, -c, /srv/data/MANIFEST.sha256]).
    type: list
    elements: str
    default: []
  mount_options_extra:
    description:
      - Mount options added to the recorded ones (for example C(nouuid) to mount an xfs copy beside its source).
    type: list
    elements: str
    default: []
  import_clone:
    description:
      - Bring the restored volumes up B(beside their source) on the same host, under new identities. The copy carries
        the source's md UUID, LVM PV and VG UUIDs and filesystem UUIDs; without this option a copy whose array, volume
        group or mountpoint is already up on the host from other volumes is refused.
      - Each md array is assembled at O(md_map) (default C(/dev/md/<name>_clone), for example
        C(/dev/md/md0_clone)) with a new random UUID (C(mdadm --assemble --update=uuid)); each volume group is
        renamed to O(vg_map) (default C(<vg>_clone)) with new PV and VG UUIDs (C(vgimportclone --basevgname)), so
        its logical volumes become C(/dev/<new vg>/<lv>); each filesystem is mounted at its O(mountpoint_map) entry,
        XFS with C(nouuid) (its UUID stays the source's). Members that no longer carry the source's md UUID (a re-run
        or a reboot) are taken as already imported.
      - Use the same options with O(state=down) to take the copy down again; the source is never touched.
      - The new UUIDs are written to the restored volumes only, never to the source or the snapshots.
    type: bool
    default: false
  mountpoint_map:
    description:
      - With O(import_clone), the new mountpoint of each filesystem of the set (recorded mountpoint -> new
        mountpoint). Required for every filesystem; a new mountpoint may not be one of the set's own mountpoints.
      - Only with O(import_clone).
    type: dict
    default: {}
  vg_map:
    description: With O(import_clone), the new name of each volume group (recorded name -> new name).
    type: dict
    default: {}
  md_map:
    description: With O(import_clone), the new device of each md array (recorded device -> new device).
    type: dict
    default: {}
  force_unmount:
    description:
      - With O(state=down), unmount a busy filesystem lazily (C(umount -l)) instead of refusing. The filesystem lives
        on until its last user lets go; the run then warns that its volumes are still in use. Do not detach them
        before they are released.
    type: bool
    default: false
extends_documentation_fragment:
  - stillpoint.snapshots.attributes
  - stillpoint.snapshots.devices
attributes:
  check_mode:
    support: full
    details:
      - Returns the RV(actions) that would run (C(planned=true)), and runs none that changes state (no hook, no
        unmount, mount, assembly, activation, check or mkdir). Read-only probes (the mount table, sysfs,
        C(mdadm --examine), C(vgs)) still run. Volumes that are not attached yet appear as C(<device of vol-...>).
  diff_mode:
    support: none
    details: The result lists the RV(actions) taken and the final RV(mounts).
  idempotent:
    support: full
    details:
      - What is already down (unmounted, inactive) or already up (assembled, active, mounted from the right device)
        is left alone, and C(changed) is false. Hooks with O(run_hooks=always) do not count as changes.
notes:
  - Requires root; use C(become=true).
  - With LVM devices files (C(/etc/lvm/devices/system.devices), the default on RHEL 9), restored volumes have new
    serials and are not listed; the run then says so and C(vgimportdevices) adds them.
seealso:
  - module: stillpoint.snapshots.backup_set_info
  - module: stillpoint.snapshots.ebs_mount_info
"""

EXAMPLES = r"""
- name: Take the set's filesystems down before the volumes are swapped
  stillpoint.snapshots.array_host:
    state: down
    layout: "{{ restore_from.sets[0].array }}"
    volume_ids: "{{ current_volume_ids }}"
    stop_command: [systemctl, stop, postgresql]
  become: true

- name: Bring the restored volumes up, verify and start the application
  stillpoint.snapshots.array_host:
    state: up
    layout: "{{ restore_from.sets[0].array }}"
    volume_ids: "{{ restored.volume_ids }}"
    sentinel: PG_VERSION
    start_command: [systemctl, start, postgresql]
  become: true
  register: host_up

- name: A copy of the set beside its source on the same host, mounted under /mnt/restore
  stillpoint.snapshots.array_host:
    state: up
    layout: "{{ restore_from.sets[0].array }}"
    volume_ids: "{{ restored.volume_ids }}"
    import_clone: true
    mountpoint_map: {/srv/pg: /mnt/restore/pg}
    vg_map: {data: data_restore}
  become: true

- name: An md RAID0 with LVM on top, as a layout
  stillpoint.snapshots.array_host:
    state: up
    layout:
      md:
        - {device: /dev/md0, uuid: "5f3c2a1e:9b0d4e77:1c2f3a4b:5d6e7f80", level: raid0, chunk: 512K, members: [0, 1, 2, 3]}
      lvm:
        - {vg: data, uuid: "y1fQ0H-bAoM-Bv7x-IVtK-wIHN-2gSU-ZsY4vb", pvs: [/dev/md0], lvs: [pg]}
      filesystems:
        - {mountpoint: /srv/pg, fstype: xfs, options: "rw,noatime", members: [0, 1, 2, 3], device: /dev/data/pg}
    volume_ids: [vol-0a1b2c3d4e5f60718, vol-14ee351274d08bc47, vol-72d56e31628d4c64e, vol-2e02c954ab43a22e6]
  become: true
"""

RETURN = r"""
changed:
  description: Whether anything was unmounted, deactivated, stopped, assembled, activated, created or mounted.
  returned: always
  type: bool
  sample: true
actions:
  description:
    - What was done (in check mode, what would be done), in order. C(what) says what for, C(cmd) is the command
      (empty for a step that runs none, such as waiting for the devices or the sentinel check), C(rc) its exit code
      and C(ms) its duration (None when it did not run); C(planned) is true in check mode.
    - A hook's entry also has C(timed_out).
  returned: always
  type: list
  elements: dict
  sample: [{what: "mount /srv/data", cmd: [/usr/bin/mount, -t, ext4, -o, "rw,relatime", /dev/nvme1n1, /srv/data],
            rc: 0, ms: 12.7, planned: false}]
mounts:
  description: The layout's filesystems at the end of the run, parents first.
  returned: always
  type: list
  elements: dict
  sample: [{mountpoint: /srv/data, fstype: ext4, mounted: true, source: /dev/nvme1n1, majmin: "259:3",
            options: "rw,relatime"}]
devices:
  description: With O(state=up), the disk found for each member by volume id.
  returned: state=up
  type: list
  elements: dict
  sample: [{member: 0, volume_id: vol-0a1b2c3d4e5f60718, device: /dev/nvme1n1}]
released:
  description:
    - With O(state=down) and O(volume_ids), each volume's device and whether something (a filesystem, md or
      device-mapper) still claims it.
  returned: state=down
  type: list
  elements: dict
  sample: [{member: 0, volume_id: vol-0a1b2c3d4e5f60718, device: /dev/nvme1n1, claimed: false}]
holders:
  description: When a busy filesystem was refused, the processes holding it (pid, command, user).
  returned: failure on a busy filesystem
  type: list
  elements: dict
  sample: [{pid: 4242, command: postgres, user: postgres}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CommandRunner
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import DEVICES_ARGS
from ansible_collections.stillpoint.snapshots.plugins.module_utils._hostops import array_host


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["down", "up"], required=True),
            layout=dict(type="dict", required=True),
            volume_ids=dict(type="list", elements="str", default=[]),
            stop_command=dict(type="list", elements="str", default=[]),
            start_command=dict(type="list", elements="str", default=[]),
            hook_timeout=dict(type="float", default=60.0),
            run_hooks=dict(type="str", choices=["always", "on_change"], default="always"),
            device_timeout=dict(type="float", default=120.0),
            verify=dict(type="bool", default=True),
            sentinel=dict(type="str"),
            checksum_command=dict(type="list", elements="str", default=[]),
            mount_options_extra=dict(type="list", elements="str", default=[]),
            force_unmount=dict(type="bool", default=False),
            import_clone=dict(type="bool", default=False),
            mountpoint_map=dict(type="dict", default={}),
            vg_map=dict(type="dict", default={}),
            md_map=dict(type="dict", default={}),
            **DEVICES_ARGS
        ),
        supports_check_mode=True,
    )
    try:
        module.exit_json(**array_host(CommandRunner.from_module(module), module.params, check_mode=module.check_mode,
                                      which=module.get_bin_path, warn=module.warn))
    except StillpointError as exc:
        module.fail_json(**exc.fail_kwargs())


if __name__ == "__main__":
    main()
