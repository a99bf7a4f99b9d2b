/* Unit tests for lib/webhook.c: Stripe-Signature verification and parsing
 * of the events pledged acts on. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "util.h"
#include "webhook.h"

#define SECRET "whsec_test_secret"
#define BODY   "{\"id\":\"evt_1\"}"
#define T      1700000000LL
/* HMAC-SHA256("whsec_test_secret", "1700000000.{\"id\":\"evt_1\"}"), from Python's hmac */
#define KNOWN "248a374f50f943a28b0f6ab50faf9a7e7e29b710fa26df9fb1618b9bf8ea9c9a"

static enum pl_webhook_verdict verify_at(const char *header, int64_t now)
{
    return pl_webhook_verify(header, BODY, strlen(BODY), SECRET, now, PL_WEBHOOK_TOLERANCE_S, NULL);
}

static void test_sign_known_answer(void **state)
{
    (void)state;
    char hex[65];
    assert_int_equal(pl_webhook_sign(SECRET, T, BODY, strlen(BODY), hex), 0);
    assert_string_equal(hex, KNOWN);
    assert_int_equal(pl_webhook_sign("", T, BODY, strlen(BODY), hex), PL_EINVAL);
    assert_int_equal(pl_webhook_sign(NULL, T, BODY, strlen(BODY), hex), PL_EINVAL);
}

static void test_valid(void **state)
{
    (void)state;
    int64_t t = 0;
    assert_int_equal(pl_webhook_verify("t=1700000000,v1=" KNOWN, BODY, strlen(BODY), SECRET, T,
                                       PL_WEBHOOK_TOLERANCE_S, &t),
                     PL_WEBHOOK_VALID);
    assert_int_equal(t, T);
    /* blanks around items, unknown schemes ignored */
    assert_int_equal(verify_at(" t=1700000000 , v0=deadbeef, v1=" KNOWN " ", T), PL_WEBHOOK_VALID);
    /* the body need not be terminated: only body_len bytes count */
    char buf[64];
    memcpy(buf, BODY "garbage", sizeof(BODY "garbage"));
    assert_int_equal(pl_webhook_verify("t=1700000000,v1=" KNOWN, buf, strlen(BODY), SECRET, T,
                                       PL_WEBHOOK_TOLERANCE_S, NULL),
                     PL_WEBHOOK_VALID);
}

static void test_forged(void **state)
{
    (void)state;
    /* wrong secret */
    assert_int_equal(pl_webhook_verify("t=1700000000,v1=" KNOWN, BODY, strlen(BODY), "whsec_x", T,
                                       PL_WEBHOOK_TOLERANCE_S, NULL),
                     PL_WEBHOOK_MISMATCH);
    /* altered body */
    assert_int_equal(pl_webhook_verify("t=1700000000,v1=" KNOWN, "{\"id\":\"evt_2\"}", strlen(BODY),
                                       SECRET, T, PL_WEBHOOK_TOLERANCE_S, NULL),
                     PL_WEBHOOK_MISMATCH);
    /* altered timestamp (still fresh): the signature covers it */
    assert_int_equal(verify_at("t=1700000001,v1=" KNOWN, T), PL_WEBHOOK_MISMATCH);
    /* upper-case hex, truncated, one digit off, one char longer */
    char up[65];
    for (int i = 0; i < 64; i++)
        up[i] = (char)(KNOWN[i] >= 'a' ? KNOWN[i] - 32 : KNOWN[i]);
    up[64] = '\0';
    char h[200];
    snprintf(h, sizeof(h), "t=1700000000,v1=%s", up);
    assert_int_equal(verify_at(h, T), PL_WEBHOOK_MISMATCH);
    snprintf(h, sizeof(h), "t=1700000000,v1=%.63s", KNOWN);
    assert_int_equal(verify_at(h, T), PL_WEBHOOK_MISMATCH);
    snprintf(h, sizeof(h), "t=1700000000,v1=%.63s0", KNOWN);
    assert_int_equal(verify_at(h, T), PL_WEBHOOK_MISMATCH);
    snprintf(h, sizeof(h), "t=1700000000,v1=%s0", KNOWN);
    assert_int_equal(verify_at(h, T), PL_WEBHOOK_MISMATCH);
    /* the right MAC under another scheme name is not a v1 */
    assert_int_equal(verify_at("t=1700000000,v0=" KNOWN, T), PL_WEBHOOK_NO_SIGNATURE);
}

static void test_old_and_future(void **state)
{
    (void)state;
    const char *h = "t=1700000000,v1=" KNOWN;
    assert_int_equal(verify_at(h, T + PL_WEBHOOK_TOLERANCE_S), PL_WEBHOOK_VALID);
    assert_int_equal(verify_at(h, T + PL_WEBHOOK_TOLERANCE_S + 1), PL_WEBHOOK_TOO_OLD);
    assert_int_equal(verify_at(h, T + 86400), PL_WEBHOOK_TOO_OLD);
    assert_int_equal(verify_at(h, T - PL_WEBHOOK_TOLERANCE_S), PL_WEBHOOK_VALID);
    assert_int_equal(verify_at(h, T - PL_WEBHOOK_TOLERANCE_S - 1), PL_WEBHOOK_TOO_NEW);
    /* the timestamp is reported even when refused */
    int64_t t = 0;
    assert_int_equal(pl_webhook_verify(h, BODY, strlen(BODY), SECRET, T + 1000, 300, &t),
                     PL_WEBHOOK_TOO_OLD);
    assert_int_equal(t, T);
    /* staleness is judged before the MAC: a stale forgery is "too old" */
    assert_int_equal(verify_at("t=1,v1=00", T), PL_WEBHOOK_TOO_OLD);
}

static void test_several_v1(void **state)
{
    (void)state;
    const char *zeros = "0000000000000000000000000000000000000000000000000000000000000000";
    char h[400];
    snprintf(h, sizeof(h), "t=1700000000,v1=%s,v1=%s", zeros, KNOWN);
    assert_int_equal(verify_at(h, T), PL_WEBHOOK_VALID);
    snprintf(h, sizeof(h), "t=1700000000,v1=%s,v1=%s", KNOWN, zeros);
    assert_int_equal(verify_at(h, T), PL_WEBHOOK_VALID);
    snprintf(h, sizeof(h), "v1=%s,v1=%s,t=1700000000", zeros, zeros);
    assert_int_equal(verify_at(h, T), PL_WEBHOOK_MISMATCH);
    /* sixteen are accepted, seventeen are not a key rotation */
    char many[2000] = "t=1700000000";
    for (int i = 0; i < 15; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), ",v1=%s", zeros);
    snprintf(many + strlen(many), sizeof(many) - strlen(many), ",v1=%s", KNOWN);
    assert_int_equal(verify_at(many, T), PL_WEBHOOK_VALID);
    snprintf(many + strlen(many), sizeof(many) - strlen(many), ",v1=%s", zeros);
    assert_int_equal(verify_at(many, T), PL_WEBHOOK_MALFORMED);
}

static void test_malformed_headers(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        ",",
        "t",
        "t=",
        "=1",
        "garbage",
        "t=1700000000,",
        ",t=1700000000,v1=" KNOWN,
        "t=1700000000,,v1=" KNOWN,
        "t=17000000x0,v1=" KNOWN,
        "t=-1700000000,v1=" KNOWN,
        "t=+1700000000,v1=" KNOWN,
        "t=1700000000,t=1700000000,v1=" KNOWN,
        "t=1234567890123,v1=" KNOWN, /* 13 digits */
        "v1=" KNOWN,
        "t = 1700000000,v1=" KNOWN,
        "t=1700000000;v1=" KNOWN,
    };
    for (size_t i = 0; i < PL_ARRAY_LEN(bad); i++) {
        enum pl_webhook_verdict v = verify_at(bad[i], T);
        if (v != PL_WEBHOOK_MALFORMED)
            fail_msg("header \"%s\": %s, want malformed", bad[i], pl_webhook_verdict_name(v));
    }
    assert_int_equal(verify_at(NULL, T), PL_WEBHOOK_MALFORMED);
    assert_int_equal(verify_at("t=1700000000", T), PL_WEBHOOK_NO_SIGNATURE);
    assert_int_equal(verify_at("t=1700000000,v0=abc", T), PL_WEBHOOK_NO_SIGNATURE);
    assert_string_equal(pl_webhook_verdict_name(PL_WEBHOOK_TOO_OLD), "timestamp too old");
}

static void test_huge_header(void **state)
{
    (void)state;
    size_t n = PL_WEBHOOK_HEADER_MAX + 1;
    char *h = malloc(n + 1);
    assert_non_null(h);
    /* a valid header padded with an ignored scheme to one byte over */
    int k = snprintf(h, n + 1, "t=1700000000,v1=%s,v9=", KNOWN);
    memset(h + k, 'a', n - (size_t)k);
    h[n] = '\0';
    assert_int_equal(verify_at(h, T), PL_WEBHOOK_MALFORMED);
    h[n - 1] = '\0'; /* exactly the limit: fine */
    assert_int_equal(verify_at(h, T), PL_WEBHOOK_VALID);
    free(h);
}

/* ---- events ---------------------------------------------------------------------------- */

static struct pl_webhook_event *parse_ok(const char *json)
{
    struct pl_webhook_event *ev = NULL;
    char err[200];
    int rc = pl_webhook_parse_event(json, strlen(json), &ev, err, sizeof(err));
    if (rc != 0)
        fail_msg("parse failed: %s\n%s", err, json);
    return ev;
}

static void parse_bad(const char *json, const char *want_err)
{
    struct pl_webhook_event *ev = (void *)0x1;
    char err[200];
    int rc = pl_webhook_parse_event(json, strlen(json), &ev, err, sizeof(err));
    if (rc != PL_EPARSE)
        fail_msg("parsed, want refusal: %s", json);
    assert_ptr_equal(ev, (void *)0x1); /* untouched */
    if (!strstr(err, want_err))
        fail_msg("error \"%s\" lacks \"%s\"", err, want_err);
}

static void test_parse_refunded(void **state)
{
    (void)state;
    struct pl_webhook_event *ev = parse_ok(
        "{\"id\":\"evt_1\",\"object\":\"event\",\"type\":\"charge.refunded\",\"created\":5,"
        "\"data\":{\"object\":{\"id\":\"ch_1\",\"amount\":2500,\"amount_refunded\":1500,"
        "\"currency\":\"usd\",\"payment_intent\":\"pi_1\",\"refunds\":{\"object\":\"list\","
        "\"data\":[{\"id\":\"re_2\",\"amount\":500,\"status\":\"succeeded\",\"metadata\":{}},"
        "{\"id\":\"re_1\",\"amount\":1000,\"status\":\"succeeded\","
        "\"metadata\":{\"pledged_refund\":\"42\"}},"
        "{\"id\":\"re_3\",\"amount\":7,\"status\":\"failed\","
        "\"metadata\":{\"pledged_refund\":\"4x2\"}}]}}}}");
    assert_int_equal(ev->kind, PL_WEBHOOK_CHARGE_REFUNDED);
    assert_string_equal(ev->id, "evt_1");
    assert_int_equal(ev->created, 5);
    assert_string_equal(ev->object_id, "ch_1");
    assert_string_equal(ev->payment_intent, "pi_1");
    assert_string_equal(ev->currency, "USD");
    assert_int_equal(ev->amount_minor, 2500);
    assert_int_equal(ev->amount_refunded_minor, 1500);
    assert_int_equal(ev->nrefunds, 3);
    assert_string_equal(ev->refunds[0].id, "re_2");
    assert_string_equal(ev->refunds[0].pledged_refund, "");
    assert_string_equal(ev->refunds[1].pledged_refund, "42");
    assert_int_equal(ev->refunds[1].amount_minor, 1000);
    assert_string_equal(ev->refunds[2].status, "failed");
    assert_string_equal(ev->refunds[2].pledged_refund, ""); /* not a row id: ignored */
    pl_webhook_event_free(ev);

    /* no refunds list (newer API versions), payment_intent null */
    ev = parse_ok("{\"id\":\"evt_2\",\"type\":\"charge.refunded\",\"data\":{\"object\":"
                  "{\"id\":\"ch_1\",\"amount\":100,\"amount_refunded\":100,\"currency\":\"jpy\","
                  "\"payment_intent\":null}}}");
    assert_int_equal(ev->nrefunds, 0);
    assert_null(ev->refunds);
    assert_string_equal(ev->payment_intent, "");
    pl_webhook_event_free(ev);
}

static void test_parse_dispute_and_others(void **state)
{
    (void)state;
    struct pl_webhook_event *ev =
        parse_ok("{\"id\":\"evt_3\",\"type\":\"charge.dispute.created\",\"data\":{\"object\":"
                 "{\"id\":\"dp_1\",\"object\":\"dispute\",\"amount\":2500,\"charge\":\"ch_1\","
                 "\"currency\":\"eur\",\"payment_intent\":\"pi_9\",\"reason\":\"fraudulent\"}}}");
    assert_int_equal(ev->kind, PL_WEBHOOK_DISPUTE_CREATED);
    assert_string_equal(ev->object_id, "dp_1");
    assert_string_equal(ev->payment_intent, "pi_9");
    assert_string_equal(ev->currency, "EUR");
    assert_string_equal(ev->reason, "fraudulent");
    pl_webhook_event_free(ev);

    /* any other type: only id and type matter */
    ev = parse_ok("{\"id\":\"evt_4\",\"type\":\"payment_intent.succeeded\",\"data\":7}");
    assert_int_equal(ev->kind, PL_WEBHOOK_OTHER);
    pl_webhook_event_free(ev);
}

static void test_parse_refusals(void **state)
{
    (void)state;
    parse_bad("", "empty");
    parse_bad("{", "invalid JSON");
    parse_bad("[1]", "not a JSON object");
    parse_bad("{\"id\":\"evt_1\",\"id\":\"evt_2\",\"type\":\"x\"}", "invalid JSON");
    parse_bad("{\"type\":\"charge.refunded\"}", "id");
    parse_bad("{\"id\":\"evt 1\",\"type\":\"x\"}", "id");
    parse_bad("{\"id\":\"\",\"type\":\"x\"}", "id");
    parse_bad("{\"id\":7,\"type\":\"x\"}", "id");
    parse_bad("{\"id\":\"evt_1\"}", "type");
    parse_bad("{\"id\":\"evt_1\",\"type\":\"charge.refunded\"}", "data.object");
    const char *head = "{\"id\":\"e\",\"type\":\"charge.refunded\",\"data\":{\"object\":";
    char buf[1024];
#define BAD(obj, why)                                    \
    do {                                                 \
        snprintf(buf, sizeof(buf), "%s%s}}", head, obj); \
        parse_bad(buf, why);                             \
    } while (0)
    BAD("{\"amount\":1,\"amount_refunded\":1,\"currency\":\"usd\"}", "data.object.id");
    BAD("{\"id\":\"ch\",\"amount\":1,\"amount_refunded\":1,\"currency\":\"us\"}", "currency");
    BAD("{\"id\":\"ch\",\"amount\":0,\"amount_refunded\":0,\"currency\":\"usd\"}", "amount");
    BAD("{\"id\":\"ch\",\"amount\":1.5,\"amount_refunded\":0,\"currency\":\"usd\"}", "amount");
    BAD("{\"id\":\"ch\",\"amount\":5,\"amount_refunded\":-1,\"currency\":\"usd\"}",
        "amount_refunded");
    BAD("{\"id\":\"ch\",\"amount\":5,\"amount_refunded\":6,\"currency\":\"usd\"}", "exceeds");
    BAD("{\"id\":\"ch\",\"amount\":5,\"amount_refunded\":5,\"currency\":\"usd\","
        "\"payment_intent\":5}",
        "payment_intent");
    BAD("{\"id\":\"ch\",\"amount\":5,\"amount_refunded\":5,\"currency\":\"usd\","
        "\"refunds\":{\"data\":{}}}",
        "not an array");
    BAD("{\"id\":\"ch\",\"amount\":5,\"amount_refunded\":5,\"currency\":\"usd\","
        "\"refunds\":{\"data\":[{\"id\":\"re_1\",\"amount\":0,\"status\":\"succeeded\"}]}}",
        "refund 0: amount");
    BAD("{\"id\":\"ch\",\"amount\":5,\"amount_refunded\":5,\"currency\":\"usd\","
        "\"refunds\":{\"data\":[{\"amount\":5,\"status\":\"succeeded\"}]}}",
        "refund 0: id");
#undef BAD
    /* deep nesting is refused before jansson recurses */
    char deep[400] = "{\"id\":\"e\",\"type\":\"t\",\"x\":";
    for (int i = 0; i < 40; i++)
        strcat(deep, "[");
    for (int i = 0; i < 40; i++)
        strcat(deep, "]");
    strcat(deep, "}");
    parse_bad(deep, "deeper");
    /* an over-long identifier is refused, not cut */
    char id[PL_WEBHOOK_ID_MAX + 64];
    memset(id, 'a', PL_WEBHOOK_ID_MAX);
    id[PL_WEBHOOK_ID_MAX] = '\0';
    char longid[2 * PL_WEBHOOK_ID_MAX + 64];
    snprintf(longid, sizeof(longid), "{\"id\":\"%s\",\"type\":\"t\"}", id);
    parse_bad(longid, "id");
    pl_webhook_event_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sign_known_answer),
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_forged),
        cmocka_unit_test(test_old_and_future),
        cmocka_unit_test(test_several_v1),
        cmocka_unit_test(test_malformed_headers),
        cmocka_unit_test(test_huge_header),
        cmocka_unit_test(test_parse_refunded),
        cmocka_unit_test(test_parse_dispute_and_others),
        cmocka_unit_test(test_parse_refusals),
    };
    return cmocka_run_group_tests_name("webhook", tests, NULL, NULL);
}
