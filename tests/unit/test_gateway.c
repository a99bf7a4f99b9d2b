/*
 * Unit tests for lib/gateway.c and lib/gateway_stripe.c: outcome names, the
 * classification tables (every decline code of the reference), the form
 * encoder, the request builders (byte-identical resends) and the reply
 * classifier on good and malformed replies.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gateway.h"
#include "gateway_stripe.h"
#include "http.h"
#include "util.h"

/* ---- names ------------------------------------------------------------ */

static void test_outcome_names(void **state)
{
    static const char *const want[] = {
        "succeeded", "declined_soft", "declined_hard", "action_required",
        "retry_now", "unknown",       "halt",          "not_found"};
    assert_int_equal(PL_ARRAY_LEN(want), PL_OUT_COUNT);
    for (unsigned i = 0; i < PL_OUT_COUNT; i++) {
        assert_string_equal(pl_outcome_name((enum pl_outcome)i), want[i]);
        enum pl_outcome o;
        assert_int_equal(pl_outcome_parse(want[i], &o), 0);
        assert_int_equal(o, i);
    }
    assert_string_equal(pl_outcome_name((enum pl_outcome)PL_OUT_COUNT), "invalid");
    enum pl_outcome o = PL_OUT_HALT;
    assert_int_equal(pl_outcome_parse("Succeeded", &o), PL_EINVAL);
    assert_int_equal(pl_outcome_parse(NULL, &o), PL_EINVAL);
    assert_int_equal(o, PL_OUT_HALT);
}

/* ---- tables ------------------------------------------------------------ */

/* Every decline_code listed in shared/reference/gateway-stripe.md. */
static const struct {
    const char *code;
    enum pl_outcome want;
} reference_declines[] = {
    {"authentication_required", PL_OUT_ACTION_REQUIRED},
    {"approve_with_id", PL_OUT_DECLINED_SOFT},
    {"call_issuer", PL_OUT_DECLINED_SOFT},
    {"card_not_supported", PL_OUT_DECLINED_HARD},
    {"card_velocity_exceeded", PL_OUT_DECLINED_SOFT},
    {"currency_not_supported", PL_OUT_DECLINED_HARD},
    {"do_not_honor", PL_OUT_DECLINED_SOFT},
    {"do_not_try_again", PL_OUT_DECLINED_HARD},
    {"duplicate_transaction", PL_OUT_DECLINED_SOFT},
    {"expired_card", PL_OUT_DECLINED_HARD},
    {"fraudulent", PL_OUT_DECLINED_HARD},
    {"generic_decline", PL_OUT_DECLINED_SOFT},
    {"incorrect_number", PL_OUT_DECLINED_HARD},
    {"incorrect_cvc", PL_OUT_DECLINED_HARD},
    {"insufficient_funds", PL_OUT_DECLINED_SOFT},
    {"invalid_account", PL_OUT_DECLINED_HARD},
    {"invalid_amount", PL_OUT_DECLINED_HARD},
    {"issuer_not_available", PL_OUT_DECLINED_SOFT},
    {"lost_card", PL_OUT_DECLINED_HARD},
    {"merchant_blacklist", PL_OUT_DECLINED_HARD},
    {"new_account_information_available", PL_OUT_DECLINED_HARD},
    {"not_permitted", PL_OUT_DECLINED_HARD},
    {"pickup_card", PL_OUT_DECLINED_HARD},
    {"processing_error", PL_OUT_DECLINED_SOFT},
    {"reenter_transaction", PL_OUT_DECLINED_SOFT},
    {"restricted_card", PL_OUT_DECLINED_HARD},
    {"revocation_of_all_authorizations", PL_OUT_DECLINED_HARD},
    {"revocation_of_authorization", PL_OUT_DECLINED_HARD},
    {"security_violation", PL_OUT_DECLINED_HARD},
    {"service_not_allowed", PL_OUT_DECLINED_HARD},
    {"stolen_card", PL_OUT_DECLINED_HARD},
    {"stop_payment_order", PL_OUT_DECLINED_HARD},
    {"testmode_decline", PL_OUT_DECLINED_HARD},
    {"transaction_not_allowed", PL_OUT_DECLINED_HARD},
    {"try_again_later", PL_OUT_DECLINED_SOFT},
    {"withdrawal_count_limit_exceeded", PL_OUT_DECLINED_SOFT},
    /* Stripe's "do not retry" list, beyond the codes above */
    {"highest_risk_level", PL_OUT_DECLINED_HARD},
};

static void test_decline_table_covers_reference(void **state)
{
    for (size_t i = 0; i < PL_ARRAY_LEN(reference_declines); i++) {
        enum pl_outcome o;
        if (!pl_stripe_decline_class(reference_declines[i].code, &o))
            fail_msg("decline code %s missing from the table", reference_declines[i].code);
        if (o != reference_declines[i].want)
            fail_msg("%s: %s, want %s", reference_declines[i].code, pl_outcome_name(o),
                     pl_outcome_name(reference_declines[i].want));
        /* the whole path agrees, as a card_error would carry it */
        o = pl_stripe_decline_outcome("card_error", "card_declined", reference_declines[i].code,
                                      NULL);
        assert_int_equal(o, reference_declines[i].want);
    }
}

static void test_do_not_retry_list_is_never_soft(void **state)
{
    static const char *const list[] = {"incorrect_number",
                                       "lost_card",
                                       "pickup_card",
                                       "stolen_card",
                                       "revocation_of_authorization",
                                       "revocation_of_all_authorizations",
                                       "authentication_required",
                                       "highest_risk_level"};
    for (size_t i = 0; i < PL_ARRAY_LEN(list); i++) {
        enum pl_outcome o = pl_stripe_decline_outcome("card_error", "card_declined", list[i], NULL);
        assert_true(o == PL_OUT_DECLINED_HARD || o == PL_OUT_ACTION_REQUIRED);
    }
}

static void test_advice_code_is_strongest(void **state)
{
    enum pl_outcome o;
    assert_true(pl_stripe_advice_class("do_not_try_again", &o));
    assert_int_equal(o, PL_OUT_DECLINED_HARD);
    assert_true(pl_stripe_advice_class("try_again_later", &o));
    assert_int_equal(o, PL_OUT_DECLINED_SOFT);
    assert_true(pl_stripe_advice_class("confirm_card_data", &o));
    assert_int_equal(o, PL_OUT_DECLINED_HARD);
    assert_false(pl_stripe_advice_class("", &o));
    assert_false(pl_stripe_advice_class(NULL, &o));

    /* advice beats the decline code both ways */
    assert_int_equal(pl_stripe_decline_outcome("card_error", "card_declined", "insufficient_funds",
                                               "do_not_try_again"),
                     PL_OUT_DECLINED_HARD);
    assert_int_equal(pl_stripe_decline_outcome("card_error", "card_declined", "generic_decline",
                                               "confirm_card_data"),
                     PL_OUT_DECLINED_HARD);
    assert_int_equal(
        pl_stripe_decline_outcome("card_error", "card_declined", "do_not_honor", "try_again_later"),
        PL_OUT_DECLINED_SOFT);
    /* …but a donor who must authenticate stays action_required */
    assert_int_equal(pl_stripe_decline_outcome("card_error", "authentication_required",
                                               "authentication_required", "try_again_later"),
                     PL_OUT_ACTION_REQUIRED);
    /* unknown advice falls through to the decline code */
    assert_int_equal(
        pl_stripe_decline_outcome("card_error", "card_declined", "lost_card", "something_new"),
        PL_OUT_DECLINED_HARD);
}

static void test_error_code_and_type_defaults(void **state)
{
    struct {
        const char *type, *code, *decline;
        enum pl_outcome want;
    } cases[] = {
        {"card_error", "expired_card", NULL, PL_OUT_DECLINED_HARD},
        {"card_error", "incorrect_cvc", NULL, PL_OUT_DECLINED_HARD},
        {"card_error", "processing_error", NULL, PL_OUT_DECLINED_SOFT},
        {"card_error", "card_declined", NULL, PL_OUT_DECLINED_SOFT},
        {"card_error", "card_declined", "some_future_code", PL_OUT_DECLINED_SOFT},
        {"card_error", NULL, NULL, PL_OUT_DECLINED_SOFT},
        {"invalid_request_error", "resource_missing", NULL, PL_OUT_DECLINED_HARD},
        {"invalid_request_error", "parameter_unknown", NULL, PL_OUT_HALT},
        {"invalid_request_error", "payment_intent_unexpected_state", NULL, PL_OUT_UNKNOWN},
        {"invalid_request_error", "something_new", NULL, PL_OUT_DECLINED_HARD},
        {"invalid_request_error", "payment_intent_authentication_failure", NULL,
         PL_OUT_ACTION_REQUIRED},
        {"idempotency_error", NULL, NULL, PL_OUT_UNKNOWN},
        {"idempotency_error", "card_declined", "lost_card", PL_OUT_UNKNOWN},
        {"api_error", NULL, NULL, PL_OUT_UNKNOWN},
        {"authentication_error", NULL, NULL, PL_OUT_HALT},
        {"rate_limit_error", "lock_timeout", NULL, PL_OUT_RETRY_NOW},
        {NULL, "idempotency_key_in_use", NULL, PL_OUT_RETRY_NOW},
        {"brand_new_type", NULL, NULL, PL_OUT_UNKNOWN},
        {NULL, NULL, NULL, PL_OUT_UNKNOWN},
    };
    for (size_t i = 0; i < PL_ARRAY_LEN(cases); i++) {
        enum pl_outcome o =
            pl_stripe_decline_outcome(cases[i].type, cases[i].code, cases[i].decline, NULL);
        if (o != cases[i].want)
            fail_msg("case %zu (%s/%s/%s): %s, want %s", i, cases[i].type, cases[i].code,
                     cases[i].decline, pl_outcome_name(o), pl_outcome_name(cases[i].want));
    }
}

/* ---- form encoding -------------------------------------------------------- */

static char *esc(const char *s)
{
    char *b = NULL;
    size_t n = 0;
    pl_form_escape(&b, &n, s);
    assert_int_equal(strlen(b), n);
    return b;
}

static void test_form_escape(void **state)
{
    struct {
        const char *in, *out;
    } cases[] = {
        {"", ""},
        {"abcXYZ019-._~", "abcXYZ019-._~"},
        {"a b", "a%20b"},
        {"a&b=c", "a%26b%3Dc"},
        {"1+1", "1%2B1"},
        {"metadata[pledged_charge]", "metadata%5Bpledged_charge%5D"},
        {"payment_method_types[]", "payment_method_types%5B%5D"},
        {"ü€", "%C3%BC%E2%82%AC"},
        {"%2B", "%252B"},
        {"a\r\nb", "a%0D%0Ab"},
        {"'\"/?#", "%27%22%2F%3F%23"},
        {"\xff", "%FF"},
    };
    for (size_t i = 0; i < PL_ARRAY_LEN(cases); i++) {
        char *got = esc(cases[i].in);
        assert_string_equal(got, cases[i].out);
        free(got);
    }
    char *b = NULL;
    size_t n = 0;
    pl_form_add(&b, &n, "a", "1 2");
    pl_form_add(&b, &n, "metadata[k]", "v&w");
    pl_form_add(&b, &n, "empty", "");
    assert_string_equal(b, "a=1%202&metadata%5Bk%5D=v%26w&empty=");
    free(b);

    /* growth over many appends */
    b = NULL;
    n = 0;
    for (int i = 0; i < 2000; i++)
        pl_form_add(&b, &n, "k", "a b");
    assert_int_equal(n, 2000 * strlen("k=a%20b") + 1999);
    free(b);
}

static void test_key_valid(void **state)
{
    assert_true(pl_gateway_key_valid("pledged-123-1"));
    assert_true(pl_gateway_key_valid("a.b_c:d-E9"));
    assert_false(pl_gateway_key_valid(""));
    assert_false(pl_gateway_key_valid(NULL));
    assert_false(pl_gateway_key_valid("a b"));
    assert_false(pl_gateway_key_valid("a\r\nX-Evil: 1"));
    assert_false(pl_gateway_key_valid("it's"));
    assert_false(pl_gateway_key_valid("back\\slash"));
    char k[300];
    memset(k, 'k', sizeof k);
    k[255] = 0;
    assert_true(pl_gateway_key_valid(k));
    k[255] = 'k';
    k[256] = 0;
    assert_false(pl_gateway_key_valid(k));
}

/* ---- builders ---------------------------------------------------------- */

static void *stripe_state(const char *base)
{
    struct pl_gateway_opts o;
    pl_gateway_opts_init(&o);
    o.api_key = "sk_test_123";
    o.base_url = base;
    void *st = NULL;
    assert_int_equal(pl_gateway_driver_stripe.init(&o, &st), 0);
    return st;
}

static const char *header(const struct pl_gateway_wire *w, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < w->n_headers; i++)
        if (strncmp(w->headers[i], name, n) == 0 && w->headers[i][n] == ':')
            return w->headers[i] + n + 2;
    return NULL;
}

static void test_charge_request(void **state)
{
    void *st = stripe_state("http://127.0.0.1:12111/");
    struct pl_gateway_kv meta[] = {{"pledged_charge", "123"}, {"pledged_attempt", "pledged-123-1"}};
    struct pl_gateway_charge c = {
        .amount_minor = 2500,
        .currency = "USD",
        .customer_ref = "cus_1",
        .payment_method = "pm_card_visa",
        .idempotency_key = "pledged-123-1",
        .metadata = meta,
        .n_metadata = 2,
        .description = "Monthly gift & thanks",
        .statement_descriptor_suffix = "GIFT",
    };
    struct pl_gateway_wire w;
    assert_int_equal(pl_gateway_driver_stripe.charge(st, &c, &w), 0);
    assert_string_equal(w.method, "POST");
    assert_string_equal(w.url, "http://127.0.0.1:12111/v1/payment_intents");
    assert_string_equal(w.body,
                        "amount=2500&currency=usd&customer=cus_1&payment_method=pm_card_visa"
                        "&confirm=true&off_session=true&payment_method_types%5B%5D=card"
                        "&description=Monthly%20gift%20%26%20thanks"
                        "&statement_descriptor_suffix=GIFT"
                        "&metadata%5Bpledged_attempt%5D=pledged-123-1"
                        "&metadata%5Bpledged_charge%5D=123");
    assert_int_equal(w.body_len, strlen(w.body));
    assert_string_equal(header(&w, "Authorization"), "Bearer sk_test_123");
    assert_string_equal(header(&w, "Idempotency-Key"), "pledged-123-1");
    assert_string_equal(header(&w, "Content-Type"), "application/x-www-form-urlencoded");

    /* same operation, metadata in another order: the same bytes */
    struct pl_gateway_kv meta2[] = {meta[1], meta[0]};
    c.metadata = meta2;
    struct pl_gateway_wire w2;
    assert_int_equal(pl_gateway_driver_stripe.charge(st, &c, &w2), 0);
    assert_int_equal(w.body_len, w2.body_len);
    assert_memory_equal(w.body, w2.body, w.body_len);
    pl_gateway_wire_release(&w);
    pl_gateway_wire_release(&w2);
    assert_null(w.body);

    /* optional fields left out */
    c.customer_ref = NULL;
    c.description = NULL;
    c.statement_descriptor_suffix = NULL;
    c.n_metadata = 0;
    c.metadata = NULL;
    c.currency = "jpy";
    c.amount_minor = INT64_MAX;
    assert_int_equal(pl_gateway_driver_stripe.charge(st, &c, &w), 0);
    assert_string_equal(w.body,
                        "amount=9223372036854775807&currency=jpy&payment_method=pm_card_visa"
                        "&confirm=true&off_session=true&payment_method_types%5B%5D=card");
    pl_gateway_wire_release(&w);
    pl_gateway_driver_stripe.release(st);
}

static void test_charge_request_refuses_bad_input(void **state)
{
    void *st = stripe_state(NULL);
    struct pl_gateway_kv dup[] = {{"a", "1"}, {"a", "2"}};
    struct pl_gateway_kv bracket[] = {{"a]b", "1"}};
    struct pl_gateway_charge good = {
        .amount_minor = 100, .currency = "usd", .payment_method = "pm_x", .idempotency_key = "k1"};
    struct pl_gateway_charge bad[10];
    for (int i = 0; i < 10; i++)
        bad[i] = good;
    bad[0].amount_minor = 0;
    bad[1].amount_minor = -5;
    bad[2].currency = "US";
    bad[3].currency = "U$D";
    bad[4].payment_method = "pm_x&amount=1";
    bad[5].idempotency_key = "k1\r\nX: y";
    bad[6].metadata = dup, bad[6].n_metadata = 2;
    bad[7].metadata = bracket, bad[7].n_metadata = 1;
    bad[8].statement_descriptor_suffix = "this suffix is far too long";
    bad[9].customer_ref = "cus 1";
    struct pl_gateway_wire w = {0};
    for (int i = 0; i < 10; i++) {
        if (pl_gateway_driver_stripe.charge(st, &bad[i], &w) != PL_EINVAL)
            fail_msg("bad charge %d accepted", i);
        assert_null(w.url); /* out untouched */
    }
    assert_int_equal(pl_gateway_driver_stripe.charge(st, &good, &w), 0);
    assert_non_null(strstr(w.url, "https://api.stripe.com/"));
    pl_gateway_wire_release(&w);
    pl_gateway_driver_stripe.release(st);

    /* driver options */
    struct pl_gateway_opts o;
    pl_gateway_opts_init(&o);
    void *s2 = NULL;
    assert_int_equal(pl_gateway_driver_stripe.init(&o, &s2), PL_EINVAL); /* no key */
    o.api_key = "sk_test_1\nX: y";
    assert_int_equal(pl_gateway_driver_stripe.init(&o, &s2), PL_EINVAL);
    o.api_key = "sk_test_1";
    o.base_url = "http://example.com";
    assert_int_equal(pl_gateway_driver_stripe.init(&o, &s2), PL_EINVAL);
    o.base_url = "ftp://127.0.0.1";
    assert_int_equal(pl_gateway_driver_stripe.init(&o, &s2), PL_EINVAL);
    assert_null(s2);
}

static void test_lookup_and_refund_requests(void **state)
{
    void *st = stripe_state("http://localhost:1");
    struct pl_gateway_wire w;
    assert_int_equal(pl_gateway_driver_stripe.lookup_by_key(st, "pledged-123-1", &w), 0);
    assert_string_equal(w.method, "GET");
    assert_string_equal(w.url, "http://localhost:1/v1/payment_intents/search?query="
                               "metadata%5B%27pledged_attempt%27%5D%3A%27pledged-123-1%27");
    assert_null(w.body);
    assert_null(header(&w, "Idempotency-Key"));
    pl_gateway_wire_release(&w);
    assert_int_equal(pl_gateway_driver_stripe.lookup_by_key(st, "x' OR status:'succeeded", &w),
                     PL_EINVAL);

    assert_int_equal(pl_gateway_driver_stripe.lookup_by_ref(st, "pi_123", &w), 0);
    assert_string_equal(w.url, "http://localhost:1/v1/payment_intents/pi_123");
    pl_gateway_wire_release(&w);
    assert_int_equal(pl_gateway_driver_stripe.lookup_by_ref(st, "../v1/refunds", &w), PL_EINVAL);

    struct pl_gateway_refund r = {.payment_ref = "pi_123",
                                  .amount_minor = 500,
                                  .reason = "requested_by_customer",
                                  .idempotency_key = "pledged-refund-7"};
    assert_int_equal(pl_gateway_driver_stripe.refund(st, &r, &w), 0);
    assert_string_equal(w.url, "http://localhost:1/v1/refunds");
    assert_string_equal(w.body, "payment_intent=pi_123&amount=500&reason=requested_by_customer");
    assert_string_equal(header(&w, "Idempotency-Key"), "pledged-refund-7");
    pl_gateway_wire_release(&w);
    r.payment_ref = "ch_9";
    r.amount_minor = 0;
    r.reason = NULL;
    assert_int_equal(pl_gateway_driver_stripe.refund(st, &r, &w), 0);
    assert_string_equal(w.body, "charge=ch_9");
    pl_gateway_wire_release(&w);
    r.reason = "because";
    assert_int_equal(pl_gateway_driver_stripe.refund(st, &r, &w), PL_EINVAL);
    pl_gateway_driver_stripe.release(st);
}

/* ---- reply classification ------------------------------------------------ */

static struct pl_http_response reply(long status, const char *body)
{
    struct pl_http_response r = {0};
    r.transport = PL_HTTP_REPLIED;
    r.status = status;
    r.body = body ? body : "";
    r.body_len = body ? strlen(body) : 0;
    r.request_id = "req_test";
    r.should_retry = -1;
    r.retry_after_ms = -1;
    r.error = "";
    return r;
}

static struct pl_gateway_result classify(enum pl_gateway_op_kind op,
                                         const struct pl_http_response *resp)
{
    struct pl_gateway_result res;
    pl_gateway_result_init(&res, op);
    pl_stripe_classify(op, resp, &res);
    return res;
}

#define PI_OK                                                                                      \
    "{\"id\":\"pi_1\",\"object\":\"payment_intent\",\"status\":\"succeeded\",\"amount\":2500,"     \
    "\"amount_received\":2500,\"currency\":\"usd\",\"latest_charge\":\"ch_1\",\"livemode\":false," \
    "\"metadata\":{\"pledged_attempt\":\"pledged-1-1\",\"pledged_charge\":\"1\"}}"

static void test_classify_success(void **state)
{
    struct pl_http_response r = reply(200, PI_OK);
    struct pl_gateway_result g = classify(PL_GW_CHARGE, &r);
    assert_int_equal(g.outcome, PL_OUT_SUCCEEDED);
    assert_string_equal(g.ref, "pi_1");
    assert_string_equal(g.charge_ref, "ch_1");
    assert_string_equal(g.currency, "USD");
    assert_int_equal(g.amount_minor, 2500);
    assert_int_equal(g.amount_received_minor, 2500);
    assert_string_equal(g.attempt_key, "pledged-1-1");
    assert_string_equal(g.request_id, "req_test");
    assert_int_equal(g.http_status, 200);
    assert_false(g.has_fee);

    /* expanded latest_charge with its balance transaction: the fee */
    r = reply(200, "{\"id\":\"pi_2\",\"status\":\"succeeded\",\"latest_charge\":{\"id\":\"ch_2\","
                   "\"balance_transaction\":{\"fee\":103}}}");
    g = classify(PL_GW_CHARGE, &r);
    assert_int_equal(g.outcome, PL_OUT_SUCCEEDED);
    assert_string_equal(g.charge_ref, "ch_2");
    assert_true(g.has_fee);
    assert_int_equal(g.fee_minor, 103);
}

static void test_classify_pi_statuses(void **state)
{
    struct {
        const char *body;
        enum pl_outcome want;
    } cases[] = {
        {"{\"id\":\"pi_1\",\"status\":\"processing\"}", PL_OUT_UNKNOWN},
        {"{\"id\":\"pi_1\",\"status\":\"requires_action\"}", PL_OUT_ACTION_REQUIRED},
        {"{\"id\":\"pi_1\",\"status\":\"requires_capture\"}", PL_OUT_UNKNOWN},
        {"{\"id\":\"pi_1\",\"status\":\"requires_confirmation\"}", PL_OUT_DECLINED_SOFT},
        {"{\"id\":\"pi_1\",\"status\":\"canceled\"}", PL_OUT_DECLINED_SOFT},
        {"{\"id\":\"pi_1\",\"status\":\"something_new\"}", PL_OUT_UNKNOWN},
        {"{\"id\":\"pi_1\",\"status\":\"requires_payment_method\",\"last_payment_error\":"
         "{\"type\":\"card_error\",\"code\":\"authentication_required\","
         "\"decline_code\":\"authentication_required\"}}",
         PL_OUT_ACTION_REQUIRED},
        {"{\"id\":\"pi_1\",\"status\":\"requires_payment_method\",\"last_payment_error\":"
         "{\"type\":\"card_error\",\"code\":\"card_declined\",\"decline_code\":\"lost_card\"}}",
         PL_OUT_DECLINED_HARD},
        {"{\"id\":\"pi_1\",\"status\":\"requires_payment_method\",\"last_payment_error\":"
         "{\"type\":\"card_error\",\"code\":\"card_declined\","
         "\"decline_code\":\"insufficient_funds\"}}",
         PL_OUT_DECLINED_SOFT},
        {"{\"id\":\"pi_1\",\"status\":\"requires_payment_method\"}", PL_OUT_DECLINED_SOFT},
        {"{\"id\":\"pi_1\",\"status\":\"requires_payment_method\",\"last_payment_error\":7}",
         PL_OUT_DECLINED_SOFT},
    };
    for (size_t i = 0; i < PL_ARRAY_LEN(cases); i++) {
        struct pl_http_response r = reply(200, cases[i].body);
        struct pl_gateway_result g = classify(PL_GW_CHARGE, &r);
        if (g.outcome != cases[i].want)
            fail_msg("case %zu: %s, want %s", i, pl_outcome_name(g.outcome),
                     pl_outcome_name(cases[i].want));
    }
}

static void test_classify_errors(void **state)
{
    struct {
        long status;
        const char *body;
        int should_retry;
        bool replayed;
        enum pl_outcome want;
        const char *error_type;
    } cases[] = {
        {402,
         "{\"error\":{\"type\":\"card_error\",\"code\":\"card_declined\","
         "\"decline_code\":\"insufficient_funds\",\"message\":\"Your card has insufficient "
         "funds.\",\"payment_intent\":{\"id\":\"pi_9\",\"status\":\"requires_payment_method\"}}}",
         -1, false, PL_OUT_DECLINED_SOFT, "card_error"},
        {402,
         "{\"error\":{\"type\":\"card_error\",\"code\":\"card_declined\","
         "\"decline_code\":\"stolen_card\"}}",
         -1, false, PL_OUT_DECLINED_HARD, "card_error"},
        {402,
         "{\"error\":{\"type\":\"card_error\",\"code\":\"expired_card\","
         "\"decline_code\":\"expired_card\"}}",
         -1, false, PL_OUT_DECLINED_HARD, "card_error"},
        {402,
         "{\"error\":{\"type\":\"card_error\",\"code\":\"authentication_required\","
         "\"decline_code\":\"authentication_required\",\"payment_intent\":{\"id\":\"pi_3\","
         "\"status\":\"requires_payment_method\"}}}",
         -1, false, PL_OUT_ACTION_REQUIRED, "card_error"},
        {402,
         "{\"error\":{\"type\":\"card_error\",\"code\":\"card_declined\","
         "\"decline_code\":\"generic_decline\",\"payment_intent\":{\"id\":\"pi_3\","
         "\"status\":\"requires_action\"}}}",
         -1, false, PL_OUT_ACTION_REQUIRED, "card_error"},
        {402,
         "{\"error\":{\"type\":\"card_error\",\"code\":\"card_declined\","
         "\"decline_code\":\"insufficient_funds\",\"advice_code\":\"do_not_try_again\"}}",
         -1, false, PL_OUT_DECLINED_HARD, "card_error"},
        {402, "", -1, false, PL_OUT_DECLINED_SOFT, "unparseable_reply"},
        {401, "{\"error\":{\"type\":\"invalid_request_error\",\"message\":\"Invalid API Key\"}}",
         -1, false, PL_OUT_HALT, NULL},
        {401, "", -1, false, PL_OUT_HALT, "authentication_error"},
        {403, "<html>", -1, false, PL_OUT_HALT, "permission_error"},
        {429, "{\"error\":{\"type\":\"invalid_request_error\",\"code\":\"rate_limit\"}}", -1, false,
         PL_OUT_RETRY_NOW, NULL},
        {409, "{\"error\":{\"type\":\"idempotency_error\",\"code\":\"idempotency_key_in_use\"}}",
         -1, false, PL_OUT_RETRY_NOW, "idempotency_error"},
        {400,
         "{\"error\":{\"type\":\"idempotency_error\",\"message\":\"Keys for idempotent "
         "requests can only be used with the same parameters\"}}",
         -1, false, PL_OUT_UNKNOWN, "idempotency_error"},
        {400,
         "{\"error\":{\"type\":\"invalid_request_error\",\"code\":\"resource_missing\","
         "\"param\":\"payment_method\"}}",
         -1, false, PL_OUT_DECLINED_HARD, "invalid_request_error"},
        {400, "{\"error\":{\"type\":\"invalid_request_error\",\"code\":\"parameter_unknown\"}}", -1,
         false, PL_OUT_HALT, "invalid_request_error"},
        {404, "{\"error\":{\"type\":\"invalid_request_error\",\"code\":\"resource_missing\"}}", -1,
         false, PL_OUT_DECLINED_HARD, "invalid_request_error"},
        {400, "not json", -1, false, PL_OUT_UNKNOWN, "unparseable_reply"},
        {500, "{\"error\":{\"type\":\"api_error\"}}", -1, false, PL_OUT_UNKNOWN, "api_error"},
        {500, "{\"error\":{\"type\":\"api_error\"}}", 1, false, PL_OUT_RETRY_NOW, "api_error"},
        {500, "{\"error\":{\"type\":\"api_error\"}}", 1, true, PL_OUT_UNKNOWN, "api_error"},
        {503, "", 0, false, PL_OUT_UNKNOWN, "api_error"},
        {424, "", 1, false, PL_OUT_RETRY_NOW, NULL},
        {302, "", -1, false, PL_OUT_UNKNOWN, "unexpected_status"},
    };
    for (size_t i = 0; i < PL_ARRAY_LEN(cases); i++) {
        struct pl_http_response r = reply(cases[i].status, cases[i].body);
        r.should_retry = cases[i].should_retry;
        r.replayed = cases[i].replayed;
        struct pl_gateway_result g = classify(PL_GW_CHARGE, &r);
        if (g.outcome != cases[i].want)
            fail_msg("case %zu (%ld): %s, want %s", i, cases[i].status, pl_outcome_name(g.outcome),
                     pl_outcome_name(cases[i].want));
        if (cases[i].error_type && strcmp(g.error_type, cases[i].error_type) != 0)
            fail_msg("case %zu: error_type %s, want %s", i, g.error_type, cases[i].error_type);
        assert_int_equal(g.http_status, cases[i].status);
        assert_int_equal(g.replayed, cases[i].replayed);
    }

    /* the decline's payment intent reference is kept */
    struct pl_http_response r = reply(402, cases[0].body);
    struct pl_gateway_result g = classify(PL_GW_CHARGE, &r);
    assert_string_equal(g.ref, "pi_9");
    assert_string_equal(g.decline_code, "insufficient_funds");
    assert_string_equal(g.message, "Your card has insufficient funds.");

    /* Retry-After travels into the result */
    r = reply(429, "");
    r.retry_after_ms = 2000;
    g = classify(PL_GW_CHARGE, &r);
    assert_int_equal(g.outcome, PL_OUT_RETRY_NOW);
    assert_int_equal(g.retry_after_ms, 2000);
}

static void test_classify_transport(void **state)
{
    struct pl_http_response r = reply(0, NULL);
    r.transport = PL_HTTP_NOT_SENT;
    r.err = -EIO;
    r.error = "Couldn't connect to server";
    struct pl_gateway_result g = classify(PL_GW_CHARGE, &r);
    assert_int_equal(g.outcome, PL_OUT_RETRY_NOW);
    assert_string_equal(g.error_type, "connect_failed");

    r.transport = PL_HTTP_MAYBE_SENT;
    r.err = PL_ETIMEOUT;
    g = classify(PL_GW_CHARGE, &r);
    assert_int_equal(g.outcome, PL_OUT_UNKNOWN);
    assert_string_equal(g.error_type, "timeout");

    r.err = -EIO;
    r.status = 200; /* headers came, then the connection broke */
    g = classify(PL_GW_CHARGE, &r);
    assert_int_equal(g.outcome, PL_OUT_UNKNOWN);
    assert_string_equal(g.error_type, "transport");

    r.err = PL_ECANCELED;
    g = classify(PL_GW_CHARGE, &r);
    assert_int_equal(g.outcome, PL_OUT_UNKNOWN);
    r.transport = PL_HTTP_NOT_SENT;
    g = classify(PL_GW_CHARGE, &r);
    assert_int_equal(g.outcome, PL_OUT_RETRY_NOW);
    assert_string_equal(g.error_type, "canceled");
}

static void test_classify_malformed(void **state)
{
    static const char *const bodies[] = {
        "",
        "not json",
        "[]",
        "null",
        "\"pi_1\"",
        "{",
        "{}",
        "{\"id\":5,\"status\":\"succeeded\"}",
        "{\"id\":\"pi_1\",\"status\":7}",
        "{\"id\":\"pi_1\"}",
        "{\"status\":\"succeeded\"}",
        "{\"id\":\"\",\"status\":\"succeeded\"}",
        "{\"id\":\"pi 1\",\"status\":\"succeeded\"}",
        "{\"id\":\"pi_1\",\"status\":\"succeeded\",\"id\":\"pi_2\"}", /* duplicate key */
        "{\"id\":\"pi_1\",\"status\":\"succeeded\"} trailing",
        "{\"error\":\"boom\"}",
        "\xff\xfe{}",
    };
    for (size_t i = 0; i < PL_ARRAY_LEN(bodies); i++) {
        struct pl_http_response r = reply(200, bodies[i]);
        struct pl_gateway_result g = classify(PL_GW_CHARGE, &r);
        if (g.outcome != PL_OUT_UNKNOWN)
            fail_msg("200 body %zu classified %s", i, pl_outcome_name(g.outcome));
        assert_string_equal(g.error_type, "unparseable_reply");
        for (int op = PL_GW_CHARGE; op <= PL_GW_REFUND; op++) {
            g = classify((enum pl_gateway_op_kind)op, &r);
            assert_int_equal(g.outcome, PL_OUT_UNKNOWN);
        }
    }
    /* wrong types are ignored, not trusted */
    struct pl_http_response r =
        reply(200, "{\"id\":\"pi_1\",\"status\":\"succeeded\",\"amount\":\"2500\","
                   "\"currency\":12,\"latest_charge\":[1],\"metadata\":\"x\"}");
    struct pl_gateway_result g = classify(PL_GW_CHARGE, &r);
    assert_int_equal(g.outcome, PL_OUT_SUCCEEDED);
    assert_int_equal(g.amount_minor, -1);
    assert_string_equal(g.currency, "");
    assert_string_equal(g.charge_ref, "");

    /* a reference too long for the result is dropped, not cut */
    char body[600];
    char id[300];
    memset(id, 'a', sizeof id - 1);
    id[sizeof id - 1] = 0;
    snprintf(body, sizeof body, "{\"id\":\"pi_%s\",\"status\":\"succeeded\"}", id);
    r = reply(200, body);
    g = classify(PL_GW_CHARGE, &r);
    assert_int_equal(g.outcome, PL_OUT_UNKNOWN);
    assert_string_equal(g.ref, "");

    /* truncated by the size cap */
    r = reply(200, PI_OK);
    r.body_truncated = true;
    g = classify(PL_GW_CHARGE, &r);
    assert_int_equal(g.outcome, PL_OUT_UNKNOWN);
    assert_string_equal(g.message, "reply too large");
}

static void test_classify_deep_and_huge(void **state)
{
    size_t n = 200000;
    char *deep = malloc(2 * n + 1);
    memset(deep, '[', n);
    memset(deep + n, ']', n);
    deep[2 * n] = 0;
    struct pl_http_response r = reply(200, deep);
    struct pl_gateway_result g = classify(PL_GW_CHARGE, &r);
    assert_int_equal(g.outcome, PL_OUT_UNKNOWN);
    /* nested objects inside an error reply */
    for (size_t i = 0; i < n; i++)
        deep[i] = '{';
    r = reply(402, deep);
    g = classify(PL_GW_CHARGE, &r);
    assert_int_equal(g.outcome, PL_OUT_DECLINED_SOFT); /* bare 402 */
    free(deep);

    /* a megabyte of whitespace around a valid reply, and a huge message */
    size_t big = 1024 * 1024;
    char *huge = malloc(big + 4096);
    memset(huge, ' ', big);
    strcpy(huge + big, PI_OK);
    r = reply(200, huge);
    g = classify(PL_GW_CHARGE, &r);
    assert_int_equal(g.outcome, PL_OUT_SUCCEEDED);
    free(huge);

    char *msg = malloc(big + 200);
    strcpy(msg,
           "{\"error\":{\"type\":\"card_error\",\"decline_code\":\"lost_card\",\"message\":\"");
    size_t at = strlen(msg);
    memset(msg + at, 'x', big);
    strcpy(msg + at + big, "\"}}");
    r = reply(402, msg);
    g = classify(PL_GW_CHARGE, &r);
    assert_int_equal(g.outcome, PL_OUT_DECLINED_HARD);
    assert_int_equal(strlen(g.message), sizeof g.message - 1);
    free(msg);
}

static void test_message_never_carries_a_key(void **state)
{
    struct pl_http_response r =
        reply(401, "{\"error\":{\"type\":\"invalid_request_error\",\"message\":\"Invalid API Key "
                   "provided: sk_test_abcdef123456 and rk_live_zz\\nsecond line\"}}");
    struct pl_gateway_result g = classify(PL_GW_CHARGE, &r);
    assert_int_equal(g.outcome, PL_OUT_HALT);
    assert_null(strstr(g.message, "sk_test"));
    assert_null(strstr(g.message, "abcdef"));
    assert_null(strstr(g.message, "rk_live"));
    assert_null(strchr(g.message, '\n'));
    assert_non_null(strstr(g.message, "[REDACTED]"));
}

static void test_classify_lookups(void **state)
{
    struct pl_gateway_result g;
    pl_gateway_result_init(&g, PL_GW_LOOKUP_KEY);
    strcpy(g.attempt_key, "pledged-1-1");
    struct pl_http_response r =
        reply(200, "{\"object\":\"search_result\",\"data\":[" PI_OK "],\"has_more\":false}");
    pl_stripe_classify(PL_GW_LOOKUP_KEY, &r, &g);
    assert_int_equal(g.outcome, PL_OUT_SUCCEEDED);
    assert_int_equal(g.matches, 1);
    assert_string_equal(g.ref, "pi_1");
    assert_string_equal(g.attempt_key, "pledged-1-1");

    /* a hit for another key does not count */
    pl_gateway_result_init(&g, PL_GW_LOOKUP_KEY);
    strcpy(g.attempt_key, "pledged-2-1");
    pl_stripe_classify(PL_GW_LOOKUP_KEY, &r, &g);
    assert_int_equal(g.outcome, PL_OUT_NOT_FOUND);
    assert_int_equal(g.matches, 0);

    /* several: a success wins */
    pl_gateway_result_init(&g, PL_GW_LOOKUP_KEY);
    strcpy(g.attempt_key, "pledged-1-1");
    r = reply(200,
              "{\"object\":\"search_result\",\"data\":[{\"id\":\"pi_0\",\"status\":"
              "\"requires_payment_method\",\"metadata\":{\"pledged_attempt\":\"pledged-1-1\"}},"
              "7," PI_OK "]}");
    pl_stripe_classify(PL_GW_LOOKUP_KEY, &r, &g);
    assert_int_equal(g.outcome, PL_OUT_SUCCEEDED);
    assert_int_equal(g.matches, 2);
    assert_string_equal(g.ref, "pi_1");

    r = reply(200, "{\"object\":\"search_result\",\"data\":[]}");
    g = classify(PL_GW_LOOKUP_KEY, &r);
    assert_int_equal(g.outcome, PL_OUT_NOT_FOUND);
    r = reply(200, "{\"object\":\"search_result\",\"data\":{}}");
    g = classify(PL_GW_LOOKUP_KEY, &r);
    assert_int_equal(g.outcome, PL_OUT_UNKNOWN);

    r = reply(404,
              "{\"error\":{\"type\":\"invalid_request_error\",\"code\":\"resource_missing\"}}");
    g = classify(PL_GW_LOOKUP_REF, &r);
    assert_int_equal(g.outcome, PL_OUT_NOT_FOUND);
    r = reply(400, "{\"error\":{\"type\":\"invalid_request_error\"}}");
    g = classify(PL_GW_LOOKUP_KEY, &r);
    assert_int_equal(g.outcome, PL_OUT_UNKNOWN);
    r = reply(200, PI_OK);
    g = classify(PL_GW_LOOKUP_REF, &r);
    assert_int_equal(g.outcome, PL_OUT_SUCCEEDED);
}

static void test_classify_refunds(void **state)
{
    struct {
        long status;
        const char *body;
        enum pl_outcome want;
    } cases[] = {
        {200,
         "{\"id\":\"re_1\",\"object\":\"refund\",\"status\":\"succeeded\",\"amount\":500,"
         "\"currency\":\"usd\",\"charge\":\"ch_1\"}",
         PL_OUT_SUCCEEDED},
        {200, "{\"id\":\"re_1\",\"status\":\"pending\"}", PL_OUT_SUCCEEDED},
        {200,
         "{\"id\":\"re_1\",\"status\":\"failed\",\"failure_reason\":\"expired_or_canceled_card\"}",
         PL_OUT_DECLINED_HARD},
        {200, "{\"id\":\"re_1\",\"status\":\"weird\"}", PL_OUT_UNKNOWN},
        {400,
         "{\"error\":{\"type\":\"invalid_request_error\",\"code\":\"charge_already_refunded\"}}",
         PL_OUT_DECLINED_HARD},
        {400, "{\"error\":{\"type\":\"invalid_request_error\",\"code\":\"amount_too_large\"}}",
         PL_OUT_DECLINED_HARD},
    };
    for (size_t i = 0; i < PL_ARRAY_LEN(cases); i++) {
        struct pl_http_response r = reply(cases[i].status, cases[i].body);
        struct pl_gateway_result g = classify(PL_GW_REFUND, &r);
        if (g.outcome != cases[i].want)
            fail_msg("refund case %zu: %s", i, pl_outcome_name(g.outcome));
    }
    struct pl_http_response r = reply(200, cases[0].body);
    struct pl_gateway_result g = classify(PL_GW_REFUND, &r);
    assert_string_equal(g.ref, "re_1");
    assert_string_equal(g.charge_ref, "ch_1");
    assert_int_equal(g.amount_minor, 500);
    assert_string_equal(g.object_status, "succeeded");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_outcome_names),
        cmocka_unit_test(test_decline_table_covers_reference),
        cmocka_unit_test(test_do_not_retry_list_is_never_soft),
        cmocka_unit_test(test_advice_code_is_strongest),
        cmocka_unit_test(test_error_code_and_type_defaults),
        cmocka_unit_test(test_form_escape),
        cmocka_unit_test(test_key_valid),
        cmocka_unit_test(test_charge_request),
        cmocka_unit_test(test_charge_request_refuses_bad_input),
        cmocka_unit_test(test_lookup_and_refund_requests),
        cmocka_unit_test(test_classify_success),
        cmocka_unit_test(test_classify_pi_statuses),
        cmocka_unit_test(test_classify_errors),
        cmocka_unit_test(test_classify_transport),
        cmocka_unit_test(test_classify_malformed),
        cmocka_unit_test(test_classify_deep_and_huge),
        cmocka_unit_test(test_message_never_carries_a_key),
        cmocka_unit_test(test_classify_lookups),
        cmocka_unit_test(test_classify_refunds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
