"""pledgectl status (queue health) and clock (test clock; refused on a
production database)."""
import json


def ok(db, *args):
    p = db.ctl(*args)
    assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p.stdout


def js(db, *args):
    return json.loads(ok(db, '--json', *args))


STATUS_KEYS = {'now', 'today', 'test_mode', 'test_clock', 'charges', 'pledges', 'due_now',
               'oldest_due_id', 'oldest_due_at', 'oldest_due_age_s', 'unknown_attempts',
               'oldest_unknown_charge_id', 'oldest_unknown_since', 'oldest_unknown_age_s',
               'daemons', 'daemons_halted', 'halted', 'last_daemon_activity',
               'last_billing_event', 'daemon_nodes', 'pledges_needing_payment_method',
               'pledges_lapsed'}


def test_status_empty(db):
    s = js(db, 'status')
    assert STATUS_KEYS <= set(s)
    assert s['charges'] == {k: 0 for k in ('scheduled', 'processing', 'retry_wait', 'unknown',
                                           'succeeded', 'failed', 'action_required', 'skipped',
                                           'cancelled')}
    assert s['halted'] is False and s['daemon_nodes'] == [] and s['oldest_due_id'] is None
    text = ok(db, '--format', 'table', 'status')
    assert 'CHARGES' in text and 'Daemons:' in text


def test_status_reports_queue(db):
    db.execute("UPDATE instance SET test_now = '2026-01-15 12:00+00'")
    did = int(ok(db, 'donor', 'add', '--name', 'Ada').strip())
    ok(db, 'method', 'add', '--donor', did, '--customer', 'cus_1', '--token', 'pm_card_visa')
    pids = [int(ok(db, 'pledge', 'create', '--donor', did, '--amount', '5', '--currency', 'USD',
                   '--anchor', '15').strip()) for _ in range(3)]
    db.value("SELECT pledges FROM pl_materialise('UTC', '09:00', 'latest', 100, 'test')")
    c1, c2, c3 = [r[0] for r in db.query('SELECT id FROM charge ORDER BY id')]
    db.execute("UPDATE charge SET status = 'unknown' WHERE id = %s", (c2,))
    db.execute("INSERT INTO charge_attempt (charge_id, attempt_no, idempotency_key, amount_minor, "
               "currency, state, started_at) VALUES (%s, 1, 'k', 500, 'USD', 'unknown', "
               "now() - interval '2 hours')", (c2,))
    db.execute("UPDATE pledge SET status = 'needs_payment_method' WHERE id = %s", (pids[1],))
    db.execute("UPDATE pledge SET status = 'lapsed' WHERE id = %s", (pids[2],))
    db.execute("INSERT INTO daemon_node (node_name, halted, halt_reason, status_line) VALUES "
               "('billing-1', true, 'gateway said 401: invalid API key', 'halted'), "
               "('billing-2', false, NULL, 'ok')")
    s = js(db, 'status')
    assert s['charges']['scheduled'] == 2 and s['charges']['unknown'] == 1
    assert s['oldest_due_id'] == c1 and s['oldest_due_age_s'] == 3 * 3600
    assert s['unknown_attempts'] == 1 and s['oldest_unknown_charge_id'] == c2
    assert 7000 <= s['oldest_unknown_age_s'] < 8000
    assert s['halted'] is True and s['daemons'] == 2 and s['daemons_halted'] == 1
    assert [n['node_name'] for n in s['daemon_nodes']] == ['billing-1', 'billing-2']
    assert s['daemon_nodes'][0]['halt_reason'] == 'gateway said 401: invalid API key'
    assert s['pledges_needing_payment_method'] == 1 and s['pledges_lapsed'] == 1
    assert s['last_daemon_activity'] is not None
    p = db.ctl('status')
    assert p.returncode == 0 and 'billing-1 is HALTED: gateway said 401' in p.stderr
    del c3


def test_clock(db):
    c = js(db, 'clock', 'show')
    assert c['test_mode'] is True and c['test_now'] is None
    c = js(db, 'clock', 'set', '2026-03-01T09:00:00Z')
    assert c['now'] == '2026-03-01T09:00:00+00:00' and c['today'] == '2026-03-01'
    assert db.value('SELECT pl_now()::text') == '2026-03-01 09:00:00+00'
    c = js(db, 'clock', 'advance', '36h')
    assert c['now'] == '2026-03-02T21:00:00+00:00'
    c = js(db, 'clock', 'advance', '1 month')
    assert c['today'] == '2026-04-02'
    ev = db.query("SELECT action, detail FROM event WHERE entity = 'clock' ORDER BY id")
    assert [a for a, _ in ev] == ['set', 'advanced', 'advanced']
    assert ev[0][1]['from'] is None
    assert db.ctl('clock', 'set', 'not a time').returncode == 2
    assert db.ctl('clock', 'advance', '-1d').returncode == 2
    assert db.ctl('clock', 'advance', 'soon').returncode == 2
    c = js(db, 'clock', 'set', 'real')
    assert c['test_now'] is None
    assert db.value('SELECT test_now FROM instance') is None


def test_clock_refused_on_production(empty_db):
    empty_db.ctl('migrate', check=True)        # no --test-mode: a production database
    for args in (('clock', 'set', '2026-01-01'), ('clock', 'advance', '1d'),
                 ('clock', 'set', 'real')):
        p = empty_db.ctl(*args)
        assert p.returncode == 4, (args, p.stderr)
        assert 'production database' in p.stderr
    assert empty_db.value('SELECT test_now FROM instance') is None
    assert empty_db.value("SELECT count(*) FROM event WHERE entity = 'clock'") == 0
    shown = json.loads(empty_db.ctl('--json', 'clock', 'show', check=True).stdout)
    assert shown['test_mode'] is False


def test_schema_missing_is_clear(empty_db):
    p = empty_db.ctl('status')
    assert p.returncode == 1 and 'pledgectl migrate' in p.stderr


def test_help(db):
    for args in (('status', '--help'), ('clock', '--help'), ('clock', 'show', '--help'),
                 ('clock', 'set', '--help'), ('clock', 'advance', '--help'), ('--help',)):
        p = db.ctl(*args)
        assert p.returncode == 0 and p.stdout.startswith('usage: pledgectl'), args
    top = db.ctl('--help').stdout
    for noun in ('migrate', 'status', 'donor', 'method', 'pledge', 'import', 'charge', 'clock'):
        assert noun in top
    assert db.ctl('--format', 'xml', 'status').returncode == 2
