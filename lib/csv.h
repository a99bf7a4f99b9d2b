/*
 * csv — an RFC 4180 reader for files that come from outside (CRM exports
 * for `pledgectl import`).
 *
 * Accepts: an optional UTF-8 byte order mark, CRLF or LF (or a lone CR)
 * line ends, quoted fields with embedded separators, quotes ("") and line
 * breaks (a CRLF inside quotes is read as LF), a missing final line end.
 * Lines that are completely empty are skipped (a trailing newline, a blank
 * line at the end of an export), so they never become records.
 * Refuses, with the line number: a quote inside an unquoted field, text
 * after a closing quote, a quoted field still open at the end of the
 * input, a NUL byte.
 *
 * Owns: nothing but its scratch buffers; the input buffer is borrowed and
 * must outlive the reader. Never: checks UTF-8 or interprets values — the
 * caller validates fields.
 */
#ifndef PL_CSV_H
#define PL_CSV_H

#include <stddef.h>

struct pl_csv;

/* A reader over data[0..len). Never NULL (aborts on exhaustion). */
struct pl_csv *pl_csv_new(const char *data, size_t len);

/* NULL is accepted. */
void pl_csv_free(struct pl_csv *r);

/*
 * Read the next record. Returns 1 with *fields (an array of *n
 * NUL-terminated strings, borrowed until the next call or free) and *line
 * (1-based line where the record starts); 0 at the end of the input; or
 * PL_EPARSE, after which pl_csv_error() says what and where, and every
 * further call returns PL_EPARSE. Outputs are untouched unless 1 is
 * returned.
 */
int pl_csv_next(struct pl_csv *r, char ***fields, size_t *n, long *line);

/* "line 7: quoted field is never closed (it starts here)"; "" when no
 * error. Borrowed. */
const char *pl_csv_error(const struct pl_csv *r);

#endif
