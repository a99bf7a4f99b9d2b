/*
 * stripe.c — the /v1 endpoints: PaymentIntents (create, retrieve, list,
 * search), refunds. Validation and error bodies follow Stripe's shapes;
 * outcomes come from the test payment-method tokens. Everything here runs
 * with gm_lock held and never blocks.
 */
#include "mock.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_AMOUNT_MINOR   99999999 /* Stripe: at most 8 digits */
#define MAX_METADATA_KEYS  50
#define MAX_METADATA_KEY   40
#define MAX_METADATA_VALUE 500
#define MAX_DESCRIPTION    1000
#define MAX_SD_SUFFIX      22
#define DEFAULT_LIST_LIMIT 10
#define MAX_LIST_LIMIT     100
#define MAX_QUERY_CLAUSES  10

static const struct gm_outcome outcomes[] = {
    {"pm_card_visa", "visa", "4242", NULL, NULL, NULL, NULL, false},
    {"pm_card_visa_debit", "visa", "5556", NULL, NULL, NULL, NULL, false},
    {"pm_card_mastercard", "mastercard", "4444", NULL, NULL, NULL, NULL, false},
    {"pm_card_amex", "amex", "8431", NULL, NULL, NULL, NULL, false},
    {"pm_card_chargeDeclined", "visa", "0002", "card_declined", "generic_decline", NULL,
     "Your card was declined.", false},
    {"pm_card_chargeDeclinedInsufficientFunds", "visa", "9995", "card_declined",
     "insufficient_funds", "try_again_later", "Your card has insufficient funds.", false},
    {"pm_card_visa_chargeDeclinedLostCard", "visa", "9987", "card_declined", "lost_card",
     "do_not_try_again", "Your card was declined.", false},
    {"pm_card_visa_chargeDeclinedStolenCard", "visa", "9979", "card_declined", "stolen_card",
     "do_not_try_again", "Your card was declined.", false},
    {"pm_card_chargeDeclinedExpiredCard", "visa", "0069", "expired_card", "expired_card", NULL,
     "Your card has expired.", false},
    {"pm_card_chargeDeclinedIncorrectCvc", "visa", "0127", "incorrect_cvc", "incorrect_cvc",
     "confirm_card_data", "Your card's security code is incorrect.", false},
    {"pm_card_chargeDeclinedFraudulent", "visa", "0019", "card_declined", "fraudulent",
     "do_not_try_again", "Your card was declined.", false},
    {"pm_card_chargeDeclinedProcessingError", "visa", "0119", "processing_error",
     "processing_error", "try_again_later",
     "An error occurred while processing your card. Try again in a little bit.", false},
    {"pm_card_chargeCustomerFail", "visa", "0341", "card_declined", "generic_decline", NULL,
     "Your card was declined.", false},
    {"pm_card_authenticationRequired", "visa", "3184", "authentication_required",
     "authentication_required", NULL,
     "Your card was declined. This transaction requires authentication.", true},
};

const struct gm_outcome *gm_outcome_for(const char *token)
{
    if (!token)
        return NULL;
    const char *sep = strstr(token, "__");
    size_t n = sep ? (size_t)(sep - token) : strlen(token);
    for (size_t i = 0; i < sizeof(outcomes) / sizeof(outcomes[0]); i++)
        if (strlen(outcomes[i].token) == n && strncmp(outcomes[i].token, token, n) == 0)
            return &outcomes[i];
    return NULL;
}

static const char *const currencies[] = {"usd", "eur", "gbp", "jpy", "cad", "aud", "nzd", "chf",
                                         "sek", "nok", "dkk", "pln", "czk", "huf", "ron", "bgn",
                                         "isk", "mxn", "brl", "inr", "sgd", "hkd", "krw", "zar",
                                         "ils", "aed", "thb", "myr", "php", "idr", "try", "bhd",
                                         "kwd", "jod", "omr", "tnd", "clp", "vnd", "ugx", NULL};

json_t *gm_error_json(const char *type, const char *code, const char *param, const char *msg)
{
    json_t *e = json_pack("{s:s, s:s}", "type", type, "message", msg);
    if (!e)
        return NULL;
    if (code) {
        json_object_set_new(e, "code", json_string(code));
        char url[160];
        snprintf(url, sizeof(url), "https://stripe.com/docs/error-codes/%s", code);
        json_object_set_new(e, "doc_url", json_string(url));
    }
    if (param)
        json_object_set_new(e, "param", json_string(param));
    return json_pack("{s:o}", "error", e);
}

static void fail(struct gm_api_result *out, unsigned status, const char *code, const char *param,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void fail(struct gm_api_result *out, unsigned status, const char *code, const char *param,
                 const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    out->status = status;
    out->body = gm_error_json("invalid_request_error", code, param, msg);
    out->executed = false;
}

/* ---- parameter helpers ------------------------------------------------- */

static bool has_prefix(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

/* "name[]" or "name[<digits>]" */
static bool is_array_param(const char *key, const char *name)
{
    size_t n = strlen(name);
    if (strncmp(key, name, n) != 0 || key[n] != '[')
        return false;
    const char *p = key + n + 1;
    while (isdigit((unsigned char)*p))
        p++;
    return p[0] == ']' && p[1] == '\0';
}

/* Unknown parameters are an error, as with Stripe. Returns the first unknown
 * key or NULL. */
static const char *unknown_param(const struct gm_form *p, const char *const *known,
                                 const char *const *arrays, bool metadata)
{
    for (size_t i = 0; i < p->n; i++) {
        const char *k = p->v[i].key;
        bool ok = false;
        for (const char *const *q = known; *q && !ok; q++)
            ok = strcmp(k, *q) == 0;
        for (const char *const *q = arrays; *q && !ok; q++)
            ok = is_array_param(k, *q);
        if (!ok && metadata && (has_prefix(k, "metadata[") || strcmp(k, "metadata") == 0))
            ok = true;
        if (!ok)
            return k;
    }
    return NULL;
}

/* Strict non-negative integer; false on anything else or overflow. */
static bool parse_int(const char *s, int64_t *out)
{
    if (!s || !*s || strlen(s) > 18)
        return false;
    int64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (!isdigit((unsigned char)*p))
            return false;
        v = v * 10 + (*p - '0');
    }
    *out = v;
    return true;
}

/* -1 invalid, 0 false, 1 true */
static int parse_bool(const char *s)
{
    if (strcmp(s, "true") == 0)
        return 1;
    if (strcmp(s, "false") == 0)
        return 0;
    return -1;
}

static bool parse_metadata(const struct gm_form *p, json_t *md, struct gm_api_result *out)
{
    for (size_t i = 0; i < p->n; i++) {
        const char *k = p->v[i].key, *v = p->v[i].val;
        if (strcmp(k, "metadata") == 0) {
            if (*v) {
                fail(out, 400, "parameter_invalid_string", "metadata",
                     "Invalid metadata: metadata must be a set of key-value pairs");
                return false;
            }
            continue;
        }
        if (!has_prefix(k, "metadata["))
            continue;
        size_t kl = strlen(k);
        if (kl < 11 || k[kl - 1] != ']' || strchr(k + 9, '[')) {
            fail(out, 400, "parameter_invalid_string", k, "Invalid metadata key: %s", k);
            return false;
        }
        char key[64];
        size_t inner = kl - 10;
        if (inner > MAX_METADATA_KEY) {
            fail(out, 400, "parameter_invalid_string", k,
                 "Metadata keys can have up to %d characters", MAX_METADATA_KEY);
            return false;
        }
        memcpy(key, k + 9, inner);
        key[inner] = '\0';
        if (strlen(v) > MAX_METADATA_VALUE) {
            fail(out, 400, "parameter_invalid_string", k,
                 "Metadata values can have up to %d characters", MAX_METADATA_VALUE);
            return false;
        }
        if (*v == '\0') {
            json_object_del(md, key);
            continue;
        }
        json_object_set_new(md, key, json_string(v));
        if (json_object_size(md) > MAX_METADATA_KEYS) {
            fail(out, 400, "parameter_invalid_string", "metadata",
                 "You can have up to %d metadata keys", MAX_METADATA_KEYS);
            return false;
        }
    }
    return true;
}

static bool valid_currency(const char *in, char out[4])
{
    if (strlen(in) != 3)
        return false;
    for (int i = 0; i < 3; i++) {
        if (!isalpha((unsigned char)in[i]))
            return false;
        out[i] = (char)tolower((unsigned char)in[i]);
    }
    out[3] = '\0';
    for (const char *const *c = currencies; *c; c++)
        if (strcmp(*c, out) == 0)
            return true;
    return false;
}

static bool check_amount(const char *s, const char *param, int64_t *amount,
                         struct gm_api_result *out)
{
    if (!parse_int(s, amount)) {
        fail(out, 400, "parameter_invalid_integer", param, "Invalid integer: %s", s);
        return false;
    }
    if (*amount < 1) {
        fail(out, 400, "amount_too_small", param, "Amount must be at least 1 (minor units)");
        return false;
    }
    if (*amount > MAX_AMOUNT_MINOR) {
        fail(out, 400, "amount_too_large", param, "Amount must be no more than %d",
             MAX_AMOUNT_MINOR);
        return false;
    }
    return true;
}

static char *dup_opt(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* ---- POST /v1/payment_intents ------------------------------------------ */

static void create_pi(const struct gm_form *p, const char *idem_key, const char *request_id,
                      struct gm_api_result *out)
{
    static const char *const known[] = {"amount",
                                        "currency",
                                        "customer",
                                        "payment_method",
                                        "confirm",
                                        "off_session",
                                        "description",
                                        "statement_descriptor_suffix",
                                        "statement_descriptor",
                                        "return_url",
                                        "receipt_email",
                                        "capture_method",
                                        "confirmation_method",
                                        "setup_future_usage",
                                        "error_on_requires_action",
                                        "automatic_payment_methods[enabled]",
                                        "automatic_payment_methods[allow_redirects]",
                                        NULL};
    static const char *const arrays[] = {"payment_method_types", "expand", NULL};

    const char *bad = unknown_param(p, known, arrays, true);
    if (bad) {
        fail(out, 400, "parameter_unknown", bad, "Received unknown parameter: %s", bad);
        return;
    }
    const char *s_amount = gm_form_get(p, "amount");
    const char *s_currency = gm_form_get(p, "currency");
    const char *customer = gm_form_get(p, "customer");
    const char *pm = gm_form_get(p, "payment_method");
    const char *s_confirm = gm_form_get(p, "confirm");
    const char *s_off = gm_form_get(p, "off_session");
    const char *description = gm_form_get(p, "description");
    const char *suffix = gm_form_get(p, "statement_descriptor_suffix");
    const char *capture = gm_form_get(p, "capture_method");
    const char *redirects = gm_form_get(p, "automatic_payment_methods[allow_redirects]");
    int64_t amount;
    char currency[4];

    if (!s_amount) {
        fail(out, 400, "parameter_missing", "amount", "Missing required param: amount.");
        return;
    }
    if (!check_amount(s_amount, "amount", &amount, out))
        return;
    if (!s_currency) {
        fail(out, 400, "parameter_missing", "currency", "Missing required param: currency.");
        return;
    }
    if (!valid_currency(s_currency, currency)) {
        fail(out, 400, "parameter_invalid_string", "currency", "Invalid currency: %s.", s_currency);
        return;
    }
    int confirm = 0, off = 0;
    if (s_confirm && (confirm = parse_bool(s_confirm)) < 0) {
        fail(out, 400, "parameter_invalid_boolean", "confirm", "Invalid boolean: %s", s_confirm);
        return;
    }
    if (s_off) {
        if (strcmp(s_off, "one_off") == 0 || strcmp(s_off, "recurring") == 0)
            off = 1;
        else if ((off = parse_bool(s_off)) < 0) {
            fail(out, 400, "parameter_invalid_boolean", "off_session", "Invalid boolean: %s",
                 s_off);
            return;
        }
    }
    if (off && !confirm) {
        fail(out, 400, "parameter_invalid_boolean", "off_session",
             "The parameter off_session can only be used when confirm=true.");
        return;
    }
    if (gm_form_get(p, "statement_descriptor")) {
        fail(out, 400, "parameter_unknown", "statement_descriptor",
             "The `statement_descriptor` parameter is not supported for the `card` payment "
             "method type. Use `statement_descriptor_suffix` instead.");
        return;
    }
    if (suffix) {
        size_t n = strlen(suffix);
        bool letter = false, forbidden = false;
        for (const char *c = suffix; *c; c++) {
            letter |= isalpha((unsigned char)*c) != 0;
            forbidden |= strchr("<>\\'\"*", *c) != NULL;
        }
        if (n == 0 || n > MAX_SD_SUFFIX || !letter || forbidden) {
            fail(out, 400, "parameter_invalid_string", "statement_descriptor_suffix",
                 "Invalid statement_descriptor_suffix: at most %d characters, at least one "
                 "letter, none of < > \\ ' \" *",
                 MAX_SD_SUFFIX);
            return;
        }
    }
    if (description && strlen(description) > MAX_DESCRIPTION) {
        fail(out, 400, "parameter_invalid_string", "description",
             "description can have up to %d characters", MAX_DESCRIPTION);
        return;
    }
    if (capture && strcmp(capture, "automatic") != 0 && strcmp(capture, "automatic_async") != 0) {
        fail(out, 400, "parameter_invalid_string", "capture_method",
             "The mock only supports capture_method=automatic.");
        return;
    }
    bool have_types = false;
    for (size_t i = 0; i < p->n; i++) {
        if (is_array_param(p->v[i].key, "payment_method_types")) {
            have_types = true;
            if (strcmp(p->v[i].val, "card") != 0) {
                fail(out, 400, "payment_intent_invalid_parameter", "payment_method_types",
                     "The payment method type \"%s\" is invalid. This mock supports only "
                     "card.",
                     p->v[i].val);
                return;
            }
        }
    }
    if (customer && !has_prefix(customer, "cus_")) {
        fail(out, 400, "resource_missing", "customer", "No such customer: '%s'", customer);
        return;
    }
    const struct gm_outcome *o = NULL;
    if (pm) {
        o = gm_outcome_for(pm);
        if (!o) {
            fail(out, 400, "resource_missing", "payment_method", "No such PaymentMethod: '%s'", pm);
            return;
        }
    }
    if (confirm && !pm) {
        fail(out, 400, "payment_intent_unexpected_state", "payment_method",
             "You cannot confirm this PaymentIntent because it's missing a payment method.");
        return;
    }
    if (confirm && !have_types && !gm_form_get(p, "return_url") &&
        !(redirects && strcmp(redirects, "never") == 0)) {
        fail(out, 400, "parameter_missing", "return_url",
             "This PaymentIntent is configured to accept payment methods enabled in your "
             "Dashboard. Because some of these payment methods might redirect your customer off "
             "of your page, you must provide a `return_url`. If you don't want to accept "
             "redirect-based payment methods, set `automatic_payment_methods[enabled]` to "
             "`true` and `automatic_payment_methods[allow_redirects]` to `never`.");
        return;
    }
    json_t *md = json_object();
    if (!md || !parse_metadata(p, md, out)) {
        json_decref(md);
        if (!out->body)
            fail(out, 500, NULL, NULL, "out of memory");
        return;
    }

    /* Validated: from here on the request executes (and is saved). */
    struct gm_pi *pi = gm_pi_new();
    if (!pi) {
        json_decref(md);
        fail(out, 500, NULL, NULL, "out of memory");
        return;
    }
    json_decref(pi->metadata);
    pi->metadata = md;
    pi->amount = amount;
    memcpy(pi->currency, currency, sizeof(pi->currency));
    pi->customer = dup_opt(customer);
    pi->payment_method = dup_opt(pm);
    pi->pm_used = dup_opt(pm);
    pi->description = dup_opt(description);
    pi->sd_suffix = dup_opt(suffix);
    pi->idem_key = dup_opt(idem_key);
    pi->request_id = dup_opt(request_id);
    out->executed = true;
    snprintf(out->obj_id, sizeof(out->obj_id), "%s", pi->id);

    if (!confirm) {
        snprintf(pi->status, sizeof(pi->status), "%s",
                 pm ? "requires_confirmation" : "requires_payment_method");
    } else if (!o->code) {
        pi->confirmed = true;
        gm_rand_id(GM_RNG_IDS, pi->charge_id, "ch_", 24);
        snprintf(pi->status, sizeof(pi->status), "succeeded");
        pi->amount_received = amount;
    } else if (o->auth_required && !off) {
        /* on-session: the donor would complete 3-D Secure in a browser */
        pi->confirmed = true;
        snprintf(pi->status, sizeof(pi->status), "requires_action");
        pi->next_action = json_pack("{s:s, s:{s:s}}", "type", "use_stripe_sdk", "use_stripe_sdk",
                                    "type", "three_d_secure_redirect");
    } else {
        pi->confirmed = true;
        gm_rand_id(GM_RNG_IDS, pi->charge_id, "ch_", 24);
        snprintf(pi->status, sizeof(pi->status), "requires_payment_method");
        /* Stripe detaches the failed method from the PaymentIntent */
        free(pi->payment_method);
        pi->payment_method = NULL;
        json_t *lpe = json_pack("{s:s, s:s, s:s, s:s, s:s, s:{s:s, s:s, s:s, s:{s:s, s:s}}}",
                                "type", "card_error", "code", o->code, "decline_code",
                                o->decline_code, "message", o->message, "charge", pi->charge_id,
                                "payment_method", "id", pm, "object", "payment_method", "type",
                                "card", "card", "brand", o->brand, "last4", o->last4);
        if (lpe && o->advice_code)
            json_object_set_new(lpe, "advice_code", json_string(o->advice_code));
        pi->last_payment_error = lpe;
    }
    if (gm_pi_index_charge(pi) < 0) {
        fail(out, 500, NULL, NULL, "out of memory");
        out->executed = true;
        return;
    }
    gm_pi_persist(pi);

    json_t *body = gm_pi_json(pi);
    if (pi->last_payment_error) {
        json_t *err = json_deep_copy(pi->last_payment_error);
        if (err && body) {
            json_object_set_new(err, "payment_intent", body);
            body = json_pack("{s:o}", "error", err);
        } else {
            json_decref(err);
            json_decref(body);
            body = NULL;
        }
        out->status = 402;
        out->should_retry = 0;
    } else {
        out->status = 200;
    }
    out->body = body;
    if (!out->body)
        fail(out, 500, NULL, NULL, "out of memory");
    out->executed = true;
}

/* ---- GET /v1/payment_intents/{id} -------------------------------------- */

static void get_pi(const char *id, struct gm_api_result *out)
{
    struct gm_pi *pi = gm_pi_find(id);
    if (!pi) {
        fail(out, 404, "resource_missing", "intent", "No such payment_intent: '%s'", id);
        return;
    }
    out->status = 200;
    out->body = gm_pi_json(pi);
}

static bool parse_limit(const struct gm_form *p, size_t *limit, struct gm_api_result *out)
{
    const char *s = gm_form_get(p, "limit");
    int64_t v = DEFAULT_LIST_LIMIT;
    if (s && (!parse_int(s, &v) || v < 1 || v > MAX_LIST_LIMIT)) {
        fail(out, 400, "parameter_invalid_integer", "limit",
             "Invalid limit: must be an integer between 1 and %d", MAX_LIST_LIMIT);
        return false;
    }
    *limit = (size_t)v;
    return true;
}

/* ---- GET /v1/payment_intents ------------------------------------------- */

static void list_pi(const struct gm_form *p, struct gm_api_result *out)
{
    static const char *const known[] = {"customer",    "limit",        "starting_after",
                                        "created",     "created[gt]",  "created[gte]",
                                        "created[lt]", "created[lte]", NULL};
    static const char *const arrays[] = {"expand", NULL};
    const char *bad = unknown_param(p, known, arrays, false);
    if (bad) {
        fail(out, 400, "parameter_unknown", bad, "Received unknown parameter: %s", bad);
        return;
    }
    size_t limit;
    if (!parse_limit(p, &limit, out))
        return;
    const char *customer = gm_form_get(p, "customer");
    const char *after = gm_form_get(p, "starting_after");
    static const char *const cnames[] = {"created", "created[gt]", "created[gte]", "created[lt]",
                                         "created[lte]"};
    int64_t cval[5];
    bool cset[5];
    for (int i = 0; i < 5; i++) {
        const char *s = gm_form_get(p, cnames[i]);
        cset[i] = s != NULL;
        if (s && !parse_int(s, &cval[i])) {
            fail(out, 400, "parameter_invalid_integer", cnames[i], "Invalid integer: %s", s);
            return;
        }
    }
    size_t start = gm_pi_count();
    if (after) {
        struct gm_pi *ap = gm_pi_find(after);
        if (!ap) {
            fail(out, 400, "resource_missing", "starting_after", "No such payment_intent: '%s'",
                 after);
            return;
        }
        for (size_t i = 0; i < gm_pi_count(); i++)
            if (gm_pi_at(i) == ap)
                start = i;
    }
    json_t *data = json_array();
    bool more = false;
    for (size_t i = start; i > 0 && data; i--) {
        struct gm_pi *pi = gm_pi_at(i - 1);
        int64_t c = pi->created_ms / 1000;
        if (customer && (!pi->customer || strcmp(pi->customer, customer) != 0))
            continue;
        if ((cset[0] && c != cval[0]) || (cset[1] && !(c > cval[1])) ||
            (cset[2] && !(c >= cval[2])) || (cset[3] && !(c < cval[3])) ||
            (cset[4] && !(c <= cval[4])))
            continue;
        if (json_array_size(data) == limit) {
            more = true;
            break;
        }
        json_array_append_new(data, gm_pi_json(pi));
    }
    out->status = 200;
    out->body = json_pack("{s:s, s:o, s:b, s:s}", "object", "list", "data", data, "has_more", more,
                          "url", "/v1/payment_intents");
}

/* ---- GET /v1/payment_intents/search ------------------------------------ */

enum qfield { Q_METADATA, Q_STATUS, Q_CUSTOMER, Q_CURRENCY, Q_AMOUNT, Q_CREATED };
enum qop { Q_EQ, Q_GT, Q_GE, Q_LT, Q_LE };

struct clause {
    enum qfield field;
    enum qop op;
    bool neg;
    char key[MAX_METADATA_KEY + 1];
    char val[MAX_METADATA_VALUE + 1];
    int64_t num;
};

static void skip_ws(const char **s)
{
    while (**s == ' ' || **s == '\t')
        (*s)++;
}

/* A quoted string, '…' or "…", backslash escaping the quote. */
static bool parse_quoted(const char **s, char *out, size_t cap)
{
    char q = **s;
    if (q != '\'' && q != '"')
        return false;
    const char *p = *s + 1;
    size_t n = 0;
    while (*p && *p != q) {
        if (*p == '\\' && p[1])
            p++;
        if (n + 1 >= cap)
            return false;
        out[n++] = *p++;
    }
    if (*p != q)
        return false;
    out[n] = '\0';
    *s = p + 1;
    return true;
}

/* Parses Stripe's search query language (the subset PaymentIntents need).
 * Returns the number of clauses, or -1 with a message in err. */
static int parse_query(const char *q, struct clause *cl, bool *is_or, char *err, size_t errlen)
{
    int n = 0;
    int conj = 0; /* 0 none yet, 1 AND, 2 OR */
    const char *s = q;
    skip_ws(&s);
    if (!*s) {
        snprintf(err, errlen, "Search query is empty.");
        return -1;
    }
    for (;;) {
        if (n == MAX_QUERY_CLAUSES) {
            snprintf(err, errlen, "Search queries can have at most %d clauses.", MAX_QUERY_CLAUSES);
            return -1;
        }
        struct clause *c = &cl[n];
        memset(c, 0, sizeof(*c));
        if (*s == '-') {
            c->neg = true;
            s++;
        }
        char field[32];
        size_t fl = 0;
        while ((islower((unsigned char)*s) || *s == '_') && fl + 1 < sizeof(field))
            field[fl++] = *s++;
        field[fl] = '\0';
        if (strcmp(field, "metadata") == 0) {
            c->field = Q_METADATA;
            if (*s != '[') {
                snprintf(err, errlen, "Expected [ after metadata at position %d.", (int)(s - q));
                return -1;
            }
            s++;
            if (!parse_quoted(&s, c->key, sizeof(c->key)) || *s != ']') {
                snprintf(err, errlen, "Invalid metadata key at position %d: use metadata['key'].",
                         (int)(s - q));
                return -1;
            }
            s++;
        } else if (strcmp(field, "status") == 0) {
            c->field = Q_STATUS;
        } else if (strcmp(field, "customer") == 0) {
            c->field = Q_CUSTOMER;
        } else if (strcmp(field, "currency") == 0) {
            c->field = Q_CURRENCY;
        } else if (strcmp(field, "amount") == 0) {
            c->field = Q_AMOUNT;
        } else if (strcmp(field, "created") == 0) {
            c->field = Q_CREATED;
        } else {
            snprintf(err, errlen, "Field '%s' is not supported for search on payment_intents.",
                     field);
            return -1;
        }
        if (*s == ':') {
            c->op = Q_EQ;
            s++;
        } else if (s[0] == '>' && s[1] == '=') {
            c->op = Q_GE;
            s += 2;
        } else if (s[0] == '<' && s[1] == '=') {
            c->op = Q_LE;
            s += 2;
        } else if (*s == '>') {
            c->op = Q_GT;
            s++;
        } else if (*s == '<') {
            c->op = Q_LT;
            s++;
        } else {
            snprintf(err, errlen, "Expected an operator (:, >, <, >=, <=) at position %d.",
                     (int)(s - q));
            return -1;
        }
        bool numeric = c->field == Q_AMOUNT || c->field == Q_CREATED;
        if (numeric) {
            char num[24];
            size_t nl = 0;
            if (*s == '\'' || *s == '"') {
                if (!parse_quoted(&s, num, sizeof(num)))
                    nl = sizeof(num);
                else
                    nl = strlen(num);
            } else {
                while (isdigit((unsigned char)*s) && nl + 1 < sizeof(num))
                    num[nl++] = *s++;
                num[nl < sizeof(num) ? nl : 0] = '\0';
            }
            if (nl == 0 || nl >= sizeof(num) || !parse_int(num, &c->num)) {
                snprintf(err, errlen, "Expected an integer value at position %d.", (int)(s - q));
                return -1;
            }
        } else {
            if (c->op != Q_EQ) {
                snprintf(err, errlen, "Comparison operators apply only to numeric fields.");
                return -1;
            }
            if (!parse_quoted(&s, c->val, sizeof(c->val))) {
                snprintf(err, errlen, "Expected a quoted string value at position %d.",
                         (int)(s - q));
                return -1;
            }
        }
        n++;
        if (*s && *s != ' ' && *s != '\t') {
            snprintf(err, errlen, "Unexpected character '%c' at position %d.", *s, (int)(s - q));
            return -1;
        }
        skip_ws(&s);
        if (!*s)
            break;
        int this_conj;
        if (strncmp(s, "AND", 3) == 0 && (s[3] == ' ' || s[3] == '\t'))
            this_conj = 1;
        else if (strncmp(s, "OR", 2) == 0 && (s[2] == ' ' || s[2] == '\t'))
            this_conj = 2;
        else {
            snprintf(err, errlen, "Expected AND or OR at position %d.", (int)(s - q));
            return -1;
        }
        if (conj && conj != this_conj) {
            snprintf(err, errlen, "Queries cannot mix AND and OR.");
            return -1;
        }
        conj = this_conj;
        s += this_conj == 1 ? 3 : 2;
        skip_ws(&s);
        if (!*s) {
            snprintf(err, errlen, "Query ends after a conjunction.");
            return -1;
        }
    }
    *is_or = conj == 2;
    return n;
}

static bool cmp_num(int64_t have, enum qop op, int64_t want)
{
    switch (op) {
    case Q_EQ:
        return have == want;
    case Q_GT:
        return have > want;
    case Q_GE:
        return have >= want;
    case Q_LT:
        return have < want;
    case Q_LE:
        return have <= want;
    }
    return false;
}

static bool clause_matches(const struct clause *c, const struct gm_pi *pi)
{
    bool m = false;
    const char *s;
    switch (c->field) {
    case Q_METADATA:
        s = json_string_value(json_object_get(pi->metadata, c->key));
        m = s && strcmp(s, c->val) == 0;
        break;
    case Q_STATUS:
        m = strcmp(pi->status, c->val) == 0;
        break;
    case Q_CUSTOMER:
        m = pi->customer && strcmp(pi->customer, c->val) == 0;
        break;
    case Q_CURRENCY:
        m = strcasecmp(pi->currency, c->val) == 0;
        break;
    case Q_AMOUNT:
        m = cmp_num(pi->amount, c->op, c->num);
        break;
    case Q_CREATED:
        m = cmp_num(pi->created_ms / 1000, c->op, c->num);
        break;
    }
    return c->neg ? !m : m;
}

static void search_pi(const struct gm_form *p, struct gm_api_result *out)
{
    static const char *const known[] = {"query", "limit", "page", NULL};
    static const char *const arrays[] = {"expand", NULL};
    const char *bad = unknown_param(p, known, arrays, false);
    if (bad) {
        fail(out, 400, "parameter_unknown", bad, "Received unknown parameter: %s", bad);
        return;
    }
    const char *q = gm_form_get(p, "query");
    if (!q) {
        fail(out, 400, "parameter_missing", "query", "Missing required param: query.");
        return;
    }
    const char *page = gm_form_get(p, "page");
    if (page && *page) {
        fail(out, 400, "parameter_invalid_string", "page",
             "The mock returns every match on the first page; page is not supported.");
        return;
    }
    size_t limit;
    if (!parse_limit(p, &limit, out))
        return;
    struct clause cl[MAX_QUERY_CLAUSES];
    bool is_or = false;
    char err[256];
    int n = parse_query(q, cl, &is_or, err, sizeof(err));
    if (n < 0) {
        fail(out, 400, "parameter_invalid_string", "query", "Invalid search query: %s", err);
        return;
    }
    int64_t visible_before = gm_now_ms() - gm_config_search_lag_ms();
    json_t *data = json_array();
    bool more = false;
    for (size_t i = gm_pi_count(); i > 0 && data; i--) {
        struct gm_pi *pi = gm_pi_at(i - 1);
        if (gm_config_search_lag_ms() > 0 && pi->created_ms > visible_before)
            continue;
        bool m = !is_or;
        for (int k = 0; k < n; k++) {
            bool cm = clause_matches(&cl[k], pi);
            m = is_or ? (m || cm) : (m && cm);
        }
        if (!m)
            continue;
        if (json_array_size(data) == limit) {
            more = true;
            break;
        }
        json_array_append_new(data, gm_pi_json(pi));
    }
    out->status = 200;
    out->body = json_pack("{s:s, s:o, s:b, s:n, s:s}", "object", "search_result", "data", data,
                          "has_more", more, "next_page", "url", "/v1/payment_intents/search");
}

/* ---- POST /v1/refunds -------------------------------------------------- */

static void create_refund(const struct gm_form *p, const char *idem_key, struct gm_api_result *out)
{
    static const char *const known[] = {"payment_intent", "charge", "amount", "reason", NULL};
    static const char *const arrays[] = {"expand", NULL};
    const char *bad = unknown_param(p, known, arrays, true);
    if (bad) {
        fail(out, 400, "parameter_unknown", bad, "Received unknown parameter: %s", bad);
        return;
    }
    const char *pid = gm_form_get(p, "payment_intent");
    const char *chid = gm_form_get(p, "charge");
    const char *s_amount = gm_form_get(p, "amount");
    const char *reason = gm_form_get(p, "reason");
    struct gm_pi *pi;
    if (!pid && !chid) {
        fail(out, 400, "parameter_missing", "payment_intent",
             "One of `charge` or `payment_intent` is required.");
        return;
    }
    if (pid) {
        pi = gm_pi_find(pid);
        if (!pi) {
            fail(out, 400, "resource_missing", "payment_intent", "No such payment_intent: '%s'",
                 pid);
            return;
        }
    } else {
        pi = gm_pi_find_by_charge(chid);
        if (!pi) {
            fail(out, 400, "resource_missing", "charge", "No such charge: '%s'", chid);
            return;
        }
    }
    if (reason && strcmp(reason, "requested_by_customer") != 0 &&
        strcmp(reason, "duplicate") != 0 && strcmp(reason, "fraudulent") != 0) {
        fail(out, 400, "parameter_invalid_string", "reason",
             "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer");
        return;
    }
    if (strcmp(pi->status, "succeeded") != 0) {
        fail(out, 400, "payment_intent_unexpected_state", pid ? "payment_intent" : "charge",
             "This PaymentIntent (%s) does not have a successful charge to refund.", pi->id);
        return;
    }
    int64_t remaining = pi->amount_received - pi->amount_refunded;
    if (remaining <= 0) {
        fail(out, 400, "charge_already_refunded", NULL, "Charge %s has already been refunded.",
             pi->charge_id);
        return;
    }
    int64_t amount = remaining;
    if (s_amount) {
        if (!check_amount(s_amount, "amount", &amount, out))
            return;
        if (amount > remaining) {
            fail(out, 400, "amount_too_large", "amount",
                 "Refund amount (%lld) is greater than unrefunded amount on charge (%lld)",
                 (long long)amount, (long long)remaining);
            return;
        }
    }
    json_t *md = json_object();
    if (!md || !parse_metadata(p, md, out)) {
        json_decref(md);
        if (!out->body)
            fail(out, 500, NULL, NULL, "out of memory");
        return;
    }
    struct gm_refund *r = gm_refund_new(pi, amount, reason, idem_key, "api", md);
    json_decref(md);
    if (!r) {
        fail(out, 500, NULL, NULL, "out of memory");
        return;
    }
    out->executed = true;
    snprintf(out->obj_id, sizeof(out->obj_id), "%s", r->id);
    out->status = 200;
    out->body = gm_refund_json(r);
}

static void get_refund(const char *id, struct gm_api_result *out)
{
    struct gm_refund *r = gm_refund_find(id);
    if (!r) {
        fail(out, 404, "resource_missing", "id", "No such refund: '%s'", id);
        return;
    }
    out->status = 200;
    out->body = gm_refund_json(r);
}

/* ---- routing ----------------------------------------------------------- */

/* "/v1/payment_intents/<id>" → id (no further '/'), else NULL */
static const char *path_id(const char *path, const char *prefix)
{
    if (!has_prefix(path, prefix))
        return NULL;
    const char *id = path + strlen(prefix);
    return *id && !strchr(id, '/') ? id : NULL;
}

char *gm_api_token(const char *method, const char *path, const struct gm_form *params)
{
    const char *tok = NULL;
    struct gm_pi *pi = NULL;
    const char *id;
    if (strcmp(path, "/v1/payment_intents") == 0 && strcmp(method, "POST") == 0) {
        tok = gm_form_get(params, "payment_method");
    } else if (strcmp(path, "/v1/refunds") == 0) {
        const char *pid = gm_form_get(params, "payment_intent");
        const char *ch = gm_form_get(params, "charge");
        pi = pid ? gm_pi_find(pid) : ch ? gm_pi_find_by_charge(ch) : NULL;
    } else if ((id = path_id(path, "/v1/payment_intents/")) && strcmp(id, "search") != 0) {
        pi = gm_pi_find(id);
    }
    if (pi)
        tok = pi->pm_used;
    return tok ? strdup(tok) : NULL;
}

void gm_api_dispatch(const char *method, const char *path, const struct gm_form *params,
                     const char *idem_key, const char *request_id, struct gm_api_result *out)
{
    const char *id;
    bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
    out->should_retry = -1;
    out->executed = false;
    out->obj_id[0] = '\0';
    if (post && strcmp(path, "/v1/payment_intents") == 0)
        create_pi(params, idem_key, request_id, out);
    else if (get && strcmp(path, "/v1/payment_intents") == 0)
        list_pi(params, out);
    else if (get && strcmp(path, "/v1/payment_intents/search") == 0)
        search_pi(params, out);
    else if (get && (id = path_id(path, "/v1/payment_intents/")))
        get_pi(id, out);
    else if (post && strcmp(path, "/v1/refunds") == 0)
        create_refund(params, idem_key, out);
    else if (get && (id = path_id(path, "/v1/refunds/")))
        get_refund(id, out);
    else
        fail(out, 404, NULL, NULL,
             "Unrecognized request URL (%s: %s). The mock implements payment_intents and "
             "refunds.",
             method, path);
    if (!out->body) {
        out->status = 500;
        out->body = gm_error_json("api_error", NULL, NULL, "out of memory");
    }
}
