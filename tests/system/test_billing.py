"""The billing engine end to end: real pledged, real PostgreSQL, the mock
gateway over HTTP, and the shared test clock (DESIGN.md §4-§5)."""
import collections
import datetime as dt

import pytest

from mockgw import mock_gateway  # noqa: F401  (fixture)
from pledgedenv import PledgedEnv, expected_periods

D = dt.date
ANCHORS = [1, 15, 28, 29, 30, 31, None]
CURRENCIES = [('USD', 2500), ('EUR', 1000), ('JPY', 3000)]


@pytest.fixture
def env(db, mock_gateway, tmp_path):  # noqa: F811
    return PledgedEnv(db, mock_gateway, tmp_path)


def day_at(d, hour=12):
    return '%s %02d:00:00+00' % (d.isoformat(), hour)


def run_days(env, first, last, hour=12):
    d = first
    while d <= last:
        env.clock(day_at(d, hour))
        env.once()
        d += dt.timedelta(days=1)


def charges_by_pledge(db):
    rows = db.query('SELECT pledge_id, period, status, amount_minor, currency, id '
                    'FROM charge ORDER BY pledge_id, period')
    out = collections.defaultdict(list)
    for r in rows:
        out[r[0]].append(r[1:])
    return out


def ledger_by_charge(gw):
    out = collections.defaultdict(list)
    for c in gw.ledger()['charges']:
        out[int(c['metadata']['pledged_charge'])].append(c)
    return out


def test_a_year_of_billing_exactly_once_on_the_right_dates(env, db, mock_gateway):  # noqa: F811
    """500 pledges, twelve months across leap February 2028: every period
    charged on its date, exactly once, and the gateway agrees charge by
    charge."""
    specs, expect = [], {}
    start, until = D(2027, 12, 1), D(2028, 11, 30)
    for i in range(500):
        anchor = ANCHORS[i % len(ANCHORS)]
        interval = 12 if i % 20 == 0 else 6 if i % 20 == 1 else 3 if i % 10 == 2 else 1
        currency, amount = CURRENCIES[i % len(CURRENCIES)]
        specs.append(dict(token='pm_card_visa', amount=amount + i, currency=currency,
                          anchor=anchor, interval=interval, start=start))
    ids = env.add_pledges(specs)
    for pid, s in zip(ids, specs):
        first = db.value('SELECT next_charge_on FROM pledge WHERE id = %s', (pid,))
        expect[pid] = (expected_periods(s['anchor'], s['interval'], first, until), s)

    run_days(env, start, until)

    got = charges_by_pledge(db)
    ledger = ledger_by_charge(mock_gateway)
    total = 0
    for pid, (periods, s) in expect.items():
        rows = got[pid]
        assert [r[0] for r in rows] == periods, 'pledge %d (anchor %r, every %d months)' % (
            pid, s['anchor'], s['interval'])
        for period, status, amount, currency, charge_id in rows:
            assert status == 'succeeded'
            assert (amount, currency) == (s['amount'], s['currency'])
            executed = ledger[charge_id]
            assert len(executed) == 1, 'charge %d executed %d times' % (charge_id, len(executed))
            assert executed[0]['amount'] == amount
            assert executed[0]['currency'] == currency.lower()
            assert executed[0]['idempotency_key'] == 'pledged-%d-1' % charge_id
            total += 1
    assert len(mock_gateway.ledger()['charges']) == total
    # materialised and charged on the period's own (business) day
    late = db.value("SELECT count(*) FROM charge WHERE created_at::date <> period "
                    "OR succeeded_at::date <> period")
    assert late == 0
    # leap day and month-end clamping really happened
    assert db.value("SELECT count(*) FROM charge WHERE period = '2028-02-29'") > 0
    assert db.value("SELECT count(*) FROM charge WHERE period = '2028-04-30'") > 0


def test_soft_decline_retries_on_schedule_then_fails_then_lapses(env, db, mock_gateway):  # noqa: F811
    env.write_config(billing={'retry_schedule': '1d,3d,5d,7d', 'lapse_after': '2'})
    [pid] = env.add_pledges([dict(token='pm_card_chargeDeclinedInsufficientFunds', amount=2500,
                                  currency='USD', anchor=10, start=D(2027, 1, 1))])
    run_days(env, D(2027, 1, 9), D(2027, 3, 31))

    charges = db.query('SELECT id, period, status, dunning_attempts, decline_code FROM charge '
                       'ORDER BY period')
    assert [(c[1], c[2]) for c in charges] == [(D(2027, 1, 10), 'failed'),
                                               (D(2027, 2, 10), 'failed')]
    for charge_id, period, _, dunning, decline in charges:
        assert dunning == 4 and decline == 'insufficient_funds'
        attempts = db.query("SELECT e.at::date FROM event e WHERE e.entity = 'charge' "
                            "AND e.entity_id = %s AND e.action IN ('retry_wait', 'failed') "
                            'ORDER BY e.id', (charge_id,))
        offsets = [(a[0] - period).days for a in attempts]
        assert offsets == [0, 1, 3, 5, 7]
        assert len(ledger_by_charge(mock_gateway)[charge_id]) == 5
    assert db.query('SELECT status, failed_periods FROM pledge WHERE id = %s', (pid,)) == [
        ('lapsed', 2)]
    # a lapsed pledge is not billed again
    assert db.value("SELECT count(*) FROM charge WHERE period >= '2027-03-01'") == 0


def test_hard_decline_no_retry_pledge_needs_new_method(env, db, mock_gateway):  # noqa: F811
    [pid] = env.add_pledges([dict(token='pm_card_visa_chargeDeclinedLostCard', amount=2500,
                                  currency='USD', anchor=5, start=D(2027, 1, 1))])
    run_days(env, D(2027, 1, 4), D(2027, 2, 20))
    assert db.query('SELECT period, status, decline_code FROM charge') == [
        (D(2027, 1, 5), 'failed', 'lost_card')]
    assert db.value('SELECT count(*) FROM charge_attempt') == 1
    assert db.query('SELECT status, invalid_reason FROM payment_method') == [
        ('invalid', 'lost_card')]
    assert db.value('SELECT status FROM pledge WHERE id = %s', (pid,)) == 'needs_payment_method'
    assert len(mock_gateway.ledger()['charges']) == 1


def test_action_required_is_never_retried_off_session(env, db, mock_gateway):  # noqa: F811
    env.add_pledges([dict(token='pm_card_authenticationRequired', amount=2500, currency='USD',
                          anchor=5, start=D(2027, 1, 1))])
    run_days(env, D(2027, 1, 4), D(2027, 1, 31))
    assert db.query('SELECT status, dunning_attempts FROM charge') == [('action_required', 0)]
    assert db.value('SELECT count(*) FROM charge_attempt') == 1
    assert len(mock_gateway.ledger()['charges']) == 1


@pytest.mark.parametrize('policy,want', [
    ('latest', [('2027-01-10', 'skipped'), ('2027-02-10', 'skipped'), ('2027-03-10', 'skipped'),
                ('2027-04-10', 'succeeded')]),
    ('all', [('2027-01-10', 'succeeded'), ('2027-02-10', 'succeeded'),
             ('2027-03-10', 'succeeded'), ('2027-04-10', 'succeeded')]),
])
def test_catch_up_after_three_months_down(env, db, mock_gateway, policy, want):  # noqa: F811
    env.write_config(billing={'catch_up': policy})
    env.add_pledges([dict(token='pm_card_visa', amount=2500, currency='USD', anchor=10,
                          start=D(2027, 1, 1))])
    env.clock(day_at(D(2027, 1, 5)))
    env.once()
    env.clock(day_at(D(2027, 4, 12)))   # down from Jan 5 to Apr 12
    env.once()
    rows = db.query('SELECT period::text, status, skip_reason FROM charge ORDER BY period')
    assert [(r[0], r[1]) for r in rows] == [(d, s) for d, s in want]
    assert all(r[2] == 'missed_window' for r in rows if r[1] == 'skipped')
    assert len(mock_gateway.ledger()['charges']) == sum(1 for _, s in want if s == 'succeeded')
    assert db.value('SELECT next_charge_on FROM pledge') == D(2027, 5, 10)


def test_amount_and_method_changes_apply_from_the_next_attempt(env, db, mock_gateway):  # noqa: F811
    [pid] = env.add_pledges([dict(token='pm_card_visa', amount=2500, currency='USD', anchor=1,
                                  start=D(2027, 1, 1))])
    run_days(env, D(2027, 1, 1), D(2027, 1, 2))
    db.execute('UPDATE pledge SET amount_minor = 5000 WHERE id = %s', (pid,))
    run_days(env, D(2027, 2, 1), D(2027, 2, 1))
    # a new card that declines softly, then the donor raises the gift mid-dunning
    donor = db.value('SELECT donor_id FROM pledge WHERE id = %s', (pid,))
    m2 = db.value("INSERT INTO payment_method (donor_id, customer_ref, token) VALUES "
                  "(%s, 'cus_x', 'pm_card_chargeDeclinedInsufficientFunds__x') RETURNING id",
                  (donor,))
    db.execute('UPDATE pledge SET payment_method_id = %s WHERE id = %s', (m2, pid))
    run_days(env, D(2027, 3, 1), D(2027, 3, 1))
    m3 = db.value("INSERT INTO payment_method (donor_id, customer_ref, token) VALUES "
                  "(%s, 'cus_x', 'pm_card_mastercard__y') RETURNING id", (donor,))
    db.execute('UPDATE pledge SET payment_method_id = %s, amount_minor = 7500 WHERE id = %s',
               (m3, pid))
    run_days(env, D(2027, 3, 2), D(2027, 3, 2))
    rows = db.query('SELECT period::text, status, amount_minor FROM charge ORDER BY period')
    assert rows == [('2027-01-01', 'succeeded', 2500), ('2027-02-01', 'succeeded', 5000),
                    ('2027-03-01', 'succeeded', 7500)]
    attempts = db.query('SELECT a.amount_minor, m.token FROM charge_attempt a JOIN payment_method'
                        " m ON m.id = a.payment_method_id JOIN charge c ON c.id = a.charge_id"
                        " WHERE c.period = '2027-03-01' ORDER BY a.attempt_no")
    assert attempts == [(5000, 'pm_card_chargeDeclinedInsufficientFunds__x'),
                        (7500, 'pm_card_mastercard__y')]
    executed = [(c['amount'], c['payment_method']) for c in mock_gateway.ledger()['charges']]
    assert (7500, 'pm_card_mastercard__y') in executed


def test_not_yet_due_before_charge_time_in_org_timezone(env, db, mock_gateway):  # noqa: F811
    env.write_config(billing={'timezone': 'America/New_York', 'charge_time': '09:00'})
    env.add_pledges([dict(token='pm_card_visa', amount=2500, currency='USD', anchor=1,
                          start=D(2027, 7, 1))])
    env.clock('2027-07-01 12:59:00+00')   # 08:59 in New York
    env.once()
    assert db.value('SELECT count(*) FROM charge') == 0
    env.clock('2027-07-01 13:00:00+00')   # 09:00 in New York
    env.once()
    assert db.value("SELECT status FROM charge") == 'succeeded'


def test_daemon_refuses_an_unmigrated_database(empty_db, mock_gateway, tmp_path):  # noqa: F811
    env = PledgedEnv(empty_db, mock_gateway, tmp_path)
    proc = env.once(check=False)
    assert proc.returncode == 1
    assert 'pledgectl migrate' in proc.stderr


def test_check_config(env, tmp_path):
    import subprocess
    ok = subprocess.run([env.binary, '--check-config', env.config_path], capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / 'bad.conf'
    bad.write_text('[gateway]\nmax_in_flight = lots\n[nonsense]\n')
    proc = subprocess.run([env.binary, '--check-config', str(bad)], capture_output=True,
                          text=True)
    assert proc.returncode == 1
    assert '%s:2' % bad in proc.stderr and 'max_in_flight' in proc.stderr
    assert 'nonsense' in proc.stderr
