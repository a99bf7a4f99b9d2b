/*
 * export — the finance CSV catalogue, the COPY stream and atomic files.
 * See export.h; the columns are documented in docs/exports.md.
 */
#include "export.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

/* ---- the catalogue ------------------------------------------------------- */

/*
 * Every query reads its range and filters from pl_export_params() (one row)
 * and formats cells with the sql/008_export.sql helpers. Dates and times are
 * org-local because pledgectl sets the session TimeZone to [billing]
 * timezone. Queries are one line each: psql's \copy (the benchmark) needs
 * that, and it keeps `pledgectl export KIND --sql` copy-pasteable.
 */
#define COPY_HEAD "COPY ("
#define COPY_TAIL ") TO STDOUT (FORMAT csv, HEADER)"

#define STATUS_FILTER(col) "(cardinality(p.statuses) = 0 OR " col " = ANY (p.statuses))"
#define FUND_FILTER(col)   "(cardinality(p.funds) = 0 OR " col " = ANY (p.funds))"

/* Charges and the summary share one selection: the same rows by the same
 * day, so the summary adds up to the detail by construction. */
#define CHARGE_FROM                                                                              \
    "FROM pl_export_params() p JOIN charge c ON pl_export_charge_day(c.status, c.succeeded_at, " \
    "c.period) BETWEEN p.from_day AND p.to_day AND " STATUS_FILTER(                              \
        "c.status") " AND " FUND_FILTER("c.fund") " JOIN currency cu ON cu.code = c.currency "

static const char *const CHARGE_STATUSES[] = {
    "scheduled", "processing",      "retry_wait", "unknown",   "succeeded",
    "failed",    "action_required", "skipped",    "cancelled", NULL,
};
static const char *const REFUND_STATUSES[] = {"pending", "succeeded", "failed", NULL};
static const char *const PLEDGE_STATUSES[] = {
    "active", "paused", "past_due", "needs_payment_method", "lapsed", "cancelled", NULL,
};
static const char *const RECEIPT_STATUSES[] = {"issued", "void", NULL};

static const struct pl_export_kind CHARGES = {
    .name = "charges",
    .about = "one row per charge: amounts, refunds, net, fee, gateway reference",
    .range_on = "the day the charge settled (succeeded); for other charges their period",
    .flags = PL_EXPORT_RANGE_REQUIRED | PL_EXPORT_HAS_STATUS | PL_EXPORT_HAS_FUND,
    .statuses = CHARGE_STATUSES,
    .copy_sql = COPY_HEAD
    "SELECT c.id AS charge_id, c.pledge_id, c.donor_id, "
    "pl_export_text(d.external_ref) AS donor_ref, pl_export_text(d.full_name) AS donor_name, "
    "pl_export_text(c.fund) AS fund, c.period, "
    "pl_export_charge_day(c.status, c.succeeded_at, c.period) AS day, "
    "pl_export_time(c.succeeded_at) AS settled_at, c.status, "
    "pl_export_money(c.amount_minor, cu.exponent) AS amount, c.currency, "
    "pl_export_money(c.refunded_minor, cu.exponent) AS refunded, "
    "pl_export_money(CASE WHEN c.status = 'succeeded' THEN c.amount_minor - c.refunded_minor "
    "ELSE 0 END, cu.exponent) AS net, "
    "pl_export_money(c.fee_minor, cu.exponent) AS fee, "
    "pl_export_text(c.gateway_ref) AS gateway_ref, coalesce(a.attempts, 0) AS attempts, "
    "pl_export_text(c.failure_code) AS failure_code, "
    "pl_export_text(c.decline_code) AS decline_code " CHARGE_FROM
    "JOIN donor d ON d.id = c.donor_id "
    "LEFT JOIN (SELECT charge_id, count(*) AS attempts FROM charge_attempt GROUP BY charge_id) a "
    "ON a.charge_id = c.id ORDER BY c.id" COPY_TAIL,
};

static const struct pl_export_kind SUMMARY = {
    .name = "summary",
    .about = "totals of the charges export per day, currency, fund and status",
    .range_on = "the same day as the charges export",
    .flags = PL_EXPORT_RANGE_REQUIRED | PL_EXPORT_HAS_STATUS | PL_EXPORT_HAS_FUND,
    .statuses = CHARGE_STATUSES,
    .copy_sql = COPY_HEAD
    "SELECT pl_export_charge_day(c.status, c.succeeded_at, c.period) AS day, c.currency, "
    "pl_export_text(c.fund) AS fund, c.status, count(*) AS charges, "
    "pl_export_money(sum(c.amount_minor)::bigint, cu.exponent) AS amount, "
    "pl_export_money(sum(c.refunded_minor)::bigint, cu.exponent) AS refunded, "
    "pl_export_money(sum(CASE WHEN c.status = 'succeeded' THEN c.amount_minor - "
    "c.refunded_minor ELSE 0 END)::bigint, cu.exponent) AS net, "
    "pl_export_money(sum(c.fee_minor)::bigint, cu.exponent) AS fee " CHARGE_FROM
    "GROUP BY 1, c.currency, c.fund, c.status, cu.exponent "
    "ORDER BY 1, c.currency, c.fund COLLATE \"C\", c.status" COPY_TAIL,
};

static const struct pl_export_kind REFUNDS = {
    .name = "refunds",
    .about = "one row per refund or chargeback",
    .range_on = "the day the refund was recorded (created)",
    .flags = PL_EXPORT_RANGE_REQUIRED | PL_EXPORT_HAS_STATUS | PL_EXPORT_HAS_FUND,
    .statuses = REFUND_STATUSES,
    .copy_sql = COPY_HEAD
    "SELECT r.id AS refund_id, r.charge_id, c.pledge_id, c.donor_id, "
    "pl_export_text(c.fund) AS fund, r.kind, "
    "pl_export_money(r.amount_minor, cu.exponent) AS amount, c.currency, r.status, "
    "pl_export_text(r.reason) AS reason, r.created_at::date AS day, "
    "pl_export_time(r.created_at) AS created_at, pl_export_text(r.actor) AS actor, "
    "pl_export_text(r.gateway_ref) AS gateway_ref "
    "FROM pl_export_params() p JOIN refund r ON r.created_at::date BETWEEN p.from_day AND "
    "p.to_day AND " STATUS_FILTER("r.status") " JOIN charge c ON c.id = r.charge_id "
                                              "AND " FUND_FILTER(
                                                  "c.fund") " JOIN currency cu ON cu.code = "
                                                            "c.currency ORDER BY r.id" COPY_TAIL,
};

static const struct pl_export_kind DONORS = {
    .name = "donors",
    .about = "one row per donor: references, name, contact and address",
    .range_on = "the day the donor was created (default: all donors)",
    .flags = 0,
    .statuses = NULL,
    .copy_sql = COPY_HEAD
    "SELECT d.id AS donor_id, pl_export_text(d.external_ref) AS donor_ref, "
    "pl_export_text(d.full_name) AS full_name, pl_export_text(d.email) AS email, "
    "pl_export_text(d.address_line1) AS address_line1, "
    "pl_export_text(d.address_line2) AS address_line2, pl_export_text(d.city) AS city, "
    "pl_export_text(d.region) AS region, pl_export_text(d.postal_code) AS postal_code, "
    "d.country, pl_export_time(d.created_at) AS created_at, "
    "pl_export_time(d.updated_at) AS updated_at "
    "FROM pl_export_params() p JOIN donor d ON d.created_at::date BETWEEN p.from_day AND "
    "p.to_day ORDER BY d.id" COPY_TAIL,
};

static const struct pl_export_kind PLEDGES = {
    .name = "pledges",
    .about = "one row per pledge: amount, schedule, fund, status, next date",
    .range_on = "the day the pledge was created (default: all pledges)",
    .flags = PL_EXPORT_HAS_STATUS | PL_EXPORT_HAS_FUND,
    .statuses = PLEDGE_STATUSES,
    .copy_sql = COPY_HEAD
    "SELECT g.id AS pledge_id, pl_export_text(g.external_ref) AS pledge_ref, g.donor_id, "
    "pl_export_text(d.external_ref) AS donor_ref, "
    "pl_export_money(g.amount_minor, cu.exponent) AS amount, g.currency, "
    "CASE g.interval_months WHEN 1 THEN 'monthly' WHEN 3 THEN 'quarterly' "
    "WHEN 6 THEN 'semiannual' WHEN 12 THEN 'annual' END AS interval, "
    "g.interval_months, coalesce(g.anchor_day::text, 'last') AS anchor, "
    "pl_export_text(g.fund) AS fund, g.status, g.start_on, g.end_on, g.next_charge_on, "
    "g.failed_periods, pl_export_time(g.created_at) AS created_at, "
    "pl_export_time(g.cancelled_at) AS cancelled_at, "
    "pl_export_text(g.cancel_reason) AS cancel_reason "
    "FROM pl_export_params() p JOIN pledge g ON g.created_at::date BETWEEN p.from_day AND "
    "p.to_day AND " STATUS_FILTER("g.status") " AND " FUND_FILTER(
        "g.fund") " JOIN donor d ON d.id = g.donor_id JOIN currency cu ON cu.code = g.currency "
                  "ORDER BY g.id" COPY_TAIL,
};

static const struct pl_export_kind RECEIPTS = {
    .name = "receipts",
    .about = "one row per tax receipt, issued or void",
    .range_on = "the day the receipt was issued (default: all receipts)",
    .flags = PL_EXPORT_HAS_STATUS,
    .statuses = RECEIPT_STATUSES,
    .copy_sql = COPY_HEAD
    "SELECT r.id AS receipt_id, r.number, r.donor_id, "
    "pl_export_text(d.external_ref) AS donor_ref, r.tax_year, r.currency, "
    "pl_export_money(r.total_minor, cu.exponent) AS total, r.status, "
    "pl_export_time(r.issued_at) AS issued_at, pl_export_time(r.voided_at) AS voided_at, "
    "pl_export_text(r.void_reason) AS void_reason, o.number AS replaces "
    "FROM pl_export_params() p JOIN receipt r ON r.issued_at::date BETWEEN p.from_day AND "
    "p.to_day AND " STATUS_FILTER(
        "r.status") " JOIN donor d ON d.id = r.donor_id JOIN currency cu ON cu.code = r.currency "
                    "LEFT JOIN receipt o ON o.id = r.replaces_id ORDER BY r.id" COPY_TAIL,
};

const struct pl_export_kind *const pl_export_kinds[] = {
    &CHARGES, &REFUNDS, &DONORS, &PLEDGES, &SUMMARY, &RECEIPTS, NULL,
};

const char PL_EXPORT_SETTINGS_SQL[] =
    "SELECT set_config('pledged.export_from', coalesce($1, ''), true), "
    "set_config('pledged.export_to', coalesce($2, ''), true), "
    "set_config('pledged.export_status', coalesce($3, ''), true), "
    "set_config('pledged.export_fund', coalesce($4, ''), true), "
    "set_config('DateStyle', 'ISO, YMD', true)";

const struct pl_export_kind *pl_export_kind_find(const char *name)
{
    for (size_t i = 0; pl_export_kinds[i]; i++)
        if (strcmp(pl_export_kinds[i]->name, name) == 0)
            return pl_export_kinds[i];
    return NULL;
}

bool pl_export_kind_status_ok(const struct pl_export_kind *k, const char *status)
{
    if (!k->statuses)
        return false;
    for (size_t i = 0; k->statuses[i]; i++)
        if (strcmp(k->statuses[i], status) == 0)
            return true;
    return false;
}

/* ---- sinks --------------------------------------------------------------- */

#define SINK_BUF_BYTES (64 * 1024)

struct pl_export_sink {
    int fd;
    bool own_fd; /* a file sink: fd is ours to close */
    unsigned flags;
    int error; /* first write error, sticky */
    bool committed;
    char *dir;      /* file sink: directory of the target */
    char *target;   /* file sink: the path asked for */
    char *tmp_path; /* named temporary file (no O_TMPFILE), else NULL */
    size_t len;
    char buf[SINK_BUF_BYTES];
};

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return pl_xstrdup(".");
    if (slash == path)
        return pl_xstrdup("/");
    return pl_xstrndup(path, (size_t)(slash - path));
}

static const char *base_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static struct pl_export_sink *sink_new(int fd, bool own_fd, unsigned flags)
{
    struct pl_export_sink *s = pl_xcalloc(1, sizeof(*s));
    s->fd = fd;
    s->own_fd = own_fd;
    s->flags = flags;
    return s;
}

/* A hidden named temporary file next to the target: the fallback where
 * O_TMPFILE is not supported. */
static int open_named_tmp(struct pl_export_sink *s)
{
    char *tmpl = pl_xasprintf("%s/.%s.tmp-XXXXXX", s->dir, base_of(s->target));
    int fd = mkostemp(tmpl, O_CLOEXEC);
    if (fd < 0) {
        int e = -errno;
        free(tmpl);
        return e;
    }
    if (fchmod(fd, PL_EXPORT_FILE_MODE) < 0) {
        int e = -errno;
        close(fd);
        unlink(tmpl);
        free(tmpl);
        return e;
    }
    s->fd = fd;
    s->tmp_path = tmpl;
    return 0;
}

int pl_export_sink_open_file(const char *path, unsigned flags, struct pl_export_sink **out)
{
    if (!path || !*path || path[strlen(path) - 1] == '/')
        return -EINVAL;
    struct stat st;
    if (!(flags & PL_EXPORT_FORCE) && lstat(path, &st) == 0)
        return -EEXIST;
    if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return -EISDIR;
    struct pl_export_sink *s = sink_new(-1, true, flags);
    s->dir = dir_of(path);
    s->target = pl_xstrdup(path);
    int rc = 0;
    /* O_TMPFILE: the file has no name until commit, so a failed or killed
     * export leaves nothing behind. Naming it later goes through
     * /proc/self/fd, so only use it where that exists. */
    if (access("/proc/self/fd", X_OK) == 0)
        s->fd = open(s->dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, PL_EXPORT_FILE_MODE);
    if (s->fd < 0) {
        rc = open_named_tmp(s);
        if (rc < 0)
            goto fail;
    }
    if (flags & PL_EXPORT_BOM)
        pl_export_sink_write(s, "\xEF\xBB\xBF", 3);
    *out = s;
    return 0;
fail:
    pl_export_sink_free(s);
    return rc;
}

int pl_export_sink_open_fd(int fd, unsigned flags, struct pl_export_sink **out)
{
    if (fd < 0)
        return -EBADF;
    struct pl_export_sink *s = sink_new(fd, false, flags);
    if (flags & PL_EXPORT_BOM)
        pl_export_sink_write(s, "\xEF\xBB\xBF", 3);
    *out = s;
    return 0;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int sink_flush(struct pl_export_sink *s)
{
    if (s->error)
        return s->error;
    int rc = write_all(s->fd, s->buf, s->len);
    s->len = 0;
    if (rc < 0)
        s->error = rc;
    return rc;
}

int pl_export_sink_write(struct pl_export_sink *s, const void *data, size_t n)
{
    if (s->error)
        return s->error;
    if (s->len + n > sizeof(s->buf)) {
        int rc = sink_flush(s);
        if (rc < 0)
            return rc;
        if (n > sizeof(s->buf)) {
            rc = write_all(s->fd, data, n);
            if (rc < 0)
                s->error = rc;
            return rc;
        }
    }
    memcpy(s->buf + s->len, data, n);
    s->len += n;
    return 0;
}

int pl_export_sink_write_row(struct pl_export_sink *s, const char *row, size_t n)
{
    if ((s->flags & PL_EXPORT_CRLF) && n > 0 && row[n - 1] == '\n') {
        int rc = pl_export_sink_write(s, row, n - 1);
        return rc < 0 ? rc : pl_export_sink_write(s, "\r\n", 2);
    }
    return pl_export_sink_write(s, row, n);
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

/* Give the unnamed O_TMPFILE file the name `name`; -EEXIST if taken. */
static int link_tmpfile(int fd, const char *name)
{
    char proc[64];
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    return linkat(AT_FDCWD, proc, AT_FDCWD, name, AT_SYMLINK_FOLLOW) < 0 ? -errno : 0;
}

/* Put the synced file in place: link (refuses an existing target) or, with
 * FORCE, rename over it. */
static int sink_place(struct pl_export_sink *s)
{
    bool force = s->flags & PL_EXPORT_FORCE;
    if (s->tmp_path) {
        if (force)
            return rename(s->tmp_path, s->target) < 0 ? -errno : 0;
        if (link(s->tmp_path, s->target) < 0)
            return -errno;
        unlink(s->tmp_path); /* the data lives on under the target's name */
        free(s->tmp_path);
        s->tmp_path = NULL;
        return 0;
    }
    if (!force)
        return link_tmpfile(s->fd, s->target);
    /* Replacing: name the file first, then rename over the target, so the
     * target is always either the old or the whole new file. */
    for (int tries = 0; tries < 100; tries++) {
        char *name =
            pl_xasprintf("%s/.%s.tmp-%ld-%d", s->dir, base_of(s->target), (long)getpid(), tries);
        int rc = link_tmpfile(s->fd, name);
        if (rc == -EEXIST) {
            free(name);
            continue;
        }
        if (rc == 0 && rename(name, s->target) < 0) {
            rc = -errno;
            unlink(name);
        }
        free(name);
        return rc;
    }
    return -EEXIST;
}

int pl_export_sink_commit(struct pl_export_sink *s)
{
    int rc = sink_flush(s);
    if (rc < 0 || !s->own_fd) {
        if (rc == 0)
            s->committed = true;
        return rc;
    }
    if (fsync(s->fd) < 0)
        return s->error = -errno;
    if ((rc = sink_place(s)) < 0)
        return s->error = rc;
    s->committed = true;
    if (s->tmp_path) { /* renamed: the temporary name is gone */
        free(s->tmp_path);
        s->tmp_path = NULL;
    }
    /* The file is in place; a failing directory fsync only weakens the
     * crash guarantee, and reporting failure now would be a lie. */
    fsync_dir(s->dir);
    return 0;
}

void pl_export_sink_free(struct pl_export_sink *s)
{
    if (!s)
        return;
    if (s->own_fd && s->fd >= 0)
        close(s->fd);
    if (s->tmp_path) /* never committed: remove the partial file */
        unlink(s->tmp_path);
    free(s->tmp_path);
    free(s->dir);
    free(s->target);
    free(s);
}

/* ---- the stream ---------------------------------------------------------- */

/* The server's primary message of a failed result, else the connection's. */
static const char *result_message(PGconn *conn, const PGresult *r)
{
    const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    return msg ? msg : PQerrorMessage(conn);
}

static void set_err(char *err, size_t n, const char *what, const char *msg)
{
    if (!err || n == 0)
        return;
    snprintf(err, n, "%s%s%s", what, *what ? ": " : "", msg);
    /* libpq's messages end in a newline */
    size_t len = strlen(err);
    while (len > 0 && (err[len - 1] == '\n' || err[len - 1] == ' '))
        err[--len] = '\0';
}

/* Stop a COPY we no longer want: ask the server to cancel, then read to the
 * end so the connection is usable (or at least cleanly closable). */
static void abandon_copy(PGconn *conn)
{
    PGcancel *cancel = PQgetCancel(conn);
    if (cancel) {
        char buf[256];
        PQcancel(cancel, buf, sizeof(buf));
        PQfreeCancel(cancel);
    }
    char *row;
    int got;
    while ((got = PQgetCopyData(conn, &row, 0)) > 0)
        PQfreemem(row);
    PGresult *r;
    while ((r = PQgetResult(conn)))
        PQclear(r);
}

int pl_export_copy(PGconn *conn, const char *copy_sql, struct pl_export_sink *sink,
                   pl_export_progress_fn progress, uint64_t every, void *arg, uint64_t *rows,
                   char *err, size_t n)
{
    PGresult *r = PQexec(conn, copy_sql);
    if (PQresultStatus(r) != PGRES_COPY_OUT) {
        set_err(err, n, "", result_message(conn, r));
        PQclear(r);
        while ((r = PQgetResult(conn)))
            PQclear(r);
        return PL_EDB;
    }
    PQclear(r);

    uint64_t count = 0; /* lines, header included */
    int rc = 0;
    char *row = NULL;
    int got;
    while ((got = PQgetCopyData(conn, &row, 0)) > 0) {
        rc = pl_export_sink_write_row(sink, row, (size_t)got);
        PQfreemem(row);
        if (rc < 0) {
            set_err(err, n, "writing the export", strerror(-rc));
            abandon_copy(conn);
            return rc;
        }
        count++;
        if (progress && every && count > 1 && (count - 1) % every == 0)
            progress(count - 1, arg);
    }
    if (got == -2) {
        set_err(err, n, "", PQerrorMessage(conn));
        while ((r = PQgetResult(conn))) {
            if (PQresultStatus(r) == PGRES_FATAL_ERROR)
                set_err(err, n, "", result_message(conn, r));
            PQclear(r);
        }
        return PL_EDB;
    }
    /* got == -1: the COPY ended; its result says whether it succeeded. */
    rc = 0;
    while ((r = PQgetResult(conn))) {
        if (rc == 0 && PQresultStatus(r) != PGRES_COMMAND_OK) {
            set_err(err, n, "", result_message(conn, r));
            rc = PL_EDB;
        }
        PQclear(r);
    }
    if (rc == 0 && count == 0) {
        set_err(err, n, "", "the COPY sent no header");
        rc = PL_EDB;
    }
    if (rc == 0)
        *rows = count - 1;
    return rc;
}
