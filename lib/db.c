/*
 * db — see db.h. libpq driven by libuv.
 *
 * Shape: a pool of `struct conn`, each an explicit state machine
 * (DOWN → CONNECTING → READY → DOWN ...). A READY connection is in
 * non-blocking pipeline mode; what it has sent and not yet seen answered is
 * a FIFO of `struct op` (one per PQsend... or PQpipelineSync call), and the units
 * those ops belong to are a FIFO of in-flight units. Results are matched to
 * ops strictly in order: each statement yields one PGresult then NULL, each
 * Sync yields PGRES_PIPELINE_SYNC (no NULL after it); after an error the
 * rest of the Sync segment comes back as PGRES_PIPELINE_ABORTED.
 *
 * Sending never happens inside the caller's pl_db_* call: submissions are
 * queued and a uv_prepare handle dispatches them just before the loop polls,
 * so a connection failure during a send can never run a callback inside
 * pl_db_query(), and everything submitted in one loop iteration goes out in
 * one write.
 *
 * Handles: each conn owns one uv_timer_t (backoff / connect timeout) and at
 * most one heap-allocated uv_poll_t wrapper (replaced whenever libpq's socket
 * may have changed); the db owns a uv_prepare_t and the queue deadline timer.
 * Memory behind a handle is released only in its close callback; the db
 * itself once every handle is closed.
 */
#include "db.h"
#include "log.h"
#include "util.h"

#include <libpq-fe.h>

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PCACHE_BUCKETS  64
#define PCACHE_MAX      256 /* prepared statements per connection */
#define MAX_POOL_SIZE   256
#define MAX_PIPELINE    1024
#define MAX_CHANNEL_LEN 63
#define SESSION_OPTIONS "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres"

/* ------------------------------------------------------------------ */
/* types                                                               */

enum unit_kind {
    UNIT_QUERY, /* one statement + Sync */
    UNIT_TX,    /* BEGIN, statements, COMMIT, Sync */
    UNIT_BATCH, /* (statement + Sync) * n */
};

struct pl_db_result {
    PGresult *pg; /* owned by the unit; NULL if never executed */
    const struct unit *unit;
    int index; /* statement index; -1 for the unit's view */
};

struct stmt {
    char *sql;     /* for a LISTEN unit: the channel name */
    char **params; /* nparams entries; shares the allocation with sql */
    int nparams;
    struct pl_db_result r;
};

struct unit {
    struct unit *next; /* in the db queue, a conn's private queue or in-flight list */
    struct pl_db *db;
    enum unit_kind kind;
    bool internal; /* ours (ROLLBACK, LISTEN): no stats, never in the db queue */
    bool listen;   /* statements are LISTEN channels */
    struct stmt *stmts;
    int n, cap;
    pl_db_cb cb;
    void *arg;
    int64_t deadline_us;
    int err_index;    /* first failing statement, -1 BEGIN, n COMMIT; or -1 */
    PGresult *err_pg; /* borrowed from stmts[] or ctl_pg */
    PGresult *ctl_pg; /* BEGIN/COMMIT error, owned */
    struct pl_db_result top;
};

struct pl_db_tx {
    struct unit u;
};

enum op_kind { OP_PREPARE, OP_EXEC, OP_BEGIN, OP_COMMIT, OP_SYNC };

struct op {
    enum op_kind kind;
    bool last; /* OP_SYNC: the unit's final Sync */
    bool got;  /* a non-NULL result was seen */
    int stmt;  /* OP_PREPARE / OP_EXEC */
    struct unit *unit;
    struct pentry *pe; /* OP_PREPARE */
    unsigned pseq;     /* OP_EXEC by name: the entry's sequence number, else 0 */
};

enum pentry_state { PE_PENDING, PE_READY };

/* A prepared statement of one connection, keyed by its SQL text. */
struct pentry {
    struct pentry *next;
    char *sql;
    char name[24];
    unsigned seq;
    enum pentry_state state;
    uint64_t segment; /* PENDING: the Sync segment its Parse was sent in */
};

enum conn_state { C_DOWN, C_CONNECTING, C_READY };

struct poll_h {
    uv_poll_t h;
    struct conn *conn; /* NULL once detached (closing) */
    struct pl_db *db;
};

struct conn {
    struct pl_db *db;
    int id;
    bool listen;
    enum conn_state state;
    PGconn *pg;
    struct poll_h *poll;
    int poll_events;
    uv_timer_t timer;
    PostgresPollingStatusType connect_poll;
    unsigned failures; /* consecutive failed attempts / losses, for backoff */
    bool ever_up;

    struct op *ops;
    size_t ops_head, ops_len, ops_cap;

    struct unit *fl_head, *fl_tail; /* in flight */
    unsigned n_inflight;
    bool barrier;                   /* a transaction is in flight: send nothing behind it */
    struct unit *pv_head, *pv_tail; /* private (internal) units, sent first */

    struct pentry *pcache[PCACHE_BUCKETS];
    unsigned pcount, pseq;
    uint64_t segment;
    bool dirty; /* something was written since the last flush */
};

struct listener {
    struct listener *next;
    char *channel;
    pl_db_notify_cb cb;
    void *arg;
};

struct pl_db {
    uv_loop_t *loop;
    char **kw, **val; /* connection parameters, NULL-terminated */
    unsigned pool_size, depth, connect_timeout_ms, deadline_ms, backoff_min_ms, backoff_max_ms;
    bool no_prepare;
    pl_db_ready_cb on_ready;
    void *ready_arg;

    struct conn **conns;
    struct conn *lconn;
    struct listener *listeners;

    struct unit *q_head, *q_tail;
    unsigned q_len;
    unsigned n_inflight;
    unsigned conns_up;

    uv_prepare_t prepare;
    bool prepare_active;
    uv_timer_t deadline_timer;
    int64_t deadline_armed_us;

    bool connected;
    bool freeing;
    bool torn_down;
    pl_db_closed_cb closed_cb;
    void *closed_arg;
    int handles_open;

    int64_t start_us;
    int64_t outage_since_us; /* 0: no outage */
    bool fail_logged;        /* a connect failure of this outage was logged */
    uint64_t rng;

    struct pl_db_stats st;
};

/* ------------------------------------------------------------------ */
/* helpers                                                             */

static uint64_t rng_next(struct pl_db *db)
{
    /* xorshift64*: jitter only, not security */
    uint64_t x = db->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    db->rng = x;
    return x * 2685821657736338717ULL;
}

/* PQerrorMessage without the trailing newline(s), into buf. */
/* libpq's multi-line message as one line (whitespace runs → one space). */
static const char *one_line(const char *msg, char *buf, size_t n)
{
    size_t o = 0;
    bool space = false;
    for (const char *p = msg; *p && o + 1 < n; p++) {
        if (isspace((unsigned char)*p)) {
            space = o > 0;
            continue;
        }
        if (space && o + 2 < n)
            buf[o++] = ' ';
        space = false;
        buf[o++] = *p;
    }
    buf[o] = '\0';
    if (!*buf)
        pl_strlcpy(buf, "unknown error", n);
    return buf;
}

/* PQerrorMessage as one line, into buf. */
static const char *conn_errmsg(PGconn *pg, char *buf, size_t n)
{
    return one_line(pg ? PQerrorMessage(pg) : "out of memory", buf, n);
}

static void db_kick(struct pl_db *db);
static void conn_lost(struct conn *c, const char *why);
static void conn_schedule_reconnect(struct conn *c);
static void db_maybe_finish(struct pl_db *db);

/* ------------------------------------------------------------------ */
/* units                                                               */

static void stmt_set(struct stmt *s, const char *sql, int nparams, const char *const *params)
{
    size_t sql_len = strlen(sql) + 1;
    size_t total = sql_len + (size_t)nparams * sizeof(char *);
    for (int i = 0; i < nparams; i++)
        if (params[i])
            total += strlen(params[i]) + 1;
    char *block = pl_xmalloc(total);
    char **pv = (char **)(void *)block;
    char *p = block + (size_t)nparams * sizeof(char *);
    s->params = nparams ? pv : NULL;
    s->nparams = nparams;
    memcpy(p, sql, sql_len);
    s->sql = p;
    p += sql_len;
    for (int i = 0; i < nparams; i++) {
        if (!params[i]) {
            pv[i] = NULL;
            continue;
        }
        size_t l = strlen(params[i]) + 1;
        memcpy(p, params[i], l);
        pv[i] = p;
        p += l;
    }
    s->r.pg = NULL;
    s->r.index = -1;
    s->r.unit = NULL;
}

static void stmt_release(struct stmt *s)
{
    /* the block starts at params when there are any, else at sql */
    free(s->params ? (void *)s->params : (void *)s->sql);
    if (s->r.pg)
        PQclear(s->r.pg);
}

static struct unit *unit_new(struct pl_db *db, enum unit_kind kind)
{
    struct unit *u = pl_xcalloc(1, sizeof(struct pl_db_tx));
    u->db = db;
    u->kind = kind;
    u->err_index = -1;
    return u;
}

static int unit_add(struct unit *u, const char *sql, int nparams, const char *const *params)
{
    if (!sql || nparams < 0 || nparams > PL_DB_MAX_PARAMS || (nparams > 0 && !params))
        return PL_EINVAL;
    if (u->n == u->cap) {
        u->cap = u->cap ? u->cap * 2 : 4;
        u->stmts = pl_xrealloc(u->stmts, (size_t)u->cap * sizeof(*u->stmts));
    }
    stmt_set(&u->stmts[u->n], sql, nparams, params);
    return u->n++;
}

static void unit_free(struct unit *u)
{
    if (!u)
        return;
    for (int i = 0; i < u->n; i++)
        stmt_release(&u->stmts[i]);
    free(u->stmts);
    if (u->ctl_pg)
        PQclear(u->ctl_pg);
    free(u);
}

/* Deliver the unit's outcome and free it. */
static void unit_finish(struct unit *u, int err)
{
    struct pl_db *db = u->db;
    const struct pl_db_result *r = NULL;
    if (err == 0 && u->err_pg)
        err = PL_EDB;
    if (err == 0 || err == PL_EDB) {
        for (int i = 0; i < u->n; i++) {
            u->stmts[i].r.unit = u;
            u->stmts[i].r.index = i;
        }
        u->top.unit = u;
        u->top.index = -1;
        u->top.pg = u->n ? u->stmts[0].r.pg : NULL;
        r = &u->top;
    }
    if (!u->internal) {
        db->st.units++;
        if (err == PL_EDB)
            db->st.errors++;
        else if (err == PL_EDBLOST)
            db->st.lost++;
        else if (err == PL_ETIMEOUT)
            db->st.timeouts++;
    }
    u->cb(r, err, u->arg);
    unit_free(u);
}

static void unit_note_error(struct unit *u, int index, PGresult *pg)
{
    if (u->err_pg)
        return; /* the first error is the one that matters */
    u->err_index = index;
    u->err_pg = pg;
}

/* singly linked FIFO helpers */
static void fifo_push(struct unit **head, struct unit **tail, struct unit *u)
{
    u->next = NULL;
    if (*tail)
        (*tail)->next = u;
    else
        *head = u;
    *tail = u;
}

static struct unit *fifo_pop(struct unit **head, struct unit **tail)
{
    struct unit *u = *head;
    if (u) {
        *head = u->next;
        if (!*head)
            *tail = NULL;
        u->next = NULL;
    }
    return u;
}

/* ------------------------------------------------------------------ */
/* prepared statement cache (per connection)                           */

static unsigned pc_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h % PCACHE_BUCKETS;
}

static struct pentry *pc_get(struct conn *c, const char *sql)
{
    for (struct pentry *e = c->pcache[pc_hash(sql)]; e; e = e->next)
        if (strcmp(e->sql, sql) == 0)
            return e;
    return NULL;
}

static struct pentry *pc_add(struct conn *c, const char *sql)
{
    struct pentry *e = pl_xcalloc(1, sizeof(*e));
    unsigned b = pc_hash(sql);
    e->sql = pl_xstrdup(sql);
    e->seq = ++c->pseq;
    snprintf(e->name, sizeof(e->name), "pl_%u", e->seq);
    e->next = c->pcache[b];
    c->pcache[b] = e;
    c->pcount++;
    return e;
}

static void pc_remove(struct conn *c, struct pentry *e)
{
    for (struct pentry **pp = &c->pcache[pc_hash(e->sql)]; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            free(e->sql);
            free(e);
            c->pcount--;
            return;
        }
    }
}

static void pc_clear(struct conn *c)
{
    for (unsigned b = 0; b < PCACHE_BUCKETS; b++) {
        struct pentry *e = c->pcache[b];
        while (e) {
            struct pentry *next = e->next;
            free(e->sql);
            free(e);
            e = next;
        }
        c->pcache[b] = NULL;
    }
    c->pcount = 0;
}

/* ------------------------------------------------------------------ */
/* op FIFO (ring buffer)                                               */

static struct op *ops_push(struct conn *c, enum op_kind kind, struct unit *u, int stmt)
{
    if (c->ops_len == c->ops_cap) {
        size_t ncap = c->ops_cap ? c->ops_cap * 2 : 64;
        struct op *n = pl_xmalloc(ncap * sizeof(*n));
        for (size_t i = 0; i < c->ops_len; i++)
            n[i] = c->ops[(c->ops_head + i) % c->ops_cap];
        free(c->ops);
        c->ops = n;
        c->ops_cap = ncap;
        c->ops_head = 0;
    }
    struct op *op = &c->ops[(c->ops_head + c->ops_len) % c->ops_cap];
    c->ops_len++;
    *op = (struct op){.kind = kind, .unit = u, .stmt = stmt};
    return op;
}

static struct op *ops_front(struct conn *c)
{
    return c->ops_len ? &c->ops[c->ops_head] : NULL;
}

static void ops_pop(struct conn *c)
{
    c->ops_head = (c->ops_head + 1) % c->ops_cap;
    c->ops_len--;
}

/* ------------------------------------------------------------------ */
/* poll handles                                                        */

static void on_handle_closed(uv_handle_t *h)
{
    struct pl_db *db = h->data;
    db->handles_open--;
    db_maybe_finish(db);
}

static void on_poll_closed(uv_handle_t *h)
{
    struct poll_h *p = pl_container_of((uv_poll_t *)h, struct poll_h, h);
    struct pl_db *db = p->db;
    free(p);
    db->handles_open--;
    db_maybe_finish(db);
}

static void poll_close(struct conn *c)
{
    if (!c->poll)
        return;
    c->poll->conn = NULL;
    uv_close((uv_handle_t *)&c->poll->h, on_poll_closed);
    c->poll = NULL;
    c->poll_events = 0;
}

static void on_poll(uv_poll_t *h, int status, int events);

/* Watch libpq's current socket with a fresh uv_poll_t. */
static int poll_open(struct conn *c, int events)
{
    int fd = PQsocket(c->pg);
    if (fd < 0)
        return -EBADF;
    struct poll_h *p = pl_xcalloc(1, sizeof(*p));
    int rc = uv_poll_init(c->db->loop, &p->h, fd);
    if (rc < 0) {
        free(p); /* never registered with the loop */
        return rc;
    }
    p->conn = c;
    p->db = c->db;
    c->db->handles_open++;
    c->poll = p;
    rc = uv_poll_start(&p->h, events, on_poll);
    if (rc < 0) {
        poll_close(c);
        return rc;
    }
    c->poll_events = events;
    return 0;
}

static int poll_set(struct conn *c, int events)
{
    if (!c->poll)
        return poll_open(c, events);
    if (c->poll_events == events)
        return 0;
    int rc = uv_poll_start(&c->poll->h, events, on_poll);
    if (rc == 0)
        c->poll_events = events;
    return rc;
}

/* ------------------------------------------------------------------ */
/* outage bookkeeping and logging                                      */

static void note_up(struct conn *c)
{
    struct pl_db *db = c->db;
    int64_t now = pl_monotonic_us();
    if (c->failures > 0 || c->ever_up)
        db->st.reconnects++;
    if (db->outage_since_us) {
        pl_log_notice("db", "database reconnected after %" PRId64 " ms",
                      (int64_t)((now - db->outage_since_us) / PL_US_PER_MS));
        db->outage_since_us = 0;
    } else if (!db->connected) {
        if (db->fail_logged)
            pl_log_notice("db", "database connected after %" PRId64 " ms",
                          (int64_t)((now - db->start_us) / PL_US_PER_MS));
        else
            pl_log_info("db", "database connected");
    }
    db->fail_logged = false;
    c->failures = 0;
    c->ever_up = true;
}

static void note_lost(struct conn *c, const char *why)
{
    struct pl_db *db = c->db;
    if (!db->outage_since_us && !db->freeing) {
        db->outage_since_us = pl_monotonic_us();
        pl_log_warn("db",
                    "database connection lost (%s); work in flight fails with outcome unknown, "
                    "reconnecting",
                    why);
        db->fail_logged = true;
    } else {
        pl_log_debug("db", "connection %d lost: %s", c->id, why);
    }
}

static void note_connect_failed(struct conn *c, const char *why)
{
    struct pl_db *db = c->db;
    db->st.connect_failures++;
    if (!db->fail_logged && !db->freeing) {
        pl_log_warn("db", "cannot connect to database (%s); retrying with backoff", why);
        db->fail_logged = true;
    } else {
        pl_log_debug("db", "connection %d: connect attempt failed: %s", c->id, why);
    }
}

/* ------------------------------------------------------------------ */
/* connecting                                                          */

static void on_notice(void *arg, const PGresult *res)
{
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (sev && strcmp(sev, "WARNING") == 0)
        pl_log_warn("db", "server warning: %s", msg ? msg : "");
    else
        pl_log_debug("db", "server %s: %s", sev ? sev : "notice", msg ? msg : "");
}

/* Drop the libpq connection; the uv_poll goes first, since PQfinish closes
 * the socket and epoll must not be left watching a closed descriptor. */
static void conn_drop_pg(struct conn *c)
{
    poll_close(c);
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    c->state = C_DOWN;
}

static void conn_connect_failed(struct conn *c, const char *why)
{
    uv_timer_stop(&c->timer);
    note_connect_failed(c, why);
    conn_drop_pg(c);
    conn_schedule_reconnect(c);
}

static void on_conn_timer(uv_timer_t *t);

static void conn_start(struct conn *c)
{
    struct pl_db *db = c->db;
    char buf[512];
    c->pg = PQconnectStartParams((const char *const *)db->kw, (const char *const *)db->val, 0);
    if (!c->pg || PQstatus(c->pg) == CONNECTION_BAD) {
        conn_connect_failed(c, conn_errmsg(c->pg, buf, sizeof(buf)));
        return;
    }
    PQsetNoticeReceiver(c->pg, on_notice, NULL);
    c->state = C_CONNECTING;
    /* libpq: before the first PQconnectPoll, act as if it said WRITING */
    c->connect_poll = PGRES_POLLING_WRITING;
    int rc = poll_open(c, UV_WRITABLE);
    if (rc < 0) {
        snprintf(buf, sizeof(buf), "cannot watch socket: %s", uv_strerror(rc));
        conn_connect_failed(c, buf);
        return;
    }
    uv_timer_start(&c->timer, on_conn_timer, db->connect_timeout_ms, 0);
}

static void conn_send_listens(struct conn *c);

static void conn_connected(struct conn *c)
{
    struct pl_db *db = c->db;
    char buf[512];
    uv_timer_stop(&c->timer);
    if (PQsetnonblocking(c->pg, 1) != 0 || PQenterPipelineMode(c->pg) != 1) {
        conn_connect_failed(c, conn_errmsg(c->pg, buf, sizeof(buf)));
        return;
    }
    /* a fresh poll handle: the socket is final now */
    poll_close(c);
    int rc = poll_open(c, UV_READABLE);
    if (rc < 0) {
        snprintf(buf, sizeof(buf), "cannot watch socket: %s", uv_strerror(rc));
        conn_connect_failed(c, buf);
        return;
    }
    c->state = C_READY;
    c->segment = 0;
    note_up(c);
    if (c->listen) {
        conn_send_listens(c);
    } else {
        db->conns_up++;
        if (!db->connected) {
            db->connected = true;
            if (db->on_ready && !db->freeing)
                db->on_ready(db, db->ready_arg);
        }
    }
    db_kick(db);
}

static void conn_connect_step(struct conn *c)
{
    char buf[512];
    c->connect_poll = PQconnectPoll(c->pg);
    switch (c->connect_poll) {
    case PGRES_POLLING_OK:
        conn_connected(c);
        return;
    case PGRES_POLLING_FAILED:
        conn_connect_failed(c, conn_errmsg(c->pg, buf, sizeof(buf)));
        return;
    default:
        break;
    }
    /*
     * libpq may have closed its socket and opened another (next host or
     * address, SSL/GSS fallback) — very likely under the same fd number,
     * which epoll would no longer report. So during the handshake every
     * step gets a fresh uv_poll_t on PQsocket(); it is a handful of steps.
     */
    poll_close(c);
    int events = c->connect_poll == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE;
    int rc = poll_open(c, events);
    if (rc < 0) {
        snprintf(buf, sizeof(buf), "cannot watch socket: %s", uv_strerror(rc));
        conn_connect_failed(c, buf);
    }
}

static void on_conn_timer(uv_timer_t *t)
{
    struct conn *c = pl_container_of(t, struct conn, timer);
    char buf[64];
    if (c->db->freeing)
        return;
    if (c->state == C_CONNECTING) {
        snprintf(buf, sizeof(buf), "timeout after %u ms", c->db->connect_timeout_ms);
        conn_connect_failed(c, buf);
    } else if (c->state == C_DOWN) {
        conn_start(c);
    }
}

static void conn_schedule_reconnect(struct conn *c)
{
    struct pl_db *db = c->db;
    if (db->freeing)
        return;
    unsigned shift = c->failures < 16 ? c->failures : 16;
    uint64_t delay = (uint64_t)db->backoff_min_ms << shift;
    if (delay > db->backoff_max_ms)
        delay = db->backoff_max_ms;
    /* "equal jitter": half fixed, half random, so a pool does not reconnect in lockstep */
    uint64_t half = delay / 2;
    delay = half + rng_next(db) % (delay - half + 1);
    c->failures++;
    uv_timer_start(&c->timer, on_conn_timer, delay, 0);
}

/* ------------------------------------------------------------------ */
/* sending                                                             */

static bool conn_can_take(const struct conn *c)
{
    return c->state == C_READY && !c->barrier && c->n_inflight < c->db->depth;
}

static bool send_stmt(struct conn *c, struct unit *u, int i)
{
    struct stmt *s = &u->stmts[i];
    const char *const *pv = (const char *const *)s->params;
    const char *name = NULL;
    unsigned pseq = 0;
    int ok;

    if (u->listen) {
        char *id = PQescapeIdentifier(c->pg, s->sql, strlen(s->sql));
        if (!id)
            return false;
        char *sql = pl_xasprintf("LISTEN %s", id);
        PQfreemem(id);
        ok = PQsendQueryParams(c->pg, sql, 0, NULL, NULL, NULL, NULL, 0);
        free(sql);
        if (!ok)
            return false;
        ops_push(c, OP_EXEC, u, i);
        return true;
    }

    if (!c->db->no_prepare) {
        struct pentry *e = pc_get(c, s->sql);
        if (!e && c->pcount < PCACHE_MAX) {
            e = pc_add(c, s->sql);
            e->state = PE_PENDING;
            e->segment = c->segment;
            if (!PQsendPrepare(c->pg, e->name, s->sql, 0, NULL)) {
                pc_remove(c, e);
                return false;
            }
            ops_push(c, OP_PREPARE, u, i)->pe = e;
        }
        /*
         * A Parse still in flight can only be relied on inside its own Sync
         * segment: if anything before it there fails, it is skipped, and a
         * later segment would find no such statement.
         */
        if (e && (e->state == PE_READY || e->segment == c->segment)) {
            name = e->name;
            pseq = e->seq;
        }
    }
    if (name)
        ok = PQsendQueryPrepared(c->pg, name, s->nparams, pv, NULL, NULL, 0);
    else
        ok = PQsendQueryParams(c->pg, s->sql, s->nparams, NULL, pv, NULL, NULL, 0);
    if (!ok)
        return false;
    ops_push(c, OP_EXEC, u, i)->pseq = pseq;
    if (!u->internal)
        c->db->st.statements++;
    return true;
}

static bool send_sync(struct conn *c, struct unit *u, bool last)
{
    if (!PQpipelineSync(c->pg))
        return false;
    ops_push(c, OP_SYNC, u, -1)->last = last;
    c->segment++;
    return true;
}

/* Put u on c and write it into libpq's buffer. false: c was lost (and u
 * failed with it). */
static bool conn_send_unit(struct conn *c, struct unit *u)
{
    char buf[512];
    bool ok = true;
    fifo_push(&c->fl_head, &c->fl_tail, u);
    c->n_inflight++;
    if (!u->internal)
        c->db->n_inflight++;
    c->dirty = true;

    switch (u->kind) {
    case UNIT_QUERY:
        ok = send_stmt(c, u, 0) && send_sync(c, u, true);
        break;
    case UNIT_TX:
        c->barrier = true;
        ok = PQsendQueryParams(c->pg, "BEGIN", 0, NULL, NULL, NULL, NULL, 0);
        if (ok)
            ops_push(c, OP_BEGIN, u, -1);
        for (int i = 0; ok && i < u->n; i++)
            ok = send_stmt(c, u, i);
        if (ok)
            ok = PQsendQueryParams(c->pg, "COMMIT", 0, NULL, NULL, NULL, NULL, 0);
        if (ok)
            ops_push(c, OP_COMMIT, u, u->n);
        ok = ok && send_sync(c, u, true);
        break;
    case UNIT_BATCH:
        for (int i = 0; ok && i < u->n; i++)
            ok = send_stmt(c, u, i) && send_sync(c, u, i == u->n - 1);
        if (ok && u->n == 0)
            ok = send_sync(c, u, true);
        break;
    }
    if (!ok) {
        conn_lost(c, conn_errmsg(c->pg, buf, sizeof(buf)));
        return false;
    }
    return true;
}

/* Write what libpq holds; watch for writability only while it has more. */
static bool conn_flush(struct conn *c)
{
    char buf[512];
    int r = PQflush(c->pg);
    if (r < 0) {
        conn_lost(c, conn_errmsg(c->pg, buf, sizeof(buf)));
        return false;
    }
    int rc = poll_set(c, UV_READABLE | (r == 1 ? UV_WRITABLE : 0));
    if (rc < 0) {
        snprintf(buf, sizeof(buf), "cannot watch socket: %s", uv_strerror(rc));
        conn_lost(c, buf);
        return false;
    }
    return true;
}

static void on_internal_done(const struct pl_db_result *r, int err, void *arg)
{
    struct pl_db *db = arg;
    if (err == PL_EDB)
        pl_log_warn("db", "internal statement failed: %s", pl_db_result_error_message(r));
    (void)db;
}

static void on_listen_done(const struct pl_db_result *r, int err, void *arg)
{
    struct pl_db *db = arg;
    if (err != 0) {
        if (err == PL_EDB)
            pl_log_warn("db", "LISTEN failed: %s", pl_db_result_error_message(r));
        return; /* lost: re-issued on reconnect */
    }
    int n = pl_db_result_nstmts(r);
    for (int i = 0; i < n; i++) {
        const char *ch = r->unit->stmts[i].sql;
        for (struct listener *l = db->listeners; l; l = l->next)
            if (strcmp(l->channel, ch) == 0 && !db->freeing)
                l->cb(l->channel, NULL, l->arg);
    }
}

static void conn_push_private(struct conn *c, struct unit *u)
{
    fifo_push(&c->pv_head, &c->pv_tail, u);
    db_kick(c->db);
}

static void conn_send_listens(struct conn *c)
{
    struct pl_db *db = c->db;
    if (!db->listeners)
        return;
    struct unit *u = unit_new(db, UNIT_BATCH);
    u->internal = true;
    u->listen = true;
    u->cb = on_listen_done;
    u->arg = db;
    for (struct listener *l = db->listeners; l; l = l->next) {
        bool dup = false;
        for (int i = 0; i < u->n; i++)
            dup = dup || strcmp(u->stmts[i].sql, l->channel) == 0;
        if (!dup)
            unit_add(u, l->channel, 0, NULL);
    }
    conn_push_private(c, u);
}

static void arm_deadline(struct pl_db *db);

static void db_dispatch(struct pl_db *db)
{
    struct conn *all[MAX_POOL_SIZE + 1];
    unsigned nall = 0;
    for (unsigned i = 0; i < db->pool_size; i++)
        all[nall++] = db->conns[i];
    if (db->lconn)
        all[nall++] = db->lconn;

    /* internal units first: a ROLLBACK must precede anything else */
    for (unsigned i = 0; i < nall; i++) {
        struct conn *c = all[i];
        while (c->pv_head && conn_can_take(c)) {
            struct unit *u = fifo_pop(&c->pv_head, &c->pv_tail);
            if (!conn_send_unit(c, u))
                break;
        }
    }
    while (db->q_head) {
        struct conn *best = NULL;
        for (unsigned i = 0; i < db->pool_size; i++) {
            struct conn *c = db->conns[i];
            if (conn_can_take(c) && !c->pv_head && (!best || c->n_inflight < best->n_inflight))
                best = c;
        }
        if (!best)
            break;
        struct unit *u = fifo_pop(&db->q_head, &db->q_tail);
        db->q_len--;
        conn_send_unit(best, u);
    }
    for (unsigned i = 0; i < nall; i++) {
        struct conn *c = all[i];
        if (c->state == C_READY && c->dirty) {
            c->dirty = false;
            db->st.round_trips++;
            conn_flush(c);
        }
    }
    arm_deadline(db);
}

/* ------------------------------------------------------------------ */
/* receiving                                                           */

/* An error that means the session is gone rather than the statement refused. */
static bool is_connection_error(const PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (!state)
        return true; /* generated by libpq: "server closed the connection..." */
    return strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0;
}

/* The unit at the head of c's in-flight list got its final Sync. */
static void conn_unit_done(struct conn *c, struct unit *u)
{
    struct pl_db *db = c->db;
    struct unit *head = fifo_pop(&c->fl_head, &c->fl_tail);
    (void)head; /* == u: results arrive in the order units were sent */
    c->n_inflight--;
    if (!u->internal)
        db->n_inflight--;
    if (u->kind == UNIT_TX)
        c->barrier = false;
    /*
     * An explicit transaction that failed inside a pipeline leaves the
     * session in an aborted transaction after the Sync (so would a stray
     * BEGIN sent as a query). Nothing else is in flight behind a
     * transaction, so roll back before anything else goes out.
     */
    if (c->n_inflight == 0) {
        PGTransactionStatusType ts = PQtransactionStatus(c->pg);
        if (ts == PQTRANS_INERROR || ts == PQTRANS_INTRANS) {
            struct unit *rb = unit_new(db, UNIT_QUERY);
            rb->internal = true;
            rb->cb = on_internal_done;
            rb->arg = db;
            unit_add(rb, "ROLLBACK", 0, NULL);
            /* to the front of the private queue */
            rb->next = c->pv_head;
            c->pv_head = rb;
            if (!c->pv_tail)
                c->pv_tail = rb;
        }
    }
    unit_finish(u, 0);
    db_kick(db);
}

static void handle_result(struct conn *c, struct op *op, PGresult *res)
{
    struct unit *u = op->unit;
    ExecStatusType st = PQresultStatus(res);
    bool failed = st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE;

    switch (op->kind) {
    case OP_PREPARE:
        if (st == PGRES_COMMAND_OK) {
            op->pe->state = PE_READY;
            PQclear(res);
            break;
        }
        pc_remove(c, op->pe);
        op->pe = NULL;
        if (failed && !u->stmts[op->stmt].r.pg) {
            /* the statement's own error; its Execute comes back ABORTED */
            u->stmts[op->stmt].r.pg = res;
            unit_note_error(u, op->stmt, res);
        } else {
            PQclear(res);
        }
        break;
    case OP_EXEC: {
        struct stmt *s = &u->stmts[op->stmt];
        if (s->r.pg) {
            PQclear(res); /* keep the Parse error, drop the ABORTED */
            break;
        }
        s->r.pg = res;
        if (failed)
            unit_note_error(u, op->stmt, res);
        if (failed && op->pseq) {
            /*
             * 0A000 "cached plan must not change result type": the table
             * changed under a prepared SELECT *. The statement fails (the
             * caller may retry); the next use prepares it afresh.
             */
            const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            struct pentry *e = pc_get(c, s->sql);
            if (state && strcmp(state, "0A000") == 0 && e && e->seq == op->pseq)
                pc_remove(c, e);
        }
        break;
    }
    case OP_BEGIN:
    case OP_COMMIT:
        if (failed && !u->ctl_pg) {
            u->ctl_pg = res;
            unit_note_error(u, op->kind == OP_BEGIN ? -1 : u->n, res);
        } else {
            PQclear(res);
        }
        break;
    case OP_SYNC:
        PQclear(res); /* not reached: handled by the caller */
        break;
    }
}

/* Take every result libpq can give without blocking. false: c was lost. */
static bool conn_drain(struct conn *c)
{
    char buf[512];
    while (c->ops_len > 0 && c->state == C_READY) {
        if (PQisBusy(c->pg))
            break;
        PGresult *res = PQgetResult(c->pg);
        struct op *op = ops_front(c);

        if (res && PQresultStatus(res) == PGRES_FATAL_ERROR && is_connection_error(res)) {
            one_line(PQresultErrorMessage(res), buf, sizeof(buf));
            PQclear(res);
            conn_lost(c, buf);
            return false;
        }
        if (op->kind == OP_SYNC) {
            if (!res || PQresultStatus(res) != PGRES_PIPELINE_SYNC) {
                if (res)
                    PQclear(res);
                conn_lost(c, "protocol out of step: expected the end of a pipeline");
                return false;
            }
            PQclear(res);
            struct unit *u = op->unit;
            bool last = op->last;
            ops_pop(c);
            if (last)
                conn_unit_done(c, u);
            continue;
        }
        if (!res) {
            bool got = op->got;
            ops_pop(c);
            if (!got) {
                conn_lost(c, "protocol out of step: statement without result");
                return false;
            }
            continue;
        }
        op->got = true;
        handle_result(c, op, res);
    }
    if (c->state != C_READY)
        return false;
    return true;
}

static void conn_notifies(struct conn *c)
{
    struct pl_db *db = c->db;
    PGnotify *n;
    while (c->pg && (n = PQnotifies(c->pg)) != NULL) {
        db->st.notifications++;
        if (c->listen && !db->freeing)
            for (struct listener *l = db->listeners; l; l = l->next)
                if (strcmp(l->channel, n->relname) == 0)
                    l->cb(l->channel, n->extra ? n->extra : "", l->arg);
        PQfreemem(n);
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct poll_h *p = pl_container_of(h, struct poll_h, h);
    struct conn *c = p->conn;
    char buf[512];
    if (!c || c->db->torn_down)
        return;
    if (c->state == C_CONNECTING) {
        conn_connect_step(c);
        return;
    }
    if (c->state != C_READY)
        return;
    if (status < 0 && status != UV_EAGAIN) {
        snprintf(buf, sizeof(buf), "socket error: %s", uv_strerror(status));
        conn_lost(c, buf);
        return;
    }
    if (events & UV_READABLE || status < 0) {
        /* results already buffered are taken before a failure is acted on,
         * so a reply that made it in full is not reported as lost */
        int consumed = PQconsumeInput(c->pg);
        if (!conn_drain(c))
            return;
        conn_notifies(c);
        if (!consumed || PQstatus(c->pg) == CONNECTION_BAD) {
            conn_lost(c, conn_errmsg(c->pg, buf, sizeof(buf)));
            return;
        }
    }
    conn_flush(c);
}

/* ------------------------------------------------------------------ */
/* losing a connection                                                 */

/* Fail everything on c with `err` (PL_EDBLOST), drop internal units. */
static void conn_fail_all(struct conn *c, int err)
{
    struct pl_db *db = c->db;
    c->ops_len = 0;
    c->ops_head = 0;
    pc_clear(c);
    c->barrier = false;
    struct unit *fl = c->fl_head, *pv = c->pv_head;
    c->fl_head = c->fl_tail = c->pv_head = c->pv_tail = NULL;
    c->n_inflight = 0;
    while (fl) {
        struct unit *next = fl->next;
        if (!fl->internal)
            db->n_inflight--;
        if (fl->internal)
            unit_free(fl);
        else
            unit_finish(fl, err);
        fl = next;
    }
    while (pv) {
        struct unit *next = pv->next;
        unit_free(pv);
        pv = next;
    }
}

static void conn_lost(struct conn *c, const char *why)
{
    struct pl_db *db = c->db;
    if (c->state == C_READY && !c->listen)
        db->conns_up--;
    note_lost(c, why);
    conn_drop_pg(c);
    conn_fail_all(c, PL_EDBLOST);
    conn_schedule_reconnect(c);
    db_kick(db);
}

/* ------------------------------------------------------------------ */
/* queue deadline                                                      */

static void on_deadline(uv_timer_t *t)
{
    struct pl_db *db = pl_container_of(t, struct pl_db, deadline_timer);
    int64_t now = pl_monotonic_us();
    db->deadline_armed_us = 0;
    if (db->freeing)
        return;
    while (db->q_head && db->q_head->deadline_us <= now) {
        struct unit *u = fifo_pop(&db->q_head, &db->q_tail);
        db->q_len--;
        unit_finish(u, PL_ETIMEOUT);
    }
    arm_deadline(db);
}

static void arm_deadline(struct pl_db *db)
{
    if (db->freeing)
        return;
    if (!db->q_head) {
        if (db->deadline_armed_us) {
            uv_timer_stop(&db->deadline_timer);
            db->deadline_armed_us = 0;
        }
        return;
    }
    int64_t due = db->q_head->deadline_us;
    if (db->deadline_armed_us == due)
        return;
    int64_t wait_ms = (due - pl_monotonic_us() + PL_US_PER_MS - 1) / PL_US_PER_MS;
    uv_timer_start(&db->deadline_timer, on_deadline, wait_ms > 0 ? (uint64_t)wait_ms : 0, 0);
    db->deadline_armed_us = due;
}

/* ------------------------------------------------------------------ */
/* lifecycle                                                           */

static void db_teardown(struct pl_db *db);

static void on_prepare(uv_prepare_t *h)
{
    struct pl_db *db = pl_container_of(h, struct pl_db, prepare);
    uv_prepare_stop(h);
    db->prepare_active = false;
    if (db->freeing)
        db_teardown(db);
    else
        db_dispatch(db);
}

static void db_kick(struct pl_db *db)
{
    if (db->prepare_active || db->torn_down)
        return;
    uv_prepare_start(&db->prepare, on_prepare);
    db->prepare_active = true;
}

static struct conn *conn_new(struct pl_db *db, int id, bool listen)
{
    struct conn *c = pl_xcalloc(1, sizeof(*c));
    c->db = db;
    c->id = id;
    c->listen = listen;
    c->state = C_DOWN;
    uv_timer_init(db->loop, &c->timer);
    c->timer.data = db;
    db->handles_open++;
    return c;
}

static void on_conn_timer_closed(uv_handle_t *h)
{
    struct conn *c = pl_container_of((uv_timer_t *)h, struct conn, timer);
    struct pl_db *db = c->db;
    free(c->ops);
    free(c);
    db->handles_open--;
    db_maybe_finish(db);
}

static void conn_close(struct conn *c)
{
    if (c->state == C_READY && !c->listen)
        c->db->conns_up--;
    conn_drop_pg(c);
    conn_fail_all(c, PL_EDBLOST);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_conn_timer_closed);
}

static void free_params(struct pl_db *db)
{
    for (size_t i = 0; db->kw && db->kw[i]; i++) {
        free(db->kw[i]);
        if (db->val[i]) {
            explicit_bzero(db->val[i], strlen(db->val[i])); /* may be the password */
            free(db->val[i]);
        }
    }
    free(db->kw);
    free(db->val);
    db->kw = db->val = NULL;
}

static void db_maybe_finish(struct pl_db *db)
{
    if (!db->torn_down || db->handles_open > 0)
        return;
    pl_db_closed_cb cb = db->closed_cb;
    void *arg = db->closed_arg;
    while (db->listeners) {
        struct listener *l = db->listeners;
        db->listeners = l->next;
        free(l->channel);
        free(l);
    }
    free_params(db);
    free(db->conns);
    free(db);
    if (cb)
        cb(arg);
}

static void db_teardown(struct pl_db *db)
{
    if (db->torn_down)
        return;
    /* queued work was never sent */
    while (db->q_head) {
        struct unit *u = fifo_pop(&db->q_head, &db->q_tail);
        db->q_len--;
        unit_finish(u, PL_ECANCELED);
    }
    for (unsigned i = 0; i < db->pool_size; i++)
        conn_close(db->conns[i]);
    if (db->lconn)
        conn_close(db->lconn);
    /* callbacks above may have queued more (they were refused: freeing) */
    db->torn_down = true;
    uv_prepare_stop(&db->prepare);
    uv_close((uv_handle_t *)&db->prepare, on_handle_closed);
    uv_timer_stop(&db->deadline_timer);
    uv_close((uv_handle_t *)&db->deadline_timer, on_handle_closed);
}

void pl_db_free(struct pl_db *db, pl_db_closed_cb closed_cb, void *arg)
{
    if (!db || db->freeing)
        return;
    db->freeing = true;
    db->closed_cb = closed_cb;
    db->closed_arg = arg;
    db_kick(db);
}

/* Append key/value to the parameter arrays (both copied). */
static void param_push(char ***kw, char ***val, size_t *n, const char *k, const char *v)
{
    *kw = pl_xrealloc(*kw, (*n + 2) * sizeof(char *));
    *val = pl_xrealloc(*val, (*n + 2) * sizeof(char *));
    (*kw)[*n] = pl_xstrdup(k);
    (*val)[*n] = pl_xstrdup(v);
    (*n)++;
    (*kw)[*n] = NULL;
    (*val)[*n] = NULL;
}

static int build_params(struct pl_db *db, const struct pl_db_opts *o)
{
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(o->conninfo ? o->conninfo : "", &errmsg);
    if (!opts) {
        /* libpq's message may quote the conninfo, so it is not logged here */
        if (errmsg)
            PQfreemem(errmsg);
        return PL_EINVAL;
    }
    char **kw = NULL, **val = NULL;
    size_t n = 0;
    const char *options = NULL;
    bool have_appname = false, have_encoding = false;
    for (PQconninfoOption *p = opts; p->keyword; p++) {
        if (!p->val)
            continue;
        if (strcmp(p->keyword, "options") == 0) {
            options = p->val;
            continue;
        }
        if (strcmp(p->keyword, "password") == 0 && o->password)
            continue;
        if (strcmp(p->keyword, "application_name") == 0) {
            if (o->application_name)
                continue;
            have_appname = true;
        }
        if (strcmp(p->keyword, "client_encoding") == 0)
            have_encoding = true;
        param_push(&kw, &val, &n, p->keyword, p->val);
    }
    if (o->password)
        param_push(&kw, &val, &n, "password", o->password);
    if (o->application_name)
        param_push(&kw, &val, &n, "application_name", o->application_name);
    else if (!have_appname)
        param_push(&kw, &val, &n, "fallback_application_name", "pledged");
    if (!have_encoding)
        param_push(&kw, &val, &n, "client_encoding", "UTF8");
    /* ours come last: later -c settings win */
    char *all =
        options ? pl_xasprintf("%s %s", options, SESSION_OPTIONS) : pl_xstrdup(SESSION_OPTIONS);
    param_push(&kw, &val, &n, "options", all);
    free(all);
    PQconninfoFree(opts);
    db->kw = kw;
    db->val = val;
    return 0;
}

struct pl_db *pl_db_new(uv_loop_t *loop, const struct pl_db_opts *opts, int *err)
{
    struct pl_db_opts o = opts ? *opts : (struct pl_db_opts){0};
    struct pl_db *db = NULL;
    int rc = PL_EINVAL;
    if (!loop || o.pool_size > MAX_POOL_SIZE || o.pipeline_depth > MAX_PIPELINE)
        goto fail;

    db = pl_xcalloc(1, sizeof(*db));
    db->loop = loop;
    db->pool_size = o.pool_size ? o.pool_size : PL_DB_DEFAULT_POOL_SIZE;
    db->depth = o.pipeline_depth ? o.pipeline_depth : PL_DB_DEFAULT_PIPELINE_DEPTH;
    db->connect_timeout_ms =
        o.connect_timeout_ms ? o.connect_timeout_ms : PL_DB_DEFAULT_CONNECT_TIMEOUT_MS;
    db->deadline_ms = o.queue_deadline_ms ? o.queue_deadline_ms : PL_DB_DEFAULT_QUEUE_DEADLINE_MS;
    db->backoff_min_ms = o.backoff_min_ms ? o.backoff_min_ms : PL_DB_DEFAULT_BACKOFF_MIN_MS;
    db->backoff_max_ms = o.backoff_max_ms ? o.backoff_max_ms : PL_DB_DEFAULT_BACKOFF_MAX_MS;
    if (db->backoff_max_ms < db->backoff_min_ms)
        db->backoff_max_ms = db->backoff_min_ms;
    db->no_prepare = o.no_prepare;
    db->on_ready = o.on_ready;
    db->ready_arg = o.ready_arg;
    db->start_us = pl_monotonic_us();
    db->rng = (uint64_t)db->start_us ^ ((uint64_t)getpid() << 32) ^ (uintptr_t)db;
    if (!db->rng)
        db->rng = 0x9e3779b97f4a7c15ULL;
    db->st.pool_size = db->pool_size;

    rc = build_params(db, &o);
    if (rc < 0)
        goto fail;

    /* nothing below can fail */
    uv_prepare_init(loop, &db->prepare);
    db->prepare.data = db;
    uv_timer_init(loop, &db->deadline_timer);
    db->deadline_timer.data = db;
    db->handles_open = 2;

    db->conns = pl_xcalloc(db->pool_size, sizeof(*db->conns));
    for (unsigned i = 0; i < db->pool_size; i++) {
        db->conns[i] = conn_new(db, (int)i, false);
        conn_start(db->conns[i]);
    }
    return db;

fail:
    free(db);
    if (err)
        *err = rc;
    return NULL;
}

bool pl_db_connected(const struct pl_db *db)
{
    return db && db->connected;
}

/* ------------------------------------------------------------------ */
/* submitting                                                          */

static void db_enqueue(struct pl_db *db, struct unit *u)
{
    u->deadline_us = pl_monotonic_us() + (int64_t)db->deadline_ms * PL_US_PER_MS;
    fifo_push(&db->q_head, &db->q_tail, u);
    db->q_len++;
    db_kick(db);
}

int pl_db_query(struct pl_db *db, const char *sql, int nparams, const char *const *params,
                pl_db_cb cb, void *arg)
{
    if (!db || !cb)
        return PL_EINVAL;
    if (db->freeing)
        return PL_ECANCELED;
    struct unit *u = unit_new(db, UNIT_QUERY);
    int rc = unit_add(u, sql, nparams, params);
    if (rc < 0) {
        unit_free(u);
        return rc;
    }
    u->cb = cb;
    u->arg = arg;
    db_enqueue(db, u);
    return 0;
}

struct pl_db_tx *pl_db_tx_new(struct pl_db *db)
{
    return pl_container_of(unit_new(db, UNIT_TX), struct pl_db_tx, u);
}

struct pl_db_tx *pl_db_batch_new(struct pl_db *db)
{
    return pl_container_of(unit_new(db, UNIT_BATCH), struct pl_db_tx, u);
}

int pl_db_tx_add(struct pl_db_tx *tx, const char *sql, int nparams, const char *const *params)
{
    if (!tx)
        return PL_EINVAL;
    return unit_add(&tx->u, sql, nparams, params);
}

int pl_db_tx_count(const struct pl_db_tx *tx)
{
    return tx ? tx->u.n : 0;
}

int pl_db_tx_commit(struct pl_db_tx *tx, pl_db_cb cb, void *arg)
{
    if (!tx)
        return PL_EINVAL;
    struct unit *u = &tx->u;
    if (!cb || !u->db) {
        unit_free(u);
        return PL_EINVAL;
    }
    if (u->db->freeing) {
        unit_free(u);
        return PL_ECANCELED;
    }
    u->cb = cb;
    u->arg = arg;
    db_enqueue(u->db, u);
    return 0;
}

void pl_db_tx_free(struct pl_db_tx *tx)
{
    if (tx)
        unit_free(&tx->u);
}

static bool channel_valid(const char *ch)
{
    size_t n = 0;
    if (!ch || !*ch)
        return false;
    for (; ch[n]; n++)
        if (!isalnum((unsigned char)ch[n]) && ch[n] != '_')
            return false;
    return n <= MAX_CHANNEL_LEN;
}

int pl_db_listen(struct pl_db *db, const char *channel, pl_db_notify_cb cb, void *arg)
{
    if (!db || !cb || !channel_valid(channel))
        return PL_EINVAL;
    if (db->freeing)
        return PL_ECANCELED;
    struct listener *l = pl_xcalloc(1, sizeof(*l));
    l->channel = pl_xstrdup(channel);
    l->cb = cb;
    l->arg = arg;
    l->next = db->listeners;
    db->listeners = l;

    if (!db->lconn) {
        db->lconn = conn_new(db, (int)db->pool_size, true);
        conn_start(db->lconn); /* LISTENs go out once connected */
    } else if (db->lconn->state == C_READY) {
        struct unit *u = unit_new(db, UNIT_BATCH);
        u->internal = true;
        u->listen = true;
        u->cb = on_listen_done;
        u->arg = db;
        unit_add(u, channel, 0, NULL);
        conn_push_private(db->lconn, u);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* results                                                             */

int pl_db_result_nstmts(const struct pl_db_result *r)
{
    return r && r->unit ? r->unit->n : 0;
}

const struct pl_db_result *pl_db_result_stmt(const struct pl_db_result *r, int i)
{
    if (!r || !r->unit || i < 0 || i >= r->unit->n)
        return NULL;
    return &r->unit->stmts[i].r;
}

static bool has_rows(const struct pl_db_result *r)
{
    return r && r->pg && PQresultStatus(r->pg) == PGRES_TUPLES_OK;
}

int pl_db_result_ntuples(const struct pl_db_result *r)
{
    return has_rows(r) ? PQntuples(r->pg) : 0;
}

int pl_db_result_nfields(const struct pl_db_result *r)
{
    return has_rows(r) ? PQnfields(r->pg) : 0;
}

int64_t pl_db_result_affected(const struct pl_db_result *r)
{
    int64_t v = 0;
    if (!r || !r->pg)
        return 0;
    const char *t = PQcmdTuples(r->pg);
    if (!t || !*t || pl_parse_i64(t, &v) < 0)
        return 0;
    return v;
}

int pl_db_result_field_index(const struct pl_db_result *r, const char *name)
{
    if (!has_rows(r) || !name)
        return PL_ENOTFOUND;
    int i = PQfnumber(r->pg, name);
    return i >= 0 ? i : PL_ENOTFOUND;
}

static bool in_range(const struct pl_db_result *r, int row, int col)
{
    return has_rows(r) && row >= 0 && col >= 0 && row < PQntuples(r->pg) && col < PQnfields(r->pg);
}

bool pl_db_result_is_null(const struct pl_db_result *r, int row, int col)
{
    return !in_range(r, row, col) || PQgetisnull(r->pg, row, col);
}

const char *pl_db_result_text(const struct pl_db_result *r, int row, int col)
{
    if (pl_db_result_is_null(r, row, col))
        return NULL;
    return PQgetvalue(r->pg, row, col);
}

/* Common checks of the typed accessors; on success *text is the value. */
static int value_text(const struct pl_db_result *r, int row, int col, const char **text)
{
    if (!in_range(r, row, col))
        return PL_EINVAL;
    if (PQgetisnull(r->pg, row, col))
        return PL_ENOTFOUND;
    *text = PQgetvalue(r->pg, row, col);
    return 0;
}

int pl_db_result_int64(const struct pl_db_result *r, int row, int col, int64_t *out)
{
    const char *t;
    int64_t v;
    int rc = value_text(r, row, col, &t);
    if (rc < 0)
        return rc;
    rc = pl_parse_i64(t, &v);
    if (rc == PL_ERANGE)
        return PL_ERANGE;
    if (rc < 0)
        return PL_EPARSE;
    *out = v;
    return 0;
}

int pl_db_result_bool(const struct pl_db_result *r, int row, int col, bool *out)
{
    const char *t;
    int rc = value_text(r, row, col, &t);
    if (rc < 0)
        return rc;
    if (strcmp(t, "t") == 0)
        *out = true;
    else if (strcmp(t, "f") == 0)
        *out = false;
    else
        return PL_EPARSE;
    return 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

/* Exactly `n` digits at *p into *out; advances *p. */
static bool take_digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*p)[i]))
            return false;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = v;
    return true;
}

int pl_db_parse_timestamp_us(const char *text, int64_t *out)
{
    /* YYYY[Y...]-MM-DD HH:MM:SS[.f{1,6}][(+|-)HH[:MM[:SS]]][ BC] */
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const char *p = text;
    int64_t year = 0;
    int ndig = 0, mon, day, hh, mm, ss, frac_us = 0;
    if (!p)
        return PL_EPARSE;
    if (strcmp(p, "infinity") == 0 || strcmp(p, "-infinity") == 0)
        return PL_ERANGE;
    while (isdigit((unsigned char)*p) && ndig < 7) {
        year = year * 10 + (*p++ - '0');
        ndig++;
    }
    if (ndig < 4 || *p++ != '-' || !take_digits(&p, 2, &mon) || *p++ != '-' ||
        !take_digits(&p, 2, &day) || *p++ != ' ' || !take_digits(&p, 2, &hh) || *p++ != ':' ||
        !take_digits(&p, 2, &mm) || *p++ != ':' || !take_digits(&p, 2, &ss))
        return PL_EPARSE;
    if (*p == '.') {
        int n = 0;
        p++;
        while (isdigit((unsigned char)*p)) {
            if (n < 6) {
                frac_us = frac_us * 10 + (*p - '0');
                n++;
            } else {
                return PL_EPARSE; /* PostgreSQL keeps microseconds at most */
            }
            p++;
        }
        if (n == 0)
            return PL_EPARSE;
        for (; n < 6; n++)
            frac_us *= 10;
    }
    int64_t off_s = 0;
    if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1, oh, om = 0, os = 0;
        if (!take_digits(&p, 2, &oh))
            return PL_EPARSE;
        if (*p == ':') {
            p++;
            if (!take_digits(&p, 2, &om))
                return PL_EPARSE;
            if (*p == ':') {
                p++;
                if (!take_digits(&p, 2, &os))
                    return PL_EPARSE;
            }
        }
        off_s = sign * (oh * 3600 + om * 60 + os);
    }
    if (strcmp(p, " BC") == 0)
        return PL_ERANGE;
    if (*p)
        return PL_EPARSE;
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (mon < 1 || mon > 12 || day < 1 || day > mdays[mon - 1] + (mon == 2 && leap ? 1 : 0) ||
        hh > 23 || mm > 59 || ss > 60)
        return PL_EPARSE;
    if (year > 294000) /* beyond int64 microseconds */
        return PL_ERANGE;
    int64_t secs = days_from_civil(year, (unsigned)mon, (unsigned)day) * 86400 + hh * 3600 +
                   mm * 60 + ss - off_s;
    *out = secs * PL_US_PER_S + frac_us;
    return 0;
}

int pl_db_result_timestamp_us(const struct pl_db_result *r, int row, int col, int64_t *out)
{
    const char *t;
    int rc = value_text(r, row, col, &t);
    if (rc < 0)
        return rc;
    return pl_db_parse_timestamp_us(t, out);
}

static const PGresult *error_pg(const struct pl_db_result *r)
{
    if (!r || !r->unit)
        return NULL;
    if (r->index < 0)
        return r->unit->err_pg;
    if (r->pg &&
        (PQresultStatus(r->pg) == PGRES_FATAL_ERROR || PQresultStatus(r->pg) == PGRES_BAD_RESPONSE))
        return r->pg;
    return NULL;
}

int pl_db_result_error_index(const struct pl_db_result *r)
{
    if (!r || !r->unit)
        return -1;
    if (r->index < 0)
        return r->unit->err_pg ? r->unit->err_index : -1;
    return error_pg(r) ? r->index : -1;
}

const char *pl_db_result_error_message(const struct pl_db_result *r)
{
    const PGresult *pg = error_pg(r);
    if (!pg)
        return NULL;
    const char *m = PQresultErrorField(pg, PG_DIAG_MESSAGE_PRIMARY);
    return m ? m : PQresultErrorMessage(pg);
}

const char *pl_db_result_sqlstate(const struct pl_db_result *r)
{
    const PGresult *pg = error_pg(r);
    return pg ? PQresultErrorField(pg, PG_DIAG_SQLSTATE) : NULL;
}

const char *pl_db_result_constraint(const struct pl_db_result *r)
{
    const PGresult *pg = error_pg(r);
    return pg ? PQresultErrorField(pg, PG_DIAG_CONSTRAINT_NAME) : NULL;
}

/* ------------------------------------------------------------------ */
/* metrics                                                             */

void pl_db_stats(const struct pl_db *db, struct pl_db_stats *out)
{
    if (!db || !out)
        return;
    *out = db->st;
    out->queue_len = db->q_len;
    out->in_flight = db->n_inflight;
    out->connections_up = db->conns_up;
    out->pool_size = db->pool_size;
}
