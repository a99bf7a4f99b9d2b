/*
 * gateway — talk to a payment gateway through a driver, and say what a
 * reply means for billing (the outcome classes of DESIGN.md §5).
 *
 * A driver (gateway_stripe.c, …) only speaks its gateway's dialect: it turns
 * an operation into one HTTP request and turns one HTTP reply into a
 * struct pl_gateway_result. This module does the I/O on lib/http, the
 * bounded same-key retries and the 429 pause, so every driver gets them
 * alike and billing never sees a gateway name except in configuration.
 *
 * Owns: the driver's state (API key: kept in memory only, wiped on free,
 * never in a result or an error text) and the operations in progress.
 * Never: reads configuration or secret files, touches the database, logs.
 *
 * Retry policy (decided here, so billing and the reconciler agree):
 *   - A reply classified PL_OUT_RETRY_NOW (connect failure, 429, 409
 *     idempotency_key_in_use, Stripe-Should-Retry: true) is resent inside
 *     the operation with the SAME idempotency key and byte-identical body, at
 *     most opts.max_retries times (default 2, as Stripe's own clients), after
 *     min(retry_base_ms·2^(n-1), retry_cap_ms) plus 0–25 % jitter, or after
 *     Retry-After when that is longer.
 *   - A 429 or any Retry-After also pauses the whole lib/http client for that
 *     time (the limit is per account, so every other request would hit it too).
 *   - When the retries are spent, the operation completes with RETRY_NOW and
 *     billing keeps the attempt and resends the same key later (its backoff).
 *   - Nothing else is retried here: UNKNOWN goes to the reconciler, which
 *     inside the idempotency window resends the same key (Stripe then replays
 *     the first outcome) and after it looks the attempt up by key.
 */
#ifndef PL_GATEWAY_H
#define PL_GATEWAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "http.h"

/* DESIGN.md §5, in the order the database enum lists them. */
enum pl_outcome {
    PL_OUT_SUCCEEDED = 0,   /* money moved (refund: accepted) */
    PL_OUT_DECLINED_SOFT,   /* declined; try again on the dunning schedule */
    PL_OUT_DECLINED_HARD,   /* declined; the payment method is unusable */
    PL_OUT_ACTION_REQUIRED, /* the donor must act (3-D Secure …): never retry off-session */
    PL_OUT_RETRY_NOW,       /* surely not executed: resend the same key soon */
    PL_OUT_UNKNOWN,         /* may have executed: reconcile before anything new */
    PL_OUT_HALT,            /* our credentials/config are wrong: stop claiming, alert */
    PL_OUT_NOT_FOUND,       /* lookups only: the gateway has no such payment */
};
#define PL_OUT_COUNT 8

/* "succeeded", "declined_soft", "declined_hard", "action_required",
 * "retry_now", "unknown", "halt", "not_found"; "invalid" for anything else. */
const char *pl_outcome_name(enum pl_outcome o);
/* Inverse of pl_outcome_name. 0 or PL_EINVAL. */
int pl_outcome_parse(const char *name, enum pl_outcome *out);

enum pl_gateway_op_kind {
    PL_GW_CHARGE = 0,
    PL_GW_LOOKUP_KEY, /* by our attempt key (metadata) */
    PL_GW_LOOKUP_REF, /* by the gateway's reference (pi_…) */
    PL_GW_REFUND,
};
const char *pl_gateway_op_name(enum pl_gateway_op_kind k);

/* Metadata names billing and the drivers agree on: the charge row id and the
 * attempt's idempotency key, so an attempt can be found by key later. */
#define PL_GATEWAY_META_CHARGE  "pledged_charge"
#define PL_GATEWAY_META_ATTEMPT "pledged_attempt"

/* Field sizes: a value that does not fit is dropped, never cut (a cut
 * reference would point at someone else's payment). */
#define PL_GW_REF_MAX  128
#define PL_GW_CODE_MAX 64
#define PL_GW_MSG_MAX  512

/* The meaning of one reply (or of the last reply after retries). A value
 * type: strings are inline, "" when absent. Borrowed by callbacks. */
struct pl_gateway_result {
    enum pl_outcome outcome;
    int err; /* 0, or PL_ECANCELED (shut down mid-operation) */
    enum pl_gateway_op_kind op;
    long http_status; /* 0: no reply */
    enum pl_http_transport transport;
    char ref[PL_GW_REF_MAX];        /* pi_… (refund: re_…) */
    char charge_ref[PL_GW_REF_MAX]; /* ch_… (latest_charge / the refunded charge) */
    char object_status[32];         /* gateway's own status word: "succeeded", "processing" … */
    int64_t amount_minor;           /* -1 when absent */
    int64_t amount_received_minor;  /* -1 when absent */
    char currency[4];               /* upper case ISO 4217, "" when absent */
    bool has_fee;
    int64_t fee_minor;               /* gateway fee, when the reply carried it */
    char attempt_key[PL_GW_REF_MAX]; /* our pledged_attempt metadata, when echoed */
    char request_id[PL_GW_REF_MAX];  /* req_… of the last reply */
    char error_type[PL_GW_CODE_MAX]; /* card_error, invalid_request_error …, or ours:
                                        "transport", "unparseable_reply", … */
    char code[PL_GW_CODE_MAX];
    char decline_code[PL_GW_CODE_MAX];
    char advice_code[PL_GW_CODE_MAX];
    char message[PL_GW_MSG_MAX]; /* gateway's text or ours; never a secret */
    int64_t retry_after_ms;      /* -1 when none */
    bool replayed;               /* the gateway replayed a saved reply */
    bool livemode;
    unsigned matches;    /* LOOKUP_KEY: payments found with that key */
    unsigned sends;      /* HTTP requests this operation made */
    int64_t duration_us; /* whole operation, retries included */
};

/* Reset to "nothing known": outcome UNKNOWN, amounts -1, strings "". */
void pl_gateway_result_init(struct pl_gateway_result *r, enum pl_gateway_op_kind op);

struct pl_gateway_kv {
    const char *key, *value;
};

struct pl_gateway_charge {
    int64_t amount_minor;                 /* > 0 */
    const char *currency;                 /* ISO 4217, any case */
    const char *customer_ref;             /* cus_…; may be NULL */
    const char *payment_method;           /* pm_… */
    const char *idempotency_key;          /* 1..255 of [A-Za-z0-9._:-] */
    const struct pl_gateway_kv *metadata; /* e.g. pledged_charge, pledged_attempt */
    size_t n_metadata;
    const char *description;                 /* may be NULL */
    const char *statement_descriptor_suffix; /* may be NULL */
};

struct pl_gateway_refund {
    const char *payment_ref; /* pi_… (or ch_…) */
    int64_t amount_minor;    /* 0 = the whole remaining amount */
    const char *reason;      /* NULL, requested_by_customer, duplicate, fraudulent */
    const char *idempotency_key;
    const struct pl_gateway_kv *metadata;
    size_t n_metadata;
};

struct pl_gateway_opts {
    const char *base_url;    /* NULL: the driver's production URL */
    const char *api_key;     /* secret; copied (and wiped on free) */
    const char *api_version; /* optional, e.g. Stripe-Version */
    unsigned max_retries;    /* in-operation same-key retries of RETRY_NOW */
    unsigned retry_base_ms;
    unsigned retry_cap_ms;
};
/* max_retries 2, retry_base_ms 500, retry_cap_ms 5000, the rest NULL. */
void pl_gateway_opts_init(struct pl_gateway_opts *o);

/* One HTTP request as a driver builds it; owned by whoever holds it,
 * released with pl_gateway_wire_release. Headers hold the API key. */
struct pl_gateway_wire {
    char method[8];
    char *url;
    char *body; /* NULL for none */
    size_t body_len;
    char **headers; /* "Name: value" */
    size_t n_headers;
};
void pl_gateway_wire_release(struct pl_gateway_wire *w);
/* Helpers for drivers: append a header line (copied). */
void pl_gateway_wire_header(struct pl_gateway_wire *w, const char *name, const char *value);

/*
 * The driver table. Builders fill *out (caller releases) and return 0, or
 * PL_EINVAL for input the gateway must never see (out untouched).
 * classify() must accept any response whatever its body — empty, not JSON,
 * truncated, hostile — and always produce a class.
 */
struct pl_gateway_driver {
    const char *name;
    const char *default_base_url;
    int (*init)(const struct pl_gateway_opts *opts, void **state);
    void (*release)(void *state); /* wipes secrets */
    int (*charge)(void *state, const struct pl_gateway_charge *c, struct pl_gateway_wire *out);
    int (*lookup_by_key)(void *state, const char *attempt_key, struct pl_gateway_wire *out);
    int (*lookup_by_ref)(void *state, const char *ref, struct pl_gateway_wire *out);
    int (*refund)(void *state, const struct pl_gateway_refund *r, struct pl_gateway_wire *out);
    void (*classify)(void *state, enum pl_gateway_op_kind op, const struct pl_http_response *resp,
                     struct pl_gateway_result *out);
};

/* Registered drivers, by name ("stripe"); NULL when unknown. */
const struct pl_gateway_driver *pl_gateway_driver_find(const char *name);

struct pl_gateway;
struct pl_gateway_op;

typedef void (*pl_gateway_cb)(const struct pl_gateway_result *res, void *userdata);

/*
 * A gateway client over `http` (borrowed; must outlive the gateway, or be
 * freed first — then operations end with PL_ECANCELED). Returns 0 and *out,
 * or PL_ENOTFOUND (no driver by that name), PL_EINVAL (opts rejected: no
 * key, key with control characters, base_url not allowed by lib/http).
 */
int pl_gateway_new(uv_loop_t *loop, struct pl_http *http, const char *driver,
                   const struct pl_gateway_opts *opts, struct pl_gateway **out);

/*
 * Operations. Each returns 0 and later calls cb exactly once, or returns an
 * error (PL_EINVAL bad input, PL_ECANCELED shutting down) and never calls it.
 * *op (optional) is valid until the callback runs; everything passed in is
 * copied.
 */
int pl_gateway_charge(struct pl_gateway *gw, const struct pl_gateway_charge *c, pl_gateway_cb cb,
                      void *userdata, struct pl_gateway_op **op);
int pl_gateway_lookup_by_key(struct pl_gateway *gw, const char *attempt_key, pl_gateway_cb cb,
                             void *userdata, struct pl_gateway_op **op);
int pl_gateway_lookup_by_ref(struct pl_gateway *gw, const char *ref, pl_gateway_cb cb,
                             void *userdata, struct pl_gateway_op **op);
int pl_gateway_refund(struct pl_gateway *gw, const struct pl_gateway_refund *r, pl_gateway_cb cb,
                      void *userdata, struct pl_gateway_op **op);

/* Abandon an operation: its callback runs before this returns, with
 * err = PL_ECANCELED and outcome RETRY_NOW (nothing was sent) or UNKNOWN. */
void pl_gateway_cancel(struct pl_gateway_op *op);

/* Operations in progress. */
unsigned pl_gateway_pending(const struct pl_gateway *gw);

/* Cancel every operation (callbacks run before this returns) and free.
 * Must not be called from inside one of this gateway's callbacks. NULL ok. */
void pl_gateway_free(struct pl_gateway *gw);

/* Shared helpers for drivers and tests. */

/* application/x-www-form-urlencoded, RFC 3986 flavour: unreserved
 * [A-Za-z0-9-._~] kept, every other byte %XX (upper-case hex), space as %20.
 * Appends to *buf (a NUL-terminated heap string or NULL), growing it. */
void pl_form_escape(char **buf, size_t *len, const char *s);
/* Appends "key=value" (both escaped), with '&' before it unless first. */
void pl_form_add(char **buf, size_t *len, const char *key, const char *value);

/* Idempotency / attempt keys: 1..255 chars of [A-Za-z0-9._:-]. */
bool pl_gateway_key_valid(const char *key);

#endif
