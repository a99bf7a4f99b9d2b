"""The mock gateway itself: outcomes, idempotency, faults, search, refunds,
webhooks, persistence and counters. No PostgreSQL needed."""

import hashlib
import hmac
import http.client
import http.server
import json
import os
import socket
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mockgw import MockGateway, mock_gateway  # noqa: E402,F401  (fixture)

PI = "/v1/payment_intents"


def charge_params(amount=2500, pm="pm_card_visa", **extra):
    p = [("amount", str(amount)), ("currency", "usd"), ("customer", "cus_a"),
         ("payment_method", pm), ("confirm", "true"), ("off_session", "true"),
         ("payment_method_types[]", "card")]
    return p + list(extra.items())


def raw_post(gw, path, params, key=None, timeout=10):
    """Like gw.request but lets connection errors surface."""
    return gw.request("POST", path, params, idempotency_key=key, timeout=timeout)


# ---- outcomes by token ----------------------------------------------------

DECLINES = [
    ("pm_card_chargeDeclined", "card_declined", "generic_decline", None),
    ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds",
     "try_again_later"),
    ("pm_card_visa_chargeDeclinedLostCard", "card_declined", "lost_card", "do_not_try_again"),
    ("pm_card_visa_chargeDeclinedStolenCard", "card_declined", "stolen_card",
     "do_not_try_again"),
    ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card", None),
    ("pm_card_chargeDeclinedProcessingError", "processing_error", "processing_error",
     "try_again_later"),
    ("pm_card_chargeCustomerFail", "card_declined", "generic_decline", None),
    ("pm_card_authenticationRequired", "authentication_required", "authentication_required",
     None),
]


@pytest.mark.parametrize("pm", ["pm_card_visa", "pm_card_mastercard", "pm_card_visa__donor42"])
def test_success_tokens(mock_gateway, pm):
    st, h, body = mock_gateway.charge(payment_method=pm, idempotency_key="s-" + pm,
                                      metadata={"pledged_charge": "1"})
    assert st == 200, body
    assert h["request-id"].startswith("req_")
    assert body["object"] == "payment_intent" and body["id"].startswith("pi_")
    assert body["status"] == "succeeded"
    assert body["amount"] == body["amount_received"] == 2500
    assert body["currency"] == "usd" and body["customer"] == "cus_test"
    assert body["payment_method"] == pm
    assert body["latest_charge"].startswith("ch_")
    assert body["last_payment_error"] is None and body["livemode"] is False
    assert body["metadata"] == {"pledged_charge": "1"}
    assert isinstance(body["created"], int)


@pytest.mark.parametrize("pm,code,decline,advice", DECLINES)
def test_decline_tokens(mock_gateway, pm, code, decline, advice):
    st, h, body = mock_gateway.charge(payment_method=pm, idempotency_key="d-" + pm)
    assert st == 402, body
    assert h["stripe-should-retry"] == "false"
    err = body["error"]
    assert err["type"] == "card_error"
    assert err["code"] == code and err["decline_code"] == decline
    assert err.get("advice_code") == advice
    pi = err["payment_intent"]
    assert pi["status"] == "requires_payment_method"
    assert pi["amount_received"] == 0
    assert pi["last_payment_error"]["decline_code"] == decline
    # the declined PaymentIntent is a real object: retrievable and in the ledger
    st, _, got = mock_gateway.request("GET", f"{PI}/{pi['id']}")
    assert st == 200 and got["status"] == "requires_payment_method"
    [c] = mock_gateway.ledger()["charges"]
    assert c["id"] == pi["id"] and c["decline_code"] == decline and c["payment_method"] == pm


def test_authentication_required_on_session_needs_action(mock_gateway):
    params = [p for p in charge_params(pm="pm_card_authenticationRequired")
              if p[0] != "off_session"]
    st, _, body = mock_gateway.request("POST", PI, params)
    assert st == 200 and body["status"] == "requires_action"
    assert body["next_action"]["type"] == "use_stripe_sdk"


def test_unknown_token_is_resource_missing(mock_gateway):
    st, _, body = mock_gateway.charge(payment_method="pm_card_nonsense", idempotency_key="u")
    assert st == 400
    assert body["error"]["code"] == "resource_missing"
    assert body["error"]["param"] == "payment_method"
    assert mock_gateway.ledger()["charges"] == []


@pytest.mark.parametrize("drop,add,param,code", [
    ("amount", [], "amount", "parameter_missing"),
    ("amount", [("amount", "0")], "amount", "amount_too_small"),
    ("amount", [("amount", "-5")], "amount", "parameter_invalid_integer"),
    ("amount", [("amount", "12.50")], "amount", "parameter_invalid_integer"),
    ("amount", [("amount", "100000000")], "amount", "amount_too_large"),
    ("currency", [], "currency", "parameter_missing"),
    ("currency", [("currency", "us")], "currency", None),
    ("currency", [("currency", "xyz")], "currency", None),
    ("confirm", [], "off_session", None),
    (None, [("statement_descriptor", "PLEDGE")], "statement_descriptor", None),
    (None, [("statement_descriptor_suffix", "X" * 23)], "statement_descriptor_suffix", None),
    (None, [("colour", "red")], "colour", "parameter_unknown"),
    ("payment_method_types[]", [], "return_url", None),
    ("payment_method_types[]", [("payment_method_types[]", "sepa_debit")],
     "payment_method_types", None),
])
def test_validation_errors(mock_gateway, drop, add, param, code):
    params = [p for p in charge_params() if p[0] != drop] + add
    st, h, body = mock_gateway.request("POST", PI, params, idempotency_key="v")
    assert st == 400, body
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param
    if code:
        assert body["error"]["code"] == code
    assert mock_gateway.ledger()["charges"] == []
    # validation failures save nothing: the same key runs a corrected request
    st, h, body = mock_gateway.request("POST", PI, charge_params(), idempotency_key="v")
    assert st == 200 and "idempotent-replayed" not in h


@pytest.mark.parametrize("amount", [1, 99999999])
def test_amount_boundaries_accepted(mock_gateway, amount):
    st, _, body = mock_gateway.charge(amount=amount)
    assert st == 200 and body["amount"] == amount


def test_uppercase_currency_normalised(mock_gateway):
    st, _, body = mock_gateway.charge(currency="JPY", amount=500)
    assert st == 200 and body["currency"] == "jpy"


def test_not_found_and_unknown_route(mock_gateway):
    st, h, body = mock_gateway.request("GET", f"{PI}/pi_doesnotexist")
    assert st == 404 and body["error"]["code"] == "resource_missing"
    assert h["request-id"].startswith("req_")
    st, _, body = mock_gateway.request("GET", "/v1/charges")
    assert st == 404


# ---- auth -----------------------------------------------------------------

def test_bad_or_missing_key_is_401_and_saves_nothing(mock_gateway):
    st, _, body = mock_gateway.request("POST", PI, charge_params(), idempotency_key="a1",
                                       api_key="sk_test_wrong")
    assert st == 401
    assert body["error"]["type"] == "invalid_request_error"
    assert "sk_test_wrong" not in body["error"]["message"]
    st, _, body = mock_gateway.request("GET", f"{PI}/pi_x", headers={"Authorization": ""})
    assert st == 401
    st, h, body = mock_gateway.request("POST", PI, charge_params(), idempotency_key="a1")
    assert st == 200 and "idempotent-replayed" not in h
    assert len(mock_gateway.ledger()["charges"]) == 1


# ---- idempotency -----------------------------------------------------------

def test_replay_same_key(mock_gateway):
    st1, h1, b1 = mock_gateway.charge(idempotency_key="k-replay")
    st2, h2, b2 = mock_gateway.charge(idempotency_key="k-replay")
    assert st1 == st2 == 200 and b1 == b2
    assert "idempotent-replayed" not in h1
    assert h2["idempotent-replayed"] == "true"
    assert h2["original-request"] == h1["request-id"]
    assert h2["request-id"] != h1["request-id"]
    led = mock_gateway.ledger()
    assert len(led["charges"]) == 1 and led["charges"][0]["idempotency_key"] == "k-replay"
    assert led["counters"]["replays"] == 1


def test_replay_of_a_decline(mock_gateway):
    st1, _, b1 = mock_gateway.charge(payment_method="pm_card_chargeDeclined",
                                     idempotency_key="k-dec")
    st2, h2, b2 = mock_gateway.charge(payment_method="pm_card_chargeDeclined",
                                      idempotency_key="k-dec")
    assert st1 == st2 == 402 and b1 == b2 and h2["idempotent-replayed"] == "true"
    assert len(mock_gateway.ledger()["charges"]) == 1


def test_same_key_other_parameters_is_idempotency_error(mock_gateway):
    assert mock_gateway.charge(idempotency_key="k-mm")[0] == 200
    st, _, body = mock_gateway.charge(amount=9999, idempotency_key="k-mm")
    assert st == 400 and body["error"]["type"] == "idempotency_error"
    assert len(mock_gateway.ledger()["charges"]) == 1


def test_parameter_order_does_not_matter(mock_gateway):
    params = charge_params(**{"metadata[a]": "1", "metadata[b]": "2"})
    assert mock_gateway.request("POST", PI, params, idempotency_key="k-ord")[0] == 200
    st, h, _ = mock_gateway.request("POST", PI, list(reversed(params)), idempotency_key="k-ord")
    assert st == 200 and h["idempotent-replayed"] == "true"


def test_keys_are_scoped_per_path(mock_gateway):
    _, _, pi = mock_gateway.charge(idempotency_key="shared")
    st, h, body = mock_gateway.request("POST", "/v1/refunds", {"payment_intent": pi["id"]},
                                       idempotency_key="shared")
    assert st == 200 and body["object"] == "refund" and "idempotent-replayed" not in h


def test_idempotency_key_too_long(mock_gateway):
    st, _, body = mock_gateway.charge(idempotency_key="k" * 256)
    assert st == 400
    assert mock_gateway.charge(idempotency_key="k" * 255)[0] == 200


def test_replayed_500(mock_gateway):
    mock_gateway.config(next_n={"error_500_after_execute": 1})
    st, h, body = mock_gateway.charge(idempotency_key="k500")
    assert st == 500 and body["error"]["type"] == "api_error"
    [c] = mock_gateway.ledger()["charges"]
    assert c["status"] == "succeeded" and c["fault"] == "error_500_after_execute"
    st2, h2, body2 = mock_gateway.charge(idempotency_key="k500")
    assert st2 == 500 and body2 == body and h2["idempotent-replayed"] == "true"
    assert len(mock_gateway.ledger()["charges"]) == 1
    # the charge is real: a lookup finds it
    st, _, found = mock_gateway.request("GET", f"{PI}/{c['id']}")
    assert st == 200 and found["status"] == "succeeded"


def _in_background(fn):
    out = {}

    def run():
        try:
            out["result"] = fn()
        except Exception as e:  # noqa: BLE001 — reported to the test
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_409_while_first_request_runs(mock_gateway):
    mock_gateway.config(latency_ms=1500)
    t, first = _in_background(lambda: mock_gateway.charge(idempotency_key="k409"))
    time.sleep(0.4)
    mock_gateway.config(latency_ms=0)
    st, h, body = mock_gateway.charge(idempotency_key="k409")
    assert st == 409, body
    assert body["error"]["code"] == "idempotency_key_in_use"
    assert body["error"]["type"] == "invalid_request_error"
    assert h["stripe-should-retry"] == "true"
    t.join()
    assert first["result"][0] == 200
    st, h, body = mock_gateway.charge(idempotency_key="k409")
    assert st == 200 and h["idempotent-replayed"] == "true"
    assert body["id"] == first["result"][2]["id"]
    assert len(mock_gateway.ledger()["charges"]) == 1
    assert mock_gateway.counters()["conflicts_409"] == 1


def test_409_while_first_request_hangs_then_key_is_free(mock_gateway):
    mock_gateway.config(next_n={"hang": 1})
    t, first = _in_background(lambda: mock_gateway.charge(idempotency_key="khang", timeout=1))
    time.sleep(0.3)
    st, _, body = mock_gateway.charge(idempotency_key="khang")
    assert st == 409
    t.join()
    assert isinstance(first.get("error"), (socket.timeout, TimeoutError, OSError))
    # the hung request never executed; once its client left, the key is free
    deadline = time.monotonic() + 5
    while True:
        st, h, body = mock_gateway.charge(idempotency_key="khang")
        if st != 409 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert st == 200 and "idempotent-replayed" not in h
    assert len(mock_gateway.ledger()["charges"]) == 1


def test_429_saves_nothing(mock_gateway):
    mock_gateway.config(next_n={"rate_429": 1}, retry_after_s=2)
    st, h, body = mock_gateway.charge(idempotency_key="k429")
    assert st == 429 and h["retry-after"] == "2" and h["stripe-should-retry"] == "true"
    assert mock_gateway.ledger()["charges"] == []
    st, h, _ = mock_gateway.charge(idempotency_key="k429")
    assert st == 200 and "idempotent-replayed" not in h


def test_retention_prunes_keys():
    gw = MockGateway()
    gw.start(extra_args=["--idempotency-retention", "0.5"])
    try:
        _, _, b1 = gw.charge(idempotency_key="k-old")
        _, h, b2 = gw.charge(idempotency_key="k-old")
        assert h["idempotent-replayed"] == "true" and b2["id"] == b1["id"]
        time.sleep(0.7)
        st, h, b3 = gw.charge(idempotency_key="k-old")
        assert st == 200 and "idempotent-replayed" not in h and b3["id"] != b1["id"]
        assert len(gw.ledger()["charges"]) == 2
    finally:
        gw.close()


# ---- faults ---------------------------------------------------------------

def test_503_before_is_not_executed(mock_gateway):
    mock_gateway.config(next_n={"error_503_before": 1})
    st, h, body = mock_gateway.charge(idempotency_key="k503")
    assert st == 503 and h["stripe-should-retry"] == "true"
    assert mock_gateway.ledger()["charges"] == []
    st, h, _ = mock_gateway.charge(idempotency_key="k503")
    assert st == 200 and "idempotent-replayed" not in h


def test_drop_before_executes_nothing(mock_gateway):
    mock_gateway.config(next_n={"drop_before": 1})
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        mock_gateway.charge(idempotency_key="kdb")
    assert mock_gateway.ledger()["charges"] == []
    st, h, _ = mock_gateway.charge(idempotency_key="kdb")
    assert st == 200 and "idempotent-replayed" not in h
    assert mock_gateway.counters()["dropped_before"] == 1


def test_drop_after_executes_but_never_replies(mock_gateway):
    mock_gateway.config(next_n={"drop_after": 1})
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        mock_gateway.charge(idempotency_key="kda", metadata={"pledged_attempt": "p-1-1"})
    [c] = mock_gateway.ledger()["charges"]
    assert c["status"] == "succeeded" and c["fault"] == "drop_after"
    assert c["idempotency_key"] == "kda"
    # the client learns the outcome by retrying with the key...
    st, h, body = mock_gateway.charge(idempotency_key="kda", metadata={"pledged_attempt": "p-1-1"})
    assert st == 200 and h["idempotent-replayed"] == "true" and body["id"] == c["id"]
    # ...or by searching
    st, _, found = mock_gateway.request(
        "GET", f"{PI}/search", {"query": "metadata['pledged_attempt']:'p-1-1'"})
    assert [p["id"] for p in found["data"]] == [c["id"]]
    assert mock_gateway.counters()["dropped_after"] == 1


def test_hang_holds_only_its_own_client(mock_gateway):
    mock_gateway.config(payment_methods={"pm_card_mastercard": {"hang": 1.0}})
    t, hung = _in_background(
        lambda: mock_gateway.charge(payment_method="pm_card_mastercard", timeout=1.5))
    time.sleep(0.2)
    t0 = time.monotonic()
    st, _, _ = mock_gateway.charge(payment_method="pm_card_visa")
    assert st == 200 and time.monotonic() - t0 < 1.0
    t.join()
    assert "error" in hung
    deadline = time.monotonic() + 5
    while mock_gateway.counters()["in_flight_current"] and time.monotonic() < deadline:
        time.sleep(0.05)
    ctr = mock_gateway.counters()
    assert ctr["hung"] == 1 and ctr["in_flight_current"] == 0
    assert all(c["payment_method"] != "pm_card_mastercard"
               for c in mock_gateway.ledger()["charges"])


def test_latency_and_jitter(mock_gateway):
    mock_gateway.config(latency_ms=200, jitter_ms=100)
    t0 = time.monotonic()
    assert mock_gateway.charge()[0] == 200
    elapsed = time.monotonic() - t0
    assert 0.2 <= elapsed < 2.0


def test_per_token_faults_and_filters(mock_gateway):
    mock_gateway.config(payment_methods={"pm_card_mastercard": {"next_n": {"error_503_before": 2}}})
    assert mock_gateway.charge(payment_method="pm_card_visa")[0] == 200
    assert mock_gateway.charge(payment_method="pm_card_mastercard__x")[0] == 503
    assert mock_gateway.charge(payment_method="pm_card_mastercard")[0] == 503
    assert mock_gateway.charge(payment_method="pm_card_mastercard")[0] == 200
    # a fault limited to POST does not touch lookups
    mock_gateway.config(http_methods=["POST"], error_503_before=1.0)
    assert mock_gateway.request("GET", PI)[0] == 200
    assert mock_gateway.charge()[0] == 503
    mock_gateway.config(error_503_before=0.0, http_methods=[])


def test_rates_are_reproducible_with_a_seed():
    def run():
        gw = MockGateway()
        gw.start(seed=99, extra_args=["--error-503-before", "0.5"])
        try:
            out = []
            for i in range(20):
                st, _, body = gw.charge(idempotency_key=f"r{i}")
                out.append((st, body.get("id")))
            return out
        finally:
            gw.close()
    a, b = run(), run()
    assert a == b
    statuses = {s for s, _ in a}
    assert statuses == {200, 503}


def test_config_endpoint_validates_and_reset_restores(mock_gateway):
    with pytest.raises(RuntimeError, match="unknown config key"):
        mock_gateway.config(drop_aftr=1.0)
    with pytest.raises(RuntimeError, match="probability"):
        mock_gateway.config(drop_after=2)
    cfg = mock_gateway.config(latency_ms=5, next_n={"rate_429": 3})
    assert cfg["latency_ms"] == 5 and cfg["next_n"]["rate_429"] == 3
    mock_gateway.charge()
    mock_gateway.reset()
    cfg = mock_gateway.get_config()
    assert cfg["latency_ms"] == 0 and cfg["next_n"]["rate_429"] == 0
    led = mock_gateway.ledger()
    assert led["charges"] == [] and led["counters"]["requests_total"] == 0


# ---- lookups --------------------------------------------------------------

def test_search_by_metadata(mock_gateway):
    ids = {}
    for i in range(3):
        _, _, b = mock_gateway.charge(metadata={"pledged_attempt": f"pledged-{i}-1",
                                                "fund": "general"})
        ids[i] = b["id"]
    mock_gateway.charge(payment_method="pm_card_chargeDeclined",
                        metadata={"pledged_attempt": "pledged-9-1", "fund": "general"})
    st, _, r = mock_gateway.request("GET", f"{PI}/search",
                                    {"query": "metadata['pledged_attempt']:'pledged-1-1'"})
    assert st == 200 and r["object"] == "search_result" and r["has_more"] is False
    assert [p["id"] for p in r["data"]] == [ids[1]]
    st, _, r = mock_gateway.request(
        "GET", f"{PI}/search",
        {"query": "metadata[\"fund\"]:\"general\" AND status:'succeeded'", "limit": "2"})
    assert st == 200 and len(r["data"]) == 2 and r["has_more"] is True
    st, _, r = mock_gateway.request(
        "GET", f"{PI}/search",
        {"query": "metadata['pledged_attempt']:'pledged-0-1' OR metadata['pledged_attempt']:'pledged-2-1'"})
    assert {p["id"] for p in r["data"]} == {ids[0], ids[2]}
    st, _, r = mock_gateway.request("GET", f"{PI}/search",
                                    {"query": "amount>=2500 AND -status:'succeeded'"})
    assert [p["status"] for p in r["data"]] == ["requires_payment_method"]
    st, _, r = mock_gateway.request("GET", f"{PI}/search",
                                    {"query": "metadata['nope']:'x'"})
    assert st == 200 and r["data"] == []


@pytest.mark.parametrize("query", [
    "", "metadata['k']", "metadata[k]:'v'", "metadata['k']:v", "metadata['k']:'v",
    "colour:'red'", "status:'a' AND status:'b' OR status:'c'", "status:'a' AND",
    "status>'a'", "amount:abc", "status:'a' status:'b'",
])
def test_malformed_search_is_400(mock_gateway, query):
    st, _, body = mock_gateway.request("GET", f"{PI}/search", {"query": query})
    assert st == 400, query
    assert body["error"]["param"] == "query"


def test_search_lag(mock_gateway):
    mock_gateway.config(search_lag_ms=400)
    mock_gateway.charge(metadata={"k": "v"})
    q = {"query": "metadata['k']:'v'"}
    assert mock_gateway.request("GET", f"{PI}/search", q)[2]["data"] == []
    time.sleep(0.5)
    assert len(mock_gateway.request("GET", f"{PI}/search", q)[2]["data"]) == 1


def test_list_by_customer(mock_gateway):
    mine = [mock_gateway.charge(customer="cus_me")[2]["id"] for _ in range(3)]
    mock_gateway.charge(customer="cus_other")
    st, _, r = mock_gateway.request("GET", PI, {"customer": "cus_me", "limit": "2"})
    assert st == 200 and r["object"] == "list"
    assert [p["id"] for p in r["data"]] == [mine[2], mine[1]] and r["has_more"] is True
    st, _, r = mock_gateway.request("GET", PI, {"customer": "cus_me", "limit": "2",
                                                "starting_after": mine[1]})
    assert [p["id"] for p in r["data"]] == [mine[0]] and r["has_more"] is False
    st, _, r = mock_gateway.request("GET", PI, {"customer": "cus_me", "created[gte]": "0"})
    assert len(r["data"]) == 3
    assert mock_gateway.request("GET", PI, {"limit": "101"})[0] == 400
    assert mock_gateway.request("GET", PI, {"limit": "0"})[0] == 400


# ---- refunds --------------------------------------------------------------

def test_refunds_and_over_refund(mock_gateway):
    _, _, pi = mock_gateway.charge(amount=1000)
    R = "/v1/refunds"
    st, _, r1 = mock_gateway.request("POST", R, {"payment_intent": pi["id"], "amount": "300",
                                                 "reason": "requested_by_customer"},
                                     idempotency_key="rf1")
    assert st == 200 and r1["id"].startswith("re_") and r1["amount"] == 300
    assert r1["payment_intent"] == pi["id"] and r1["charge"] == pi["latest_charge"]
    # replay does not refund twice
    st, h, again = mock_gateway.request("POST", R, {"payment_intent": pi["id"], "amount": "300",
                                                    "reason": "requested_by_customer"},
                                        idempotency_key="rf1")
    assert h["idempotent-replayed"] == "true" and again["id"] == r1["id"]
    st, _, body = mock_gateway.request("POST", R, {"payment_intent": pi["id"], "amount": "701"})
    assert st == 400 and body["error"]["param"] == "amount"
    st, _, body = mock_gateway.request("POST", R, {"payment_intent": pi["id"], "reason": "bored"})
    assert st == 400 and body["error"]["param"] == "reason"
    st, _, r2 = mock_gateway.request("POST", R, {"charge": pi["latest_charge"]})
    assert st == 200 and r2["amount"] == 700  # the remainder
    st, _, body = mock_gateway.request("POST", R, {"payment_intent": pi["id"], "amount": "1"})
    assert st == 400 and body["error"]["code"] == "charge_already_refunded"
    st, _, body = mock_gateway.request("GET", f"/v1/refunds/{r2['id']}")
    assert st == 200 and body["amount"] == 700
    led = mock_gateway.ledger()
    assert [r["amount"] for r in led["refunds"]] == [300, 700]
    assert led["refunds"][0]["idempotency_key"] == "rf1"
    assert led["charges"][0]["amount_refunded"] == 1000


def test_refund_of_declined_or_missing_pi(mock_gateway):
    _, _, body = mock_gateway.charge(payment_method="pm_card_chargeDeclined")
    pid = body["error"]["payment_intent"]["id"]
    st, _, body = mock_gateway.request("POST", "/v1/refunds", {"payment_intent": pid})
    assert st == 400
    st, _, body = mock_gateway.request("POST", "/v1/refunds", {"payment_intent": "pi_nope"})
    assert st == 400 and body["error"]["code"] == "resource_missing"
    assert mock_gateway.ledger()["refunds"] == []


# ---- webhooks -------------------------------------------------------------

class _Receiver(http.server.BaseHTTPRequestHandler):
    received = []

    def do_POST(self):  # noqa: N802
        n = int(self.headers["Content-Length"])
        _Receiver.received.append((dict(self.headers), self.rfile.read(n)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def receiver():
    _Receiver.received = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv, _Receiver.received
    srv.shutdown()
    srv.server_close()


def verify(sig_header, payload, secret, tolerance_s=300):
    parts = [p.split("=", 1) for p in sig_header.split(",")]
    t = int(next(v for k, v in parts if k == "t"))
    want = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    ok = any(k == "v1" and hmac.compare_digest(v, want) for k, v in parts)
    return ok and abs(time.time() - t) <= tolerance_s


def test_webhooks_signed_and_ledger_agrees(receiver):
    srv, got = receiver
    secret = "whsec_test_secret"
    gw = MockGateway()
    gw.start(webhook_url=f"http://127.0.0.1:{srv.server_address[1]}/webhooks/stripe",
             webhook_secret=secret)
    try:
        _, _, pi = gw.charge(amount=5000)
        r = gw.webhook("charge.refunded", payment_intent=pi["id"], amount=1200)
        assert r["delivery_status"] == 200 and r["delivered"] is True
        assert len(got) == 1
        headers, payload = got[0]
        assert verify(headers["Stripe-Signature"], payload, secret)
        ev = json.loads(payload)
        assert ev["id"].startswith("evt_") and ev["object"] == "event"
        assert ev["type"] == "charge.refunded"
        ch = ev["data"]["object"]
        assert ch["id"] == pi["latest_charge"] and ch["payment_intent"] == pi["id"]
        assert ch["amount"] == 5000 and ch["amount_refunded"] == 1200
        assert ch["refunds"]["data"][0]["amount"] == 1200
        [rf] = gw.ledger()["refunds"]
        assert rf["amount"] == 1200 and rf["source"] == "webhook"
        assert rf["id"] == ch["refunds"]["data"][0]["id"]

        # a dispute, with a fixed event id delivered twice (replays)
        for _ in range(2):
            r = gw.webhook("charge.dispute.created", payment_intent=pi["id"], id="evt_fixed")
            assert r["delivery_status"] == 200
        d1, d2 = json.loads(got[1][1]), json.loads(got[2][1])
        assert d1["id"] == d2["id"] == "evt_fixed"
        dp = d1["data"]["object"]
        assert dp["id"].startswith("dp_") and dp["charge"] == pi["latest_charge"]
        assert dp["payment_intent"] == pi["id"] and dp["amount"] == 5000
        assert dp["status"] == "needs_response" and dp["reason"] == "fraudulent"
        assert verify(got[1][0]["Stripe-Signature"], got[1][1], secret)

        # forged: wrong secret, old timestamp
        gw.webhook("charge.dispute.created", payment_intent=pi["id"], secret="whsec_wrong")
        assert not verify(got[3][0]["Stripe-Signature"], got[3][1], secret)
        old = int(time.time()) - 3600
        gw.webhook("charge.refunded", payment_intent="pi_unknown", amount=100,
                   timestamp=old)
        assert got[4][0]["Stripe-Signature"].startswith(f"t={old},v1=")
        assert not verify(got[4][0]["Stripe-Signature"], got[4][1], secret)
        assert verify(got[4][0]["Stripe-Signature"], got[4][1], secret, tolerance_s=10**9)
        # refunding more than remains is refused
        with pytest.raises(RuntimeError, match="exceeds"):
            gw.webhook("charge.refunded", payment_intent=pi["id"], amount=4000)
    finally:
        gw.close()


# ---- persistence ----------------------------------------------------------

@pytest.mark.parametrize("graceful", [True, False])
def test_state_survives_restart(mock_gateway, graceful):
    _, _, pi = mock_gateway.charge(idempotency_key="persist", metadata={"pledged_attempt": "x"})
    mock_gateway.request("POST", "/v1/refunds", {"payment_intent": pi["id"], "amount": "100"})
    port = mock_gateway.port
    mock_gateway.restart(graceful=graceful)
    assert mock_gateway.port == port
    st, _, got = mock_gateway.request("GET", f"{PI}/{pi['id']}")
    assert st == 200 and got == pi
    st, h, again = mock_gateway.charge(idempotency_key="persist",
                                       metadata={"pledged_attempt": "x"})
    assert h["idempotent-replayed"] == "true" and again["id"] == pi["id"]
    led = mock_gateway.ledger()
    assert len(led["charges"]) == 1 and led["refunds"][0]["amount"] == 100
    # new ids do not collide with those issued before the restart
    _, _, new = mock_gateway.charge()
    assert new["id"] != pi["id"]


# ---- connections ----------------------------------------------------------

def test_keep_alive(mock_gateway):
    conn = http.client.HTTPConnection("127.0.0.1", mock_gateway.port, timeout=5)
    before = mock_gateway.counters()["connections_total"]
    for _ in range(5):
        conn.request("GET", PI, headers={"Authorization": "Bearer sk_test_mock"})
        r = conn.getresponse()
        r.read()
        assert r.status == 200
    conn.close()
    # 5 requests, one connection (plus the one counters() call)
    assert mock_gateway.counters()["connections_total"] - before == 2


def test_counts_concurrent_connections_and_in_flight(mock_gateway):
    n = 24
    mock_gateway.config(latency_ms=600)
    conns = [http.client.HTTPConnection("127.0.0.1", mock_gateway.port, timeout=10)
             for _ in range(n)]
    barrier = threading.Barrier(n)

    def one(c):
        barrier.wait()
        c.request("GET", PI, headers={"Authorization": "Bearer sk_test_mock"})
        r = c.getresponse()
        r.read()
        return r.status

    results = []
    threads = [threading.Thread(target=lambda c=c: results.append(one(c))) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * n
    ctr = mock_gateway.counters()
    assert ctr["in_flight_max"] == n
    assert ctr["api_connections_max"] == n and ctr["api_connections_current"] == n
    for c in conns:
        c.close()
    deadline = time.monotonic() + 5
    while mock_gateway.counters()["api_connections_current"] and time.monotonic() < deadline:
        time.sleep(0.05)
    ctr = mock_gateway.counters()
    assert ctr["api_connections_current"] == 0 and ctr["in_flight_current"] == 0
