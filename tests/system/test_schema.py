"""Schema v1: the database itself rejects bad data (DESIGN.md §3), and the
period-date rules of §4 live in one SQL function."""
import datetime as dt

import psycopg2
import psycopg2.errors as pgerr
import pytest


def make_donor(db, ref='d1', name='Ada Lovelace'):
    return db.value('INSERT INTO donor (external_ref, full_name) VALUES (%s, %s) RETURNING id',
                    (ref, name))


def make_method(db, donor, token='pm_card_visa'):
    return db.value("INSERT INTO payment_method (donor_id, customer_ref, token) "
                    "VALUES (%s, 'cus_1', %s) RETURNING id", (donor, token))


def make_pledge(db, donor, method, amount=2500, currency='USD', anchor=15, interval=1):
    return db.value(
        'INSERT INTO pledge (donor_id, payment_method_id, amount_minor, currency, anchor_day,'
        ' interval_months, start_on, next_charge_on) '
        "VALUES (%s, %s, %s, %s, %s, %s, '2026-01-01', '2026-01-15') RETURNING id",
        (donor, method, amount, currency, anchor, interval))


def make_charge(db, pledge, donor, period='2026-01-15', amount=2500):
    return db.value(
        'INSERT INTO charge (pledge_id, donor_id, period, amount_minor, currency, fund, due_at) '
        "VALUES (%s, %s, %s, %s, 'USD', 'general', now()) RETURNING id",
        (pledge, donor, period, amount))


@pytest.fixture
def base(db):
    donor = make_donor(db)
    method = make_method(db, donor)
    pledge = make_pledge(db, donor, method)
    return db, donor, method, pledge


def test_valid_rows_are_accepted(base):
    db, donor, method, pledge = base
    charge = make_charge(db, pledge, donor)
    assert db.value('SELECT status FROM charge WHERE id = %s', (charge,)) == 'scheduled'


@pytest.mark.parametrize('amount', [0, -1, -2500])
def test_pledge_amount_must_be_positive(base, amount):
    db, donor, method, _ = base
    with pytest.raises(pgerr.CheckViolation):
        make_pledge(db, donor, method, amount=amount)


def test_charge_amount_must_be_positive(base):
    db, donor, _, pledge = base
    with pytest.raises(pgerr.CheckViolation):
        make_charge(db, pledge, donor, amount=-100)


@pytest.mark.parametrize('currency', ['XYZ', 'usd', 'EURO'])
def test_unknown_currency_rejected(base, currency):
    db, donor, method, _ = base
    with pytest.raises((pgerr.ForeignKeyViolation, pgerr.StringDataRightTruncation)):
        make_pledge(db, donor, method, currency=currency)


@pytest.mark.parametrize('anchor', [0, 32, -1])
def test_anchor_day_out_of_range_rejected(base, anchor):
    db, donor, method, _ = base
    with pytest.raises(pgerr.CheckViolation):
        make_pledge(db, donor, method, anchor=anchor)


@pytest.mark.parametrize('anchor', [1, 28, 31, None])
def test_anchor_day_boundaries_accepted(base, anchor):
    db, donor, method, _ = base
    assert make_pledge(db, donor, method, anchor=anchor) > 0


@pytest.mark.parametrize('interval', [0, 2, 4, 24])
def test_interval_must_be_1_3_6_12(base, interval):
    db, donor, method, _ = base
    with pytest.raises(pgerr.CheckViolation):
        make_pledge(db, donor, method, interval=interval)


def test_second_charge_for_same_pledge_and_period_rejected(base):
    db, donor, _, pledge = base
    make_charge(db, pledge, donor)
    with pytest.raises(pgerr.UniqueViolation):
        make_charge(db, pledge, donor)


def test_reused_idempotency_key_rejected(base):
    db, donor, _, pledge = base
    c1 = make_charge(db, pledge, donor, period='2026-01-15')
    c2 = make_charge(db, pledge, donor, period='2026-02-15')
    sql = ('INSERT INTO charge_attempt (charge_id, attempt_no, idempotency_key, amount_minor,'
           " currency) VALUES (%s, 1, %s, 2500, 'USD')")
    db.execute(sql, (c1, 'pledged-1-1'))
    with pytest.raises(pgerr.UniqueViolation):
        db.execute(sql, (c2, 'pledged-1-1'))


def test_only_one_open_attempt_per_charge(base):
    db, donor, _, pledge = base
    c = make_charge(db, pledge, donor)
    sql = ('INSERT INTO charge_attempt (charge_id, attempt_no, idempotency_key, amount_minor,'
           " currency) VALUES (%s, %s, %s, 2500, 'USD')")
    db.execute(sql, (c, 1, 'k1'))
    with pytest.raises(pgerr.UniqueViolation):
        db.execute(sql, (c, 2, 'k2'))


def _receipt(db, donor, number, status='issued'):
    db.execute(
        'INSERT INTO receipt (number, donor_id, tax_year, currency, total_minor, status,'
        ' voided_at, void_reason, donor_snapshot, org_snapshot) '
        "VALUES (%s, %s, 2026, 'USD', 30000, %s, %s, %s, '{}', '{}')",
        (number, donor, status, dt.datetime.now(dt.timezone.utc) if status == 'void' else None,
         'reissued' if status == 'void' else None))


def test_second_live_receipt_rejected(base):
    db, donor, _, _ = base
    _receipt(db, donor, '2026-000001')
    with pytest.raises(pgerr.UniqueViolation):
        _receipt(db, donor, '2026-000002')


def test_void_receipt_allows_a_replacement(base):
    db, donor, _, _ = base
    _receipt(db, donor, '2026-000001', status='void')
    _receipt(db, donor, '2026-000002')


def test_receipt_number_reuse_rejected(base):
    db, donor, _, _ = base
    other = make_donor(db, ref='d2')
    _receipt(db, donor, '2026-000001')
    with pytest.raises(pgerr.UniqueViolation):
        _receipt(db, other, '2026-000001')


def test_unknown_status_rejected(base):
    db, donor, _, pledge = base
    c = make_charge(db, pledge, donor)
    with pytest.raises(pgerr.CheckViolation):
        db.execute("UPDATE charge SET status = 'paid' WHERE id = %s", (c,))


def test_refund_cannot_exceed_charge(base):
    db, donor, _, pledge = base
    c = make_charge(db, pledge, donor)
    db.execute("UPDATE charge SET status = 'succeeded', succeeded_at = now() WHERE id = %s", (c,))
    with pytest.raises(pgerr.CheckViolation):
        db.execute('UPDATE charge SET refunded_minor = 2501 WHERE id = %s', (c,))
    db.execute('UPDATE charge SET refunded_minor = 2500 WHERE id = %s', (c,))


def test_event_log_is_append_only(db):
    db.execute("INSERT INTO event (actor, entity, action) VALUES ('test', 'donor', 'created')")
    with pytest.raises(pgerr.InsufficientPrivilege):
        db.execute("UPDATE event SET action = 'x'")
    with pytest.raises(pgerr.InsufficientPrivilege):
        db.execute('DELETE FROM event')


def test_currency_exponents_seeded(db):
    rows = dict(db.query("SELECT code, exponent FROM currency WHERE code IN "
                         "('USD', 'EUR', 'JPY', 'BHD', 'KWD', 'CLF', 'KRW', 'GBP', 'CAD')"))
    assert rows == {'USD': 2, 'EUR': 2, 'JPY': 0, 'BHD': 3, 'KWD': 3, 'CLF': 4, 'KRW': 0,
                    'GBP': 2, 'CAD': 2}
    assert db.value('SELECT count(*) FROM currency') > 150


def test_test_mode_cannot_be_toggled(db):
    assert db.value('SELECT test_mode FROM instance') is True
    with pytest.raises(pgerr.CheckViolation):
        db.execute('UPDATE instance SET test_mode = false')


# ---- period dates (DESIGN.md §4) -------------------------------------------

D = dt.date

# (anchor, any day of the month, expected period date); None = "last"
PERIOD_CASES = [
    (28, D(2024, 2, 1), D(2024, 2, 28)),
    (29, D(2024, 2, 1), D(2024, 2, 29)),   # leap year
    (29, D(2023, 2, 1), D(2023, 2, 28)),   # common year
    (30, D(2024, 2, 10), D(2024, 2, 29)),
    (30, D(2023, 2, 10), D(2023, 2, 28)),
    (31, D(2024, 2, 29), D(2024, 2, 29)),
    (31, D(2023, 2, 28), D(2023, 2, 28)),
    (31, D(2026, 4, 1), D(2026, 4, 30)),
    (31, D(2026, 3, 1), D(2026, 3, 31)),
    (None, D(2024, 2, 1), D(2024, 2, 29)),
    (None, D(2023, 2, 1), D(2023, 2, 28)),
    (None, D(2026, 12, 5), D(2026, 12, 31)),
    (None, D(2100, 2, 1), D(2100, 2, 28)),  # not a leap year
    (29, D(2000, 2, 1), D(2000, 2, 29)),    # leap year (400 rule)
    (1, D(2026, 6, 30), D(2026, 6, 1)),
    (15, D(2026, 1, 31), D(2026, 1, 15)),
]


@pytest.mark.parametrize('anchor,month,want', PERIOD_CASES)
def test_period_date(db, anchor, month, want):
    assert db.value('SELECT pl_period_date(%s, %s)', (anchor, month)) == want


def _series(db, anchor, interval, start, n):
    dates = [start]
    for _ in range(n - 1):
        dates.append(db.value('SELECT pl_period_after(%s, %s, %s)', (anchor, interval, dates[-1])))
    return dates


def test_anchor_31_monthly_does_not_drift(db):
    got = _series(db, 31, 1, D(2024, 1, 31), 6)
    assert got == [D(2024, 1, 31), D(2024, 2, 29), D(2024, 3, 31), D(2024, 4, 30),
                   D(2024, 5, 31), D(2024, 6, 30)]


def test_anchor_30_across_year_end_and_common_february(db):
    got = _series(db, 30, 1, D(2026, 11, 30), 5)
    assert got == [D(2026, 11, 30), D(2026, 12, 30), D(2027, 1, 30), D(2027, 2, 28),
                   D(2027, 3, 30)]


def test_last_day_monthly_through_leap_february(db):
    got = _series(db, None, 1, D(2023, 12, 31), 4)
    assert got == [D(2023, 12, 31), D(2024, 1, 31), D(2024, 2, 29), D(2024, 3, 31)]


def test_quarterly_anchor_31(db):
    got = _series(db, 31, 3, D(2023, 11, 30), 5)
    assert got == [D(2023, 11, 30), D(2024, 2, 29), D(2024, 5, 31), D(2024, 8, 31),
                   D(2024, 11, 30)]


def test_semiannual(db):
    assert _series(db, 29, 6, D(2023, 8, 29), 3) == [D(2023, 8, 29), D(2024, 2, 29),
                                                      D(2024, 8, 29)]


def test_annual_anchor_29_across_leap_years(db):
    got = _series(db, 29, 12, D(2023, 2, 28), 3)
    assert got == [D(2023, 2, 28), D(2024, 2, 29), D(2025, 2, 28)]


def test_december_to_january(db):
    assert db.value('SELECT pl_period_after(15, 1, %s)', (D(2026, 12, 15),)) == D(2027, 1, 15)
    assert db.value('SELECT pl_period_after(NULL, 1, %s)', (D(2026, 12, 31),)) == D(2027, 1, 31)


@pytest.mark.parametrize('anchor,day,want', [
    (15, D(2026, 3, 10), D(2026, 3, 15)),
    (15, D(2026, 3, 15), D(2026, 3, 15)),
    (15, D(2026, 3, 16), D(2026, 4, 15)),
    (31, D(2026, 2, 28), D(2026, 2, 28)),
    (None, D(2026, 12, 31), D(2026, 12, 31)),
    (1, D(2026, 12, 2), D(2027, 1, 1)),
])
def test_period_on_or_after(db, anchor, day, want):
    assert db.value('SELECT pl_period_on_or_after(%s, %s)', (anchor, day)) == want


def test_bad_anchor_and_interval_raise(db):
    with pytest.raises(pgerr.InvalidParameterValue):
        db.value('SELECT pl_period_date(32, current_date)')
    db.conn.rollback()
    with pytest.raises(pgerr.InvalidParameterValue):
        db.value('SELECT pl_period_after(15, 2, current_date)')


def test_due_at_uses_org_timezone(db):
    got = db.value("SELECT pl_due_at('2026-07-01', 'America/New_York', '09:00')")
    assert got == dt.datetime(2026, 7, 1, 13, 0, tzinfo=dt.timezone.utc)
