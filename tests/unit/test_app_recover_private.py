# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_app_recover's private server on a restore drill's copy: the path mapping onto the copy, the settings that keep
the server private, stopping by PID only a process that works in the copy's data directory (real ``sleep``
processes, stopped by their PID), the marker a killed drill leaves, the refusals, and the drill's summary line. The
real PostgreSQL drill is tests/integration/test_drill_app.py."""

import json
import signal
import subprocess
import sys

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _app_recover as ar
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.modules import app_recover
from tests.unit.utils import run_module

MAP = {"/srv/pg": "/mnt/d/bs-1/srv/pg", "/srv/pg/wal": "/mnt/d/bs-1/srv/pg/wal", "/": "/mnt/d/bs-1"}


def test_paths_map_onto_the_copy_by_the_longest_recorded_mountpoint():
    assert ar.scratch_path("/srv/pg/data", MAP) == "/mnt/d/bs-1/srv/pg/data"
    assert ar.scratch_path("/srv/pg/wal/x", MAP) == "/mnt/d/bs-1/srv/pg/wal/x"
    assert ar.scratch_path("/srv/pg", MAP) == "/mnt/d/bs-1/srv/pg"
    assert ar.scratch_path("/srv/pgother", {"/srv/pg": "/c"}) is None
    assert ar.scratch_mount("/mnt/d/bs-1/srv/pg/wal/0001", MAP) == "/mnt/d/bs-1/srv/pg/wal"
    assert ar.scratch_mount("/var/lib/x", {"/srv/pg": "/c"}) is None


def test_symlinks_repointed_at_the_copy_or_refused():
    only = {"/srv/pg": "/mnt/d/bs-1/srv/pg"}
    assert ar.repoint("/srv/pg/wal", only) == "/mnt/d/bs-1/srv/pg/wal"  # the source's pg_wal: onto the copy
    assert ar.repoint("/mnt/d/bs-1/srv/pg/wal", only) == "/mnt/d/bs-1/srv/pg/wal"  # a re-run: already there
    assert ar.repoint("../wal", only) == "../wal"  # relative: inside the copy
    assert ar.repoint("/var/lib/postgresql/wal", only) is None  # outside the set: refused


def test_private_settings_keep_the_server_off_the_network_and_away_from_the_source():
    settings = dict(s.split("=", 1) for s in ar.pg_private_settings("/c/run", "/tmp/sock"))
    assert settings["listen_addresses"] == "" and settings["unix_socket_directories"] == "/tmp/sock"
    assert settings["archive_mode"] == "off" and settings["synchronous_standby_names"] == ""
    assert settings["shared_preload_libraries"] == "" and settings["external_pid_file"] == ""
    assert settings["hba_file"] == "/c/run/pg_hba.conf" and settings["config_file"] == "/c/run/postgresql.conf"


def test_postmaster_pid_file():
    # the first lines of a PostgreSQL 15 postmaster.pid
    text = "22907\n/tmp/stillpoint-drill-root-x/bs-1/srv/pg/data\n1764858169\n5432\n/tmp/stillpoint-drill-app-abc\n\n"
    assert ar.parse_pid_file(text) == (22907, "/tmp/stillpoint-drill-root-x/bs-1/srv/pg/data")
    assert ar.parse_pid_file("") == (None, None)


def sleeper(cwd):
    return subprocess.Popen(["sleep", "60"], cwd=str(cwd))


def test_stop_server_stops_only_a_process_working_in_the_copy(tmp_path):
    datadir, elsewhere = tmp_path / "data", tmp_path / "other"
    datadir.mkdir()
    elsewhere.mkdir()
    ours, stranger = sleeper(datadir), sleeper(elsewhere)
    try:
        pid_file = datadir / "postmaster.pid"
        pid_file.write_text("%d\n%s\n" % (stranger.pid, datadir))
        with pytest.raises(StillpointError, match="refusing to signal it"):
            ar.stop_server(str(pid_file), str(datadir), ("SIGINT",))
        assert stranger.poll() is None  # never signalled
        pid_file.write_text("%d\n%s\n" % (ours.pid, datadir))
        got = ar.stop_server(str(pid_file), str(datadir), ("SIGINT", "SIGKILL"), timeout=5)
        assert got["pid"] == ours.pid and got["signals"] == ["SIGINT"]
        assert ours.wait(timeout=5) == -signal.SIGINT
        assert ar.stop_server(str(pid_file), str(datadir), ("SIGINT",)) is None  # gone: nothing to do
        assert ar.stop_server(str(tmp_path / "none.pid"), str(datadir), ("SIGINT",)) is None
    finally:
        for proc in (ours, stranger):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_stop_server_escalates_when_the_first_signal_is_ignored(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                             "print(flush=True); time.sleep(60)"], cwd=str(tmp_path), stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()  # SIGINT is ignored from now on
        (tmp_path / "pid").write_text("%d\n" % proc.pid)
        got = ar.stop_server(str(tmp_path / "pid"), str(tmp_path), ("SIGINT", "SIGKILL"), timeout=0.5)
        assert got["signals"] == ["SIGINT", "SIGKILL"] and proc.wait(timeout=5) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stop_private_finds_a_killed_drills_server_by_its_marker(tmp_path):
    copy = tmp_path / "copy"
    data = copy / "pg" / "data"
    data.mkdir(parents=True)
    (copy / ar.RUN_DIR).mkdir()
    sock = tmp_path / (ar.SOCKET_PREFIX + "x")
    sock.mkdir()
    proc = sleeper(data)
    try:
        (data / "postmaster.pid").write_text("%d\n%s\n" % (proc.pid, data))
        marker = {"kind": "postgresql", "data_directory": str(data), "pid_file": str(data / "postmaster.pid"),
                  "socket_dir": str(sock), "signals": ["SIGINT", "SIGQUIT", "SIGKILL"]}
        (copy / ar.RUN_DIR / ar.MARKER).write_text(json.dumps(marker))
        mp_map = {"/srv": str(copy)}
        planned = ar.stop_private(mp_map, check_mode=True)
        assert planned["changed"] is False and len(planned["planned"]) == 1 and proc.poll() is None
        got = ar.stop_private(mp_map, timeout=5)
        assert got["changed"] is True and [s["pid"] for s in got["stopped"]] == [proc.pid]
        assert proc.wait(timeout=5) == -signal.SIGINT
        assert not sock.exists() and not (copy / ar.RUN_DIR / ar.MARKER).exists()
        assert ar.stop_private(mp_map) == {"changed": False, "stopped": [], "planned": []}  # converged
        # a marker naming a path outside the copies is refused
        (copy / ar.RUN_DIR / ar.MARKER).write_text(json.dumps(dict(marker, pid_file="/run/postgresql/x.pid")))
        with pytest.raises(StillpointError, match="outside the drill's copies"):
            ar.stop_private(mp_map)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class Commands:
    def __init__(self, monkeypatch, replies):
        self.replies, self.calls = list(replies), []
        monkeypatch.setattr(app_recover.AnsibleModule, "run_command", self.run)

    def run(self, argv, **kwargs):
        self.calls.append(argv)
        assert self.replies, "unexpected command %s" % argv
        return self.replies.pop(0)


def a_copy(tmp_path, version="99"):
    data = tmp_path / "copy" / "pg" / "data"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text(version + "\n")
    return {"/srv": str(tmp_path / "copy")}


def test_module_refuses_a_copy_without_matching_server_binaries(monkeypatch, tmp_path):
    bins = tmp_path / "bin"
    bins.mkdir()
    for name in ("postgres", "pg_ctl", "psql"):
        (bins / name).write_text("#!/bin/sh\n")
    # every candidate (bin_dir, /usr/lib/postgresql/99/bin, pg_ctl's directory in PATH) answers 15
    cmds = Commands(monkeypatch, [(0, "postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)\n", "")] * 3)
    res = run_module(monkeypatch, app_recover.main, {
        "server": "private", "application": "postgresql", "mountpoint_map": a_copy(tmp_path),
        "bin_dir": str(bins), "application_client": str(bins / "psql"),
        "record": {"kind": "postgresql", "paths": {"data_directory": "/srv/pg/data"}, "checkpoint_lsn": "0/1"}})
    assert res["failed"] and "PostgreSQL 99 cluster (PG_VERSION) and this host has no PostgreSQL 99 server" in res["msg"]
    assert res["summary"].startswith("failed: ") and res["summary"].endswith("no server left running")
    assert cmds.calls[0] == [str(bins / "postgres"), "--version"]
    assert all(c[-1] == "--version" for c in cmds.calls)  # nothing started, nothing remounted
    assert not (tmp_path / "copy" / ar.RUN_DIR).exists()


def test_module_refuses_what_it_cannot_start_privately(monkeypatch, tmp_path):
    cmds = Commands(monkeypatch, [])
    res = run_module(monkeypatch, app_recover.main, {
        "server": "private", "application": "mariadb", "mountpoint_map": a_copy(tmp_path), "record": {"kind": "mariadb"}})
    # a MariaDB set taken before the quiescer recorded the server's paths: nothing to start from
    assert res["failed"] and "names no data directory or server version" in res["msg"], res["msg"]
    res = run_module(monkeypatch, app_recover.main, {
        "server": "private", "application": "postgresql", "mountpoint_map": a_copy(tmp_path / "b"),
        "record": {"kind": "postgresql"}})
    assert res["failed"] and "names no data directory" in res["msg"]
    assert cmds.calls == []


def test_module_check_mode_plans_the_private_server(monkeypatch, tmp_path):
    cmds = Commands(monkeypatch, [])
    (tmp_path / "psql").write_text("#!/bin/sh\n")
    res = run_module(monkeypatch, app_recover.main, {
        "server": "private", "application": "postgresql", "mountpoint_map": a_copy(tmp_path),
        "application_client": str(tmp_path / "psql"),
        "record": {"kind": "postgresql", "paths": {"data_directory": "/srv/pg/data"}}}, check_mode=True)
    assert not res.get("failed") and cmds.calls == []
    whats = [a["what"] for a in res["actions"]]
    assert whats[0].startswith("stop a private server an earlier drill left") and whats[-1].startswith("stop it by")
    assert all(a["planned"] for a in res["actions"]) and not (tmp_path / "copy" / ar.RUN_DIR).exists()


def test_module_stop_private_without_a_server_changes_nothing(monkeypatch, tmp_path):
    res = run_module(monkeypatch, app_recover.main, {"server": "stop_private", "mountpoint_map": a_copy(tmp_path)})
    assert res["changed"] is False and res["stopped"] == [] and res["msg"] == "no private server on the copies"


def test_wait_fails_at_once_when_the_watch_says_the_server_is_gone():
    ctx = ar.Recovery(lambda argv, environ_update=None: (1, "", ""), {"application": "postgresql"}, sleep=lambda s: None)
    ctx.watch = lambda: "PANIC:  could not locate a valid checkpoint record"
    with pytest.raises(StillpointError, match="the server is gone .PANIC:  could not locate a valid checkpoint"):
        ctx.wait("wait until the server accepts connections", lambda: (False, "not accepting"))


def test_drill_summary_line():
    out = {"application": "postgresql", "ready_ms": 914.6,
           "actions": [{"what": "remount the scratch copy /mnt/d/bs-1/srv read-write (the recovery writes to the copy)"}],
           "recovery": {"crash_recovery": True, "bytes": 139448, "start_lsn": "0/1A103D8", "end_lsn": "0/1A32490"},
           "check": {"tool": "pg_amcheck", "status": "passed", "problems": []},
           "position": {"matches": True, "problems": [],
                        "recorded": {"checkpoint_lsn": "0/1A1FDA0", "redo_lsn": "0/1A103D8", "timeline": 1,
                                     "wal_lsn_after_thaw": "0/1A324B8"},
                        "restored": {"pg_control_before_start": {"checkpoint_lsn": "0/1A1FDA0", "redo_lsn": "0/1A103D8",
                                                                 "timeline": 1},
                                     "redo_start_lsn": "0/1A103D8", "redo_end_lsn": "0/1A32490"}}}
    line = ar.drill_summary(out, [{"pid": 22907, "signals": ["SIGINT"]}])
    assert line.startswith("passed: private postgresql server on the scratch copy (remounted read-write: "
                           "/mnt/d/bs-1/srv), ready in 914.6 ms, crash recovery replayed 139448 bytes")
    assert "pg_amcheck passed; position matches (recorded checkpoint 0/1A1FDA0" in line
    assert line.endswith("stopped PID 22907 (SIGINT)")
    skipped = dict(out, check={"tool": "pg_amcheck", "status": "skipped", "reason": "no amcheck"})
    assert ar.drill_summary(skipped, []).startswith("recovered, own check skipped: ")
