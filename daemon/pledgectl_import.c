/*
 * pledgectl import donors|pledges FILE: onboarding from a CRM export.
 *
 * Every row is validated before anything is written, every bad row is
 * reported ("FILE:LINE: column 'amount': ..."), and the write is one
 * transaction: all or nothing, unless --skip-invalid. Rows are matched on
 * external_ref, so importing the same file twice changes nothing the second
 * time. A row whose external_ref exists with different values is refused
 * (reported like a bad row, naming the differing columns), except that
 * `import donors --update` applies donor changes; pledge changes always go
 * through the pledge commands (set-amount, set-method, cancel), which keep
 * their audit trail and charge semantics.
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "csv.h"
#include "ctl.h"
#include "money.h"
#include "pledgectl.h"

#define IMPORT_MAX_BYTES  ((size_t)512 * 1024 * 1024)
#define PROGRESS_EVERY    250
#define IMPORT_LOCK_KEY   "pledgectl import"

enum kind { DONORS, PLEDGES };

/* Donor file columns, in documented order: donor fields (enum ctl_donor_field
 * order) then payment method fields. */
static const char *const DONOR_COLUMNS[] = {
    "external_ref", "full_name",   "email",       "address_line1", "address_line2",
    "city",         "region",      "postal_code", "country",       "customer_ref",
    "payment_method", "brand",     "last4",       "exp_month",     "exp_year",
};
#define DONOR_NCOLS 15
enum { DC_CUSTOMER = DF_COUNT, DC_TOKEN, DC_BRAND, DC_LAST4, DC_EXP_MONTH, DC_EXP_YEAR };

static const char *const PLEDGE_COLUMNS[] = {
    "external_ref", "donor_ref", "amount", "currency", "interval", "anchor_day", "fund",
    "start_on",
};
#define PLEDGE_NCOLS 8
enum { PC_REF, PC_DONOR, PC_AMOUNT, PC_CURRENCY, PC_INTERVAL, PC_ANCHOR, PC_FUND, PC_START };

struct row {
    long line;
    char **f; /* by column index of the kind; NULL when the column is absent */
    enum { R_NEW, R_UNCHANGED, R_UPDATE, R_INVALID } outcome;
    char id[24];        /* existing row's id (unchanged/update) */
    bool add_method;    /* donors: the payment method is new */
    char amount_minor[24];
    int interval_months;
    char anchor[8];
    json_t *changes;    /* donors --update: {"col": {"from", "to"}} */
};

struct import {
    struct ctl *ctl;
    enum kind kind;
    const char *file;
    bool dry, skip_invalid, update, progress;
    const char *const *cols;
    size_t ncols;
    struct row *rows;
    size_t nrows;
    json_t *errors; /* [{"line", "column", "message"}] */
    struct row *cur;
    json_t *currencies; /* code → exponent */
};

static void row_error(struct import *im, struct row *r, const char *column, const char *fmt,
                      ...) __attribute__((format(printf, 4, 5)));

static void row_error(struct import *im, struct row *r, const char *column, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    long line = r ? r->line : 0;
    if (r)
        r->outcome = R_INVALID;
    json_array_append_new(im->errors, json_pack("{s:I,s:s?,s:s}", "line", (json_int_t)line,
                                                "column", column, "message", msg));
}

static int by_line(const void *a, const void *b)
{
    json_int_t la = json_integer_value(json_object_get(*(json_t *const *)a, "line"));
    json_int_t lb = json_integer_value(json_object_get(*(json_t *const *)b, "line"));
    return la < lb ? -1 : la > lb;
}

/* Sort the collected errors by line (stable enough: one pass per row adds
 * them in column order) and print them, one per line, on stderr. */
static void report_errors(struct import *im)
{
    size_t n = json_array_size(im->errors);
    if (n == 0)
        return;
    json_t **v = pl_xcalloc(n, sizeof(json_t *));
    for (size_t i = 0; i < n; i++)
        v[i] = json_incref(json_array_get(im->errors, i));
    qsort(v, n, sizeof(*v), by_line);
    json_array_clear(im->errors);
    for (size_t i = 0; i < n; i++) {
        const char *col = json_string_value(json_object_get(v[i], "column"));
        long line = (long)json_integer_value(json_object_get(v[i], "line"));
        const char *msg = json_string_value(json_object_get(v[i], "message"));
        if (col)
            fprintf(stderr, "%s:%ld: column '%s': %s\n", im->file, line, col, msg);
        else
            fprintf(stderr, "%s:%ld: %s\n", im->file, line, msg);
        json_array_append_new(im->errors, v[i]);
    }
    free(v);
}

/* ctl_bad_fn adapter: field is the column name */
static void bad_cell(void *arg, const char *field, const char *reason)
{
    struct import *im = arg;
    row_error(im, im->cur, field, "%s", reason);
}

static const char *cell(const struct row *r, int col)
{
    return r->f[col] && r->f[col][0] ? r->f[col] : NULL;
}

static void trim(char *s)
{
    size_t n = strlen(s), i = 0;
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
    while (s[i] == ' ' || s[i] == '\t')
        i++;
    memmove(s, s + i, n - i + 1);
}

static void progress(struct import *im, const char *what, size_t done, size_t total, bool end)
{
    if (!im->progress)
        return;
    if (!end && done % PROGRESS_EVERY != 0)
        return;
    fprintf(stderr, "\r%s: %zu/%zu rows%s", what, done, total, end ? "\n" : "");
    fflush(stderr);
}

/* ---- reading ------------------------------------------------------------ */

static int read_input(struct import *im, char **data, size_t *len)
{
    if (strcmp(im->file, "-") == 0) {
        size_t cap = 1 << 16, n = 0;
        char *buf = pl_xmalloc(cap);
        size_t got;
        while ((got = fread(buf + n, 1, cap - n - 1, stdin)) > 0) {
            n += got;
            if (n + 1 >= cap) {
                if (cap >= IMPORT_MAX_BYTES) {
                    free(buf);
                    ctl_error("%s: input larger than %zu bytes", im->file, IMPORT_MAX_BYTES);
                    return PL_EXIT_FAILED;
                }
                cap *= 2;
                buf = pl_xrealloc(buf, cap);
            }
        }
        buf[n] = '\0';
        *data = buf;
        *len = n;
        return 0;
    }
    int r = pl_read_file(im->file, IMPORT_MAX_BYTES, data, len);
    if (r < 0) {
        ctl_error("%s: cannot read: %s", im->file, pl_strerror(r));
        return r == -ENOENT ? PL_EXIT_NOTFOUND : PL_EXIT_FAILED;
    }
    return 0;
}

static int parse_csv(struct import *im, const char *data, size_t len)
{
    struct pl_csv *csv = pl_csv_new(data, len);
    char **fields;
    size_t n;
    long line;
    int r = pl_csv_next(csv, &fields, &n, &line);
    if (r <= 0) {
        if (r == 0)
            ctl_error("%s: the file is empty (it needs a header row)", im->file);
        else
            fprintf(stderr, "%s:%s\n", im->file, pl_csv_error(csv) + 5);
        pl_csv_free(csv);
        return PL_EXIT_FAILED;
    }
    /* header: map file position → column index */
    int *map = pl_xcalloc(n + 1, sizeof(int));
    bool *seen = pl_xcalloc(im->ncols + 1, sizeof(bool));
    bool bad = false;
    for (size_t i = 0; i < n; i++) {
        char name[64];
        pl_strlcpy(name, fields[i], sizeof(name));
        trim(name);
        for (char *p = name; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p + 32);
        map[i] = -1;
        for (size_t c = 0; c < im->ncols; c++)
            if (strcmp(name, im->cols[c]) == 0)
                map[i] = (int)c;
        if (map[i] < 0) {
            fprintf(stderr, "%s:%ld: unknown column '%s' (see pledgectl(1) for the columns)\n",
                    im->file, line, fields[i]);
            bad = true;
        } else if (seen[map[i]]) {
            fprintf(stderr, "%s:%ld: column '%s' appears twice\n", im->file, line, name);
            bad = true;
        } else {
            seen[map[i]] = true;
        }
    }
    static const int donor_req[] = {DF_REF, DF_NAME};
    static const int pledge_req[] = {PC_REF, PC_DONOR, PC_AMOUNT, PC_CURRENCY};
    const int *req = im->kind == DONORS ? donor_req : pledge_req;
    size_t nreq = im->kind == DONORS ? PL_ARRAY_LEN(donor_req) : PL_ARRAY_LEN(pledge_req);
    for (size_t i = 0; i < nreq; i++) {
        if (!seen[req[i]]) {
            fprintf(stderr, "%s:%ld: required column '%s' is missing\n", im->file, line,
                    im->cols[req[i]]);
            bad = true;
        }
    }
    size_t header_n = n;
    size_t cap = 0;
    while (!bad && (r = pl_csv_next(csv, &fields, &n, &line)) == 1) {
        if (im->nrows == cap) {
            cap = cap ? cap * 2 : 256;
            im->rows = pl_xrealloc(im->rows, cap * sizeof(*im->rows));
        }
        struct row *row = &im->rows[im->nrows++];
        memset(row, 0, sizeof(*row));
        row->line = line;
        row->f = pl_xcalloc(im->ncols + 1, sizeof(char *));
        if (n != header_n) {
            im->cur = row;
            row_error(im, row, NULL, "%zu fields, but the header has %zu", n, header_n);
            continue;
        }
        for (size_t i = 0; i < n; i++)
            if (map[i] >= 0)
                row->f[map[i]] = pl_xstrdup(fields[i]);
    }
    if (r < 0) {
        fprintf(stderr, "%s:%s\n", im->file, pl_csv_error(csv) + 5);
        bad = true;
    }
    free(map);
    free(seen);
    pl_csv_free(csv);
    return bad ? PL_EXIT_FAILED : 0;
}

/* ---- validation --------------------------------------------------------- */

static bool valid_date(struct ctl *ctl, const char *text)
{
    return pl_ctl_date_shape(text) && ctl_check_date(ctl, NULL, text) == 0;
}

static bool same_text(const char *db, const char *file)
{
    if (!db || !*db)
        return !file || !*file;
    return file && strcmp(db, file) == 0;
}

static int check_duplicates(struct import *im, int col, const char *what)
{
    /* O(n log n) would be nicer; files from a CRM are thousands of rows, and
     * a JSON object as a hash keeps this simple */
    json_t *seen = json_object();
    for (size_t i = 0; i < im->nrows; i++) {
        struct row *r = &im->rows[i];
        const char *v = cell(r, col);
        if (!v || r->outcome == R_INVALID)
            continue;
        json_t *first = json_object_get(seen, v);
        if (first) {
            im->cur = r;
            row_error(im, r, im->cols[col], "%s '%s' already appears on line %lld", what, v,
                      (long long)json_integer_value(first));
        } else {
            json_object_set_new(seen, v, json_integer(r->line));
        }
    }
    json_decref(seen);
    return 0;
}

static int validate_donor(struct import *im, struct row *r)
{
    struct ctl *ctl = im->ctl;
    static const int trimmed[] = {DF_EMAIL, DF_COUNTRY, DC_LAST4, DC_EXP_MONTH, DC_EXP_YEAR,
                                  DC_CUSTOMER, DC_TOKEN};
    for (size_t i = 0; i < PL_ARRAY_LEN(trimmed); i++)
        if (r->f[trimmed[i]])
            trim(r->f[trimmed[i]]);
    struct ctl_donor d = {0};
    for (int i = 0; i < DF_COUNT; i++)
        d.f[i] = r->f[i];
    d.f[DF_REF] = cell(r, DF_REF);
    if (!cell(r, DF_REF))
        row_error(im, r, "external_ref", "is required (rows are matched on it)");
    if (!cell(r, DF_NAME) && d.f[DF_NAME] == NULL)
        d.f[DF_NAME] = "";
    ctl_donor_check(&d, true, (const char *const *)DONOR_COLUMNS, bad_cell, im);
    if (d.f[DF_COUNTRY] == d.country && r->f[DF_COUNTRY])
        pl_strlcpy(r->f[DF_COUNTRY], d.country, strlen(r->f[DF_COUNTRY]) + 1);

    struct ctl_method m = {0};
    m.f[MF_CUSTOMER] = cell(r, DC_CUSTOMER);
    m.f[MF_TOKEN] = cell(r, DC_TOKEN);
    m.f[MF_BRAND] = cell(r, DC_BRAND);
    m.f[MF_LAST4] = cell(r, DC_LAST4);
    m.f[MF_EXP_MONTH] = cell(r, DC_EXP_MONTH);
    m.f[MF_EXP_YEAR] = cell(r, DC_EXP_YEAR);
    static const char *const mnames[MF_COUNT] = {
        "gateway", "customer_ref", "payment_method", "brand", "last4", "exp_month", "exp_year",
    };
    bool any_method = false;
    for (int i = 0; i < MF_COUNT; i++)
        any_method |= m.f[i] != NULL;
    ctl_method_check(&m, any_method, mnames, bad_cell, im);
    if (r->outcome == R_INVALID)
        return 0;

    /* against the database */
    const char *p[1] = {cell(r, DF_REF)};
    PGresult *res = ctl_exec(ctl, "looking up the donor",
                             "SELECT id, external_ref, full_name, email, address_line1, "
                             "address_line2, city, region, postal_code, country FROM donor "
                             "WHERE external_ref = $1",
                             1, p);
    if (!res)
        return PL_EXIT_FAILED;
    if (PQntuples(res) > 0) {
        pl_strlcpy(r->id, PQgetvalue(res, 0, 0), sizeof(r->id));
        json_t *changes = json_object();
        char differ[400] = "";
        for (int i = DF_NAME; i < DF_COUNT; i++) {
            if (!r->f[i])
                continue; /* column absent from the file: not compared */
            const char *db = PQgetisnull(res, 0, i + 1) ? NULL : PQgetvalue(res, 0, i + 1);
            if (same_text(db, r->f[i]))
                continue;
            json_object_set_new(changes, DONOR_COLUMNS[i],
                                json_pack("{s:o,s:s}", "from", db ? json_string(db) : json_null(),
                                          "to", r->f[i]));
            if (strlen(differ) < 300)
                snprintf(differ + strlen(differ), sizeof(differ) - strlen(differ), "%s%s",
                         differ[0] ? ", " : "", DONOR_COLUMNS[i]);
        }
        if (json_object_size(changes) == 0) {
            json_decref(changes);
            r->outcome = R_UNCHANGED;
        } else if (im->update) {
            r->changes = changes;
            r->outcome = R_UPDATE;
        } else {
            json_decref(changes);
            row_error(im, r, NULL,
                      "donor '%s' (id %s) exists with different %s; use --update to apply the "
                      "file's values",
                      cell(r, DF_REF), r->id, differ);
        }
    } else {
        r->outcome = R_NEW;
    }
    PQclear(res);
    if (r->outcome == R_INVALID || !m.f[MF_TOKEN])
        return 0;
    const char *q[1] = {m.f[MF_TOKEN]};
    res = ctl_exec(ctl, "looking up the payment method",
                   "SELECT m.donor_id, d.external_ref FROM payment_method m "
                   "JOIN donor d ON d.id = m.donor_id WHERE m.gateway = 'stripe' "
                   "AND m.token = $1",
                   1, q);
    if (!res)
        return PL_EXIT_FAILED;
    if (PQntuples(res) == 0) {
        r->add_method = true;
        if (r->outcome == R_UNCHANGED)
            r->outcome = R_UPDATE;
    } else if (!r->id[0] || strcmp(PQgetvalue(res, 0, 0), r->id) != 0) {
        row_error(im, r, "payment_method", "%s is already registered to donor %s ('%s')",
                  m.f[MF_TOKEN], PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1));
    }
    PQclear(res);
    return 0;
}

static int validate_pledge(struct import *im, struct row *r)
{
    struct ctl *ctl = im->ctl;
    static const int trimmed[] = {PC_AMOUNT, PC_CURRENCY, PC_INTERVAL, PC_ANCHOR, PC_START};
    for (size_t i = 0; i < PL_ARRAY_LEN(trimmed); i++)
        if (r->f[trimmed[i]])
            trim(r->f[trimmed[i]]);
    const char *ref = cell(r, PC_REF), *donor = cell(r, PC_DONOR);
    const char *amount = cell(r, PC_AMOUNT), *cur = cell(r, PC_CURRENCY);
    if (!ref)
        row_error(im, r, "external_ref", "is required (rows are matched on it)");
    else if (!ctl_check_text("external_ref", ref))
        row_error(im, r, "external_ref", "is not clean text");
    if (!donor)
        row_error(im, r, "donor_ref", "is required: the external_ref of an imported donor");
    int exp = -1;
    if (!cur) {
        row_error(im, r, "currency", "is required");
    } else {
        json_t *e = json_object_get(im->currencies, cur);
        if (!e)
            row_error(im, r, "currency", "unknown currency '%s'", cur);
        else
            exp = (int)json_integer_value(e);
    }
    if (!amount) {
        row_error(im, r, "amount", "is required");
    } else if (exp >= 0) {
        int64_t minor;
        char why[200];
        if (ctl_parse_amount(amount, cur, exp, &minor, why, sizeof(why)) < 0)
            row_error(im, r, "amount", "%s", why);
        else
            snprintf(r->amount_minor, sizeof(r->amount_minor), "%lld", (long long)minor);
    }
    r->interval_months = 1;
    if (cell(r, PC_INTERVAL) &&
        pl_ctl_parse_interval(cell(r, PC_INTERVAL), &r->interval_months) < 0)
        row_error(im, r, "interval", "'%s' is not monthly, quarterly, semiannual or annual",
                  cell(r, PC_INTERVAL));
    if (cell(r, PC_ANCHOR)) {
        int a;
        if (pl_ctl_parse_anchor(cell(r, PC_ANCHOR), &a) < 0)
            row_error(im, r, "anchor_day", "'%s' is not a day of the month 1..31 or 'last'",
                      cell(r, PC_ANCHOR));
        else
            snprintf(r->anchor, sizeof(r->anchor), "%d", a);
    }
    const char *fund = cell(r, PC_FUND);
    if (fund && (strlen(fund) > 100 || !pl_ctl_text_ok(fund) || pl_ctl_looks_like_pan(fund)))
        row_error(im, r, "fund", "must be 1 to 100 characters of text");
    if (cell(r, PC_START) && !valid_date(ctl, cell(r, PC_START)))
        row_error(im, r, "start_on", "'%s' is not a date YYYY-MM-DD", cell(r, PC_START));
    if (r->outcome == R_INVALID)
        return 0;

    const char *p[1] = {donor};
    PGresult *res = ctl_exec(ctl, "looking up the donor",
                             "SELECT id FROM donor WHERE external_ref = $1", 1, p);
    if (!res)
        return PL_EXIT_FAILED;
    char donor_id[24] = "";
    if (PQntuples(res) == 0)
        row_error(im, r, "donor_ref", "no donor with external_ref '%s' (import donors first)",
                  donor);
    else
        pl_strlcpy(donor_id, PQgetvalue(res, 0, 0), sizeof(donor_id));
    PQclear(res);
    if (r->outcome == R_INVALID)
        return 0;

    const char *q[1] = {ref};
    res = ctl_exec(ctl, "looking up the pledge",
                   "SELECT p.id, p.donor_id, p.amount_minor, p.currency, p.interval_months, "
                   "coalesce(p.anchor_day, 0), p.fund, p.start_on FROM pledge p "
                   "WHERE p.external_ref = $1",
                   1, q);
    if (!res)
        return PL_EXIT_FAILED;
    if (PQntuples(res) == 0) {
        r->outcome = R_NEW;
        pl_strlcpy(r->id, donor_id, sizeof(r->id)); /* the donor, for the insert */
        PQclear(res);
        return 0;
    }
    char differ[300] = "";
#define DIFF(cond, name)                                                                           \
    if (cond)                                                                                      \
    snprintf(differ + strlen(differ), sizeof(differ) - strlen(differ), "%s%s", differ[0] ? ", " : "", \
             name)
    char months[8];
    snprintf(months, sizeof(months), "%d", r->interval_months);
    DIFF(strcmp(PQgetvalue(res, 0, 1), donor_id) != 0, "donor_ref");
    DIFF(strcmp(PQgetvalue(res, 0, 2), r->amount_minor) != 0, "amount");
    DIFF(strcmp(PQgetvalue(res, 0, 3), cur) != 0, "currency");
    DIFF(strcmp(PQgetvalue(res, 0, 4), months) != 0, "interval");
    DIFF(r->anchor[0] && strcmp(PQgetvalue(res, 0, 5), r->anchor) != 0, "anchor_day");
    DIFF(strcmp(PQgetvalue(res, 0, 6), fund ? fund : "general") != 0, "fund");
    DIFF(cell(r, PC_START) && strcmp(PQgetvalue(res, 0, 7), cell(r, PC_START)) != 0,
         "start_on");
#undef DIFF
    if (differ[0])
        row_error(im, r, NULL,
                  "pledge '%s' (id %s) exists with different %s; imports never change a "
                  "pledge: use pledge set-amount, set-method or cancel",
                  ref, PQgetvalue(res, 0, 0), differ);
    else
        r->outcome = R_UNCHANGED;
    PQclear(res);
    return 0;
}

/* ---- writing ------------------------------------------------------------ */

static int write_donor(struct import *im, struct row *r, int *methods_added)
{
    struct ctl *ctl = im->ctl;
    int rc;
    if (r->outcome == R_NEW) {
        struct ctl_donor d = {0};
        for (int i = 0; i < DF_COUNT; i++)
            d.f[i] = r->f[i];
        if ((rc = ctl_donor_insert(ctl, &d, r->id)))
            return rc;
        if ((rc = ctl_event(ctl, "donor", r->id, "created",
                            json_pack("{s:s,s:s}", "external_ref", cell(r, DF_REF), "source",
                                      "import"))))
            return rc;
    } else if (r->changes) {
        const char *p[DF_COUNT + 1];
        for (int i = 0; i < DF_COUNT; i++)
            p[i] = r->f[i];
        p[DF_COUNT] = r->id;
        /* NULL = column absent: keep; "" clears email/country */
        PGresult *res = ctl_exec(
            ctl, "updating the donor",
            "UPDATE donor SET full_name = coalesce($2, full_name), "
            "email = CASE WHEN $3::text IS NULL THEN email ELSE nullif($3, '') END, "
            "address_line1 = coalesce($4, address_line1), "
            "address_line2 = coalesce($5, address_line2), city = coalesce($6, city), "
            "region = coalesce($7, region), postal_code = coalesce($8, postal_code), "
            "country = CASE WHEN $9::text IS NULL THEN country ELSE nullif($9, '') END, "
            "updated_at = pl_now() WHERE id = $10::bigint AND external_ref = $1",
            DF_COUNT + 1, p);
        if (!res)
            return ctl->db_exit;
        PQclear(res);
        json_t *d = json_pack("{s:O,s:s}", "changed", r->changes, "source", "import");
        if ((rc = ctl_event(ctl, "donor", r->id, "updated", d)))
            return rc;
    }
    if (r->add_method) {
        struct ctl_method m = {0};
        m.f[MF_CUSTOMER] = cell(r, DC_CUSTOMER);
        m.f[MF_TOKEN] = cell(r, DC_TOKEN);
        m.f[MF_BRAND] = cell(r, DC_BRAND);
        m.f[MF_LAST4] = cell(r, DC_LAST4);
        m.f[MF_EXP_MONTH] = cell(r, DC_EXP_MONTH);
        m.f[MF_EXP_YEAR] = cell(r, DC_EXP_YEAR);
        char mid[24];
        if ((rc = ctl_method_insert(ctl, r->id, &m, mid)))
            return rc;
        if ((rc = ctl_event(ctl, "payment_method", mid, "created",
                            json_pack("{s:s,s:s}", "donor_id", r->id, "source", "import"))))
            return rc;
        (*methods_added)++;
    }
    return 0;
}

static int write_pledge(struct import *im, struct row *r)
{
    struct ctl *ctl = im->ctl;
    if (r->outcome != R_NEW)
        return 0;
    struct ctl_pledge pl = {0};
    char mid[24], id[24];
    int rc;
    pl.donor_id = r->id;
    if ((rc = ctl_donor_default_method(ctl, r->id, mid)))
        return rc;
    pl.method_id = mid[0] ? mid : NULL;
    pl.external_ref = cell(r, PC_REF);
    pl_strlcpy(pl.amount_minor, r->amount_minor, sizeof(pl.amount_minor));
    pl.currency = cell(r, PC_CURRENCY);
    pl.interval_months = r->interval_months;
    pl.anchor = r->anchor[0] ? r->anchor : NULL;
    pl.fund = cell(r, PC_FUND);
    pl.start = cell(r, PC_START);
    if ((rc = ctl_pledge_insert(ctl, &pl, id)))
        return rc;
    if (!pl.method_id)
        fprintf(stderr, "%s:%ld: warning: donor '%s' has no active payment method: pledge %s "
                        "needs one before it can be charged\n",
                im->file, r->line, cell(r, PC_DONOR), id);
    return ctl_event(ctl, "pledge", id, "created",
                     json_pack("{s:s,s:s,s:s,s:s}", "donor_id", r->id, "amount_minor",
                               r->amount_minor, "currency", pl.currency, "source", "import"));
}

/* ---- the command -------------------------------------------------------- */

static const char IMPORT_USAGE[] =
    "usage: pledgectl import donors|pledges FILE [--dry-run] [--skip-invalid] [--update]\n"
    "\n"
    "Import a CSV file (UTF-8, optional BOM, CRLF or LF, RFC 4180 quoting) with a\n"
    "header row; FILE '-' reads standard input. Every row is checked first and\n"
    "every bad row reported as FILE:LINE: column 'NAME': reason; then all rows are\n"
    "written in one transaction - or none when any row is bad, unless\n"
    "--skip-invalid. Rows are matched on external_ref: importing the same file\n"
    "again changes nothing. A row whose external_ref exists with other values is\n"
    "refused (donors: --update applies the changes).\n"
    "\n"
    "donors columns: external_ref, full_name (required), email, address_line1,\n"
    "  address_line2, city, region, postal_code, country, customer_ref,\n"
    "  payment_method (pm_ token), brand, last4, exp_month, exp_year\n"
    "pledges columns: external_ref, donor_ref, amount, currency (required),\n"
    "  interval, anchor_day, fund, start_on\n"
    "\n"
    "  --dry-run        check and report what would happen; write nothing\n"
    "  --skip-invalid   write the good rows, report and skip the bad ones\n"
    "  --update         donors: apply changed values of existing donors\n";

static void free_rows(struct import *im)
{
    for (size_t i = 0; i < im->nrows; i++) {
        for (size_t c = 0; c < im->ncols; c++)
            free(im->rows[i].f[c]);
        free(im->rows[i].f);
        json_decref(im->rows[i].changes);
    }
    free(im->rows);
}

static int load_currencies(struct import *im)
{
    PGresult *r = ctl_exec(im->ctl, "reading currencies", "SELECT code, exponent FROM currency",
                           0, NULL);
    if (!r)
        return PL_EXIT_FAILED;
    im->currencies = json_object();
    for (int i = 0; i < PQntuples(r); i++)
        json_object_set_new(im->currencies, PQgetvalue(r, i, 0),
                            json_integer(atoi(PQgetvalue(r, i, 1))));
    PQclear(r);
    return 0;
}

static int run_import(struct import *im)
{
    struct ctl *ctl = im->ctl;
    char *data;
    size_t len;
    int rc = read_input(im, &data, &len);
    if (rc)
        return rc;
    rc = parse_csv(im, data, len);
    free(data);
    if (rc)
        return rc;
    if (!ctl_db(ctl) || ctl_begin(ctl))
        return PL_EXIT_FAILED;
    /* one import at a time: two runs of one file must not both see "new" */
    const char *lk[1] = {IMPORT_LOCK_KEY};
    PGresult *res = ctl_exec(ctl, "waiting for other imports",
                             "SELECT pg_advisory_xact_lock(hashtext($1))", 1, lk);
    if (!res)
        return PL_EXIT_FAILED;
    PQclear(res);
    if (im->kind == PLEDGES && (rc = load_currencies(im)))
        return rc;

    if (im->kind == DONORS) {
        check_duplicates(im, DF_REF, "external_ref");
        check_duplicates(im, DC_TOKEN, "payment method");
    } else {
        check_duplicates(im, PC_REF, "external_ref");
    }
    for (size_t i = 0; i < im->nrows; i++) {
        struct row *r = &im->rows[i];
        im->cur = r;
        progress(im, "checking", i, im->nrows, false);
        if (r->outcome == R_INVALID)
            continue;
        rc = im->kind == DONORS ? validate_donor(im, r) : validate_pledge(im, r);
        if (rc)
            return rc;
    }
    progress(im, "checking", im->nrows, im->nrows, true);
    report_errors(im);

    size_t counts[4] = {0};
    for (size_t i = 0; i < im->nrows; i++)
        counts[im->rows[i].outcome]++;
    size_t invalid = counts[R_INVALID];
    bool abort_all = invalid > 0 && !im->skip_invalid;
    int methods_added = 0;
    if (!abort_all) {
        size_t done = 0;
        for (size_t i = 0; i < im->nrows; i++) {
            struct row *r = &im->rows[i];
            progress(im, "writing", done++, im->nrows, false);
            if (r->outcome == R_INVALID || r->outcome == R_UNCHANGED)
                continue;
            rc = im->kind == DONORS ? write_donor(im, r, &methods_added) : write_pledge(im, r);
            if (rc) {
                fprintf(stderr, "%s:%ld: the row above could not be written; nothing was "
                                "imported\n",
                        im->file, r->line);
                return rc;
            }
        }
        progress(im, "writing", im->nrows, im->nrows, true);
    }
    const char *kind = im->kind == DONORS ? "donors" : "pledges";
    json_t *summary = json_pack(
        "{s:s,s:s,s:b,s:I,s:I,s:I,s:I,s:I,s:I,s:b}", "file", im->file, "kind", kind, "dry_run",
        im->dry, "rows", (json_int_t)im->nrows, "created",
        (json_int_t)(abort_all ? 0 : counts[R_NEW]), "updated",
        (json_int_t)(abort_all ? 0 : counts[R_UPDATE]), "unchanged",
        (json_int_t)counts[R_UNCHANGED], "invalid", (json_int_t)invalid, "methods_added",
        (json_int_t)methods_added, "written", !abort_all && !im->dry);
    if (!abort_all && !im->dry && (counts[R_NEW] || counts[R_UPDATE])) {
        if ((rc = ctl_event(ctl, "import", NULL, kind, json_deep_copy(summary)))) {
            json_decref(summary);
            return rc;
        }
    }
    if (abort_all || im->dry) {
        ctl_rollback(ctl);
    } else if ((rc = ctl_commit(ctl))) {
        json_decref(summary);
        return rc;
    }
    if (ctl->json) {
        json_object_set(summary, "errors", im->errors);
        ctl_print_json(summary);
    } else {
        const char *noun = im->kind == DONORS ? "donor" : "pledge";
        if (abort_all)
            printf("%s: %zu of %zu rows invalid: nothing was imported (fix them, or use "
                   "--skip-invalid)\n",
                   im->file, invalid, im->nrows);
        else
            printf("%s: %s%zu %ss created, %zu updated, %zu unchanged, %zu invalid%s%s\n",
                   im->file, im->dry ? "dry run: would have " : "", counts[R_NEW], noun,
                   counts[R_UPDATE], counts[R_UNCHANGED], invalid,
                   invalid ? " (skipped)" : "", im->dry ? "; nothing was written" : "");
        json_decref(summary);
    }
    return abort_all ? PL_EXIT_FAILED : PL_EXIT_OK;
}

int ctl_cmd_import(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"dry-run", no_argument, NULL, 'n'},      {"skip-invalid", no_argument, NULL, 's'},
        {"update", no_argument, NULL, 'u'},       {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct import im = {.ctl = ctl};
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, "hn", opts, NULL)) != -1) {
        switch (c) {
        case 'n': im.dry = true; break;
        case 's': im.skip_invalid = true; break;
        case 'u': im.update = true; break;
        case 'h': return ctl_usage(IMPORT_USAGE, true);
        default: return ctl_usage(IMPORT_USAGE, false);
        }
    }
    if (argc - optind != 2)
        return ctl_usage(IMPORT_USAGE, false);
    const char *what = argv[optind];
    im.file = argv[optind + 1];
    if (strcmp(what, "donors") == 0) {
        im.kind = DONORS;
        im.cols = DONOR_COLUMNS;
        im.ncols = DONOR_NCOLS;
    } else if (strcmp(what, "pledges") == 0) {
        im.kind = PLEDGES;
        im.cols = PLEDGE_COLUMNS;
        im.ncols = PLEDGE_NCOLS;
        if (im.update) {
            ctl_error("import pledges: --update is not offered: change pledges with pledge "
                      "set-amount, set-method or cancel");
            return PL_EXIT_USAGE;
        }
    } else {
        ctl_error("import: '%s' is not donors or pledges", what);
        return PL_EXIT_USAGE;
    }
    im.progress = isatty(STDERR_FILENO);
    im.errors = json_array();
    int rc = run_import(&im);
    free_rows(&im);
    json_decref(im.errors);
    json_decref(im.currencies);
    return rc;
}
