"""pledgectl pledge: create (amount, currency, anchor, interval, start, method),
show, list, pause, resume, cancel, set-amount, set-method — each change with
its event, schedule from PostgreSQL's calendar functions."""
import json

import pytest


def ok(db, *args):
    p = db.ctl(*args)
    assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p.stdout


def js(db, *args):
    return json.loads(ok(db, '--json', *args))


@pytest.fixture
def donor(db):
    db.execute("UPDATE instance SET test_now = '2026-03-10 12:00+00'")
    did = int(ok(db, 'donor', 'add', '--name', 'Ada', '--ref', 'D1').strip())
    mid = int(ok(db, 'method', 'add', '--donor', did, '--customer', 'cus_1', '--token',
                 'pm_card_visa').strip())
    return db, did, mid


def create(db, *extra, donor='D1'):
    return js(db, 'pledge', 'create', '--donor-ref', donor, *extra)


def test_create_defaults(donor):
    db, did, mid = donor
    p = create(db, '--amount', '25.00', '--currency', 'USD')
    assert p['amount'] == '25.00' and p['amount_minor'] == 2500 and p['currency'] == 'USD'
    assert p['interval'] == 'monthly' and p['fund'] == 'general' and p['status'] == 'active'
    assert p['anchor'] == '10'                 # the start date's day
    assert p['start_on'] == '2026-03-10'       # today on the test clock
    assert p['next_charge_on'] == '2026-03-10'
    assert p['method_id'] == mid and p['donor_id'] == did
    for key in ('id', 'external_ref', 'donor_name', 'end_on', 'failed_periods', 'created_at',
                'updated_at', 'cancelled_at', 'cancel_reason'):
        assert key in p
    assert db.value("SELECT count(*) FROM event WHERE entity = 'pledge' AND action = 'created'") == 1


@pytest.mark.parametrize('anchor,start,expected', [
    ('31', '2026-04-01', '2026-04-30'),
    ('last', '2026-02-01', '2026-03-31'),   # start in the past: no back-charging
    ('15', '2026-03-11', '2026-03-15'),
    ('5', '2026-03-11', '2026-04-05'),
    ('29', '2028-02-01', '2028-02-29'),
])
def test_anchor_and_start(donor, anchor, start, expected):
    db, _, _ = donor
    p = create(db, '--amount', '10', '--currency', 'EUR', '--anchor', anchor, '--start', start)
    assert p['next_charge_on'] == expected
    assert p['anchor'] == anchor


def test_currency_exponents(donor):
    db, _, _ = donor
    assert create(db, '--amount', '1000', '--currency', 'JPY')['amount_minor'] == 1000
    assert create(db, '--amount', '1.234', '--currency', 'BHD')['amount'] == '1.234'
    p = db.ctl('pledge', 'create', '--donor-ref', 'D1', '--amount', '10.5', '--currency', 'JPY')
    assert p.returncode == 2 and '--amount' in p.stderr and 'JPY' in p.stderr


@pytest.mark.parametrize('args,needle', [
    (('--amount', '25.001', '--currency', 'USD'),
     '--amount: 25.001 has more decimals than USD allows'),
    (('--amount', '25', '--currency', 'XYZ'), "--currency: unknown currency 'XYZ'"),
    (('--amount', '25', '--currency', 'usd1'), '--currency'),
    (('--amount', '0', '--currency', 'USD'), '--amount'),
    (('--amount', '-5', '--currency', 'USD'), '--amount'),
    (('--amount', '1,000.00', '--currency', 'USD'), '--amount'),
    (('--amount', '25', '--currency', 'USD', '--anchor', '0'), '--anchor'),
    (('--amount', '25', '--currency', 'USD', '--anchor', '32'), '--anchor'),
    (('--amount', '25', '--currency', 'USD', '--interval', 'weekly'), '--interval'),
    (('--amount', '25', '--currency', 'USD', '--start', '2026-13-01'), 'start'),
    (('--amount', '25', '--currency', 'USD', '--start', 'tomorrow'), '--start'),
    (('--currency', 'USD'), '--amount'),
])
def test_bad_input_is_usage_error(donor, args, needle):
    db, _, _ = donor
    p = db.ctl('pledge', 'create', '--donor-ref', 'D1', *args)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert needle in p.stderr and p.stderr.startswith('pledgectl: ')
    assert db.value('SELECT count(*) FROM pledge') == 0


def test_unknown_ids(donor):
    db, did, _ = donor
    assert db.ctl('pledge', 'create', '--donor', '999', '--amount', '5',
                  '--currency', 'USD').returncode == 3
    assert db.ctl('pledge', 'create', '--donor', did, '--amount', '5', '--currency', 'USD',
                  '--method', '999').returncode == 3
    for verb in (('show', '999'), ('pause', '999'), ('resume', '999'),
                 ('cancel', '999', '--reason', 'x'), ('set-amount', '999', '--amount', '1'),
                 ('set-method', '999', '--method', '1'), ('show', '--by-ref', 'nope')):
        p = db.ctl('pledge', *verb)
        assert p.returncode == 3, (verb, p.stderr)


def test_method_of_another_donor_is_conflict(donor):
    db, _, mid = donor
    other = int(ok(db, 'donor', 'add', '--name', 'Bob').strip())
    p = db.ctl('pledge', 'create', '--donor', other, '--amount', '5', '--currency', 'USD',
               '--method', mid)
    assert p.returncode == 4 and 'belongs to donor' in p.stderr


def test_no_method_means_needs_payment_method(donor):
    db, _, _ = donor
    other = int(ok(db, 'donor', 'add', '--name', 'Bob').strip())
    p = db.ctl('--json', 'pledge', 'create', '--donor', other, '--amount', '5', '--currency', 'USD')
    assert p.returncode == 0 and 'no active payment method' in p.stderr
    assert json.loads(p.stdout)['status'] == 'needs_payment_method'


def make_charge(db, pid, did, period, status, **cols):
    extra = {'scheduled': {}, 'retry_wait': {}, 'processing': {
        'lease_owner': "'n1'", 'lease_expires_at': "now() + interval '1 minute'"},
        'succeeded': {'succeeded_at': 'now()'}}.get(status, {})
    names = ', '.join(['pledge_id', 'donor_id', 'period', 'amount_minor', 'currency', 'fund',
                       'due_at', 'status', 'next_attempt_at'] + list(extra))
    vals = ', '.join(['%s', '%s', '%s', '2500', "'USD'", "'general'", 'now()', '%s', 'now()']
                     + list(extra.values()))
    return db.value('INSERT INTO charge (%s) VALUES (%s) RETURNING id' % (names, vals),
                    (pid, did, period, status))


def test_pause_resume(donor):
    db, did, _ = donor
    pid = create(db, '--amount', '25', '--currency', 'USD', '--anchor', '1',
                 '--start', '2026-01-01')['id']
    waiting = make_charge(db, pid, did, '2026-01-01', 'retry_wait')
    busy = make_charge(db, pid, did, '2026-02-01', 'processing')
    done = make_charge(db, pid, did, '2025-12-01', 'succeeded')
    out = js(db, 'pledge', 'pause', pid, '--reason', 'donor on holiday')
    assert out['status'] == 'paused' and out['next_charge_on'] is None
    statuses = dict(db.query('SELECT id, status FROM charge'))
    assert statuses == {waiting: 'cancelled', busy: 'processing', done: 'succeeded'}
    ev = db.value("SELECT detail FROM event WHERE entity = 'charge' AND entity_id = %s "
                  "AND action = 'cancelled'", (waiting,))
    assert ev['reason'] == 'pledge paused'
    pev = db.value("SELECT detail FROM event WHERE entity = 'pledge' AND action = 'paused'")
    assert pev == {'from': 'active', 'reason': 'donor on holiday', 'charges_cancelled': 1}
    assert db.ctl('pledge', 'pause', pid).returncode == 4
    # resume months later: next anchor date on or after today, nothing back-charged
    db.execute("UPDATE instance SET test_now = '2026-06-15 12:00+00'")
    out = js(db, 'pledge', 'resume', pid)
    assert out['status'] == 'active' and out['next_charge_on'] == '2026-07-01'
    assert db.value("SELECT count(*) FROM event WHERE entity = 'pledge' AND action = 'resumed'") == 1
    assert db.ctl('pledge', 'resume', pid).returncode == 4


def test_cancel(donor):
    db, did, _ = donor
    pid = create(db, '--amount', '25', '--currency', 'USD')['id']
    sched = make_charge(db, pid, did, '2026-03-10', 'scheduled')
    p = db.ctl('pledge', 'cancel', pid)
    assert p.returncode == 2 and '--reason' in p.stderr
    out = js(db, 'pledge', 'cancel', pid, '--reason', 'donor moved away')
    assert out['status'] == 'cancelled' and out['cancel_reason'] == 'donor moved away'
    assert out['cancelled_at'].startswith('2026-03-10T12:00:00')
    assert db.value('SELECT status FROM charge WHERE id = %s', (sched,)) == 'cancelled'
    assert db.ctl('pledge', 'cancel', pid, '--reason', 'again').returncode == 4
    assert db.ctl('pledge', 'resume', pid).returncode == 4
    assert db.ctl('pledge', 'set-amount', pid, '--amount', '5').returncode == 4


def test_set_amount(donor):
    db, did, _ = donor
    pid = create(db, '--amount', '25', '--currency', 'USD')['id']
    waiting = make_charge(db, pid, did, '2026-03-10', 'retry_wait')
    bad = db.ctl('pledge', 'set-amount', pid, '--amount', '30.001')
    assert bad.returncode == 2 and '--amount: 30.001 has more decimals than USD allows' in bad.stderr
    assert js(db, 'pledge', 'set-amount', pid, '--amount', '30')['amount_minor'] == 3000
    assert db.value('SELECT amount_minor FROM charge WHERE id = %s', (waiting,)) == 3000
    ev = db.value("SELECT detail FROM event WHERE action = 'amount_changed'")
    assert ev == {'from_minor': 2500, 'to_minor': 3000, 'currency': 'USD'}


def test_set_method_reactivates(donor):
    db, did, mid = donor
    pid = create(db, '--amount', '25', '--currency', 'USD', '--anchor', '20')['id']
    db.execute("UPDATE pledge SET status = 'needs_payment_method' WHERE id = %s", (pid,))
    db.execute("UPDATE instance SET test_now = '2026-05-25 12:00+00'")
    new = int(ok(db, 'method', 'add', '--donor', did, '--customer', 'cus_1', '--token',
                 'pm_card_mastercard').strip())
    out = js(db, 'pledge', 'set-method', pid, '--method', new)
    assert out['status'] == 'active' and out['method_id'] == new
    assert out['next_charge_on'] == '2026-06-20'
    ev = db.value("SELECT detail FROM event WHERE action = 'method_changed'")
    assert ev['from_method_id'] == mid and ev['to_method_id'] == new and ev['reactivated']
    ok(db, 'method', 'invalidate', mid)
    p = db.ctl('pledge', 'set-method', pid, '--method', mid)
    assert p.returncode == 4 and 'invalid' in p.stderr


def test_show_and_list_json(donor):
    db, did, _ = donor
    pid = create(db, '--amount', '25', '--currency', 'USD', '--ref', 'PL-1', '--fund',
                 'Scholarships, "2026"')['id']
    make_charge(db, pid, did, '2026-03-10', 'scheduled')
    shown = js(db, 'pledge', 'show', pid)
    assert shown['fund'] == 'Scholarships, "2026"' and shown['external_ref'] == 'PL-1'
    assert len(shown['charges']) == 1
    assert set(shown['charges'][0]) >= {'id', 'period', 'status', 'amount', 'amount_minor',
                                        'currency', 'refunded', 'dunning_attempts'}
    assert js(db, 'pledge', 'show', '--by-ref', 'PL-1')['id'] == pid
    listed = js(db, 'pledge', 'list', '--status', 'active')
    assert [p['id'] for p in listed] == [pid]
    assert js(db, 'pledge', 'list', '--fund', 'nope') == []
    assert js(db, 'pledge', 'list', '--donor-ref', 'D1')[0]['donor_name'] == 'Ada'
    assert db.ctl('pledge', 'list', '--status', 'bogus').returncode == 2
    dup = db.ctl('pledge', 'create', '--donor-ref', 'D1', '--amount', '1', '--currency', 'USD',
                 '--ref', 'PL-1')
    assert dup.returncode == 4


def test_help(db):
    for verb in ('create', 'show', 'list', 'pause', 'resume', 'cancel', 'set-amount',
                 'set-method'):
        p = db.ctl('pledge', verb, '--help')
        assert p.returncode == 0 and p.stdout.startswith('usage: pledgectl pledge ' + verb)
    assert db.ctl('pledge', '--help').returncode == 0
