"""`meson install --destdir` lays out everything a package needs, unprivileged."""
import json
import os
import re
import subprocess

import pytest

BUILD_DIR = os.environ.get('PLEDGE_BUILD_DIR')

# relative to the prefix (meson's default /usr/local; sysconfdir etc → <prefix>/etc)
EXPECTED = [
    'sbin/pledged',
    'bin/pledgectl',
    'lib/systemd/system/pledged.service',
    'lib/sysusers.d/pledged.conf',
    'lib/tmpfiles.d/pledged.conf',
    'etc/pledged/pledged.conf.example',
    'share/man/man8/pledged.8',
    'share/man/man1/pledgectl.1',
    'share/pledged/sql/001_schema.sql',
    'share/pledged/sql/005_billing.sql',
    'share/pledged/sql/006_webhooks.sql',
]


def meson_prefix():
    out = subprocess.run(['meson', 'introspect', '--buildoptions', BUILD_DIR],
                         capture_output=True, text=True, check=True).stdout
    opts = {o['name']: o['value'] for o in json.loads(out)}
    return opts['prefix'], opts


def test_install_layout(tmp_path):
    if not BUILD_DIR:
        pytest.skip('PLEDGE_BUILD_DIR not set')
    prefix, opts = meson_prefix()
    if prefix == '/usr':
        pytest.skip('build configured with prefix /usr: paths come from systemd.pc')
    dest = tmp_path / 'root'
    p = subprocess.run(['meson', 'install', '-C', BUILD_DIR, '--destdir', str(dest),
                        '--no-rebuild', '--quiet'], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    root = str(dest) + prefix
    found = sorted(os.path.relpath(os.path.join(d, f), root)
                   for d, _, files in os.walk(str(dest)) for f in files)
    print('installed under %s:\n  %s' % (prefix, '\n  '.join(found)))
    missing = [f for f in EXPECTED if not os.path.exists(os.path.join(root, f))]
    assert not missing, 'missing: %s\ninstalled: %s' % (missing, found)
    for exe in ['sbin/pledged', 'bin/pledgectl']:
        assert os.access(os.path.join(root, exe), os.X_OK)
    unit = open(os.path.join(root, 'lib/systemd/system/pledged.service')).read()
    assert 'ExecStart=%s/sbin/pledged --config %s/etc/pledged/pledged.conf' % (prefix, prefix) \
        in unit
    assert not re.search(r'@[a-z_]+@', unit), 'unsubstituted placeholder in the unit'
    # every migration of the source tree is installed
    src = os.environ.get('PLEDGE_SOURCE_DIR')
    if src:
        for f in os.listdir(os.path.join(src, 'sql')):
            if f.endswith('.sql'):
                assert os.path.exists(os.path.join(root, 'share/pledged/sql', f)), f
    # nothing escaped the destdir
    assert all(not f.startswith('..') for f in found), found
