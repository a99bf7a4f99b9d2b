"""Operators acting in the middle of a billing cycle, through pledgectl,
with the real daemon: pause, resume, cancel, retry (DESIGN.md §4, §6)."""
import datetime as dt
import subprocess

import pytest

from mockgw import mock_gateway  # noqa: F401  (fixture)
from pledgedenv import PledgedEnv

D = dt.date


@pytest.fixture
def env(db, mock_gateway, tmp_path):  # noqa: F811
    return PledgedEnv(db, mock_gateway, tmp_path)


def run_days(env, first, last):
    d = first
    while d <= last:
        env.clock('%s 12:00:00+00' % d.isoformat())
        env.once()
        d += dt.timedelta(days=1)


def periods(db, pid):
    return [(r[0].isoformat(), r[1]) for r in db.query(
        'SELECT period, status FROM charge WHERE pledge_id = %s ORDER BY period', (pid,))]


def test_pause_mid_dunning_then_resume_without_back_charging(env, db, mock_gateway):  # noqa: F811
    [pid] = env.add_pledges([dict(token='pm_card_chargeDeclinedInsufficientFunds', amount=2500,
                                  currency='USD', anchor=10, start=D(2027, 1, 1))])
    run_days(env, D(2027, 1, 10), D(2027, 1, 12))   # declined, waiting to retry
    assert periods(db, pid) == [('2027-01-10', 'retry_wait')]
    db.ctl('pledge', 'pause', pid, check=True)
    run_days(env, D(2027, 1, 13), D(2027, 3, 15))   # retries and two periods pass paused
    assert periods(db, pid) == [('2027-01-10', 'cancelled')]
    sends = len(mock_gateway.ledger()['charges'])
    assert sends == 2                 # Jan 10 and the Jan 11 retry; nothing while paused

    # the donor gives a working card and the pledge resumes on Mar 20:
    # the next charge is Apr 10, nothing for Feb or Mar
    donor = db.value('SELECT donor_id FROM pledge WHERE id = %s', (pid,))
    env.clock('2027-03-20 12:00:00+00')
    m = db.ctl('--json', 'method', 'add', '--donor', donor, '--customer', 'cus_new',
               '--token', 'pm_card_visa__new', check=True)
    assert m.returncode == 0
    method = db.value("SELECT id FROM payment_method WHERE token = 'pm_card_visa__new'")
    db.ctl('pledge', 'set-method', pid, '--method', method, check=True)
    db.ctl('pledge', 'resume', pid, check=True)
    assert db.value('SELECT next_charge_on FROM pledge WHERE id = %s', (pid,)) == D(2027, 4, 10)
    run_days(env, D(2027, 3, 20), D(2027, 4, 11))
    assert periods(db, pid) == [('2027-01-10', 'cancelled'), ('2027-04-10', 'succeeded')]


def test_cancel_mid_cycle_ends_pending_charges_and_stops_billing(env, db, mock_gateway):  # noqa: F811
    [good, dunning] = env.add_pledges([
        dict(token='pm_card_visa', amount=2500, currency='USD', anchor=5, start=D(2027, 1, 1)),
        dict(token='pm_card_chargeDeclinedInsufficientFunds', amount=1000, currency='EUR',
             anchor=5, start=D(2027, 1, 1)),
    ])
    run_days(env, D(2027, 1, 5), D(2027, 1, 7))
    db.ctl('pledge', 'cancel', good, '--reason', 'donor asked', check=True)
    db.ctl('pledge', 'cancel', dunning, '--reason', 'donor asked', check=True)
    run_days(env, D(2027, 1, 8), D(2027, 3, 6))
    assert periods(db, good) == [('2027-01-05', 'succeeded')]
    assert periods(db, dunning) == [('2027-01-05', 'cancelled')]
    assert db.query('SELECT status, cancel_reason FROM pledge ORDER BY id') == [
        ('cancelled', 'donor asked'), ('cancelled', 'donor asked')]
    assert len(mock_gateway.ledger()['charges']) == 3   # + the declined Jan 5 and Jan 6 tries


def test_retry_of_a_failed_charge_charges_once(env, db, mock_gateway):  # noqa: F811
    env.write_config(billing={'retry_schedule': '1d'})
    [pid] = env.add_pledges([dict(token='pm_card_chargeDeclinedInsufficientFunds', amount=2500,
                                  currency='USD', anchor=5, start=D(2027, 1, 1))])
    run_days(env, D(2027, 1, 5), D(2027, 1, 7))
    assert periods(db, pid) == [('2027-01-05', 'failed')]
    donor = db.value('SELECT donor_id FROM pledge WHERE id = %s', (pid,))
    db.ctl('method', 'add', '--donor', donor, '--customer', 'cus_2', '--token',
           'pm_card_visa__2', check=True)
    method = db.value("SELECT id FROM payment_method WHERE token = 'pm_card_visa__2'")
    db.ctl('pledge', 'set-method', pid, '--method', method, check=True)
    charge = db.value('SELECT id FROM charge WHERE pledge_id = %s', (pid,))
    db.ctl('charge', 'retry', charge, check=True)
    # a retry requested twice before the daemon runs is still one charge
    second = db.ctl('charge', 'retry', charge)
    assert second.returncode == 4
    env.once()
    env.once()
    assert periods(db, pid) == [('2027-01-05', 'succeeded')]
    executed = [c for c in mock_gateway.ledger()['charges']
                if c['metadata'].get('pledged_charge') == str(charge) and
                c['status'] == 'succeeded']
    assert len(executed) == 1


def test_retry_racing_a_running_daemon_never_double_charges(env, db, mock_gateway):  # noqa: F811
    """Operators hammer `charge retry` while a daemon bills: each charge
    still succeeds at most once at the gateway."""
    env.write_config(billing={'retry_schedule': '1d', 'poll_interval': '1s'})
    ids = env.add_pledges([dict(token='pm_card_visa', amount=1000 + i, currency='USD',
                                anchor=1, start=D(2027, 1, 1)) for i in range(60)])
    env.clock('2027-01-01 12:00:00+00')
    mock_gateway.config(latency_ms=20, jitter_ms=20)
    daemon = env.start()
    try:
        charges = []
        for _ in range(100):
            charges = [r[0] for r in db.query('SELECT id FROM charge')]
            if len(charges) == len(ids):
                break
            subprocess.run(['sleep', '0.05'])
        for _ in range(5):
            for c in charges:
                db.ctl('charge', 'retry', c)     # refused or accepted: never a double charge
        env.wait_for("SELECT count(*) FROM charge WHERE status = 'succeeded'", len(ids),
                     timeout=60)
    finally:
        assert env.stop(daemon) == 0, env.log()
    executed = {}
    for c in mock_gateway.ledger()['charges']:
        if c['status'] == 'succeeded':
            executed.setdefault(c['metadata']['pledged_charge'], []).append(c)
    assert len(executed) == len(ids)
    assert all(len(v) == 1 for v in executed.values())
