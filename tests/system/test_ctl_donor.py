"""pledgectl donor and method: add, show, list, update; card numbers refused;
names stored and shown verbatim in every output format."""
import json

import pytest

NASTY = [
    'Ada "The Countess" Lovelace',
    'Lovelace, Ada',
    'Multi\nline\tname',
    'Zoë Ünlü — 東京 🎉',
    "Robert'); DROP TABLE donor;--",
    'back\\slash',
]


def ok(db, *args, input=None):
    p = db.ctl(*args, input=input)
    assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p.stdout


def js(db, *args):
    return json.loads(ok(db, '--json', *args))


def add_donor(db, ref='D1', name='Ada Lovelace', **extra):
    args = ['donor', 'add', '--name', name, '--ref', ref]
    for k, v in extra.items():
        args += ['--' + k.replace('_', '-'), v]
    return int(ok(db, *args).strip())


def test_add_show_list(db):
    did = add_donor(db, email='ada@example.org', country='gb', city='London',
                    postal_code='N1 9GU', address1='12 Analytical Row', region='Greater London')
    row = db.query('SELECT full_name, email, country, city, postal_code FROM donor WHERE id = %s',
                   (did,))[0]
    assert row == ('Ada Lovelace', 'ada@example.org', 'GB', 'London', 'N1 9GU')
    assert db.value("SELECT count(*) FROM event WHERE entity = 'donor' AND entity_id = %s "
                    "AND action = 'created' AND actor LIKE 'pledgectl:%%'", (did,)) == 1
    shown = js(db, 'donor', 'show', did)
    for key in ('id', 'external_ref', 'full_name', 'email', 'address_line1', 'address_line2',
                'city', 'region', 'postal_code', 'country', 'created_at', 'updated_at',
                'methods', 'pledges'):
        assert key in shown
    assert shown['id'] == did and shown['methods'] == [] and shown['pledges'] == []
    assert js(db, 'donor', 'show', '--by-ref', 'D1')['id'] == did
    listed = js(db, 'donor', 'list')
    assert [d['id'] for d in listed] == [did]
    assert set(listed[0]) >= {'id', 'external_ref', 'full_name', 'email', 'country', 'methods',
                              'pledges', 'created_at'}
    tsv = ok(db, 'donor', 'list').splitlines()
    assert tsv[0].split('\t')[:3] == ['id', 'external_ref', 'full_name']
    assert tsv[1].split('\t')[:3] == [str(did), 'D1', 'Ada Lovelace']
    table = ok(db, '--format', 'table', 'donor', 'list')
    assert table.splitlines()[0].startswith('ID  EXTERNAL REF')
    assert js(db, 'donor', 'list', '--search', 'lovel')[0]['id'] == did
    assert js(db, 'donor', 'list', '--search', 'nobody') == []


def test_show_includes_methods_and_pledges(db):
    did = add_donor(db)
    mid = int(ok(db, 'method', 'add', '--donor', did, '--customer', 'cus_1', '--token',
                 'pm_card_visa', '--brand', 'visa', '--last4', '4242', '--exp-month', '12',
                 '--exp-year', '2030').strip())
    pid = int(ok(db, 'pledge', 'create', '--donor', did, '--amount', '25', '--currency', 'USD')
              .strip())
    shown = js(db, 'donor', 'show', did)
    assert [m['id'] for m in shown['methods']] == [mid]
    assert shown['methods'][0]['last4'] == '4242' and shown['methods'][0]['status'] == 'active'
    assert [p['id'] for p in shown['pledges']] == [pid]
    assert shown['pledges'][0]['amount'] == '25.00'
    assert shown['pledges'][0]['amount_minor'] == 2500
    text = ok(db, '--format', 'table', 'donor', 'show', did)
    assert 'Payment methods:' in text and 'pm_card_visa' in text and '25.00' in text


@pytest.mark.parametrize('name', NASTY)
def test_names_stored_and_shown_verbatim(db, name):
    did = add_donor(db, name=name, city=name)
    assert db.value('SELECT full_name FROM donor WHERE id = %s', (did,)) == name
    assert js(db, 'donor', 'show', did)['full_name'] == name
    assert js(db, 'donor', 'list')[0]['full_name'] == name
    escaped = name.replace('\\', '\\\\').replace('\t', '\\t').replace('\n', '\\n')
    lines = ok(db, 'donor', 'list').split('\n')
    assert len(lines) == 3  # header, one row, final newline: a row stays one line
    assert lines[1].split('\t')[2] == escaped
    record = dict(line.split('\t', 1) for line in ok(db, 'donor', 'show', did).split('\n\n')[0]
                  .splitlines())
    assert record['full_name'] == escaped and record['city'] == escaped
    assert db.value('SELECT count(*) FROM donor') == 1   # the SQL-looking name did nothing


def test_unknown_donor_is_exit_3(db):
    for args in (('donor', 'show', '999'), ('donor', 'show', '--by-ref', 'nope'),
                 ('donor', 'update', '999', '--name', 'X'),
                 ('method', 'add', '--donor', '999', '--customer', 'cus_1', '--token', 'pm_x'),
                 ('method', 'list', '--donor-ref', 'nope'),
                 ('method', 'invalidate', '999')):
        p = db.ctl(*args)
        assert p.returncode == 3, (args, p.stderr)
        assert p.stderr.startswith('pledgectl: ')


def test_bad_input(db):
    cases = [
        (('donor', 'add'), '--name'),
        (('donor', 'add', '--name', '   '), '--name'),
        (('donor', 'add', '--name', 'X', '--email', 'not-an-email'), '--email'),
        (('donor', 'add', '--name', 'X', '--country', 'USA'), '--country'),
        (('donor', 'add', '--name', 'X', '--bogus', 'y'), ''),
        (('donor', 'show', 'abc'), 'donor id'),
        (('donor', 'show'), 'usage'),
    ]
    for args, needle in cases:
        p = db.ctl(*args)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert needle in p.stderr, (args, p.stderr)
    assert db.value('SELECT count(*) FROM donor') == 0


def test_duplicate_ref_is_conflict(db):
    did = add_donor(db)
    p = db.ctl('donor', 'add', '--name', 'Other', '--ref', 'D1')
    assert p.returncode == 4 and "'D1' already exists (id %d)" % did in p.stderr
    assert db.value('SELECT count(*) FROM donor') == 1


def test_update_records_old_and_new(db):
    did = add_donor(db, email='old@example.org')
    ok(db, 'donor', 'update', did, '--email', 'new@example.org', '--city', 'Paris')
    assert db.query('SELECT email, city FROM donor WHERE id = %s', (did,))[0] == \
        ('new@example.org', 'Paris')
    detail = db.value("SELECT detail FROM event WHERE entity = 'donor' AND action = 'updated'")
    assert detail['changed']['email'] == {'from': 'old@example.org', 'to': 'new@example.org'}
    assert set(detail['changed']) == {'email', 'city'}
    ok(db, 'donor', 'update', '--by-ref', 'D1', '--email', '')
    assert db.value('SELECT email FROM donor WHERE id = %s', (did,)) is None
    # nothing to change: no event
    before = db.value("SELECT count(*) FROM event")
    ok(db, 'donor', 'update', did, '--city', 'Paris')
    assert db.value("SELECT count(*) FROM event") == before
    assert js(db, 'donor', 'update', did, '--name', 'Ada King')['full_name'] == 'Ada King'


@pytest.mark.parametrize('field,value', [
    ('--token', '4242424242424242'),
    ('--token', '4242 4242 4242 4242'),
    ('--customer', '4000-0566-5566-5556'),
    ('--brand', 'visa 4242424242424242'),
    ('--last4', '4242424242424242'),
])
def test_method_refuses_card_numbers(db, field, value):
    did = add_donor(db)
    args = {'--customer': 'cus_1', '--token': 'pm_card_visa'}
    args[field] = value
    flat = [x for kv in args.items() for x in kv]
    p = db.ctl('method', 'add', '--donor', did, *flat)
    assert p.returncode == 2
    assert 'card number' in p.stderr and field in p.stderr
    assert value not in p.stderr          # never echoed back
    assert db.value('SELECT count(*) FROM payment_method') == 0


def test_donor_fields_refuse_card_numbers(db):
    p = db.ctl('donor', 'add', '--name', 'Ada', '--address2', 'card 4111111111111111')
    assert p.returncode == 2 and '--address2' in p.stderr and 'card number' in p.stderr
    assert db.value('SELECT count(*) FROM donor') == 0


def test_method_add_list_invalidate(db):
    did = add_donor(db)
    bad = db.ctl('method', 'add', '--donor', did, '--customer', 'acct_1', '--token', 'tok_1')
    assert bad.returncode == 2 and '--customer' in bad.stderr and '--token' in bad.stderr
    mid = int(ok(db, 'method', 'add', '--donor-ref', 'D1', '--customer', 'cus_1', '--token',
                 'pm_card_visa').strip())
    dup = db.ctl('method', 'add', '--donor', did, '--customer', 'cus_1', '--token',
                 'pm_card_visa')
    assert dup.returncode == 4 and 'already registered' in dup.stderr
    listed = js(db, 'method', 'list', '--donor', did)
    assert [m['id'] for m in listed] == [mid]
    assert set(listed[0]) >= {'id', 'donor_id', 'gateway', 'customer_ref', 'token', 'brand',
                              'last4', 'exp_month', 'exp_year', 'status', 'invalid_reason',
                              'created_at'}
    pid = int(ok(db, 'pledge', 'create', '--donor', did, '--amount', '5', '--currency', 'EUR')
              .strip())
    out = js(db, 'method', 'invalidate', mid, '--reason', 'card reported stolen')
    assert out == {'id': mid, 'status': 'invalid', 'pledges_needing_method': 1}
    assert db.query('SELECT status, invalid_reason FROM payment_method')[0] == \
        ('invalid', 'card reported stolen')
    assert db.value('SELECT status FROM pledge WHERE id = %s', (pid,)) == 'needs_payment_method'
    assert db.ctl('method', 'invalidate', mid).returncode == 4
    assert js(db, 'method', 'list', '--status', 'active') == []


def test_help_everywhere(db):
    for args in (('donor', '--help'), ('donor', 'add', '--help'), ('donor', 'show', '--help'),
                 ('donor', 'list', '--help'), ('donor', 'update', '--help'),
                 ('method', '--help'), ('method', 'add', '--help'),
                 ('method', 'list', '--help'), ('method', 'invalidate', '--help')):
        p = db.ctl(*args)
        assert p.returncode == 0 and p.stdout.startswith('usage: pledgectl'), args
    assert db.ctl('donor').returncode == 2
    assert db.ctl('donor', 'frobnicate').returncode == 2
