"""The C gateway client (lib/http + lib/gateway + the Stripe driver) against
the mock gateway, driven through tests/tools/pledged-gwcli.

Each gwcli run prints one JSON line per result (outcome class and fields);
bulk-charge adds a {"summary": ...} line. The mock's ledger is the witness of
what really executed.
"""

import json
import os
import subprocess
import threading
import time

import pytest

from mockgw import MockGateway, mock_gateway  # noqa: F401  (fixture)

BUILD = os.environ.get("PLEDGE_BUILD_DIR", "")
GWCLI = os.path.join(BUILD, "tests", "tools", "pledged-gwcli")


def gwcli(gw, *args, client=(), key_file=None, base_url=None, timeout=120):
    """Run pledged-gwcli; returns (rc, [json lines], stderr)."""
    if not os.access(GWCLI, os.X_OK):
        raise RuntimeError(f"{GWCLI} missing: build it with `ninja -C {BUILD}`")
    cmd = [GWCLI, "--base-url", base_url or gw.url,
           "--api-key-file", key_file or gw.api_key_file, *client, *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
    return p.returncode, lines, p.stderr


def charge(gw, key, pm="pm_card_visa", amount=2500, currency="USD", customer="cus_test",
           client=(), extra=(), **kw):
    rc, out, err = gwcli(gw, "charge", "--amount", str(amount), "--currency", currency,
                         "--customer", customer, "--pm", pm, "--key", key, *extra,
                         client=client, **kw)
    assert rc == 0, err
    assert len(out) == 1, out
    return out[0]


def ledger_for(gw, key):
    return [c for c in gw.ledger()["charges"] if c["idempotency_key"] == key]


# token → (class, decline code or error code we expect to see)
TOKENS = [
    ("pm_card_visa", "succeeded", None),
    ("pm_card_mastercard", "succeeded", None),
    ("pm_card_chargeDeclined", "declined_soft", "generic_decline"),
    ("pm_card_chargeDeclinedInsufficientFunds", "declined_soft", "insufficient_funds"),
    ("pm_card_visa_chargeDeclinedLostCard", "declined_hard", "lost_card"),
    ("pm_card_visa_chargeDeclinedStolenCard", "declined_hard", "stolen_card"),
    ("pm_card_chargeDeclinedExpiredCard", "declined_hard", "expired_card"),
    ("pm_card_chargeDeclinedProcessingError", "declined_soft", "processing_error"),
    ("pm_card_chargeCustomerFail", "declined_soft", "generic_decline"),
    ("pm_card_authenticationRequired", "action_required", "authentication_required"),
]


def test_every_test_token_lands_in_its_class(mock_gateway):
    gw = mock_gateway
    for pm, want, code in TOKENS:
        key = f"tok-{pm}"
        r = charge(gw, key, pm=pm)
        assert r["outcome"] == want, (pm, r)
        assert r["sends"] == 1
        assert r["request_id"].startswith("req_")
        assert r["ref"].startswith("pi_"), r
        if code:
            assert code in (r["decline_code"], r["code"]), r
        if want == "succeeded":
            assert r["charge_ref"].startswith("ch_")
            assert r["amount_received_minor"] == 2500
            assert r["currency"] == "USD"
        rows = ledger_for(gw, key)
        assert len(rows) == 1, rows
        assert rows[0]["currency"] == "usd"  # lowercased on the wire
        assert rows[0]["metadata"]["pledged_attempt"] == key
    # an unknown payment method: the method is unusable
    r = charge(gw, "tok-missing", pm="pm_does_not_exist")
    assert r["outcome"] == "declined_hard", r
    assert r["code"] == "resource_missing"


def test_form_encoding_survives_the_round_trip(mock_gateway):
    gw = mock_gateway
    text = "Gift & thanks = 100% +1 ü€ [x]"
    r = charge(gw, "enc-1", extra=("--description", text, "--charge-id", "42",
                                   "--meta", "note=a&b=c d"))
    assert r["outcome"] == "succeeded", r
    status, _, pi = gw.request("GET", "/v1/payment_intents/" + r["ref"])
    assert status == 200
    assert pi["description"] == text
    assert pi["metadata"] == {"pledged_attempt": "enc-1", "pledged_charge": "42",
                              "note": "a&b=c d"}


def test_429_waits_retry_after_and_resends_the_same_key(mock_gateway):
    gw = mock_gateway
    gw.config(next_n={"rate_429": 1}, retry_after_s=1)
    t0 = time.monotonic()
    r = charge(gw, "rl-1")
    elapsed = time.monotonic() - t0
    assert r["outcome"] == "succeeded", r
    assert r["sends"] == 2
    assert elapsed >= 1.0  # Retry-After honoured
    rows = ledger_for(gw, "rl-1")
    assert len(rows) == 1  # executed once
    assert gw.counters()["by_status"].get("429") == 1


def test_503_with_should_retry_is_resent(mock_gateway):
    gw = mock_gateway
    gw.config(next_n={"error_503_before": 1})
    r = charge(gw, "s503-1", client=("--retry-base-ms", "50"))
    assert r["outcome"] == "succeeded", r
    assert r["sends"] == 2
    assert len(ledger_for(gw, "s503-1")) == 1


def test_drop_after_execution_is_unknown_and_lookup_finds_it(mock_gateway):
    gw = mock_gateway
    gw.config(next_n={"drop_after": 1})
    r = charge(gw, "drop-1")
    assert r["outcome"] == "unknown", r
    assert r["transport"] == "maybe_sent"
    assert r["sends"] == 1  # never resent blindly
    rows = ledger_for(gw, "drop-1")
    assert len(rows) == 1 and rows[0]["fault"] == "drop_after"

    rc, out, err = gwcli(gw, "lookup", "--key", "drop-1")
    assert rc == 0, err
    found = out[0]
    assert found["outcome"] == "succeeded", found
    assert found["ref"] == rows[0]["id"]
    assert found["matches"] == 1

    # inside the window, resending the same key replays the first outcome
    again = charge(gw, "drop-1")
    assert again["outcome"] == "succeeded"
    assert again["replayed"] is True
    assert again["ref"] == rows[0]["id"]
    assert len(ledger_for(gw, "drop-1")) == 1


def test_replayed_500_stays_unknown(mock_gateway):
    gw = mock_gateway
    gw.config(next_n={"error_500_after_execute": 1})
    first = charge(gw, "e500-1")
    assert first["outcome"] == "unknown", first
    assert first["http_status"] == 500 and first["replayed"] is False
    second = charge(gw, "e500-1")
    assert second["outcome"] == "unknown", second
    assert second["http_status"] == 500 and second["replayed"] is True
    assert len(ledger_for(gw, "e500-1")) == 1
    # the lookup tells the truth
    rc, out, _ = gwcli(gw, "lookup", "--key", "e500-1")
    assert out[0]["outcome"] == "succeeded"


def test_409_key_in_use_is_retried_with_the_same_key(mock_gateway):
    gw = mock_gateway
    key = "inuse-1"
    pm = "pm_card_visa__slow"
    gw.config(payment_methods={pm: {"latency_ms": 1500}})
    first = {}

    def slow_first():
        first["reply"] = gw.charge(amount=2500, payment_method=pm, idempotency_key=key,
                                   customer="cus_test", currency="usd",
                                   metadata={"pledged_attempt": key})

    t = threading.Thread(target=slow_first)
    t.start()
    time.sleep(0.3)
    r = charge(gw, key, pm=pm, client=("--max-retries", "5"))
    t.join()
    assert first["reply"][0] == 200
    assert r["outcome"] == "succeeded", r
    assert r["sends"] >= 2
    assert r["replayed"] is True
    assert r["ref"] == first["reply"][2]["id"]
    assert gw.counters()["conflicts_409"] >= 1
    assert len(ledger_for(gw, key)) == 1


def test_idempotency_mismatch_is_unknown_and_loud(mock_gateway):
    gw = mock_gateway
    assert charge(gw, "mm-1", amount=2500)["outcome"] == "succeeded"
    r = charge(gw, "mm-1", amount=2600)
    assert r["outcome"] == "unknown", r
    assert r["error_type"] == "idempotency_error"
    assert len(ledger_for(gw, "mm-1")) == 1


def test_wrong_api_key_halts(mock_gateway, tmp_path):
    gw = mock_gateway
    bad = tmp_path / "bad_key"
    secret = "sk_test_WRONGsecretVALUE123"
    bad.write_text(secret + "\n")
    rc, out, err = gwcli(gw, "charge", "--amount", "2500", "--pm", "pm_card_visa",
                         "--key", "halt-1", key_file=str(bad))
    assert rc == 0, err
    r = out[0]
    assert r["outcome"] == "halt", r
    assert r["http_status"] == 401
    assert r["sends"] == 1  # not retried
    assert "WRONGsecret" not in json.dumps(out) + err
    assert ledger_for(gw, "halt-1") == []


def test_connect_failure_is_retry_now(mock_gateway):
    gw = mock_gateway
    port = gw.port
    gw.stop()
    rc, out, err = gwcli(gw, "charge", "--amount", "100", "--pm", "pm_card_visa",
                         "--key", "conn-1", base_url=f"http://127.0.0.1:{port}",
                         client=("--retry-base-ms", "20"))
    assert rc == 0, err
    assert out[0]["outcome"] == "retry_now", out
    assert out[0]["transport"] == "not_sent"
    assert out[0]["sends"] == 3  # 1 + 2 bounded retries


def test_timeout_after_send_is_unknown(mock_gateway):
    gw = mock_gateway
    gw.config(next_n={"hang": 1})
    r = charge(gw, "hang-1", client=("--request-timeout-ms", "700"))
    assert r["outcome"] == "unknown", r
    assert r["error_type"] == "timeout"
    # the mock hung before executing: the lookup finds nothing, and the
    # same key then executes exactly once
    rc, out, _ = gwcli(gw, "lookup", "--key", "hang-1")
    assert out[0]["outcome"] == "not_found"
    assert charge(gw, "hang-1")["outcome"] == "succeeded"
    assert len(ledger_for(gw, "hang-1")) == 1


def test_lookups_and_refund(mock_gateway):
    gw = mock_gateway
    r = charge(gw, "rf-1", amount=3000)
    assert r["outcome"] == "succeeded"
    rc, out, _ = gwcli(gw, "lookup", "--ref", r["ref"])
    assert out[0]["outcome"] == "succeeded" and out[0]["amount_minor"] == 3000
    rc, out, _ = gwcli(gw, "lookup", "--ref", "pi_doesnotexist")
    assert out[0]["outcome"] == "not_found"
    rc, out, _ = gwcli(gw, "lookup", "--key", "never-sent")
    assert out[0]["outcome"] == "not_found"

    rc, out, err = gwcli(gw, "refund", "--ref", r["ref"], "--amount", "1000",
                         "--reason", "requested_by_customer", "--key", "refund-rf-1")
    assert rc == 0, err
    assert out[0]["outcome"] == "succeeded", out
    assert out[0]["ref"].startswith("re_")
    rc, out2, _ = gwcli(gw, "refund", "--ref", r["ref"], "--amount", "1000",
                        "--reason", "requested_by_customer", "--key", "refund-rf-1")
    assert out2[0]["ref"] == out[0]["ref"] and out2[0]["replayed"] is True
    assert len(gw.ledger()["refunds"]) == 1


def test_plain_http_to_a_remote_host_is_refused(mock_gateway):
    rc, out, err = gwcli(mock_gateway, "lookup", "--key", "x",
                         base_url="http://example.com")
    assert rc == 1 and out == []


def test_1000_requests_never_exceed_64_in_flight(mock_gateway):
    gw = mock_gateway
    gw.config(latency_ms=20)
    rc, out, err = gwcli(gw, "bulk-charge", "--count", "1000", "--quiet",
                         "--key-prefix", "bulk", client=("--max-in-flight", "64"))
    assert rc == 0, err
    s = out[-1]["summary"]
    assert s["by_outcome"] == {"succeeded": 1000}, s
    assert s["max_in_flight_observed"] == 64  # the bound was reached, never passed
    c = gw.counters()
    print(f"\nbulk: client max in flight {s['max_in_flight_observed']}, mock "
          f"api_connections_max {c['api_connections_max']}, in_flight_max "
          f"{c['in_flight_max']}, connections_total {c['connections_total']}, "
          f"{s['req_per_s']:.0f} req/s")
    assert c["in_flight_max"] <= 64
    assert c["api_connections_max"] <= 64
    assert len(gw.ledger()["charges"]) == 1000


def test_rate_limit_100_per_s_is_held(mock_gateway):
    gw = mock_gateway
    rc, out, err = gwcli(gw, "bulk-charge", "--count", "1000", "--quiet",
                         "--key-prefix", "rate",
                         client=("--rate-limit", "100", "--rate-burst", "1",
                                 "--max-in-flight", "64"))
    assert rc == 0, err
    s = out[-1]["summary"]
    assert s["by_outcome"] == {"succeeded": 1000}, s
    created = sorted(c["created_ms"] for c in gw.ledger()["charges"])
    server_rate = (len(created) - 1) / ((created[-1] - created[0]) / 1000.0)
    print(f"\nrate limit 100/s: client {s['req_per_s']:.2f} req/s over "
          f"{s['start_span_s']:.2f} s, server saw {server_rate:.2f} req/s")
    assert 95.0 <= s["req_per_s"] <= 103.0
    assert 95.0 <= server_rate <= 105.0
