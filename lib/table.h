/*
 * table — rows for people and for programs: the output of pledgectl's
 * read commands.
 *
 * One table, three renderings:
 *   PL_TABLE_ALIGNED  columns padded to their widest cell (display width of
 *                     UTF-8 text) under an upper-case heading; for terminals
 *   PL_TABLE_TSV      a header line of keys, then one line per row, cells
 *                     separated by one TAB; for pipes, cut(1), awk(1)
 *   PL_TABLE_JSON     an array of objects keyed by the column keys, in column
 *                     order; NULL cells are null, integer and boolean columns
 *                     are JSON numbers and booleans
 * In the two text renderings a cell is escaped so a row stays one line:
 * backslash → \\, TAB → \t, LF → \n, CR → \r, other control bytes → \xHH;
 * a NULL cell is empty. Everything else (quotes, commas, non-ASCII) is
 * printed verbatim.
 *
 * Owns: copies of every key, heading and cell. Never: decides a mode by
 * itself (pl_table_mode_auto() helps the caller), or reorders rows.
 */
#ifndef PL_TABLE_H
#define PL_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <jansson.h>

enum pl_table_mode {
    PL_TABLE_ALIGNED = 0,
    PL_TABLE_TSV,
    PL_TABLE_JSON,
};

enum pl_table_type {
    PL_COL_TEXT = 0, /* JSON string */
    PL_COL_INT,      /* JSON integer (cell text must be a decimal integer) */
    PL_COL_BOOL,     /* JSON boolean: "t"/"true" are true, anything else false */
    PL_COL_JSON,     /* cell text is JSON (e.g. a jsonb column); embedded as is */
};

enum pl_table_col_flags {
    PL_COL_JSON_ONLY = 1u << 0, /* only in the JSON rendering (e.g. amount_minor) */
    PL_COL_RIGHT = 1u << 1,     /* right-aligned in the aligned rendering (amounts) */
};

struct pl_table;

/* A new empty table. Never NULL. */
struct pl_table *pl_table_new(void);
/* NULL is accepted. */
void pl_table_free(struct pl_table *t);

/* Add a column (before the first row). `heading` NULL: the key upper-cased,
 * '_' as ' '. Returns the column index. */
size_t pl_table_add_column(struct pl_table *t, const char *key, const char *heading,
                           enum pl_table_type type, unsigned flags);

/* Start a new row (all cells NULL). Returns its index. */
size_t pl_table_add_row(struct pl_table *t);

/* Set a cell of the last row (copied); NULL means null. */
void pl_table_set(struct pl_table *t, size_t col, const char *text);
/* Set a cell by column key; ignored when there is no such column. */
void pl_table_set_key(struct pl_table *t, const char *key, const char *text);

size_t pl_table_rows(const struct pl_table *t);
size_t pl_table_columns(const struct pl_table *t);
/* Borrowed; NULL for a null cell. */
const char *pl_table_get(const struct pl_table *t, size_t row, size_t col);

/* Render every row in `mode` (JSON: an array, then a newline). */
void pl_table_print(const struct pl_table *t, FILE *out, enum pl_table_mode mode);

/* Render one row as a record: ALIGNED "Heading:  value" lines, TSV
 * "key<TAB>value" lines, JSON one object. */
void pl_table_print_record(const struct pl_table *t, size_t row, FILE *out,
                           enum pl_table_mode mode);

/* JSON of all rows (an array) or of one row (an object); new reference. */
json_t *pl_table_json(const struct pl_table *t);
json_t *pl_table_row_json(const struct pl_table *t, size_t row);

/* Escape `s` for the text renderings into a new string (free()). */
char *pl_table_escape(const char *s);

/* Display width of UTF-8 text in terminal columns (wide characters 2,
 * combining marks 0); invalid bytes count 1 each. */
size_t pl_table_width(const char *s);

/* JSON when asked for, aligned on a terminal, TSV otherwise. */
enum pl_table_mode pl_table_mode_auto(FILE *out, bool json);

#endif
