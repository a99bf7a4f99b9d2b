/*
 * webhook — gateway webhooks from the outside: Stripe's signature scheme and
 * the few event shapes pledged acts on.
 *
 * Signature (Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]): valid when
 * any v1 equals lowercase-hex HMAC-SHA256(secret, "<t>.<raw body>"), compared
 * in constant time, and t lies within the tolerance of now (both ways: a
 * timestamp from the future beyond it is as suspect as an old one).
 *
 * Events: `charge.refunded` (data.object is a charge: its payment_intent,
 * amount_refunded and, when present, the refunds list) and
 * `charge.dispute.created` (data.object is a dispute). Every other type
 * parses to PL_WEBHOOK_OTHER: acknowledged, not acted on.
 *
 * Owns: parsing and verification only. Never: touches the database, logs,
 * or keeps a secret beyond the call.
 */
#ifndef PL_WEBHOOK_H
#define PL_WEBHOOK_H

#include <stddef.h>
#include <stdint.h>

/* Stripe's default tolerance between the signed timestamp and now. */
#define PL_WEBHOOK_TOLERANCE_S 300
/* A Stripe-Signature header longer than this is refused unread. */
#define PL_WEBHOOK_HEADER_MAX 4096
/* Identifiers (evt_, pi_, re_, dp_, ch_) longer than this are refused. */
#define PL_WEBHOOK_ID_MAX 128
/* A charge.refunded event listing more refunds than this is refused. */
#define PL_WEBHOOK_MAX_REFUNDS 100

enum pl_webhook_verdict {
    PL_WEBHOOK_VALID = 0,
    PL_WEBHOOK_MALFORMED,    /* header missing, too long, or not t=...,v1=... */
    PL_WEBHOOK_NO_SIGNATURE, /* well-formed, but no v1 entry */
    PL_WEBHOOK_TOO_OLD,      /* t older than now - tolerance */
    PL_WEBHOOK_TOO_NEW,      /* t later than now + tolerance */
    PL_WEBHOOK_MISMATCH,     /* no v1 matches: wrong secret or altered body */
};

/* "valid", "malformed", ... (static storage). */
const char *pl_webhook_verdict_name(enum pl_webhook_verdict v);

/*
 * Check a Stripe-Signature header against the raw body. `header` may be NULL
 * (→ MALFORMED); `body` need not be terminated. `secret` is the whole signing
 * secret, "whsec_..." included, used as HMAC key bytes. The timestamp is
 * checked before any HMAC is computed. *t_out (may be NULL) gets the signed
 * timestamp whenever the header parsed, also for TOO_OLD / TOO_NEW.
 */
enum pl_webhook_verdict pl_webhook_verify(const char *header, const char *body, size_t body_len,
                                          const char *secret, int64_t now_s, int64_t tolerance_s,
                                          int64_t *t_out);

/* Lowercase hex of HMAC-SHA256(secret, "<t>.<body>") into hex[65] (for tests
 * and tools that sign). Returns 0 or PL_EINVAL. */
int pl_webhook_sign(const char *secret, int64_t t, const char *body, size_t body_len, char hex[65]);

enum pl_webhook_kind {
    PL_WEBHOOK_OTHER = 0,
    PL_WEBHOOK_CHARGE_REFUNDED,
    PL_WEBHOOK_DISPUTE_CREATED,
};

struct pl_webhook_refund {
    char id[PL_WEBHOOK_ID_MAX]; /* re_... */
    int64_t amount_minor;       /* > 0 */
    char status[24];            /* succeeded, pending, failed, canceled, ... */
    char pledged_refund[24];    /* metadata.pledged_refund (pledgectl's refund id) or "" */
};

struct pl_webhook_event {
    char id[PL_WEBHOOK_ID_MAX]; /* evt_... */
    char type[64];
    int64_t created; /* unix seconds, 0 when absent */
    enum pl_webhook_kind kind;
    /* For CHARGE_REFUNDED and DISPUTE_CREATED: */
    char object_id[PL_WEBHOOK_ID_MAX];      /* ch_... / dp_... */
    char payment_intent[PL_WEBHOOK_ID_MAX]; /* pi_..., "" when null */
    char currency[4];                       /* upper case ISO 4217 */
    int64_t amount_minor;                   /* charge: amount; dispute: disputed amount */
    int64_t amount_refunded_minor;          /* charge.refunded: the charge's total refunded */
    char reason[64];                        /* dispute reason, "" when absent */
    size_t nrefunds;                        /* charge.refunded: refunds listed (may be 0) */
    struct pl_webhook_refund *refunds;
};

/*
 * Parse an event body (JSON). On success returns 0 and *out gets a new event
 * (pl_webhook_event_free). On failure returns PL_EPARSE with a reason in
 * err (may be NULL) and leaves *out untouched. Refused: invalid JSON,
 * nesting deeper than 32, duplicate keys, a missing or unprintable id/type,
 * and for the kinds acted on, a data.object without the fields above or
 * with amounts out of range.
 */
int pl_webhook_parse_event(const char *body, size_t len, struct pl_webhook_event **out, char *err,
                           size_t errlen);
void pl_webhook_event_free(struct pl_webhook_event *ev);

#endif
