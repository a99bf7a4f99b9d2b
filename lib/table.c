#include "table.h"

#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

struct col {
    char *key;
    char *heading;
    enum pl_table_type type;
    unsigned flags;
};

struct pl_table {
    struct col *cols;
    size_t ncols, cap_cols;
    char **cells; /* nrows * ncols, row-major */
    size_t nrows, cap_rows;
};

struct pl_table *pl_table_new(void)
{
    return pl_xcalloc(1, sizeof(struct pl_table));
}

void pl_table_free(struct pl_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    for (size_t i = 0; i < t->ncols; i++) {
        free(t->cols[i].key);
        free(t->cols[i].heading);
    }
    free(t->cols);
    free(t);
}

size_t pl_table_add_column(struct pl_table *t, const char *key, const char *heading,
                           enum pl_table_type type, unsigned flags)
{
    if (t->ncols == t->cap_cols) {
        t->cap_cols = t->cap_cols ? t->cap_cols * 2 : 8;
        t->cols = pl_xrealloc(t->cols, t->cap_cols * sizeof(*t->cols));
    }
    struct col *c = &t->cols[t->ncols];
    c->key = pl_xstrdup(key);
    if (heading) {
        c->heading = pl_xstrdup(heading);
    } else {
        c->heading = pl_xstrdup(key);
        for (char *p = c->heading; *p; p++)
            *p = *p == '_' ? ' ' : (char)toupper((unsigned char)*p);
    }
    c->type = type;
    c->flags = flags;
    return t->ncols++;
}

size_t pl_table_add_row(struct pl_table *t)
{
    if (t->nrows == t->cap_rows) {
        t->cap_rows = t->cap_rows ? t->cap_rows * 2 : 16;
        t->cells = pl_xrealloc(t->cells, t->cap_rows * t->ncols * sizeof(char *) + 1);
    }
    for (size_t i = 0; i < t->ncols; i++)
        t->cells[t->nrows * t->ncols + i] = NULL;
    return t->nrows++;
}

void pl_table_set(struct pl_table *t, size_t col, const char *text)
{
    if (t->nrows == 0 || col >= t->ncols)
        return;
    char **cell = &t->cells[(t->nrows - 1) * t->ncols + col];
    free(*cell);
    *cell = text ? pl_xstrdup(text) : NULL;
}

void pl_table_set_key(struct pl_table *t, const char *key, const char *text)
{
    for (size_t i = 0; i < t->ncols; i++)
        if (strcmp(t->cols[i].key, key) == 0)
            pl_table_set(t, i, text);
}

size_t pl_table_rows(const struct pl_table *t)
{
    return t->nrows;
}

size_t pl_table_columns(const struct pl_table *t)
{
    return t->ncols;
}

const char *pl_table_get(const struct pl_table *t, size_t row, size_t col)
{
    if (row >= t->nrows || col >= t->ncols)
        return NULL;
    return t->cells[row * t->ncols + col];
}

char *pl_table_escape(const char *s)
{
    if (!s)
        return pl_xstrdup("");
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        n += (*p == '\\' || *p == '\t' || *p == '\n' || *p == '\r') ? 2
             : (*p < 0x20 || *p == 0x7f)                            ? 4
                                                                     : 1;
    char *out = pl_xmalloc(n + 1), *o = out;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '\\':
            *o++ = '\\', *o++ = '\\';
            break;
        case '\t':
            *o++ = '\\', *o++ = 't';
            break;
        case '\n':
            *o++ = '\\', *o++ = 'n';
            break;
        case '\r':
            *o++ = '\\', *o++ = 'r';
            break;
        default:
            if (*p < 0x20 || *p == 0x7f) {
                static const char hex[] = "0123456789abcdef";
                *o++ = '\\', *o++ = 'x', *o++ = hex[*p >> 4], *o++ = hex[*p & 15];
            } else {
                *o++ = (char)*p;
            }
        }
    }
    *o = '\0';
    return out;
}

/* Decode one UTF-8 sequence; returns its length (1 for an invalid byte,
 * with *cp = 0xFFFD). */
static size_t utf8_decode(const unsigned char *p, uint32_t *cp)
{
    if (p[0] < 0x80) {
        *cp = p[0];
        return 1;
    }
    size_t len;
    uint32_t c;
    if ((p[0] & 0xE0) == 0xC0)
        len = 2, c = p[0] & 0x1F;
    else if ((p[0] & 0xF0) == 0xE0)
        len = 3, c = p[0] & 0x0F;
    else if ((p[0] & 0xF8) == 0xF0)
        len = 4, c = p[0] & 0x07;
    else
        goto invalid;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            goto invalid;
        c = (c << 6) | (p[i] & 0x3F);
    }
    *cp = c;
    return len;
invalid:
    *cp = 0xFFFD;
    return 1;
}

static int cp_width(uint32_t c)
{
    if ((c >= 0x0300 && c <= 0x036F) || (c >= 0x200B && c <= 0x200F) ||
        (c >= 0xFE00 && c <= 0xFE0F))
        return 0;
    if ((c >= 0x1100 && c <= 0x115F) || (c >= 0x2E80 && c <= 0xA4CF) ||
        (c >= 0xAC00 && c <= 0xD7A3) || (c >= 0xF900 && c <= 0xFAFF) ||
        (c >= 0xFE30 && c <= 0xFE4F) || (c >= 0xFF00 && c <= 0xFF60) ||
        (c >= 0xFFE0 && c <= 0xFFE6) || (c >= 0x1F300 && c <= 0x1F64F) ||
        (c >= 0x1F900 && c <= 0x1F9FF) || (c >= 0x20000 && c <= 0x3FFFD))
        return 2;
    return 1;
}

size_t pl_table_width(const char *s)
{
    size_t w = 0;
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        uint32_t cp;
        p += utf8_decode(p, &cp);
        w += (size_t)cp_width(cp);
    }
    return w;
}

static bool visible(const struct pl_table *t, size_t c, enum pl_table_mode mode)
{
    return mode == PL_TABLE_JSON || !(t->cols[c].flags & PL_COL_JSON_ONLY);
}

static json_t *cell_json(const struct col *c, const char *v)
{
    if (!v)
        return json_null();
    switch (c->type) {
    case PL_COL_INT: {
        int64_t i;
        if (pl_parse_i64(v, &i) == 0)
            return json_integer(i);
        return json_string(v);
    }
    case PL_COL_BOOL:
        return json_boolean(strcmp(v, "t") == 0 || strcmp(v, "true") == 0);
    case PL_COL_JSON: {
        json_t *j = json_loads(v, JSON_DECODE_ANY, NULL);
        return j ? j : json_string(v);
    }
    case PL_COL_TEXT:
        break;
    }
    json_t *s = json_string(v);
    return s ? s : json_null(); /* invalid UTF-8 cannot be a JSON string (the database
                                   holds only UTF-8, so this is for outside callers) */
}

json_t *pl_table_row_json(const struct pl_table *t, size_t row)
{
    json_t *o = json_object();
    for (size_t c = 0; c < t->ncols; c++) {
        json_t *v = cell_json(&t->cols[c], pl_table_get(t, row, c));
        json_object_set_new(o, t->cols[c].key, v ? v : json_null());
    }
    return o;
}

json_t *pl_table_json(const struct pl_table *t)
{
    json_t *a = json_array();
    for (size_t r = 0; r < t->nrows; r++)
        json_array_append_new(a, pl_table_row_json(t, r));
    return a;
}

static void dump_json(json_t *j, FILE *out)
{
    json_dumpf(j, out, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
    fputc('\n', out);
    json_decref(j);
}

static void pad(FILE *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        fputc(' ', out);
}

void pl_table_print(const struct pl_table *t, FILE *out, enum pl_table_mode mode)
{
    if (mode == PL_TABLE_JSON) {
        dump_json(pl_table_json(t), out);
        return;
    }
    size_t n = t->nrows * t->ncols;
    char **esc = pl_xcalloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        esc[i] = pl_table_escape(t->cells[i]);

    if (mode == PL_TABLE_TSV) {
        bool first = true;
        for (size_t c = 0; c < t->ncols; c++) {
            if (!visible(t, c, mode))
                continue;
            fprintf(out, "%s%s", first ? "" : "\t", t->cols[c].key);
            first = false;
        }
        fputc('\n', out);
        for (size_t r = 0; r < t->nrows; r++) {
            first = true;
            for (size_t c = 0; c < t->ncols; c++) {
                if (!visible(t, c, mode))
                    continue;
                fprintf(out, "%s%s", first ? "" : "\t", esc[r * t->ncols + c]);
                first = false;
            }
            fputc('\n', out);
        }
    } else {
        size_t *w = pl_xcalloc(t->ncols + 1, sizeof(size_t));
        size_t last = 0;
        for (size_t c = 0; c < t->ncols; c++) {
            if (!visible(t, c, mode))
                continue;
            last = c;
            w[c] = pl_table_width(t->cols[c].heading);
            for (size_t r = 0; r < t->nrows; r++) {
                size_t cw = pl_table_width(esc[r * t->ncols + c]);
                if (cw > w[c])
                    w[c] = cw;
            }
        }
        for (size_t r = 0; r <= t->nrows; r++) {
            bool first = true;
            for (size_t c = 0; c < t->ncols; c++) {
                if (!visible(t, c, mode))
                    continue;
                const char *s = r == 0 ? t->cols[c].heading : esc[(r - 1) * t->ncols + c];
                size_t sw = pl_table_width(s);
                if (!first)
                    fputs("  ", out);
                first = false;
                if (t->cols[c].flags & PL_COL_RIGHT) {
                    pad(out, w[c] - sw);
                    fputs(s, out);
                } else {
                    fputs(s, out);
                    if (c != last)
                        pad(out, w[c] - sw);
                }
            }
            fputc('\n', out);
        }
        free(w);
    }
    for (size_t i = 0; i < n; i++)
        free(esc[i]);
    free(esc);
}

void pl_table_print_record(const struct pl_table *t, size_t row, FILE *out,
                           enum pl_table_mode mode)
{
    if (mode == PL_TABLE_JSON) {
        dump_json(pl_table_row_json(t, row), out);
        return;
    }
    size_t kw = 0;
    for (size_t c = 0; c < t->ncols; c++) {
        if (!visible(t, c, mode))
            continue;
        size_t w = pl_table_width(mode == PL_TABLE_TSV ? t->cols[c].key : t->cols[c].heading);
        if (w > kw)
            kw = w;
    }
    for (size_t c = 0; c < t->ncols; c++) {
        if (!visible(t, c, mode))
            continue;
        char *v = pl_table_escape(pl_table_get(t, row, c));
        if (mode == PL_TABLE_TSV) {
            fprintf(out, "%s\t%s\n", t->cols[c].key, v);
        } else {
            fprintf(out, "%s:", t->cols[c].heading);
            pad(out, kw - pl_table_width(t->cols[c].heading) + 2);
            fprintf(out, "%s\n", v);
        }
        free(v);
    }
}

enum pl_table_mode pl_table_mode_auto(FILE *out, bool json)
{
    if (json)
        return PL_TABLE_JSON;
    return isatty(fileno(out)) ? PL_TABLE_ALIGNED : PL_TABLE_TSV;
}
