/*
 * webhook — Stripe-Signature verification and event parsing (see webhook.h).
 */
#include "webhook.h"

#include <ctype.h>
#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define SHA256_HEX_LEN 64
/* More v1 entries than this is not a key rotation but an attack on our CPU. */
#define MAX_SIGNATURES 16
/* Seconds since the epoch fit in 12 digits until the year 33658. */
#define MAX_T_DIGITS   12
#define MAX_JSON_DEPTH 32

const char *pl_webhook_verdict_name(enum pl_webhook_verdict v)
{
    switch (v) {
    case PL_WEBHOOK_VALID:
        return "valid";
    case PL_WEBHOOK_MALFORMED:
        return "malformed signature header";
    case PL_WEBHOOK_NO_SIGNATURE:
        return "no v1 signature";
    case PL_WEBHOOK_TOO_OLD:
        return "timestamp too old";
    case PL_WEBHOOK_TOO_NEW:
        return "timestamp in the future";
    case PL_WEBHOOK_MISMATCH:
        return "signature mismatch";
    }
    return "?";
}

/* ---- signature ------------------------------------------------------------ */

int pl_webhook_sign(const char *secret, int64_t t, const char *body, size_t body_len, char hex[65])
{
    if (!secret || !*secret || t < 0 || (!body && body_len))
        return PL_EINVAL;
    char prefix[32];
    int plen = snprintf(prefix, sizeof(prefix), "%lld.", (long long)t);
    unsigned char mac[EVP_MAX_MD_SIZE];
    size_t maclen = 0;
    int rc = PL_EINVAL;
    EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = m ? EVP_MAC_CTX_new(m) : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (!ctx || !EVP_MAC_init(ctx, (const unsigned char *)secret, strlen(secret), params) ||
        !EVP_MAC_update(ctx, (const unsigned char *)prefix, (size_t)plen) ||
        (body_len && !EVP_MAC_update(ctx, (const unsigned char *)body, body_len)) ||
        !EVP_MAC_final(ctx, mac, &maclen, sizeof(mac)) || maclen * 2 != SHA256_HEX_LEN)
        goto out;
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < maclen; i++) {
        hex[2 * i] = digits[mac[i] >> 4];
        hex[2 * i + 1] = digits[mac[i] & 0xf];
    }
    hex[SHA256_HEX_LEN] = '\0';
    rc = 0;
out:
    OPENSSL_cleanse(mac, sizeof(mac));
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(m);
    return rc;
}

struct sig_header {
    int64_t t;
    bool have_t;
    size_t nsig;
    const char *sig[MAX_SIGNATURES];
    size_t sig_len[MAX_SIGNATURES];
};

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* "t=1,v1=ab,v0=cd": items split at ',', each key=value, blanks around
 * items allowed. Unknown keys (v0, future schemes) are skipped. */
static enum pl_webhook_verdict parse_header(const char *h, struct sig_header *out)
{
    size_t n = strnlen(h, PL_WEBHOOK_HEADER_MAX + 1);
    if (n == 0 || n > PL_WEBHOOK_HEADER_MAX)
        return PL_WEBHOOK_MALFORMED;
    const char *p = h, *end = h + n;
    while (p <= end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *item_end = comma ? comma : end;
        const char *a = p, *b = item_end;
        while (a < b && is_space(*a))
            a++;
        while (b > a && is_space(b[-1]))
            b--;
        const char *eq = memchr(a, '=', (size_t)(b - a));
        if (!eq || eq == a)
            return PL_WEBHOOK_MALFORMED;
        size_t klen = (size_t)(eq - a);
        const char *v = eq + 1;
        size_t vlen = (size_t)(b - v);
        if (klen == 1 && a[0] == 't') {
            if (out->have_t || vlen == 0 || vlen > MAX_T_DIGITS)
                return PL_WEBHOOK_MALFORMED;
            int64_t t = 0;
            for (size_t i = 0; i < vlen; i++) {
                if (v[i] < '0' || v[i] > '9')
                    return PL_WEBHOOK_MALFORMED;
                t = t * 10 + (v[i] - '0');
            }
            out->t = t;
            out->have_t = true;
        } else if (klen == 2 && a[0] == 'v' && a[1] == '1') {
            if (out->nsig == MAX_SIGNATURES)
                return PL_WEBHOOK_MALFORMED;
            out->sig[out->nsig] = v;
            out->sig_len[out->nsig] = vlen;
            out->nsig++;
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    return out->have_t ? PL_WEBHOOK_VALID : PL_WEBHOOK_MALFORMED;
}

enum pl_webhook_verdict pl_webhook_verify(const char *header, const char *body, size_t body_len,
                                          const char *secret, int64_t now_s, int64_t tolerance_s,
                                          int64_t *t_out)
{
    if (!header)
        return PL_WEBHOOK_MALFORMED;
    struct sig_header sh = {0};
    enum pl_webhook_verdict v = parse_header(header, &sh);
    if (v != PL_WEBHOOK_VALID)
        return v;
    if (t_out)
        *t_out = sh.t;
    if (sh.nsig == 0)
        return PL_WEBHOOK_NO_SIGNATURE;
    if (now_s - sh.t > tolerance_s)
        return PL_WEBHOOK_TOO_OLD;
    if (sh.t - now_s > tolerance_s)
        return PL_WEBHOOK_TOO_NEW;
    char want[SHA256_HEX_LEN + 1];
    if (pl_webhook_sign(secret, sh.t, body, body_len, want) < 0)
        return PL_WEBHOOK_MISMATCH;
    /* Look at every candidate, so the time taken says nothing about which
     * one matched; each comparison itself is constant-time. */
    bool ok = false;
    for (size_t i = 0; i < sh.nsig; i++)
        if (sh.sig_len[i] == SHA256_HEX_LEN && CRYPTO_memcmp(sh.sig[i], want, SHA256_HEX_LEN) == 0)
            ok = true;
    OPENSSL_cleanse(want, sizeof(want));
    return ok ? PL_WEBHOOK_VALID : PL_WEBHOOK_MISMATCH;
}

/* ---- events --------------------------------------------------------------- */

/* Refuse nesting deeper than a Stripe event before jansson recurses into it. */
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

static json_t *member(json_t *o, const char *key)
{
    return json_is_object(o) ? json_object_get(o, key) : NULL;
}

/* Copy a printable identifier only if it fits whole: a cut reference would
 * name someone else's payment. */
static bool copy_id(json_t *v, char *dst, size_t n)
{
    const char *s = json_string_value(v);
    if (!s)
        return false;
    size_t len = json_string_length(v);
    if (len == 0 || len >= n)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    memcpy(dst, s, len + 1);
    return true;
}

/* A nullable identifier: absent or null → "", a string → copied whole. */
static bool copy_opt_id(json_t *v, char *dst, size_t n)
{
    if (!v || json_is_null(v)) {
        dst[0] = '\0';
        return true;
    }
    return copy_id(v, dst, n);
}

static bool get_amount(json_t *o, const char *key, int64_t min, int64_t *out)
{
    json_t *v = member(o, key);
    if (!json_is_integer(v))
        return false;
    json_int_t x = json_integer_value(v);
    if (x < min)
        return false;
    *out = (int64_t)x;
    return true;
}

static bool get_currency(json_t *o, char out[4])
{
    const char *s = json_string_value(member(o, "currency"));
    if (!s || strlen(s) != 3)
        return false;
    for (int i = 0; i < 3; i++) {
        if (!isalpha((unsigned char)s[i]))
            return false;
        out[i] = (char)toupper((unsigned char)s[i]);
    }
    out[3] = '\0';
    return true;
}

#define FAIL(...)                               \
    do {                                        \
        if (err)                                \
            snprintf(err, errlen, __VA_ARGS__); \
        goto fail;                              \
    } while (0)

static int parse_refunds(json_t *list, struct pl_webhook_event *ev, char *err, size_t errlen)
{
    json_t *data = member(list, "data");
    if (!json_is_array(data))
        FAIL("data.object.refunds.data is not an array");
    size_t n = json_array_size(data);
    if (n > PL_WEBHOOK_MAX_REFUNDS)
        FAIL("more than %d refunds listed", PL_WEBHOOK_MAX_REFUNDS);
    ev->refunds = pl_xcalloc(n ? n : 1, sizeof(*ev->refunds));
    for (size_t i = 0; i < n; i++) {
        json_t *r = json_array_get(data, i);
        struct pl_webhook_refund *out = &ev->refunds[i];
        if (!copy_id(member(r, "id"), out->id, sizeof(out->id)))
            FAIL("refund %zu: id missing or invalid", i);
        if (!get_amount(r, "amount", 1, &out->amount_minor))
            FAIL("refund %zu: amount missing or not a positive integer", i);
        if (!copy_id(member(r, "status"), out->status, sizeof(out->status)))
            FAIL("refund %zu: status missing or invalid", i);
        /* pledgectl tags its refunds with its own row id: a digit string */
        const char *pr = json_string_value(member(member(r, "metadata"), "pledged_refund"));
        if (pr && *pr && strlen(pr) < sizeof(out->pledged_refund) &&
            strspn(pr, "0123456789") == strlen(pr))
            memcpy(out->pledged_refund, pr, strlen(pr) + 1);
        ev->nrefunds++;
    }
    return 0;
fail:
    return PL_EPARSE;
}

int pl_webhook_parse_event(const char *body, size_t len, struct pl_webhook_event **out, char *err,
                           size_t errlen)
{
    json_t *root = NULL;
    struct pl_webhook_event *ev = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (!body || len == 0)
        FAIL("empty body");
    if (!depth_ok(body, len))
        FAIL("JSON nested deeper than %d", MAX_JSON_DEPTH);
    json_error_t jerr;
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        FAIL("invalid JSON at %d:%d: %s", jerr.line, jerr.column, jerr.text);
    if (!json_is_object(root))
        FAIL("not a JSON object");
    ev = pl_xcalloc(1, sizeof(*ev));
    if (!copy_id(member(root, "id"), ev->id, sizeof(ev->id)))
        FAIL("id missing or invalid");
    if (!copy_id(member(root, "type"), ev->type, sizeof(ev->type)))
        FAIL("type missing or invalid");
    json_t *created = member(root, "created");
    if (json_is_integer(created) && json_integer_value(created) >= 0)
        ev->created = (int64_t)json_integer_value(created);
    if (strcmp(ev->type, "charge.refunded") == 0)
        ev->kind = PL_WEBHOOK_CHARGE_REFUNDED;
    else if (strcmp(ev->type, "charge.dispute.created") == 0)
        ev->kind = PL_WEBHOOK_DISPUTE_CREATED;
    else
        goto done; /* acknowledged, not acted on: its object is not ours to judge */

    json_t *obj = member(member(root, "data"), "object");
    if (!json_is_object(obj))
        FAIL("data.object missing");
    if (!copy_id(member(obj, "id"), ev->object_id, sizeof(ev->object_id)))
        FAIL("data.object.id missing or invalid");
    if (!copy_opt_id(member(obj, "payment_intent"), ev->payment_intent, sizeof(ev->payment_intent)))
        FAIL("data.object.payment_intent invalid");
    if (!get_currency(obj, ev->currency))
        FAIL("data.object.currency missing or invalid");
    if (!get_amount(obj, "amount", 1, &ev->amount_minor))
        FAIL("data.object.amount missing or not a positive integer");
    json_t *reason = member(obj, "reason");
    if (json_is_string(reason))
        pl_strlcpy(ev->reason, json_string_value(reason), sizeof(ev->reason));
    if (ev->kind == PL_WEBHOOK_CHARGE_REFUNDED) {
        if (!get_amount(obj, "amount_refunded", 0, &ev->amount_refunded_minor))
            FAIL("data.object.amount_refunded missing or negative");
        if (ev->amount_refunded_minor > ev->amount_minor)
            FAIL("data.object.amount_refunded exceeds the amount");
        json_t *refunds = member(obj, "refunds");
        if (refunds && !json_is_null(refunds) && parse_refunds(refunds, ev, err, errlen) < 0)
            goto fail;
    }
done:
    json_decref(root);
    *out = ev;
    return 0;
fail:
    json_decref(root);
    pl_webhook_event_free(ev);
    return PL_EPARSE;
}

void pl_webhook_event_free(struct pl_webhook_event *ev)
{
    if (!ev)
        return;
    free(ev->refunds);
    free(ev);
}
