# -*- coding: utf-8 -*-
"""The PostgreSQL quiescer's helpers on real psql output (15.18, --no-align --tuples-only, tab separated)."""

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _app_quiesce as app
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _postgresql as pg
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

PARAMS = dict(application="postgresql", pre_hook=[], post_hook=[], application_hook=[], lock_wait_timeout=1.0,
              on_quiesce_failure="abort", application_client="/usr/bin/psql", application_config_file=None,
              application_login_user=None, application_login_password=None, application_login_host=None,
              application_login_port=None, application_login_unix_socket=None)


def test_lsn_and_rows():
    assert pg.lsn_int("0/1501298") == 0x1501298
    assert pg.lsn_int("1/0") == 1 << 32
    with pytest.raises(StillpointError):
        pg.lsn_int("garbage")
    # POSITION_SQL as psql printed it
    row = ["23152", "0/1501298", "0/1501260", "1", "0/1501310"]
    assert pg.parse_row("23152\t0/1501298\t0/1501260\t1\t0/1501310\n", 5) == row
    assert pg.parse_row("", 5) is None


def test_database_paths_follow_the_wal_symlink(tmp_path):
    data, wal, space = tmp_path / "data", tmp_path / "wal", tmp_path / "ts"
    data.mkdir()
    wal.mkdir()
    space.mkdir()
    (data / "pg_wal").symlink_to(wal)
    spaces = pg.parse_tablespaces("fast\t%s\nempty\t\n" % space)
    assert spaces == [("fast", str(space)), ("empty", "")]
    assert pg.database_paths(str(data), spaces) == [("data_directory", str(data)), ("pg_wal", str(wal)),
                                                    ("tablespace fast", str(space))]


def test_client_argv_and_the_password_only_in_the_environment(monkeypatch):
    monkeypatch.delenv("PGDATABASE", raising=False)
    params = dict(PARAMS, application_login_user="backup", application_login_password="pw",
                  application_login_unix_socket="/run/postgresql/.s.PGSQL.5433", application_config_file="/root/.pgpass")
    quiescer = app.from_params(params, ["/data"])
    assert isinstance(quiescer, pg.PostgreSQLQuiescer) and quiescer.lock == "checkpoint"
    assert "pw" not in " ".join(quiescer.argv)
    assert quiescer.argv[:5] == ["/usr/bin/psql", "--host=/run/postgresql", "--port=5433", "--username=backup",
                                 "--dbname=postgres"]
    assert quiescer.env == {"PGPASSWORD": "pw", "PGPASSFILE": "/root/.pgpass"}
    plain = pg.from_params(dict(PARAMS, application_login_host="db.example", application_login_port=5432), ["/data"])
    assert plain.argv[:3] == ["/usr/bin/psql", "--host=db.example", "--port=5432"] and plain.env is None
