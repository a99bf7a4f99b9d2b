#include "money.h"

#include <stdio.h>
#include <string.h>

#include "util.h"

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

int pl_money_parse(const char *text, int exponent, unsigned flags, int64_t *out,
                   const char **why)
{
    const char *dummy;
    if (!why)
        why = &dummy;
    if (exponent < 0 || exponent > PL_MONEY_MAX_EXPONENT) {
        *why = "currency exponent out of range";
        return PL_ERANGE;
    }
    if (!text || !*text) {
        *why = "amount is empty";
        return PL_EINVAL;
    }
    if (*text == '-') {
        *why = "amount must not be negative";
        return PL_EINVAL;
    }

    const char *p = text;
    int64_t value = 0;
    size_t int_digits = 0;
    for (; is_digit(*p); p++, int_digits++) {
        int d = *p - '0';
        if (value > (INT64_MAX - d) / 10) {
            *why = "amount is too large";
            return PL_ERANGE;
        }
        value = value * 10 + d;
    }

    int decimals = 0;
    if (*p == '.') {
        p++;
        if (!is_digit(*p)) {
            *why = "amount needs digits after the decimal point";
            return PL_EINVAL;
        }
        for (; is_digit(*p); p++) {
            if (decimals == exponent) {
                *why = exponent == 0 ? "this currency has no minor units (no decimals allowed)"
                                     : "amount has more decimals than the currency allows";
                return PL_EINVAL;
            }
            int d = *p - '0';
            if (value > (INT64_MAX - d) / 10) {
                *why = "amount is too large";
                return PL_ERANGE;
            }
            value = value * 10 + d;
            decimals++;
        }
    }
    if (*p != '\0') {
        *why = "amount must be a plain decimal number like 25 or 25.00";
        return PL_EINVAL;
    }
    if (int_digits == 0) {
        *why = "amount needs a digit before the decimal point";
        return PL_EINVAL;
    }

    /* Scale the remaining decimals: "25.5" in USD is 2550. */
    for (; decimals < exponent; decimals++) {
        if (value > INT64_MAX / 10) {
            *why = "amount is too large";
            return PL_ERANGE;
        }
        value *= 10;
    }
    if (value == 0 && !(flags & PL_MONEY_ALLOW_ZERO)) {
        *why = "amount must be greater than zero";
        return PL_EINVAL;
    }
    *out = value;
    return 0;
}

int pl_money_format(int64_t minor, int exponent, char *buf, size_t n)
{
    if (exponent < 0 || exponent > PL_MONEY_MAX_EXPONENT)
        return PL_ERANGE;
    /* Work in unsigned so INT64_MIN has a magnitude. */
    bool neg = minor < 0;
    uint64_t mag = neg ? (uint64_t)0 - (uint64_t)minor : (uint64_t)minor;
    char digits[24];
    int len = snprintf(digits, sizeof(digits), "%llu", (unsigned long long)mag);

    char tmp[PL_MONEY_FMT_MAX];
    size_t o = 0;
    if (neg)
        tmp[o++] = '-';
    if (exponent == 0) {
        memcpy(tmp + o, digits, (size_t)len);
        o += (size_t)len;
    } else {
        int int_len = len - exponent;
        if (int_len <= 0) {
            tmp[o++] = '0';
            tmp[o++] = '.';
            for (int i = 0; i < -int_len; i++)
                tmp[o++] = '0';
            memcpy(tmp + o, digits, (size_t)len);
            o += (size_t)len;
        } else {
            memcpy(tmp + o, digits, (size_t)int_len);
            o += (size_t)int_len;
            tmp[o++] = '.';
            memcpy(tmp + o, digits + int_len, (size_t)exponent);
            o += (size_t)exponent;
        }
    }
    tmp[o] = '\0';
    if (o + 1 > n)
        return PL_ERANGE;
    memcpy(buf, tmp, o + 1);
    return 0;
}

bool pl_currency_code_valid(const char *code)
{
    if (!code)
        return false;
    for (int i = 0; i < 3; i++)
        if (code[i] < 'A' || code[i] > 'Z')
            return false;
    return code[3] == '\0';
}

int pl_money_add(int64_t a, int64_t b, int64_t *out)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return PL_ERANGE;
    *out = r;
    return 0;
}

int pl_money_sub(int64_t a, int64_t b, int64_t *out)
{
    int64_t r;
    if (__builtin_sub_overflow(a, b, &r))
        return PL_ERANGE;
    *out = r;
    return 0;
}
