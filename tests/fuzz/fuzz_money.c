/*
 * libFuzzer target: money (lib/money.c), which parses amounts typed by
 * operators and read from CSV imports.
 *
 * Input layout: byte 0 picks the exponent (low 3 bits, 0..7: 5..7 are out
 * of range and must be refused) and the flags (bit 3: PL_MONEY_ALLOW_ZERO);
 * the rest is the amount text. The seeds in corpus/fuzz_money/ follow that
 * layout (e.g. "\x02" "25.00" = USD 25.00).
 *
 * Besides "no crash", every parsed amount must survive format -> parse
 * unchanged, a failed parse must leave the output alone, and the checked
 * arithmetic must agree with the compiler's overflow builtins.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "money.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SENTINEL INT64_C(-7777777)

static int64_t read_i64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return (int64_t)v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int exponent = data[0] & 7;
    unsigned flags = (data[0] & 8) ? PL_MONEY_ALLOW_ZERO : 0;
    size_t n = size - 1;
    /* an exact-size, NUL-terminated copy, so ASan sees any overread */
    char *text = malloc(n + 1);
    if (!text)
        return 0;
    memcpy(text, data + 1, n);
    text[n] = '\0';

    int64_t v = SENTINEL;
    const char *why = NULL;
    int r = pl_money_parse(text, exponent, flags, &v, &why);
    if (r == 0) {
        if (exponent > PL_MONEY_MAX_EXPONENT || v < 0 || (v == 0 && !(flags & PL_MONEY_ALLOW_ZERO)))
            abort();
        char buf[PL_MONEY_FMT_MAX];
        if (pl_money_format(v, exponent, buf, sizeof buf) != 0)
            abort();
        int64_t back = SENTINEL;
        if (pl_money_parse(buf, exponent, PL_MONEY_ALLOW_ZERO, &back, NULL) != 0 || back != v)
            abort();
    } else {
        if (r != PL_EINVAL && r != PL_ERANGE)
            abort();
        if (v != SENTINEL || !why || !*why)
            abort();
    }

    /* the first 16 bytes of text, as two int64: format/parse round trip and
     * checked arithmetic */
    if (n >= 16) {
        int64_t a = read_i64(data + 1), b = read_i64(data + 9);
        char buf[PL_MONEY_FMT_MAX];
        int fr = pl_money_format(a, exponent, buf, sizeof buf);
        if ((fr == 0) != (exponent <= PL_MONEY_MAX_EXPONENT))
            abort();
        if (fr == 0 && a > 0) {
            int64_t back = SENTINEL;
            if (pl_money_parse(buf, exponent, 0, &back, NULL) != 0 || back != a)
                abort();
        }
        if (fr == 0 && a < 0 && buf[0] != '-')
            abort();
        char small[4];
        if (pl_money_format(a, exponent, small, sizeof small) == 0 && strlen(small) >= sizeof small)
            abort();

        int64_t want, got = SENTINEL;
        bool over = __builtin_add_overflow(a, b, &want);
        int ar = pl_money_add(a, b, &got);
        if (over ? (ar != PL_ERANGE || got != SENTINEL) : (ar != 0 || got != want))
            abort();
        got = SENTINEL;
        over = __builtin_sub_overflow(a, b, &want);
        ar = pl_money_sub(a, b, &got);
        if (over ? (ar != PL_ERANGE || got != SENTINEL) : (ar != 0 || got != want))
            abort();
    }

    /* currency codes: three upper-case ASCII letters, nothing else */
    bool valid = strlen(text) == 3;
    for (size_t i = 0; valid && i < 3; i++)
        valid = text[i] >= 'A' && text[i] <= 'Z';
    if (pl_currency_code_valid(text) != valid)
        abort();

    free(text);
    return 0;
}
