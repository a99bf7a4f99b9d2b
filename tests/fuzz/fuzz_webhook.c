/*
 * libFuzzer target: webhook input from the outside — the Stripe-Signature
 * header parser/verifier and the event body parser (lib/webhook.c).
 *
 * Input layout: the header up to the first '\n', then the raw body. The
 * header is checked at its own timestamp (when it parses) so the HMAC path
 * runs too, and the body is parsed whatever the verdict, as if signed. The
 * seeds in corpus/fuzz_webhook/ follow that layout.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "webhook.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t hlen = nl ? (size_t)(nl - data) : size;
    char *header = malloc(hlen + 1);
    if (!header)
        return 0;
    memcpy(header, data, hlen);
    header[hlen] = '\0';
    const char *body = nl ? (const char *)nl + 1 : "";
    size_t blen = nl ? size - hlen - 1 : 0;

    int64_t t = 0;
    enum pl_webhook_verdict v =
        pl_webhook_verify(header, body, blen, "whsec_fuzz", 0, PL_WEBHOOK_TOLERANCE_S, &t);
    if (v == PL_WEBHOOK_TOO_OLD || v == PL_WEBHOOK_TOO_NEW)
        (void)pl_webhook_verify(header, body, blen, "whsec_fuzz", t, PL_WEBHOOK_TOLERANCE_S, NULL);
    free(header);

    struct pl_webhook_event *ev = NULL;
    char err[128];
    if (pl_webhook_parse_event(body, blen, &ev, err, sizeof(err)) == 0) {
        /* touch what the daemon reads */
        size_t sum = strlen(ev->id) + strlen(ev->type) + strlen(ev->payment_intent);
        for (size_t i = 0; i < ev->nrefunds; i++)
            sum += strlen(ev->refunds[i].id) + strlen(ev->refunds[i].pledged_refund);
        if (sum == (size_t)-1)
            abort();
        pl_webhook_event_free(ev);
    }
    return 0;
}
