"""PostgreSQL restarted in the middle of a billing run (issue #7): the
daemon rides it out (lib/db reconnects, outcomes are recorded again, claims
whose commit was lost are recovered with their keys) and the run completes
exactly once.

This restarts the cluster every test shares: it must not run beside other
tests (meson: is_parallel: false). Needs PGTMP_DIR (scripts/test sets it)."""
import glob
import os
import subprocess
import time

import psycopg2
import psycopg2.extensions
import pytest

from mockgw import mock_gateway  # noqa: F401  (fixture)
from pledgedenv import PledgedEnv, check_exactly_once

NOW = '2028-03-01 12:00:00+00'
DUE = '2028-03-01'


def pg_ctl(*args):
    data = os.path.join(os.environ['PGTMP_DIR'], 'data')
    bins = sorted(glob.glob('/usr/lib/postgresql/*/bin/pg_ctl'))
    cmd = [bins[-1] if bins else 'pg_ctl', '-D', data, '-w', '-t', '60',
           '-l', os.path.join(os.environ['PGTMP_DIR'], 'server.log')] + list(args)
    if os.getuid() == 0:
        cmd = ['runuser', '-u', 'postgres', '--'] + cmd
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def reconnect(db):
    """The test's own connection died with the server."""
    try:
        db.conn.close()
    except psycopg2.Error:
        pass
    deadline = time.monotonic() + 30
    while True:
        try:
            db.conn = psycopg2.connect(dbname=db.name)
            break
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    db.conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)


@pytest.fixture
def need_pgtmp():
    if not os.environ.get('PGTMP_DIR'):
        pytest.skip('PGTMP_DIR is not set: run through scripts/test, which owns the cluster')


def test_postgres_restart_mid_run(need_pgtmp, db, mock_gateway, tmp_path):  # noqa: F811
    env = PledgedEnv(db, mock_gateway, tmp_path,
                     gateway={'connect_timeout': '1s', 'request_timeout': '5s',
                              'max_in_flight': '16'},
                     billing={'lease': '10s', 'reconcile_schedule': '1s,2s',
                              'poll_interval': '1s'})
    env.clock(NOW)
    n = env.add_pledges_bulk(1500, tokens=('pm_card_visa', 'pm_card_mastercard'), start=DUE)
    mock_gateway.config(latency_ms=30, jitter_ms=60, drop_after=0.01)
    proc = env.start()
    try:
        env.wait_for("SELECT count(*) > 100 FROM charge WHERE status = 'succeeded'", True,
                     timeout=60)
        before = db.value("SELECT count(*) FROM charge WHERE status = 'succeeded'")
        pg_ctl('restart', '-m', 'fast')
        reconnect(db)
        assert proc.poll() is None, 'pledged died with the database:\n' + env.log()
        env.wait_for('SELECT count(*) FROM charge', n, timeout=60)
        env.wait_for(env.PENDING_SQL, 0, timeout=120)
        assert env.stop(proc) == 0, env.log()
        assert 'database connection lost' in env.log()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert before < n, 'the run was over before the restart'
    assert check_exactly_once(db, mock_gateway) == {'succeeded': n}
    assert db.value('SELECT max(attempt_no) FROM charge_attempt') == 1


def test_postgres_restart_during_once(need_pgtmp, db, mock_gateway, tmp_path):  # noqa: F811
    """`pledged --once` outlasts a short outage and still exits 0."""
    env = PledgedEnv(db, mock_gateway, tmp_path,
                     gateway={'max_in_flight': '16'})
    env.clock(NOW)
    n = env.add_pledges_bulk(800, start=DUE)
    mock_gateway.config(latency_ms=40, jitter_ms=40)
    proc = subprocess.Popen([env.binary, '--config', env.config_path, '--once'],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        env.wait_for("SELECT count(*) > 50 FROM charge WHERE status = 'succeeded'", True,
                     timeout=60)
        pg_ctl('restart', '-m', 'fast')
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert 'database connection lost' in out
    reconnect(db)
    # the run finished in that one process: nothing left for a next run
    assert env.pending() == 0, out
    assert check_exactly_once(db, mock_gateway) == {'succeeded': n}
