#include "ctl.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

#define PAN_MIN_DIGITS 13
#define PAN_MAX_DIGITS 19

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

bool pl_ctl_looks_like_pan(const char *s)
{
    if (!s)
        return false;
    for (const char *p = s; *p; p++) {
        if (!is_digit(*p) || (p > s && is_digit(p[-1])))
            continue;
        /* a run starting here: digits, with single separators between them */
        int digits = 0;
        const char *q = p;
        while (*q) {
            if (is_digit(*q)) {
                digits++;
                q++;
            } else if ((*q == ' ' || *q == '-') && is_digit(q[1]) && q > p && is_digit(q[-1])) {
                q++;
            } else {
                break;
            }
        }
        if (digits >= PAN_MIN_DIGITS && digits <= PAN_MAX_DIGITS)
            return true;
        /* a run longer than a PAN may still hide one grouped inside it; an
         * ungrouped 20+ digit number is not a card number */
        if (digits > PAN_MAX_DIGITS) {
            int group = 0;
            for (const char *r = p; r < q; r++) {
                if (is_digit(*r)) {
                    group++;
                } else {
                    group = 0;
                }
                if (group >= PAN_MIN_DIGITS && group <= PAN_MAX_DIGITS && !is_digit(r[1]))
                    return true;
            }
        }
    }
    return false;
}

int pl_ctl_parse_anchor(const char *s, int *out)
{
    if (!s)
        return PL_EINVAL;
    if (strcmp(s, "last") == 0) {
        *out = 0;
        return 0;
    }
    int64_t v;
    if (pl_parse_i64(s, &v) < 0 || v < 1 || v > 31)
        return PL_EINVAL;
    *out = (int)v;
    return 0;
}

static const struct {
    const char *name;
    int months;
} INTERVALS[] = {
    {"monthly", 1},
    {"quarterly", 3},
    {"semiannual", 6},
    {"annual", 12},
};

int pl_ctl_parse_interval(const char *s, int *out_months)
{
    if (!s)
        return PL_EINVAL;
    for (size_t i = 0; i < PL_ARRAY_LEN(INTERVALS); i++) {
        char num[8];
        snprintf(num, sizeof(num), "%d", INTERVALS[i].months);
        if (strcmp(s, INTERVALS[i].name) == 0 || strcmp(s, num) == 0) {
            *out_months = INTERVALS[i].months;
            return 0;
        }
    }
    return PL_EINVAL;
}

const char *pl_ctl_interval_name(int months)
{
    for (size_t i = 0; i < PL_ARRAY_LEN(INTERVALS); i++)
        if (INTERVALS[i].months == months)
            return INTERVALS[i].name;
    return "?";
}

bool pl_ctl_date_shape(const char *s)
{
    if (!s || strlen(s) != 10)
        return false;
    for (int i = 0; i < 10; i++) {
        if (i == 4 || i == 7) {
            if (s[i] != '-')
                return false;
        } else if (!is_digit(s[i])) {
            return false;
        }
    }
    return true;
}

bool pl_ctl_text_ok(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        if (*p < 0x80) {
            if ((*p < 0x20 && *p != '\t' && *p != '\n' && *p != '\r') || *p == 0x7f)
                return false;
            p++;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if ((*p & 0xE0) == 0xC0)
            len = 2, cp = *p & 0x1F, min = 0x80;
        else if ((*p & 0xF0) == 0xE0)
            len = 3, cp = *p & 0x0F, min = 0x800;
        else if ((*p & 0xF8) == 0xF0)
            len = 4, cp = *p & 0x07, min = 0x10000;
        else
            return false;
        for (size_t i = 1; i < len; i++) {
            if ((p[i] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        p += len;
    }
    return true;
}

char *pl_ctl_iso_timestamp(const char *pg, char *out, size_t n)
{
    /* YYYY-MM-DD HH:MM:SS[.f+](+|-)HH[:MM[:SS]] */
    size_t len = strlen(pg);
    if (len < 22 || pg[10] != ' ' || pg[13] != ':' || pg[16] != ':' || len + 4 >= n) {
        pl_strlcpy(out, pg, n);
        return out;
    }
    memcpy(out, pg, len + 1);
    out[10] = 'T';
    char *sign = strpbrk(out + 19, "+-");
    if (sign && strlen(sign) == 3) /* "+00" → "+00:00" */
        memcpy(out + strlen(out), ":00", 4); /* room checked above */
    return out;
}
