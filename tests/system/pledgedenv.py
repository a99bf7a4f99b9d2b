"""Drive the real pledged binary against a test database and the mock gateway.

    env = PledgedEnv(db, gw, tmpdir)         # writes a config file
    env.clock('2028-01-15 12:00+00')         # the shared test clock
    env.once()                               # pledged --once, checked
    env.add_pledges([...])                   # fast SQL setup

Also used by scripts/demo, so only the standard library and psycopg2.
"""
import calendar
import datetime as dt
import os
import signal
import socket
import subprocess
import time

PLEDGED_TIMEOUT_S = 600


def period_date(anchor, year, month):
    """The test's own statement of DESIGN.md §4 (an oracle for pl_period_date)."""
    last = calendar.monthrange(year, month)[1]
    return dt.date(year, month, last if anchor is None else min(anchor, last))


def add_months(year, month, n):
    m = year * 12 + (month - 1) + n
    return m // 12, m % 12 + 1


def expected_periods(anchor, interval, first, until):
    """Every period date from `first` up to and including `until`."""
    out = []
    y, m = first.year, first.month
    d = first
    while d <= until:
        out.append(d)
        y, m = add_months(y, m, interval)
        d = period_date(anchor, y, m)
    return out


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class PledgedEnv:
    def __init__(self, db, gw, workdir, build_dir=None, **settings):
        self.db = db
        self.gw = gw
        self.dir = str(workdir)
        self.build_dir = build_dir or os.environ['PLEDGE_BUILD_DIR']
        self.binary = os.path.join(self.build_dir, 'daemon', 'pledged')
        self.config_path = os.path.join(self.dir, 'pledged.conf')
        self.settings = {
            'database': {'conninfo': 'host=%s port=%s dbname=%s user=%s' % (
                os.environ['PGHOST'], os.environ.get('PGPORT', '5432'), db.name,
                os.environ.get('PGUSER', 'postgres')), 'pool_size': '4'},
            'gateway': {'base_url': gw.url if gw else 'http://127.0.0.1:9',
                        'api_key_file': gw.api_key_file if gw else '/dev/null',
                        'rate_limit': '5000', 'rate_burst': '200', 'max_in_flight': '64',
                        'request_timeout': '10s', 'connect_timeout': '2s',
                        'lookup_settle': '0s'},
            'billing': {'node_name': 'test-node', 'timezone': 'UTC', 'charge_time': '09:00',
                        'lease': '30s', 'poll_interval': '1s'},
            'log': {'level': 'info', 'format': 'text'},
            # a port of its own, so daemons of parallel tests (or several
            # daemons in one test) never fight over the default 8425
            'http': {'listen': '127.0.0.1:%d' % free_port()},
        }
        for section, values in settings.items():
            self.settings.setdefault(section, {}).update(values)
        self.write_config()

    def write_config(self, **settings):
        for section, values in settings.items():
            self.settings.setdefault(section, {}).update(values)
        with open(self.config_path, 'w') as f:
            for section, values in self.settings.items():
                f.write('[%s]\n' % section)
                for k, v in values.items():
                    f.write('%s = %s\n' % (k, v))
        return self.config_path

    # -- running the daemon ---------------------------------------------------

    def once(self, check=True, timeout=PLEDGED_TIMEOUT_S, extra_args=()):
        proc = subprocess.run([self.binary, '--config', self.config_path, '--once'] +
                              list(extra_args), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError('pledged --once failed (%d):\n%s' % (proc.returncode, proc.stderr))
        return proc

    def start(self, extra_env=None, log_name='pledged.log'):
        """Run the daemon in the background; returns the Popen."""
        env = dict(os.environ)
        env.update(extra_env or {})
        self.log_path = os.path.join(self.dir, log_name)
        log = open(self.log_path, 'ab')
        try:
            return subprocess.Popen([self.binary, '--config', self.config_path],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        finally:
            log.close()

    @staticmethod
    def stop(proc, sig=signal.SIGTERM, timeout=60):
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait(timeout)

    def log(self):
        try:
            with open(self.log_path, errors='replace') as f:
                return f.read()
        except (AttributeError, FileNotFoundError):
            return ''

    # -- state ---------------------------------------------------------------------

    def clock(self, when):
        self.db.execute('UPDATE instance SET test_now = %s', (when,))

    def wait_for(self, sql, want, timeout=60, params=None):
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            got = self.db.value(sql, params)
            if got == want:
                return got
            time.sleep(0.1)
        raise AssertionError('%s: wanted %r, still %r after %ss' % (sql, want, got, timeout))

    def add_pledges_bulk(self, n, tokens=('pm_card_visa',), amount=2500, currency='USD',
                         anchor=1, start=dt.date(2027, 1, 1), interval=1, fund='general'):
        """n donors, cards and monthly pledges in one statement (fast). Donor i
        gets tokens[i % len(tokens)] (with a per-donor suffix) and amount
        amount + i % 97, so amounts differ. Returns the number created."""
        prefix = 'bulk-%d-%d-' % (os.getpid(), int(time.time() * 1000))
        return self.db.value(
            """WITH d AS (
                   INSERT INTO donor (external_ref, full_name, email)
                   SELECT %(prefix)s || g, 'Donor ' || g, 'd' || g || '@example.org'
                   FROM generate_series(0, %(n)s - 1) g
                   RETURNING id, external_ref),
               dn AS (SELECT id, substr(external_ref, length(%(prefix)s) + 1)::integer AS i
                      FROM d),
               m AS (
                   INSERT INTO payment_method (donor_id, customer_ref, token)
                   SELECT dn.id, 'cus_' || dn.id,
                          (%(tokens)s::text[])[1 + dn.i %% cardinality(%(tokens)s::text[])]
                            || '__' || dn.id
                   FROM dn
                   RETURNING id, donor_id),
               p AS (
                   INSERT INTO pledge (donor_id, payment_method_id, amount_minor, currency,
                                       interval_months, anchor_day, fund, start_on,
                                       next_charge_on)
                   SELECT m.donor_id, m.id, %(amount)s + dn.i %% 97, %(currency)s, %(interval)s,
                          %(anchor)s, %(fund)s, %(start)s,
                          pl_period_on_or_after(%(anchor)s, %(start)s)
                   FROM m JOIN dn ON dn.id = m.donor_id
                   RETURNING 1)
               SELECT count(*) FROM p""",
            dict(prefix=prefix, n=n, tokens=list(tokens), amount=amount, currency=currency,
                 interval=interval, anchor=anchor, fund=fund, start=start))

    # -- settling and checking -------------------------------------------------------

    PENDING_SQL = ("SELECT count(*) FROM charge WHERE status IN ('processing', 'unknown') "
                   "OR (status IN ('scheduled', 'retry_wait') AND next_attempt_at <= pl_now())")

    def pending(self):
        """Charges not yet settled: in flight, unknown, or due and not claimed."""
        return self.db.value(self.PENDING_SQL)

    def settle(self, timeout=180, pause=0.5):
        """Run `pledged --once` until nothing is pending (expired leases of
        dead daemons, unknown outcomes, due charges). Returns the runs made."""
        deadline = time.monotonic() + timeout
        runs = 0
        while True:
            proc = self.once(check=False)
            runs += 1
            if proc.returncode != 0:
                raise AssertionError('pledged --once failed (%d):\n%s' % (
                    proc.returncode, proc.stderr))
            left = self.pending()
            if left == 0:
                return runs
            if time.monotonic() > deadline:
                raise AssertionError('%d charges still pending after %d runs:\n%r' % (
                    left, runs, self.db.query(
                        'SELECT c.id, c.status, c.lease_owner, c.lease_expires_at, a.state,'
                        ' a.http_status, a.next_check_at FROM charge c LEFT JOIN charge_attempt'
                        " a ON a.charge_id = c.id AND a.state IN ('in_flight', 'unknown')"
                        " WHERE c.status IN ('processing', 'unknown') LIMIT 20")))
            time.sleep(pause)

    def wait_log(self, needle, timeout=30):
        """Wait until the background daemon's log contains needle; returns the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if needle in text:
                return text
            time.sleep(0.1)
        raise AssertionError('%r not in the log after %ss:\n%s' % (needle, timeout, self.log()))

    def add_pledges(self, specs):
        """specs: dicts with token, amount, currency, anchor (None = last),
        interval, start (date), fund (optional). Returns pledge ids in order."""
        ids = []
        with self.db.conn.cursor() as cur:
            for i, s in enumerate(specs):
                cur.execute('INSERT INTO donor (external_ref, full_name, email) '
                            'VALUES (%s, %s, %s) RETURNING id',
                            (s.get('donor_ref', 'donor-%d-%d' % (os.getpid(), i)),
                             s.get('name', 'Donor %d' % i), 'donor%d@example.org' % i))
                donor = cur.fetchone()[0]
                cur.execute('INSERT INTO payment_method (donor_id, customer_ref, token) '
                            "VALUES (%s, %s, %s) RETURNING id",
                            (donor, 'cus_%d' % donor, '%s__%d' % (s['token'], donor)))
                method = cur.fetchone()[0]
                cur.execute(
                    'INSERT INTO pledge (donor_id, payment_method_id, amount_minor, currency,'
                    ' interval_months, anchor_day, fund, start_on, next_charge_on) '
                    'VALUES (%s, %s, %s, %s, %s, %s, %s, %s,'
                    ' pl_period_on_or_after(%s, %s)) RETURNING id',
                    (donor, method, s['amount'], s['currency'], s.get('interval', 1),
                     s['anchor'], s.get('fund', 'general'), s['start'], s['anchor'], s['start']))
                ids.append(cur.fetchone()[0])
        return ids


def check_exactly_once(db, gw):
    """The gateway's ledger and the database agree charge by charge: every
    charge that was attempted executed exactly once at the gateway, with the
    amount, currency and idempotency key of its closing attempt; nothing is
    left in flight or unknown. Returns {status: count}."""
    ledger = {}
    for c in gw.ledger()['charges']:
        cid = int(c['metadata']['pledged_charge'])
        assert cid not in ledger, 'charge %d executed twice: %r and %r' % (
            cid, ledger[cid]['idempotency_key'], c['idempotency_key'])
        ledger[cid] = c
    rows = db.query(
        'SELECT c.id, c.status, c.amount_minor, c.currency, c.gateway_ref, a.idempotency_key,'
        ' a.state, a.gateway_ref FROM charge c LEFT JOIN charge_attempt a ON a.charge_id = c.id'
        " AND a.state IN ('succeeded', 'declined', 'action_required')")
    open_attempts = db.value("SELECT count(*) FROM charge_attempt "
                             "WHERE state IN ('in_flight', 'unknown')")
    assert open_attempts == 0, '%d attempts still open' % open_attempts
    counts = {}
    seen = set()
    for cid, status, amount, currency, ref, key, astate, aref in rows:
        assert cid not in seen, 'charge %d has two closed attempts' % cid
        seen.add(cid)
        counts[status] = counts.get(status, 0) + 1
        if status in ('scheduled', 'skipped', 'cancelled'):
            assert cid not in ledger, 'charge %d (%s) executed at the gateway' % (cid, status)
            continue
        assert status in ('succeeded', 'failed', 'retry_wait', 'action_required'), (cid, status)
        assert cid in ledger, 'charge %d is %s but never executed' % (cid, status)
        g = ledger[cid]
        assert key == g['idempotency_key'], (cid, key, g['idempotency_key'])
        assert g['amount'] == amount, (cid, amount, g['amount'])
        assert g['currency'] == currency.lower(), (cid, currency, g['currency'])
        assert g['metadata'].get('pledged_attempt') == key, (cid, g['metadata'])
        if status == 'succeeded':
            assert g['status'] == 'succeeded', (cid, g['status'])
            assert ref == g['id'] == aref, (cid, ref, aref, g['id'])
        else:
            assert g['status'] != 'succeeded', (cid, status, g['status'])
    unknown = set(ledger) - seen
    assert not unknown, 'gateway executed charges the database does not know: %r' % unknown
    return counts
