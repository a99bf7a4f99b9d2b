/*
 * money — amounts as int64 minor units of a currency whose exponent (number
 * of decimals: JPY 0, USD 2, BHD 3) comes from the `currency` table.
 *
 * Owns: parsing decimal strings into minor units and formatting them back,
 * with overflow checks. Never: touches floating point, or guesses an
 * exponent (callers look it up).
 */
#ifndef PL_MONEY_H
#define PL_MONEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PL_MONEY_MAX_EXPONENT 4
/* Longest formatted amount: sign, 19 digits, point, NUL, with room. */
#define PL_MONEY_FMT_MAX 32

enum pl_money_flags {
    PL_MONEY_ALLOW_ZERO = 1 << 0, /* "0.00" is accepted (default: must be > 0) */
};

/*
 * Parse a plain decimal string ("25", "25.00", "25.5", "0.125") for a
 * currency with `exponent` decimals into minor units. Refused, with *why set
 * to a static reason: empty text, signs, spaces, thousands separators,
 * exponent notation, more decimals than the currency has, zero unless
 * allowed, a value beyond INT64_MAX minor units.
 * Returns 0, PL_EINVAL or PL_ERANGE; *out is untouched on failure.
 */
int pl_money_parse(const char *text, int exponent, unsigned flags, int64_t *out,
                   const char **why);

/*
 * Format minor units with the currency's exponent: 2500 → "25.00" (USD),
 * "2500" (JPY), "2.500" (BHD); negative amounts get a leading '-'.
 * Returns 0, or PL_ERANGE if buf (size n) is too small or the exponent is
 * out of range.
 */
int pl_money_format(int64_t minor, int exponent, char *buf, size_t n);

/* True for three upper-case ASCII letters (the shape of an ISO 4217 code). */
bool pl_currency_code_valid(const char *code);

/* Checked arithmetic on minor units: 0 or PL_ERANGE (out untouched). */
int pl_money_add(int64_t a, int64_t b, int64_t *out);
int pl_money_sub(int64_t a, int64_t b, int64_t *out);

#endif
