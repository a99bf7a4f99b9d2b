"""pledgectl charge list/show/retry: filters, every attempt and event, the
retry rules (which states, refusals with reasons, all or nothing, dry run,
racing a claiming daemon)."""
import json
import subprocess
import time

import psycopg2
import pytest

from conftest import binary

TZ = 'UTC'


def ok(db, *args):
    p = db.ctl(*args)
    assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p.stdout


def js(db, *args):
    return json.loads(ok(db, '--json', *args))


@pytest.fixture
def billing(db):
    """Two donors with a monthly pledge each, billed on the test clock."""
    db.execute("UPDATE instance SET test_now = '2026-01-15 10:00+00'")
    pledges = []
    for ref, fund in (('D1', 'general'), ('D2', 'scholarships')):
        did = int(ok(db, 'donor', 'add', '--name', 'Donor ' + ref, '--ref', ref).strip())
        ok(db, 'method', 'add', '--donor', did, '--customer', 'cus_' + ref, '--token',
           'pm_' + ref)
        pid = int(ok(db, 'pledge', 'create', '--donor', did, '--amount', '25', '--currency',
                     'USD', '--anchor', '15', '--fund', fund).strip())
        pledges.append((did, pid))
    db.value("SELECT pledges FROM pl_materialise(%s, '09:00', 'latest', 100, 'test')", (TZ,))
    return db, pledges


def charge_of(db, pid):
    return db.value('SELECT id FROM charge WHERE pledge_id = %s ORDER BY period DESC LIMIT 1',
                    (pid,))


def claim(db, c, owner='node-a'):
    """What a daemon's claim leaves behind: a lease and an in-flight attempt
    (written directly, so these tests do not depend on pl_claim's signature)."""
    n = db.value('SELECT coalesce(max(attempt_no), 0) + 1 FROM charge_attempt '
                 'WHERE charge_id = %s', (c,))
    db.execute("UPDATE charge SET status = 'processing', lease_owner = %s, "
               "lease_expires_at = now() + interval '5 minutes' WHERE id = %s", (owner, c))
    db.execute("INSERT INTO charge_attempt (charge_id, attempt_no, idempotency_key, "
               "payment_method_id, amount_minor, currency) SELECT c.id, %s, "
               "'pledged-' || c.id || '-' || %s, p.payment_method_id, c.amount_minor, "
               "c.currency FROM charge c JOIN pledge p ON p.id = c.pledge_id WHERE c.id = %s",
               (n, n, c))
    return n


def declined(db, c, n, charge_status, decline):
    db.execute("UPDATE charge_attempt SET state = 'declined', outcome = 'declined_soft', "
               "decline_code = %s, finished_at = now() WHERE charge_id = %s AND attempt_no = %s",
               (decline, c, n))
    db.execute("UPDATE charge SET status = %s, lease_owner = NULL, lease_expires_at = NULL, "
               "decline_code = %s WHERE id = %s", (charge_status, decline, c))
    db.execute("INSERT INTO event (actor, entity, entity_id, action, detail) "
               "VALUES ('daemon:node-a', 'charge', %s, 'failed', '{}')", (c,))


def test_list_filters_and_json(billing):
    db, ((d1, p1), (d2, p2)) = billing
    rows = js(db, 'charge', 'list')
    assert len(rows) == 2
    assert set(rows[0]) >= {'id', 'pledge_id', 'donor_id', 'period', 'status', 'amount',
                            'amount_minor', 'currency', 'refunded', 'refunded_minor', 'fund',
                            'dunning_attempts', 'next_attempt_at', 'failure_code',
                            'decline_code', 'succeeded_at'}
    assert rows[0]['amount'] == '25.00' and rows[0]['period'] == '2026-01-15'
    assert [r['pledge_id'] for r in js(db, 'charge', 'list', '--pledge', p2)] == [p2]
    assert [r['donor_id'] for r in js(db, 'charge', 'list', '--donor', d1)] == [d1]
    assert len(js(db, 'charge', 'list', '--fund', 'scholarships')) == 1
    assert len(js(db, 'charge', 'list', '--status', 'scheduled')) == 2
    assert js(db, 'charge', 'list', '--status', 'failed') == []
    assert js(db, 'charge', 'list', '--from', '2026-01-16') == []
    assert len(js(db, 'charge', 'list', '--from', '2026-01-15', '--to', '2026-01-15')) == 2
    assert len(js(db, 'charge', 'list', '--limit', '1')) == 1
    assert len(js(db, 'charge', 'list', '--limit', '1', '--offset', '1')) == 1
    for bad in (('--status', 'bogus'), ('--from', 'yesterday'), ('--limit', '-1'),
                ('--donor', 'x')):
        assert db.ctl('charge', 'list', *bad).returncode == 2, bad
    tsv = ok(db, 'charge', 'list').splitlines()
    assert tsv[0].startswith('id\tpledge_id\tdonor_id\tperiod\tstatus\tamount\t')
    assert len(tsv) == 3


def test_show_has_attempts_refunds_events(billing):
    db, ((d1, p1), _) = billing
    c = charge_of(db, p1)
    a = claim(db, c)
    declined(db, c, a, 'retry_wait', 'insufficient_funds')
    shown = js(db, 'charge', 'show', c)
    for key in ('id', 'pledge_id', 'donor_id', 'donor_name', 'period', 'status', 'amount',
                'amount_minor', 'currency', 'refunded', 'fee', 'fund', 'due_at',
                'next_attempt_at', 'dunning_attempts', 'lease_owner', 'gateway_ref',
                'failure_code', 'decline_code', 'succeeded_at', 'attempts', 'refunds',
                'events'):
        assert key in shown, key
    assert shown['status'] == 'retry_wait'
    assert len(shown['attempts']) == 1
    att = shown['attempts'][0]
    assert att['idempotency_key'] == 'pledged-%d-1' % c and att['state'] == 'declined'
    assert att['decline_code'] == 'insufficient_funds'
    assert [e['action'] for e in shown['events']] == ['scheduled', 'failed']
    assert isinstance(shown['events'][0]['detail'], dict)
    assert shown['refunds'] == []
    text = ok(db, '--format', 'table', 'charge', 'show', c)
    assert 'Attempts:' in text and 'Events:' in text and 'pledged-%d-1' % c in text
    assert db.ctl('charge', 'show', '999999').returncode == 3
    assert db.ctl('charge', 'show', 'abc').returncode == 2


def test_retry_failed_charge(billing):
    db, ((_, p1), _) = billing
    c = charge_of(db, p1)
    a = claim(db, c)
    declined(db, c, a, 'failed', 'lost_card')
    db.execute("UPDATE pledge SET status = 'needs_payment_method' WHERE id = %s", (p1,))
    # the pledge now needs a payment method: refused with that reason
    p = db.ctl('charge', 'retry', c)
    assert p.returncode == 4 and 'needs a payment method' in p.stderr
    did = db.value('SELECT donor_id FROM charge WHERE id = %s', (c,))
    mid = int(ok(db, 'method', 'add', '--donor', did, '--customer', 'cus_1', '--token',
                 'pm_new').strip())
    ok(db, 'pledge', 'set-method', p1, '--method', mid)
    dry = js(db, 'charge', 'retry', '--dry-run', c)
    assert dry == {'dry_run': True, 'charges': [
        {'id': c, 'pledge_id': p1, 'period': '2026-01-15', 'from': 'failed'}]}
    assert db.value('SELECT status FROM charge WHERE id = %s', (c,)) == 'failed'
    listen = psycopg2.connect(dbname=db.name)
    listen.set_isolation_level(0)
    listen.cursor().execute('LISTEN pledged_wake')
    out = js(db, 'charge', 'retry', c)
    assert out['dry_run'] is False and [x['id'] for x in out['charges']] == [c]
    row = db.query('SELECT status, next_attempt_at = pl_now(), dunning_attempts FROM charge '
                   'WHERE id = %s', (c,))[0]
    assert row == ('scheduled', True, 0)
    ev = db.query("SELECT actor, detail FROM event WHERE entity = 'charge' AND entity_id = %s "
                  "AND action = 'retry_requested'", (c,))
    assert len(ev) == 1 and ev[0][0].startswith('pledgectl:') and ev[0][1] == {'from': 'failed'}
    listen.poll()
    assert [n.channel for n in listen.notifies] == ['pledged_wake']
    listen.close()


@pytest.mark.parametrize('status,reason', [
    ('succeeded', 'it succeeded'),
    ('processing', 'a daemon is attempting it'),
    ('unknown', 'reconciler must settle it'),
    ('scheduled', 'already scheduled'),
])
def test_retry_refusals(billing, status, reason):
    db, ((_, p1), (_, p2)) = billing
    c = charge_of(db, p1)
    other = charge_of(db, p2)
    db.execute("UPDATE charge SET status = 'failed' WHERE id = %s", (other,))
    sets = {'succeeded': "status = 'succeeded', succeeded_at = now()",
            'processing': "status = 'processing', lease_owner = 'n', "
                          "lease_expires_at = now() + interval '1 minute'",
            'unknown': "status = 'unknown'",
            'scheduled': "status = 'scheduled'"}[status]
    db.execute('UPDATE charge SET %s WHERE id = %%s' % sets, (c,))
    before = db.value('SELECT count(*) FROM event')
    p = db.ctl('charge', 'retry', other, c)
    assert p.returncode == 4
    assert 'charge %d (%s): refused: ' % (c, status) in p.stderr and reason in p.stderr
    assert 'nothing was retried' in p.stderr
    # all or nothing: the retryable one was not touched either
    assert db.value('SELECT status FROM charge WHERE id = %s', (other,)) == 'failed'
    assert db.value('SELECT count(*) FROM event') == before


def test_retry_unknown_id_and_usage(billing):
    db, _ = billing
    assert db.ctl('charge', 'retry', '999999').returncode == 3
    assert db.ctl('charge', 'retry').returncode == 2
    assert db.ctl('charge', 'retry', '1', '--status', 'failed').returncode == 2
    assert db.ctl('charge', 'retry', '--status', 'bogus').returncode == 2
    p = db.ctl('charge', 'retry', '--status', 'succeeded')
    assert p.returncode == 4 and 'never retried' in p.stderr


def test_retry_by_status_since(billing):
    db, ((_, p1), (_, p2)) = billing
    c1, c2 = charge_of(db, p1), charge_of(db, p2)
    db.execute("UPDATE charge SET status = 'action_required' WHERE id IN (%s, %s)", (c1, c2))
    db.execute("UPDATE pledge SET status = 'paused' WHERE id = %s", (p2,))
    out = js(db, 'charge', 'retry', '--status', 'action_required', '--since', '2026-01-01')
    # the paused pledge's charge is silently left out of a selection
    assert [x['id'] for x in out['charges']] == [c1]
    assert db.value('SELECT status FROM charge WHERE id = %s', (c1,)) == 'scheduled'
    assert db.value('SELECT status FROM charge WHERE id = %s', (c2,)) == 'action_required'
    none = js(db, 'charge', 'retry', '--status', 'action_required', '--since', '2026-02-01')
    assert none['charges'] == []


def test_retry_racing_a_claim(billing):
    """A daemon claims the charge while pledgectl waits for its row lock:
    pledgectl then sees it processing and refuses; nothing is double-sent."""
    db, ((_, p1), _) = billing
    c = charge_of(db, p1)
    db.execute("UPDATE charge SET status = 'retry_wait', next_attempt_at = pl_now() "
               "WHERE id = %s", (c,))
    daemon = psycopg2.connect(dbname=db.name)
    cur = daemon.cursor()
    # the claim's shape: lock the due row, lease it, write the attempt
    cur.execute("SELECT id FROM charge WHERE status IN ('scheduled', 'retry_wait') "
                "AND next_attempt_at <= pl_now() AND id = %s FOR UPDATE SKIP LOCKED", (c,))
    assert cur.fetchall() == [(c,)]
    cur.execute("UPDATE charge SET status = 'processing', lease_owner = 'node-a', "
                "lease_expires_at = now() + interval '5 minutes' WHERE id = %s", (c,))
    cur.execute("INSERT INTO charge_attempt (charge_id, attempt_no, idempotency_key, "
                "amount_minor, currency) VALUES (%s, 1, 'pledged-' || %s || '-1', 2500, 'USD')",
                (c, c))
    proc = subprocess.Popen([binary('pledgectl'), 'charge', 'retry', str(c)], env=db.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert proc.poll() is None          # waiting on the daemon's lock
    daemon.commit()
    out, err = proc.communicate(timeout=60)
    daemon.close()
    assert proc.returncode == 4 and 'processing' in err
    assert db.value('SELECT status FROM charge WHERE id = %s', (c,)) == 'processing'
    assert db.value('SELECT count(*) FROM charge_attempt WHERE charge_id = %s', (c,)) == 1


def test_help(db):
    for verb in ('list', 'show', 'retry', 'refund'):
        p = db.ctl('charge', verb, '--help')
        assert p.returncode == 0 and p.stdout.startswith('usage: pledgectl charge ' + verb), verb
