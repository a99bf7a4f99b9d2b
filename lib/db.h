/*
 * db — PostgreSQL on the libuv loop, without ever blocking it.
 *
 * Owns: a pool of libpq connections (non-blocking, pipeline mode), one
 * extra connection for LISTEN, a FIFO of queued work, reconnection with
 * exponential backoff and jitter, and a per-connection cache of prepared
 * statements. Never: builds SQL from values (parameters only; the single
 * exception is LISTEN's channel identifier, validated and quoted with
 * PQescapeIdentifier), retries a statement on its own, or logs a password.
 *
 * Units of work. Everything sent is a *unit*, the smallest thing that
 * succeeds or fails as a whole and gets exactly one callback:
 *   - pl_db_query(): one statement (its own implicit transaction);
 *   - a transaction (pl_db_tx_new): BEGIN, the statements, COMMIT, sent
 *     pipelined in one round trip; any error rolls all of it back and is
 *     reported once, with the failing statement's index;
 *   - a batch (pl_db_batch_new): statements pipelined in one round trip,
 *     each its own implicit transaction: one failing does not undo or skip
 *     the others.
 * Units are dispatched FIFO onto the pool; a connection may pipeline up to
 * `pipeline_depth` units, except that nothing is sent behind a transaction
 * until its outcome is known (an aborted transaction would poison them).
 *
 * Callbacks run on the loop, never from inside the call that submitted the
 * work. `err` is one of:
 *   0            success; `r` holds the results.
 *   PL_EDB       the server refused a statement; `r` holds the message,
 *                SQLSTATE and index. For a transaction nothing was applied.
 *   PL_EDBLOST   the connection died while the unit was on it: the outcome
 *                is UNKNOWN (a COMMIT may have happened). `r` is NULL.
 *   PL_ETIMEOUT  the unit waited in the queue longer than queue_deadline_ms
 *                (typically: no connection during an outage); never sent.
 *   PL_ECANCELED pl_db_free() ran before the unit was sent. `r` is NULL.
 * A failing submit function (returns < 0) never calls the callback.
 *
 * Sessions run with TimeZone=UTC and DateStyle=ISO (set at connect time,
 * appended to any `options` in the conninfo), so timestamptz text is
 * "YYYY-MM-DD HH:MM:SS[.ffffff]+00"; pl_db_result_timestamp_us() parses it.
 * Do not send transaction control (BEGIN/COMMIT/SET SESSION ...) through
 * pl_db_query(): a connection left inside a transaction is rolled back.
 *
 * Caveat: with a host name (not hostaddr or a socket directory), libpq's
 * PQconnectStartParams resolves it synchronously.
 */
#ifndef PL_DB_H
#define PL_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct pl_db;
struct pl_db_tx;
struct pl_db_result;

/* Defaults used when an option is 0. */
#define PL_DB_DEFAULT_POOL_SIZE          4
#define PL_DB_DEFAULT_PIPELINE_DEPTH     16
#define PL_DB_DEFAULT_CONNECT_TIMEOUT_MS 5000
#define PL_DB_DEFAULT_QUEUE_DEADLINE_MS  30000
#define PL_DB_DEFAULT_BACKOFF_MIN_MS     100
#define PL_DB_DEFAULT_BACKOFF_MAX_MS     10000
#define PL_DB_MAX_PARAMS                 65535

/* Called once, when the first pool connection is usable. */
typedef void (*pl_db_ready_cb)(struct pl_db *db, void *arg);
/* Called by pl_db_free() once every handle is closed and memory freed. */
typedef void (*pl_db_closed_cb)(void *arg);

struct pl_db_opts {
    const char *conninfo;         /* "key=value ..." or URI; NULL: libpq env defaults (PGHOST...) */
    const char *password;         /* optional (from a secret file); copied, never logged */
    const char *application_name; /* NULL: keep conninfo's, else "pledged" */
    unsigned pool_size;           /* query connections (not counting LISTEN) */
    unsigned pipeline_depth;      /* units in flight per connection; 1 = no pipelining */
    unsigned connect_timeout_ms;  /* per attempt, enforced by our own timer */
    unsigned queue_deadline_ms;   /* max wait in the queue before PL_ETIMEOUT */
    unsigned backoff_min_ms;      /* first reconnect delay, doubling ... */
    unsigned backoff_max_ms;      /* ... up to this; each delay gets jitter */
    bool no_prepare;              /* don't cache named prepared statements */
    pl_db_ready_cb on_ready;
    void *ready_arg;
};

/*
 * Create the pool and start connecting (the call itself never waits).
 * opts is copied. Returns NULL (and sets *err if given) only for invalid
 * options or an unparsable conninfo; an unreachable server is not an
 * error — work queues and connection attempts repeat with backoff.
 */
struct pl_db *pl_db_new(uv_loop_t *loop, const struct pl_db_opts *opts, int *err);

/*
 * Shut down: queued units fail with PL_ECANCELED and units in flight with
 * PL_EDBLOST (on the loop, not inside this call), connections are closed,
 * and `closed_cb` (optional) runs when the last handle is gone. Safe to
 * call from inside a db callback. Accepts NULL. No pl_db_* call on db after.
 */
void pl_db_free(struct pl_db *db, pl_db_closed_cb closed_cb, void *arg);

/* True once the first pool connection was established (stays true). */
bool pl_db_connected(const struct pl_db *db);

/*
 * `r` is borrowed: valid only during the callback (copy what you keep).
 * It is non-NULL exactly when err is 0 or PL_EDB.
 */
typedef void (*pl_db_cb)(const struct pl_db_result *r, int err, void *arg);

/*
 * One parameterised statement ($1..$n), parameters in text format; a NULL
 * entry is SQL NULL. sql and params are copied. Returns 0 (cb will run) or
 * PL_EINVAL (NULL sql/cb, nparams out of range).
 */
int pl_db_query(struct pl_db *db, const char *sql, int nparams, const char *const *params,
                pl_db_cb cb, void *arg);

/* A transaction (all or nothing) / a batch (independent statements). New;
 * ownership passes back to db at pl_db_tx_commit(), or pl_db_tx_free(). */
struct pl_db_tx *pl_db_tx_new(struct pl_db *db);
struct pl_db_tx *pl_db_batch_new(struct pl_db *db);
/* Append a statement (copied). Returns its index (>= 0) or PL_EINVAL. */
int pl_db_tx_add(struct pl_db_tx *tx, const char *sql, int nparams, const char *const *params);
int pl_db_tx_count(const struct pl_db_tx *tx);
/*
 * Queue the unit. Always consumes tx, also on failure (PL_EINVAL: NULL cb;
 * then cb is not called). For a transaction, r's error index is the
 * failing statement, or pl_db_tx_count() if COMMIT itself failed.
 */
int pl_db_tx_commit(struct pl_db_tx *tx, pl_db_cb cb, void *arg);
/* Discard an uncommitted tx. Accepts NULL. */
void pl_db_tx_free(struct pl_db_tx *tx);

/*
 * LISTEN on `channel` (letters, digits, '_', at most 63 bytes; case kept)
 * on the dedicated LISTEN connection, opened on first use. cb runs with
 * the payload of each notification, and with payload == NULL each time the
 * LISTEN is (re-)established — first time and after every reconnect —
 * meaning "notifications before this moment may have been missed: rescan".
 * Listeners stay until pl_db_free(). Returns 0 or PL_EINVAL.
 */
typedef void (*pl_db_notify_cb)(const char *channel, const char *payload, void *arg);
int pl_db_listen(struct pl_db *db, const char *channel, pl_db_notify_cb cb, void *arg);

/* ---- results (all take the statement result; see pl_db_result_stmt) ---- */

/* Number of user statements in the unit (1 for pl_db_query). */
int pl_db_result_nstmts(const struct pl_db_result *r);
/* Result of statement i of the unit r belongs to (borrowed), or NULL.
 * The r handed to a callback is statement 0's. */
const struct pl_db_result *pl_db_result_stmt(const struct pl_db_result *r, int i);

int pl_db_result_ntuples(const struct pl_db_result *r);
int pl_db_result_nfields(const struct pl_db_result *r);
/* Rows affected ("INSERT 0 5" → 5), or 0. */
int64_t pl_db_result_affected(const struct pl_db_result *r);
/* Column index by name, or PL_ENOTFOUND. */
int pl_db_result_field_index(const struct pl_db_result *r, const char *name);
/* True for SQL NULL and for a row/column out of range. */
bool pl_db_result_is_null(const struct pl_db_result *r, int row, int col);
/* Text of a value (borrowed, NUL-terminated), NULL for SQL NULL / out of range. */
const char *pl_db_result_text(const struct pl_db_result *r, int row, int col);
/*
 * Typed values. Return 0, PL_EINVAL (row/col out of range), PL_ENOTFOUND
 * (SQL NULL), PL_EPARSE (not of that type) or PL_ERANGE; *out untouched
 * on failure.
 *   int64:        integer text (smallint/int/bigint), full int64 range.
 *   bool:         't' / 'f'.
 *   timestamp_us: microseconds since 1970-01-01 00:00:00 UTC of a
 *                 timestamptz (any ±HH[:MM[:SS]] offset honoured; a plain
 *                 timestamp is taken as UTC); 'infinity' and BC → PL_ERANGE.
 */
int pl_db_result_int64(const struct pl_db_result *r, int row, int col, int64_t *out);
int pl_db_result_bool(const struct pl_db_result *r, int row, int col, bool *out);
int pl_db_result_timestamp_us(const struct pl_db_result *r, int row, int col, int64_t *out);

/*
 * Errors (err == PL_EDB). On the callback's r these describe the unit's
 * failure; on a statement's result, that statement's own error (a batch
 * may have several). NULL / -1 when there is none.
 */
int pl_db_result_error_index(const struct pl_db_result *r);
const char *pl_db_result_error_message(const struct pl_db_result *r); /* primary message */
const char *pl_db_result_sqlstate(const struct pl_db_result *r);      /* "23505" */
const char *pl_db_result_constraint(const struct pl_db_result *r);    /* violated constraint */

/* Parse timestamptz text as produced under DateStyle=ISO (exposed for tests). */
int pl_db_parse_timestamp_us(const char *text, int64_t *out);

/* ---- metrics ---- */
struct pl_db_stats {
    uint64_t units;       /* units completed (any outcome) */
    uint64_t statements;  /* user statements sent */
    uint64_t round_trips; /* writes of >= 1 unit to a connection in one go */
    uint64_t errors;      /* units that ended PL_EDB */
    uint64_t lost;        /* units that ended PL_EDBLOST */
    uint64_t timeouts;    /* units that ended PL_ETIMEOUT */
    uint64_t reconnects;  /* successful connects after a loss or failure */
    uint64_t connect_failures;
    uint64_t notifications;
    unsigned queue_len;      /* units waiting for a connection now */
    unsigned in_flight;      /* units on connections now */
    unsigned connections_up; /* pool connections usable now */
    unsigned pool_size;
};
void pl_db_stats(const struct pl_db *db, struct pl_db_stats *out);

#endif
