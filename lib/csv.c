#include "csv.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

struct pl_csv {
    const char *data;
    size_t len;
    size_t pos;
    long line;   /* line of data[pos] */
    bool failed;
    char err[160];

    char *buf; /* field bytes of the current record, each NUL-terminated */
    size_t buf_len, buf_cap;
    size_t *starts; /* offsets into buf */
    char **fields;  /* pointers into buf, rebuilt per record */
    size_t nfields, cap_fields;
};

struct pl_csv *pl_csv_new(const char *data, size_t len)
{
    struct pl_csv *r = pl_xcalloc(1, sizeof(*r));
    r->data = data;
    r->len = len;
    r->line = 1;
    if (len >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0)
        r->pos = 3;
    return r;
}

void pl_csv_free(struct pl_csv *r)
{
    if (!r)
        return;
    free(r->buf);
    free(r->starts);
    free(r->fields);
    free(r);
}

const char *pl_csv_error(const struct pl_csv *r)
{
    return r->failed ? r->err : "";
}

static void put(struct pl_csv *r, char c)
{
    if (r->buf_len + 1 >= r->buf_cap) {
        r->buf_cap = r->buf_cap ? r->buf_cap * 2 : 256;
        r->buf = pl_xrealloc(r->buf, r->buf_cap);
    }
    r->buf[r->buf_len++] = c;
}

static void start_field(struct pl_csv *r)
{
    if (r->nfields == r->cap_fields) {
        r->cap_fields = r->cap_fields ? r->cap_fields * 2 : 16;
        r->starts = pl_xrealloc(r->starts, r->cap_fields * sizeof(*r->starts));
    }
    r->starts[r->nfields++] = r->buf_len;
}

static int fail(struct pl_csv *r, long line, const char *what)
{
    r->failed = true;
    snprintf(r->err, sizeof(r->err), "line %ld: %s", line, what);
    return PL_EPARSE;
}

/* Length of the line end at data[i] (1 or 2), 0 when none. */
static size_t eol_at(const struct pl_csv *r, size_t i)
{
    if (i >= r->len)
        return 0;
    if (r->data[i] == '\n')
        return 1;
    if (r->data[i] == '\r')
        return (i + 1 < r->len && r->data[i + 1] == '\n') ? 2 : 1;
    return 0;
}

int pl_csv_next(struct pl_csv *r, char ***fields, size_t *n, long *line)
{
    if (r->failed)
        return PL_EPARSE;
    /* skip completely empty lines */
    size_t e;
    while ((e = eol_at(r, r->pos)) > 0) {
        r->pos += e;
        r->line++;
    }
    if (r->pos >= r->len)
        return 0;

    long start_line = r->line;
    r->buf_len = 0;
    r->nfields = 0;
    start_field(r);

    for (;;) {
        /* at the start of a field */
        if (r->pos < r->len && r->data[r->pos] == '"') {
            long quote_line = r->line;
            r->pos++;
            for (;;) {
                if (r->pos >= r->len)
                    return fail(r, quote_line, "quoted field is never closed (it starts here)");
                char c = r->data[r->pos];
                if (c == '\0')
                    return fail(r, r->line, "NUL byte in the input");
                if (c == '"') {
                    if (r->pos + 1 < r->len && r->data[r->pos + 1] == '"') {
                        put(r, '"');
                        r->pos += 2;
                        continue;
                    }
                    r->pos++;
                    break;
                }
                if ((e = eol_at(r, r->pos)) > 0) {
                    put(r, '\n');
                    r->pos += e;
                    r->line++;
                    continue;
                }
                put(r, c);
                r->pos++;
            }
            if (r->pos < r->len && r->data[r->pos] != ',' && eol_at(r, r->pos) == 0)
                return fail(r, r->line,
                            "text after the closing quote of a field (a quote inside a "
                            "quoted field is written \"\")");
        } else {
            while (r->pos < r->len && r->data[r->pos] != ',' && eol_at(r, r->pos) == 0) {
                char c = r->data[r->pos];
                if (c == '"')
                    return fail(r, r->line,
                                "quote inside an unquoted field (quote the whole field and "
                                "write the quote as \"\")");
                if (c == '\0')
                    return fail(r, r->line, "NUL byte in the input");
                put(r, c);
                r->pos++;
            }
        }
        put(r, '\0');
        if (r->pos < r->len && r->data[r->pos] == ',') {
            r->pos++;
            start_field(r);
            continue;
        }
        /* end of record: a line end or the end of the input */
        if ((e = eol_at(r, r->pos)) > 0) {
            r->pos += e;
            r->line++;
        }
        break;
    }

    if (r->cap_fields > 0)
        r->fields = pl_xrealloc(r->fields, r->cap_fields * sizeof(*r->fields));
    for (size_t i = 0; i < r->nfields; i++)
        r->fields[i] = r->buf + r->starts[i];
    *fields = r->fields;
    *n = r->nfields;
    *line = start_line;
    return 1;
}
