#!/usr/bin/env python3
"""Bill a demo year; called by scripts/demo, which provides PostgreSQL.

Loads donors and pledges, starts the mock gateway with faults, steps the
test clock day by day through 2028 (a leap year) running `pledged --once`
each day, then prints an operator's summary and checks the gateway's
ledger against the database charge by charge.
"""
import argparse
import collections
import datetime as dt
import json
import os
import random
import subprocess
import sys
import time

import psycopg2
import psycopg2.extensions

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'tests', 'system'))

from mockgw import MockGateway  # noqa: E402
from pledgedenv import PledgedEnv  # noqa: E402

TOKENS = [  # (token, share of donors, what it does)
    ('pm_card_visa', 0.62, 'succeeds'),
    ('pm_card_mastercard', 0.23, 'succeeds'),
    ('pm_card_chargeDeclinedInsufficientFunds', 0.04, 'insufficient funds (soft)'),
    ('pm_card_chargeDeclinedProcessingError', 0.02, 'processing error (soft)'),
    ('pm_card_chargeCustomerFail', 0.02, 'every charge declined'),
    ('pm_card_visa_chargeDeclinedLostCard', 0.02, 'lost card (hard)'),
    ('pm_card_chargeDeclinedExpiredCard', 0.03, 'expired card (hard)'),
    ('pm_card_authenticationRequired', 0.02, 'needs the donor (3-D Secure)'),
]
CURRENCIES = [('USD', 0.7, [1000, 2500, 5000, 10000]), ('EUR', 0.2, [1000, 2000, 3000]),
              ('JPY', 0.1, [1000, 3000, 5000])]
FIRST_NAMES = ['Ada', 'Grace', 'Alan', 'Katherine', 'Edsger', 'Barbara', 'Dennis', 'Frances',
               'Ken', 'Radia', 'Niklaus', 'Margaret', 'José', 'Zoë', "O'Brien", 'Łucja']
LAST_NAMES = ['Lovelace', 'Hopper', 'Turing', 'Johnson', 'Dijkstra', 'Liskov', 'Ritchie',
              'Allen', 'Thompson', 'Perlman', 'Wirth', 'Hamilton', 'Núñez', 'Ørsted']


class Db:
    def __init__(self, name):
        self.name = name
        self.conn = psycopg2.connect(dbname=name)
        self.conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)

    def query(self, sql, params=None):
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else None

    def value(self, sql, params=None):
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def execute(self, sql, params=None):
        with self.conn.cursor() as cur:
            cur.execute(sql, params)


def pick(rng, table):
    x, acc = rng.random(), 0.0
    for row in table:
        acc += row[1]
        if x < acc:
            return row
    return table[-1]


def give_new_cards(db, when):
    """Operations on July 1: donors whose card failed send a new one, and an
    operator records it with pledgectl, as they would from a donor's call."""
    ctl = os.path.join(os.environ['PLEDGE_BUILD_DIR'], 'daemon', 'pledgectl')
    rows = db.query("SELECT id, donor_id, status FROM pledge WHERE status IN "
                    "('needs_payment_method', 'past_due', 'lapsed') ORDER BY id")
    for pledge, donor, status in rows:
        def run(*args):
            out = subprocess.run([ctl, '--json'] + [str(a) for a in args], capture_output=True,
                                 text=True, check=True)
            return json.loads(out.stdout) if out.stdout.strip() else None
        run('method', 'add', '--donor', donor, '--customer', 'cus_%d' % donor,
            '--token', 'pm_card_visa__new%d' % pledge)
        method = db.value("SELECT id FROM payment_method WHERE token = %s",
                          ('pm_card_visa__new%d' % pledge,))
        run('pledge', 'set-method', pledge, '--method', method)
        if status == 'lapsed':
            run('pledge', 'resume', pledge)
    return len(rows)


def money(db, minor, currency):
    exp = db.value('SELECT exponent FROM currency WHERE code = %s', (currency,))
    whole, frac = divmod(abs(minor), 10 ** exp)
    s = '{:,}'.format(whole) + ('.%0*d' % (exp, frac) if exp else '')
    return ('-' if minor < 0 else '') + s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--workdir', required=True)
    ap.add_argument('--pledges', type=int, default=1000)
    ap.add_argument('--seed', type=int, default=2028)
    opts = ap.parse_args()
    rng = random.Random(opts.seed)
    db = Db(os.environ['PGDATABASE'])

    gw = MockGateway(workdir=os.path.join(opts.workdir, 'mock'))
    os.makedirs(gw.dir, exist_ok=True)
    gw.start(seed=opts.seed)
    # About one fault every other day: each costs the run a backoff or a
    # reconciliation pass, and the point is to show them handled.
    faults = dict(latency_ms=1, jitter_ms=4, drop_after=0.005, error_500_after_execute=0.005,
                  rate_429=0.002, retry_after_s=1, error_503_before=0.003)
    gw.config(**faults)
    env = PledgedEnv(db, gw, opts.workdir, billing={'retry_schedule': '1d,3d,5d,7d',
                                                    'lapse_after': '3'})

    year = 2028
    specs, mix = [], collections.Counter()
    for i in range(opts.pledges):
        token = pick(rng, TOKENS)[0]
        currency, _, amounts = pick(rng, CURRENCIES)
        anchor = rng.choice(list(range(1, 32)) + [29, 30, 31, None, None])
        interval = rng.choice([1] * 16 + [3, 3, 12])
        name = '%s %s' % (rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES))
        specs.append(dict(token=token, amount=rng.choice(amounts), currency=currency,
                          anchor=anchor, interval=interval, start=dt.date(year, 1, 1), name=name,
                          donor_ref='CRM-%05d' % (i + 1), fund=rng.choice(
                              ['general', 'general', 'rescue', 'aftercare'])))
        mix[currency] += 1
    env.add_pledges(specs)

    print('pledged demo: billing %d in %d on the test clock' % (opts.pledges, year))
    print('  pledges: %s; anchors 1-31 and "last"; monthly, quarterly and annual' %
          ', '.join('%s %d' % kv for kv in sorted(mix.items())))
    print('  gateway faults on: 0.5% replies lost after charging, 0.5% saved 500s, 0.3% 503s, '
          '0.2% 429s, 1-5 ms latency')
    started = time.monotonic()
    d = dt.date(year, 1, 1)
    new_cards = 0
    while d.year == year:
        env.clock('%s 12:00:00+00' % d.isoformat())
        if d == dt.date(year, 7, 1):
            new_cards = give_new_cards(db, d)
        env.once()
        if d.day == 1 and sys.stderr.isatty():
            sys.stderr.write('\r  billing %s ...' % d.strftime('%B'))
            sys.stderr.flush()
        d += dt.timedelta(days=1)
    # one more pass with the faults off settles outcomes still unknown
    gw.config(latency_ms=0, jitter_ms=0, drop_after=0, error_500_after_execute=0, rate_429=0,
              error_503_before=0)
    env.once()
    if sys.stderr.isatty():
        sys.stderr.write('\r' + ' ' * 30 + '\r')
    elapsed = time.monotonic() - started

    status = dict(db.query('SELECT status, count(*) FROM charge GROUP BY 1'))
    pledges = dict(db.query('SELECT status, count(*) FROM pledge GROUP BY 1'))
    retried = db.value("SELECT count(DISTINCT entity_id) FROM event WHERE entity = 'charge' "
                       "AND action = 'retry_wait'")
    recovered_after_retry = db.value(
        "SELECT count(*) FROM charge c WHERE status = 'succeeded' AND dunning_attempts > 0")
    unknown_then_known = db.value(
        "SELECT count(DISTINCT entity_id) FROM event WHERE entity = 'charge' AND action = 'unknown'")
    attempts = db.value('SELECT count(*) FROM charge_attempt')
    sends = db.value('SELECT coalesce(sum(sends), 0) FROM charge_attempt')

    print('\nbilled %s in %.0f s (%d daily runs of pledged --once)' % (year, elapsed, 366))
    print('\ncharges')
    for s in ['succeeded', 'failed', 'action_required', 'retry_wait', 'unknown', 'skipped',
              'cancelled', 'scheduled', 'processing']:
        if status.get(s):
            print('  %-28s %7d' % (s.replace('_', ' '), status[s]))
    print('  %-28s %7d  (%d of them later succeeded)' % ('went into dunning', retried,
                                                         recovered_after_retry))
    print('  %-28s %7d  (lost reply or gateway error; resent with the same key or looked'
          ' up by it)' % ('outcome unknown at first', unknown_then_known))
    print('  %-28s %7d  (%d HTTP requests incl. same-key resends)' % ('attempts', attempts,
                                                                     sends))
    print('\npledges  (on July 1, %d donors with a failing card gave a new one:'
          ' pledgectl method add, pledge set-method, resume if lapsed)' % new_cards)
    for s in ['active', 'past_due', 'needs_payment_method', 'lapsed', 'paused', 'cancelled']:
        if pledges.get(s):
            print('  %-28s %7d' % (s.replace('_', ' '), pledges[s]))
    print('\ncollected (succeeded charges)')
    for cur, total, n in db.query("SELECT currency, sum(amount_minor), count(*) FROM charge "
                                  "WHERE status = 'succeeded' GROUP BY 1 ORDER BY 1"):
        print('  %s %16s  from %d gifts' % (cur, money(db, total, cur), n))

    # The contract, checked: the gateway's ledger against the database.
    ledger = collections.Counter()
    amounts = {}
    for c in gw.ledger()['charges']:
        if c['status'] == 'succeeded':
            cid = int(c['metadata']['pledged_charge'])
            ledger[cid] += 1
            amounts[cid] = (c['amount'], c['currency'].upper())
    db_ok = {r[0]: (r[1], r[2]) for r in db.query(
        "SELECT id, amount_minor, currency FROM charge WHERE status = 'succeeded'")}
    doubles = [cid for cid, n in ledger.items() if n > 1]
    missing = set(db_ok) - set(ledger)
    extra = set(ledger) - set(db_ok)
    mismatch = [cid for cid in db_ok if cid in amounts and amounts[cid] != db_ok[cid]]
    print('\nexactly once: gateway executed %d successful charges, database records %d' % (
        sum(ledger.values()), len(db_ok)))
    if doubles or missing or extra or mismatch:
        print('  MISMATCH: %d double, %d missing at gateway, %d unknown to db, %d amounts differ'
              % (len(doubles), len(missing), len(extra), len(mismatch)))
        return 1
    print('  they agree charge by charge: no double charge, no silent miss')
    gw.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
