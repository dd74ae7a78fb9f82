#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ebs_snapshot_set
short_description: Take a consistent set of EBS snapshots of one instance with a single CreateSnapshots call
version_added: 0.1.0
description:
  - Quiesces the application (optional pre-freeze hook), freezes the filesystems given in O(mountpoints)
    under a guardian process that thaws them even if this module is killed, makes B(one) EC2
    C(CreateSnapshots) call for all member volumes of the instance, thaws, runs the post-thaw hook, and
    records the set in the backup catalog (snapshot tags, see C(docs/catalog.md)).
  - The freeze window is one API round trip. Waiting for the snapshots to reach C(completed) happens after
    the thaw. If any member fails, the whole set is deleted; what cannot be deleted is tagged V(partial).
    A set is never reported V(complete) unless every member completed.
  - "Two modes: in V(host) mode (default) the module runs on the instance, which needs EC2 access (instance
    profile). In O(mode=controller) the action plugin runs M(stillpoint.snapshots.ebs_mount_info) and
    M(stillpoint.snapshots.fsfreeze) on the host, makes the EC2 call from the controller, and thaws the host
    with one raw command."
  - Throttled calls (C(RequestLimitExceeded), C(SnapshotCreationPerVolumeRateExceeded)) are never waited out
    or retried while frozen. Before freezing, a C(CreateSnapshots) DryRun probes for a token (waiting at most
    O(throttle_wait) outside any freeze). A call throttled inside the freeze thaws and fails with nothing
    created, unless O(max_freeze_cycles) allows another cycle (back-off, probe, freeze again). The set records
    how many cycles it took (C(stillpoint:freeze-cycles)). See C(docs/throttling.md).
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  mode:
    description:
      - Where the EC2 call is made. V(host) runs everything on the target host. V(controller) keeps the
        freeze on the host and calls EC2 from the controller (the host needs no AWS access).
      - Handled by the action plugin.
    type: str
    choices: [host, controller]
    default: host
  instance_id:
    description:
      - The instance whose volumes are snapshotted. Defaults to the instance the module runs on, read from
        instance metadata (IMDSv2), or in controller mode to the instance the member volumes are attached to.
    type: str
  mountpoints:
    description:
      - Filesystems to freeze. The EBS volumes under them (through partitions, md and LVM) become the members
        of the set, found by NVMe serial or C(/dev/disk/by-id) links, never by device enumeration order.
      - If neither O(mountpoints) nor O(volume_ids) is given, all data volumes of the instance are members and
        nothing is frozen (crash-consistent).
    type: list
    elements: path
    default: []
  volume_ids:
    description:
      - Member volumes by id, added to those found under O(mountpoints). Their order is the member order
        recorded in the catalog (for example an md array's order).
    type: list
    elements: str
    default: []
  exclude_volume_ids:
    description: Volumes never to include.
    type: list
    elements: str
    default: []
  exclude_mountpoints:
    description: Volumes under these mountpoints are never included (they are not frozen either).
    type: list
    elements: path
    default: []
  exclude_boot_volume:
    description: Leave the instance's boot volume out of the set unless it is named explicitly.
    type: bool
    default: true
  freeze:
    description: Freeze O(mountpoints) around the call. Without a freeze the set is crash-consistent.
    type: bool
    default: true
  freeze_deadline:
    description:
      - Seconds after which the guardian thaws on its own, whatever happens to this module. A freeze cut short
        by the deadline lowers the recorded level to V(crash).
    type: float
    default: 10.0
  protect_paths:
    description: Extra paths whose filesystems must never be frozen (C(/), Ansible's remote tmp, the Python
      interpreter and the working directory are always protected).
    type: list
    elements: path
    default: []
  by_id_dir:
    description: Where the udev links C(nvme-Amazon_Elastic_Block_Store_vol...) are.
    type: path
    default: /dev/disk/by-id
  imds_endpoint:
    description:
      - Instance metadata endpoint used to find O(instance_id). Defaults to E(AWS_EC2_METADATA_SERVICE_ENDPOINT)
        or C(http://169.254.169.254).
    type: str
  name:
    description: Name of the backup series; retention (M(stillpoint.snapshots.backup_set_prune)) works per name and instance.
    type: str
    default: default
  set_id:
    description:
      - Identifier of the set. When a set with this id already exists the module does not take another one; it
        reports it (C(changed=false)) or, if it is still V(pending), waits for it and marks it complete. Makes
        retries of a job idempotent. Generated when omitted.
    type: str
  description:
    description: Description of every snapshot.
    type: str
  tags:
    description: Extra tags on every snapshot (keys must not start with C(stillpoint:)).
    type: dict
    default: {}
  copy_tags_from_source:
    description: Copy each volume's tags to its snapshot (C(CopyTagsFromSource=volume)).
    type: bool
    default: false
  array:
    description:
      - "Array descriptor recorded in the catalog, for example C({\"kind\": \"md\", \"level\": \"raid0\"})."
      - The filesystems found under O(mountpoints) are added to it as C(filesystems) (mountpoint, type, mount
        options, member indexes), which a restore uses.
      - In V(host) mode the md arrays (C(mdadm --detail --export)) and LVM volume groups (C(pvs)/C(lvs)
        C(--reportformat json)) under O(mountpoints) are discovered and added as C(md) and C(lvm), with each
        filesystem's C(device); every PV of such a volume group becomes a member, and the members are numbered in
        md role order and PV order. Nothing is discovered when O(array) already has C(md) or C(lvm).
    type: dict
  quiesced_level:
    description:
      - The consistency level the member volumes' data already has although this run freezes nothing, because
        nobody writes to them any more and they were quiesced before, for example a DRBD secondary split off
        while the primary's filesystem was frozen (M(stillpoint.snapshots.drbd_resource)), or a cluster standby
        shut down after its mirror resource was stopped. Recorded as the set's level instead of V(crash).
      - Only without a freeze (O(freeze=false) or no O(mountpoints)). Claim it only when it is true; the roles of
        this collection set it from what they did and record how in O(array).
    type: str
    choices: [crash, filesystem, application]
  procedure:
    description: Name of the procedure recorded in the catalog.
    type: str
    default: ebs_snapshot_set
  pre_hook:
    description: Command (argv list) that quiesces the application before the freeze. Its success makes the set
      C(application)-consistent.
    type: list
    elements: str
    default: []
  post_hook:
    description: Command (argv list) run after the thaw, whatever happened, to resume the application.
    type: list
    elements: str
    default: []
  hook_timeout:
    description: Seconds each hook may run (enforced with coreutils C(timeout)).
    type: float
    default: 30.0
  on_hook_failure:
    description:
      - V(abort) stops before anything is frozen when the pre-freeze hook fails. V(continue) takes the set anyway
        and records it as C(filesystem)-consistent.
    type: str
    choices: [abort, continue]
    default: abort
  application:
    description:
      - Hold the application's own backup lock across the freeze and the C(CreateSnapshots) call (see
        C(docs/applications.md)). The lock is taken before the freeze by the application's client running as a
        child of this module (a coprocess), confirmed on the same session after the thaw, then released. If the
        module dies, the client dies, its session ends and the lock goes.
      - With O(mode=controller) the client is a child of the freeze guardian on the host instead (the
        M(stillpoint.snapshots.fsfreeze) module returns before the call). The guardian takes the lock right before
        it freezes and releases it right after the thaw the controller asks for, whose reply says whether the lock
        was confirmed. If the guardian dies, the client dies with it and a keeper process thaws; the deadline
        (O(freeze_deadline)) thaws and releases. Needs a freeze (O(freeze=true) and O(mountpoints)).
      - V(mariadb) and V(mysql) use the server's C(mariadb)/C(mysql) client; C(BACKUP STAGE START), C(FLUSH),
        C(BLOCK_DDL), C(BLOCK_COMMIT) on MariaDB 10.4 or later, C(FLUSH TABLES WITH READ LOCK) otherwise; the binary
        log file and position and the GTID position read under the lock are recorded in the catalog
        (C(stillpoint:app)). The data directory, the redo log directory and the binary log directory must lie on
        the frozen O(mountpoints), or the run is refused.
      - V(postgresql) uses C(psql) (no lock; PostgreSQL documents a simultaneous snapshot of the data directory,
        C(pg_wal) and every tablespace as a valid backup restored by crash recovery). The data directory, C(pg_wal)
        and every tablespace location must lie on the frozen O(mountpoints), or the run is refused; a C(CHECKPOINT)
        just before the freeze (within O(lock_wait_timeout)) bounds the recovery; the checkpoint and redo LSNs, the
        timeline and the WAL position before the freeze and after the thaw are recorded (C(stillpoint:app)), and
        after the thaw the same backend must answer with the same timeline and checkpoint.
      - V(held_hook) runs O(application_hook), waits for it to print a line C(READY), keeps it running through the
        call, and closes its stdin after the thaw; exit status 0 confirms the lock.
      - The set is recorded V(application) only when the lock was confirmed held through the call. Not with
        O(pre_hook)/O(post_hook). In O(mode=controller) never when the guardian thawed on its own (its
        deadline, SIGTERM, its keeper gone) or was gone at the thaw.
    type: str
    choices: [mariadb, mysql, postgresql, held_hook]
  application_hook:
    description: The command (argv list) of O(application=held_hook).
    type: list
    elements: str
    default: []
  lock_wait_timeout:
    description:
      - Seconds the application's lock may take to be granted (for MariaDB/MySQL also the session's
        C(lock_wait_timeout)); for V(postgresql), the C(statement_timeout) and C(lock_timeout) of the C(CHECKPOINT);
        for V(held_hook), the seconds until C(READY). A long query in the way makes the run
        refuse (or continue, see O(on_quiesce_failure)) within this budget instead of queueing the application
        behind the lock.
    type: float
    default: 10.0
  on_quiesce_failure:
    description:
      - V(abort) refuses the run when the lock is not granted in time (nothing frozen, nothing created), and rolls
        the set back when the lock could not be confirmed after the call. V(continue) takes or keeps the set at the
        level reached (V(filesystem)) with a warning.
    type: str
    choices: [abort, continue]
    default: abort
  wait:
    description: Wait for all members to be C(completed), then mark the set V(complete).
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait for completion. Large volumes take hours on AWS.
    type: int
    default: 14400
  poll_interval:
    description: Seconds between progress polls while waiting.
    type: float
    default: 15.0
  on_wait_timeout:
    description: V(fail) fails when O(wait_timeout) passes; V(return) returns the progress with the set still V(pending).
    type: str
    choices: [fail, return]
    default: fail
  max_freeze_cycles:
    description:
      - How many freeze-call-thaw cycles one set may take. With V(1) (default) a C(CreateSnapshots) call
        throttled inside the freeze thaws and fails, nothing created. With more, the module thaws, backs off
        (jittered; at least 15 s for C(SnapshotCreationPerVolumeRateExceeded)), probes with a DryRun until a
        request gets through, and freezes again; every extra cycle is another stall of the application.
      - A held application (O(application)) is never frozen twice in one run, whatever this says.
    type: int
    default: 1
  throttle_wait:
    description:
      - Seconds the module may wait, before each freeze and outside it, for a C(CreateSnapshots) DryRun that is
        not throttled (C(RequestLimitExceeded)). When they pass, the module fails with nothing frozen or created.
      - Whether EC2 charges DryRun requests to the account's request bucket is not documented; where it does not,
        the probe only proves permission and parameters.
    type: float
    default: 60.0
  pacer:
    description:
      - The forks of one run share one C(CreateSnapshots) token bucket on the controller (a file in the run's local
        temporary directory, per endpoint, Region and access key); each set takes two tokens (its DryRun probe and
        its call), waiting outside any freeze at most O(throttle_wait), so that a host freezes only when a token is
        there. A throttled answer empties the pacer's bucket and halves its rate; calls that get through bring it
        back. See C(docs/throttling.md).
      - Controller mode takes the tokens before each probe. Host mode takes them before the module starts on the
        host (the host then probes, freezes and calls itself) and learns from the throttles the module reports. A
        member of a consistency group (O(group)) is not paced, since the group's hosts call at one instant.
    type: dict
    default: {}
    suboptions:
      enabled:
        description: Pace the run's calls.
        type: bool
        default: true
      size:
        description: The bucket's size (EC2's documented C(CreateSnapshots) bucket; a raised account limit may differ).
        type: int
        default: 100
      refill:
        description: Tokens a second (EC2's documented refill). Lower it to leave room for other clients of the account.
        type: float
        default: 5.0
      slices:
        description:
          - The number of runs that take sets from the same account and Region at the same time without sharing this
            controller's temporary directory, such as the jobs of an AWX job template with C(job_slice_count) N (each
            slice is its own C(ansible-playbook) run, possibly on another node). The pacer then takes 1/N of
            O(pacer.size) and O(pacer.refill), so that the runs together stay within the account's bucket instead of
            learning it from throttles.
        type: int
        default: 1
  group:
    description:
      - Take this host's set as a member of a consistency group (several hosts, one instant; host mode only). Usually
        set by role C(array_backup) (C(array_backup_group=true)), which measures the hosts' clocks, opens the group
        (M(stillpoint.snapshots.ebs_snapshot_group)), arms it once every host is ready and seals it.
      - "With O(group.run_dir) (no O(group.instant)) the module plans and checks with a DryRun, writes C(ready <pid>) to
        C(<run_dir>/state) (C(failed <pid>: <why>) when it fails before) and waits there, nothing frozen and no
        application lock held, at most O(group.wait_s) seconds for the controller to write C(<run_dir>/go) - the
        instant, lead and hold as JSON, or a release; it removes the directory once answered. Run it with C(async)
        and C(poll=0) so that the controller can hand the instant over while it waits (docs/groups.md)."
      - With O(group.instant) (given up front) it waits for it directly after the DryRun check.
      - It then waits, nothing frozen, until the lead before the instant on this host's clock (the instant plus
        O(group.offset_s)); it refuses when that moment has already passed. While it waits it writes the filesystems'
        dirty data out; when those syncs are slow it starts the freeze earlier, three of its last sync before the
        instant, at most four leads (C(presync.lead_ms) in RV(group)). It freezes, makes its one C(CreateSnapshots)
        call, keeps the filesystems frozen until the hold after the instant, and thaws. It returns its frozen interval
        on this host's real-time clock (RV(group)).
      - The set is tagged with the group id and stays C(pending) in the catalog until the group is sealed.
      - Needs filesystems to freeze (a host that cannot hold its state cannot share an instant); one freeze cycle only.
    type: dict
    suboptions:
      id:
        description: The group id (C(bg-...), from M(stillpoint.snapshots.ebs_snapshot_group)).
        type: str
        required: true
      instant:
        description:
          - The common instant, seconds since the epoch (UTC) on the controller's clock, given up front.
          - Exactly one of O(group.instant) and O(group.run_dir).
        type: float
      run_dir:
        description:
          - This member's private run directory, C(<base>/<group id>/<member>), made here (mode 0700; refused when it
            exists). Leftovers of killed runs under the same base (their module gone) are removed.
          - Exactly one of O(group.instant) and O(group.run_dir).
        type: path
      wait_s:
        description: With O(group.run_dir), how long the module waits, ready, for its instant before it refuses (at most 3600).
        type: float
        default: 300.0
      offset_s:
        description:
          - This host's clock minus the controller's (RV(stillpoint.snapshots.clock_offset#module:offset_s)); the
            instant is read on this host's clock as O(group.instant) plus this, so that the hosts' frozen intervals
            overlap in true time when their clocks differ. 0 trusts this host's clock.
        type: float
        default: 0.0
      lead_ms:
        description: How long before the instant the freeze starts (the kernel's freeze must be done by then); with
          O(group.run_dir) the controller's answer gives it.
        type: float
        default: 100.0
      hold_ms:
        description: How long after the instant the freeze is held, at least (covers the hosts' clock error); with
          O(group.run_dir) the controller's answer gives it.
        type: float
        default: 50.0
extends_documentation_fragment:
  - stillpoint.snapshots.application
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
  - stillpoint.snapshots.attributes
  - stillpoint.snapshots.attributes.actiongroup_aws
attributes:
  async:
    description: Supports being used with the C(async) keyword.
    support: partial
    details: Host mode only - the module runs once in the background and waits for completion itself (no progress
      lines); a group member started with O(group.run_dir) needs it.
  check_mode:
    support: full
    details: Resolves mountpoints and volumes and returns the plan (and the hooks that would run, RV(actions));
      freezes, runs and creates nothing.
  diff_mode:
    support: none
    details: Creates new snapshots; there is nothing to compare.
  idempotent:
    support: partial
    details: Each run takes a new set unless O(set_id) names an existing one.
notes:
  - Never freezes C(/) or the filesystem holding Ansible's remote tmp dir, the Python interpreter or the working dir.
  - "IAM: ec2:CreateSnapshots, ec2:CreateTags, ec2:DescribeInstances, ec2:DescribeVolumes, ec2:DescribeSnapshots,
    ec2:DeleteSnapshot (rollback)."
seealso:
  - module: stillpoint.snapshots.fsfreeze
  - module: stillpoint.snapshots.backup_set_info
  - module: stillpoint.snapshots.backup_set_prune
"""

EXAMPLES = r"""
- name: Snapshot the array under /data and /logs, filesystem-consistent
  stillpoint.snapshots.ebs_snapshot_set:
    mountpoints: [/data, /logs]
    name: nightly

- name: Application-consistent, the instance has no AWS access (controller makes the call)
  stillpoint.snapshots.ebs_snapshot_set:
    mode: controller
    region: eu-west-1
    mountpoints: [/var/lib/pgsql]
    pre_hook: [/usr/local/bin/db-quiesce]
    post_hook: [/usr/local/bin/db-resume]
    name: pg

- name: Application-consistent MariaDB set, its lock held across the freeze and the call
  stillpoint.snapshots.ebs_snapshot_set:
    mountpoints: [/var/lib/mysql, /var/log/mysql-binlog]
    application: mariadb
    application_login_unix_socket: /run/mysqld/mysqld.sock
    lock_wait_timeout: 5
    name: db

- name: The same from the controller (the host has no AWS access; its freeze guardian holds the lock)
  stillpoint.snapshots.ebs_snapshot_set:
    mode: controller
    region: eu-west-1
    mountpoints: [/var/lib/mysql, /var/log/mysql-binlog]
    application: mariadb
    application_login_unix_socket: /run/mysqld/mysqld.sock
    lock_wait_timeout: 5
    name: db

- name: Crash-consistent set of all data volumes, do not wait
  stillpoint.snapshots.ebs_snapshot_set:
    instance_id: i-0123456789abcdef0
    wait: false
"""

RETURN = r"""
set_id:
  description: Identifier of the set (tag C(stillpoint:set-id)).
  returned: always
  type: str
  sample: bs-20261121T130000Z-1a2b3c
state:
  description: V(complete) once every member completed and the set was marked; V(pending) when not waited for.
  returned: success
  type: str
level:
  description: Consistency level the set reached (V(crash), V(filesystem), V(application)); never more than achieved.
  returned: success
  type: str
instance_id:
  description: The instance.
  returned: always
  type: str
members:
  description: Members in catalog order.
  returned: success
  type: list
  elements: dict
  sample: [{index: 0, volume_id: vol-0a, device: /dev/sdf, snapshot_id: snap-0b}]
snapshot_ids:
  description: Snapshot ids of the set.
  returned: success
  type: list
  elements: str
freeze_window_ms:
  description: First freeze start to last thaw end, milliseconds (monotonic clock, measured by the guardian).
  returned: success
  type: float
freeze:
  description: Per-mount freeze times (C(freeze_ms)) of the last cycle.
  returned: success
  type: dict
thaw:
  description: Per-mount thaw times (C(thaw_ms)), C(window_ms), C(deadline_thawed).
  returned: success
  type: dict
create_calls:
  description: Number of CreateSnapshots calls made (more than one only after throttling).
  returned: success
  type: int
freeze_cycles:
  description: Freeze-call-thaw cycles the set took (1 unless O(max_freeze_cycles) allowed re-freezing after a
    throttled call); recorded in the catalog as C(stillpoint:freeze-cycles). C(cycles) is the same number.
  returned: success
  type: int
probes:
  description: The DryRun probes made before each freeze (C(cycle), C(attempts), C(throttled), C(waited_s)).
  returned: success
  type: list
  elements: dict
pacer:
  description: With O(pacer.enabled) - the seconds waited for the run's tokens, outside any freeze (C(waited_s) in
    all, C(waits)), and the bucket's C(size) and C(refill); in host mode the wait before the module started on the
    host (C(admitted)).
  returned: success, unless O(group) is set
  type: dict
call_ms:
  description: Duration of the successful CreateSnapshots call as seen by the caller, milliseconds; the freeze
    window is the kernel's freeze time (C(freeze.mounts[].freeze_ms)) plus this plus the thaw.
  returned: success
  type: float
progress:
  description: Progress samples while waiting (C(elapsed_s), per-snapshot C(progress) and C(states)).
  returned: when waited
  type: list
  elements: dict
application:
  description:
    - What the application quiescer (O(application)) did - C(kind), C(lock) (V(backup_stage), V(ftwrl),
      V(checkpoint), V(held_hook)), C(locked), C(confirmed), C(lock_wait_ms), C(held_ms), C(locked_at) and
      C(released_at) (epoch seconds), C(problem), and C(recorded) (C(server_version), C(binlog_file),
      C(binlog_position), C(gtid); for PostgreSQL C(checkpoint_lsn), C(redo_lsn), C(timeline),
      C(wal_lsn_before_freeze), C(wal_lsn_after_thaw), C(backend_pid), C(paths)).
  returned: when O(application) is set and the run got that far
  type: dict
group:
  description:
    - With O(group), this host's part of the consistency group - C(id), C(instant) (controller clock), C(offset_ms) and
      C(local_instant) (the instant on this host's clock), C(lead_ms), C(hold_ms), and
      C(frozen) (the frozen interval, C([frozen_at, thawing_at]), seconds since the epoch on this host's clock;
      measured after the freeze returned and before the thaw was asked, so inside the real frozen interval),
      C(window_ms), C(late_ms) (how late the freeze started after the lead before the instant),
      C(waited_ms) (how long this host waited, with its instant, for the freeze to start - the slack left of the group's
      arming time), C(waited_for_instant_ms) (with O(group.run_dir), how long it waited, ready, for the instant) and
      C(frozen_after_instant_ms) (negative when the freeze was done before the instant, as it should be), and
      C(presync) (the syncs made while it waited - C(syncs), C(total_ms), C(max_ms), C(last_ms), C(idle_ms) from the
      last one's end to the freeze, and C(lead_ms), how long before the instant the freeze started).
  returned: when O(group) is set and the freeze happened
  type: dict
plan:
  description: The resolved plan (members, exclusions, mountpoints to freeze, level expected).
  returned: always
  type: dict
actions:
  description:
    - The commands run on the host, in run order - O(pre_hook) and O(post_hook), each under coreutils C(timeout) -
      in the collection's one result shape; in check mode the hooks that would run, with C(planned=true).
    - Each also has C(stdout), C(stderr) and C(timed_out) once it ran.
  returned: success
  type: list
  elements: dict
  contains:
    what:
      description: What the command is for.
      type: str
      sample: pre-freeze hook
    cmd:
      description: The command (argv), as given.
      type: list
      elements: str
      sample: [/usr/local/bin/db-quiesce]
    rc:
      description: Its exit status (null when only planned).
      type: int
    ms:
      description: How long it ran, in milliseconds (null when only planned).
      type: float
    planned:
      description: True in check mode, where nothing runs.
      type: bool
"""

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CommandRunner
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._setplan import ARGUMENT_SPEC
from ansible_collections.stillpoint.snapshots.plugins.module_utils._snapshot_set import take_on_host


def main():
    module = AnsibleAWSModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = take_on_host(module, module.params, CommandRunner.from_module(module), protect_paths=[module.tmpdir],
                              check_mode=module.check_mode, log=module.log, warn=module.warn)
    except StillpointError as e:
        module.fail_json(**e.fail_kwargs())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
