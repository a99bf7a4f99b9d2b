/*
 * Tests for lib/db.c against a real PostgreSQL server (libpq environment:
 * PGHOST, PGPORT, ...; scripts/pgtmp.sh provides one) on a real uv loop.
 *
 * The last two tests stop/restart that server through pg_ctl on
 * $PGTMP_DIR/data; they skip when that is not possible. Every test skips
 * when no server answers within a few seconds.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include <uv.h>

#include "db.h"
#include "log.h"
#include "util.h"

static uv_loop_t loop;
static struct pl_db *db; /* shared pool, env conninfo */
static bool have_pg;

/* ------------------------------------------------------------------ */
/* helpers                                                             */

static void on_tick(uv_timer_t *t)
{
    (void)t; /* only wakes uv_run(UV_RUN_ONCE) up */
}

/* Run the loop until *flag or timeout; returns *flag. */
static bool run_until(const bool *flag, int timeout_ms)
{
    uv_timer_t tick;
    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, on_tick, 20, 20);
    int64_t end = pl_monotonic_us() + (int64_t)timeout_ms * PL_US_PER_MS;
    while (!*flag && pl_monotonic_us() < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    return *flag;
}

static bool run_until_count(const int *count, int want, int timeout_ms)
{
    int64_t end = pl_monotonic_us() + (int64_t)timeout_ms * PL_US_PER_MS;
    bool done = false;
    while (*count < want && pl_monotonic_us() < end) {
        done = false;
        run_until(&done, 50);
    }
    return *count >= want;
}

#define REQUIRE_PG()                                                                \
    do {                                                                            \
        if (!have_pg) {                                                             \
            print_message("no PostgreSQL server reachable (PGHOST...): skipped\n"); \
            skip();                                                                 \
        }                                                                           \
    } while (0)

/* A copy of what a callback saw, for asserting after the loop returns. */
#define MAXV 16
struct capture {
    bool done;
    int calls;
    int err;
    int nstmts, ntuples, nfields, err_index;
    char *v[MAXV];
    bool isnull[MAXV];
    char sqlstate[8];
    char message[256];
    char constraint[64];
};

static void capture_reset(struct capture *c)
{
    for (int i = 0; i < MAXV; i++)
        free(c->v[i]);
    memset(c, 0, sizeof(*c));
}

static void on_capture(const struct pl_db_result *r, int err, void *arg)
{
    struct capture *c = arg;
    c->calls++;
    c->done = true;
    c->err = err;
    if (!r)
        return;
    c->nstmts = pl_db_result_nstmts(r);
    c->ntuples = pl_db_result_ntuples(r);
    c->nfields = pl_db_result_nfields(r);
    c->err_index = pl_db_result_error_index(r);
    for (int i = 0; i < c->nfields && i < MAXV; i++) {
        const char *t = pl_db_result_text(r, 0, i);
        c->isnull[i] = pl_db_result_is_null(r, 0, i);
        c->v[i] = t ? strdup(t) : NULL;
    }
    if (pl_db_result_sqlstate(r))
        pl_strlcpy(c->sqlstate, pl_db_result_sqlstate(r), sizeof(c->sqlstate));
    if (pl_db_result_error_message(r))
        pl_strlcpy(c->message, pl_db_result_error_message(r), sizeof(c->message));
    if (pl_db_result_constraint(r))
        pl_strlcpy(c->constraint, pl_db_result_constraint(r), sizeof(c->constraint));
}

/* Run one query on the shared pool and wait for it. */
static void query_wait(struct capture *c, const char *sql, int n, const char *const *params)
{
    capture_reset(c);
    assert_int_equal(pl_db_query(db, sql, n, params, on_capture, c), 0);
    assert_true(run_until(&c->done, 10000));
}

static void on_ready(struct pl_db *d, void *arg)
{
    (void)d;
    *(bool *)arg = true;
}

static int group_setup(void **state)
{
    (void)state;
    pl_log_setup(PL_LOG_INFO, PL_LOG_TEXT);
    uv_loop_init(&loop);
    bool ready = false;
    struct pl_db_opts o = {.pool_size = 4, .on_ready = on_ready, .ready_arg = &ready};
    int err = 0;
    db = pl_db_new(&loop, &o, &err);
    if (!db)
        return -1;
    have_pg = run_until(&ready, 5000);
    if (have_pg)
        assert_true(pl_db_connected(db));
    return 0;
}

static void on_closed(void *arg)
{
    *(bool *)arg = true;
}

static int group_teardown(void **state)
{
    (void)state;
    bool closed = false;
    pl_db_free(db, on_closed, &closed);
    run_until(&closed, 10000);
    db = NULL;
    uv_run(&loop, UV_RUN_NOWAIT);
    int rc = uv_loop_close(&loop);
    if (rc != 0)
        fprintf(stderr, "uv_loop_close: %s (a handle was not closed)\n", uv_strerror(rc));
    return closed && rc == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ */
/* values                                                              */

static void test_params_roundtrip(void **state)
{
    (void)state;
    REQUIRE_PG();
    static const char *const params[] = {
        NULL,
        "it's \"quoted\" ''",
        "back\\slash \\\\ \\x41 \\n E'\\''",
        "Grüße, 日本語, emoji \xF0\x9F\x8E\x89",
        "",
        "tab\tnewline\nCR\r; DROP TABLE x; --",
    };
    struct capture c = {0};
    query_wait(&c,
               "SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, "
               "$1::text IS NULL, char_length($4::text)",
               6, params);
    assert_int_equal(c.err, 0);
    assert_int_equal(c.ntuples, 1);
    assert_int_equal(c.nfields, 8);
    assert_true(c.isnull[0]);
    assert_null(c.v[0]);
    for (int i = 1; i < 6; i++) {
        assert_false(c.isnull[i]);
        assert_string_equal(c.v[i], params[i]);
    }
    assert_string_equal(c.v[6], "t");
    assert_string_equal(c.v[7], "19"); /* characters, not bytes: UTF-8 kept intact */
    capture_reset(&c);
}

struct typed {
    bool done;
    int err;
    int rc[16];
    int64_t i[16];
    bool b[4];
    int field_idx, field_missing;
};

static void on_typed(const struct pl_db_result *r, int err, void *arg)
{
    struct typed *t = arg;
    t->done = true;
    t->err = err;
    if (err)
        return;
    for (int col = 0; col < 8; col++)
        t->rc[col] = pl_db_result_int64(r, 0, col, &t->i[col]);
    t->rc[8] = pl_db_result_bool(r, 0, 8, &t->b[0]);
    t->rc[9] = pl_db_result_bool(r, 0, 9, &t->b[1]);
    t->rc[10] = pl_db_result_int64(r, 0, 99, &t->i[10]); /* no such column */
    t->rc[11] = pl_db_result_int64(r, 1, 0, &t->i[11]);  /* no such row */
    t->field_idx = pl_db_result_field_index(r, "lo");
    t->field_missing = pl_db_result_field_index(r, "nope");
}

static void test_int64_and_bool(void **state)
{
    (void)state;
    REQUIRE_PG();
    static const char *const params[] = {"9223372036854775807", "-9223372036854775808", "0"};
    struct typed t = {0};
    assert_int_equal(pl_db_query(db,
                                 "SELECT $1::bigint AS hi, $2::bigint AS lo, $3::int, "
                                 "'abc'::text, 1.5::numeric, NULL::bigint, "
                                 "'9223372036854775808'::numeric, ' 1'::text, true, false",
                                 3, params, on_typed, &t),
                     0);
    assert_true(run_until(&t.done, 10000));
    assert_int_equal(t.err, 0);
    assert_int_equal(t.rc[0], 0);
    assert_true(t.i[0] == INT64_MAX);
    assert_int_equal(t.rc[1], 0);
    assert_true(t.i[1] == INT64_MIN);
    assert_int_equal(t.rc[2], 0);
    assert_true(t.i[2] == 0);
    assert_int_equal(t.rc[3], PL_EPARSE);
    assert_int_equal(t.rc[4], PL_EPARSE);
    assert_int_equal(t.rc[5], PL_ENOTFOUND);
    assert_int_equal(t.rc[6], PL_ERANGE);
    assert_int_equal(t.rc[7], PL_EPARSE);
    assert_int_equal(t.rc[8], 0);
    assert_true(t.b[0]);
    assert_int_equal(t.rc[9], 0);
    assert_false(t.b[1]);
    assert_int_equal(t.rc[10], PL_EINVAL);
    assert_int_equal(t.rc[11], PL_EINVAL);
    assert_int_equal(t.field_idx, 1);
    assert_int_equal(t.field_missing, PL_ENOTFOUND);
}

/* Each statement: SELECT $1::timestamptz, the server's own epoch microseconds. */
#define NTS 7
struct ts_capture {
    bool done;
    int err;
    int rc[NTS], rc_srv[NTS];
    int64_t us[NTS], srv[NTS];
    char tz[16];
};

static void on_ts(const struct pl_db_result *r, int err, void *arg)
{
    struct ts_capture *t = arg;
    t->done = true;
    t->err = err;
    if (err)
        return;
    for (int i = 0; i < NTS; i++) {
        const struct pl_db_result *s = pl_db_result_stmt(r, i);
        t->rc[i] = pl_db_result_timestamp_us(s, 0, 0, &t->us[i]);
        t->rc_srv[i] = pl_db_result_int64(s, 0, 1, &t->srv[i]);
    }
    const struct pl_db_result *s = pl_db_result_stmt(r, NTS);
    pl_strlcpy(t->tz, pl_db_result_text(s, 0, 0) ? pl_db_result_text(s, 0, 0) : "", 16);
}

static void test_timestamps(void **state)
{
    (void)state;
    REQUIRE_PG();
    static const char *const inputs[NTS] = {
        "1970-01-01 00:00:00+00",    "2024-02-29 23:59:59.999999+00", "1969-12-31 23:59:59.5+00",
        "2000-01-01 05:30:00+05:30", "2038-01-19 03:14:08-08",        "now",
        "0001-01-01 00:00:00+00",
    };
    struct pl_db_tx *b = pl_db_batch_new(db);
    for (int i = 0; i < NTS; i++)
        assert_int_equal(pl_db_tx_add(b,
                                      "SELECT $1::timestamptz, "
                                      "(extract(epoch FROM $1::timestamptz) * 1000000)::bigint",
                                      1, &inputs[i]),
                         i);
    pl_db_tx_add(b, "SELECT current_setting('TimeZone')", 0, NULL);
    struct ts_capture t = {0};
    assert_int_equal(pl_db_tx_commit(b, on_ts, &t), 0);
    assert_true(run_until(&t.done, 10000));
    assert_int_equal(t.err, 0);
    assert_string_equal(t.tz, "UTC");
    for (int i = 0; i < NTS; i++) {
        assert_int_equal(t.rc[i], 0);
        assert_int_equal(t.rc_srv[i], 0);
        assert_true(t.us[i] == t.srv[i]);
    }
    assert_true(t.us[0] == 0);
    assert_true(t.us[1] == 1709251199999999LL);
    assert_true(t.us[2] == -500000);
    assert_true(t.us[3] == 946684800LL * PL_US_PER_S);

    /* the parser alone: offsets, limits and junk */
    int64_t v = 0;
    assert_int_equal(pl_db_parse_timestamp_us("2000-01-01 05:30:00+05:30", &v), 0);
    assert_true(v == 946684800LL * PL_US_PER_S);
    assert_int_equal(pl_db_parse_timestamp_us("1970-01-01 00:00:00-00:00:30", &v), 0);
    assert_true(v == 30 * PL_US_PER_S);
    assert_int_equal(pl_db_parse_timestamp_us("1970-01-01 00:00:00.000001", &v), 0);
    assert_true(v == 1);
    assert_int_equal(pl_db_parse_timestamp_us("infinity", &v), PL_ERANGE);
    assert_int_equal(pl_db_parse_timestamp_us("0044-03-15 12:00:00+00 BC", &v), PL_ERANGE);
    assert_int_equal(pl_db_parse_timestamp_us("2023-02-29 00:00:00+00", &v), PL_EPARSE);
    assert_int_equal(pl_db_parse_timestamp_us("2024-01-01T00:00:00Z", &v), PL_EPARSE);
    assert_int_equal(pl_db_parse_timestamp_us("2024-01-01 00:00:00.", &v), PL_EPARSE);
    assert_int_equal(pl_db_parse_timestamp_us("", &v), PL_EPARSE);
}

/* ------------------------------------------------------------------ */
/* batches and transactions                                            */

struct big {
    bool done;
    int err;
    int n;
    int64_t count, sum;
    int bad;
};

static void on_big_tx(const struct pl_db_result *r, int err, void *arg)
{
    struct big *b = arg;
    b->done = true;
    b->err = err;
    if (err)
        return;
    b->n = pl_db_result_nstmts(r);
    const struct pl_db_result *last = pl_db_result_stmt(r, b->n - 1);
    pl_db_result_int64(last, 0, 0, &b->count);
    pl_db_result_int64(last, 0, 1, &b->sum);
    for (int i = 1; i < b->n - 1; i++)
        if (pl_db_result_affected(pl_db_result_stmt(r, i)) != 1)
            b->bad++;
}

static void on_big_batch(const struct pl_db_result *r, int err, void *arg)
{
    struct big *b = arg;
    b->done = true;
    b->err = err;
    if (err)
        return;
    b->n = pl_db_result_nstmts(r);
    for (int i = 0; i < b->n; i++) {
        int64_t v = -1;
        if (pl_db_result_int64(pl_db_result_stmt(r, i), 0, 0, &v) != 0 || v != i)
            b->bad++;
    }
}

static void test_pipelined_1000(void **state)
{
    (void)state;
    REQUIRE_PG();
    struct pl_db_stats s0, s1;
    char num[16];
    const char *p[1] = {num};

    /* a transaction of 1,000 inserts (plus setup and check) in one unit */
    struct pl_db_tx *tx = pl_db_tx_new(db);
    pl_db_tx_add(tx, "CREATE TEMP TABLE db_test_t1000 (i int) ON COMMIT DROP", 0, NULL);
    for (int i = 1; i <= 1000; i++) {
        snprintf(num, sizeof(num), "%d", i);
        pl_db_tx_add(tx, "INSERT INTO db_test_t1000 (i) VALUES ($1)", 1, p);
    }
    pl_db_tx_add(tx, "SELECT count(*), sum(i) FROM db_test_t1000", 0, NULL);
    assert_int_equal(pl_db_tx_count(tx), 1002);
    struct big b = {0};
    pl_db_stats(db, &s0);
    assert_int_equal(pl_db_tx_commit(tx, on_big_tx, &b), 0);
    assert_true(run_until(&b.done, 20000));
    pl_db_stats(db, &s1);
    assert_int_equal(b.err, 0);
    assert_int_equal(b.n, 1002);
    assert_true(b.count == 1000);
    assert_true(b.sum == 500500);
    assert_int_equal(b.bad, 0);
    assert_true(s1.round_trips - s0.round_trips == 1);
    assert_true(s1.statements - s0.statements == 1002);
    print_message("1000-insert transaction: %" PRIu64 " round trip(s)\n",
                  s1.round_trips - s0.round_trips);

    /* a plain batch of 1,000 selects */
    struct pl_db_tx *batch = pl_db_batch_new(db);
    for (int i = 0; i < 1000; i++) {
        snprintf(num, sizeof(num), "%d", i);
        pl_db_tx_add(batch, "SELECT $1::int", 1, p);
    }
    memset(&b, 0, sizeof(b));
    pl_db_stats(db, &s0);
    assert_int_equal(pl_db_tx_commit(batch, on_big_batch, &b), 0);
    assert_true(run_until(&b.done, 20000));
    pl_db_stats(db, &s1);
    assert_int_equal(b.err, 0);
    assert_int_equal(b.n, 1000);
    assert_int_equal(b.bad, 0);
    assert_true(s1.round_trips - s0.round_trips == 1);
}

static void on_count(const struct pl_db_result *r, int err, void *arg)
{
    int *n = arg;
    if (err == 0)
        (*n)++;
}

static void test_tx_error_rolls_back(void **state)
{
    (void)state;
    REQUIRE_PG();
    char table[64], sql_create[160], sql_ins[160], sql_count[160], sql_drop[160];
    snprintf(table, sizeof(table), "db_test_rb_%ld", (long)getpid());
    /* identifiers cannot be parameters; table is our own constant-derived name */
    snprintf(sql_create, sizeof(sql_create), "CREATE TABLE %s (id int PRIMARY KEY, note text)",
             table);
    snprintf(sql_ins, sizeof(sql_ins), "INSERT INTO %s (id, note) VALUES ($1, $2)", table);
    snprintf(sql_count, sizeof(sql_count), "SELECT count(*) FROM %s", table);
    snprintf(sql_drop, sizeof(sql_drop), "DROP TABLE IF EXISTS %s", table);

    struct capture c = {0};
    query_wait(&c, sql_drop, 0, NULL);
    query_wait(&c, sql_create, 0, NULL);
    assert_int_equal(c.err, 0);

    /* duplicate key at index 3 of 6 */
    static const char *ids[] = {"1", "2", "3", "2", "4", "5"};
    struct pl_db_tx *tx = pl_db_tx_new(db);
    for (int i = 0; i < 6; i++) {
        const char *p[2] = {ids[i], "x"};
        pl_db_tx_add(tx, sql_ins, 2, p);
    }
    /* work queued right behind the failing transaction must not be poisoned */
    int ok_after = 0;
    capture_reset(&c);
    assert_int_equal(pl_db_tx_commit(tx, on_capture, &c), 0);
    for (int i = 0; i < 20; i++)
        assert_int_equal(pl_db_query(db, "SELECT 1", 0, NULL, on_count, &ok_after), 0);
    assert_true(run_until(&c.done, 10000));
    assert_true(run_until_count(&ok_after, 20, 10000));
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.err, PL_EDB);
    assert_int_equal(c.err_index, 3);
    assert_string_equal(c.sqlstate, "23505");
    assert_true(strstr(c.constraint, "pkey") != NULL);
    print_message("reported once: statement %d: %s (%s)\n", c.err_index, c.message, c.sqlstate);

    query_wait(&c, sql_count, 0, NULL);
    assert_int_equal(c.err, 0);
    assert_string_equal(c.v[0], "0");

    /* a syntax error (fails at Parse, i.e. in the prepare) at index 1 */
    tx = pl_db_tx_new(db);
    const char *p1[2] = {"10", "y"};
    pl_db_tx_add(tx, sql_ins, 2, p1);
    pl_db_tx_add(tx, "SELEC 1", 0, NULL);
    pl_db_tx_add(tx, sql_ins, 2, p1);
    capture_reset(&c);
    assert_int_equal(pl_db_tx_commit(tx, on_capture, &c), 0);
    assert_true(run_until(&c.done, 10000));
    assert_int_equal(c.err, PL_EDB);
    assert_int_equal(c.err_index, 1);
    assert_string_equal(c.sqlstate, "42601");

    /* a batch: statements are independent, the failing one does not undo others */
    struct pl_db_tx *b = pl_db_batch_new(db);
    const char *q1[2] = {"20", "a"}, *q2[2] = {"20", "dup"}, *q3[2] = {"21", "b"};
    pl_db_tx_add(b, sql_ins, 2, q1);
    pl_db_tx_add(b, sql_ins, 2, q2);
    pl_db_tx_add(b, sql_ins, 2, q3);
    capture_reset(&c);
    assert_int_equal(pl_db_tx_commit(b, on_capture, &c), 0);
    assert_true(run_until(&c.done, 10000));
    assert_int_equal(c.err, PL_EDB);
    assert_int_equal(c.err_index, 1);

    /* one connection: what follows a failed transaction on it is not poisoned */
    bool ready = false;
    struct pl_db_opts o1 = {.pool_size = 1, .on_ready = on_ready, .ready_arg = &ready};
    struct pl_db *one = pl_db_new(&loop, &o1, NULL);
    assert_non_null(one);
    tx = pl_db_tx_new(one);
    pl_db_tx_add(tx, "SELECT 1/0", 0, NULL);
    capture_reset(&c);
    assert_int_equal(pl_db_tx_commit(tx, on_capture, &c), 0);
    struct capture after = {0};
    assert_int_equal(pl_db_query(one, "SELECT 2", 0, NULL, on_capture, &after), 0);
    assert_true(run_until(&after.done, 10000));
    assert_int_equal(c.err, PL_EDB);
    assert_string_equal(c.sqlstate, "22012");
    assert_int_equal(after.err, 0);
    assert_string_equal(after.v[0], "2");
    capture_reset(&after);
    bool closed = false;
    pl_db_free(one, on_closed, &closed);
    assert_true(run_until(&closed, 10000));

    /* a good transaction afterwards on the same pool commits */
    tx = pl_db_tx_new(db);
    const char *g1[2] = {"30", "ok"}, *g2[2] = {"31", "ok"};
    pl_db_tx_add(tx, sql_ins, 2, g1);
    pl_db_tx_add(tx, sql_ins, 2, g2);
    capture_reset(&c);
    assert_int_equal(pl_db_tx_commit(tx, on_capture, &c), 0);
    assert_true(run_until(&c.done, 10000));
    assert_int_equal(c.err, 0);

    query_wait(&c, sql_count, 0, NULL);
    assert_string_equal(c.v[0], "4"); /* 20, 21, 30, 31 */
    query_wait(&c, sql_drop, 0, NULL);
    assert_int_equal(c.err, 0);
    capture_reset(&c);
}

/* A table altered under a cached prepared SELECT *: one failure, then fine. */
static void test_prepared_replan(void **state)
{
    (void)state;
    REQUIRE_PG();
    char create[128], alter[128], sel[128], drop[128];
    snprintf(create, sizeof(create), "CREATE TABLE db_test_plan_%ld (a int)", (long)getpid());
    snprintf(alter, sizeof(alter), "ALTER TABLE db_test_plan_%ld ADD COLUMN b int", (long)getpid());
    snprintf(sel, sizeof(sel), "SELECT * FROM db_test_plan_%ld", (long)getpid());
    snprintf(drop, sizeof(drop), "DROP TABLE IF EXISTS db_test_plan_%ld", (long)getpid());
    bool ready = false;
    struct pl_db_opts o = {.pool_size = 1, .on_ready = on_ready, .ready_arg = &ready};
    struct pl_db *save = db;
    db = pl_db_new(&loop, &o, NULL);
    assert_non_null(db);
    struct capture c = {0};
    query_wait(&c, drop, 0, NULL);
    query_wait(&c, create, 0, NULL);
    assert_int_equal(c.err, 0);
    query_wait(&c, sel, 0, NULL);
    assert_int_equal(c.err, 0);
    assert_int_equal(c.nfields, 1);
    query_wait(&c, alter, 0, NULL);
    assert_int_equal(c.err, 0);
    query_wait(&c, sel, 0, NULL);
    if (c.err) { /* the server may also replan silently; both are fine */
        assert_int_equal(c.err, PL_EDB);
        assert_string_equal(c.sqlstate, "0A000");
        print_message("altered table: one 0A000 (%s), then re-prepared\n", c.message);
        query_wait(&c, sel, 0, NULL);
    }
    assert_int_equal(c.err, 0);
    assert_int_equal(c.nfields, 2);
    query_wait(&c, drop, 0, NULL);
    capture_reset(&c);
    bool closed = false;
    pl_db_free(db, on_closed, &closed);
    assert_true(run_until(&closed, 10000));
    db = save;
}

static void on_no_note(const char *channel, const char *payload, void *arg)
{
    ((struct capture *)arg)->done = true;
}

static void test_invalid_arguments(void **state)
{
    (void)state;
    REQUIRE_PG();
    struct capture c = {0};
    assert_int_equal(pl_db_query(db, NULL, 0, NULL, on_capture, &c), PL_EINVAL);
    assert_int_equal(pl_db_query(db, "SELECT 1", 0, NULL, NULL, NULL), PL_EINVAL);
    assert_int_equal(pl_db_query(db, "SELECT 1", -1, NULL, on_capture, &c), PL_EINVAL);
    assert_int_equal(pl_db_query(db, "SELECT 1", 70000, NULL, on_capture, &c), PL_EINVAL);
    assert_int_equal(pl_db_listen(db, "bad channel", on_no_note, &c), PL_EINVAL);
    assert_int_equal(pl_db_listen(db, "x\"y", on_no_note, &c), PL_EINVAL);
    assert_int_equal(pl_db_listen(db, "", on_no_note, &c), PL_EINVAL);
    struct pl_db_tx *tx = pl_db_tx_new(db);
    assert_int_equal(pl_db_tx_add(tx, NULL, 0, NULL), PL_EINVAL);
    assert_int_equal(pl_db_tx_commit(tx, NULL, NULL), PL_EINVAL); /* consumed */
    pl_db_tx_free(NULL);
    pl_db_free(NULL, NULL, NULL);
    /* an invalid conninfo is refused up front */
    int err = 0;
    struct pl_db_opts o = {.conninfo = "host='unterminated"};
    assert_null(pl_db_new(&loop, &o, &err));
    assert_int_equal(err, PL_EINVAL);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_false(c.done); /* refused calls never call back */
}

/* ------------------------------------------------------------------ */
/* LISTEN / NOTIFY                                                     */

struct notes {
    int listening;
    int got;
    bool done;
    char payload[128];
    char channel[64];
};

static void on_note(const char *channel, const char *payload, void *arg)
{
    struct notes *n = arg;
    if (!payload) {
        n->listening++;
        return;
    }
    n->got++;
    n->done = true;
    pl_strlcpy(n->payload, payload, sizeof(n->payload));
    pl_strlcpy(n->channel, channel, sizeof(n->channel));
}

static struct notes g_notes; /* lives as long as the listener (until pl_db_free) */

static void test_listen_notify(void **state)
{
    (void)state;
    REQUIRE_PG();
    assert_int_equal(pl_db_listen(db, "db_test_chan", on_note, &g_notes), 0);
    assert_true(run_until_count(&g_notes.listening, 1, 10000));

    /* sent from a pool connection, i.e. another session than the LISTEN one */
    const char *p[2] = {"db_test_chan", "payload with 'quotes' \\ and ü"};
    struct capture c = {0};
    query_wait(&c, "SELECT pg_notify($1, $2)", 2, p);
    assert_int_equal(c.err, 0);
    assert_true(run_until(&g_notes.done, 10000));
    assert_int_equal(g_notes.got, 1);
    assert_string_equal(g_notes.channel, "db_test_chan");
    assert_string_equal(g_notes.payload, p[1]);
    /* other channels are not delivered */
    const char *p2[2] = {"db_test_other", "x"};
    query_wait(&c, "SELECT pg_notify($1, $2)", 2, p2);
    g_notes.done = false;
    run_until(&g_notes.done, 300);
    assert_int_equal(g_notes.got, 1);
    capture_reset(&c);
}

/* ------------------------------------------------------------------ */
/* the loop never stalls                                               */

struct lag {
    uv_timer_t timer;
    uint64_t last_ns;
    uint64_t max_ns, sum_ns, n;
};

#define LAG_INTERVAL_MS 5

static void on_lag_timer(uv_timer_t *t)
{
    struct lag *l = pl_container_of(t, struct lag, timer);
    uint64_t now = uv_hrtime();
    if (l->last_ns) {
        uint64_t dt = now - l->last_ns;
        uint64_t lag = dt > LAG_INTERVAL_MS * 1000000ULL ? dt - LAG_INTERVAL_MS * 1000000ULL : 0;
        if (lag > l->max_ns)
            l->max_ns = lag;
        l->sum_ns += lag;
        l->n++;
    }
    l->last_ns = now;
}

struct counter {
    int ok, fail;
    int total;
    bool done;
};

static void on_counted(const struct pl_db_result *r, int err, void *arg)
{
    struct counter *k = arg;
    if (err == 0 && pl_db_result_ntuples(r) == 1)
        k->ok++;
    else
        k->fail++;
    if (k->ok + k->fail == k->total)
        k->done = true;
}

static void test_loop_lag(void **state)
{
    (void)state;
    REQUIRE_PG();
    enum { N = 10000 };
    static struct lag l;
    memset(&l, 0, sizeof(l));
    uv_timer_init(&loop, &l.timer);
    uv_timer_start(&l.timer, on_lag_timer, LAG_INTERVAL_MS, LAG_INTERVAL_MS);
    struct counter k = {.total = N};
    char num[16];
    const char *p[1] = {num};
    uint64_t t0 = uv_hrtime();
    for (int i = 0; i < N; i++) {
        snprintf(num, sizeof(num), "%d", i);
        assert_int_equal(pl_db_query(db, "SELECT $1::int", 1, p, on_counted, &k), 0);
    }
    assert_true(run_until(&k.done, 60000));
    uint64_t t1 = uv_hrtime();
    uv_timer_stop(&l.timer);
    uv_close((uv_handle_t *)&l.timer, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(k.ok, N);
    double secs = (double)(t1 - t0) / 1e9;
    print_message("%d queries in %.3f s (%.0f/s); %dms timer lag over %" PRIu64
                  " ticks: max %.2f ms, avg %.3f ms\n",
                  N, secs, N / secs, LAG_INTERVAL_MS, l.n, (double)l.max_ns / 1e6,
                  l.n ? (double)l.sum_ns / (double)l.n / 1e6 : 0.0);
    assert_true(l.n > 0);
    assert_true(l.max_ns < 1000000000ULL); /* only a truly blocking call fails this */
}

/* ------------------------------------------------------------------ */
/* server restarts / down at start (pg_ctl on $PGTMP_DIR/data)         */

static char pg_ctl_path[256];
static char pg_data[512];
static char pg_log[512];

/* Can we drive the shared cluster? Sets the paths; false with a reason. */
static bool pg_ctl_usable(const char **why)
{
    const char *dir = getenv("PGTMP_DIR");
    struct stat st;
    if (!dir || !*dir) {
        *why = "PGTMP_DIR is not set (start the server with scripts/pgtmp.sh)";
        return false;
    }
    snprintf(pg_data, sizeof(pg_data), "%s/data", dir);
    snprintf(pg_log, sizeof(pg_log), "%s/server.log", dir);
    if (stat(pg_data, &st) != 0) {
        *why = "no data directory in $PGTMP_DIR";
        return false;
    }
    if (geteuid() != 0 && st.st_uid != geteuid()) {
        *why = "not root and not the owner of the cluster";
        return false;
    }
    const char *env = getenv("PG_CTL");
    static const char *const cands[] = {
        "/usr/lib/postgresql/15/bin/pg_ctl", "/usr/lib/postgresql/16/bin/pg_ctl",
        "/usr/lib/postgresql/17/bin/pg_ctl", "/usr/lib/postgresql/14/bin/pg_ctl"};
    pg_ctl_path[0] = '\0';
    if (env && access(env, X_OK) == 0)
        pl_strlcpy(pg_ctl_path, env, sizeof(pg_ctl_path));
    for (size_t i = 0; !pg_ctl_path[0] && i < PL_ARRAY_LEN(cands); i++)
        if (access(cands[i], X_OK) == 0)
            pl_strlcpy(pg_ctl_path, cands[i], sizeof(pg_ctl_path));
    if (!pg_ctl_path[0]) {
        *why = "pg_ctl not found (set PG_CTL)";
        return false;
    }
    if (geteuid() == 0 && access("/usr/sbin/runuser", X_OK) != 0 &&
        access("/sbin/runuser", X_OK) != 0) {
        *why = "running as root without runuser";
        return false;
    }
    return true;
}

struct proc {
    uv_process_t h;
    bool exited;
    int64_t status;
    uint64_t exited_ns;
};

static void on_proc_exit(uv_process_t *h, int64_t status, int sig)
{
    struct proc *p = pl_container_of(h, struct proc, h);
    p->exited = true;
    p->status = sig ? -sig : status;
    p->exited_ns = uv_hrtime();
    uv_close((uv_handle_t *)h, NULL);
}

/* Start `pg_ctl <action> [extra]` asynchronously (as postgres when root). */
static void spawn_pg_ctl(struct proc *p, const char *action, const char *extra1, const char *extra2)
{
    const char *argv[16];
    int n = 0;
    if (geteuid() == 0) {
        argv[n++] = "runuser";
        argv[n++] = "-u";
        argv[n++] = "postgres";
        argv[n++] = "--";
    }
    argv[n++] = pg_ctl_path;
    argv[n++] = "-D";
    argv[n++] = pg_data;
    argv[n++] = "-w";
    argv[n++] = "-t";
    argv[n++] = "60";
    argv[n++] = "-l";
    argv[n++] = pg_log;
    argv[n++] = action;
    if (extra1)
        argv[n++] = extra1;
    if (extra2)
        argv[n++] = extra2;
    argv[n] = NULL;
    memset(p, 0, sizeof(*p));
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_IGNORE}, {.flags = UV_IGNORE}, {.flags = UV_INHERIT_FD, .data.fd = 2}};
    uv_process_options_t po = {
        .exit_cb = on_proc_exit,
        .file = argv[0],
        .args = (char **)argv,
        .stdio_count = 3,
        .stdio = stdio,
    };
    int rc = uv_spawn(&loop, &p->h, &po);
    assert_int_equal(rc, 0);
}

struct stream {
    struct pl_db *db;
    int in_flight;
    bool stop;
    int ok, lost, timeout, other;
    int ok_after_restart;
    const struct proc *restart;
    char other_msg[256];
};

static void stream_next(struct stream *s);

static void on_stream(const struct pl_db_result *r, int err, void *arg)
{
    struct stream *s = arg;
    s->in_flight--;
    if (err == 0) {
        s->ok++;
        if (s->restart && s->restart->exited)
            s->ok_after_restart++;
    } else if (err == PL_EDBLOST) {
        s->lost++;
    } else if (err == PL_ETIMEOUT) {
        s->timeout++;
    } else {
        s->other++;
        snprintf(s->other_msg, sizeof(s->other_msg), "%s: %s", pl_strerror(err),
                 r && pl_db_result_error_message(r) ? pl_db_result_error_message(r) : "");
    }
    if (!s->stop)
        stream_next(s);
}

static void stream_next(struct stream *s)
{
    static const char *const p[1] = {"42"};
    if (pl_db_query(s->db, "SELECT pg_sleep(0.01), $1::int", 1, p, on_stream, s) == 0)
        s->in_flight++;
}

static void test_restart_during_stream(void **state)
{
    (void)state;
    REQUIRE_PG();
    const char *why = NULL;
    if (!pg_ctl_usable(&why)) {
        print_message("restart test skipped: %s\n", why);
        skip();
    }
    bool ready = false;
    struct pl_db_opts o = {
        .pool_size = 2, .queue_deadline_ms = 30000, .on_ready = on_ready, .ready_arg = &ready};
    struct stream s = {0};
    s.db = pl_db_new(&loop, &o, NULL);
    assert_non_null(s.db);
    assert_true(run_until(&ready, 10000));
    for (int i = 0; i < 8; i++)
        stream_next(&s);
    bool never = false;
    run_until(&never, 300);
    assert_true(s.ok > 0);

    static struct proc p;
    s.restart = &p;
    uint64_t t0 = uv_hrtime();
    spawn_pg_ctl(&p, "restart", "-m", "fast");
    assert_true(run_until(&p.exited, 60000));
    assert_int_equal(p.status, 0);
    /* keep streaming until plenty succeeded after the restart */
    int64_t end = pl_monotonic_us() + 30 * PL_US_PER_S;
    while (s.ok_after_restart < 50 && pl_monotonic_us() < end) {
        bool b = false;
        run_until(&b, 50);
    }
    s.stop = true;
    int64_t end2 = pl_monotonic_us() + 10 * PL_US_PER_S;
    while (s.in_flight > 0 && pl_monotonic_us() < end2) {
        bool b = false;
        run_until(&b, 50);
    }
    struct pl_db_stats st;
    pl_db_stats(s.db, &st);
    print_message("restart took %.2f s; ok %d (after restart %d), lost (PL_EDBLOST) %d, "
                  "timeout %d, other %d; reconnects %" PRIu64 "\n",
                  (double)(p.exited_ns - t0) / 1e9, s.ok, s.ok_after_restart, s.lost, s.timeout,
                  s.other, st.reconnects);
    if (s.other)
        print_message("other error: %s\n", s.other_msg);
    assert_int_equal(s.in_flight, 0);
    assert_true(s.ok_after_restart >= 50);
    assert_true(s.lost >= 1); /* queries were on the wire when the server went */
    assert_int_equal(s.other, 0);
    assert_int_equal(s.timeout, 0);
    assert_true(st.reconnects >= 1);

    bool closed = false;
    pl_db_free(s.db, on_closed, &closed);
    assert_true(run_until(&closed, 10000));

    /* the shared pool recovers too, and its LISTEN was re-issued */
    struct capture c = {0};
    query_wait(&c, "SELECT 1", 0, NULL);
    assert_int_equal(c.err, 0);
    if (g_notes.listening > 0) {
        assert_true(run_until_count(&g_notes.listening, 2, 10000));
        int before = g_notes.got;
        const char *p2[2] = {"db_test_chan", "after restart"};
        g_notes.done = false;
        query_wait(&c, "SELECT pg_notify($1, $2)", 2, p2);
        assert_true(run_until(&g_notes.done, 10000));
        assert_int_equal(g_notes.got, before + 1);
        assert_string_equal(g_notes.payload, "after restart");
    }
    capture_reset(&c);
}

struct late_start {
    uv_timer_t timer;
    struct proc proc;
    bool started;
};

static void on_start_timer(uv_timer_t *t)
{
    struct late_start *ls = pl_container_of(t, struct late_start, timer);
    spawn_pg_ctl(&ls->proc, "start", NULL, NULL);
    ls->started = true;
    uv_close((uv_handle_t *)t, NULL);
}

static void test_server_down_at_start(void **state)
{
    (void)state;
    REQUIRE_PG();
    const char *why = NULL;
    if (!pg_ctl_usable(&why)) {
        print_message("down-at-start test skipped: %s\n", why);
        skip();
    }
    static struct proc stop;
    spawn_pg_ctl(&stop, "stop", "-m", "fast");
    assert_true(run_until(&stop.exited, 60000));
    assert_int_equal(stop.status, 0);

    bool ready = false;
    struct pl_db_opts o = {.pool_size = 1,
                           .backoff_min_ms = 100,
                           .backoff_max_ms = 2000,
                           .queue_deadline_ms = 30000,
                           .on_ready = on_ready,
                           .ready_arg = &ready};
    uint64_t t0 = uv_hrtime();
    struct pl_db *d = pl_db_new(&loop, &o, NULL);
    assert_non_null(d);
    struct capture c = {0};
    assert_int_equal(pl_db_query(d, "SELECT 7", 0, NULL, on_capture, &c), 0);

    static struct late_start ls;
    memset(&ls, 0, sizeof(ls));
    uv_timer_init(&loop, &ls.timer);
    uv_timer_start(&ls.timer, on_start_timer, 1000, 0);

    assert_true(run_until(&c.done, 60000));
    uint64_t t1 = uv_hrtime();
    assert_true(run_until(&ls.proc.exited, 60000));
    struct pl_db_stats st;
    pl_db_stats(d, &st);
    print_message("server down at start: query answered after %.2f s, %" PRIu64
                  " failed connect attempts before\n",
                  (double)(t1 - t0) / 1e9, st.connect_failures);
    assert_int_equal(c.err, 0);
    assert_string_equal(c.v[0], "7");
    assert_true(ready);
    assert_true(st.connect_failures >= 2); /* retried with backoff while down */
    assert_true(t1 - t0 >= 900000000ULL);
    assert_int_equal(ls.proc.status, 0);

    bool closed = false;
    pl_db_free(d, on_closed, &closed);
    assert_true(run_until(&closed, 10000));
    capture_reset(&c);

    /* the queue deadline: work waiting for a server that never comes */
    o = (struct pl_db_opts){
        .conninfo = "host=/nonexistent-db-test port=1", .pool_size = 1, .queue_deadline_ms = 300};
    d = pl_db_new(&loop, &o, NULL);
    assert_non_null(d);
    assert_int_equal(pl_db_query(d, "SELECT 1", 0, NULL, on_capture, &c), 0);
    assert_true(run_until(&c.done, 5000));
    assert_int_equal(c.err, PL_ETIMEOUT);
    /* and pl_db_free cancels what is still queued */
    capture_reset(&c);
    assert_int_equal(pl_db_query(d, "SELECT 1", 0, NULL, on_capture, &c), 0);
    closed = false;
    pl_db_free(d, on_closed, &closed);
    assert_false(c.done); /* never inside pl_db_free */
    assert_true(run_until(&closed, 5000));
    assert_int_equal(c.err, PL_ECANCELED);
    capture_reset(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params_roundtrip),
        cmocka_unit_test(test_int64_and_bool),
        cmocka_unit_test(test_timestamps),
        cmocka_unit_test(test_pipelined_1000),
        cmocka_unit_test(test_tx_error_rolls_back),
        cmocka_unit_test(test_prepared_replan),
        cmocka_unit_test(test_invalid_arguments),
        cmocka_unit_test(test_listen_notify),
        cmocka_unit_test(test_loop_lag),
        cmocka_unit_test(test_restart_during_stream),
        cmocka_unit_test(test_server_down_at_start),
    };
    return cmocka_run_group_tests_name("db", tests, group_setup, group_teardown);
}
