/*
 * libFuzzer target: the Stripe reply classifier (pl_stripe_classify), which
 * reads whatever the network hands us.
 *
 * Input layout: byte 0 picks the operation (low 2 bits) and the header
 * flags (replayed, Stripe-Should-Retry, truncated); byte 1 picks the HTTP
 * status from a table; the rest is the body. The seeds in
 * corpus/fuzz_stripe_reply/ follow that layout (e.g. "\x00\x00" + a
 * PaymentIntent = a charge answered 200).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "gateway_stripe.h"
#include "http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const long statuses[] = {200, 402, 400, 401, 403, 404, 409, 429,
                                500, 503, 424, 201, 302, 0,   418, 599};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint8_t flags = data[0];
    long status = statuses[data[1] % (sizeof statuses / sizeof statuses[0])];
    size_t n = size - 2;
    /* the client always hands a NUL-terminated body */
    char *body = malloc(n + 1);
    if (!body)
        return 0;
    memcpy(body, data + 2, n);
    body[n] = 0;

    struct pl_http_response r = {0};
    r.transport = status ? PL_HTTP_REPLIED : PL_HTTP_MAYBE_SENT;
    r.status = status;
    r.body = body;
    r.body_len = n;
    r.body_truncated = flags & 0x20;
    r.replayed = flags & 0x04;
    r.should_retry = (flags & 0x08) ? ((flags & 0x10) ? 1 : 0) : -1;
    r.retry_after_ms = (flags & 0x40) ? 1000 : -1;
    r.request_id = "req_fuzz";
    r.error = "";

    enum pl_gateway_op_kind op = (enum pl_gateway_op_kind)(flags & 3);
    struct pl_gateway_result res;
    pl_gateway_result_init(&res, op);
    if (op == PL_GW_LOOKUP_KEY)
        strcpy(res.attempt_key, "pledged-1-1");
    pl_stripe_classify(op, &r, &res);

    /* invariants any reply must keep */
    if ((unsigned)res.outcome >= PL_OUT_COUNT)
        abort();
    if (res.outcome == PL_OUT_NOT_FOUND && op != PL_GW_LOOKUP_KEY && op != PL_GW_LOOKUP_REF)
        abort();
    if (res.outcome == PL_OUT_SUCCEEDED && (status < 200 || status >= 300))
        abort();
    if (memchr(res.message, 0, sizeof res.message) == NULL ||
        memchr(res.ref, 0, sizeof res.ref) == NULL)
        abort();
    free(body);
    return 0;
}
