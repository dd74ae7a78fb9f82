# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A restore drill's private MariaDB on a copy: what the quiescer records for it (the server's paths and InnoDB
sizes, within the catalog's tags), the server binary of the recorded version, the private command line, and the
copy made startable (paths mapped onto the copy and refused outside the set, the binary log index and DATA DIRECTORY
links repointed, the source's pid and socket files removed, the marker written) on a real directory tree. The real
drill is tests/integration/test_drill_app_mariadb.py."""

import json
import os
import socket

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _app_recover as ar
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _mariadb
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

# INFO_SQL's answer of Debian 12's MariaDB 10.11 as tests/support/dbservers.py starts it (data and binlog on two
# filesystems, redo in the data directory, innodb_data_home_dir and innodb_undo_directory unset)
INFO = "17\t10.11.19-MariaDB-0+deb12u1-log\t/srv/a/mysql/\t1\t/srv/b/binlog/bin\t./\t/srv/b/binlog/bin.index\t\t\t16384\t8388608"
VERSION_OUT = "/usr/sbin/mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64 (Debian 12)\n"


def test_server_record_keeps_what_a_private_server_needs_and_leaves_the_defaults_out():
    conn, version, rec = _mariadb.server_record(INFO.split("\t"))
    assert conn == 17 and version == "10.11.19-MariaDB-0+deb12u1-log"
    assert rec == {"server_version": version, "paths": {"data_directory": "/srv/a/mysql",
                                                        "log_bin_basename": "/srv/b/binlog/bin"},
                   "innodb": {"page_size": 16384, "log_file_size": 8388608}}
    cols = INFO.replace("\t./\t", "\t/srv/c/redo\t").replace("bin.index\t\t\t", "idx\tdata\t/srv/c/undo\t").split("\t")
    paths = _mariadb.server_record(cols)[2]["paths"]
    assert paths["innodb_log_group_home_dir"] == "/srv/c/redo" and paths["innodb_undo_directory"] == "/srv/c/undo"
    assert paths["log_bin_index"] == "/srv/b/binlog/idx" and paths["innodb_data_home_dir"] == "/srv/a/mysql/data"
    # no binary log: nothing of it recorded
    no_binlog = INFO.split("\t")
    no_binlog[3] = "0"
    assert _mariadb.server_record(no_binlog)[2]["paths"] == {"data_directory": "/srv/a/mysql"}


def test_a_record_too_long_for_the_catalog_drops_the_drill_fields_never_the_lock():
    _c, _v, server = _mariadb.server_record(INFO.split("\t"))
    record = dict(server, kind="mariadb", lock="backup_stage", confirmed=True, held_ms=12.5, binlog_file="bin.000001",
                  binlog_position=4, gtid="0-1-5")
    assert _mariadb.fit_record(record) == record
    assert len(_catalog.encode_json(_catalog.K_APP, record)) <= 2
    long_record = dict(record, paths=dict(record["paths"], innodb_undo_directory="/srv/" + "u" * 2000))
    fitted = _mariadb.fit_record(long_record)
    assert "paths" not in fitted and "innodb" not in fitted and fitted["drill"].startswith("paths not recorded")
    assert {k: fitted[k] for k in ("kind", "lock", "confirmed", "binlog_file", "binlog_position", "gtid")} == {
        k: record[k] for k in ("kind", "lock", "confirmed", "binlog_file", "binlog_position", "gtid")}
    _catalog.encode_json(_catalog.K_APP, fitted)  # fits


def test_server_binary_of_the_recorded_version_or_refused(tmp_path):
    (tmp_path / "mariadbd").write_text("#!/bin/sh\n")
    calls = []

    def run(argv, env=True):
        calls.append(argv)
        return 0, VERSION_OUT, ""
    path, version = ar.mariadb_server_bin("10.11.6-MariaDB-log", {"bin_dir": str(tmp_path)}, run, lambda n, required: None)
    assert path == str(tmp_path / "mariadbd") and version.startswith("10.11.19-MariaDB")
    assert calls[0] == [str(tmp_path / "mariadbd"), "--version"]
    with pytest.raises(StillpointError, match="no mariadb 10.6 server .* a crash recovery across versions"):
        ar.mariadb_server_bin("10.6.21-MariaDB", {"bin_dir": str(tmp_path)}, run, lambda n, required: None)
    with pytest.raises(StillpointError, match="no mysql 8.0 server"):
        ar.mariadb_server_bin("8.0.36", {"bin_dir": str(tmp_path)}, run, lambda n, required: None)


def test_private_command_line():
    paths = {"data_directory": "/c/a/mysql", "log_bin_basename": "/c/b/binlog/bin", "innodb_undo_directory": "/c/u"}
    opts = ar.mariadb_private_options("mariadb", "/c/a/mysql", "/c/a/run", "/tmp/s", "mysql", paths,
                                      {"page_size": 16384, "log_file_size": 8388608})
    assert opts[0] == "--no-defaults"  # no option file of the scratch host (its own server's datadir, a password)
    for must in ("--skip-networking", "--skip-slave-start", "--skip-grant-tables", "--event-scheduler=DISABLED",
                 "--user=mysql", "--socket=/tmp/s/mysqld.sock", "--pid-file=/c/a/run/mariadbd.pid",
                 "--log-error=/c/a/run/error.log", "--log-bin=/c/b/binlog/bin", "--log-bin-index=/c/b/binlog/bin.index",
                 "--innodb-undo-directory=/c/u", "--innodb-page-size=16384", "--innodb-log-file-size=8388608"):
        assert must in opts, must
    assert not [o for o in opts if "read-only" in o or "port" in o or "bind" in o]  # InnoDB must recover
    no_binlog = ar.mariadb_private_options("mysql", "/c/a", "/r", "/s", "mysql", {"data_directory": "/c/a"}, {})
    assert "--skip-log-bin" in no_binlog and "--skip-replica-start" in no_binlog


class Runs:
    def __init__(self):
        self.calls = []

    def __call__(self, argv, environ_update=None):
        self.calls.append(list(argv))
        if argv[-1] == "--version":
            return 0, VERSION_OUT, ""
        return 1, "", "not expected here"


def a_copy(tmp_path):
    """A copy as the drill mounts it: the data directory on one scratch filesystem, the binary log on another."""
    a, b = tmp_path / "copy" / "srv" / "a", tmp_path / "copy" / "srv" / "b"
    datadir, binlog = a / "mysql", b / "binlog"
    (datadir / "mysql").mkdir(parents=True)
    (datadir / "w").mkdir()
    binlog.mkdir(parents=True)
    (binlog / "bin.000001").write_bytes(b"\xfebin")
    (binlog / "bin.index").write_text("/srv/b/binlog/bin.000001\n")
    (datadir / "w" / "t.isl").write_text("/srv/b/tables/w/t.ibd\n")
    (datadir / "source-host.pid").write_text("999999\n")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(datadir / "mysql.sock"))
    sock.close()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "mariadbd").write_text("#!/bin/sh\n")
    mp = {"/srv/a": str(a), "/srv/b": str(b)}
    record = {"kind": "mariadb", "server_version": "10.11.19-MariaDB-0+deb12u1-log", "binlog_file": "bin.000001",
              "binlog_position": 4, "gtid": "", "innodb": {"page_size": 16384, "log_file_size": 8388608},
              "paths": {"data_directory": "/srv/a/mysql", "log_bin_basename": "/srv/b/binlog/bin"}}
    return mp, record


def test_prepare_makes_the_copy_startable_and_never_names_the_source(tmp_path):
    mp, record = a_copy(tmp_path)
    runs = Runs()
    ctx = ar.Recovery(runs, {"application": "mariadb", "bin_dir": str(tmp_path / "bin")}, record)
    marker = ar.prepare_mariadb(ctx, mp)
    try:
        prepared_as_asked(tmp_path, mp, ctx, runs, marker)
    finally:
        os.rmdir(marker["socket_dir"])


def prepared_as_asked(tmp_path, mp, ctx, runs, marker):
    datadir, binlog = mp["/srv/a"] + "/mysql", mp["/srv/b"] + "/binlog"
    assert (tmp_path / "copy" / "srv" / "b" / "binlog" / "bin.index").read_text() == binlog + "/bin.000001\n"
    assert (tmp_path / "copy" / "srv" / "a" / "mysql" / "w" / "t.isl").read_text() == mp["/srv/b"] + "/tables/w/t.ibd\n"
    assert not os.path.exists(datadir + "/source-host.pid") and not os.path.exists(datadir + "/mysql.sock")
    run_dir = mp["/srv/a"] + "/" + ar.RUN_DIR
    assert marker["pid_file"] == run_dir + "/mariadbd.pid" and marker["data_directory"] == datadir
    assert marker["signals"] == ["SIGTERM", "SIGKILL"] and oct(os.stat(run_dir).st_mode & 0o777) == "0o700"
    assert oct(os.stat(marker["socket_dir"]).st_mode & 0o777) == "0o700"
    with open(run_dir + "/" + ar.MARKER) as handle:
        assert json.load(handle) == marker
    p = ctx.params
    assert p["start_detached"] is True and p["start_command"][0] == str(tmp_path / "bin" / "mariadbd")
    assert "--log-bin=%s/bin" % binlog in p["start_command"] and "--datadir=%s" % datadir in p["start_command"]
    assert not [a for a in p["start_command"] if "=/srv/" in a or a.startswith("/srv/")]  # nothing of the source
    assert p["application_config_file"] == "/dev/null" and p["application_login_unix_socket"].startswith(
        marker["socket_dir"])
    whats = [a["what"] for a in ctx.actions]
    assert any(w.startswith("repoint the copy's binary log index") for w in whats)
    assert any("source-host.pid" in w for w in whats) and any("mysql.sock" in w for w in whats)
    assert [c for c in runs.calls if c[-1] != "--version"] == []  # the test's tree is read-write: no remount


def test_prepare_refuses_a_path_outside_the_set(tmp_path):
    mp, record = a_copy(tmp_path)
    ctx = ar.Recovery(Runs(), {"application": "mariadb", "bin_dir": str(tmp_path / "bin")},
                      dict(record, paths=dict(record["paths"], innodb_log_group_home_dir="/var/lib/redo")))
    with pytest.raises(StillpointError, match="innodb log group home dir /var/lib/redo lies on none of the set's"):
        ar.prepare_mariadb(ctx, mp)
    (tmp_path / "copy" / "srv" / "b" / "binlog" / "bin.index").write_text("/var/log/mysql/bin.000001\n")
    ctx = ar.Recovery(Runs(), {"application": "mariadb", "bin_dir": str(tmp_path / "bin")}, record)
    with pytest.raises(StillpointError, match="binary log index .* names /var/log/mysql/bin.000001, outside"):
        ar.prepare_mariadb(ctx, mp)
    assert not os.path.exists(mp["/srv/a"] + "/" + ar.RUN_DIR)  # nothing written, nothing started


def test_a_detached_start_writes_its_pid_on_the_copy_at_once(tmp_path):
    pid_file = tmp_path / "mariadbd.pid"
    pid_file.write_text("")

    class Proc:
        pid = 4242

        def poll(self):
            return None
    started = []
    ctx = ar.Recovery(Runs(), {"application": "mariadb", "start_command": ["/usr/sbin/mariadbd", "--no-defaults"],
                               "start_detached": True, "start_pid_file": str(pid_file)},
                      spawn=lambda argv: started.append(argv) or Proc())
    assert ctx.start(lambda: False) is True
    assert started == [["/usr/sbin/mariadbd", "--no-defaults"]] and pid_file.read_text() == "4242\n"
    assert ctx.actions[-1]["what"] == "start the server detached (PID 4242)" and ctx.result["started"] is True
