"""Start and drive pledged-gateway-mock (the Stripe-dialect mock gateway).

Importable by any system test:

    from mockgw import MockGateway, mock_gateway   # mock_gateway is a pytest fixture

    gw = MockGateway(); gw.start(seed=1)
    gw.url, gw.port, gw.api_key, gw.api_key_file
    gw.config(drop_after=1.0) / gw.config(next_n={"drop_after": 1})
    gw.ledger()["charges"], gw.reset(), gw.webhook("charge.refunded", payment_intent=..)
    gw.restart(); gw.kill(); gw.stop()

Only the standard library is used. The binary is found through
$PLEDGE_BUILD_DIR (set by `meson test`); there is deliberately no default.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

BINARY_RELPATH = os.path.join("tests", "gateway-mock", "pledged-gateway-mock")
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def binary_path():
    build = os.environ.get("PLEDGE_BUILD_DIR")
    if not build:
        raise RuntimeError(
            "PLEDGE_BUILD_DIR is not set: run through `meson test`, or set it to the meson "
            "build directory (e.g. PLEDGE_BUILD_DIR=$PWD/build-mock) so the tests use the "
            "binary you just built")
    path = os.path.join(build, BINARY_RELPATH)
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"{path} does not exist or is not executable: build it with `ninja -C {build}`")
    return path


class MockGateway:
    """One pledged-gateway-mock process in its own temporary directory."""

    def __init__(self, workdir=None):
        self._own_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="pledged-mockgw-")
        self.proc = None
        self.port = None
        self.url = None
        self.api_key = None
        self.api_key_file = os.path.join(self.dir, "api_key")
        self.port_file = os.path.join(self.dir, "port")
        self.state_file = os.path.join(self.dir, "state.jsonl")
        self.log_file = os.path.join(self.dir, "mock.log")
        self._start_args = None

    # -- process control -------------------------------------------------

    def start(self, api_key="sk_test_mock", seed=1, extra_args=(), port=0,
              state_file=True, webhook_url=None, webhook_secret=None):
        """Start the mock; returns self. state_file=True keeps state across restart()."""
        if self.proc is not None:
            raise RuntimeError("mock gateway already running")
        self._start_args = dict(api_key=api_key, seed=seed, extra_args=list(extra_args),
                                state_file=state_file, webhook_url=webhook_url,
                                webhook_secret=webhook_secret)
        self.api_key = api_key
        with open(self.api_key_file, "w") as f:
            f.write(api_key + "\n")
        args = [binary_path(), "--port", str(port), "--port-file", self.port_file,
                "--api-key-file", self.api_key_file, "--seed", str(seed)]
        if state_file:
            args += ["--state-file", self.state_file]
        if webhook_url:
            args += ["--webhook-url", webhook_url]
        if webhook_secret:
            self.webhook_secret_file = os.path.join(self.dir, "webhook_secret")
            with open(self.webhook_secret_file, "w") as f:
                f.write(webhook_secret + "\n")
            args += ["--webhook-secret-file", self.webhook_secret_file]
        args += list(extra_args)
        try:
            os.unlink(self.port_file)
        except FileNotFoundError:
            pass
        log = open(self.log_file, "ab")
        try:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log)
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"mock gateway exited at start; log:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mock gateway did not report a port; log:\n{self.log()}")
            time.sleep(0.01)
        with open(self.port_file) as f:
            self.port = int(f.read().strip())
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def stop(self):
        """SIGTERM (the mock saves its state) and wait."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        return rc

    def kill(self):
        """SIGKILL: a crash. The journal keeps everything already answered."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def restart(self, graceful=True, **overrides):
        """Stop (or kill) and start again on the same port with the same state file."""
        args = dict(self._start_args or {})
        args.update(overrides)
        port = self.port
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start(port=port, **args)

    def close(self):
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log(self):
        try:
            with open(self.log_file, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # -- HTTP helpers -----------------------------------------------------

    def _control(self, method, path, body=None, timeout=30):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{method} {path}: {e.code} {e.read().decode(errors='replace')}")

    def config(self, **kw):
        """Merge fault settings (see README); returns the full config."""
        return self._control("POST", "/_mock/config", kw)

    def get_config(self):
        return self._control("GET", "/_mock/config")

    def ledger(self):
        return self._control("GET", "/_mock/ledger")

    def counters(self):
        return self.ledger()["counters"]

    def reset(self):
        return self._control("POST", "/_mock/reset", {})

    def webhook(self, type, payment_intent=None, amount=None, **kw):
        """Make the mock sign and deliver an event; returns its reply (event,
        payload, signature, delivery_status, ...)."""
        body = {"type": type}
        if payment_intent is not None:
            body["payment_intent"] = payment_intent
        if amount is not None:
            body["amount"] = amount
        body.update(kw)
        return self._control("POST", "/_mock/webhook", body)

    def request(self, method, path, params=None, idempotency_key=None, api_key=None,
                timeout=30, headers=None):
        """A Stripe-style call: form-encoded POST or query-string GET.
        Returns (status, headers dict, parsed JSON body)."""
        import http.client
        params = params or {}
        items = list(params.items()) if isinstance(params, dict) else list(params)
        enc = urllib.parse.urlencode(items)
        hdrs = {"Authorization": f"Bearer {self.api_key if api_key is None else api_key}"}
        if idempotency_key:
            hdrs["Idempotency-Key"] = idempotency_key
        hdrs.update(headers or {})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if method == "GET":
                conn.request("GET", path + ("?" + enc if enc else ""), headers=hdrs)
            else:
                hdrs["Content-Type"] = "application/x-www-form-urlencoded"
                conn.request(method, path, body=enc, headers=hdrs)
            r = conn.getresponse()
            raw = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(raw)
        finally:
            conn.close()

    def charge(self, amount=2500, payment_method="pm_card_visa", idempotency_key=None,
               customer="cus_test", metadata=None, currency="usd", timeout=30, **extra):
        """POST /v1/payment_intents the way pledged does (confirm, off_session)."""
        params = [("amount", str(amount)), ("currency", currency),
                  ("payment_method", payment_method), ("confirm", "true"),
                  ("off_session", "true"), ("payment_method_types[]", "card")]
        if customer:
            params.append(("customer", customer))
        for k, v in (metadata or {}).items():
            params.append((f"metadata[{k}]", v))
        params += [(k, str(v)) for k, v in extra.items()]
        return self.request("POST", "/v1/payment_intents", params,
                            idempotency_key=idempotency_key, timeout=timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


try:
    import pytest

    @pytest.fixture
    def mock_gateway():
        """A started mock gateway (seed 1, key sk_test_mock), stopped afterwards."""
        gw = MockGateway()
        gw.start()
        try:
            yield gw
        finally:
            gw.close()
except ImportError:  # usable without pytest, e.g. from a demo script
    pass
