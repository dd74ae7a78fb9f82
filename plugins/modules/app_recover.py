#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: app_recover
short_description: Start a restored database, wait for its recovery, check it and compare it with the catalog
version_added: 0.2.0
description:
  - The application step of a restore, run on the host after M(stillpoint.snapshots.array_host) has mounted the
    restored filesystems (the M(stillpoint.snapshots.array_host) start hook is then left empty; this module runs it).
  - Runs O(start_command) unless the server already answers, waits until the server answers and its recovery is
    over (MariaDB/MySQL - the server answers, which it does only after InnoDB applied its redo log, and no recovered
    transaction is still being rolled back; PostgreSQL - C(pg_isready), then C(SELECT pg_is_in_recovery()) false).
  - Reports the recovery work the server did, from the server's own log of this start (O(log_file), else the log the
    server names - C(@@log_error), C(pg_current_logfile())). MariaDB - the checkpoint LSN recovery started from and
    the end of the redo log (C(Starting crash recovery from checkpoint LSN), C(End of log at LSN)), pages to
    recover, the binary log's own crash recovery. PostgreSQL - C(redo starts at) and C(redo done at), bytes of WAL
    replayed, and C(pg_controldata) read before the start. Without a readable log it reports an upper bound from
    C(SHOW ENGINE INNODB STATUS) or C(pg_control_checkpoint()).
  - Runs the application's own check - C(mariadb-check --all-databases --check) (C(mysqlcheck) for MySQL);
    C(pg_amcheck --all --heapallindexed) when the server has the C(amcheck) extension available, else the check is
    reported skipped with the reason.
  - Compares the restored server with the set's record (C(stillpoint:app), the C(application) of a M(stillpoint.snapshots.backup_set_info) set record).
    MariaDB - the recorded binary log file ends at the recorded position and C(@@gtid_binlog_pos) equals the recorded
    GTID. PostgreSQL - C(pg_control) before the start holds the recorded checkpoint, REDO location and timeline;
    redo starts at the recorded REDO location and ends before the WAL position recorded after the thaw. A set taken
    without a quiescer records nothing; the comparison is then reported as V(null).
  - Fails when the server does not come up within O(recovery_timeout), when its check finds problems, or when the
    position differs from the record (O(compare_position)). The server is left running for inspection.
  - With O(server=private) (a restore drill, role C(restore_drill)) it starts no service; it starts a private server
    of the recorded kind on the drill's scratch copy (O(mountpoint_map)) and stops it by its PID at the end, also when
    anything failed (PostgreSQL - the description below; MariaDB/MySQL - the next one). The copy's filesystems
    holding the data are remounted read-write (the recovery writes to the copy), its symlinks into the set's
    filesystems (C(pg_wal), tablespaces) are repointed at the copy, the source
    server's C(postmaster.pid) the snapshot caught is removed, and the server runs as the owner of the data directory
    with a private configuration (no TCP listener, a unix socket in a private 0700 directory, no archiving, no
    synchronous standbys, no preloaded libraries). Its pid file and a marker (C(.stillpoint-drill-app/server.json) at
    the top of the copy's filesystem of the data) lie on the copy. The server binaries must match the copy's
    C(PG_VERSION).
  - O(server=private) for V(mariadb)/V(mysql) needs the paths the quiescer recorded (C(paths.data_directory),
    C(server_version); older sets lack them and are refused). Every recorded path (data directory, binary log, redo,
    InnoDB data and undo directories) is mapped onto the copy and refused outside the set; the copy's binary log
    index and C(DATA DIRECTORY) links (C(.isl), symlinks) naming the source's paths are repointed at the copy; the
    source's pid and socket files the snapshot caught are removed. C(mariadbd) (the recorded flavour and major.minor
    version, from C(/usr/sbin) or O(bin_dir)) runs detached as the data directory's owner with C(--no-defaults),
    C(--skip-networking), a socket in a private 0700 directory, its pid file and error log in
    C(.stillpoint-drill-app/) on the copy, C(--skip-slave-start), C(--event-scheduler=DISABLED),
    C(--skip-grant-tables) (the private socket is the access control; the drill holds no credentials) and the copy's
    binary log as the coordinator of InnoDB's crash recovery (it opens a new binary log file on the copy; the
    recorded file is not appended to). InnoDB's read-only mode is not used - its crash recovery must run. Stopped by
    SIGTERM, then SIGKILL.
  - With O(server=stop_private) it only stops a private server an earlier (killed) drill left running on the copies
    of O(mountpoint_map), found by that marker and its pid file, and only a process working in the copy's data
    directory.
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  application:
    description: The database of the restored set. Required unless O(server=stop_private).
    type: str
    choices: [mariadb, mysql, postgresql]
  server:
    description:
      - V(existing) - the restored host's own server, started by O(start_command) (a restore).
      - V(private) - a private server on a restore drill's scratch copy, started and stopped here.
      - V(stop_private) - only stop a private server a drill left running on the copies of O(mountpoint_map).
    type: str
    choices: [existing, private, stop_private]
    default: existing
  mountpoint_map:
    description:
      - With O(server=private) or O(server=stop_private), the drill's copies - recorded mountpoint to the scratch
        mountpoint of its copy (C(clone.mountpoint_map) of M(stillpoint.snapshots.drill_scratch)).
    type: dict
    default: {}
  stop_timeout:
    description: With O(server=private) or O(server=stop_private), seconds a clean shutdown may take before the next
      signal (PostgreSQL - SIGINT, then SIGQUIT, then SIGKILL; MariaDB/MySQL - SIGTERM, then SIGKILL).
    type: float
    default: 60
  record:
    description:
      - The set's application record from the catalog (C(application) of a
        M(stillpoint.snapshots.backup_set_info) set record); empty for a set taken without a quiescer.
    type: dict
    default: {}
  start_command:
    description:
      - Command (argv list, no shell) that starts the server (for example C([systemctl, start, mariadb])); run under
        coreutils C(timeout) with O(hook_timeout), only when the server does not answer yet. It must return once the
        server is launched (a service manager's start, C(pg_ctl start)); this module then waits for the recovery.
    type: list
    elements: str
    default: []
  hook_timeout:
    description: Seconds O(start_command) may run.
    type: float
    default: 60
  recovery_timeout:
    description: Seconds to wait for the server to answer and finish its recovery after the start.
    type: float
    default: 600
  log_file:
    description:
      - The server's log (MariaDB error log, PostgreSQL server log). Its part written by this start is read for the
        recovery work. Unset, the server's own setting is asked after the start and its last start read.
    type: path
  data_directory:
    description:
      - For V(postgresql), the data directory whose C(pg_control) is read before the start. Unset, the one the set
        recorded (C(paths.data_directory) of O(record)).
    type: path
  bin_dir:
    description: For V(postgresql), where C(pg_isready), C(pg_controldata) and C(pg_amcheck) are. Unset, E(PATH), then
      C(/usr/lib/postgresql/<newest>/bin). With O(server=private) for V(mariadb)/V(mysql), where C(mariadbd) (or
      C(mysqld)) is; unset, C(/usr/sbin), then E(PATH).
    type: path
  run_check:
    description: Run the application's own check (C(mariadb-check), C(pg_amcheck)).
    type: bool
    default: true
  check_timeout:
    description:
      - For V(mariadb) and V(mysql), seconds the whole C(mariadb-check --all-databases --check) run may take (under
        coreutils C(timeout)). Every table is checked in full (C(CHECK TABLE)); a run that does not finish within the
        budget is a failed check (it says so), never a partial pass. Unset, no limit.
    type: float
  check_install_missing:
    description:
      - For V(postgresql), let C(pg_amcheck) create the C(amcheck) extension in each checked database that lacks it
        (C(--install-missing), into C(pg_catalog)). C(template1) is then not checked, so that new databases do not
        inherit the extension. V(false) checks only databases that have it.
    type: bool
    default: true
  compare_position:
    description: Fail when the restored server's position differs from O(record). V(false) only reports it.
    type: bool
    default: true
extends_documentation_fragment:
  - stillpoint.snapshots.application
  - stillpoint.snapshots.attributes
attributes:
  check_mode:
    support: full
    details: Returns the RV(actions) that would run (C(planned=true)); runs nothing, not even a probe (the restored
      filesystems may not be mounted yet).
  diff_mode:
    support: none
  idempotent:
    support: full
    details: A server that already answers is not started again (C(changed=false)); it is still checked and compared,
      and its last start's recovery is read from its log.
notes:
  - Requires the right to start the service and to read the data directory and the logs; use C(become=true).
  - Tested against Debian 12's MariaDB 10.11 and PostgreSQL 15; the MySQL statements (C(@@global.gtid_executed)) are
    not proven against a MySQL server.
seealso:
  - module: stillpoint.snapshots.array_host
  - module: stillpoint.snapshots.backup_set_info
  - module: stillpoint.snapshots.ebs_snapshot_set
"""

EXAMPLES = r"""
- name: Start the restored MariaDB, wait for its recovery, check it, compare with the catalog
  stillpoint.snapshots.app_recover:
    application: mariadb
    record: "{{ restore_from.sets[0].application | default({}, true) }}"
    start_command: [systemctl, start, mariadb]
    application_login_unix_socket: /run/mysqld/mysqld.sock
    log_file: /var/log/mysql/error.log
  become: true
  register: recovered

- name: The same for PostgreSQL (peer authentication as postgres)
  stillpoint.snapshots.app_recover:
    application: postgresql
    record: "{{ restore_from.sets[0].application | default({}, true) }}"
    start_command: [systemctl, start, postgresql@15-main]
    application_login_user: postgres
    log_file: /var/log/postgresql/postgresql-15-main.log
  become: true
  become_user: postgres
"""

RETURN = r"""
changed:
  description: Whether the start hook ran.
  returned: always
  type: bool
application:
  description: The application.
  returned: unless server is stop_private
  type: str
  sample: postgresql
started:
  description: Whether the start hook ran.
  returned: unless server is stop_private
  type: bool
already_running:
  description: The server answered before the start hook (it was not run).
  returned: unless server is stop_private
  type: bool
ready_ms:
  description: Milliseconds from the start hook until the server answered and its recovery was over (null when not
    started here).
  returned: unless server is stop_private
  type: float
recovery:
  description:
    - The recovery work. C(source) (V(log), V(innodb_status), V(pg_control)), C(crash_recovery), C(start_lsn),
      C(end_lsn) (MariaDB integers, PostgreSQL C(X/Y) text), C(bytes) (redo/WAL between them), C(log_file);
      MariaDB also C(pages), C(binlog_recovery), C(prepared_transactions); PostgreSQL C(pg_control_before_start).
  returned: success
  type: dict
  sample: {source: log, crash_recovery: true, start_lsn: 0/1A72BE8, end_lsn: 0/1A877E8, bytes: 84992}
check:
  description: The application's own check. C(tool), C(status) (V(passed), V(failed), V(skipped)), C(reason) when
    skipped, C(problems), C(ms).
  returned: success
  type: dict
  sample: {tool: mariadb-check, status: passed, tables_ok: 34, problems: [], ms: 210.4}
position:
  description: C(recorded) (from O(record)), C(restored) (what the server reports), C(matches) (true, false, or null
    when nothing was recorded) and C(problems).
  returned: success
  type: dict
stopped:
  description: With O(server=private) or O(server=stop_private), the private servers stopped - C(pid), C(signals),
    C(ms), C(pid_file), C(kind), C(data_directory).
  returned: when server is private or stop_private
  type: list
  elements: dict
summary:
  description: With O(server=private), one line for a drill's verdict - V(passed) (or V(recovered, own check skipped))
    or V(failed), the recovery, the check, the recorded position against the restored one, the stop.
  returned: when server is private
  type: str
actions:
  description: What was done (in check mode, what would be done), in order, in the collection's action shape.
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils._app_quiesce import CONNECTION_ARGS
from ansible_collections.stillpoint.snapshots.plugins.module_utils._app_recover import recover
from ansible_collections.stillpoint.snapshots.plugins.module_utils._app_recover import recover_private
from ansible_collections.stillpoint.snapshots.plugins.module_utils._app_recover import stop_private
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            application=dict(type="str", choices=["mariadb", "mysql", "postgresql"]),
            server=dict(type="str", choices=["existing", "private", "stop_private"], default="existing"),
            mountpoint_map=dict(type="dict", default={}),
            stop_timeout=dict(type="float", default=60.0),
            record=dict(type="dict", default={}),
            start_command=dict(type="list", elements="str", default=[]),
            hook_timeout=dict(type="float", default=60.0),
            recovery_timeout=dict(type="float", default=600.0),
            log_file=dict(type="path"),
            data_directory=dict(type="path"),
            bin_dir=dict(type="path"),
            run_check=dict(type="bool", default=True),
            check_timeout=dict(type="float"),
            check_install_missing=dict(type="bool", default=True),
            compare_position=dict(type="bool", default=True),
            **CONNECTION_ARGS
        ),
        required_if=[("server", "existing", ["application"]), ("server", "private", ["application", "mountpoint_map"]),
                     ("server", "stop_private", ["mountpoint_map"])],
        supports_check_mode=True,
    )
    p = module.params
    try:
        if p["server"] == "stop_private":
            out = stop_private(p["mountpoint_map"], p["stop_timeout"], check_mode=module.check_mode)
            out["msg"] = "stopped %d private server(s) on the copies" % len(out["stopped"]) if out["changed"] else \
                "no private server on the copies"
            module.exit_json(**out)
        if p["server"] == "private":
            module.exit_json(**recover_private(module.run_command, p, p["mountpoint_map"], record=p["record"],
                                               check_mode=module.check_mode, which=module.get_bin_path))
        module.exit_json(**recover(module.run_command, p, record=p["record"], check_mode=module.check_mode,
                                   which=module.get_bin_path))
    except StillpointError as exc:
        module.fail_json(**exc.fail_kwargs())


if __name__ == "__main__":
    main()
