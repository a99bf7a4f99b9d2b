"""pledgectl migrate: ordered, once, checksummed, safe to run concurrently."""
import json
import subprocess

import pytest

from conftest import binary


def tables(db):
    return {r[0] for r in db.query(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_migrate_applies_everything_then_nothing(empty_db):
    first = empty_db.ctl('migrate', check=True)
    assert 'applied 001_schema.sql' in first.stdout
    assert {'donor', 'pledge', 'charge', 'charge_attempt', 'refund', 'receipt', 'receipt_line',
            'event', 'currency', 'payment_method', 'schema_migrations'} <= tables(empty_db)
    count = empty_db.value('SELECT count(*) FROM schema_migrations')
    second = empty_db.ctl('migrate', check=True)
    assert 'applied' not in second.stdout
    assert 'up to date' in second.stdout
    assert empty_db.value('SELECT count(*) FROM schema_migrations') == count
    assert empty_db.value('SELECT test_mode FROM instance') is False


def test_migrate_status_lists_applied_and_pending(empty_db):
    before = empty_db.ctl('--json', 'migrate', '--status', check=True)
    states = {m['name']: m['state'] for m in json.loads(before.stdout)['migrations']}
    assert states and set(states.values()) == {'pending'}
    empty_db.ctl('migrate', check=True)
    after = json.loads(empty_db.ctl('--json', 'migrate', '--status', check=True).stdout)
    assert {m['state'] for m in after['migrations']} == {'applied'}
    assert all(m['applied_at'] for m in after['migrations'])
    text = empty_db.ctl('migrate', '--status', check=True).stdout
    assert '001_schema.sql' in text and 'applied' in text


def test_concurrent_migrates_leave_one_consistent_schema(empty_db):
    procs = [subprocess.Popen([binary('pledgectl'), 'migrate'], env=empty_db.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert all(rc == 0 for _, _, rc in results), results
    applied = sum(out.count('applied 0') for out, _, _ in results)
    versions = [r[0] for r in empty_db.query('SELECT version FROM schema_migrations ORDER BY 1')]
    assert applied == len(versions)          # each file applied by exactly one run
    assert versions == list(range(1, len(versions) + 1))
    assert empty_db.value('SELECT count(*) FROM currency') > 150   # seeded once, not 4 times


def test_changed_applied_file_is_refused(empty_db):
    empty_db.ctl('migrate', check=True)
    # What the database remembers no longer matches the file compiled in:
    # exactly the state after someone edits an applied migration.
    empty_db.execute("UPDATE schema_migrations SET sha256 = repeat('0', 64) WHERE version = 2")
    proc = empty_db.ctl('migrate')
    assert proc.returncode == 1
    assert '002_currency.sql was changed after it was applied' in proc.stderr
    assert 'new numbered migration' in proc.stderr
    status = empty_db.ctl('migrate', '--status')
    assert status.returncode == 1 and 'changed' in status.stdout


def test_newer_database_is_refused(empty_db):
    empty_db.ctl('migrate', check=True)
    empty_db.execute("INSERT INTO schema_migrations (version, name, sha256) "
                     "VALUES (999, '999_future.sql', repeat('a', 64))")
    proc = empty_db.ctl('migrate')
    assert proc.returncode == 1
    assert 'newer' in proc.stderr or 'knows only up to' in proc.stderr


def test_failed_migration_leaves_database_as_it_was(empty_db):
    # A table the first migration wants to create already exists: that
    # migration fails and its transaction leaves nothing behind.
    empty_db.execute('CREATE TABLE donor (x int)')
    proc = empty_db.ctl('migrate')
    assert proc.returncode == 1
    assert '001_schema.sql' in proc.stderr and 'already exists' in proc.stderr
    assert 'pledge' not in tables(empty_db)
    assert empty_db.value('SELECT count(*) FROM schema_migrations') == 0


def test_test_mode_only_on_first_migration(empty_db):
    empty_db.ctl('migrate', check=True)
    proc = empty_db.ctl('migrate', '--test-mode')
    assert proc.returncode == 4
    assert 'test mode can only be chosen' in proc.stderr
    assert empty_db.value('SELECT test_mode FROM instance') is False


def test_test_mode_database(db):
    assert db.value('SELECT test_mode FROM instance') is True
    assert db.ctl('migrate', '--test-mode').returncode == 0


def test_usage_errors(empty_db):
    assert empty_db.ctl('migrate', '--bogus').returncode == 2
    assert empty_db.ctl('frobnicate').returncode == 2
    assert empty_db.ctl('migrate', 'extra').returncode == 2
    out = empty_db.ctl('--help')
    assert out.returncode == 0 and 'migrate' in out.stdout
    assert empty_db.ctl('migrate', '--help').returncode == 0
    v = empty_db.ctl('--version')
    assert v.returncode == 0 and v.stdout.startswith('pledgectl ')


def test_unreachable_database_fails_clearly(empty_db):
    proc = empty_db.ctl('migrate', env={'PGHOST': '/nonexistent-socket-dir'})
    assert proc.returncode == 1
    assert 'cannot connect to the database' in proc.stderr
