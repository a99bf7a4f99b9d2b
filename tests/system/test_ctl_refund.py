"""pledgectl charge refund through the mock gateway: pending row with its own
key committed first, partial and full refunds, over-refund refused under the
row lock, gateway failure recorded."""
import json
import os

import pytest

from mockgw import mock_gateway  # noqa: F401  (pytest fixture)


def ok(db, *args):
    p = db.ctl(*args)
    assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p.stdout


@pytest.fixture
def paid(db, mock_gateway, tmp_path):
    """A succeeded 25.00 USD charge the mock gateway knows, and a config."""
    gw = mock_gateway
    status, _, body = gw.charge(amount=2500, idempotency_key='pledged-test-1')
    assert status == 200 and body['status'] == 'succeeded', body
    conf = tmp_path / 'pledged.conf'
    conf.write_text('[gateway]\nbase_url = %s\napi_key_file = %s\n'
                    '[billing]\ntimezone = UTC\n' % (gw.url, os.path.abspath(gw.api_key_file)))
    did = int(ok(db, 'donor', 'add', '--name', 'Ada').strip())
    ok(db, 'method', 'add', '--donor', did, '--customer', 'cus_test', '--token', 'pm_card_visa')
    pid = int(ok(db, 'pledge', 'create', '--donor', did, '--amount', '25', '--currency',
                 'USD').strip())
    cid = db.value("INSERT INTO charge (pledge_id, donor_id, period, amount_minor, currency, "
                   "fund, due_at, status, succeeded_at, gateway_ref) VALUES (%s, %s, "
                   "'2026-01-15', 2500, 'USD', 'general', now(), 'succeeded', now(), %s) "
                   "RETURNING id", (pid, did, body['id']))
    return db, gw, str(conf), cid


def refund(db, conf, *args):
    return db.ctl('--config', conf, '--json', 'charge', 'refund', *args)


def test_partial_then_rest(paid):
    db, gw, conf, cid = paid
    p = refund(db, conf, cid, '--amount', '10.00', '--reason', 'requested_by_customer')
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out['status'] == 'succeeded' and out['amount_minor'] == 1000
    assert out['idempotency_key'] == 'pledged-refund-%d' % out['id']
    assert out['gateway_ref'].startswith('re_')
    assert out['charge_refunded_minor'] == 1000
    assert db.value('SELECT refunded_minor FROM charge WHERE id = %s', (cid,)) == 1000
    actions = [r[0] for r in db.query("SELECT action FROM event WHERE entity = 'refund' "
                                      "ORDER BY id")]
    assert actions == ['requested', 'succeeded']
    # too much: refused before anything is written or sent
    before = db.value('SELECT count(*) FROM refund')
    p = refund(db, conf, cid, '--amount', '20.00')
    assert p.returncode == 4 and '15.00 USD left to refund' in p.stderr
    assert db.value('SELECT count(*) FROM refund') == before
    bad = refund(db, conf, cid, '--amount', '1.001')
    assert bad.returncode == 2 and '--amount' in bad.stderr
    # the rest (default amount)
    p = refund(db, conf, cid)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)['amount_minor'] == 1500
    assert db.value('SELECT refunded_minor FROM charge WHERE id = %s', (cid,)) == 2500
    p = refund(db, conf, cid)
    assert p.returncode == 4 and 'refunded in full' in p.stderr
    refunds = gw.ledger().get('refunds', [])
    assert len(refunds) == 2
    shown = json.loads(ok(db, '--json', 'charge', 'show', cid))
    assert [r['status'] for r in shown['refunds']] == ['succeeded', 'succeeded']


def test_refusals(paid):
    db, gw, conf, cid = paid
    assert db.ctl('charge', 'refund', cid).returncode == 2          # no config
    assert refund(db, conf, '999999').returncode == 3
    db.execute("UPDATE charge SET status = 'failed', succeeded_at = NULL WHERE id = %s", (cid,))
    p = refund(db, conf, cid)
    assert p.returncode == 4 and 'only succeeded charges' in p.stderr
    assert db.value('SELECT count(*) FROM refund') == 0


def test_gateway_refusal_is_recorded(paid):
    db, gw, conf, cid = paid
    # the gateway does not know this payment: its refusal is final
    db.execute("UPDATE charge SET gateway_ref = 'pi_unknown' WHERE id = %s", (cid,))
    p = refund(db, conf, cid, '--amount', '5')
    assert p.returncode == 1 and 'failed at the gateway' in p.stderr
    assert db.query('SELECT status, idempotency_key IS NOT NULL FROM refund') == \
        [('failed', True)]
    assert db.value('SELECT refunded_minor FROM charge WHERE id = %s', (cid,)) == 0
