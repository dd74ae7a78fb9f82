# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_app_recover's parsers on real captured output (tests/unit/fixtures/app_recover: a MariaDB 10.11 error log with a
clean start then a crash recovery, its SHOW BINARY LOGS / SHOW ENGINE INNODB STATUS / mariadb-check output; a
PostgreSQL 15 server log with a clean start then a crash recovery and pg_controldata of the crash image), and the
app_recover module with an ordered sequence of (rc, stdout, stderr) for run_command. The real servers are in
tests/integration/test_app_mariadb.py and test_app_postgresql.py."""

import json
import os

import pytest
from ansible.module_utils import basic

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _app_recover as ar
from ansible_collections.stillpoint.snapshots.plugins.modules import app_recover
from tests.unit.utils import run_module

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "app_recover")
SECRET = "s3cret-never-shown"


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


def test_mariadb_log_of_the_last_start_gives_the_redo_replayed():
    text = ar.Recovery.read_log(os.path.join(FIXTURES, "mariadb-error.log"), None, ar.MARIADB_START_RE)
    assert text.count("Starting MariaDB") == 1  # the crash start only, not the clean one before it
    out = ar.parse_mariadb_log(text)
    assert out["crash_recovery"] is True and out["source"] == "log"
    assert out["start_lsn"] < out["end_lsn"] and out["bytes"] == out["end_lsn"] - out["start_lsn"]
    assert out["pages"] > 0 and out["binlog_recovery"].endswith("/bin")


def test_mariadb_clean_start_has_no_redo():
    text = fixture("mariadb-error.log")
    first = text[:text.index("Starting MariaDB", 10)]
    out = ar.parse_mariadb_log(first)
    assert out["crash_recovery"] is False and out["bytes"] == 0 and out["binlog_recovery"] is None


def test_mariadb_status_binary_logs_and_check():
    assert ar.parse_binary_logs(fixture("mariadb-binary-logs.txt")) == {"bin.000001": 77027, "bin.000002": 336}
    status = ar.parse_innodb_status(fixture("mariadb-innodb-status.txt"))
    assert set(status) == {"lsn", "checkpoint"} and status["checkpoint"] <= status["lsn"]
    ok, problems = ar.parse_mariadb_check(0, fixture("mariadb-check.txt"))
    assert ok >= 30 and problems == []


def test_mariadb_check_problems_are_reported():
    # the shape mariadb-check prints for a damaged table (table name line, then "error :" lines)
    text = "w.a                                                OK\nw.b\nWarning  : InnoDB: Index 'PRIMARY' is marked " \
           "as corrupted\nerror    : Corrupt\n"
    ok, problems = ar.parse_mariadb_check(2, text)
    assert ok == 1 and problems == ["w.b: Warning  : InnoDB: Index 'PRIMARY' is marked as corrupted",
                                    "w.b: error    : Corrupt"]
    assert ar.parse_mariadb_check(1, "")[1] == ["exit status 1"]


def test_postgresql_log_and_controldata():
    text = ar.Recovery.read_log(os.path.join(FIXTURES, "postgresql-server.log"), None, ar.PG_START_RE)
    out = ar.parse_pg_log(text)
    assert out == {"source": "log", "crash_recovery": True, "start_lsn": "0/1500790", "end_lsn": "0/19450C8",
                   "bytes": 0x19450C8 - 0x1500790}
    clean = fixture("postgresql-server.log").split("\n")[:5]
    assert ar.parse_pg_log("\n".join(clean))["crash_recovery"] is False
    control = ar.parse_controldata(fixture("pg_controldata.txt"))
    assert control["Database cluster state"] == "in production"
    assert control["Latest checkpoint location"] == control["Latest checkpoint's REDO location"] == "0/1500718"


@pytest.mark.parametrize("start,rec,ok", [
    ("0/1B0E200", {"redo_lsn": "0/1B0E200", "checkpoint_lsn": "0/1B19CA0"}, True),
    ("0/1B0E300", {"redo_lsn": "0/1B0E200", "checkpoint_lsn": "0/1B19CA0"}, False),
    ("0/1500790", {"redo_lsn": "0/1500718", "checkpoint_lsn": "0/1500718"}, True),  # the record after the checkpoint
    ("0/1600000", {"redo_lsn": "0/1500718", "checkpoint_lsn": "0/1500718"}, False),
])
def test_redo_start_against_the_record(start, rec, ok):
    assert ar.redo_starts_at_record(start, rec) is ok


class Commands:
    """run_command replaced by an ordered sequence of (rc, stdout, stderr); the calls are kept."""

    def __init__(self, monkeypatch, replies):
        self.replies = list(replies)
        self.calls = []
        monkeypatch.setattr(basic.AnsibleModule, "run_command", self)

    def __call__(self, argv, environ_update=None, **_kw):
        self.calls.append((list(argv), dict(environ_update or {})))
        assert self.replies, "unexpected command %s" % argv
        return self.replies.pop(0)


@pytest.fixture
def bins(tmp_path):
    """A client and the check/PostgreSQL programs beside it (never run: the commands are the sequence's)."""
    for name in ("mariadb", "mariadb-check", "psql", "pg_isready", "pg_controldata", "pg_amcheck"):
        (tmp_path / name).write_text("#!/bin/sh\n")
    return tmp_path


def mariadb_args(bins, **extra):
    args = {"application": "mariadb", "start_command": ["systemctl", "start", "mariadb"],
            "application_client": str(bins / "mariadb"), "application_login_user": "root",
            "application_login_unix_socket": "/run/mysqld/mysqld.sock", "application_login_password": SECRET,
            "record": {"kind": "mariadb", "lock": "backup_stage", "confirmed": True, "binlog_file": "bin.000001",
                       "binlog_position": 77027, "gtid": "0-1-304"}}
    args.update(extra)
    return args


def mariadb_replies(gtid="0-1-304"):
    return [(1, "", "ERROR 2002 (HY000): Can't connect"),  # not running yet
            (0, "", ""),  # start hook
            (0, "1\n", ""),  # answers
            (0, "0\n", ""),  # nothing rolling back
            (0, "%s\t/var/lib/mysql/\n" % os.path.join(FIXTURES, "mariadb-error.log"), ""),
            (0, fixture("mariadb-check.txt"), ""),
            (0, fixture("mariadb-binary-logs.txt"), ""),
            (0, gtid + "\n", "")]


def test_module_mariadb_starts_waits_checks_and_compares(monkeypatch, bins):
    cmds = Commands(monkeypatch, mariadb_replies())
    res = run_module(monkeypatch, app_recover.main, mariadb_args(bins))
    assert not res.get("failed"), res
    assert res["changed"] is True and res["started"] is True
    assert res["recovery"]["crash_recovery"] is True and res["recovery"]["bytes"] > 0
    assert res["check"]["status"] == "passed" and res["check"]["tool"] == "mariadb-check"
    assert res["position"]["matches"] is True and res["position"]["restored"]["binlog_position"] == 77027
    start = cmds.calls[1][0]
    assert start[-3:] == ["systemctl", "start", "mariadb"] and "--kill-after=5" in start
    check = cmds.calls[5][0]
    assert check[0] == str(bins / "mariadb-check") and check[-2:] == ["--all-databases", "--check"]
    # the password only ever in the client's environment
    assert all(SECRET not in " ".join(argv) for argv, _env in cmds.calls)
    assert cmds.calls[0][1]["MYSQL_PWD"] == SECRET and "MYSQL_PWD" not in cmds.calls[1][1]
    assert SECRET not in json.dumps(res)


def test_module_mariadb_position_mismatch_fails_and_leaves_it_running(monkeypatch, bins):
    Commands(monkeypatch, mariadb_replies(gtid="0-1-310"))
    res = run_module(monkeypatch, app_recover.main, mariadb_args(bins))
    assert res["failed"] and "differs from the catalog's record" in res["msg"] and "left running" in res["msg"]
    assert "GTID position '0-1-310', the record says '0-1-304'" in res["msg"]
    assert res["app_recover"]["check"]["status"] == "passed"


def test_module_mariadb_already_running_is_not_started(monkeypatch, bins):
    replies = mariadb_replies()
    replies[0:2] = [(0, "1\n", "")]
    cmds = Commands(monkeypatch, replies)
    res = run_module(monkeypatch, app_recover.main, mariadb_args(bins))
    assert res["changed"] is False and res["already_running"] is True and res["position"]["matches"] is True
    assert not any("systemctl" in argv for argv, _env in cmds.calls)


def test_module_check_mode_runs_nothing(monkeypatch, bins):
    cmds = Commands(monkeypatch, [])
    res = run_module(monkeypatch, app_recover.main, mariadb_args(bins), check_mode=True)
    assert cmds.calls == [] and res["changed"] is True
    assert all(a["planned"] and a["rc"] is None for a in res["actions"])
    assert res["actions"][0]["cmd"] == ["systemctl", "start", "mariadb"]


def test_module_refuses_another_applications_record(monkeypatch, bins):
    cmds = Commands(monkeypatch, [])
    res = run_module(monkeypatch, app_recover.main, mariadb_args(bins, record={"kind": "postgresql"}))
    assert res["failed"] and "record is of a postgresql server" in res["msg"] and cmds.calls == []


def pg_args(bins, **extra):
    args = {"application": "postgresql", "start_command": ["systemctl", "start", "postgresql@15-main"],
            "application_client": str(bins / "psql"), "bin_dir": str(bins), "application_login_user": "postgres",
            "application_login_unix_socket": "/run/postgresql", "data_directory": "/srv/pg/data",
            "record": {"kind": "postgresql", "lock": "checkpoint", "checkpoint_lsn": "0/1500718",
                       "redo_lsn": "0/1500718", "timeline": 1, "wal_lsn_before_freeze": "0/1900000",
                       "wal_lsn_after_thaw": "0/1A00000"}}
    args.update(extra)
    return args


def pg_replies(available="1"):
    out = [(2, "/run/postgresql:5432 - no response\n", ""),  # not running
           (0, fixture("pg_controldata.txt"), ""),
           (0, "", ""),  # start hook
           (0, "accepting connections\n", ""),
           (0, "f\n", ""),  # out of recovery
           (0, "%s|/srv/pg/data\n" % os.path.join(FIXTURES, "postgresql-server.log"), ""),
           (0, available + "\n", "")]
    if available == "1":
        out.append((0, "", ""))  # pg_amcheck
    return out + [(0, "1\n", "")]  # timeline


def test_module_postgresql_reads_pg_control_waits_checks_and_compares(monkeypatch, bins):
    cmds = Commands(monkeypatch, pg_replies())
    res = run_module(monkeypatch, app_recover.main, pg_args(bins))
    assert not res.get("failed"), res
    rec = res["recovery"]
    assert (rec["start_lsn"], rec["end_lsn"], rec["bytes"]) == ("0/1500790", "0/19450C8", 0x19450C8 - 0x1500790)
    assert rec["pg_control_before_start"] == {"state": "in production", "checkpoint_lsn": "0/1500718",
                                              "redo_lsn": "0/1500718", "timeline": 1}
    assert res["check"] == dict(res["check"], tool="pg_amcheck", status="passed", problems=[])
    assert res["position"]["matches"] is True, res["position"]
    amcheck = cmds.calls[7][0]
    assert amcheck[0] == str(bins / "pg_amcheck") and "--all" in amcheck and "--install-missing" in amcheck
    assert not any(a.startswith("--dbname") for a in amcheck)


def test_module_postgresql_without_amcheck_says_why_it_skipped(monkeypatch, bins):
    Commands(monkeypatch, pg_replies(available="0"))
    res = run_module(monkeypatch, app_recover.main, pg_args(bins))
    assert not res.get("failed"), res
    assert res["check"]["status"] == "skipped" and "amcheck extension is not available" in res["check"]["reason"]


def test_module_postgresql_other_checkpoint_differs(monkeypatch, bins):
    Commands(monkeypatch, pg_replies())
    record = dict(pg_args(bins)["record"], checkpoint_lsn="0/1400000", redo_lsn="0/1400000")
    res = run_module(monkeypatch, app_recover.main, pg_args(bins, record=record))
    assert res["failed"] and "pg_control's checkpoint_lsn is 0/1500718, the record says 0/1400000" in res["msg"]


def test_module_postgresql_filesystem_set_has_nothing_to_compare(monkeypatch, bins):
    Commands(monkeypatch, pg_replies())
    res = run_module(monkeypatch, app_recover.main, pg_args(bins, record={}, data_directory="/srv/pg/data"))
    assert not res.get("failed"), res
    assert res["position"]["matches"] is None and "no checkpoint" in res["position"]["problems"][0]
