/*
 * gateway_stripe — the Stripe driver: PaymentIntents created and confirmed
 * off-session with a saved card, lookups by metadata search or by id, and
 * refunds. Requests are form-encoded with a fixed field order, so the same
 * operation always yields the same bytes (Stripe compares the parameters of
 * a resent idempotency key).
 *
 * The classification tables live in gateway_stripe.c; the functions below
 * are exported for the unit tests and the fuzz target.
 */
#ifndef PL_GATEWAY_STRIPE_H
#define PL_GATEWAY_STRIPE_H

#include <stdbool.h>

#include "gateway.h"
#include "http.h"

#define PL_STRIPE_BASE_URL "https://api.stripe.com"

extern const struct pl_gateway_driver pl_gateway_driver_stripe;

/* Classify one reply to `op`. Pure: reads only its arguments; never fails;
 * any body (empty, not JSON, hostile, truncated) yields a class. `out` must
 * be initialised (pl_gateway_result_init); for PL_GW_LOOKUP_KEY put the key
 * looked up in out->attempt_key first: only exact metadata matches count. */
void pl_stripe_classify(enum pl_gateway_op_kind op, const struct pl_http_response *resp,
                        struct pl_gateway_result *out);

/* Single-table lookups (the data behind pl_stripe_classify). Return true and
 * set *out when `code` is in the table. */
bool pl_stripe_decline_class(const char *decline_code, enum pl_outcome *out);
bool pl_stripe_advice_class(const char *advice_code, enum pl_outcome *out);
bool pl_stripe_error_code_class(const char *code, enum pl_outcome *out);

/* The class of a card/invalid-request error given its fields (any may be
 * NULL or ""), after the precedence documented in gateway_stripe.c. */
enum pl_outcome pl_stripe_decline_outcome(const char *type, const char *code,
                                          const char *decline_code, const char *advice_code);

#endif
