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
