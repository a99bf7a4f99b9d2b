"""pledgectl receipts: year-end tax receipts as PDF — eligible gifts, numbering,
idempotence, void and reissue, US and Canadian wording, concurrency."""
import csv
import hashlib
import json
import os
import re
import struct
import subprocess
import zlib

import pytest

from conftest import binary

US_ORG = """[billing]
timezone = {tz}
[org]
legal_name = Friends of the Springfield Library, Inc.
address_line1 = 100 Main Street
city = Springfield
region = IL
postal_code = 62701
country = US
tax_id = 12-3456789
signatory_name = Jane Doe
signatory_title = Treasurer
charity_registration_statement = We are a 501(c)(3) tax-exempt organization.
receipt_dir = {out}
email = giving@example.org
website = example.org
"""

CA_ORG = """[billing]
timezone = America/Toronto
[org]
legal_name = Maple Food Bank
address_line1 = 200 Bay Street
city = Toronto
region = ON
postal_code = M5J 2J5
country = CA
tax_id = 123456789RR0001
jurisdiction = ca
city_issued = Toronto, Ontario
signatory_name = Marie Tremblay
signatory_title = Executive Director
signature_image = {sig}
receipt_dir = {out}
"""


def png(width=60, height=20):
    """A small valid RGB PNG (a dark stroke), written without external modules."""
    rows = b''
    for y in range(height):
        row = bytearray([0])
        for x in range(width):
            v = 20 if abs(y - height // 2 - (x % 7) + 3) < 2 else 255
            row += bytes([v, v, v])
        rows += bytes(row)

    def chunk(kind, data):
        return (struct.pack('>I', len(data)) + kind + data +
                struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2,
                                                               0, 0, 0)) +
            chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))


@pytest.fixture
def env(db, tmp_path):
    out = tmp_path / 'out'
    conf = tmp_path / 'pledged.conf'
    conf.write_text(US_ORG.format(tz='America/New_York', out=out))
    return db, str(conf), out


def donor(db, name='Ada Lovelace', email='ada@example.org', addr=True, ref=None):
    if addr:
        return db.value("INSERT INTO donor (full_name, email, external_ref, address_line1, city, "
                        "region, postal_code, country) VALUES (%s, %s, %s, '12 Analytical Way', "
                        "'Springfield', 'IL', '62701', 'US') RETURNING id", (name, email, ref))
    return db.value('INSERT INTO donor (full_name, email, external_ref) VALUES (%s, %s, %s) '
                    'RETURNING id', (name, email, ref))


def gift(db, did, amount, when, currency='USD', status='succeeded', refunded=0):
    """A charge of `amount` minor units that succeeded at `when` (timestamptz text)."""
    pid = db.value("INSERT INTO pledge (donor_id, amount_minor, currency, start_on, "
                   "next_charge_on) VALUES (%s, %s, %s, '2020-01-01', '2030-01-01') "
                   "RETURNING id", (did, amount, currency))
    cid = db.value("INSERT INTO charge (pledge_id, donor_id, period, amount_minor, currency, fund, "
                   "due_at, status, succeeded_at, refunded_minor) VALUES (%s, %s, "
                   "(%s::timestamptz)::date, %s, %s, 'general', %s, %s, "
                   "CASE WHEN %s = 'succeeded' THEN %s::timestamptz END, 0) RETURNING id",
                   (pid, did, when, amount, currency, when, status, status, when))
    if refunded:
        refund(db, cid, refunded)
    return cid


def refund(db, cid, amount, kind='refund'):
    db.execute("INSERT INTO refund (charge_id, amount_minor, kind, status, actor) "
               "VALUES (%s, %s, %s, 'succeeded', 'test')", (cid, amount, kind))
    db.execute('UPDATE charge SET refunded_minor = refunded_minor + %s WHERE id = %s',
               (amount, cid))


def generate(db, conf, *args, check=True):
    p = db.ctl('--config', conf, '--json', 'receipts', 'generate', *args)
    if check:
        assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
        return json.loads(p.stdout)
    return p


def pdf_text(path):
    return subprocess.run(['pdftotext', '-raw', str(path), '-'], capture_output=True,
                          text=True, check=True).stdout


def sha(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def live(db, year=2026):
    return db.query("SELECT number, donor_id, currency, total_minor FROM receipt "
                    "WHERE status = 'issued' AND tax_year = %s ORDER BY number", (year,))


def test_us_receipt_has_every_field(env):
    db, conf, out = env
    d = donor(db)
    amounts = [2500, 2500, 10000, 1234]
    for i, a in enumerate(amounts):
        gift(db, d, a, '2026-%02d-10 15:00Z' % (i * 3 + 1))
    res = generate(db, conf, '--year', '2026')
    assert res['counts']['issued'] == 1
    r = res['receipts'][0]
    assert r['number'] == '2026-000001' and r['total_minor'] == sum(amounts)
    path = out / '2026-000001.pdf'
    assert r['file'] == '2026-000001.pdf' and sha(path) == r['sha256']
    row = db.query("SELECT sha256, file_name, total_minor, donor_snapshot->>'full_name', "
                   "org_snapshot->>'legal_name' FROM receipt")[0]
    assert row == (r['sha256'], '2026-000001.pdf', 16234, 'Ada Lovelace',
                   'Friends of the Springfield Library, Inc.')
    text = pdf_text(path)
    flat = ' '.join(text.split())
    for needle in ['Friends of the Springfield Library, Inc.', '100 Main Street',
                   'Springfield, IL 62701', 'EIN 12-3456789', 'Donation Receipt',
                   'Receipt No. 2026-000001', 'Tax year 2026', 'Date issued:',
                   'Ada Lovelace', '12 Analytical Way',
                   'No goods or services were provided in exchange for these contributions.',
                   'We are a 501(c)(3) tax-exempt organization.', 'Jane Doe', 'Treasurer',
                   'Jan 10, 2026', 'Apr 10, 2026', 'Jul 10, 2026', 'Oct 10, 2026',
                   'USD 100.00', 'USD 12.34', 'Total received in 2026 USD 162.34']:
        assert needle in flat, needle
    # every amount on the page: the gifts, then the total twice (box and total line)
    shown = [int(m.replace(',', '').replace('.', ''))
             for m in re.findall(r'USD ([\d,]+\.\d\d)', flat)]
    assert sorted(shown) == sorted(amounts + [sum(amounts)] * 2)
    # the manifest for the mailing step
    manifests = sorted(out.glob('manifest-2026-*.csv'))
    assert len(manifests) == 1 and str(manifests[0]) == res['manifest']
    rows = list(csv.DictReader(open(manifests[0], newline='')))
    assert rows == [{'number': '2026-000001', 'donor_id': str(d), 'donor_name': 'Ada Lovelace',
                     'email': 'ada@example.org', 'currency': 'USD', 'total': '162.34',
                     'file': '2026-000001.pdf', 'sha256': r['sha256'], 'replaces': ''}]
    assert db.value("SELECT count(*) FROM event WHERE entity = 'receipt' AND action = 'issued'") == 1


def test_canada_official_receipt_and_skip_without_address(db, tmp_path):
    out = tmp_path / 'out'
    sig = tmp_path / 'sig.png'
    sig.write_bytes(png())
    conf = tmp_path / 'ca.conf'
    conf.write_text(CA_ORG.format(sig=sig, out=out))
    d = donor(db, name='Jean-Luc Picard', email='jl@example.ca')
    nowhere = donor(db, name='No Address', addr=False)
    gift(db, d, 5000, '2026-03-01 15:00Z', 'CAD')
    gift(db, d, 5000, '2026-04-01 15:00Z', 'CAD')
    gift(db, nowhere, 5000, '2026-03-01 15:00Z', 'CAD')
    res = generate(db, conf, '--year', '2026')
    assert res['counts'] == {'issued': 1, 'replaced': 0, 'voided': 0, 'unchanged': 0,
                             'skipped': 1, 'restored': 0}
    skipped = [r for r in res['receipts'] if r['action'] == 'skipped']
    assert skipped[0]['donor_id'] == nowhere and 'address' in skipped[0]['reason']
    human = db.ctl('--config', conf, 'receipts', 'generate', '--year', '2026')
    assert human.returncode == 0 and 'No Address' in human.stdout and 'address' in human.stdout
    flat = ' '.join(pdf_text(out / '2026-000001.pdf').split())
    for needle in ['Official receipt for income tax purposes', 'Maple Food Bank',
                   '200 Bay Street', 'Toronto, ON M5J 2J5',
                   'Charitable registration No. 123456789RR0001', 'Receipt No. 2026-000001',
                   'Location issued: Toronto, Ontario', 'Year received: 2026', 'Date issued:',
                   'Jean-Luc Picard', '12 Analytical Way', 'Amount of gift',
                   'Value of advantage (none)', 'CAD 0.00',
                   'Eligible amount of gift for tax purposes', 'CAD 100.00',
                   'Canada Revenue Agency: canada.ca/charities-giving',
                   'Marie Tremblay', 'Executive Director', 'Authorized signature']:
        assert needle in flat, needle
    assert db.value("SELECT length(png) FROM receipt_image") == len(png())
    # the image is frozen with the receipt: a new file does not change a re-render
    sig.write_bytes(png(80, 30))
    p = db.ctl('--config', conf, 'receipts', 'show', '2026-000001', '--pdf', tmp_path / 'r.pdf')
    assert p.returncode == 0, p.stderr
    assert sha(tmp_path / 'r.pdf') == sha(out / '2026-000001.pdf')


def test_missing_org_keys_are_named(db, tmp_path):
    conf = tmp_path / 'bare.conf'
    conf.write_text('[billing]\ntimezone = UTC\n[org]\nlegal_name = X\n')
    p = db.ctl('--config', conf, 'receipts', 'generate', '--year', '2026')
    assert p.returncode == 1
    for key in ['address_line1', 'tax_id', 'signatory_name']:
        assert key in p.stderr
    assert db.value('SELECT count(*) FROM receipt') == 0
    assert db.ctl('--config', conf, 'receipts', 'generate').returncode == 2
    assert db.ctl('--config', conf, 'receipts', 'generate', '--year', '1999').returncode == 2


def test_rerun_is_idempotent_and_restores_missing_files(env):
    db, conf, out = env
    for i in range(3):
        d = donor(db, name='Donor %d' % i)
        gift(db, d, 1000 * (i + 1), '2026-05-05 12:00Z')
    first = generate(db, conf, '--year', '2026')
    assert first['counts']['issued'] == 3
    files = {f.name: sha(f) for f in out.glob('*.pdf')}
    assert sorted(files) == ['2026-000001.pdf', '2026-000002.pdf', '2026-000003.pdf']
    second = generate(db, conf, '--year', '2026')
    assert second['counts'] == {'issued': 0, 'replaced': 0, 'voided': 0, 'unchanged': 3,
                                'skipped': 0, 'restored': 0}
    assert second['manifest'] is None
    assert {f.name: sha(f) for f in out.glob('*.pdf')} == files
    assert db.value('SELECT last_no FROM receipt_counter WHERE tax_year = 2026') == 3
    # a file lost (crash between commit and rename, or a new --out): written again, same bytes
    (out / '2026-000002.pdf').unlink()
    third = generate(db, conf, '--year', '2026')
    assert third['counts']['restored'] == 1 and third['counts']['unchanged'] == 3
    assert {f.name: sha(f) for f in out.glob('*.pdf')} == files
    other = generate(db, conf, '--year', '2026', '--out', out.parent / 'copy')
    assert other['counts']['restored'] == 3
    assert {f.name: sha(f) for f in (out.parent / 'copy').glob('*.pdf')} == files


def test_refund_after_issue_voids_and_reissues(env):
    db, conf, out = env
    d = donor(db)
    c1 = gift(db, d, 2500, '2026-01-15 15:00Z')
    gift(db, d, 2500, '2026-02-15 15:00Z')
    generate(db, conf, '--year', '2026')
    refund(db, c1, 1000)  # partial: netted
    res = generate(db, conf, '--year', '2026')
    assert res['counts']['replaced'] == 1 and res['counts']['issued'] == 0
    r = [x for x in res['receipts'] if x['action'] == 'replaced'][0]
    assert r['number'] == '2026-000002' and r['replaces'] == '2026-000001'
    assert r['total_minor'] == 4000
    old = db.query("SELECT status, void_reason, voided_at IS NOT NULL FROM receipt "
                   "WHERE number = '2026-000001'")[0]
    assert old[0] == 'void' and '2026-000002' in old[1] and old[2]
    assert db.value("SELECT r.number FROM receipt n JOIN receipt r ON r.id = n.replaces_id "
                    "WHERE n.number = '2026-000002'") == '2026-000001'
    flat = ' '.join(pdf_text(out / '2026-000002.pdf').split())
    assert 'Cancels and replaces receipt No. 2026-000001' in flat
    assert 'USD 15.00' in flat and 'Total received in 2026 USD 40.00' in flat
    assert (out / '2026-000001.pdf').exists()  # the original is kept
    assert 'Cancels' not in pdf_text(out / '2026-000001.pdf')
    # a late success also changes the gifts
    gift(db, d, 700, '2026-12-31 20:00Z')
    res = generate(db, conf, '--year', '2026')
    r = [x for x in res['receipts'] if x['action'] == 'replaced'][0]
    assert (r['number'], r['replaces'], r['total_minor']) == ('2026-000003', '2026-000002', 4700)
    rows = list(csv.DictReader(open(res['manifest'], newline='')))
    assert [(x['number'], x['replaces']) for x in rows] == [('2026-000003', '2026-000002')]
    # everything refunded: the live receipt is voided, nothing replaces it
    for cid, left in db.query('SELECT id, amount_minor - refunded_minor FROM charge '
                              'WHERE donor_id = %s', (d,)):
        refund(db, cid, left)
    res = generate(db, conf, '--year', '2026')
    assert res['counts']['voided'] == 1 and res['counts']['issued'] == 0
    assert [x['voided'] for x in res['receipts']] == ['2026-000003']
    assert live(db) == []
    assert generate(db, conf, '--year', '2026')['receipts'] == []


def test_multi_currency_one_receipt_each(env):
    db, conf, out = env
    d = donor(db)
    gift(db, d, 2500, '2026-03-01 15:00Z', 'USD')
    gift(db, d, 1999, '2026-03-01 15:00Z', 'EUR')
    gift(db, d, 1999, '2026-04-01 15:00Z', 'EUR')
    gift(db, d, 12000, '2026-03-01 15:00Z', 'JPY')
    res = generate(db, conf, '--year', '2026')
    assert res['counts']['issued'] == 3
    got = {(r[2].strip(), r[3]) for r in live(db)}
    assert got == {('USD', 2500), ('EUR', 3998), ('JPY', 12000)}
    by_cur = {r['currency']: r for r in res['receipts']}
    assert 'Total received in 2026 JPY 12,000' in ' '.join(
        pdf_text(out / by_cur['JPY']['file']).split())
    assert 'EUR 39.98' in pdf_text(out / by_cur['EUR']['file'])


def test_eligibility_rules(env):
    db, conf, out = env
    nothing = donor(db, name='Never Paid')
    gift(db, nothing, 2500, '2026-03-01 15:00Z', status='failed')
    refunded = donor(db, name='All Refunded')
    gift(db, refunded, 2500, '2026-03-01 15:00Z', refunded=2500)
    charged_back = donor(db, name='Charged Back')
    cb = gift(db, charged_back, 2500, '2026-03-01 15:00Z')
    refund(db, cb, 2500, kind='chargeback')
    mixed = donor(db, name='Mixed')
    gift(db, mixed, 2500, '2026-03-01 15:00Z', refunded=2500)   # full: excluded
    gift(db, mixed, 2500, '2026-04-01 15:00Z', refunded=500)    # partial: netted
    gift(db, mixed, 2500, '2026-05-01 15:00Z')
    gift(db, mixed, 2500, '2026-06-01 15:00Z', status='retry_wait')
    res = generate(db, conf, '--year', '2026')
    assert [(r['donor_id'], r['total_minor']) for r in res['receipts']] == [(mixed, 4500)]
    assert db.value('SELECT count(*) FROM receipt_line') == 2
    flat = ' '.join(pdf_text(out / '2026-000001.pdf').split())
    assert 'Mar 1, 2026' not in flat and 'USD 20.00' in flat and 'USD 45.00' in flat


def test_org_timezone_year_boundary(env):
    db, conf, out = env  # America/New_York
    d = donor(db)
    gift(db, d, 100, '2026-01-01 04:30Z')  # Dec 31 2025, 23:30 in New York: 2025
    gift(db, d, 200, '2026-01-01 05:30Z')  # Jan 1 2026, 00:30: 2026
    gift(db, d, 400, '2027-01-01 04:30Z')  # Dec 31 2026, 23:30: 2026
    gift(db, d, 800, '2027-01-01 05:00Z')  # Jan 1 2027, 00:00: 2027
    res = generate(db, conf, '--year', '2026')
    assert res['receipts'][0]['total_minor'] == 600
    assert db.query('SELECT received_on::text FROM receipt_line ORDER BY received_on') == [
        ('2026-01-01',), ('2026-12-31',)]
    assert generate(db, conf, '--year', '2025')['receipts'][0]['total_minor'] == 100
    assert generate(db, conf, '--year', '2027')['receipts'][0]['number'] == '2027-000001'
    assert {f.name for f in out.glob('*.pdf')} == {'2025-000001.pdf', '2026-000001.pdf',
                                                   '2027-000001.pdf'}


def test_void_then_generate_issues_replacement(env):
    db, conf, out = env
    d = donor(db)
    gift(db, d, 2500, '2026-03-01 15:00Z')
    generate(db, conf, '--year', '2026')
    assert db.ctl('--config', conf, 'receipts', 'void', '2026-000001').returncode == 2
    p = db.ctl('--config', conf, 'receipts', 'void', '2026-000001', '--reason', 'wrong name')
    assert p.returncode == 0, p.stderr
    again = db.ctl('--config', conf, 'receipts', 'void', '2026-000001', '--reason', 'x')
    assert again.returncode == 4 and 'already void' in again.stderr
    assert db.ctl('--config', conf, 'receipts', 'void', '2026-000999', '--reason',
                  'x').returncode == 3
    assert db.value("SELECT void_reason FROM receipt WHERE number = '2026-000001'") == 'wrong name'
    # the donor's name is fixed, then the replacement is issued
    db.execute("UPDATE donor SET full_name = 'Ada King, Countess of Lovelace' WHERE id = %s", (d,))
    res = generate(db, conf, '--year', '2026')
    r = res['receipts'][0]
    assert (r['action'], r['number'], r['replaces']) == ('replaced', '2026-000002', '2026-000001')
    flat = ' '.join(pdf_text(out / '2026-000002.pdf').split())
    assert 'Cancels and replaces receipt No. 2026-000001' in flat
    assert 'Ada King, Countess of Lovelace' in flat
    listing = json.loads(db.ctl('--config', conf, '--json', 'receipts', 'list', '--year',
                                '2026').stdout)
    assert [(x['number'], x['status'], x['replaces'], x['replaced_by']) for x in listing] == [
        ('2026-000001', 'void', None, '2026-000002'), ('2026-000002', 'issued', '2026-000001', None)]
    assert generate(db, conf, '--year', '2026')['counts']['unchanged'] == 1


def test_snapshot_is_frozen(env):
    db, conf, out = env
    d = donor(db)
    gift(db, d, 2500, '2026-03-01 15:00Z')
    generate(db, conf, '--year', '2026')
    db.execute("UPDATE donor SET full_name = 'Somebody Else', address_line1 = '1 New Road' "
               "WHERE id = %s", (d,))
    # an issued receipt cannot be edited, only voided
    with pytest.raises(Exception):
        db.execute("UPDATE receipt SET total_minor = 1")
    with pytest.raises(Exception):
        db.execute("DELETE FROM receipt")
    show = json.loads(db.ctl('--config', conf, '--json', 'receipts', 'show',
                             '2026-000001').stdout)
    assert show['donor_name'] == 'Ada Lovelace' and '12 Analytical Way' in show['donor_address']
    assert [g['amount_minor'] for g in show['gifts']] == [2500]
    assert generate(db, conf, '--year', '2026')['counts']['unchanged'] == 1
    p = db.ctl('--config', conf, 'receipts', 'show', '2026-000001', '--pdf', out / 'again.pdf')
    assert p.returncode == 0, p.stderr
    assert sha(out / 'again.pdf') == sha(out / '2026-000001.pdf')
    assert db.ctl('--config', conf, 'receipts', 'show', '2026-000404').returncode == 3
    assert db.ctl('--config', conf, 'receipts', 'show', 'nope').returncode == 2


def test_dry_run_writes_nothing(env):
    db, conf, out = env
    d = donor(db)
    gift(db, d, 2500, '2026-03-01 15:00Z')
    res = generate(db, conf, '--year', '2026', '--dry-run')
    assert res['dry_run'] and res['counts']['issued'] == 1
    assert res['receipts'][0]['total_minor'] == 2500 and res['receipts'][0]['file'] is None
    assert not out.exists()
    assert db.value('SELECT count(*) FROM receipt') == 0
    assert db.value('SELECT count(*) FROM receipt_counter') == 0
    assert db.value("SELECT count(*) FROM event WHERE entity = 'receipt'") == 0
    generate(db, conf, '--year', '2026')
    refund(db, db.value('SELECT id FROM charge'), 100)
    before = sorted(os.listdir(out))
    res = generate(db, conf, '--year', '2026', '--dry-run')
    assert res['counts']['replaced'] == 1 and res['receipts'][0]['replaces'] == '2026-000001'
    assert sorted(os.listdir(out)) == before and len(live(db)) == 1


def test_one_donor(env):
    db, conf, out = env
    a, b = donor(db, name='A'), donor(db, name='B')
    gift(db, a, 100, '2026-03-01 15:00Z')
    gift(db, b, 200, '2026-03-01 15:00Z')
    res = generate(db, conf, '--year', '2026', '--donor', b)
    assert [r['donor_id'] for r in res['receipts']] == [b]
    assert generate(db, conf, '--year', '2026', '--donor', 99999, check=False).returncode == 3


def test_concurrent_generate_no_duplicates(env):
    db, conf, out = env
    n = 80
    for i in range(n):
        d = donor(db, name='Donor %d' % i)
        gift(db, d, 1000 + i, '2026-06-01 15:00Z')
        if i % 4 == 0:
            gift(db, d, 500, '2026-06-01 15:00Z', 'EUR')
    expected = n + n // 4
    cmd = [binary('pledgectl'), '--config', conf, '--json', 'receipts', 'generate', '--year',
           '2026']
    procs = [subprocess.Popen(cmd, env=db.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    results = []
    for p in procs:
        o, e = p.communicate(timeout=300)
        assert p.returncode == 0, e
        results.append(json.loads(o))
    issued = sum(r['counts']['issued'] for r in results)
    assert issued == expected
    assert sum(r['counts']['replaced'] for r in results) == 0
    numbers = [r[0] for r in db.query('SELECT number FROM receipt ORDER BY number')]
    assert numbers == ['2026-%06d' % k for k in range(1, expected + 1)]
    assert db.value("SELECT count(*) FROM receipt WHERE status = 'issued'") == expected
    assert db.value('SELECT count(*) FROM (SELECT donor_id, currency FROM receipt '
                    'GROUP BY 1, 2 HAVING count(*) > 1) x') == 0
    assert sorted(f.name for f in out.glob('2026-*.pdf')) == [x + '.pdf' for x in numbers]
    assert not list(out.glob('.*'))  # no temporary files left
    assert db.value('SELECT count(*) FROM receipt WHERE sha256 IS NULL') == 0
