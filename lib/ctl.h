/*
 * ctl — the pure rules behind pledgectl's input checks, kept in the library
 * so unit tests and fuzzers reach them: card-number detection, pledge
 * schedule words, UTF-8 validity, timestamp display.
 *
 * Never: touches the database, prints, or exits.
 */
#ifndef PL_CTL_H
#define PL_CTL_H

#include <stdbool.h>
#include <stddef.h>

/*
 * True when `s` contains something that looks like a card number (PAN):
 * 13 to 19 digits in a row, optionally grouped by single spaces or dashes
 * ("4242 4242 4242 4242", "4242-4242-4242-4242"). No Luhn check: anything
 * of that shape is refused, because the cost of storing a real one is far
 * higher than asking an operator to retype a reference.
 */
bool pl_ctl_looks_like_pan(const char *s);

/* "1".."31" → 1..31; "last" → 0 (stored as NULL). 0 or PL_EINVAL. */
int pl_ctl_parse_anchor(const char *s, int *out);

/* monthly|quarterly|semiannual|annual (also 1, 3, 6, 12) → months.
 * 0 or PL_EINVAL. */
int pl_ctl_parse_interval(const char *s, int *out_months);
/* 1 → "monthly" … ; "?" for anything else. Static storage. */
const char *pl_ctl_interval_name(int months);

/* Strict YYYY-MM-DD shape (the calendar check is PostgreSQL's). */
bool pl_ctl_date_shape(const char *s);

/* Whole string is valid UTF-8 without C0 controls other than TAB, LF, CR
 * (and without DEL). */
bool pl_ctl_text_ok(const char *s);

/*
 * PostgreSQL's timestamptz text ("2026-01-15 09:00:00.123+00",
 * "… -03:30") as ISO 8601 ("2026-01-15T09:00:00.123+00:00") into out
 * (size n). Text of another shape is copied unchanged. Returns out.
 */
char *pl_ctl_iso_timestamp(const char *pg, char *out, size_t n);

#endif
