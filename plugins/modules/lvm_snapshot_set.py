#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lvm_snapshot_set
short_description: Named sets of LVM snapshots of several LVs, created all or nothing, mounted, merged back, removed
version_added: 0.1.0
description:
  - Manages a named set of LVM snapshots, one per LV listed in O(volumes). Classic (copy-on-write) snapshots get
    the space given by O(volumes[].size) or O(volumes[].percent_origin); thin LVs get thin snapshots in their pool, without a size.
  - Each snapshot is named C(<lv>-snap-<set_name>) and carries the LVM tags C(stillpoint-set.<set_name>),
    C(stillpoint-count.<members>), C(stillpoint-level.<level>) and C(stillpoint-xlv.<yes|no>). The set is found
    by these tags, so O(state=absent), O(state=reverted), O(state=mounted) and O(state=unmounted) need only
    O(set_name). Snapshots without the set's tag are never touched.
  - To list sets without changing anything, use M(stillpoint.snapshots.lvm_snapshot_set_info).
  - Before creating anything, the module checks that every volume group has free extents for the sum of its classic
    snapshots and that every thin pool involved is below O(thin_pool_max_percent) for data and metadata, and refuses
    with the amount that is missing.
  - All or nothing. If creating a member fails, the members this run already made are removed and the result lists
    them in RV(rolled_back). A partial set found later (an interrupted run) is never completed, merged or mounted; the
    module fails and says to remove it.
  - B(Consistency.) C(lvcreate --snapshot) suspends the origin LV, and device-mapper freezes the filesystem on it
    while it does, so each member of a mounted, freezable filesystem (ext4, xfs, btrfs, ...) is filesystem-consistent
    on its own (C(level=filesystem)); a member of an LV used as a raw device is only crash-consistent.
  - B(Across LVs) (O(cross_lv)). Members taken one after another are not of one instant while several of them are in
    use. On Linux 6.6 and later the kernel's freeze (FIFREEZE, C(fsfreeze)) and device-mapper's nest, so the module
    can freeze every mounted filesystem of the set through a guardian process (the dead-man thaw of
    M(stillpoint.snapshots.fsfreeze), which thaws at O(freeze_deadline) or as soon as the module dies), create every
    snapshot, and thaw; the set is then of one instant (C(cross_lv_consistent=true) in RV(snapshot_set)).
  - Measured in the lab (Debian 12, bookworm-backports' 6.12 kernel, qemu TCG with one emulated CPU), two LVs (ext4,
    XFS) under a writer appending the same numbered O_DSYNC records to both were frozen for 4.1 s to 7.8 s in three
    runs (two C(lvcreate) calls of 1.7 s to 4.5 s each on that slow CPU), and both snapshots held the same number of
    records every time (869, 821, 1082) while the writer wrote 25 to 45 records a second.
  - On Linux 6.1 a filesystem frozen by C(fsfreeze) cannot be snapshot (the suspend fails with EBUSY and a classic
    snapshot leaves a half-made LV; measured on Debian 12, classic and thin), so there the members are taken one
    after another and are B(not) consistent with each other (C(cross_lv_consistent=false) in RV(snapshot_set))
    unless at most one of them is in use. Quiesce the application across all of them when it needs more.
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  set_name:
    description:
      - Name of the set, 1-64 characters of C(A-Z a-z 0-9 _ . + -). Part of the snapshot LV names and tags.
    type: str
    required: true
  volumes:
    description:
      - The LVs of the set, in the order their snapshots are taken. Required with O(state=present).
      - With other states, optional; when given, the set found must have exactly these LVs.
    type: list
    elements: dict
    suboptions:
      vg:
        description: Volume group of the LV.
        type: str
        required: true
      lv:
        description: Name of the LV to snapshot (the origin).
        type: str
        required: true
      size:
        description:
          - Space of a classic snapshot, as C(lvcreate -L) takes it (C(512m), C(2g); no unit means MiB), rounded up
            to whole extents. The snapshot becomes invalid when more than this has changed on the origin.
          - Not for thin LVs.
        type: str
      percent_origin:
        description:
          - Space of a classic snapshot as a percentage of the origin's size (like C(lvcreate -l N%ORIGIN)).
          - Not for thin LVs.
        type: float
  state:
    description:
      - V(present) creates the set (all members, or none). An existing complete set with the same LVs is left alone.
      - V(absent) removes every snapshot of the set. Refused while a member is mounted or merging.
      - V(reverted) merges every snapshot back into its origin (C(lvconvert --merge --interval 1)), so the origins
        return to the state of the set; the snapshots disappear. Refused while an origin is open unless
        O(defer_merge=true). Every merge is dry-run (C(--test)) before the first one starts.
      - V(mounted) activates the snapshots if needed and mounts each read-only at O(mount_base)C(/<vg>/<lv>).
      - V(unmounted) unmounts every mount of the set's snapshots.
    type: str
    choices: [present, absent, reverted, mounted, unmounted]
    default: present
  cross_lv:
    description:
      - With O(state=present), how the members are made consistent with each other.
      - V(auto) freezes when the kernel allows it (release 6.6 or later) and more than one member is in use (mounted
        or open); otherwise the members are taken one after another. It also falls back to one after another when a
        member in use is open without being mounted (nothing to freeze), or when the freeze itself is refused (for
        example the filesystem is C(/), holds the module's own files or cannot be frozen), with a warning.
      - V(freeze) freezes every mounted filesystem of the members before the first C(lvcreate) and thaws them after
        the last one, also when a member fails (thaw first, then the rollback). Refused before anything is done on a
        kernel older than 6.6, when a member is open without being mounted, or when M(stillpoint.snapshots.fsfreeze)
        would refuse a filesystem. When nothing is mounted, nothing is frozen.
      - V(sequential) takes the members one after another, as on kernels before 6.6.
      - RV(cross_lv) says which mechanism was used and why; RV(freeze) holds its timings.
    type: str
    choices: [auto, freeze, sequential]
    default: auto
  freeze_deadline:
    description:
      - With the C(freeze) mechanism, seconds after which the guardian thaws the filesystems on its own (writers
        block while they are frozen). If that happens before the last snapshot is made, the set is not of one
        instant; it is rolled back and the module fails. At most 300.
    type: float
    default: 10.0
  thin_pool_max_percent:
    description:
      - With O(state=present), refuse when a thin pool that would hold a thin snapshot has its data or metadata
        this full or more (percent).
    type: float
    default: 80.0
  mount_base:
    description:
      - With O(state=mounted), the directory under which each snapshot is mounted at C(<mount_base>/<vg>/<lv>).
    type: path
  mount_options:
    description:
      - With O(state=mounted), extra mount options. The module always mounts C(ro); for xfs it adds C(nouuid) (the
        origin with the same UUID is mounted) and C(norecovery), for ext3/ext4 C(noload), so that mounting never
        writes to the snapshot.
    type: list
    elements: str
    default: []
  defer_merge:
    description:
      - With O(state=reverted), also merge snapshots whose origin is open (mounted). LVM then merges them on the
        origin's next activation (for the root LV, the next boot), so the origins of the set come back at different
        times. The result lists them in RV(deferred).
    type: bool
    default: false
extends_documentation_fragment:
  - stillpoint.snapshots.attributes
attributes:
  check_mode:
    support: full
    details:
      - Every C(lvcreate), C(lvremove), C(lvchange) and C(lvconvert --merge) is run with LVM's C(--test) instead
        (LVM checks it and changes no metadata); mounts and unmounts are only planned. The space check runs too.
      - Nothing is frozen; RV(cross_lv) says which mechanism would be used, and the refusals of
        O(cross_lv=freeze) apply.
  diff_mode:
    support: none
    details: The result lists the set as it is after the run.
  idempotent:
    support: full
    details:
      - A complete existing set gives C(changed=false) with O(state=present); a removed, merged, mounted or unmounted
        set gives C(changed=false) for the same state. A partial set is an error, never completed.
notes:
  - Requires root; use C(become=true). Needs lvm2 2.02.158 or later (C(--reportformat json)).
  - Classic snapshots slow down writes to their origins (copy-on-write) and become invalid when their space runs out;
    remove sets you no longer need.
  - Thin snapshots are created with LVM's activation-skip flag; O(state=mounted) activates them with
    C(--ignoreactivationskip).
seealso:
  - module: stillpoint.snapshots.lvm_snapshot_set_info
  - module: stillpoint.snapshots.fsfreeze
  - name: lvmthin(7), lvcreate(8), lvconvert(8)
    description: LVM's thin provisioning, snapshot creation and merging.
    link: https://man7.org/linux/man-pages/man8/lvcreate.8.html
"""

EXAMPLES = r"""
- name: Snapshot the data LVs before an upgrade (refused if the VG lacks space)
  stillpoint.snapshots.lvm_snapshot_set:
    set_name: pre-upgrade
    volumes:
      - {vg: vgdata, lv: db, size: 2g}
      - {vg: vgdata, lv: logs, percent_origin: 20}
      - {vg: vgdata, lv: thinfiles}   # a thin LV: thin snapshot, no size
  become: true
  register: snapset

- name: Say whether the members are of one instant (yes with the freeze on kernels >= 6.6)
  ansible.builtin.debug:
    msg: >-
      per LV: {{ snapset.snapshot_set.level }}, across LVs: {{ snapset.snapshot_set.cross_lv_consistent }}
      ({{ snapset.cross_lv.mechanism }}: {{ snapset.cross_lv.reason }})

- name: Require one instant across the LVs (refused on kernels older than 6.6)
  stillpoint.snapshots.lvm_snapshot_set:
    set_name: pre-migration
    volumes:
      - {vg: vgdata, lv: db, size: 2g}
      - {vg: vgdata, lv: logs, size: 1g}
    cross_lv: freeze
    freeze_deadline: 20
  become: true

- name: Look into the set read-only
  stillpoint.snapshots.lvm_snapshot_set:
    set_name: pre-upgrade
    state: mounted
    mount_base: /mnt/pre-upgrade
  become: true

- name: Unmount it again
  stillpoint.snapshots.lvm_snapshot_set:
    set_name: pre-upgrade
    state: unmounted
  become: true

- name: The upgrade went wrong, put the LVs back (unmount the origins first)
  stillpoint.snapshots.lvm_snapshot_set:
    set_name: pre-upgrade
    state: reverted
  become: true

- name: Or keep the new state and drop the snapshots
  stillpoint.snapshots.lvm_snapshot_set:
    set_name: pre-upgrade
    state: absent
  become: true

- name: List every snapshot set on the host (read-only)
  stillpoint.snapshots.lvm_snapshot_set_info:
  become: true
  register: lvm_sets
"""

RETURN = r"""
snapshot_set:
  description:
    - The set as found after the run (before it, in check mode).
    - C(level) is the weakest member level; it holds for each LV on its own. C(cross_lv_consistent) says whether the
      members are of one instant.
  returned: always
  type: dict
  sample:
    name: pre-upgrade
    tag: stillpoint-set.pre-upgrade
    exists: true
    complete: true
    expected_members: 2
    level: filesystem
    cross_lv_consistent: false
    members:
      - {vg: vgdata, lv: db, snapshot: db-snap-pre-upgrade, path: /dev/vgdata/db-snap-pre-upgrade, kind: classic,
         size: 2147483648, level: filesystem, active: true, invalid: false, merging: false, mounted_at: [],
         data_percent: 0.01, uuid: "cWJ1nE-...", created: "2026-11-21 16:55:01 +0000"}
plan:
  description:
    - With O(state=present), each member as planned, with C(level) and its C(basis) (why that level), C(kind),
      C(extents), C(size) in bytes and, once made, C(create_ms).
  returned: state=present when the set was created or planned
  type: list
  elements: dict
space:
  description: The space check, per volume group (free and needed extents) and per thin pool (data and metadata %).
  returned: state=present when the set was created or planned
  type: list
  elements: dict
cross_lv:
  description:
    - With O(state=present), how the members were (in check mode, would be) made consistent with each other.
    - C(requested) is the O(cross_lv) option; C(mechanism) is C(freeze) or C(sequential); C(reason) says why;
      C(kernel) is the running kernel's release and C(kernel_nests_freeze) whether it is 6.6 or later; with the
      freeze, C(freeze_mountpoints) and C(freeze_deadline).
  returned: state=present when the set was created or planned
  type: dict
  sample:
    requested: auto
    mechanism: freeze
    reason: "kernel 6.12.95+deb12-cloud-amd64 (>= 6.6) snapshots filesystems held frozen by fsfreeze; 2 members in use"
    kernel: 6.12.95+deb12-cloud-amd64
    kernel_nests_freeze: true
    freeze_mountpoints: [/srv/ext, /srv/xfs]
    freeze_deadline: 10.0
freeze:
  description:
    - With the C(freeze) mechanism, the freeze of the set. C(window_ms) is the time from the first freeze to the
      last thaw (all C(lvcreate) calls inside), C(presync_ms) the C(syncfs) before it, C(mounts) per filesystem
      C(freeze_ms) and C(thaw_ms); C(deadline_thawed) is true when the guardian thawed at O(freeze_deadline).
  returned: state=present when the freeze mechanism ran
  type: dict
  sample:
    window_ms: 1342.5
    presync_ms: 12.1
    deadline_s: 10.0
    deadline_thawed: false
    externally_thawed: []
    thaw_errors: []
    mounts:
      - {mountpoint: /srv/ext, freeze_ms: 8.2, thaw_ms: 0.3}
      - {mountpoint: /srv/xfs, freeze_ms: 11.9, thaw_ms: 0.4}
rolled_back:
  description: Snapshots removed again because a later member failed (all or nothing).
  returned: when creating failed
  type: list
  elements: str
actions:
  description:
    - The commands that changed something (or, in check mode, would have), in order, and the dry runs of
      O(state=reverted) (C(lvconvert --test --merge)), which run in check mode too.
    - C(what) says what for, C(cmd) is the command, C(rc) its exit code and C(ms) its duration (None when it did not
      run); C(planned) is true in check mode, where C(dry_run), C(dry_run_rc) and C(dry_run_ms) give LVM's C(--test)
      twin that ran instead.
  returned: always
  type: list
  elements: dict
  sample:
    - {what: "create classic snapshot vgdata/db-snap-nightly of vgdata/db", cmd: [/usr/sbin/lvcreate, --snapshot, --name,
       db-snap-nightly, --extents, "12", --addtag, stillpoint-set.nightly, vgdata/db], rc: 0, ms: 1712.4, planned: false}
removed:
  description: Snapshots removed (state=absent).
  returned: state=absent
  type: list
  elements: str
merged:
  description: Snapshots merged into their origins (state=reverted).
  returned: state=reverted
  type: list
  elements: str
deferred:
  description: Snapshots whose merge waits for the next activation of their origin (state=reverted).
  returned: state=reverted when merges were started
  type: list
  elements: str
mounts:
  description: Per member, the mountpoint, fstype and options (state=mounted).
  returned: state=mounted
  type: list
  elements: dict
unmounted:
  description: Mountpoints unmounted (state=unmounted).
  returned: state=unmounted
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CommandRunner, StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._freeze import DEFAULT_DEADLINE
from ansible_collections.stillpoint.snapshots.plugins.module_utils._freeze import module_protect_paths
from ansible_collections.stillpoint.snapshots.plugins.module_utils._lvm import snapshot_set


def main():
    module = AnsibleModule(
        argument_spec=dict(
            set_name=dict(type="str", required=True),
            volumes=dict(type="list", elements="dict", options=dict(
                vg=dict(type="str", required=True),
                lv=dict(type="str", required=True),
                size=dict(type="str"),
                percent_origin=dict(type="float"),
            )),
            state=dict(type="str", default="present",
                       choices=["present", "absent", "reverted", "mounted", "unmounted"]),
            thin_pool_max_percent=dict(type="float", default=80.0),
            mount_base=dict(type="path"),
            mount_options=dict(type="list", elements="str", default=[]),
            defer_merge=dict(type="bool", default=False),
            cross_lv=dict(type="str", default="auto", choices=["auto", "freeze", "sequential"]),
            freeze_deadline=dict(type="float", default=DEFAULT_DEADLINE),
        ),
        required_if=[
            ("state", "present", ["volumes"]),
            ("state", "mounted", ["mount_base"]),
        ],
        supports_check_mode=True,
    )
    try:
        # a freeze of the set never includes the filesystems the module itself runs from
        module.exit_json(**snapshot_set(CommandRunner.from_module(module), module.params, check_mode=module.check_mode,
                                        protect_paths=module_protect_paths(module), warn=module.warn))
    except StillpointError as exc:
        module.fail_json(**exc.fail_kwargs())


if __name__ == "__main__":
    main()
