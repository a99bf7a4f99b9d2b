"""pledged as a service: the systemd unit (verify, security exposure) and the
HTTP listener's /healthz and /metrics on a running daemon."""
import datetime as dt
import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from httphelp import free_port, get_json, parse_metrics, request, start_daemon, wait_health
from mockgw import MockGateway
from pledgedenv import PledgedEnv

BUILD_DIR = os.environ.get('PLEDGE_BUILD_DIR', '')
UNIT = os.path.join(BUILD_DIR, 'systemd', 'pledged.service')
MAX_EXPOSURE = 2.0


def analyze():
    path = shutil.which('systemd-analyze')
    if not path:
        pytest.skip('systemd-analyze is not installed: cannot check the unit')
    return path


def unit_copy(tmp_path):
    """The built unit, with ExecStart pointing at the built binary (verify
    checks that the program exists)."""
    text = open(UNIT).read()
    binary = os.path.join(BUILD_DIR, 'daemon', 'pledged')
    text = re.sub(r'^ExecStart=\S+', 'ExecStart=' + binary, text, flags=re.M)
    out = tmp_path / 'pledged.service'
    out.write_text(text)
    return str(out)


def test_unit_verifies(tmp_path):
    sa = analyze()
    p = subprocess.run([sa, 'verify', '--man=no', unit_copy(tmp_path)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and p.stderr.strip() == '', p.stderr


def test_unit_settings():
    text = open(UNIT).read()
    for line in ['Type=notify', 'Restart=on-failure', 'ProtectSystem=strict',
                 'ProtectHome=yes', 'PrivateTmp=yes', 'PrivateDevices=yes',
                 'NoNewPrivileges=yes', 'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6',
                 'SystemCallFilter=@system-service', 'MemoryDenyWriteExecute=yes',
                 'CapabilityBoundingSet=\n', 'StateDirectory=pledged', 'User=pledged']:
        assert line in text, line
    assert re.search(r'^WatchdogSec=\d+', text, re.M)
    for cred in ['gateway_api_key', 'webhook_secret', 'db_password']:
        assert re.search(r'^LoadCredential=-?%s:' % cred, text, re.M), cred


def test_security_exposure_is_low(tmp_path, capsys):
    sa = analyze()
    p = subprocess.run([sa, 'security', '--offline=true', '--no-pager', unit_copy(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r'Overall exposure level for \S+: ([0-9.]+)', p.stdout + p.stderr)
    assert m, p.stdout + p.stderr
    score = float(m.group(1))
    with capsys.disabled():  # shown in the test log even when the test passes
        print('\nsystemd-analyze security exposure of pledged.service: %.1f (limit %.1f)'
              % (score, MAX_EXPOSURE))
    assert score <= MAX_EXPOSURE, p.stdout


# ---- the listener ----------------------------------------------------------------------------

@pytest.fixture
def gw(tmp_path):
    g = MockGateway(str(tmp_path / 'gw'))
    os.makedirs(g.dir, exist_ok=True)
    g.start()
    yield g
    g.stop()


def scrape(port):
    status, headers, body = request(port, 'GET', '/metrics')
    assert status == 200
    assert headers['content-type'].startswith('text/plain; version=0.0.4')
    return parse_metrics(body.decode())


def test_healthz_and_metrics_during_a_run(db, gw, tmp_path):
    env = PledgedEnv(db, gw, tmp_path)
    port = free_port()
    env.clock('2028-01-15 12:00+00')
    proc = start_daemon(env, port)
    try:
        status, body = get_json(port, '/healthz')
        assert status == 200 and body['status'] == 'ok' and body['db_connections'] >= 1
        types, helps, samples = scrape(port)
        assert samples[('pledged_build_info', (('version', '0.1.0'),))] == 1
        assert types['pledged_gateway_request_duration_seconds'] == 'histogram'
        assert types['pledged_charge_outcomes_total'] == 'counter'
        assert types['pledged_due_backlog'] == 'gauge'

        env.add_pledges([{'token': 'pm_card_visa', 'amount': 1500 + i, 'currency': 'USD',
                          'anchor': 15, 'start': dt.date(2028, 1, 15)} for i in range(5)])
        db.execute("NOTIFY pledged_wake")
        env.wait_for("SELECT count(*) FROM charge WHERE status = 'succeeded'", 5)
        deadline = time.monotonic() + 30
        while True:
            types, helps, samples = scrape(port)
            ok = samples[('pledged_charge_outcomes_total', (('outcome', 'succeeded'),))]
            if (ok == 5 and ('pledged_due_backlog', ()) in samples) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        print(''.join('%s%s %s\n' % (n, dict(l) if l else '', v)
                      for (n, l), v in sorted(samples.items())))
        assert ok == 5
        assert samples[('pledged_charge_attempts_total', (('kind', 'new'),))] == 5
        assert samples[('pledged_billing_halted', ())] == 0
        assert samples[('pledged_due_backlog', ())] == 0
        assert samples[('pledged_unknown_attempts', ())] == 0
        assert samples[('pledged_gateway_requests_in_flight', ())] == 0
        assert samples[('pledged_db_connections_up', ())] >= 1
        assert ('pledged_db_reconnects_total', ()) in samples
        assert 0 <= samples[('pledged_loop_lag_seconds', ())] < 5
        # the histogram: cumulative, +Inf equals _count, every reply counted
        buckets = sorted(((float(dict(l)['le']), v) for (n, l), v in samples.items()
                          if n == 'pledged_gateway_request_duration_seconds_bucket'))
        assert buckets[-1][0] == float('inf')
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
        count = samples[('pledged_gateway_request_duration_seconds_count', ())]
        assert buckets[-1][1] == count >= 5
        assert samples[('pledged_gateway_request_duration_seconds_sum', ())] > 0
        # HEAD, unknown paths, wrong methods
        assert request(port, 'HEAD', '/healthz')[0] == 200
        assert request(port, 'GET', '/nope')[0] == 404
        assert request(port, 'POST', '/metrics', b'x')[0] == 405
    finally:
        rc = PledgedEnv.stop(proc)
    assert rc == 0, env.log()


def test_health_reports_a_halt(db, gw, tmp_path):
    env = PledgedEnv(db, gw, tmp_path)
    wrong = tmp_path / 'wrong_key'
    wrong.write_text('sk_test_not_the_mocks\n')
    env.write_config(gateway={'api_key_file': str(wrong)})
    env.clock('2028-01-15 12:00+00')
    port = free_port()
    proc = start_daemon(env, port)
    try:
        env.add_pledges([{'token': 'pm_card_visa', 'amount': 1500, 'currency': 'USD',
                          'anchor': 15, 'start': dt.date(2028, 1, 15)}])
        db.execute("NOTIFY pledged_wake")
        body = wait_health(port, 503, proc=proc, env=env)
        assert body['status'] == 'unavailable' and 'halted' in body['reason'], body
        _, _, samples = scrape(port)
        assert samples[('pledged_billing_halted', ())] == 1
    finally:
        PledgedEnv.stop(proc)


def test_listener_disabled(db, gw, tmp_path):
    env = PledgedEnv(db, gw, tmp_path)
    port = free_port()
    env.write_config(http={'listen': '127.0.0.1:%d' % port, 'enabled': 'false'})
    proc = env.start()
    try:
        time.sleep(1.5)
        assert proc.poll() is None, env.log()
        with pytest.raises(OSError):
            request(port, 'GET', '/healthz', timeout=2)
        assert 'HTTP listener disabled' in env.log()
    finally:
        assert PledgedEnv.stop(proc) == 0


def test_port_in_use_is_a_clear_error(db, gw, tmp_path):
    env = PledgedEnv(db, gw, tmp_path)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        s.listen(1)
        port = s.getsockname()[1]
        env.write_config(http={'listen': '127.0.0.1:%d' % port})
        proc = env.start()
        assert proc.wait(30) == 1
        assert 'cannot listen on 127.0.0.1:%d' % port in env.log()
        # --once never opens the listener: a cron run beside the service is fine
        env.once()


def test_ipv6_loopback(db, gw, tmp_path):
    if not socket.has_ipv6:
        pytest.skip('no IPv6')
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(('::1', 0))
            port = s.getsockname()[1]
    except OSError:
        pytest.skip('no IPv6 loopback')
    env = PledgedEnv(db, gw, tmp_path)
    env.write_config(http={'listen': '[::1]:%d' % port})
    proc = env.start()
    try:
        import http.client
        deadline = time.monotonic() + 30
        while True:
            try:
                c = http.client.HTTPConnection('::1', port, timeout=5)
                c.request('GET', '/healthz')
                status = c.getresponse().status
                c.close()
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, env.log()
            time.sleep(0.1)
    finally:
        assert PledgedEnv.stop(proc) == 0
