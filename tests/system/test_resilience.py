"""Exactly once when things go wrong (issue #7): lease recovery of our own
and other nodes' charges, the reconciler, halt on a refused API key and
resume on SIGHUP, graceful shutdown with a deadline, sd_notify.

Real pledged, real PostgreSQL, the mock gateway over HTTP. Charges left
"as if a daemon died" are made with the real pl_materialise/pl_claim, so
the tests do not depend on how those write their rows."""
import os
import shutil
import signal
import socket
import tempfile
import time

import pytest

from mockgw import mock_gateway  # noqa: F401  (fixture)
from pledgedenv import PledgedEnv, check_exactly_once

NOW = '2028-03-01 12:00:00+00'
DUE = '2028-03-01'


@pytest.fixture
def env(db, mock_gateway, tmp_path):  # noqa: F811
    e = PledgedEnv(db, mock_gateway, tmp_path,
                   billing={'reconcile_schedule': '1s,2s', 'poll_interval': '1s'})
    e.clock(NOW)
    yield e
    proc = getattr(e, 'proc', None)
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def add(env, n, tokens=('pm_card_visa',)):
    return env.add_pledges_bulk(n, tokens=tokens, start=DUE)


def claim_as(db, node, lease='1 hour', limit=1000):
    """A daemon `node` materialises and claims, commits, and dies before
    sending anything it claimed (or after: the rows are the same)."""
    db.query("SELECT * FROM pl_materialise('UTC', '09:00', 'latest', 10000, 'test')")
    return db.query("SELECT charge_id, idempotency_key, mode FROM pl_claim(%s, %s, %s::interval,"
                    " '24 hours', NULL, NULL, 'test')", (node, limit, lease))


def keys_executed(gw):
    return sorted(c['idempotency_key'] for c in gw.ledger()['charges'])


def events(db, charge_id):
    return [r[0] for r in db.query("SELECT action FROM event WHERE entity = 'charge' AND "
                                   'entity_id = %s ORDER BY id', (charge_id,))]


# ---- lease recovery ------------------------------------------------------------


def test_own_leases_recovered_at_start_with_the_same_key(env, db, mock_gateway):  # noqa: F811
    """A daemon died after committing its claim (lease still valid for an
    hour): the same node, started again, takes its charges back at once and
    resends each attempt with its original key; one execution per key."""
    add(env, 5)
    claimed = claim_as(db, 'test-node')
    assert len(claimed) == 5
    # two of them did reach the gateway before the crash
    for charge_id, key, _ in claimed[:2]:
        token, cus = db.query('SELECT m.token, m.customer_ref FROM charge c JOIN pledge p ON '
                              'p.id = c.pledge_id JOIN payment_method m ON m.id = '
                              'p.payment_method_id WHERE c.id = %s', (charge_id,))[0]
        amount = db.value('SELECT amount_minor FROM charge WHERE id = %s', (charge_id,))
        period, fund = db.query('SELECT period::text, fund FROM charge WHERE id = %s',
                                (charge_id,))[0]
        status, _, _ = mock_gateway.charge(
            amount=amount, payment_method=token, customer=cus, idempotency_key=key,
            metadata={'pledged_charge': str(charge_id), 'pledged_attempt': key},
            description='Gift for %s (%s)' % (period, fund))
        assert status == 200
    t0 = time.monotonic()
    env.once()
    assert time.monotonic() - t0 < 20, 'own leases waited for expiry'
    assert keys_executed(mock_gateway) == sorted(k for _, k, _ in claimed)
    assert db.value("SELECT count(*) FROM charge WHERE status = 'succeeded'") == 5
    assert db.value('SELECT count(*) FROM charge_attempt') == 5
    assert db.value("SELECT count(*) FROM event WHERE action = 'recovered'") == 5
    assert mock_gateway.counters()['replays'] == 2
    check_exactly_once(db, mock_gateway)


def test_other_nodes_leases_recovered_only_after_expiry(env, db, mock_gateway):  # noqa: F811
    add(env, 4)
    dead = claim_as(db, 'dead-node', limit=2)          # expires below
    alive = claim_as(db, 'live-node', limit=2)         # an hour left
    db.execute("UPDATE charge SET lease_expires_at = now() - interval '1 second' "
               "WHERE lease_owner = 'dead-node'")
    env.once()
    assert keys_executed(mock_gateway) == sorted(k for _, k, _ in dead)
    rows = dict(db.query('SELECT id, status FROM charge'))
    for charge_id, _, _ in dead:
        assert rows[charge_id] == 'succeeded'
        assert 'recovered' in events(db, charge_id)
    for charge_id, _, _ in alive:
        assert rows[charge_id] == 'processing'
    assert db.value("SELECT count(*) FROM charge_attempt WHERE state = 'in_flight'") == 2
    # once that lease expires too, it is this node's to finish, same keys
    db.execute("UPDATE charge SET lease_expires_at = now() - interval '1 second' "
               "WHERE lease_owner = 'live-node'")
    env.once()
    assert keys_executed(mock_gateway) == sorted(k for _, k, _ in dead + alive)
    assert check_exactly_once(db, mock_gateway) == {'succeeded': 4}


def test_past_the_idempotency_window_a_recovered_attempt_is_looked_up(env, db,  # noqa: F811
                                                                      mock_gateway):
    """Past gateway.idempotency_window a resend could execute again (the
    gateway may have forgotten the key): the attempt is looked up by key.
    Found: its outcome is recorded, nothing is sent. Not found (after
    lookup_settle): the attempt is closed and a new key is minted."""
    env.write_config(gateway={'idempotency_window': '1s', 'lookup_settle': '0s'})
    add(env, 2)
    (c1, k1, _), (c2, k2, _) = claim_as(db, 'dead-node')
    db.execute("UPDATE charge SET lease_expires_at = now() - interval '1 second'")
    db.execute("UPDATE charge_attempt SET started_at = now() - interval '1 hour'")
    # c1's attempt executed before the crash; c2's never reached the gateway
    token, cus, amount = db.query(
        'SELECT m.token, m.customer_ref, c.amount_minor FROM charge c JOIN pledge p ON '
        'p.id = c.pledge_id JOIN payment_method m ON m.id = p.payment_method_id '
        'WHERE c.id = %s', (c1,))[0]
    status, _, pi = mock_gateway.charge(
        amount=amount, payment_method=token, customer=cus, idempotency_key=k1,
        metadata={'pledged_charge': str(c1), 'pledged_attempt': k1})
    assert status == 200
    posts_before = mock_gateway.counters()['requests_total']

    env.once()

    assert db.query('SELECT status, gateway_ref FROM charge WHERE id = %s', (c1,)) == [
        ('succeeded', pi['id'])]
    assert db.query('SELECT attempt_no, state FROM charge_attempt WHERE charge_id = %s '
                    'ORDER BY attempt_no', (c2,)) == [(1, 'error'), (2, 'succeeded')]
    assert db.value('SELECT error_code FROM charge_attempt WHERE idempotency_key = %s',
                    (k2,)) == 'not_found_at_gateway'
    # k1 was never sent again (no replay); k2 never executed; the new key did, once
    assert mock_gateway.counters()['replays'] == 0
    assert keys_executed(mock_gateway) == sorted([k1, 'pledged-%d-2' % c2])
    assert mock_gateway.counters()['requests_total'] - posts_before == 3  # 2 lookups + 1 send
    assert check_exactly_once(db, mock_gateway) == {'succeeded': 2}


def test_not_found_is_not_trusted_before_lookup_settle(env, db, mock_gateway):  # noqa: F811
    """Search can lag: a lookup that finds nothing sooner than lookup_settle
    after the last send leaves the outcome unknown; no new key."""
    env.write_config(gateway={'idempotency_window': '1s', 'lookup_settle': '1h'})
    add(env, 1)
    [(c1, k1, _)] = claim_as(db, 'dead-node')
    db.execute("UPDATE charge SET lease_expires_at = now() - interval '1 second'")
    db.execute("UPDATE charge_attempt SET started_at = now() - interval '10 minutes'")
    env.once()
    assert db.query('SELECT c.status, a.state, a.attempt_no FROM charge c JOIN charge_attempt a'
                    ' ON a.charge_id = c.id') == [('unknown', 'unknown', 1)]
    assert mock_gateway.ledger()['charges'] == []


# ---- the reconciler --------------------------------------------------------------


def test_reconciler_resolves_unknown_outcomes_on_its_schedule(env, db, mock_gateway):  # noqa: F811
    """Daemon mode: a reply lost after the charge executed is resent with the
    same key (the gateway replays it); a saved 500 is looked up by key (a
    resend would only replay the 500). Never a new attempt meanwhile."""
    mock_gateway.config(payment_methods={
        'pm_card_visa': {'next_n': {'drop_after': 1}},
        'pm_card_mastercard': {'next_n': {'error_500_after_execute': 1}}})
    add(env, 2, tokens=('pm_card_visa', 'pm_card_mastercard'))
    env.proc = env.start()
    env.wait_for("SELECT count(*) FROM charge WHERE status = 'succeeded'", 2, timeout=30)
    for charge_id, token in db.query('SELECT c.id, m.token FROM charge c JOIN pledge p ON '
                                     'p.id = c.pledge_id JOIN payment_method m ON '
                                     'm.id = p.payment_method_id'):
        evs = events(db, charge_id)
        assert evs == ['scheduled', 'unknown', 'succeeded'], (token, evs)
        assert db.value('SELECT count(*) FROM charge_attempt WHERE charge_id = %s',
                        (charge_id,)) == 1
        # checked no sooner than the schedule's first step (1s)
        gap = db.value("SELECT extract(epoch FROM max(a.finished_at) - min(a.started_at)) "
                       'FROM charge_attempt a WHERE a.charge_id = %s', (charge_id,))
        assert gap >= 1.0, (token, gap)
    assert mock_gateway.counters()['replays'] == 1      # only the dropped reply was resent
    assert env.stop(env.proc) == 0
    assert check_exactly_once(db, mock_gateway) == {'succeeded': 2}


# ---- halt on a refused key ----------------------------------------------------------


def test_wrong_api_key_halts_burns_nothing_and_sighup_resumes(env, db, mock_gateway,  # noqa: F811
                                                              tmp_path):
    key_file = tmp_path / 'api_key'
    key_file.write_text('sk_test_WRONG\n')
    env.write_config(gateway={'api_key_file': str(key_file)})
    add(env, 30)
    # one charge has an attempt whose outcome is unknown (it executed: the
    # gateway has it), due for a check: a refused resend must not withdraw it
    [(cu, ku, _)] = claim_as(db, 'dead-node', limit=1)
    token, cus, amount, period, fund = db.query(
        'SELECT m.token, m.customer_ref, c.amount_minor, c.period::text, c.fund FROM charge c '
        'JOIN pledge p ON p.id = c.pledge_id JOIN payment_method m ON '
        'm.id = p.payment_method_id WHERE c.id = %s', (cu,))[0]
    assert mock_gateway.charge(amount=amount, payment_method=token, customer=cus,
                               idempotency_key=ku, description='Gift for %s (%s)' % (period, fund),
                               metadata={'pledged_charge': str(cu),
                                         'pledged_attempt': ku})[0] == 200
    db.execute("UPDATE charge_attempt SET state = 'unknown', sends = 1, last_sent_at = now(),"
               " next_check_at = now(), http_status = NULL WHERE charge_id = %s", (cu,))
    db.execute("UPDATE charge SET status = 'unknown', lease_owner = NULL, "
               'lease_expires_at = NULL WHERE id = %s', (cu,))
    pledges_before = db.query('SELECT id, status, failed_periods, next_charge_on FROM pledge '
                              'ORDER BY id')

    env.proc = env.start()
    log = env.wait_log('BILLING HALTED')
    assert 'HTTP 401' in log
    env.wait_for('SELECT halted FROM daemon_node', True, timeout=10)
    assert 'HALTED' in db.value('SELECT status_line FROM daemon_node')
    time.sleep(2)   # it keeps polling: still nothing may be claimed
    assert len(mock_gateway.ledger()['charges']) == 1          # only the test's own
    assert db.query('SELECT status, count(*) FROM charge GROUP BY 1 ORDER BY 1') == [
        ('scheduled', 29), ('unknown', 1)]
    assert db.query('SELECT charge_id, idempotency_key, state FROM charge_attempt') == [
        (cu, ku, 'unknown')]
    assert db.query('SELECT id, status, failed_periods, next_charge_on FROM pledge '
                    'ORDER BY id') == pledges_before
    assert db.value("SELECT count(*) FROM payment_method WHERE status <> 'active'") == 0
    assert db.value("SELECT count(*) FROM event WHERE action NOT IN ('scheduled', "
                    "'recovered')") == 0
    assert mock_gateway.counters()['by_status'].get('401', 0) >= 1

    key_file.write_text(mock_gateway.api_key + '\n')
    env.proc.send_signal(signal.SIGHUP)
    log = env.wait_log('billing resumed')
    assert 'configuration reloaded' in log and 'changed' in log
    env.wait_for("SELECT count(*) FROM charge WHERE status = 'succeeded'", 30, timeout=30)
    env.wait_for('SELECT halted FROM daemon_node', False, timeout=10)
    assert env.stop(env.proc) == 0
    assert check_exactly_once(db, mock_gateway) == {'succeeded': 30}
    assert db.value('SELECT count(*) FROM charge_attempt') == 30


def test_once_with_a_wrong_key_exits_1_and_changes_nothing(env, db, mock_gateway,  # noqa: F811
                                                          tmp_path):
    key_file = tmp_path / 'api_key'
    key_file.write_text('sk_test_WRONG\n')
    env.write_config(gateway={'api_key_file': str(key_file)})
    add(env, 10)
    proc = env.once(check=False)
    assert proc.returncode == 1
    assert 'HALTED' in proc.stderr
    assert mock_gateway.ledger()['charges'] == []
    assert db.value('SELECT count(*) FROM charge_attempt') == 0
    assert db.query('SELECT status, count(*) FROM charge GROUP BY 1') == [('scheduled', 10)]
    assert db.value("SELECT count(*) FROM pledge WHERE status <> 'active' "
                    'OR failed_periods <> 0') == 0


# ---- graceful shutdown ----------------------------------------------------------------


def test_sigterm_lets_requests_in_flight_finish_and_exits_0(env, db, mock_gateway):  # noqa: F811
    env.write_config(gateway={'max_in_flight': '8'}, billing={'shutdown_deadline': '20s'})
    mock_gateway.config(latency_ms=1500)
    add(env, 40)
    env.proc = env.start()
    env.wait_for("SELECT count(*) > 0 FROM charge WHERE status = 'processing'", True)
    time.sleep(0.3)
    t0 = time.monotonic()
    env.proc.send_signal(signal.SIGTERM)
    assert env.proc.wait(30) == 0
    assert time.monotonic() - t0 < 20
    log = env.log()
    assert 'drained' in log, log
    # every request in flight finished and was recorded; nothing new was claimed
    assert db.value("SELECT count(*) FROM charge WHERE status = 'processing'") == 0
    done = db.value("SELECT count(*) FROM charge WHERE status = 'succeeded'")
    assert 0 < done < 40
    assert db.value("SELECT count(*) FROM charge_attempt WHERE state <> 'succeeded'") == 0
    mock_gateway.config(latency_ms=0)
    env.settle()
    assert check_exactly_once(db, mock_gateway) == {'succeeded': 40}


def test_sigterm_deadline_leaves_the_rest_leased_for_recovery(env, db, mock_gateway):  # noqa: F811
    env.write_config(gateway={'max_in_flight': '8', 'request_timeout': '7s',
                              'connect_timeout': '1s'},
                     billing={'shutdown_deadline': '1s', 'lease': '10s'})
    mock_gateway.config(latency_ms=5000)
    add(env, 20)
    env.proc = env.start()
    # all 20 are claimed; 8 are sent (max_in_flight), 12 wait for a slot
    env.wait_for("SELECT count(*) FROM charge WHERE status = 'processing'", 20)
    deadline = time.monotonic() + 30
    while mock_gateway.counters()['in_flight_current'] < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    t0 = time.monotonic()
    env.proc.send_signal(signal.SIGTERM)
    assert env.proc.wait(30) == 0
    assert time.monotonic() - t0 < 4
    assert 'shutdown deadline passed with 8 requests in flight' in env.log()
    # the 8 sent stay leased for recovery; the 12 never sent went back
    assert db.value("SELECT count(*) FROM charge WHERE status = 'processing' AND "
                    "lease_owner = 'test-node'") == 8
    assert db.value("SELECT count(*) FROM charge WHERE status = 'scheduled'") == 12
    mock_gateway.config(latency_ms=0)
    env.settle()
    assert check_exactly_once(db, mock_gateway) == {'succeeded': 20}
    # the eight were finished under the keys they were first sent with
    assert db.value('SELECT max(attempt_no) FROM charge_attempt') == 1


# ---- sd_notify and stuck unknown outcomes ---------------------------------------------


class NotifySocket:
    def __init__(self):
        # sun_path is short: not under pytest's long tmp_path
        self.dir = tempfile.mkdtemp(prefix='pln')
        self.path = os.path.join(self.dir, 'notify')
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []

    def read_until(self, pred, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.messages.extend(self.sock.recv(4096).decode().split('\n'))
            except socket.timeout:
                pass
            if pred(self.messages):
                return self.messages
        raise AssertionError('notify: still waiting; got %r' % self.messages)

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_sd_notify_ready_status_watchdog_and_stuck_unknown_alert(env, db,  # noqa: F811
                                                                 mock_gateway):
    """READY=1 after the schema check, STATUS= lines, WATCHDOG=1 from a loop
    timer (WATCHDOG_USEC), STOPPING=1 on SIGTERM. A charge whose outcome has
    been unknown longer than unknown_alert_after is in STATUS and logged once
    (once per stuck attempt, also across restarts), never guessed."""
    env.write_config(billing={'unknown_alert_after': '1m', 'reconcile_schedule': '1d'})
    add(env, 3)
    [(cu, ku, _)] = claim_as(db, 'dead-node', limit=1)
    db.execute("UPDATE charge_attempt SET state = 'unknown', sends = 1, "
               "started_at = now() - interval '3 hours', last_sent_at = now() - interval "
               "'3 hours', next_check_at = now() + interval '1 day' WHERE charge_id = %s", (cu,))
    db.execute("UPDATE charge SET status = 'unknown', lease_owner = NULL, "
               'lease_expires_at = NULL WHERE id = %s', (cu,))
    ns = NotifySocket()
    try:
        env.proc = env.start(extra_env={'NOTIFY_SOCKET': ns.path, 'WATCHDOG_USEC': '2000000'})
        msgs = ns.read_until(lambda m: 'READY=1' in m and m.count('WATCHDOG=1') >= 2
                             and any('ALERT: 1 charges unknown for over 1m' in x for x in m))
        assert msgs.index('READY=1') < msgs.index('WATCHDOG=1')
        assert any(x.startswith('STATUS=billing') for x in msgs), msgs
        log = env.wait_log('unknown outcome for over 1m')
        assert 'charge %d.' % cu in log
        env.wait_for("SELECT count(*) FROM charge WHERE status = 'succeeded'", 2)
        env.wait_for("SELECT status_line LIKE '%%ALERT: 1 charges unknown%%' FROM daemon_node",
                     True, timeout=10)
        env.proc.send_signal(signal.SIGTERM)
        ns.read_until(lambda m: 'STOPPING=1' in m)
        assert env.proc.wait(30) == 0
        # a restart does not repeat the warning for the same stuck attempt
        env.proc = env.start(log_name='second.log')
        ns.messages.clear()
        env.wait_log('ready: node')
        time.sleep(1.5)
        assert 'unknown outcome for over' not in env.log()
        assert env.stop(env.proc) == 0
    finally:
        ns.close()
    assert db.value("SELECT count(*) FROM event WHERE action = 'unknown_alert'") == 1
    # still unknown: nothing was guessed
    assert db.value('SELECT status FROM charge WHERE id = %s', (cu,)) == 'unknown'
    assert mock_gateway.ledger()['charges'].__len__() == 2
