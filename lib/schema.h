/*
 * schema — the migrations compiled into the binary (sql/NNN_*.sql) and the
 * rules for applying and checking them.
 *
 * Owns: the order, the checksums, the advisory lock that serialises
 * concurrent `pledgectl migrate` runs. Never: edits an applied migration or
 * skips one; builds SQL from strings (the files are static text).
 *
 * These functions use a plain synchronous PGconn: they run in pledgectl and
 * in the daemon before its event loop starts.
 */
#ifndef PL_SCHEMA_H
#define PL_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>
#include <libpq-fe.h>

struct pl_migration {
    int version;
    const char *name; /* file name, e.g. "001_schema.sql" */
    size_t len;
    const char *sql;
};

/* Generated from sql/ by sql/embed.py, in version order 1..count. */
extern const struct pl_migration pl_migrations[];
extern const size_t pl_migrations_count;

/* The newest schema version this binary knows. */
int pl_schema_latest(void);

/* Lowercase hex sha256 of a migration's text (65 bytes with NUL). */
void pl_schema_sha256(const struct pl_migration *m, char out[65]);

enum pl_schema_state {
    PL_SCHEMA_PENDING,  /* known here, not applied */
    PL_SCHEMA_APPLIED,  /* applied, checksum matches */
    PL_SCHEMA_CHANGED,  /* applied, but the file differs from what was applied */
    PL_SCHEMA_UNKNOWN,  /* applied in the database, unknown to this binary (newer) */
};

struct pl_schema_row {
    int version;
    char name[64];
    enum pl_schema_state state;
    char applied_at[40]; /* "" when pending */
};

/*
 * Read the state of every migration (known or applied) into *rows (new
 * array, caller frees) and *nrows. A database without schema_migrations
 * has every known migration pending. Returns 0 or PL_EDB with err filled.
 */
int pl_schema_status(PGconn *conn, struct pl_schema_row **rows, size_t *nrows, char *err,
                     size_t errlen);

/* Called after each migration is committed. */
typedef void (*pl_schema_applied_fn)(const struct pl_migration *m, void *arg);

/*
 * Apply every pending migration in order, each in its own transaction,
 * under an advisory lock so concurrent runs are safe. Refuses (PL_ESCHEMA)
 * when an applied file has changed or the database is newer than this
 * binary. `test_mode` may only be chosen when the database is first
 * migrated; asking for it later is PL_ECONFLICT. *applied counts what this
 * call applied. Returns 0 or a negative code with err filled.
 */
int pl_schema_migrate(PGconn *conn, bool test_mode, pl_schema_applied_fn on_applied, void *arg,
                      int *applied, char *err, size_t errlen);

/*
 * Check that the database is exactly at the schema this binary expects;
 * otherwise PL_ESCHEMA with an operator-facing message saying what to run.
 */
int pl_schema_check(PGconn *conn, char *err, size_t errlen);

/* SQL returning (version, sha256) of the applied migrations, in order, and
 * the check of its rows, for callers that query asynchronously (the daemon). */
#define PL_SCHEMA_APPLIED_SQL "SELECT version, sha256 FROM schema_migrations ORDER BY version"
int pl_schema_check_rows(size_t n, const int *versions, const char *const *sha256s, char *err,
                         size_t errlen);

#endif
