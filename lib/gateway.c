/*
 * gateway — the driver registry, the operation lifecycle on lib/http and
 * the in-operation retry policy documented in gateway.h.
 */
#include "gateway.h"

#include <stdlib.h>
#include <string.h>

#include "gateway_stripe.h"
#include "util.h"

/* ---- names ------------------------------------------------------------ */

static const char *const outcome_names[PL_OUT_COUNT] = {
    [PL_OUT_SUCCEEDED] = "succeeded",
    [PL_OUT_DECLINED_SOFT] = "declined_soft",
    [PL_OUT_DECLINED_HARD] = "declined_hard",
    [PL_OUT_ACTION_REQUIRED] = "action_required",
    [PL_OUT_RETRY_NOW] = "retry_now",
    [PL_OUT_UNKNOWN] = "unknown",
    [PL_OUT_HALT] = "halt",
    [PL_OUT_NOT_FOUND] = "not_found",
};

const char *pl_outcome_name(enum pl_outcome o)
{
    if ((unsigned)o >= PL_OUT_COUNT)
        return "invalid";
    return outcome_names[o];
}

int pl_outcome_parse(const char *name, enum pl_outcome *out)
{
    if (!name)
        return PL_EINVAL;
    for (unsigned i = 0; i < PL_OUT_COUNT; i++) {
        if (strcmp(name, outcome_names[i]) == 0) {
            *out = (enum pl_outcome)i;
            return 0;
        }
    }
    return PL_EINVAL;
}

const char *pl_gateway_op_name(enum pl_gateway_op_kind k)
{
    switch (k) {
    case PL_GW_CHARGE:
        return "charge";
    case PL_GW_LOOKUP_KEY:
        return "lookup_by_key";
    case PL_GW_LOOKUP_REF:
        return "lookup_by_ref";
    case PL_GW_REFUND:
        return "refund";
    }
    return "invalid";
}

void pl_gateway_result_init(struct pl_gateway_result *r, enum pl_gateway_op_kind op)
{
    memset(r, 0, sizeof *r);
    r->outcome = PL_OUT_UNKNOWN;
    r->op = op;
    r->amount_minor = -1;
    r->amount_received_minor = -1;
    r->retry_after_ms = -1;
}

void pl_gateway_opts_init(struct pl_gateway_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_retries = 2;
    o->retry_base_ms = 500;
    o->retry_cap_ms = 5000;
}

bool pl_gateway_key_valid(const char *key)
{
    if (!key || !*key)
        return false;
    size_t n = 0;
    for (const char *p = key; *p; p++, n++) {
        char c = *p;
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == ':' || c == '-';
        if (!ok || n >= 255)
            return false;
    }
    return true;
}

/* ---- wire and form encoding ------------------------------------------- */

void pl_gateway_wire_release(struct pl_gateway_wire *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n_headers; i++) {
        /* one of these is "Authorization: Bearer <key>" */
        memset(w->headers[i], 0, strlen(w->headers[i]));
        free(w->headers[i]);
    }
    free(w->headers);
    free(w->url);
    free(w->body);
    memset(w, 0, sizeof *w);
}

void pl_gateway_wire_header(struct pl_gateway_wire *w, const char *name, const char *value)
{
    w->headers = pl_xrealloc(w->headers, (w->n_headers + 1) * sizeof *w->headers);
    w->headers[w->n_headers++] = pl_xasprintf("%s: %s", name, value);
}

static void buf_reserve(char **buf, size_t *len, size_t more)
{
    /* capacity is not tracked: grow to the next power of two above need */
    size_t need = *len + more + 1;
    size_t cap = 64;
    while (cap < need)
        cap *= 2;
    size_t old_cap = 64;
    while (*buf && old_cap < *len + 1)
        old_cap *= 2;
    if (!*buf || cap > old_cap)
        *buf = pl_xrealloc(*buf, cap);
}

void pl_form_escape(char **buf, size_t *len, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    buf_reserve(buf, len, 3 * n);
    char *o = *buf + *len;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            *o++ = (char)c;
        } else {
            *o++ = '%';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o = 0;
    *len = (size_t)(o - *buf);
}

void pl_form_add(char **buf, size_t *len, const char *key, const char *value)
{
    if (*buf && *len) {
        buf_reserve(buf, len, 1);
        (*buf)[(*len)++] = '&';
        (*buf)[*len] = 0;
    }
    pl_form_escape(buf, len, key);
    buf_reserve(buf, len, 1);
    (*buf)[(*len)++] = '=';
    (*buf)[*len] = 0;
    pl_form_escape(buf, len, value);
}

/* ---- registry ---------------------------------------------------------- */

static const struct pl_gateway_driver *const drivers[] = {
    &pl_gateway_driver_stripe,
};

const struct pl_gateway_driver *pl_gateway_driver_find(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < PL_ARRAY_LEN(drivers); i++)
        if (strcmp(drivers[i]->name, name) == 0)
            return drivers[i];
    return NULL;
}

/* ---- operations --------------------------------------------------------- */

struct pl_gateway {
    uv_loop_t *loop;
    struct pl_http *http;
    const struct pl_gateway_driver *drv;
    void *state;
    unsigned max_retries, retry_base_ms, retry_cap_ms;
    struct pl_gateway_op *ops; /* doubly linked, in progress */
    unsigned n_ops;
    uint64_t rng;
    bool closing;
};

struct pl_gateway_op {
    struct pl_gateway *gw;
    struct pl_gateway_op *prev, *next;
    enum pl_gateway_op_kind kind;
    struct pl_gateway_wire wire;
    struct pl_http_req *req;         /* non-NULL while lib/http holds the request */
    char attempt_key[PL_GW_REF_MAX]; /* LOOKUP_KEY: what we look for */
    unsigned sends, retries;
    int64_t started_us;
    pl_gateway_cb cb;
    void *userdata;
};

static uint64_t rng_next(struct pl_gateway *gw)
{
    /* xorshift64: jitter only, nothing secret depends on it */
    uint64_t x = gw->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    gw->rng = x;
    return x;
}

/* min(base·2^(n-1), cap) + 0–25 % jitter, n ≥ 1 */
static unsigned backoff_ms(struct pl_gateway *gw, unsigned n)
{
    uint64_t d = gw->retry_base_ms;
    for (unsigned i = 1; i < n && d < gw->retry_cap_ms; i++)
        d *= 2;
    if (d > gw->retry_cap_ms)
        d = gw->retry_cap_ms;
    d += rng_next(gw) % (d / 4 + 1);
    return (unsigned)d;
}

static void op_http_cb(const struct pl_http_response *resp, void *userdata);

static int op_send(struct pl_gateway_op *op, unsigned delay_ms)
{
    struct pl_http_request rq = {
        .method = op->wire.method,
        .url = op->wire.url,
        .headers = (const char *const *)op->wire.headers,
        .n_headers = op->wire.n_headers,
        .body = op->wire.body,
        .body_len = op->wire.body_len,
        .delay_ms = delay_ms,
        .cb = op_http_cb,
        .userdata = op,
    };
    return pl_http_submit(op->gw->http, &rq, &op->req);
}

static void op_unlink(struct pl_gateway_op *op)
{
    struct pl_gateway *gw = op->gw;
    if (op->prev)
        op->prev->next = op->next;
    else
        gw->ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    gw->n_ops--;
}

static void op_free(struct pl_gateway_op *op)
{
    pl_gateway_wire_release(&op->wire);
    free(op);
}

static void op_complete(struct pl_gateway_op *op, struct pl_gateway_result *res)
{
    op_unlink(op);
    res->sends = op->sends;
    res->duration_us = pl_monotonic_us() - op->started_us;
    op->cb(res, op->userdata);
    op_free(op);
}

static void op_http_cb(const struct pl_http_response *resp, void *userdata)
{
    struct pl_gateway_op *op = userdata;
    struct pl_gateway *gw = op->gw;
    op->req = NULL;
    bool canceled = resp->err == PL_ECANCELED;
    if (!(canceled && resp->transport == PL_HTTP_NOT_SENT))
        op->sends++;

    struct pl_gateway_result res;
    pl_gateway_result_init(&res, op->kind);
    if (op->kind == PL_GW_LOOKUP_KEY)
        memcpy(res.attempt_key, op->attempt_key, sizeof res.attempt_key);
    gw->drv->classify(gw->state, op->kind, resp, &res);
    if (canceled)
        res.err = PL_ECANCELED;

    if (!canceled) {
        /* the rate limit is per account: hold every request, not just this one */
        int64_t pause_ms = res.retry_after_ms;
        if (pause_ms < 0 && res.http_status == 429)
            pause_ms = backoff_ms(gw, op->retries + 1);
        if (pause_ms > 0)
            pl_http_pause_for(gw->http, pause_ms);
    }

    if (res.outcome == PL_OUT_RETRY_NOW && !canceled && !gw->closing &&
        op->retries < gw->max_retries) {
        unsigned delay = backoff_ms(gw, ++op->retries);
        if (res.retry_after_ms > (int64_t)delay)
            delay = (unsigned)res.retry_after_ms;
        if (op_send(op, delay) == 0)
            return;
    }
    op_complete(op, &res);
}

static int op_start(struct pl_gateway *gw, enum pl_gateway_op_kind kind,
                    struct pl_gateway_wire *wire, pl_gateway_cb cb, void *userdata,
                    struct pl_gateway_op **out, const char *attempt_key)
{
    struct pl_gateway_op *op = pl_xcalloc(1, sizeof *op);
    if (attempt_key)
        pl_strlcpy(op->attempt_key, attempt_key, sizeof op->attempt_key);
    op->gw = gw;
    op->kind = kind;
    op->wire = *wire; /* stolen: the same bytes go out on every resend */
    op->cb = cb;
    op->userdata = userdata;
    op->started_us = pl_monotonic_us();
    int err = op_send(op, 0);
    if (err < 0) {
        free(op); /* the wire stays the caller's on failure */
        return err;
    }
    op->next = gw->ops;
    if (gw->ops)
        gw->ops->prev = op;
    gw->ops = op;
    gw->n_ops++;
    if (out)
        *out = op;
    return 0;
}

int pl_gateway_new(uv_loop_t *loop, struct pl_http *http, const char *driver,
                   const struct pl_gateway_opts *opts, struct pl_gateway **out)
{
    if (!loop || !http || !opts || !out)
        return PL_EINVAL;
    const struct pl_gateway_driver *drv = pl_gateway_driver_find(driver);
    if (!drv)
        return PL_ENOTFOUND;
    void *state = NULL;
    int err = drv->init(opts, &state);
    if (err < 0)
        return err;
    struct pl_gateway *gw = pl_xcalloc(1, sizeof *gw);
    gw->loop = loop;
    gw->http = http;
    gw->drv = drv;
    gw->state = state;
    gw->max_retries = opts->max_retries;
    gw->retry_base_ms = opts->retry_base_ms ? opts->retry_base_ms : 500;
    gw->retry_cap_ms = opts->retry_cap_ms ? opts->retry_cap_ms : 5000;
    gw->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)gw;
    if (!gw->rng)
        gw->rng = 0x9e3779b97f4a7c15ULL;
    *out = gw;
    return 0;
}

#define START(gw, kind, akey, build)                           \
    do {                                                       \
        if (!(gw) || !cb)                                      \
            return PL_EINVAL;                                  \
        if ((gw)->closing)                                     \
            return PL_ECANCELED;                               \
        struct pl_gateway_wire w = {0};                        \
        int err_ = (build);                                    \
        if (err_ < 0)                                          \
            return err_;                                       \
        err_ = op_start(gw, kind, &w, cb, userdata, op, akey); \
        if (err_ < 0)                                          \
            pl_gateway_wire_release(&w);                       \
        return err_;                                           \
    } while (0)

/* op_start steals the wire on success only; START releases it otherwise. */

int pl_gateway_charge(struct pl_gateway *gw, const struct pl_gateway_charge *c, pl_gateway_cb cb,
                      void *userdata, struct pl_gateway_op **op)
{
    if (!c)
        return PL_EINVAL;
    START(gw, PL_GW_CHARGE, NULL, gw->drv->charge(gw->state, c, &w));
}

int pl_gateway_lookup_by_key(struct pl_gateway *gw, const char *attempt_key, pl_gateway_cb cb,
                             void *userdata, struct pl_gateway_op **op)
{
    if (!pl_gateway_key_valid(attempt_key) || strlen(attempt_key) >= PL_GW_REF_MAX)
        return PL_EINVAL;
    START(gw, PL_GW_LOOKUP_KEY, attempt_key, gw->drv->lookup_by_key(gw->state, attempt_key, &w));
}

int pl_gateway_lookup_by_ref(struct pl_gateway *gw, const char *ref, pl_gateway_cb cb,
                             void *userdata, struct pl_gateway_op **op)
{
    START(gw, PL_GW_LOOKUP_REF, NULL, gw->drv->lookup_by_ref(gw->state, ref, &w));
}

int pl_gateway_refund(struct pl_gateway *gw, const struct pl_gateway_refund *r, pl_gateway_cb cb,
                      void *userdata, struct pl_gateway_op **op)
{
    if (!r)
        return PL_EINVAL;
    START(gw, PL_GW_REFUND, NULL, gw->drv->refund(gw->state, r, &w));
}

void pl_gateway_cancel(struct pl_gateway_op *op)
{
    if (op && op->req)
        pl_http_cancel(op->req); /* runs op_http_cb, which completes the op */
}

unsigned pl_gateway_pending(const struct pl_gateway *gw)
{
    return gw ? gw->n_ops : 0;
}

void pl_gateway_free(struct pl_gateway *gw)
{
    if (!gw)
        return;
    gw->closing = true;
    while (gw->ops) {
        struct pl_gateway_op *op = gw->ops;
        if (!op->req) {
            /* cannot happen: an op in the list always has its request in http */
            op_unlink(op);
            op_free(op);
            continue;
        }
        pl_gateway_cancel(op);
    }
    gw->drv->release(gw->state);
    free(gw);
}
