"""Shared fixtures for the system tests.

The throwaway PostgreSQL cluster is started by scripts/test, which exports
PGHOST/PGPORT/PGUSER. Every test gets its own database cloned from a
migrated template (created once per schema version, under an advisory lock
so parallel pytest processes agree), so tests never see each other's rows.
"""
import hashlib
import os
import subprocess
import sys
import uuid

import psycopg2
import psycopg2.extensions
import pytest

sys.path.insert(0, os.path.dirname(__file__))

SOURCE_DIR = os.environ.get('PLEDGE_SOURCE_DIR')
BUILD_DIR = os.environ.get('PLEDGE_BUILD_DIR')
TEMPLATE_LOCK = 7301


def _need_env():
    if not BUILD_DIR or not SOURCE_DIR:
        pytest.exit('PLEDGE_BUILD_DIR/PLEDGE_SOURCE_DIR not set: run through `meson test` '
                    '(scripts/test)', returncode=2)
    if not os.environ.get('PGHOST'):
        pytest.exit('PGHOST not set: scripts/test starts the throwaway PostgreSQL', returncode=2)


def binary(name):
    """Path of a built program: pledgectl, pledged, the mock gateway."""
    _need_env()
    paths = {
        'pledgectl': os.path.join(BUILD_DIR, 'daemon', 'pledgectl'),
        'pledged': os.path.join(BUILD_DIR, 'daemon', 'pledged'),
    }
    return paths[name]


def admin_connect(dbname='postgres'):
    conn = psycopg2.connect(dbname=dbname)
    conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    return conn


def _schema_fingerprint():
    h = hashlib.sha256()
    sql_dir = os.path.join(SOURCE_DIR, 'sql')
    for name in sorted(os.listdir(sql_dir)):
        if name.endswith('.sql'):
            with open(os.path.join(sql_dir, name), 'rb') as f:
                h.update(name.encode() + b'\0' + f.read())
    return h.hexdigest()[:16]


class Database:
    """One test database: psycopg2 access plus the environment for binaries."""

    def __init__(self, name):
        self.name = name
        self.env = dict(os.environ, PGDATABASE=name)
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

    def ctl(self, *args, input=None, check=False, env=None):
        """Run pledgectl against this database; returns CompletedProcess (text)."""
        e = dict(self.env)
        if env:
            e.update(env)
        proc = subprocess.run([binary('pledgectl')] + [str(a) for a in args], env=e,
                              input=input, capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError('pledgectl %s failed (%d): %s%s' % (
                ' '.join(map(str, args)), proc.returncode, proc.stdout, proc.stderr))
        return proc

    def close(self):
        self.conn.close()


def _create_database(name, template=None):
    admin = admin_connect()
    with admin.cursor() as cur:
        if template:
            cur.execute('CREATE DATABASE "%s" TEMPLATE "%s" STRATEGY FILE_COPY' % (name, template))
        else:
            cur.execute('CREATE DATABASE "%s"' % name)
    admin.close()


def _drop_database(name):
    admin = admin_connect()
    with admin.cursor() as cur:
        cur.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
    admin.close()


@pytest.fixture(scope='session')
def template_db():
    """Name of a database migrated in test mode, to clone tests from."""
    _need_env()
    name = 'pledged_tmpl_' + _schema_fingerprint()
    admin = admin_connect()
    with admin.cursor() as cur:
        cur.execute('SELECT pg_advisory_lock(%s)', (TEMPLATE_LOCK,))
        try:
            cur.execute('SELECT 1 FROM pg_database WHERE datname = %s', (name,))
            if cur.fetchone() is None:
                building = name + '_building'
                cur.execute('DROP DATABASE IF EXISTS "%s"' % building)
                cur.execute('CREATE DATABASE "%s"' % building)
                env = dict(os.environ, PGDATABASE=building)
                proc = subprocess.run([binary('pledgectl'), 'migrate', '--test-mode'], env=env,
                                      capture_output=True, text=True, timeout=120)
                if proc.returncode != 0:
                    raise RuntimeError('migrating the template failed: ' + proc.stderr)
                cur.execute('ALTER DATABASE "%s" RENAME TO "%s"' % (building, name))
        finally:
            cur.execute('SELECT pg_advisory_unlock(%s)', (TEMPLATE_LOCK,))
    admin.close()
    return name


@pytest.fixture
def db(template_db):
    """A fresh, migrated test-mode database for one test."""
    name = 't_' + uuid.uuid4().hex[:16]
    _create_database(name, template=template_db)
    d = Database(name)
    yield d
    d.close()
    _drop_database(name)


@pytest.fixture
def empty_db():
    """A fresh database with no schema at all."""
    _need_env()
    name = 'e_' + uuid.uuid4().hex[:16]
    _create_database(name)
    d = Database(name)
    yield d
    d.close()
    _drop_database(name)
