"""POST /webhooks/stripe: Stripe-signed refunds and disputes, recorded once.

The mock gateway signs and delivers real events (`/_mock/webhook`); forged,
stale, replayed, oversized and malformed requests are built and signed here
by hand. Every refusal must leave the database untouched."""
import datetime as dt
import json
import os
import time

import pytest

from httphelp import (SECRET, free_port, get_json, parse_metrics, post_event, request, sign,
                      start_daemon)
from mockgw import MockGateway
from pledgedenv import PledgedEnv

MAX_BODY = 4096


class Setup:
    pass


@pytest.fixture
def wh(db, tmp_path):
    s = Setup()
    s.db = db
    s.port = free_port()
    s.gw = MockGateway(str(tmp_path / 'gw'))
    os.makedirs(s.gw.dir, exist_ok=True)
    s.gw.start(webhook_url='http://127.0.0.1:%d/webhooks/stripe' % s.port, webhook_secret=SECRET)
    s.env = PledgedEnv(db, s.gw, tmp_path)
    s.proc = start_daemon(s.env, s.port, max_body=str(MAX_BODY))
    try:
        yield s
    finally:
        rc = PledgedEnv.stop(s.proc)
        s.gw.stop()
        assert rc == 0, s.env.log()


def paid_charge(s, amount=2500, currency='USD'):
    """A succeeded charge the mock knows (its payment intent is the ref)."""
    status, _, body = s.gw.charge(amount=amount, currency=currency.lower())
    assert status == 200 and body['status'] == 'succeeded', body
    # starts in 2099: the running daemon has nothing to bill
    (pledge,) = s.env.add_pledges([{'token': 'pm_card_visa', 'amount': amount,
                                    'currency': currency, 'anchor': 15,
                                    'start': dt.date(2099, 1, 15)}])
    donor = s.db.value('SELECT donor_id FROM pledge WHERE id = %s', (pledge,))
    cid = s.db.value("INSERT INTO charge (pledge_id, donor_id, period, amount_minor, currency, "
                     "fund, due_at, status, succeeded_at, gateway_ref) VALUES (%s, %s, "
                     "'2028-01-15', %s, %s, 'general', now(), 'succeeded', now(), %s) "
                     "RETURNING id", (pledge, donor, amount, currency, body['id']))
    return cid, body['id']


def snapshot(db):
    return (db.query('SELECT id, charge_id, amount_minor, kind, gateway_ref, status, actor '
                     'FROM refund ORDER BY id'),
            db.query('SELECT id, refunded_minor FROM charge ORDER BY id'),
            db.query('SELECT gateway, event_id FROM webhook_event ORDER BY event_id'),
            db.value('SELECT count(*) FROM event'))


def refunds(db, cid):
    return db.query('SELECT amount_minor, kind, gateway_ref, status, actor FROM refund '
                    'WHERE charge_id = %s ORDER BY id', (cid,))


def refunded(db, cid):
    return db.value('SELECT refunded_minor FROM charge WHERE id = %s', (cid,))


def event_body(event_id, pi, amount=2500, refunded_amount=1000, refund_id='re_hand_1'):
    return {'id': event_id, 'object': 'event', 'type': 'charge.refunded', 'created': 1,
            'data': {'object': {
                'id': 'ch_hand', 'object': 'charge', 'amount': amount,
                'amount_refunded': refunded_amount, 'currency': 'usd', 'payment_intent': pi,
                'refunds': {'object': 'list', 'data': [
                    {'id': refund_id, 'object': 'refund', 'amount': refunded_amount,
                     'status': 'succeeded', 'metadata': {}}]}}}}


# ---- valid events -----------------------------------------------------------------------

def test_refund_recorded_exactly_once(wh):
    cid, pi = paid_charge(wh)
    r = wh.gw.webhook('charge.refunded', payment_intent=pi, amount=1000)
    assert r['delivery_status'] == 200, (r, wh.env.log())
    rows = refunds(wh.db, cid)
    assert len(rows) == 1
    amount, kind, ref, status, actor = rows[0]
    assert (amount, kind, status, actor) == (1000, 'refund', 'succeeded', 'webhook:stripe')
    assert ref.startswith('re_')
    assert refunded(wh.db, cid) == 1000
    evt = r['event']['id']
    assert wh.db.value('SELECT type FROM webhook_event WHERE gateway = %s AND event_id = %s',
                       ('stripe', evt)) == 'charge.refunded'
    assert wh.db.value("SELECT count(*) FROM event WHERE entity = 'refund' AND actor = "
                       "'webhook:stripe'") == 1
    assert wh.db.value("SELECT count(*) FROM event WHERE entity = 'charge' AND entity_id = %s "
                       "AND action = 'webhook' AND detail->>'event_id' = %s", (cid, evt)) == 1

    # the very same delivery again (Stripe retries): nothing changes
    before = snapshot(wh.db)
    status, _, body = post_event(wh.port, r['payload'].encode(), r['signature'])
    assert status == 200 and json.loads(body)['result'] == 'duplicate'
    # the same event id, freshly signed (a later redelivery)
    status, _, body = post_event(wh.port, r['payload'].encode(), sign(r['payload'].encode()))
    assert status == 200 and json.loads(body)['result'] == 'duplicate'
    assert snapshot(wh.db) == before

    # a second partial refund: the event lists both, only the new one counts
    r2 = wh.gw.webhook('charge.refunded', payment_intent=pi, amount=500)
    assert r2['delivery_status'] == 200
    assert len(r2['event']['data']['object']['refunds']['data']) == 2
    assert [x[0] for x in refunds(wh.db, cid)] == [1000, 500]
    assert refunded(wh.db, cid) == 1500


def test_refund_by_pledgectl_is_not_counted_twice(wh, tmp_path):
    cid, pi = paid_charge(wh)
    p = wh.db.ctl('--config', wh.env.config_path, '--json', 'charge', 'refund', cid,
                  '--amount', '7.00')
    assert p.returncode == 0, p.stderr
    assert refunded(wh.db, cid) == 700
    ref = json.loads(p.stdout)['gateway_ref']
    # the gateway then reports that same refund
    r = wh.gw.webhook('charge.refunded', payment_intent=pi, create_refund=False)
    assert r['delivery_status'] == 200
    rows = refunds(wh.db, cid)
    assert len(rows) == 1 and rows[0][2] == ref and rows[0][4] != 'webhook:stripe'
    assert refunded(wh.db, cid) == 700


def test_pending_refund_is_completed_by_its_webhook(wh):
    """pledgectl committed a pending refund and never heard back; the refund
    reached the gateway (tagged with the row id): the webhook completes it."""
    cid, pi = paid_charge(wh)
    rid = wh.db.value("INSERT INTO refund (charge_id, amount_minor, status, actor) "
                      "VALUES (%s, 900, 'pending', 'ops') RETURNING id", (cid,))
    wh.db.execute("UPDATE refund SET idempotency_key = 'pledged-refund-' || id WHERE id = %s",
                  (rid,))
    status, _, body = wh.gw.request('POST', '/v1/refunds',
                                    [('payment_intent', pi), ('amount', '900'),
                                     ('metadata[pledged_refund]', str(rid))],
                                    idempotency_key='pledged-refund-%d' % rid)
    assert status == 200, body
    r = wh.gw.webhook('charge.refunded', payment_intent=pi, create_refund=False)
    assert r['delivery_status'] == 200
    rows = wh.db.query('SELECT id, status, gateway_ref FROM refund WHERE charge_id = %s', (cid,))
    assert rows == [(rid, 'succeeded', body['id'])]
    assert refunded(wh.db, cid) == 900


def test_dispute_records_a_chargeback(wh):
    cid, pi = paid_charge(wh, amount=3000)
    r = wh.gw.webhook('charge.dispute.created', payment_intent=pi)
    assert r['delivery_status'] == 200, wh.env.log()
    rows = refunds(wh.db, cid)
    assert len(rows) == 1
    amount, kind, ref, status, actor = rows[0]
    assert (amount, kind, status, actor) == (3000, 'chargeback', 'succeeded', 'webhook:stripe')
    assert ref.startswith('dp_')
    assert refunded(wh.db, cid) == 3000
    # redelivered: once only
    status, _, _ = post_event(wh.port, r['payload'].encode(), sign(r['payload'].encode()))
    assert status == 200
    assert len(refunds(wh.db, cid)) == 1


def test_unknown_payment_intent_is_acknowledged_and_ignored(wh):
    paid_charge(wh)
    before = snapshot(wh.db)
    r = wh.gw.webhook('charge.refunded', payment_intent='pi_not_ours_123', amount=100)
    assert r['delivery_status'] == 200
    assert snapshot(wh.db) == before
    assert 'no charge has this payment intent' in wh.env.log()


def test_other_event_types_are_acknowledged(wh):
    before = snapshot(wh.db)
    payload = json.dumps({'id': 'evt_other_1', 'object': 'event',
                          'type': 'payment_intent.succeeded',
                          'data': {'object': {'id': 'pi_x'}}}).encode()
    status, _, body = post_event(wh.port, payload, sign(payload))
    assert status == 200 and json.loads(body)['result'] == 'ignored'
    assert snapshot(wh.db) == before


def test_several_signatures_any_may_match(wh):
    cid, pi = paid_charge(wh)
    payload = json.dumps(event_body('evt_multi_1', pi)).encode()
    good = sign(payload)
    t = good.split(',')[0]
    header = '%s,v1=%s,%s,v0=abc' % (t, '0' * 64, good.split(',')[1])
    status, _, body = post_event(wh.port, payload, header)
    assert status == 200, body
    assert refunded(wh.db, cid) == 1000


# ---- refusals: 4xx and nothing recorded ------------------------------------------------------

def test_forged_signature(wh):
    cid, pi = paid_charge(wh)
    before = snapshot(wh.db)
    payload = json.dumps(event_body('evt_forged_1', pi)).encode()
    status, _, body = post_event(wh.port, payload, sign(payload, secret='whsec_wrong'))
    assert status == 400 and b'mismatch' in body
    # a valid signature over other bytes
    status, _, _ = post_event(wh.port, payload + b' ', sign(payload))
    assert status == 400
    # the mock signing with another secret
    r = wh.gw.webhook('charge.refunded', payment_intent=pi, amount=100, secret='whsec_other')
    assert r['delivery_status'] == 400
    assert snapshot(wh.db) == before


def test_old_and_future_timestamps(wh):
    cid, pi = paid_charge(wh)
    before = snapshot(wh.db)
    payload = json.dumps(event_body('evt_old_1', pi)).encode()
    now = int(time.time())
    status, _, body = post_event(wh.port, payload, sign(payload, t=now - 301))
    assert status == 400 and b'too old' in body
    status, _, body = post_event(wh.port, payload, sign(payload, t=now + 3600))
    assert status == 400 and b'future' in body
    r = wh.gw.webhook('charge.refunded', payment_intent=pi, amount=100, timestamp=now - 3600)
    assert r['delivery_status'] == 400
    assert snapshot(wh.db) == before
    # just inside the tolerance is fine
    status, _, _ = post_event(wh.port, payload, sign(payload, t=now - 250))
    assert status == 200
    assert refunded(wh.db, cid) == 1000


def test_oversized_body(wh):
    cid, pi = paid_charge(wh)
    before = snapshot(wh.db)
    ev = event_body('evt_big_1', pi)
    ev['padding'] = 'x' * (MAX_BODY + 10)
    payload = json.dumps(ev).encode()
    status, _, _ = post_event(wh.port, payload, sign(payload))
    assert status == 413
    # chunked, so no Content-Length to refuse up front
    import http.client
    conn = http.client.HTTPConnection('127.0.0.1', wh.port, timeout=10)
    conn.request('POST', '/webhooks/stripe', body=iter([payload[:3000], payload[3000:]]),
                 headers={'Stripe-Signature': sign(payload), 'Transfer-Encoding': 'chunked'},
                 encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()
    assert snapshot(wh.db) == before


def test_malformed_requests(wh):
    cid, pi = paid_charge(wh)
    before = snapshot(wh.db)
    payload = json.dumps(event_body('evt_mal_1', pi)).encode()
    cases = [
        (payload, None),                                  # no header
        (payload, ''),                                    # empty header
        (payload, 'garbage'),                             # not key=value
        (payload, 'v1=' + '0' * 64),                      # no t
        (payload, 't=%d' % int(time.time())),             # no v1
        (payload, 't=12x,v1=%s' % ('0' * 64)),            # t not a number
        (payload, 't=1,t=2,v1=00'),                       # two t
        (payload, 't=%d,v1=%s' % (time.time(), 'a' * 20000)),  # huge
        (b'{not json', sign(b'{not json')),              # signed, but not JSON
        (b'[]', sign(b'[]')),                            # not an object
        (json.dumps({'type': 'charge.refunded'}).encode(), None),  # no id (signed below)
    ]
    for body, header in cases:
        if header is None and body != payload:
            header = sign(body)
        status, _, reply = post_event(wh.port, body, header)
        assert 400 <= status < 500, (body[:40], header and header[:40], status, reply)
    ev = event_body('evt_mal_2', pi)
    ev['data']['object']['amount_refunded'] = 'lots'
    bad = json.dumps(ev).encode()
    status, _, _ = post_event(wh.port, bad, sign(bad))
    assert status == 400
    # wrong method and wrong path
    assert request(wh.port, 'GET', '/webhooks/stripe')[0] == 405
    assert request(wh.port, 'POST', '/webhooks/paypal', b'{}')[0] == 404
    assert snapshot(wh.db) == before
    # and the daemon is still fine
    assert get_json(wh.port, '/healthz')[0] == 200


def test_refund_larger_than_the_charge_is_refused(wh):
    cid, pi = paid_charge(wh, amount=1000)
    before = snapshot(wh.db)
    payload = json.dumps(event_body('evt_over_1', pi, amount=1000, refunded_amount=1000,
                                    refund_id='re_a')).encode()
    ev = json.loads(payload)
    ev['data']['object']['refunds']['data'].append(
        {'id': 're_b', 'amount': 500, 'status': 'succeeded'})
    payload = json.dumps(ev).encode()
    status, _, body = post_event(wh.port, payload, sign(payload))
    assert status == 409, body
    assert snapshot(wh.db) == before


def test_webhooks_are_counted_in_metrics(wh):
    cid, pi = paid_charge(wh)
    wh.gw.webhook('charge.refunded', payment_intent=pi, amount=100)
    payload = b'{}'
    post_event(wh.port, payload, sign(payload, secret='whsec_wrong'))
    status, _, text = request(wh.port, 'GET', '/metrics')
    _, _, samples = parse_metrics(text.decode())
    assert samples[('pledged_webhooks_total', (('result', 'recorded'),))] == 1
    assert samples[('pledged_webhooks_total', (('result', 'rejected'),))] == 1


def test_no_secret_means_503(db, tmp_path):
    port = free_port()
    gw = MockGateway(str(tmp_path / 'gw'))
    os.makedirs(gw.dir, exist_ok=True)
    gw.start()
    env = PledgedEnv(db, gw, tmp_path)
    proc = start_daemon(env, port, secret=None)
    try:
        payload = b'{"id":"evt_1","type":"charge.refunded"}'
        status, _, body = post_event(port, payload, sign(payload))
        assert status == 503, body
        assert 'no webhook signing secret' in env.log()
        assert get_json(port, '/healthz')[0] == 200
    finally:
        assert PledgedEnv.stop(proc) == 0
        gw.stop()
