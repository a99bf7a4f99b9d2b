"""/healthz follows PostgreSQL: 503 while the server is down, 200 once the
pool reconnects. Stops the shared throwaway cluster, so this file must run
alone (meson: is_parallel false)."""
import os
import subprocess

import pytest

from httphelp import free_port, parse_metrics, request, start_daemon, wait_health
from mockgw import MockGateway
from pledgedenv import PledgedEnv

PG_BIN = '/usr/lib/postgresql/15/bin'


def pg_ctl(*args):
    data = os.path.join(os.environ['PGTMP_DIR'], 'data')
    cmd = [os.path.join(PG_BIN, 'pg_ctl'), '-D', data, '-w', '-t', '60',
           '-l', os.path.join(os.environ['PGTMP_DIR'], 'server.log')] + list(args)
    if os.getuid() == 0:
        cmd = ['runuser', '-u', 'postgres', '--'] + cmd
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


@pytest.mark.skipif(not os.environ.get('PGTMP_DIR'),
                    reason='PGTMP_DIR unset: needs the throwaway cluster of scripts/pgtmp.sh')
def test_health_follows_postgresql(db, tmp_path):
    gw = MockGateway(str(tmp_path / 'gw'))
    os.makedirs(gw.dir, exist_ok=True)
    gw.start()
    env = PledgedEnv(db, gw, tmp_path)
    port = free_port()
    proc = start_daemon(env, port)
    stopped = False
    try:
        db.close()  # our own connection would die with the server anyway
        pg_ctl('stop', '-m', 'fast')
        stopped = True
        body = wait_health(port, 503, proc=proc, env=env)
        assert body['reason'] == 'database not connected', body
        status, _, text = request(port, 'GET', '/metrics')
        assert status == 200  # metrics stay available during the outage
        _, _, samples = parse_metrics(text.decode())
        assert samples[('pledged_db_connections_up', ())] == 0
        pg_ctl('start')
        stopped = False
        wait_health(port, 200, proc=proc, env=env, timeout=90)
        _, _, text = request(port, 'GET', '/metrics')
        _, _, samples = parse_metrics(text.decode())
        assert samples[('pledged_db_reconnects_total', ())] >= 1
    finally:
        if stopped:
            pg_ctl('start')
        rc = PledgedEnv.stop(proc)
        gw.stop()
        import conftest
        db.conn = conftest.psycopg2.connect(dbname=db.name)  # for the fixture's teardown
        db.conn.set_isolation_level(0)
    assert rc == 0, env.log()
