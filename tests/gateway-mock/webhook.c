/*
 * webhook.c — POST /_mock/webhook: build a Stripe-shaped event (charge.refunded
 * or charge.dispute.created), make the ledger agree with it (a refund or a
 * dispute is recorded when the PaymentIntent exists), sign it like Stripe
 * (Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>) and
 * deliver it with libcurl. Delivery runs without gm_lock.
 */
#include "mock.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DELIVERY_TIMEOUT_MS 10000L
#define MAX_TIMESTAMP_S     4102444800LL /* 2100-01-01 */

struct gm_webhook_opts gm_webhook;

static json_t *reply_error(unsigned *status, unsigned code, const char *msg)
{
    *status = code;
    return gm_error_json("invalid_request_error", NULL, NULL, msg);
}

static int sign(const char *secret, int64_t t, const char *body, char hex[65])
{
    size_t bl = strlen(body);
    size_t ml = bl + 32;
    char *msg = malloc(ml);
    if (!msg)
        return -1;
    int n = snprintf(msg, ml, "%lld.", (long long)t);
    memcpy(msg + n, body, bl);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    unsigned char *r = HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)msg,
                            (size_t)n + bl, mac, &maclen);
    free(msg);
    if (!r || maclen != 32)
        return -1;
    for (unsigned i = 0; i < maclen; i++)
        snprintf(hex + 2 * i, 3, "%02x", mac[i]);
    return 0;
}

static size_t discard(char *ptr, size_t size, size_t nmemb, void *ud)
{
    return size * nmemb;
}

/* Returns the HTTP status, or 0 with err filled when delivery failed. */
static long deliver(const char *url, const char *body, const char *sig_header, char *err,
                    size_t errlen)
{
    long code = 0;
    struct curl_slist *h = NULL, *h2;
    CURL *c = curl_easy_init();
    if (!c) {
        snprintf(err, errlen, "curl_easy_init failed");
        return 0;
    }
    char sig[256];
    snprintf(sig, sizeof(sig), "Stripe-Signature: %s", sig_header);
    h = curl_slist_append(NULL, "Content-Type: application/json; charset=utf-8");
    h2 = h ? curl_slist_append(h, sig) : NULL;
    h = h2 ? curl_slist_append(h2, "User-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)")
           : NULL;
    if (!h) {
        curl_slist_free_all(h2);
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    CURLcode rc;
    if ((rc = curl_easy_setopt(c, CURLOPT_URL, url)) != CURLE_OK ||
        (rc = curl_easy_setopt(c, CURLOPT_POSTFIELDS, body)) != CURLE_OK ||
        (rc = curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body))) != CURLE_OK ||
        (rc = curl_easy_setopt(c, CURLOPT_HTTPHEADER, h)) != CURLE_OK ||
        (rc = curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, DELIVERY_TIMEOUT_MS)) != CURLE_OK ||
        (rc = curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L)) != CURLE_OK ||
        (rc = curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard)) != CURLE_OK ||
        (rc = curl_easy_perform(c)) != CURLE_OK) {
        snprintf(err, errlen, "%s", curl_easy_strerror(rc));
        goto out;
    }
    if (curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code) != CURLE_OK)
        code = 0;
out:
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return code;
}

/* Build the event's data.object; locked. Returns NULL with *status/err set. */
static json_t *build_object(const char *type, json_t *req, char *err, size_t errlen)
{
    const char *pid = json_string_value(json_object_get(req, "payment_intent"));
    json_t *jamount = json_object_get(req, "amount");
    const char *cur = json_string_value(json_object_get(req, "currency"));
    json_t *jcreate = json_object_get(req, "create_refund");
    const char *reason = json_string_value(json_object_get(req, "reason"));
    bool create = jcreate ? json_is_true(jcreate) : true;
    if (jamount && (!json_is_integer(jamount) || json_integer_value(jamount) < 1)) {
        snprintf(err, errlen, "amount must be a positive integer (minor units)");
        return NULL;
    }
    int64_t amount = jamount ? json_integer_value(jamount) : 0;
    struct gm_pi *pi = pid ? gm_pi_find(pid) : NULL;

    if (strcmp(type, "charge.refunded") == 0) {
        if (!pi) {
            /* An event about a charge the mock never made: fabricate it. */
            if (!jamount) {
                snprintf(err, errlen, "unknown payment_intent: amount is required");
                return NULL;
            }
            char ch[40], re[40];
            gm_rand_id(GM_RNG_IDS, ch, "ch_", 24);
            gm_rand_id(GM_RNG_IDS, re, "re_", 24);
            return json_pack("{s:s, s:s, s:I, s:I, s:I, s:s, s:b, s:o, s:b, s:s, "
                             "s:{s:s, s:[{s:s, s:s, s:I, s:s, s:s, s:s, s:s}], s:b, s:I}}",
                             "id", ch, "object", "charge", "amount", (json_int_t)amount,
                             "amount_captured", (json_int_t)amount, "amount_refunded",
                             (json_int_t)amount, "currency", cur ? cur : "usd", "paid", 1,
                             "payment_intent", pid ? json_string(pid) : json_null(), "refunded", 1,
                             "status", "succeeded", "refunds", "object", "list", "data", "id", re,
                             "object", "refund", "amount", (json_int_t)amount, "charge", ch,
                             "currency", cur ? cur : "usd", "reason",
                             reason ? reason : "requested_by_customer", "status", "succeeded",
                             "has_more", 0, "total_count", (json_int_t)1);
        }
        if (strcmp(pi->status, "succeeded") != 0) {
            snprintf(err, errlen, "payment_intent %s has no successful charge", pi->id);
            return NULL;
        }
        if (create) {
            int64_t remaining = pi->amount_received - pi->amount_refunded;
            if (!jamount)
                amount = remaining;
            if (amount < 1 || amount > remaining) {
                snprintf(err, errlen, "refund of %lld exceeds the unrefunded %lld of %s",
                         (long long)amount, (long long)remaining, pi->id);
                return NULL;
            }
            if (!gm_refund_new(pi, amount, reason ? reason : "requested_by_customer", NULL,
                               "webhook", NULL)) {
                snprintf(err, errlen, "out of memory");
                return NULL;
            }
        }
        return json_pack("{s:s, s:s, s:I, s:I, s:I, s:s, s:s, s:O, s:b, s:s, s:b, s:o, s:o}", "id",
                         pi->charge_id, "object", "charge", "amount", (json_int_t)pi->amount,
                         "amount_captured", (json_int_t)pi->amount_received, "amount_refunded",
                         (json_int_t)pi->amount_refunded, "currency", pi->currency,
                         "payment_intent", pi->id, "metadata", pi->metadata, "paid", 1, "status",
                         "succeeded", "refunded", pi->amount_refunded >= pi->amount_received,
                         "customer", pi->customer ? json_string(pi->customer) : json_null(),
                         "refunds", gm_pi_refunds_json(pi));
    }

    /* charge.dispute.created */
    const char *dreason = reason ? reason : "fraudulent";
    if (!pi) {
        if (!jamount) {
            snprintf(err, errlen, "unknown payment_intent: amount is required");
            return NULL;
        }
        char dp[40], ch[40];
        gm_rand_id(GM_RNG_IDS, dp, "dp_", 24);
        gm_rand_id(GM_RNG_IDS, ch, "ch_", 24);
        return json_pack("{s:s, s:s, s:I, s:s, s:I, s:s, s:b, s:{}, s:o, s:s, s:s}", "id", dp,
                         "object", "dispute", "amount", (json_int_t)amount, "charge", ch, "created",
                         (json_int_t)gm_now_s(), "currency", cur ? cur : "usd", "livemode", 0,
                         "metadata", "payment_intent", pid ? json_string(pid) : json_null(),
                         "reason", dreason, "status", "needs_response");
    }
    if (!pi->charge_id[0]) {
        snprintf(err, errlen, "payment_intent %s has no charge to dispute", pi->id);
        return NULL;
    }
    struct gm_dispute *d =
        gm_dispute_new(pi->id, pi->charge_id, jamount ? amount : pi->amount, pi->currency, dreason);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    return gm_dispute_json(d);
}

json_t *gm_webhook_send(json_t *req, unsigned *status)
{
    char err[256] = "";
    if (!json_is_object(req))
        return reply_error(status, 400, "body must be a JSON object");
    static const char *const allowed[] = {"type",   "payment_intent", "amount",        "currency",
                                          "id",     "timestamp",      "secret",        "url",
                                          "reason", "deliver",        "create_refund", NULL};
    const char *k;
    json_t *v;
    json_object_foreach(req, k, v)
    {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = strcmp(*a, k) == 0;
        if (!ok) {
            snprintf(err, sizeof(err), "unknown key '%s'", k);
            return reply_error(status, 400, err);
        }
    }
    const char *type = json_string_value(json_object_get(req, "type"));
    if (!type ||
        (strcmp(type, "charge.refunded") != 0 && strcmp(type, "charge.dispute.created") != 0))
        return reply_error(status, 400, "type must be charge.refunded or charge.dispute.created");
    const char *secret = json_string_value(json_object_get(req, "secret"));
    if (!secret)
        secret = gm_webhook.secret;
    const char *url = json_string_value(json_object_get(req, "url"));
    if (!url)
        url = gm_webhook.url;
    json_t *jdeliver = json_object_get(req, "deliver");
    bool deliver_it = jdeliver ? json_is_true(jdeliver) : true;
    if (!secret)
        return reply_error(status, 400,
                           "no webhook secret: start with --webhook-secret-file "
                           "or pass \"secret\"");
    if (deliver_it && !url)
        return reply_error(status, 400, "no webhook URL: start with --webhook-url or pass \"url\"");
    json_t *jts = json_object_get(req, "timestamp");
    if (jts && (!json_is_integer(jts) || json_integer_value(jts) < 0 ||
                json_integer_value(jts) > MAX_TIMESTAMP_S))
        return reply_error(status, 400, "timestamp must be a unix time in seconds");
    int64_t ts = jts ? json_integer_value(jts) : gm_now_s();
    const char *fixed_id = json_string_value(json_object_get(req, "id"));

    char evt_id[40];
    if (pthread_mutex_lock(&gm_lock) != 0)
        return reply_error(status, 500, "lock failed");
    json_t *obj = build_object(type, req, err, sizeof(err));
    gm_rand_id(GM_RNG_IDS, evt_id, "evt_", 24);
    pthread_mutex_unlock(&gm_lock);
    if (!obj)
        return reply_error(status, 400, err[0] ? err : "out of memory");

    json_t *event =
        json_pack("{s:s, s:s, s:s, s:I, s:b, s:i, s:s, s:{s:o}, s:{s:n, s:n}}", "id",
                  fixed_id ? fixed_id : evt_id, "object", "event", "api_version", "2024-06-20",
                  "created", (json_int_t)ts, "livemode", 0, "pending_webhooks", 1, "type", type,
                  "data", "object", obj, "request", "id", "idempotency_key");
    if (!event)
        return reply_error(status, 500, "out of memory");
    char *payload = json_dumps(event, JSON_COMPACT);
    char hex[65];
    if (!payload || sign(secret, ts, payload, hex) != 0) {
        free(payload);
        json_decref(event);
        return reply_error(status, 500, "signing failed");
    }
    char sig_header[128];
    snprintf(sig_header, sizeof(sig_header), "t=%lld,v1=%s", (long long)ts, hex);

    long code = 0;
    char derr[256] = "";
    if (deliver_it)
        code = deliver(url, payload, sig_header, derr, sizeof(derr));
    json_t *reply =
        json_pack("{s:o, s:s, s:s, s:o, s:b, s:I, s:o}", "event", event, "payload", payload,
                  "signature", sig_header, "url", url ? json_string(url) : json_null(), "delivered",
                  deliver_it && code > 0, "delivery_status", (json_int_t)code, "delivery_error",
                  derr[0] ? json_string(derr) : json_null());
    free(payload);
    if (!reply)
        return reply_error(status, 500, "out of memory");
    *status = 200;
    return reply;
}
