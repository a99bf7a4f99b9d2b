/*
 * receipts — see receipts.h.
 */
#include "receipts.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "money.h"
#include "receipt_pdf.h"
#include "util.h"

#define DEFAULT_BATCH        100
#define SIGNATURE_MAX_BYTES  (4 * 1024 * 1024)
#define RECEIPT_FILE_MODE    0640 /* names and addresses: not for everyone */
#define RECEIPT_DIR_MODE     0750

static const char *const ACTION_NAMES[PL_RCPT_NACTIONS] = {
    "issued", "replaced", "voided", "unchanged", "skipped",
};

const char *pl_receipt_action_name(enum pl_receipt_action a)
{
    return (unsigned)a < PL_RCPT_NACTIONS ? ACTION_NAMES[a] : "?";
}

static int action_from_sql(const char *s, enum pl_receipt_action *a)
{
    static const char *const sql[] = {"issue", "replace", "void", "unchanged", "skip"};
    for (size_t i = 0; i < PL_ARRAY_LEN(sql); i++) {
        if (strcmp(s, sql[i]) == 0) {
            *a = (enum pl_receipt_action)i;
            return 0;
        }
    }
    return PL_EINVAL;
}

void pl_receipts_sha256(const void *data, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
    for (unsigned int i = 0; i < mdlen && i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    out[64] = '\0';
}

/* ---- files ------------------------------------------------------------------ */

static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Create dirfd/tmp with the data, fsynced unless `sync` is false (the
 * caller then syncs the file system once for a batch). 0 or -errno
 * (nothing left behind). */
static int write_temp(int dirfd, const char *tmp, const void *data, size_t len, bool sync)
{
    int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, RECEIPT_FILE_MODE);
    if (fd < 0)
        return -errno;
    int rc = write_all(fd, data, len);
    if (rc == 0 && sync && fsync(fd) < 0)
        rc = -errno;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc < 0)
        unlinkat(dirfd, tmp, 0);
    return rc;
}

int pl_receipts_write_file(int dirfd, const char *name, const void *data, size_t len,
                           bool exclusive)
{
    char tmp[512];
    snprintf(tmp, sizeof(tmp), ".%s.tmp.%ld", name, (long)getpid());
    int rc = write_temp(dirfd, tmp, data, len, true);
    if (rc < 0)
        return rc;
    if (exclusive) {
        /* link(2) refuses an existing name, rename(2) would replace it */
        if (linkat(dirfd, tmp, dirfd, name, 0) < 0)
            rc = -errno;
        unlinkat(dirfd, tmp, 0);
    } else if (renameat(dirfd, tmp, dirfd, name) < 0) {
        rc = -errno;
        unlinkat(dirfd, tmp, 0);
    }
    if (rc == 0 && fsync(dirfd) < 0)
        rc = -errno;
    return rc;
}

char *pl_receipts_csv_cell(const char *s)
{
    if (!s)
        return pl_xstrdup("");
    bool neutralise = strchr("=+-@\t\r", s[0]) && s[0] != '\0';
    bool quote = neutralise || strpbrk(s, ",\"\r\n") != NULL;
    size_t n = strlen(s);
    char *out = pl_xmalloc(2 * n + 4), *o = out;
    if (quote)
        *o++ = '"';
    if (neutralise)
        *o++ = '\'';
    for (const char *p = s; *p; p++) {
        if (*p == '"')
            *o++ = '"';
        *o++ = *p;
    }
    if (quote)
        *o++ = '"';
    *o = '\0';
    return out;
}

/* ---- database helpers ------------------------------------------------------- */

static PGresult *exec(PGconn *conn, const char *what, const char *sql, int n,
                      const char *const *params, char *err, size_t errlen)
{
    PGresult *r = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return r;
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    char buf[512];
    if (!msg) {
        pl_strlcpy(buf, PQerrorMessage(conn), sizeof(buf));
        pl_rstrip(buf);
        msg = buf;
    }
    snprintf(err, errlen, "%s: %s", what, msg);
    PQclear(r);
    return NULL;
}

static bool exec_ok(PGconn *conn, const char *what, const char *sql, char *err, size_t errlen)
{
    PGresult *r = exec(conn, what, sql, 0, NULL, err, errlen);
    PQclear(r);
    return r != NULL;
}

static const char *get(const PGresult *r, int row, const char *col)
{
    int c = PQfnumber(r, col);
    if (c < 0 || PQgetisnull(r, row, c))
        return NULL;
    return PQgetvalue(r, row, c);
}

static int64_t get_i64(const PGresult *r, int row, const char *col)
{
    int64_t v = 0;
    const char *s = get(r, row, col);
    if (s)
        pl_parse_i64(s, &v);
    return v;
}

/* ---- the organisation snapshot ----------------------------------------------- */

json_t *pl_receipts_org_snapshot(const struct pl_config *cfg, const char *timezone,
                                 const char *signature_sha256)
{
    json_t *o = json_object();
#define PUT(key, val) json_object_set_new(o, key, (val) ? json_string(val) : json_null())
    PUT("legal_name", cfg->org.legal_name);
    PUT("address_line1", cfg->org.address_line1);
    PUT("address_line2", cfg->org.address_line2);
    PUT("city", cfg->org.city);
    PUT("region", cfg->org.region);
    PUT("postal_code", cfg->org.postal_code);
    PUT("country", cfg->org.country);
    PUT("tax_id", cfg->org.tax_id);
    PUT("jurisdiction", cfg->org.jurisdiction == PL_JURISDICTION_CA ? "ca" : "us");
    PUT("city_issued", cfg->org.city_issued);
    PUT("charity_registration_statement", cfg->org.charity_registration_statement);
    PUT("signatory_name", cfg->org.signatory_name);
    PUT("signatory_title", cfg->org.signatory_title);
    PUT("signature_sha256", signature_sha256);
    PUT("email", cfg->org.email);
    PUT("website", cfg->org.website);
    PUT("timezone", timezone);
#undef PUT
    return o;
}

/* ---- loading and rendering one receipt ------------------------------------------ */

struct image_cache {
    char sha256[65];
    unsigned char *png;
    size_t len;
};

static const char LOAD_SQL[] =
    "SELECT r.id, r.number, r.tax_year, r.currency, cu.exponent, r.total_minor, r.sha256, "
    " r.file_name, rp.number AS replaces_number, r.donor_snapshot::text AS donor, "
    " r.org_snapshot::text AS org, "
    " to_char(r.issued_at AT TIME ZONE coalesce(r.org_snapshot->>'timezone', 'UTC'), "
    "         'YYYY-MM-DD') AS issued_on, "
    " to_char(r.issued_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS created_at, "
    " (SELECT coalesce(json_agg(json_build_array(l.charge_id, l.received_on, l.amount_minor) "
    "                  ORDER BY l.received_on, l.charge_id), '[]') "
    "    FROM receipt_line l WHERE l.receipt_id = r.id)::text AS lines "
    "FROM receipt r JOIN currency cu ON cu.code = r.currency "
    "LEFT JOIN receipt rp ON rp.id = r.replaces_id ";

static const char *jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static void address_from(json_t *o, struct pl_receipt_address *a)
{
    a->line1 = jstr(o, "address_line1");
    a->line2 = jstr(o, "address_line2");
    a->city = jstr(o, "city");
    a->region = jstr(o, "region");
    a->postal_code = jstr(o, "postal_code");
    a->country = jstr(o, "country");
}

static int load_image(PGconn *conn, struct image_cache *cache, const char *sha, char *err,
                      size_t errlen)
{
    if (strcmp(cache->sha256, sha) == 0)
        return 0;
    const char *p[1] = {sha};
    PGresult *r = PQexecParams(conn, "SELECT png FROM receipt_image WHERE sha256 = $1", 1, NULL,
                               p, NULL, NULL, 1);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        snprintf(err, errlen, "signature image %.12s… of the receipt is not in receipt_image", sha);
        PQclear(r);
        return PL_EDB;
    }
    free(cache->png);
    cache->len = (size_t)PQgetlength(r, 0, 0);
    cache->png = pl_xmalloc(cache->len ? cache->len : 1);
    memcpy(cache->png, PQgetvalue(r, 0, 0), cache->len);
    pl_strlcpy(cache->sha256, sha, sizeof(cache->sha256));
    PQclear(r);
    return 0;
}

/* Render the receipt row r[0] (LOAD_SQL). Fills name/email copies when asked. */
static int render_row(PGconn *conn, const PGresult *r, struct image_cache *cache,
                      unsigned char **pdf, size_t *len, struct pl_receipt_outcome *o, char *err,
                      size_t errlen)
{
    json_error_t je;
    json_t *donor = json_loads(get(r, 0, "donor"), 0, &je);
    json_t *org = json_loads(get(r, 0, "org"), 0, &je);
    json_t *lines = json_loads(get(r, 0, "lines"), 0, &je);
    struct pl_receipt_gift *gifts = NULL;
    int rc = PL_EINVAL;
    if (!json_is_object(donor) || !json_is_object(org) || !json_is_array(lines)) {
        snprintf(err, errlen, "receipt %s: snapshot is not valid JSON", get(r, 0, "number") ?: "?");
        goto out;
    }
    struct pl_receipt_doc d = {0};
    d.number = get(r, 0, "number");
    d.replaces_number = get(r, 0, "replaces_number");
    d.tax_year = (int)get_i64(r, 0, "tax_year");
    d.currency = get(r, 0, "currency");
    d.exponent = (int)get_i64(r, 0, "exponent");
    d.total_minor = get_i64(r, 0, "total_minor");
    d.issued_on = get(r, 0, "issued_on");
    d.created_at = get(r, 0, "created_at");
    const char *jur = jstr(org, "jurisdiction");
    d.canada = jur && strcmp(jur, "ca") == 0;
    d.org.legal_name = jstr(org, "legal_name");
    address_from(org, &d.org.address);
    d.org.tax_id = jstr(org, "tax_id");
    d.org.city_issued = jstr(org, "city_issued");
    d.org.statement = jstr(org, "charity_registration_statement");
    d.org.signatory_name = jstr(org, "signatory_name");
    d.org.signatory_title = jstr(org, "signatory_title");
    d.org.email = jstr(org, "email");
    d.org.website = jstr(org, "website");
    const char *sig = jstr(org, "signature_sha256");
    if (sig) {
        if ((rc = load_image(conn, cache, sig, err, errlen)) < 0)
            goto out;
        d.org.signature_png = cache->png;
        d.org.signature_png_len = cache->len;
    }
    d.donor.full_name = jstr(donor, "full_name");
    address_from(donor, &d.donor.address);

    size_t n = json_array_size(lines);
    gifts = pl_xcalloc(n ? n : 1, sizeof(*gifts));
    for (size_t i = 0; i < n; i++) {
        json_t *l = json_array_get(lines, i);
        gifts[i].charge_id = json_integer_value(json_array_get(l, 0));
        pl_strlcpy(gifts[i].received_on, json_string_value(json_array_get(l, 1)) ?: "",
                   sizeof(gifts[i].received_on));
        gifts[i].amount_minor = json_integer_value(json_array_get(l, 2));
    }
    d.gifts = gifts;
    d.n_gifts = n;
    rc = pl_receipt_pdf_render(&d, pdf, len, err, errlen);
    if (rc == 0 && o) {
        o->donor_name = pl_xstrdup(d.donor.full_name ? d.donor.full_name : "");
        o->email = jstr(donor, "email") ? pl_xstrdup(jstr(donor, "email")) : NULL;
    }
out:
    free(gifts);
    json_decref(donor);
    json_decref(org);
    json_decref(lines);
    return rc;
}

int pl_receipts_render(PGconn *conn, const char *number, unsigned char **pdf, size_t *len,
                       char stored_sha256[65], char *err, size_t errlen)
{
    char sql[sizeof(LOAD_SQL) + 64];
    snprintf(sql, sizeof(sql), "%sWHERE r.number = $1", LOAD_SQL);
    const char *p[1] = {number};
    PGresult *r = exec(conn, "reading the receipt", sql, 1, p, err, errlen);
    if (!r)
        return PL_EDB;
    if (PQntuples(r) == 0) {
        PQclear(r);
        snprintf(err, errlen, "no receipt with number %s", number);
        return PL_ENOTFOUND;
    }
    struct image_cache cache = {0};
    int rc = render_row(conn, r, &cache, pdf, len, NULL, err, errlen);
    if (rc == 0 && stored_sha256)
        pl_strlcpy(stored_sha256, get(r, 0, "sha256") ? get(r, 0, "sha256") : "", 65);
    free(cache.png);
    PQclear(r);
    return rc;
}

/* ---- generate --------------------------------------------------------------------- */

struct gen {
    PGconn *conn;
    const struct pl_receipts_opts *o;
    struct pl_receipts_run *run;
    int dirfd;
    char year[8], donor[24], need_address[8];
    char *org_json;
    struct image_cache cache;
    char *err;
    size_t errlen;
};

static struct pl_receipt_outcome *add_outcome(struct pl_receipts_run *run)
{
    run->items = pl_xrealloc(run->items, (run->n + 1) * sizeof(*run->items));
    struct pl_receipt_outcome *o = &run->items[run->n++];
    memset(o, 0, sizeof(*o));
    return o;
}

static void outcome_release(struct pl_receipt_outcome *o)
{
    free(o->file);
    free(o->donor_name);
    free(o->email);
    free(o->reason);
}

void pl_receipts_run_free(struct pl_receipts_run *run)
{
    if (!run)
        return;
    for (size_t i = 0; i < run->n; i++)
        outcome_release(&run->items[i]);
    free(run->items);
    free(run->manifest);
    free(run);
}

static const char PLAN_SQL[] =
    "SELECT p.donor_id, p.currency, p.action, p.reason, p.live_number, p.live_file, "
    " p.live_sha256, p.replaces_number, coalesce(p.total_minor, 0) AS total_minor, p.gifts, "
    " cu.exponent, d.full_name, d.email "
    "FROM pl_receipt_plan($1::integer, $2, $3::bigint, $4::boolean) p "
    "JOIN currency cu ON cu.code = p.currency JOIN donor d ON d.id = p.donor_id "
    "ORDER BY p.donor_id, p.currency";

static bool file_exists(int dirfd, const char *name)
{
    struct stat st;
    return name && fstatat(dirfd, name, &st, 0) == 0 && S_ISREG(st.st_mode);
}

/* Open (creating one level if needed) the output directory. */
static int open_out_dir(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        if (mkdir(path, RECEIPT_DIR_MODE) < 0 && errno != EEXIST) {
            snprintf(err, errlen, "cannot create the receipt directory %s: %s", path,
                     strerror(errno));
            return -errno;
        }
        fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    }
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot open the receipt directory %s: %s", path, strerror(e));
        return -e;
    }
    return fd;
}

/* Store the configured signature image (frozen by content). */
static int store_signature(struct gen *g, char sha[65])
{
    const char *path = g->o->cfg->org.signature_image;
    sha[0] = '\0';
    if (!path)
        return 0;
    char *data;
    size_t len;
    int rc = pl_read_file(path, SIGNATURE_MAX_BYTES, &data, &len);
    if (rc < 0) {
        snprintf(g->err, g->errlen, "[org] signature_image: cannot read %s: %s", path,
                 pl_strerror(rc));
        return rc;
    }
    pl_receipts_sha256(data, len, sha);
    if (!g->o->dry_run) {
        const char *p[2] = {sha, data};
        int lens[2] = {0, (int)len}, fmts[2] = {0, 1};
        PGresult *r = PQexecParams(g->conn,
                                   "INSERT INTO receipt_image (sha256, png) VALUES ($1, $2) "
                                   "ON CONFLICT (sha256) DO NOTHING",
                                   2, NULL, p, lens, fmts, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            snprintf(g->err, g->errlen, "storing the signature image: %s",
                     PQresultErrorMessage(r));
            pl_rstrip(g->err);
            rc = PL_EDB;
        }
        PQclear(r);
    }
    free(data);
    return rc;
}

/* A file being issued in the current batch: renamed after the commit. */
struct pending {
    char tmp[96];
    char name[64];
};

static void drop_pending(struct gen *g, struct pending *pend, size_t n)
{
    for (size_t i = 0; i < n; i++)
        unlinkat(g->dirfd, pend[i].tmp, 0);
}

/* Issue/replace: render the receipt just inserted, write its temp file and
 * record its file name and hash (same transaction). */
static int render_new(struct gen *g, const char *receipt_id, struct pl_receipt_outcome *o,
                      struct pending *pend)
{
    char sql[sizeof(LOAD_SQL) + 64];
    snprintf(sql, sizeof(sql), "%sWHERE r.id = $1::bigint", LOAD_SQL);
    const char *p[1] = {receipt_id};
    PGresult *r = exec(g->conn, "reading the new receipt", sql, 1, p, g->err, g->errlen);
    if (!r)
        return PL_EDB;
    unsigned char *pdf = NULL;
    size_t len = 0;
    int rc = render_row(g->conn, r, &g->cache, &pdf, &len, o, g->err, g->errlen);
    PQclear(r);
    if (rc < 0)
        return rc;
    pl_receipts_sha256(pdf, len, o->sha256);
    snprintf(pend->name, sizeof(pend->name), "%s.pdf", o->number);
    snprintf(pend->tmp, sizeof(pend->tmp), ".%s.tmp.%ld", pend->name, (long)getpid());
    rc = write_temp(g->dirfd, pend->tmp, pdf, len, false);
    free(pdf);
    if (rc < 0) {
        snprintf(g->err, g->errlen, "writing %s/%s: %s", g->o->out_dir, pend->tmp,
                 strerror(-rc));
        return rc;
    }
    o->file = pl_xstrdup(pend->name);
    const char *q[3] = {receipt_id, o->sha256, pend->name};
    r = exec(g->conn, "recording the receipt file",
             "UPDATE receipt SET sha256 = $2, file_name = $3 WHERE id = $1::bigint", 3, q, g->err,
             g->errlen);
    if (!r) {
        unlinkat(g->dirfd, pend->tmp, 0);
        return PL_EDB;
    }
    PQclear(r);
    return 0;
}

/* One transaction: rows [from, to) of the plan that need work. */
static int run_batch(struct gen *g, const PGresult *plan, const int *rows, size_t n)
{
    struct pending *pend = pl_xcalloc(n ? n : 1, sizeof(*pend));
    size_t npend = 0, first = g->run->n;
    int rc = 0;
    if (!exec_ok(g->conn, "begin", "BEGIN", g->err, g->errlen)) {
        free(pend);
        return PL_EDB;
    }
    const char *lp[1] = {g->year};
    PGresult *r = exec(g->conn, "taking the receipts lock", "SELECT pl_receipt_lock($1::integer)",
                       1, lp, g->err, g->errlen);
    if (!r) {
        rc = PL_EDB;
        goto fail;
    }
    PQclear(r);
    for (size_t i = 0; i < n; i++) {
        int row = rows[i];
        const char *p[7] = {g->year,     g->o->timezone, get(plan, row, "donor_id"),
                            get(plan, row, "currency"), g->org_json, g->o->actor,
                            g->need_address};
        r = exec(g->conn, "issuing a receipt",
                 "SELECT action, receipt_id, number, old_number, reason "
                 "FROM pl_receipt_issue($1::integer, $2, $3::bigint, $4, $5::jsonb, $6, "
                 "$7::boolean)",
                 7, p, g->err, g->errlen);
        if (!r) {
            rc = PL_EDB;
            goto fail;
        }
        const char *act = get(r, 0, "action");
        enum pl_receipt_action a;
        if (!act || strcmp(act, "none") == 0 || action_from_sql(act, &a) < 0) {
            PQclear(r); /* nothing to receipt any more (changed since the plan) */
            continue;
        }
        struct pl_receipt_outcome *o = add_outcome(g->run);
        o->action = a;
        pl_parse_i64(get(plan, row, "donor_id"), &o->donor_id);
        pl_strlcpy(o->currency, get(plan, row, "currency"), sizeof(o->currency));
        o->exponent = (int)get_i64(plan, row, "exponent");
        pl_strlcpy(o->number, get(r, 0, "number") ?: "", sizeof(o->number));
        pl_strlcpy(o->old_number, get(r, 0, "old_number") ?: "", sizeof(o->old_number));
        if (get(r, 0, "reason"))
            o->reason = pl_xstrdup(get(r, 0, "reason"));
        char id[24];
        pl_strlcpy(id, get(r, 0, "receipt_id") ?: "", sizeof(id));
        PQclear(r);
        if (a == PL_RCPT_ISSUE || a == PL_RCPT_REPLACE) {
            if ((rc = render_new(g, id, o, &pend[npend])) < 0)
                goto fail;
            npend++;
        } else {
            o->donor_name = pl_xstrdup(get(plan, row, "full_name") ?: "");
            if (get(plan, row, "email"))
                o->email = pl_xstrdup(get(plan, row, "email"));
        }
    }
    /* The batch's files are on disk before the receipts are committed: one
     * syncfs(2) for the batch instead of an fsync per file (the dominant
     * cost); fall back to fsync per file where syncfs fails. */
    if (npend > 0 && syncfs(g->dirfd) < 0) {
        for (size_t i = 0; i < npend; i++) {
            int fd = openat(g->dirfd, pend[i].tmp, O_RDONLY | O_CLOEXEC);
            if (fd < 0 || fsync(fd) < 0) {
                snprintf(g->err, g->errlen, "fsync of %s/%s: %s", g->o->out_dir, pend[i].tmp,
                         strerror(errno));
                if (fd >= 0)
                    close(fd);
                rc = -EIO;
                goto fail;
            }
            close(fd);
        }
    }
    r = exec(g->conn, "commit", "COMMIT", 0, NULL, g->err, g->errlen);
    if (!r || strcmp(PQcmdStatus(r), "COMMIT") != 0) {
        if (r)
            snprintf(g->err, g->errlen, "the receipts transaction was rolled back");
        PQclear(r);
        drop_pending(g, pend, npend);
        rc = PL_EDB;
        goto undo;
    }
    PQclear(r);
    /* committed: put the files in place */
    for (size_t i = 0; i < npend; i++) {
        if (renameat(g->dirfd, pend[i].tmp, g->dirfd, pend[i].name) < 0 && rc == 0) {
            rc = -errno;
            snprintf(g->err, g->errlen,
                     "receipt file %s/%s: %s (the receipt is recorded; run generate again to "
                     "write it)",
                     g->o->out_dir, pend[i].name, strerror(errno));
        }
    }
    if (npend > 0 && fsync(g->dirfd) < 0 && rc == 0) {
        rc = -errno;
        snprintf(g->err, g->errlen, "fsync of %s: %s", g->o->out_dir, strerror(errno));
    }
    for (size_t i = first; i < g->run->n; i++) {
        /* the totals come from the receipt itself */
        struct pl_receipt_outcome *o = &g->run->items[i];
        g->run->count[o->action]++;
    }
    free(pend);
    return rc;

fail:
    PQclear(PQexec(g->conn, "ROLLBACK"));
    drop_pending(g, pend, npend);
undo:
    for (size_t i = first; i < g->run->n; i++)
        outcome_release(&g->run->items[i]);
    g->run->n = first;
    free(pend);
    return rc;
}

/* Totals of issued receipts (the plan's total is what the receipt got,
 * unless gifts changed in between: read it back). */
static int fill_totals(struct gen *g)
{
    for (size_t i = 0; i < g->run->n; i++) {
        struct pl_receipt_outcome *o = &g->run->items[i];
        if (!o->number[0] || o->total_minor)
            continue;
        const char *p[1] = {o->number};
        PGresult *r = exec(g->conn, "reading totals",
                           "SELECT total_minor FROM receipt WHERE number = $1", 1, p, g->err,
                           g->errlen);
        if (!r)
            return PL_EDB;
        if (PQntuples(r) == 1)
            o->total_minor = get_i64(r, 0, "total_minor");
        PQclear(r);
    }
    return 0;
}

/* Render unchanged receipts whose file is missing from the output
 * directory (a crash between commit and rename, or a new --out). */
static int restore(struct gen *g, const PGresult *plan, int row)
{
    struct pl_receipt_outcome *o = add_outcome(g->run);
    o->action = PL_RCPT_UNCHANGED;
    pl_parse_i64(get(plan, row, "donor_id"), &o->donor_id);
    pl_strlcpy(o->currency, get(plan, row, "currency"), sizeof(o->currency));
    o->exponent = (int)get_i64(plan, row, "exponent");
    o->total_minor = get_i64(plan, row, "total_minor");
    pl_strlcpy(o->number, get(plan, row, "live_number"), sizeof(o->number));
    o->donor_name = pl_xstrdup(get(plan, row, "full_name") ?: "");
    if (get(plan, row, "email"))
        o->email = pl_xstrdup(get(plan, row, "email"));
    g->run->count[PL_RCPT_UNCHANGED]++;
    const char *file = get(plan, row, "live_file");
    if (file_exists(g->dirfd, file) || g->o->dry_run)
        return 0;
    unsigned char *pdf;
    size_t len;
    char stored[65];
    int rc = pl_receipts_render(g->conn, o->number, &pdf, &len, stored, g->err, g->errlen);
    if (rc < 0)
        return rc;
    pl_receipts_sha256(pdf, len, o->sha256);
    char name[64];
    snprintf(name, sizeof(name), "%s.pdf", o->number);
    rc = pl_receipts_write_file(g->dirfd, name, pdf, len, false);
    free(pdf);
    if (rc < 0) {
        snprintf(g->err, g->errlen, "writing %s/%s: %s", g->o->out_dir, name, strerror(-rc));
        return rc;
    }
    o->file = pl_xstrdup(name);
    o->restored = true;
    g->run->restored++;
    if (stored[0] && strcmp(stored, o->sha256) != 0) {
        o->reason = pl_xasprintf("file written again from the snapshot differs from the "
                                 "issued one (sha256 %s, now %s): fonts or pledged changed",
                                 stored, o->sha256);
    }
    return 0;
}

static int write_manifest(struct gen *g)
{
    size_t cap = 4096, len = 0;
    char *buf = pl_xmalloc(cap);
    bool any = false;
    const char *head = "number,donor_id,donor_name,email,currency,total,file,sha256,replaces\r\n";
    len = strlen(head);
    memcpy(buf, head, len + 1);
    for (size_t i = 0; i < g->run->n; i++) {
        struct pl_receipt_outcome *o = &g->run->items[i];
        if (o->action != PL_RCPT_ISSUE && o->action != PL_RCPT_REPLACE)
            continue;
        any = true;
        char total[40];
        char *cells[4] = {pl_receipts_csv_cell(o->donor_name), pl_receipts_csv_cell(o->email),
                          pl_receipts_csv_cell(o->file), NULL};
        if (pl_money_format(o->total_minor, o->exponent, total, sizeof(total)) < 0)
            snprintf(total, sizeof(total), "%lld", (long long)o->total_minor);
        char *row = pl_xasprintf("%s,%lld,%s,%s,%s,%s,%s,%s,%s\r\n", o->number,
                                 (long long)o->donor_id, cells[0], cells[1], o->currency, total,
                                 cells[2], o->sha256, o->old_number);
        size_t rl = strlen(row);
        while (len + rl + 1 > cap)
            cap *= 2;
        buf = pl_xrealloc(buf, cap);
        memcpy(buf + len, row, rl + 1);
        len += rl;
        free(row);
        for (int k = 0; k < 3; k++)
            free(cells[k]);
    }
    if (!any) {
        free(buf);
        return 0;
    }
    char stamp[32], name[96];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
    int rc = -EEXIST;
    for (int k = 1; rc == -EEXIST && k < 100; k++) {
        if (k == 1)
            snprintf(name, sizeof(name), "manifest-%d-%s.csv", g->o->tax_year, stamp);
        else
            snprintf(name, sizeof(name), "manifest-%d-%s-%d.csv", g->o->tax_year, stamp, k);
        rc = pl_receipts_write_file(g->dirfd, name, buf, len, true);
    }
    free(buf);
    if (rc < 0) {
        snprintf(g->err, g->errlen, "writing the manifest in %s: %s", g->o->out_dir,
                 strerror(-rc));
        return rc;
    }
    g->run->manifest = pl_xasprintf("%s/%s", g->o->out_dir, name);
    return 0;
}

int pl_receipts_generate(PGconn *conn, const struct pl_receipts_opts *opts,
                         struct pl_receipts_run **out, char *err, size_t errlen)
{
    struct gen g = {.conn = conn, .o = opts, .dirfd = -1, .err = err, .errlen = errlen};
    g.run = pl_xcalloc(1, sizeof(*g.run));
    *out = g.run;
    PGresult *plan = NULL;
    int *work = NULL;
    int rc = 0;
    size_t batch = opts->batch ? opts->batch : DEFAULT_BATCH;

    snprintf(g.year, sizeof(g.year), "%d", opts->tax_year);
    if (opts->donor_id > 0)
        snprintf(g.donor, sizeof(g.donor), "%lld", (long long)opts->donor_id);
    snprintf(g.need_address, sizeof(g.need_address), "%s",
             opts->cfg->org.jurisdiction == PL_JURISDICTION_CA ? "true" : "false");

    if (!opts->dry_run) {
        if ((g.dirfd = open_out_dir(opts->out_dir, err, errlen)) < 0) {
            rc = g.dirfd;
            goto out;
        }
    } else {
        g.dirfd = open(opts->out_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC); /* may fail */
    }
    char sig[65];
    if ((rc = store_signature(&g, sig)) < 0)
        goto out;
    json_t *org = pl_receipts_org_snapshot(opts->cfg, opts->timezone, sig[0] ? sig : NULL);
    g.org_json = json_dumps(org, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(org);

    const char *p[4] = {g.year, opts->timezone, g.donor[0] ? g.donor : NULL, g.need_address};
    plan = exec(conn, "planning receipts", PLAN_SQL, 4, p, err, errlen);
    if (!plan) {
        rc = PL_EDB;
        goto out;
    }
    int rows = PQntuples(plan);
    work = pl_xcalloc((size_t)rows + 1, sizeof(int));
    size_t nwork = 0;
    for (int i = 0; i < rows; i++) {
        enum pl_receipt_action a;
        if (action_from_sql(get(plan, i, "action"), &a) < 0)
            continue;
        if (a == PL_RCPT_UNCHANGED) {
            if ((rc = restore(&g, plan, i)) < 0)
                goto out;
            continue;
        }
        if (opts->dry_run) {
            struct pl_receipt_outcome *o = add_outcome(g.run);
            o->action = a;
            pl_parse_i64(get(plan, i, "donor_id"), &o->donor_id);
            pl_strlcpy(o->currency, get(plan, i, "currency"), sizeof(o->currency));
            o->exponent = (int)get_i64(plan, i, "exponent");
            o->total_minor = a == PL_RCPT_VOID || a == PL_RCPT_SKIP
                                 ? 0 : get_i64(plan, i, "total_minor");
            pl_strlcpy(o->old_number, get(plan, i, "replaces_number") ?: "",
                       sizeof(o->old_number));
            if (a == PL_RCPT_SKIP)
                o->old_number[0] = '\0';
            if (get(plan, i, "reason"))
                o->reason = pl_xstrdup(get(plan, i, "reason"));
            o->donor_name = pl_xstrdup(get(plan, i, "full_name") ?: "");
            if (get(plan, i, "email"))
                o->email = pl_xstrdup(get(plan, i, "email"));
            g.run->count[a]++;
            continue;
        }
        work[nwork++] = i;
    }
    size_t total = nwork, done = 0;
    if (opts->progress)
        opts->progress(opts->progress_arg, 0, total);
    while (done < nwork) {
        size_t n = nwork - done < batch ? nwork - done : batch;
        if ((rc = run_batch(&g, plan, work + done, n)) < 0)
            goto out;
        done += n;
        if (opts->progress)
            opts->progress(opts->progress_arg, done, total);
    }
    if (!opts->dry_run) {
        if ((rc = fill_totals(&g)) < 0)
            goto out;
        rc = write_manifest(&g);
    }
out:
    PQclear(plan);
    free(work);
    free(g.org_json);
    free(g.cache.png);
    if (g.dirfd >= 0)
        close(g.dirfd);
    return rc;
}
