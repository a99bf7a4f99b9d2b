"""Exactly once under chaos (issue #7): a 2,000-charge run with gateway
faults while the daemon is SIGKILLed at random moments and restarted, and
three daemons (distinct node_name) on one run. Afterwards the mock's ledger
shows every due charge executed exactly once and the database agrees with
it charge by charge (amount, currency, key).

Replay a failure with PLEDGED_CHAOS_SEED=<seed printed by the test>."""
import os
import random
import time


from mockgw import mock_gateway  # noqa: F401  (fixture)
from pledgedenv import PledgedEnv, check_exactly_once

NOW = '2028-03-01 12:00:00+00'
BEFORE_DUE = '2028-03-01 08:00:00+00'
DUE = '2028-03-01'
# 90 % succeed, 5 % hard declines (lost card), 5 % soft (insufficient funds)
TOKENS = ['pm_card_visa'] * 9 + ['pm_card_mastercard'] * 9 + [
    'pm_card_visa_chargeDeclinedLostCard', 'pm_card_chargeDeclinedInsufficientFunds']
# Short timeouts so a 10 s lease is allowed (lease > connect + request timeout)
# and recovery of expired leases happens within the test.
FAST = dict(gateway={'connect_timeout': '1s', 'request_timeout': '5s', 'max_in_flight': '16',
                     'lookup_settle': '0s'},
            billing={'lease': '10s', 'reconcile_schedule': '1s,2s,5s', 'poll_interval': '1s',
                     'shutdown_deadline': '10s'})


def seed():
    s = int(os.environ.get('PLEDGED_CHAOS_SEED') or time.time())
    print('chaos seed: PLEDGED_CHAOS_SEED=%d' % s)
    return s


def faults(gw, s):
    gw.config(seed=s, drop_after=0.02, error_500_after_execute=0.02, rate_429=0.02,
              retry_after_s=0, latency_ms=40, jitter_ms=150)


def expected(counts, n):
    assert sum(counts.values()) == n, counts
    assert counts.get('failed', 0) == n // 20 and counts.get('retry_wait', 0) == n // 20, counts
    assert counts['succeeded'] == n - n // 10, counts


def status_counts(db):
    return dict(db.query('SELECT status, count(*) FROM charge GROUP BY 1'))


def test_sigkill_at_random_moments_with_gateway_faults(db, mock_gateway, tmp_path):  # noqa: F811
    s = seed()
    rng = random.Random(s)
    env = PledgedEnv(db, mock_gateway, tmp_path, **FAST)
    env.clock(NOW)
    n = env.add_pledges_bulk(2000, tokens=TOKENS, start=DUE)
    faults(mock_gateway, s)

    kills = 0
    proc = env.start()
    try:
        # at least 20 kills, more while much of the run is still ahead
        while kills < 20 or (kills < 30 and env.pending() > n // 10):
            time.sleep(rng.uniform(0.3, 2.0))
            proc.kill()                     # SIGKILL: no drain, no record
            proc.wait()
            kills += 1
            print('kill %2d: %r' % (kills, status_counts(db)))
            proc = env.start()
    finally:
        proc.kill()
        proc.wait()
    assert env.log().count('ready: node') >= kills
    executed_during = len(mock_gateway.ledger()['charges'])
    assert executed_during > 0
    runs = env.settle(timeout=240)
    counts = check_exactly_once(db, mock_gateway)
    c = mock_gateway.counters()
    print('seed %d: %d kills, %d executed before settling, %d --once runs to settle; %r; '
          'gateway replays %d, 409s %d, dropped after %d, 500s %d, 429s %d' % (
              s, kills, executed_during, runs, counts, c['replays'], c['conflicts_409'],
              c['dropped_after'], c['by_status'].get('500', 0), c['by_status'].get('429', 0)))
    expected(counts, n)
    assert db.value("SELECT count(*) FROM event WHERE action = 'recovered'") > 0


def test_three_daemons_on_one_run(db, mock_gateway, tmp_path):  # noqa: F811
    s = seed()
    envs = []
    for i in range(3):
        d = tmp_path / ('n%d' % i)
        d.mkdir()
        e = PledgedEnv(db, mock_gateway, d, **FAST)
        e.write_config(billing={'node_name': 'node-%d' % i})
        envs.append(e)
    envs[0].clock(BEFORE_DUE)
    n = envs[0].add_pledges_bulk(900, tokens=TOKENS, start=DUE)
    faults(mock_gateway, s)
    procs = [e.start() for e in envs]
    try:
        for e in envs:
            e.wait_log('ready: node')
        time.sleep(1)
        envs[0].clock(NOW)
        db.execute('NOTIFY pledged_wake')
        envs[0].wait_for('SELECT count(*) FROM charge', n, timeout=60)
        envs[0].wait_for(envs[0].PENDING_SQL, 0, timeout=180)
        for e, p in zip(envs, procs):
            assert e.stop(p) == 0, e.log()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    counts = check_exactly_once(db, mock_gateway)
    expected(counts, n)
    by_node = dict(db.query(
        "SELECT actor, count(*) FROM event WHERE entity = 'charge' AND action IN "
        "('succeeded', 'failed', 'retry_wait') GROUP BY 1"))
    print('seed %d: outcomes recorded by node %r' % (s, by_node))
    assert sorted(by_node) == ['pledged:node-0', 'pledged:node-1', 'pledged:node-2']
    assert sum(by_node.values()) == n
    assert db.value('SELECT count(*) FROM daemon_node') == 3
