/*
 * gateway_stripe — Stripe's dialect: request builders and reply classifier.
 *
 * Classification (DESIGN.md §5) is the tables below plus this precedence,
 * first match wins:
 *
 *  1. Transport. No reply and nothing sent (DNS, connect, TLS handshake,
 *     still queued) → retry_now: the request surely did not execute.
 *     No (complete) reply after bytes may have left → unknown.
 *  2. HTTP status table: 401/403 → halt (key wrong or lacking permission:
 *     every request will fail the same way; burn no donor's attempt).
 *     429 → retry_now (Stripe's limiter runs before idempotency, nothing was
 *     saved). 409 → retry_now (idempotency_key_in_use: the first request with
 *     this key is still running; the same key may be resent).
 *  3. 5xx: replayed (Idempotent-Replayed: true) → unknown — the saved 5xx
 *     will come back for this key for 24 h, resending cannot help; else
 *     Stripe-Should-Retry: true → retry_now; else unknown.
 *  4. Any other non-2xx with Stripe-Should-Retry: true → retry_now
 *     (official clients do the same; false is never retried).
 *  5. 2xx: the body must parse as the expected object, else unknown
 *     ("unparseable_reply": money may have moved, reconciliation looks it
 *     up). PaymentIntent status table below; search results: none → not_found.
 *  6. 4xx with an error object, in this order:
 *     - type idempotency_error → unknown, error_type kept loud: the same
 *       key was sent with other parameters, which is our bug; the first
 *       request may have charged, so the reconciler must look it up.
 *     - authentication_required (decline or code), requires_action →
 *       action_required: an advice code cannot make a 3-D Secure challenge
 *       go away, and action_required already stops off-session retries.
 *     - advice_code table (the strongest signal when present).
 *     - decline_code table, then error code table.
 *     - error type default: card_error → declined_soft; invalid_request_error
 *       → declined_hard (the request can never succeed as is: e.g. 400
 *       resource_missing payment_method — the method is unusable); api_error
 *       → unknown; authentication/permission errors → halt; rate limit →
 *       retry_now; anything else → unknown.
 *     Lookups: 404 → not_found; other 4xx → unknown (we learnt nothing).
 *     4xx without a parseable error object → unknown, except a bare 402,
 *     which by itself says "valid request, payment failed" → declined_soft.
 */
#include "gateway_stripe.h"

#include <ctype.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* ---- the tables -------------------------------------------------------- */

struct rule {
    const char *code;
    enum pl_outcome outcome;
};

#define SOFT   PL_OUT_DECLINED_SOFT
#define HARD   PL_OUT_DECLINED_HARD
#define ACTION PL_OUT_ACTION_REQUIRED

/* advice_code: Stripe's normalised advice, stronger than any decline code */
static const struct rule advice_rules[] = {
    {"do_not_try_again", HARD},
    {"try_again_later", SOFT},
    /* the card data on file is wrong: only the donor can fix it */
    {"confirm_card_data", HARD},
};

/* decline_code: every code of shared/reference/gateway-stripe.md, plus a few
 * issuers send that Stripe documents. Hard = the card will not work again
 * without the donor (lost, stolen, closed, wrong data, not allowed); soft =
 * might work on the dunning schedule (funds, limits, issuer hiccups). */
static const struct rule decline_rules[] = {
    {"authentication_required", ACTION}, /* off-session: needs the donor */
    {"approve_with_id", SOFT},           /* can't be authorised now; retry */
    {"call_issuer", SOFT},               /* unknown reason; a later retry may pass */
    {"card_not_supported", HARD},
    {"card_velocity_exceeded", SOFT}, /* balance/credit limit: later */
    {"currency_not_supported", HARD},
    {"do_not_honor", SOFT},
    {"do_not_try_again", HARD},
    {"duplicate_transaction", SOFT}, /* identical recent charge; not ours (key) */
    {"expired_card", HARD},
    {"fraudulent", HARD},
    {"generic_decline", SOFT},
    {"highest_risk_level", HARD}, /* Stripe's do-not-retry list */
    {"incorrect_cvc", HARD},
    {"incorrect_number", HARD},
    {"incorrect_pin", HARD},
    {"incorrect_zip", HARD},
    {"insufficient_funds", SOFT},
    {"invalid_account", HARD},
    {"invalid_amount", HARD}, /* the issuer refuses this amount: needs a human */
    {"invalid_cvc", HARD},
    {"invalid_expiry_month", HARD},
    {"invalid_expiry_year", HARD},
    {"invalid_number", HARD},
    {"invalid_pin", HARD},
    {"issuer_not_available", SOFT},
    {"lost_card", HARD},
    {"merchant_blacklist", HARD},
    {"new_account_information_available", HARD},
    {"no_action_taken", SOFT},
    {"not_permitted", HARD},
    {"offline_pin_required", HARD}, /* card-present only: never off-session */
    {"online_or_offline_pin_required", HARD},
    {"pickup_card", HARD},
    {"pin_try_exceeded", HARD},
    {"processing_error", SOFT},
    {"reenter_transaction", SOFT},
    {"restricted_card", HARD},
    {"revocation_of_all_authorizations", HARD},
    {"revocation_of_authorization", HARD},
    {"security_violation", HARD},
    {"service_not_allowed", HARD},
    {"stolen_card", HARD},
    {"stop_payment_order", HARD},
    {"testmode_decline", HARD}, /* a live card in test mode */
    {"transaction_not_allowed", HARD},
    {"try_again_later", SOFT},
    {"withdrawal_count_limit_exceeded", SOFT},
};

/* error.code (when no decline/advice code decided) */
static const struct rule error_code_rules[] = {
    {"authentication_required", ACTION},
    {"payment_intent_authentication_failure", ACTION},
    {"card_declined", SOFT}, /* bare: no decline_code said otherwise */
    {"card_decline_rate_limit_exceeded", SOFT},
    {"processing_error", SOFT},
    {"expired_card", HARD},
    {"incorrect_cvc", HARD},
    {"incorrect_number", HARD},
    {"incorrect_zip", HARD},
    {"invalid_cvc", HARD},
    {"invalid_expiry_month", HARD},
    {"invalid_expiry_year", HARD},
    {"invalid_number", HARD},
    /* the payment method or customer we hold is unusable */
    {"resource_missing", HARD},
    {"payment_method_unactivated", HARD},
    {"payment_method_unexpected_state", HARD},
    {"payment_method_provider_decline", HARD},
    {"payment_method_not_available", HARD},
    {"payment_method_invalid_parameter", HARD},
    /* this pledge's amount/currency cannot be charged: a human must look */
    {"amount_too_small", HARD},
    {"amount_too_large", HARD},
    {"invalid_charge_amount", HARD},
    /* refunds that can never succeed as asked */
    {"charge_already_refunded", HARD},
    {"charge_disputed", HARD},
    /* someone else's state change: look it up rather than guess */
    {"payment_intent_unexpected_state", PL_OUT_UNKNOWN},
    {"rate_limit", PL_OUT_RETRY_NOW},
    {"lock_timeout", PL_OUT_RETRY_NOW},
    {"idempotency_key_in_use", PL_OUT_RETRY_NOW},
    /* our request shape or account is wrong: every charge would fail alike */
    {"parameter_unknown", PL_OUT_HALT},
    {"api_key_expired", PL_OUT_HALT},
    {"platform_api_key_expired", PL_OUT_HALT},
    {"secret_key_required", PL_OUT_HALT},
    {"testmode_charges_only", PL_OUT_HALT},
    {"account_invalid", PL_OUT_HALT},
};

/* error.type defaults */
static const struct rule error_type_rules[] = {
    {"card_error", SOFT},
    {"invalid_request_error", HARD},
    {"api_error", PL_OUT_UNKNOWN},
    {"idempotency_error", PL_OUT_UNKNOWN},
    {"authentication_error", PL_OUT_HALT},
    {"permission_error", PL_OUT_HALT},
    {"rate_limit_error", PL_OUT_RETRY_NOW},
};

/* PaymentIntent.status */
static const struct rule pi_status_rules[] = {
    {"succeeded", PL_OUT_SUCCEEDED},
    {"processing", PL_OUT_UNKNOWN}, /* not final: look it up later */
    {"requires_action", ACTION},
    /* requires_payment_method: decided by last_payment_error (see classify_pi) */
    {"requires_payment_method", SOFT},
    /* not confirmed or cancelled: no money moved; dunning may try again */
    {"requires_confirmation", SOFT},
    {"canceled", SOFT},
    /* authorised but not captured — we never ask for manual capture, so a
     * human must look; money is held, neither succeeded nor failed */
    {"requires_capture", PL_OUT_UNKNOWN},
};

/* Refund.status */
static const struct rule refund_status_rules[] = {
    {"succeeded", PL_OUT_SUCCEEDED},
    {"pending", PL_OUT_SUCCEEDED}, /* accepted; object_status says "pending" */
    {"requires_action", ACTION},
    {"failed", HARD},
    {"canceled", HARD},
};

#undef SOFT
#undef HARD
#undef ACTION

static bool lookup(const struct rule *t, size_t n, const char *code, enum pl_outcome *out)
{
    if (!code || !*code)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(t[i].code, code) == 0) {
            *out = t[i].outcome;
            return true;
        }
    }
    return false;
}

#define LOOKUP(table, code, out) lookup(table, PL_ARRAY_LEN(table), code, out)

bool pl_stripe_decline_class(const char *decline_code, enum pl_outcome *out)
{
    return LOOKUP(decline_rules, decline_code, out);
}

bool pl_stripe_advice_class(const char *advice_code, enum pl_outcome *out)
{
    return LOOKUP(advice_rules, advice_code, out);
}

bool pl_stripe_error_code_class(const char *code, enum pl_outcome *out)
{
    return LOOKUP(error_code_rules, code, out);
}

static bool is(const char *a, const char *b)
{
    return a && strcmp(a, b) == 0;
}

enum pl_outcome pl_stripe_decline_outcome(const char *type, const char *code,
                                          const char *decline_code, const char *advice_code)
{
    enum pl_outcome o;
    if (is(type, "idempotency_error"))
        return PL_OUT_UNKNOWN;
    if (is(decline_code, "authentication_required") || is(code, "authentication_required") ||
        is(code, "payment_intent_authentication_failure"))
        return PL_OUT_ACTION_REQUIRED;
    if (LOOKUP(advice_rules, advice_code, &o))
        return o;
    if (LOOKUP(decline_rules, decline_code, &o))
        return o;
    if (LOOKUP(error_code_rules, code, &o))
        return o;
    if (LOOKUP(error_type_rules, type, &o))
        return o;
    /* a decline we do not know yet: Stripe says it declined, so no money
     * moved; soft lets dunning try again within its bounded schedule */
    if ((decline_code && *decline_code) || is(code, "card_declined"))
        return PL_OUT_DECLINED_SOFT;
    return PL_OUT_UNKNOWN;
}

/* ---- reply parsing ------------------------------------------------------ */

/* Nesting deeper than this is not a Stripe reply; refusing it before the
 * parser runs bounds its recursion whatever the jansson version. */
#define MAX_JSON_DEPTH 32

static bool depth_ok(const char *s, size_t n)
{
    int depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            if (++depth > MAX_JSON_DEPTH)
                return false;
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    return true;
}

static const char *jstr(json_t *obj, const char *key)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static bool jint(json_t *obj, const char *key, int64_t *out)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (!json_is_integer(v))
        return false;
    *out = (int64_t)json_integer_value(v);
    return true;
}

/* Copy an identifier only if it fits whole and is printable: a cut or
 * mangled reference would point at someone else's payment. */
static void set_id(char *dst, size_t cap, const char *s)
{
    if (!s)
        return;
    size_t n = strlen(s);
    if (n == 0 || n >= cap)
        return;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return;
    memcpy(dst, s, n + 1);
}

/* Free text: cut to fit, control characters replaced, anything that looks
 * like an API key masked (Stripe masks them already; belt and braces). */
static void set_text(char *dst, size_t cap, const char *s)
{
    if (!s)
        return;
    size_t o = 0, i = 0;
    while (s[i] && o + 1 < cap) {
        if ((strncmp(s + i, "sk_", 3) == 0 || strncmp(s + i, "rk_", 3) == 0) &&
            (i == 0 || !isalnum((unsigned char)s[i - 1]))) {
            const char *mask = "[REDACTED]";
            size_t m = strlen(mask);
            if (o + m + 1 > cap)
                break;
            memcpy(dst + o, mask, m);
            o += m;
            i += 3;
            while (isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '*')
                i++;
            continue;
        }
        unsigned char c = (unsigned char)s[i];
        dst[o++] = c < 0x20 || c == 0x7f ? ' ' : (char)c;
        i++;
    }
    if (s[i]) {
        /* cut: never end inside a UTF-8 sequence */
        while (o > 0 && ((unsigned char)dst[o - 1] & 0xC0) == 0x80)
            o--;
        if (o > 0 && ((unsigned char)dst[o - 1] & 0xC0) == 0xC0)
            o--;
    }
    dst[o] = 0;
}

static void set_currency(char *dst, const char *s)
{
    if (!s || strlen(s) != 3)
        return;
    for (int i = 0; i < 3; i++) {
        if (!isalpha((unsigned char)s[i]))
            return;
        dst[i] = (char)toupper((unsigned char)s[i]);
    }
    dst[3] = 0;
}

static void set_code(char *dst, const char *s)
{
    set_id(dst, PL_GW_CODE_MAX, s);
}

static void fail(struct pl_gateway_result *out, enum pl_outcome o, const char *type,
                 const char *msg)
{
    out->outcome = o;
    if (type && !out->error_type[0])
        set_code(out->error_type, type);
    if (msg && !out->message[0])
        set_text(out->message, sizeof out->message, msg);
}

static void read_error(json_t *err, struct pl_gateway_result *out)
{
    set_code(out->error_type, jstr(err, "type"));
    set_code(out->code, jstr(err, "code"));
    set_code(out->decline_code, jstr(err, "decline_code"));
    set_code(out->advice_code, jstr(err, "advice_code"));
    set_text(out->message, sizeof out->message, jstr(err, "message"));
}

/* Fill the payment fields of a PaymentIntent. Returns false if it is not one. */
static bool read_pi(json_t *pi, struct pl_gateway_result *out)
{
    const char *id = jstr(pi, "id");
    const char *status = jstr(pi, "status");
    if (!id || !status)
        return false;
    set_id(out->ref, sizeof out->ref, id);
    set_code(out->object_status, status);
    if (!out->ref[0] || !out->object_status[0])
        return false;
    int64_t v;
    if (jint(pi, "amount", &v))
        out->amount_minor = v;
    if (jint(pi, "amount_received", &v))
        out->amount_received_minor = v;
    set_currency(out->currency, jstr(pi, "currency"));
    json_t *lc = json_object_get(pi, "latest_charge");
    if (json_is_string(lc)) {
        set_id(out->charge_ref, sizeof out->charge_ref, json_string_value(lc));
    } else if (json_is_object(lc)) { /* expanded */
        set_id(out->charge_ref, sizeof out->charge_ref, jstr(lc, "id"));
        json_t *bt = json_object_get(lc, "balance_transaction");
        if (jint(bt, "fee", &v)) {
            out->has_fee = true;
            out->fee_minor = v;
        }
    }
    json_t *live = json_object_get(pi, "livemode");
    out->livemode = json_is_true(live);
    set_id(out->attempt_key, sizeof out->attempt_key,
           jstr(json_object_get(pi, "metadata"), PL_GATEWAY_META_ATTEMPT));
    return true;
}

/* The class of a PaymentIntent we hold (200 reply, lookup, or the one an
 * error carries). */
static void classify_pi(json_t *pi, struct pl_gateway_result *out)
{
    enum pl_outcome o;
    const char *status = out->object_status;
    json_t *lpe = json_object_get(pi, "last_payment_error");
    if (json_is_object(lpe) && strcmp(status, "succeeded") != 0) {
        if (!out->error_type[0])
            read_error(lpe, out);
    }
    if (strcmp(status, "requires_payment_method") == 0 && json_is_object(lpe)) {
        out->outcome =
            pl_stripe_decline_outcome(jstr(lpe, "type"), jstr(lpe, "code"),
                                      jstr(lpe, "decline_code"), jstr(lpe, "advice_code"));
        if (out->outcome == PL_OUT_UNKNOWN)
            out->outcome = PL_OUT_DECLINED_SOFT; /* it did fail; no money moved */
        return;
    }
    if (LOOKUP(pi_status_rules, status, &o)) {
        out->outcome = o;
        if (strcmp(status, "requires_confirmation") == 0 || strcmp(status, "canceled") == 0 ||
            strcmp(status, "requires_capture") == 0)
            fail(out, o, "unexpected_status", "payment in an unexpected state");
        return;
    }
    fail(out, PL_OUT_UNKNOWN, "unexpected_status", "payment status not understood");
}

static bool read_refund(json_t *re, struct pl_gateway_result *out)
{
    const char *id = jstr(re, "id");
    const char *status = jstr(re, "status");
    if (!id || !status)
        return false;
    set_id(out->ref, sizeof out->ref, id);
    set_code(out->object_status, status);
    if (!out->ref[0] || !out->object_status[0])
        return false;
    int64_t v;
    if (jint(re, "amount", &v))
        out->amount_minor = v;
    set_currency(out->currency, jstr(re, "currency"));
    set_id(out->charge_ref, sizeof out->charge_ref, jstr(re, "charge"));
    set_code(out->code, jstr(re, "failure_reason"));
    enum pl_outcome o;
    if (LOOKUP(refund_status_rules, status, &o))
        out->outcome = o;
    else
        fail(out, PL_OUT_UNKNOWN, "unexpected_status", "refund status not understood");
    return true;
}

static void classify_2xx(enum pl_gateway_op_kind op, json_t *root, struct pl_gateway_result *out)
{
    switch (op) {
    case PL_GW_CHARGE:
    case PL_GW_LOOKUP_REF:
        if (!read_pi(root, out)) {
            fail(out, PL_OUT_UNKNOWN, "unparseable_reply", "reply is not a payment");
            return;
        }
        classify_pi(root, out);
        return;
    case PL_GW_LOOKUP_KEY: {
        json_t *data = json_object_get(root, "data");
        if (!json_is_array(data)) {
            fail(out, PL_OUT_UNKNOWN, "unparseable_reply", "reply is not a search result");
            return;
        }
        /* Only exact metadata matches count. Several (should not happen:
         * one key, one payment): any success wins, as money moved. */
        json_t *best = NULL;
        size_t i;
        json_t *pi;
        json_array_foreach(data, i, pi)
        {
            const char *k = jstr(json_object_get(pi, "metadata"), PL_GATEWAY_META_ATTEMPT);
            if (!k || !jstr(pi, "id") || !jstr(pi, "status"))
                continue;
            if (out->attempt_key[0] && strcmp(k, out->attempt_key) != 0)
                continue;
            out->matches++;
            if (!best ||
                (is(jstr(pi, "status"), "succeeded") && !is(jstr(best, "status"), "succeeded")))
                best = pi;
        }
        if (!best) {
            out->outcome = PL_OUT_NOT_FOUND;
            return;
        }
        char want[PL_GW_REF_MAX];
        memcpy(want, out->attempt_key, sizeof want);
        if (!read_pi(best, out)) {
            fail(out, PL_OUT_UNKNOWN, "unparseable_reply", "search hit is not a payment");
            return;
        }
        if (want[0])
            memcpy(out->attempt_key, want, sizeof want);
        classify_pi(best, out);
        return;
    }
    case PL_GW_REFUND:
        if (!read_refund(root, out))
            fail(out, PL_OUT_UNKNOWN, "unparseable_reply", "reply is not a refund");
        return;
    }
    fail(out, PL_OUT_UNKNOWN, "internal", "unknown operation");
}

static void classify_4xx(enum pl_gateway_op_kind op, long status, json_t *root,
                         struct pl_gateway_result *out)
{
    json_t *err = json_object_get(root, "error");
    if (op == PL_GW_LOOKUP_KEY || op == PL_GW_LOOKUP_REF) {
        if (json_is_object(err))
            read_error(err, out);
        if (status == 404) {
            out->outcome = PL_OUT_NOT_FOUND;
            return;
        }
        enum pl_outcome o;
        if (LOOKUP(error_code_rules, out->code, &o) &&
            (o == PL_OUT_HALT || o == PL_OUT_RETRY_NOW)) {
            out->outcome = o;
            return;
        }
        fail(out, PL_OUT_UNKNOWN, "lookup_failed", "lookup failed");
        return;
    }
    if (!json_is_object(err)) {
        if (status == 402)
            fail(out, PL_OUT_DECLINED_SOFT, "unparseable_reply", "payment failed (no details)");
        else
            fail(out, PL_OUT_UNKNOWN, "unparseable_reply", "error reply not understood");
        return;
    }
    read_error(err, out);
    json_t *pi = json_object_get(err, "payment_intent");
    if (json_is_object(pi))
        read_pi(pi, out);
    out->outcome =
        pl_stripe_decline_outcome(out->error_type, out->code, out->decline_code, out->advice_code);
    if (out->outcome == PL_OUT_DECLINED_SOFT || out->outcome == PL_OUT_DECLINED_HARD) {
        if (is(out->object_status, "requires_action"))
            out->outcome = PL_OUT_ACTION_REQUIRED;
    }
    if (out->outcome == PL_OUT_UNKNOWN && status == 402)
        out->outcome = PL_OUT_DECLINED_SOFT;
    if (is(out->error_type, "idempotency_error") && !out->message[0])
        set_text(out->message, sizeof out->message,
                 "idempotency key reused with different parameters");
}

void pl_stripe_classify(enum pl_gateway_op_kind op, const struct pl_http_response *resp,
                        struct pl_gateway_result *out)
{
    out->op = op;
    out->transport = resp->transport;
    out->http_status = resp->status;
    out->replayed = resp->replayed;
    out->retry_after_ms = resp->retry_after_ms;
    set_id(out->request_id, sizeof out->request_id, resp->request_id);

    /* 1. transport */
    if (resp->transport == PL_HTTP_NOT_SENT) {
        fail(out, PL_OUT_RETRY_NOW, resp->err == PL_ECANCELED ? "canceled" : "connect_failed",
             resp->error && *resp->error ? resp->error : "request not sent");
        return;
    }
    if (resp->transport != PL_HTTP_REPLIED) {
        fail(out, PL_OUT_UNKNOWN,
             resp->err == PL_ECANCELED  ? "canceled"
             : resp->err == PL_ETIMEOUT ? "timeout"
                                        : "transport",
             resp->error && *resp->error ? resp->error : "no reply");
        return;
    }

    long status = resp->status;
    json_t *root = NULL;
    if (!resp->body_truncated && resp->body && resp->body_len > 0 &&
        depth_ok(resp->body, resp->body_len)) {
        json_error_t jerr;
        root = json_loadb(resp->body, resp->body_len, JSON_REJECT_DUPLICATES, &jerr);
        if (root && !json_is_object(root)) {
            json_decref(root);
            root = NULL;
        }
    }
    json_t *err = json_object_get(root, "error"); /* NULL-safe */
    if (json_is_object(err) && (status < 200 || status >= 300))
        read_error(err, out);

    /* 2. status table */
    if (status == 401 || status == 403) {
        fail(out, PL_OUT_HALT, status == 401 ? "authentication_error" : "permission_error",
             "the gateway refused our API key");
    } else if (status == 429) {
        fail(out, PL_OUT_RETRY_NOW, "rate_limit_error", "rate limited");
    } else if (status == 409) {
        fail(out, PL_OUT_RETRY_NOW, "idempotency_error", "idempotency key in use");
    } else if (status >= 500) {
        /* 3. */
        if (resp->replayed)
            fail(out, PL_OUT_UNKNOWN, "api_error", "gateway replayed a saved server error");
        else if (resp->should_retry == 1)
            fail(out, PL_OUT_RETRY_NOW, "api_error", "gateway error; it says retry");
        else
            fail(out, PL_OUT_UNKNOWN, "api_error", "gateway server error");
    } else if ((status < 200 || status >= 300) && resp->should_retry == 1) {
        /* 4. */
        fail(out, PL_OUT_RETRY_NOW, "should_retry", "gateway says retry");
    } else if (status >= 200 && status < 300) {
        /* 5. */
        if (!root) {
            fail(out, PL_OUT_UNKNOWN, "unparseable_reply",
                 resp->body_truncated ? "reply too large" : "reply is not a JSON object");
        } else {
            classify_2xx(op, root, out);
        }
    } else if (status >= 400 && status < 500) {
        /* 6. */
        classify_4xx(op, status, root, out);
    } else {
        fail(out, PL_OUT_UNKNOWN, "unexpected_status", "unexpected HTTP status");
    }
    json_decref(root);
}

/* ---- request builders ---------------------------------------------------- */

struct stripe {
    char *base_url; /* no trailing slash */
    char *auth;     /* "Bearer sk_…" */
    char *api_version;
};

static bool header_value_ok(const char *s, size_t max)
{
    size_t n = 0;
    for (; s[n]; n++)
        if ((unsigned char)s[n] <= 0x20 || (unsigned char)s[n] >= 0x7f)
            return false;
    return n > 0 && n <= max;
}

static void wipe_free(char *s)
{
    if (s) {
        memset(s, 0, strlen(s));
        free(s);
    }
}

static void stripe_release(void *state)
{
    struct stripe *st = state;
    if (!st)
        return;
    wipe_free(st->auth);
    free(st->base_url);
    free(st->api_version);
    free(st);
}

static int stripe_init(const struct pl_gateway_opts *o, void **state)
{
    if (!o->api_key || !header_value_ok(o->api_key, 255))
        return PL_EINVAL;
    if (o->api_version && !header_value_ok(o->api_version, 64))
        return PL_EINVAL;
    const char *base = o->base_url ? o->base_url : PL_STRIPE_BASE_URL;
    if (!pl_http_url_allowed(base) || strpbrk(base, "?#"))
        return PL_EINVAL;
    struct stripe *st = pl_xcalloc(1, sizeof *st);
    st->base_url = pl_xstrdup(base);
    size_t n = strlen(st->base_url);
    while (n && st->base_url[n - 1] == '/')
        st->base_url[--n] = 0;
    st->auth = pl_xasprintf("Bearer %s", o->api_key);
    st->api_version = o->api_version ? pl_xstrdup(o->api_version) : NULL;
    *state = st;
    return 0;
}

static void common_headers(struct stripe *st, struct pl_gateway_wire *w, const char *idem_key)
{
    pl_gateway_wire_header(w, "Authorization", st->auth);
    pl_gateway_wire_header(w, "Accept", "application/json");
    if (st->api_version)
        pl_gateway_wire_header(w, "Stripe-Version", st->api_version);
    if (idem_key) {
        pl_gateway_wire_header(w, "Content-Type", "application/x-www-form-urlencoded");
        pl_gateway_wire_header(w, "Idempotency-Key", idem_key);
    }
}

/* Stripe: keys ≤ 40 characters, values ≤ 500; brackets would change the
 * parameter's structure. */
static bool meta_ok(const struct pl_gateway_kv *kv, size_t n)
{
    if (n > 50 || (n && !kv))
        return false;
    for (size_t i = 0; i < n; i++) {
        const char *k = kv[i].key, *v = kv[i].value;
        if (!k || !v || !*k || strlen(k) > 40 || strlen(v) > 500 || strpbrk(k, "[]"))
            return false;
        for (const char *p = k; *p; p++)
            if ((unsigned char)*p < 0x20)
                return false;
        for (size_t j = 0; j < i; j++)
            if (strcmp(kv[j].key, k) == 0)
                return false;
    }
    return true;
}

static int kv_cmp(const void *a, const void *b)
{
    const struct pl_gateway_kv *x = *(const struct pl_gateway_kv *const *)a;
    const struct pl_gateway_kv *y = *(const struct pl_gateway_kv *const *)b;
    return strcmp(x->key, y->key);
}

/* metadata sorted by key: the same set always gives the same bytes */
static void add_metadata(char **buf, size_t *len, const struct pl_gateway_kv *kv, size_t n)
{
    if (!n)
        return;
    const struct pl_gateway_kv **sorted = pl_xmalloc(n * sizeof *sorted);
    for (size_t i = 0; i < n; i++)
        sorted[i] = &kv[i];
    qsort(sorted, n, sizeof *sorted, kv_cmp);
    for (size_t i = 0; i < n; i++) {
        char *key = pl_xasprintf("metadata[%s]", sorted[i]->key);
        pl_form_add(buf, len, key, sorted[i]->value);
        free(key);
    }
    free(sorted);
}

static bool text_ok(const char *s, size_t max)
{
    if (!s)
        return true;
    size_t n = strlen(s);
    if (n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20)
            return false;
    return true;
}

static bool ref_ok(const char *s)
{
    if (!s || !*s || strlen(s) >= PL_GW_REF_MAX)
        return false;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_')
            return false;
    return true;
}

static int stripe_charge(void *state, const struct pl_gateway_charge *c,
                         struct pl_gateway_wire *out)
{
    struct stripe *st = state;
    if (c->amount_minor <= 0 || !c->currency || strlen(c->currency) != 3 ||
        !ref_ok(c->payment_method) || (c->customer_ref && !ref_ok(c->customer_ref)) ||
        !pl_gateway_key_valid(c->idempotency_key) || !meta_ok(c->metadata, c->n_metadata) ||
        !text_ok(c->description, 1000) || !text_ok(c->statement_descriptor_suffix, 22))
        return PL_EINVAL;
    char cur[4];
    for (int i = 0; i < 3; i++) {
        if (!isalpha((unsigned char)c->currency[i]))
            return PL_EINVAL;
        cur[i] = (char)tolower((unsigned char)c->currency[i]);
    }
    cur[3] = 0;

    char amount[24];
    snprintf(amount, sizeof amount, "%lld", (long long)c->amount_minor);
    char *body = NULL;
    size_t len = 0;
    /* fixed order: the bytes must not change between resends of one key */
    pl_form_add(&body, &len, "amount", amount);
    pl_form_add(&body, &len, "currency", cur);
    if (c->customer_ref)
        pl_form_add(&body, &len, "customer", c->customer_ref);
    pl_form_add(&body, &len, "payment_method", c->payment_method);
    pl_form_add(&body, &len, "confirm", "true");
    pl_form_add(&body, &len, "off_session", "true");
    pl_form_add(&body, &len, "payment_method_types[]", "card");
    if (c->description && *c->description)
        pl_form_add(&body, &len, "description", c->description);
    if (c->statement_descriptor_suffix && *c->statement_descriptor_suffix)
        pl_form_add(&body, &len, "statement_descriptor_suffix", c->statement_descriptor_suffix);
    add_metadata(&body, &len, c->metadata, c->n_metadata);

    memset(out, 0, sizeof *out);
    pl_strlcpy(out->method, "POST", sizeof(out->method));
    out->url = pl_xasprintf("%s/v1/payment_intents", st->base_url);
    out->body = body;
    out->body_len = len;
    common_headers(st, out, c->idempotency_key);
    return 0;
}

static int stripe_lookup_by_key(void *state, const char *key, struct pl_gateway_wire *out)
{
    struct stripe *st = state;
    /* the key's alphabet has no quote or backslash: no query injection */
    if (!pl_gateway_key_valid(key))
        return PL_EINVAL;
    char *query = pl_xasprintf("metadata['%s']:'%s'", PL_GATEWAY_META_ATTEMPT, key);
    char *q = NULL;
    size_t qlen = 0;
    pl_form_escape(&q, &qlen, query);
    free(query);
    memset(out, 0, sizeof *out);
    pl_strlcpy(out->method, "GET", sizeof(out->method));
    out->url = pl_xasprintf("%s/v1/payment_intents/search?query=%s", st->base_url, q);
    free(q);
    common_headers(st, out, NULL);
    return 0;
}

static int stripe_lookup_by_ref(void *state, const char *ref, struct pl_gateway_wire *out)
{
    struct stripe *st = state;
    if (!ref_ok(ref))
        return PL_EINVAL;
    memset(out, 0, sizeof *out);
    pl_strlcpy(out->method, "GET", sizeof(out->method));
    out->url = pl_xasprintf("%s/v1/payment_intents/%s", st->base_url, ref);
    common_headers(st, out, NULL);
    return 0;
}

static int stripe_refund(void *state, const struct pl_gateway_refund *r,
                         struct pl_gateway_wire *out)
{
    struct stripe *st = state;
    if (!ref_ok(r->payment_ref) || r->amount_minor < 0 ||
        !pl_gateway_key_valid(r->idempotency_key) || !meta_ok(r->metadata, r->n_metadata))
        return PL_EINVAL;
    if (r->reason && !is(r->reason, "requested_by_customer") && !is(r->reason, "duplicate") &&
        !is(r->reason, "fraudulent"))
        return PL_EINVAL;
    char *body = NULL;
    size_t len = 0;
    pl_form_add(&body, &len, strncmp(r->payment_ref, "ch_", 3) == 0 ? "charge" : "payment_intent",
                r->payment_ref);
    if (r->amount_minor > 0) {
        char amount[24];
        snprintf(amount, sizeof amount, "%lld", (long long)r->amount_minor);
        pl_form_add(&body, &len, "amount", amount);
    }
    if (r->reason)
        pl_form_add(&body, &len, "reason", r->reason);
    add_metadata(&body, &len, r->metadata, r->n_metadata);
    memset(out, 0, sizeof *out);
    pl_strlcpy(out->method, "POST", sizeof(out->method));
    out->url = pl_xasprintf("%s/v1/refunds", st->base_url);
    out->body = body;
    out->body_len = len;
    common_headers(st, out, r->idempotency_key);
    return 0;
}

static void stripe_classify(void *state, enum pl_gateway_op_kind op,
                            const struct pl_http_response *resp, struct pl_gateway_result *out)
{
    pl_stripe_classify(op, resp, out);
}

const struct pl_gateway_driver pl_gateway_driver_stripe = {
    .name = "stripe",
    .default_base_url = PL_STRIPE_BASE_URL,
    .init = stripe_init,
    .release = stripe_release,
    .charge = stripe_charge,
    .lookup_by_key = stripe_lookup_by_key,
    .lookup_by_ref = stripe_lookup_by_ref,
    .refund = stripe_refund,
    .classify = stripe_classify,
};
