"""Helpers for tests that talk to pledged's HTTP listener (test_service,
test_webhook, test_health_pg): a free port, plain requests, a running
daemon, Stripe-style signing and a Prometheus text parser."""
import hashlib
import hmac
import http.client
import json
import os
import re
import socket
import time

SECRET = 'whsec_test_pledged_0123456789'


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, headers=None, timeout=10):
    """Returns (status, headers dict (lower-case names), body bytes)."""
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def get_json(port, path):
    status, _, body = request(port, 'GET', path)
    return status, json.loads(body)


def sign(payload, t=None, secret=SECRET):
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), str(t).encode() + b'.' + payload, hashlib.sha256)
    return 't=%d,v1=%s' % (t, mac.hexdigest())


def post_event(port, payload, signature, extra_headers=None):
    if isinstance(payload, (dict, list)):
        payload = json.dumps(payload).encode()
    headers = {'Content-Type': 'application/json'}
    if signature is not None:
        headers['Stripe-Signature'] = signature
    headers.update(extra_headers or {})
    return request(port, 'POST', '/webhooks/stripe', payload, headers)


def start_daemon(env, port, secret=SECRET, **http):
    """Configure the listener on `port` (with a webhook secret file unless
    secret is None), start pledged, wait until /healthz answers 200."""
    settings = {'listen': '127.0.0.1:%d' % port}
    if secret is not None:
        path = os.path.join(env.dir, 'webhook_secret')
        with open(path, 'w') as f:
            f.write(secret + '\n')
        os.chmod(path, 0o600)
        settings['webhook_secret_file'] = path
    settings.update(http)
    env.write_config(http=settings)
    proc = env.start()
    wait_health(port, 200, proc=proc, env=env)
    return proc


def wait_health(port, want, proc=None, env=None, timeout=60):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError('pledged exited (%s):\n%s' % (proc.returncode,
                                                                env.log() if env else ''))
        try:
            status, body = get_json(port, '/healthz')
            last = (status, body)
            if status == want:
                return body
        except (ConnectionError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError('/healthz: wanted %s, last %r; log:\n%s' % (
        want, last, env.log() if env else ''))


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Strict enough Prometheus text parser. Returns (types, helps, samples)
    with samples {(name, ((label, value), ...)): float}; asserts that each
    family has one HELP and one TYPE before its samples."""
    types, helps, samples = {}, {}, {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith('# HELP '):
            name, _, doc = line[7:].partition(' ')
            assert name not in helps, 'second HELP for ' + name
            assert doc, 'empty HELP for ' + name
            helps[name] = doc
            continue
        if line.startswith('# TYPE '):
            name, _, typ = line[7:].partition(' ')
            assert name not in types, 'second TYPE for ' + name
            assert typ in ('counter', 'gauge', 'histogram', 'summary', 'untyped'), line
            types[name] = typ
            continue
        assert not line.startswith('#'), line
        m = _SAMPLE.match(line)
        assert m, 'bad sample line: %r' % line
        name, labels, value = m.group(1), m.group(2) or '', m.group(3)
        family = re.sub(r'_(bucket|sum|count)$', '', name) if name not in types else name
        assert family in types and family in helps, 'sample before HELP/TYPE: %r' % line
        key = (name, tuple(_LABEL.findall(labels)))
        assert key not in samples, 'duplicate sample %r' % line
        samples[key] = float(value)
    return types, helps, samples
