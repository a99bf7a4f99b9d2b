#include "schema.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "util.h"

/* pg_advisory_lock key shared by every `pledgectl migrate` (ASCII "pldgmigr"). */
#define MIGRATE_LOCK_KEY "8101751281633888626"

static const char SQL_CREATE_TABLE[] =
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version integer PRIMARY KEY,"
    " name text NOT NULL,"
    " sha256 text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())";

static const char SQL_HAS_TABLE[] = "SELECT to_regclass('schema_migrations') IS NOT NULL";

static const char SQL_APPLIED[] =
    "SELECT version, name, sha256, to_char(applied_at AT TIME ZONE 'UTC',"
    " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM schema_migrations ORDER BY version";

int pl_schema_latest(void)
{
    return (int)pl_migrations_count;
}

void pl_schema_sha256(const struct pl_migration *m, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_Digest(m->sql, m->len, md, &mdlen, EVP_sha256(), NULL);
    for (unsigned int i = 0; i < mdlen && i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    out[64] = '\0';
}

static int db_error(PGconn *conn, PGresult *res, const char *what, char *err, size_t errlen)
{
    const char *msg = res ? PQresultErrorMessage(res) : PQerrorMessage(conn);
    snprintf(err, errlen, "%s: %s", what, msg && *msg ? msg : "unknown database error");
    pl_rstrip(err);
    return PL_EDB;
}

/* Run a statement without parameters that returns no interesting rows. */
static int exec_simple(PGconn *conn, const char *sql, const char *what, char *err, size_t errlen)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    int r = 0;
    /* A file of only comments is an empty query: nothing to do, not an error. */
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY)
        r = db_error(conn, res, what, err, errlen);
    PQclear(res);
    return r;
}

struct applied_row {
    int version;
    char name[64];
    char sha[65];
    char at[40];
};

/* Read schema_migrations (empty when the table does not exist). */
static int read_applied(PGconn *conn, struct applied_row **out, size_t *nout, char *err,
                        size_t errlen)
{
    *out = NULL;
    *nout = 0;
    PGresult *res = PQexec(conn, SQL_HAS_TABLE);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        int r = db_error(conn, res, "reading schema state", err, errlen);
        PQclear(res);
        return r;
    }
    bool has = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!has)
        return 0;

    res = PQexec(conn, SQL_APPLIED);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        int r = db_error(conn, res, "reading schema_migrations", err, errlen);
        PQclear(res);
        return r;
    }
    int n = PQntuples(res);
    struct applied_row *rows = pl_xcalloc((size_t)n, sizeof(*rows));
    for (int i = 0; i < n; i++) {
        rows[i].version = atoi(PQgetvalue(res, i, 0));
        pl_strlcpy(rows[i].name, PQgetvalue(res, i, 1), sizeof(rows[i].name));
        pl_strlcpy(rows[i].sha, PQgetvalue(res, i, 2), sizeof(rows[i].sha));
        pl_strlcpy(rows[i].at, PQgetvalue(res, i, 3), sizeof(rows[i].at));
    }
    PQclear(res);
    *out = rows;
    *nout = (size_t)n;
    return 0;
}

static const struct applied_row *find_applied(const struct applied_row *rows, size_t n,
                                              int version)
{
    for (size_t i = 0; i < n; i++)
        if (rows[i].version == version)
            return &rows[i];
    return NULL;
}

/* Compare what was applied against what this binary carries. */
static int verify_applied(const struct applied_row *rows, size_t n, char *err, size_t errlen)
{
    int latest = pl_schema_latest();
    for (size_t i = 0; i < n; i++) {
        if (rows[i].version < 1 || rows[i].version > latest) {
            snprintf(err, errlen,
                     "the database has schema version %d (%s) but this pledged knows only up "
                     "to %d: upgrade pledged before using this database",
                     rows[i].version, rows[i].name, latest);
            return PL_ESCHEMA;
        }
        const struct pl_migration *m = &pl_migrations[rows[i].version - 1];
        char sha[65];
        pl_schema_sha256(m, sha);
        if (strcmp(sha, rows[i].sha) != 0) {
            snprintf(err, errlen,
                     "migration %s was changed after it was applied (applied sha256 %.12s..., "
                     "file now %.12s...): restore the original file and put the change in a "
                     "new numbered migration",
                     m->name, rows[i].sha, sha);
            return PL_ESCHEMA;
        }
    }
    return 0;
}

int pl_schema_status(PGconn *conn, struct pl_schema_row **rows_out, size_t *nrows_out,
                     char *err, size_t errlen)
{
    struct applied_row *applied;
    size_t napplied;
    int r = read_applied(conn, &applied, &napplied, err, errlen);
    if (r < 0)
        return r;

    size_t cap = pl_migrations_count + napplied, n = 0;
    struct pl_schema_row *rows = pl_xcalloc(cap, sizeof(*rows));
    for (size_t i = 0; i < pl_migrations_count; i++) {
        const struct pl_migration *m = &pl_migrations[i];
        const struct applied_row *a = find_applied(applied, napplied, m->version);
        struct pl_schema_row *row = &rows[n++];
        row->version = m->version;
        pl_strlcpy(row->name, m->name, sizeof(row->name));
        row->state = PL_SCHEMA_PENDING;
        if (a) {
            char sha[65];
            pl_schema_sha256(m, sha);
            row->state = strcmp(sha, a->sha) == 0 ? PL_SCHEMA_APPLIED : PL_SCHEMA_CHANGED;
            pl_strlcpy(row->applied_at, a->at, sizeof(row->applied_at));
        }
    }
    for (size_t i = 0; i < napplied; i++) {
        if (applied[i].version >= 1 && applied[i].version <= pl_schema_latest())
            continue;
        struct pl_schema_row *row = &rows[n++];
        row->version = applied[i].version;
        pl_strlcpy(row->name, applied[i].name, sizeof(row->name));
        row->state = PL_SCHEMA_UNKNOWN;
        pl_strlcpy(row->applied_at, applied[i].at, sizeof(row->applied_at));
    }
    free(applied);
    *rows_out = rows;
    *nrows_out = n;
    return 0;
}

static int apply_one(PGconn *conn, const struct pl_migration *m, bool test_mode, char *err,
                     size_t errlen)
{
    char what[128];
    snprintf(what, sizeof(what), "applying %s", m->name);
    int r = exec_simple(conn, "BEGIN", what, err, errlen);
    if (r < 0)
        return r;

    /* The file is static text compiled into the binary; the simple query
     * protocol runs its statements in order. */
    r = exec_simple(conn, m->sql, what, err, errlen);
    if (r < 0)
        goto fail;

    char sha[65], version[16];
    pl_schema_sha256(m, sha);
    snprintf(version, sizeof(version), "%d", m->version);
    const char *params[] = {version, m->name, sha};
    PGresult *res = PQexecParams(conn,
                                 "INSERT INTO schema_migrations (version, name, sha256) "
                                 "VALUES ($1, $2, $3)",
                                 3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        r = db_error(conn, res, what, err, errlen);
        PQclear(res);
        goto fail;
    }
    PQclear(res);

    if (m->version == 1) {
        const char *tm[] = {test_mode ? "true" : "false"};
        res = PQexecParams(conn, "INSERT INTO instance (test_mode) VALUES ($1)", 1, NULL, tm,
                           NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            r = db_error(conn, res, what, err, errlen);
            PQclear(res);
            goto fail;
        }
        PQclear(res);
    }

    r = exec_simple(conn, "COMMIT", what, err, errlen);
    if (r < 0)
        goto fail;
    return 0;

fail:
    PQclear(PQexec(conn, "ROLLBACK"));
    return r;
}

/* Is the instance already in test mode? (schema version 1 applied) */
static int instance_test_mode(PGconn *conn, bool *out, char *err, size_t errlen)
{
    PGresult *res = PQexec(conn, "SELECT coalesce((SELECT test_mode FROM instance), false)");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        int r = db_error(conn, res, "reading instance", err, errlen);
        PQclear(res);
        return r;
    }
    *out = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return 0;
}

int pl_schema_migrate(PGconn *conn, bool test_mode, pl_schema_applied_fn on_applied, void *arg,
                      int *applied_count, char *err, size_t errlen)
{
    struct applied_row *applied = NULL;
    size_t napplied = 0;
    int count = 0;

    int r = exec_simple(conn, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")",
                        "taking the migration lock", err, errlen);
    if (r < 0)
        return r;
    r = exec_simple(conn, SQL_CREATE_TABLE, "creating schema_migrations", err, errlen);
    if (r < 0)
        goto out;
    r = read_applied(conn, &applied, &napplied, err, errlen);
    if (r < 0)
        goto out;
    r = verify_applied(applied, napplied, err, errlen);
    if (r < 0)
        goto out;

    if (test_mode && find_applied(applied, napplied, 1)) {
        bool already = false;
        r = instance_test_mode(conn, &already, err, errlen);
        if (r < 0)
            goto out;
        if (!already) {
            snprintf(err, errlen,
                     "test mode can only be chosen when a database is first migrated; this "
                     "database was created for production and stays so");
            r = PL_ECONFLICT;
            goto out;
        }
    }

    for (size_t i = 0; i < pl_migrations_count; i++) {
        const struct pl_migration *m = &pl_migrations[i];
        if (find_applied(applied, napplied, m->version))
            continue;
        r = apply_one(conn, m, test_mode, err, errlen);
        if (r < 0)
            goto out;
        count++;
        if (on_applied)
            on_applied(m, arg);
    }

out:
    free(applied);
    {
        char ignored[256];
        exec_simple(conn, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")", "unlocking",
                    ignored, sizeof(ignored));
    }
    if (applied_count)
        *applied_count = count;
    return r;
}

int pl_schema_check_rows(size_t n, const int *versions, const char *const *sha256s, char *err,
                         size_t errlen)
{
    struct applied_row *rows = pl_xcalloc(n, sizeof(*rows));
    for (size_t i = 0; i < n; i++) {
        rows[i].version = versions[i];
        if (versions[i] >= 1 && versions[i] <= pl_schema_latest())
            pl_strlcpy(rows[i].name, pl_migrations[versions[i] - 1].name, sizeof(rows[i].name));
        else
            snprintf(rows[i].name, sizeof(rows[i].name), "version %d", versions[i]);
        pl_strlcpy(rows[i].sha, sha256s[i] ? sha256s[i] : "", sizeof(rows[i].sha));
    }
    int r = verify_applied(rows, n, err, errlen);
    if (r == 0 && (int)n < pl_schema_latest()) {
        if (n == 0)
            snprintf(err, errlen,
                     "the database has no pledged schema: run `pledgectl migrate` first");
        else
            snprintf(err, errlen,
                     "the database schema is at version %d but this pledged needs %d: run "
                     "`pledgectl migrate`",
                     rows[n - 1].version, pl_schema_latest());
        r = PL_ESCHEMA;
    }
    free(rows);
    return r;
}

int pl_schema_check(PGconn *conn, char *err, size_t errlen)
{
    struct applied_row *applied;
    size_t napplied;
    int r = read_applied(conn, &applied, &napplied, err, errlen);
    if (r < 0)
        return r;
    int *versions = pl_xcalloc(napplied, sizeof(*versions));
    const char **shas = pl_xcalloc(napplied, sizeof(*shas));
    for (size_t i = 0; i < napplied; i++) {
        versions[i] = applied[i].version;
        shas[i] = applied[i].sha;
    }
    r = pl_schema_check_rows(napplied, versions, shas, err, errlen);
    free(versions);
    free(shas);
    free(applied);
    return r;
}
