"""pledgectl import: RFC 4180 files from a CRM, every bad row reported with
its line, all or nothing, idempotent on external_ref."""
import json
import os

DATA = os.path.join(os.path.dirname(__file__), 'data')


def path(name):
    return os.path.join(DATA, name)


def imp(db, *args):
    return db.ctl('--json', 'import', *args)


def counts(db):
    return tuple(db.value('SELECT count(*) FROM %s' % t)
                 for t in ('donor', 'payment_method', 'pledge', 'event'))


def test_donors_and_pledges_import_then_reimport_changes_nothing(db):
    db.execute("UPDATE instance SET test_now = '2026-03-10 12:00+00'")
    p = imp(db, 'donors', path('donors_good.csv'))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert (out['rows'], out['created'], out['unchanged'], out['invalid']) == (3, 3, 0, 0)
    assert out['methods_added'] == 2 and out['written'] is True and out['errors'] == []
    names = dict(db.query('SELECT external_ref, full_name FROM donor'))
    assert names == {'CRM-001': "O'Brien, Siobhán",
                     'CRM-002': "Robert'); DROP TABLE donor;--",
                     'CRM-003': 'Multi\nLine Name'}
    assert db.value("SELECT address_line1 FROM donor WHERE external_ref = 'CRM-003'") == \
        'Line "one"\nLine two'
    assert db.value("SELECT city FROM donor WHERE external_ref = 'CRM-003'") == '東京'
    assert db.value("SELECT country FROM donor WHERE external_ref = 'CRM-001'") == 'IE'
    assert db.value("SELECT count(*) FROM event WHERE entity = 'import'") == 1

    p = imp(db, 'pledges', path('pledges_good.csv'))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)['created'] == 3
    rows = {r[0]: r[1:] for r in db.query(
        'SELECT external_ref, amount_minor, currency, interval_months, anchor_day, fund, '
        'next_charge_on::text, status FROM pledge')}
    assert rows['PL-1'] == (2500, 'USD', 1, 15, 'general', '2026-03-15', 'active')
    assert rows['PL-2'] == (1000, 'JPY', 12, None, 'Scholarships, "2026"', '2026-03-31',
                            'active')
    # no start_on: today; no anchor: today's day; no method: needs one
    assert rows['PL-3'] == (12345, 'BHD', 3, 10, 'general', '2026-03-10',
                            'needs_payment_method')
    assert 'no active payment method' in p.stderr

    before = counts(db)
    for kind, name in (('donors', 'donors_good.csv'), ('pledges', 'pledges_good.csv')):
        p = imp(db, kind, path(name))
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        assert out['created'] == 0 and out['updated'] == 0 and out['unchanged'] == 3
    assert counts(db) == before          # not even an event


def test_bom_and_crlf(db):
    p = db.ctl('import', 'donors', path('donors_bom_crlf.csv'))
    assert p.returncode == 0, p.stderr
    assert '1 donors created' in p.stdout
    assert db.query('SELECT external_ref, full_name, email, country FROM donor') == \
        [('CRM-010', 'Zoë Ünlü', 'zoe@example.org', 'DE')]


def test_bad_donor_rows_all_reported_nothing_written(db):
    before = counts(db)
    p = db.ctl('import', 'donors', path('donors_bad.csv'))
    assert p.returncode == 1
    f = path('donors_bad.csv')
    expected = [
        f + ":3: column 'full_name': must not be empty",
        f + ":4: column 'email': 'not-an-email' is not an email address",
        f + ":5: column 'country': 'USA' is not an ISO 3166 two-letter code",
        f + ":6: column 'payment_method': looks like a card number",
        f + ":7: column 'external_ref': external_ref 'CRM-100' already appears on line 2",
        f + ":8: 3 fields, but the header has 7",
    ]
    lines = p.stderr.splitlines()
    for e in expected:
        assert any(line.startswith(e) for line in lines), (e, p.stderr)
    assert '4242 4242' not in p.stderr     # a pasted card number is never echoed
    assert 'nothing was imported' in p.stdout
    assert counts(db) == before


def test_bad_pledge_rows(db):
    assert imp(db, 'donors', path('donors_good.csv')).returncode == 0
    before = counts(db)
    p = imp(db, 'pledges', path('pledges_bad.csv'))
    assert p.returncode == 1
    out = json.loads(p.stdout)
    assert out['invalid'] == 8 and out['created'] == 0 and out['written'] is False
    errs = {(e['line'], e['column']): e['message'] for e in out['errors']}
    assert errs[(2, 'amount')] == '25.001 has more decimals than USD allows (2)'
    assert errs[(3, 'currency')] == "unknown currency 'XYZ'"
    assert (4, 'interval') in errs and (5, 'anchor_day') in errs and (6, 'anchor_day') in errs
    assert (7, 'start_on') in errs and (8, 'donor_ref') in errs and (9, 'amount') in errs
    f = path('pledges_bad.csv')
    assert f + ":2: column 'amount': 25.001 has more decimals than USD allows (2)" in p.stderr
    assert counts(db) == before


def test_skip_invalid_and_dry_run(db, tmp_path):
    bad = path('donors_bad.csv')
    p = imp(db, 'donors', bad, '--dry-run', '--skip-invalid')
    out = json.loads(p.stdout)
    assert p.returncode == 0 and out['created'] == 1 and out['written'] is False
    assert db.value('SELECT count(*) FROM donor') == 0
    p = imp(db, 'donors', bad, '--skip-invalid')
    assert p.returncode == 0 and json.loads(p.stdout)['invalid'] == 6
    assert [r[0] for r in db.query('SELECT external_ref FROM donor')] == ['CRM-100']


def test_changed_row_refused_unless_update(db, tmp_path):
    assert imp(db, 'donors', path('donors_bom_crlf.csv')).returncode == 0
    changed = tmp_path / 'changed.csv'
    changed.write_text('external_ref,full_name,email,country\nCRM-010,Zoë Ünlü,new@example.org,DE\n')
    p = db.ctl('import', 'donors', str(changed))
    assert p.returncode == 1
    assert "changed.csv:2: donor 'CRM-010'" in p.stderr and 'email' in p.stderr
    assert '--update' in p.stderr
    assert db.value('SELECT email FROM donor') == 'zoe@example.org'
    p = imp(db, 'donors', str(changed), '--update')
    assert p.returncode == 0 and json.loads(p.stdout)['updated'] == 1
    assert db.value('SELECT email FROM donor') == 'new@example.org'
    ev = db.value("SELECT detail FROM event WHERE entity = 'donor' AND action = 'updated'")
    assert ev['changed']['email'] == {'from': 'zoe@example.org', 'to': 'new@example.org'}
    # pledges are never changed by an import
    assert imp(db, 'pledges', path('pledges_good.csv'), '--update').returncode == 2


def test_changed_pledge_refused(db, tmp_path):
    assert imp(db, 'donors', path('donors_good.csv')).returncode == 0
    assert imp(db, 'pledges', path('pledges_good.csv')).returncode == 0
    changed = tmp_path / 'p.csv'
    changed.write_text('external_ref,donor_ref,amount,currency\nPL-1,CRM-001,30.00,USD\n')
    p = db.ctl('import', 'pledges', str(changed))
    assert p.returncode == 1 and "pledge 'PL-1'" in p.stderr and 'amount' in p.stderr
    assert 'set-amount' in p.stderr
    assert db.value("SELECT amount_minor FROM pledge WHERE external_ref = 'PL-1'") == 2500


def test_malformed_files(db, tmp_path):
    cases = {
        'unknown_col.csv': ('external_ref,full_name,emial\nA,B,c@d.e\n', ":1: unknown column 'emial'"),
        'missing_col.csv': ('full_name\nB\n', ":1: required column 'external_ref' is missing"),
        'open_quote.csv': ('external_ref,full_name\nA,"Never closed\n', ':2: quoted field is never closed'),
        'stray_quote.csv': ('external_ref,full_name\nA,Bad"quote\n', ':2: quote inside an unquoted field'),
        'empty.csv': ('', 'empty'),
    }
    for name, (text, needle) in cases.items():
        f = tmp_path / name
        f.write_text(text)
        p = db.ctl('import', 'donors', str(f))
        assert p.returncode == 1, (name, p.stderr)
        assert needle in p.stderr, (name, p.stderr)
    assert db.value('SELECT count(*) FROM donor') == 0
    assert db.ctl('import', 'donors', str(tmp_path / 'nope.csv')).returncode == 3
    assert db.ctl('import', 'widgets', str(tmp_path / 'empty.csv')).returncode == 2
    assert db.ctl('import', '--help').returncode == 0


def test_stdin(db):
    p = db.ctl('import', 'donors', '-', input='external_ref,full_name\nS1,From Stdin\n')
    assert p.returncode == 0, p.stderr
    assert db.value('SELECT full_name FROM donor') == 'From Stdin'
