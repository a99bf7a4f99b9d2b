/*
 * db_bench — statements per second through lib/db.
 *
 *   db_bench [--mode select|insert] [--clients N] [--depth D] [--seconds S]
 *
 * Connects with the libpq environment (PGHOST, ...). Keeps N*D single-
 * statement units outstanding on a pool of N connections, each connection
 * pipelining up to D of them (D=1: one statement per round trip, like
 * pgbench). Modes: "select" runs SELECT $1::int; "insert" runs
 * INSERT INTO db_bench_t (v) VALUES ($1) (table created if missing).
 * Prints one line: key=value pairs, rate in statements/s.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "db.h"
#include "log.h"
#include "util.h"

struct bench {
    uv_loop_t *loop;
    struct pl_db *db;
    const char *sql;
    unsigned outstanding;
    unsigned in_flight;
    uint64_t done, failed, seq;
    uint64_t t_start, t_end;
    uv_timer_t timer;
    int phase; /* 0 warm-up, 1 measuring, 2 draining */
    unsigned seconds;
};

static void submit(struct bench *b);

static void on_result(const struct pl_db_result *r, int err, void *arg)
{
    struct bench *b = arg;
    b->in_flight--;
    if (err) {
        b->failed++;
        if (b->failed < 5)
            fprintf(stderr, "db_bench: %s: %s\n", pl_strerror(err),
                    r && pl_db_result_error_message(r) ? pl_db_result_error_message(r) : "");
    } else if (b->phase == 1) {
        b->done++;
    }
    if (b->phase < 2)
        submit(b);
    else if (b->in_flight == 0)
        pl_db_free(b->db, NULL, NULL);
}

static void submit(struct bench *b)
{
    char num[24];
    const char *p[1] = {num};
    snprintf(num, sizeof(num), "%" PRIu64, b->seq++ % 100000);
    if (pl_db_query(b->db, b->sql, 1, p, on_result, b) == 0)
        b->in_flight++;
}

static void on_timer(uv_timer_t *t)
{
    struct bench *b = pl_container_of(t, struct bench, timer);
    if (b->phase == 0) {
        b->phase = 1;
        b->t_start = uv_hrtime();
        uv_timer_start(t, on_timer, (uint64_t)b->seconds * PL_MS_PER_S, 0);
    } else {
        b->phase = 2;
        b->t_end = uv_hrtime();
        uv_close((uv_handle_t *)t, NULL);
    }
}

struct setup {
    bool done;
    int err;
};

static void on_setup(const struct pl_db_result *r, int err, void *arg)
{
    struct setup *s = arg;
    s->done = true;
    s->err = err;
    if (err)
        fprintf(stderr, "db_bench: setup: %s\n",
                r && pl_db_result_error_message(r) ? pl_db_result_error_message(r)
                                                   : pl_strerror(err));
}

static unsigned arg_uint(const char *s, const char *name)
{
    uint64_t v;
    if (pl_parse_u64(s, &v) < 0 || v == 0 || v > 100000) {
        fprintf(stderr, "db_bench: bad %s: %s\n", name, s);
        exit(2);
    }
    return (unsigned)v;
}

int main(int argc, char **argv)
{
    const char *mode = "select";
    unsigned clients = 4, depth = 1, seconds = 5;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "usage: db_bench [--mode select|insert] [--clients N] [--depth D] "
                            "[--seconds S]\n");
            return 2;
        }
        if (strcmp(a, "--mode") == 0)
            mode = v;
        else if (strcmp(a, "--clients") == 0)
            clients = arg_uint(v, a);
        else if (strcmp(a, "--depth") == 0)
            depth = arg_uint(v, a);
        else if (strcmp(a, "--seconds") == 0)
            seconds = arg_uint(v, a);
        else {
            fprintf(stderr, "db_bench: unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    pl_log_setup(PL_LOG_WARNING, PL_LOG_TEXT);

    struct bench b = {.loop = uv_default_loop(), .seconds = seconds};
    if (strcmp(mode, "select") == 0) {
        b.sql = "SELECT $1::int";
    } else if (strcmp(mode, "insert") == 0) {
        b.sql = "INSERT INTO db_bench_t (v) VALUES ($1)";
    } else {
        fprintf(stderr, "db_bench: unknown mode %s\n", mode);
        return 2;
    }
    struct pl_db_opts o = {.pool_size = clients, .pipeline_depth = depth};
    int err = 0;
    b.db = pl_db_new(b.loop, &o, &err);
    if (!b.db) {
        fprintf(stderr, "db_bench: %s\n", pl_strerror(err));
        return 1;
    }
    struct setup s = {0};
    pl_db_query(b.db, "CREATE TABLE IF NOT EXISTS db_bench_t (id bigserial PRIMARY KEY, v int)", 0,
                NULL, on_setup, &s);
    while (!s.done)
        uv_run(b.loop, UV_RUN_ONCE);
    if (s.err)
        return 1;

    /* one second of warm-up (connections, prepared statements), then measure */
    uv_timer_init(b.loop, &b.timer);
    uv_timer_start(&b.timer, on_timer, 1000, 0);
    b.outstanding = clients * depth;
    for (unsigned i = 0; i < b.outstanding; i++)
        submit(&b);
    uv_run(b.loop, UV_RUN_DEFAULT);

    double secs = (double)(b.t_end - b.t_start) / 1e9;
    printf("db_bench mode=%s clients=%u depth=%u seconds=%.2f statements=%" PRIu64
           " failed=%" PRIu64 " rate=%.0f\n",
           mode, clients, depth, secs, b.done, b.failed, secs > 0 ? (double)b.done / secs : 0.0);
    uv_loop_close(b.loop);
    return b.failed ? 1 : 0;
}
