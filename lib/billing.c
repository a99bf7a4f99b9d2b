#include "billing.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "util.h"

/* How long outcomes may wait to be batched before they are recorded. */
#define FLUSH_DELAY_MS 5
/* Backoff before repeating a database step that failed (outage). */
#define DB_RETRY_MS 1000
/* --once: extra passes for outcomes still unknown at the end of a pass. */
#define ONCE_RECONCILE_PASSES 3
#define ONCE_PASS_PAUSE_MS    250
/* --once: how long a failing database may stall a pass before giving up. */
#define ONCE_DB_FAILURES_MAX 60
/* How often to look for unknown outcomes stuck past unknown_alert_after. */
#define ALERT_CHECK_MS 30000
/* Charge ids named in one "stuck unknown" warning; the rest are counted. */
#define ALERT_IDS_MAX 20
#define STRINGIFY_(x) #x
#define STRINGIFY(x)  STRINGIFY_(x)

static const char SQL_MATERIALISE[] =
    "SELECT pledges, scheduled, skipped FROM pl_materialise($1, $2::time, $3, $4, $5)";

static const char SQL_CLAIM[] =
    "SELECT charge_id, attempt_no, idempotency_key, mode, recovered, amount_minor, currency,"
    " customer_ref, token, period, fund"
    " FROM pl_claim($1, $2, $3::interval, $4::interval, $5, $6::timestamptz, $7, $8::bigint[])";

static const char SQL_RECORD[] =
    "SELECT pl_record($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,"
    " $15::interval[], $16, $17::interval[], $18::interval, $19)";

static const char SQL_RECORD_SUCCEEDED[] =
    "SELECT pl_record_succeeded($1, $2::bigint[], $3::integer[], $4::text[], $5::text[],"
    " $6::integer[], $7::bigint[], $8::integer[], $9)";

static const char SQL_COUNT_UNKNOWN[] = "SELECT count(*) FROM charge WHERE status = 'unknown'";

static const char SQL_UNKNOWN_ALERTS[] =
    "SELECT stuck, coalesce(array_length(alerted, 1), 0), array_to_string(alerted[1:" STRINGIFY(
        ALERT_IDS_MAX) "], ', ') FROM pl_unknown_alerts($1::interval, $2)";

enum work_mode { MODE_SEND, MODE_RESEND, MODE_LOOKUP };

/* One claimed charge on its way through the gateway. */
struct work {
    struct pl_billing *b;
    struct work *prev, *next;
    struct pl_gateway_op *op;
    int64_t charge_id;
    int attempt_no;
    enum work_mode mode;
    int64_t amount_minor;
    char currency[4];
    char *key, *customer_ref, *token, *period, *fund;
};

/* One outcome waiting to be recorded. */
struct record {
    int64_t charge_id;
    int attempt_no;
    const char *outcome; /* static */
    long http_status;
    char *gateway_ref, *request_id, *error_type, *code, *decline, *advice, *message;
    bool has_fee;
    int64_t fee_minor;
    unsigned sends;
};

struct pl_billing {
    uv_loop_t *loop;
    struct pl_db *db;
    struct pl_gateway *gw;
    pl_billing_done_cb done_cb;
    void *done_arg;

    /* options, as the SQL functions want them */
    char *node, *actor, *descriptor, *tz;
    char charge_time[8], catch_up[8];
    char lease[32], window[32], batch[16], lookup_settle[32];
    char *retry_schedule, *reconcile_schedule;
    char lapse_after[16];
    char alert_after[40];
    int64_t alert_after_ms;
    int batch_size, max_in_flight;
    int capacity; /* charges held at once: in flight plus queued in lib/http */
    int64_t poll_interval_ms;
    bool once;

    uv_timer_t poll_timer;  /* periodic scan */
    uv_timer_t flush_timer; /* batches outcomes */
    uv_timer_t retry_timer; /* database retry / --once passes */
    uv_timer_t alert_timer; /* stuck unknown outcomes */
    int open_handles;
    unsigned db_pending; /* queries whose callback has not run: b lives until 0 */
    bool freeing;
    bool alerting;
    uint64_t stuck_logged; /* stuck count last logged, to say when it clears */

    bool started, draining, halted, done_reported;
    char halt_reason[256];

    bool materialising, claiming, flushing, counting, retrying;
    bool more_work;   /* the last claim was full: more may be waiting */
    bool rescan;      /* woken while busy: scan again when idle */
    bool recover_own; /* claims after start take back this node's earlier leases */
    char started_at[40];
    char check_before[40]; /* --once pass: check unknown outcomes last sent before this */
    int claim_requested;
    uint64_t recovered_logged;
    int once_passes;
    int db_failures;

    struct work *inflight; /* sent: gateway operation in progress; doubly linked */
    unsigned n_inflight;
    struct work *ready, *ready_tail; /* claimed, waiting for a free send slot (FIFO) */
    unsigned n_ready;

    struct record *buf;
    size_t nbuf, capbuf;
    size_t nflushing; /* records at the front of buf being written */
    size_t flush_bulk; /* of those, successes in statement 0 (pl_record_succeeded) */

    pl_billing_drained_cb drained_cb;
    void *drained_arg;

    struct pl_billing_stats stats;
};

static void tick(struct pl_billing *b);
static void claim_step(struct pl_billing *b);
static void flush(struct pl_billing *b);
static void check_idle(struct pl_billing *b);
static void flush_retry_fired(uv_timer_t *t);
static struct work *ready_pop(struct pl_billing *b);
static void withdraw_ready(struct pl_billing *b);
static void db_step_failed(struct pl_billing *b, const char *what, const struct pl_db_result *r,
                           int err);

/* ---- small helpers ------------------------------------------------------ */

static char *dup_or_null(const char *s)
{
    return s && *s ? pl_xstrdup(s) : NULL;
}

/* An interval[] literal for a duration list: {"86400000 milliseconds",...}. New. */
static char *interval_array(const struct pl_duration_list *l)
{
    size_t cap = 2 + (l ? l->len : 0) * 40, len = 0;
    char *out = pl_xmalloc(cap);
    out[len++] = '{';
    for (size_t i = 0; l && i < l->len; i++)
        len += (size_t)snprintf(out + len, cap - len, "%s\"%" PRId64 " milliseconds\"",
                                i ? "," : "", l->ms[i]);
    out[len++] = '}';
    out[len] = '\0';
    return out;
}

static void set_interval(char *buf, size_t n, int64_t ms)
{
    snprintf(buf, n, "%" PRId64 " milliseconds", ms);
}

static void apply_opts(struct pl_billing *b, const struct pl_billing_opts *o)
{
    free(b->actor);
    free(b->node);
    free(b->descriptor);
    free(b->tz);
    free(b->retry_schedule);
    free(b->reconcile_schedule);
    b->node = pl_xstrdup(o->node_name);
    b->actor = pl_xasprintf("pledged:%s", o->node_name);
    b->descriptor = dup_or_null(o->statement_descriptor_suffix);
    b->tz = pl_xstrdup(o->timezone ? o->timezone : "UTC");
    snprintf(b->charge_time, sizeof(b->charge_time), "%02d:%02d", o->charge_time_minutes / 60 % 24,
             o->charge_time_minutes % 60);
    snprintf(b->catch_up, sizeof(b->catch_up), "%s",
             o->catch_up == PL_CATCH_UP_ALL ? "all" : "latest");
    set_interval(b->lease, sizeof(b->lease), o->lease_ms);
    set_interval(b->window, sizeof(b->window), o->idempotency_window_ms);
    set_interval(b->lookup_settle, sizeof(b->lookup_settle), o->lookup_settle_ms);
    b->batch_size = o->batch_size > 0 ? o->batch_size : 200;
    snprintf(b->batch, sizeof(b->batch), "%d", b->batch_size);
    b->max_in_flight = o->max_in_flight > 0 ? o->max_in_flight : 32;
    /* Claim a whole batch at a time (lib/http queues what exceeds
     * max_in_flight), so claims cost one statement per batch rather than
     * per half-window; but never more than the rate limit lets us send
     * within a quarter of the lease, so nothing waits in the queue long
     * enough for its lease to run out. */
    b->capacity = b->batch_size > b->max_in_flight ? b->batch_size : b->max_in_flight;
    if (o->rate_limit > 0 && o->lease_ms > 0) {
        int64_t sendable = (int64_t)o->rate_limit * o->lease_ms / 1000 / 4;
        if (sendable < b->capacity)
            b->capacity = sendable > b->max_in_flight ? (int)sendable : b->max_in_flight;
    }
    b->retry_schedule = interval_array(o->retry_schedule);
    b->reconcile_schedule = interval_array(o->reconcile_schedule);
    snprintf(b->lapse_after, sizeof(b->lapse_after), "%d", o->lapse_after);
    b->alert_after_ms =
        o->unknown_alert_after_ms > 0 ? o->unknown_alert_after_ms : 2 * 3600 * INT64_C(1000);
    set_interval(b->alert_after, sizeof(b->alert_after), b->alert_after_ms);
    b->poll_interval_ms = o->poll_interval_ms > 0 ? o->poll_interval_ms : 60000;
    b->once = o->once;
}

/* ---- lifecycle ------------------------------------------------------------ */

/* Freed once its timers are closed and every query it sent has called back
 * (lib/db runs the callbacks of abandoned queries after pl_db_free). */
static void maybe_free(struct pl_billing *b)
{
    if (b->open_handles == 0 && b->db_pending == 0) {
        free(b->node);
        free(b->actor);
        free(b->descriptor);
        free(b->tz);
        free(b->retry_schedule);
        free(b->reconcile_schedule);
        free(b->buf);
        free(b);
    }
}

static void handle_closed(uv_handle_t *h)
{
    struct pl_billing *b = h->data;
    b->open_handles--;
    maybe_free(b);
}

static int db_query(struct pl_billing *b, const char *sql, int nparams, const char *const *params,
                    pl_db_cb cb)
{
    int r = pl_db_query(b->db, sql, nparams, params, cb, b);
    if (r == 0)
        b->db_pending++;
    return r;
}

static int db_commit(struct pl_billing *b, struct pl_db_tx *tx, pl_db_cb cb)
{
    int r = pl_db_tx_commit(tx, cb, b);
    if (r == 0)
        b->db_pending++;
    return r;
}

/* First thing in every query callback: false when the engine is being
 * freed (the callback must then touch nothing but return). */
static bool db_returned(struct pl_billing *b)
{
    b->db_pending--;
    if (b->freeing) {
        maybe_free(b);
        return false;
    }
    return true;
}

struct pl_billing *pl_billing_new(uv_loop_t *loop, struct pl_db *db, struct pl_gateway *gw,
                                  const struct pl_billing_opts *opts, pl_billing_done_cb done,
                                  void *done_arg)
{
    struct pl_billing *b = pl_xcalloc(1, sizeof(*b));
    b->loop = loop;
    b->db = db;
    b->gw = gw;
    b->done_cb = done;
    b->done_arg = done_arg;
    apply_opts(b, opts);
    uv_timer_init(loop, &b->poll_timer);
    uv_timer_init(loop, &b->flush_timer);
    uv_timer_init(loop, &b->retry_timer);
    uv_timer_init(loop, &b->alert_timer);
    b->poll_timer.data = b->flush_timer.data = b->retry_timer.data = b->alert_timer.data = b;
    b->open_handles = 4;
    return b;
}

static void poll_fired(uv_timer_t *t)
{
    tick(t->data);
}

/* ---- stuck unknown outcomes ----------------------------------------------- */

static void alerts_checked(const struct pl_db_result *r, int err, void *arg)
{
    struct pl_billing *b = arg;
    if (!db_returned(b))
        return;
    b->alerting = false;
    if (err != 0)
        return; /* the next check asks again; lib/db logs outages */
    int64_t stuck = 0, alerted = 0;
    pl_db_result_int64(r, 0, 0, &stuck);
    pl_db_result_int64(r, 0, 1, &alerted);
    const char *ids = pl_db_result_text(r, 0, 2);
    char after[32];
    pl_config_format_duration(b->alert_after_ms, after, sizeof(after));
    b->stats.stuck_unknown = stuck > 0 ? (uint64_t)stuck : 0;
    if (alerted > 0)
        pl_log_warn("billing",
                    "%" PRId64 " more charges have had an unknown outcome for over %s (%" PRId64
                    " in all): charge %s%s. Nothing is guessed: the reconciler keeps checking "
                    "them by key; see `pledgectl charge show ID` and `pledgectl status`",
                    alerted, after, stuck, ids ? ids : "?", alerted > ALERT_IDS_MAX ? ", ..." : "");
    else if (stuck == 0 && b->stuck_logged > 0)
        pl_log_notice("billing", "no charge has had an unknown outcome for over %s any more",
                      after);
    b->stuck_logged = b->stats.stuck_unknown;
}

static void alert_fired(uv_timer_t *t)
{
    struct pl_billing *b = t->data;
    if (b->alerting || b->freeing)
        return;
    const char *p[] = {b->alert_after, b->actor};
    if (db_query(b, SQL_UNKNOWN_ALERTS, 2, p, alerts_checked) == 0)
        b->alerting = true;
}

/* --once: a pass checks every unknown outcome last sent before it began,
 * each once, then ends. The time is the database's clock give or take the
 * hosts' skew, which at worst checks an attempt once more (same key). */
static void now_text(char *buf, size_t size)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(buf, size, "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(buf + n, size - n, ".%06ld+00", ts.tv_nsec / 1000);
}

static void pass_begin(struct pl_billing *b)
{
    now_text(b->check_before, sizeof(b->check_before));
}

void pl_billing_start(struct pl_billing *b)
{
    if (b->started)
        return;
    b->started = true;
    b->recover_own = true;
    now_text(b->started_at, sizeof(b->started_at));
    if (!b->once)
        uv_timer_start(&b->poll_timer, poll_fired, (uint64_t)b->poll_interval_ms,
                       (uint64_t)b->poll_interval_ms);
    uv_timer_start(&b->alert_timer, alert_fired, 0, b->once ? 0 : ALERT_CHECK_MS);
    if (b->once) /* outcomes left unknown by an earlier run are checked at once */
        pass_begin(b);
    tick(b);
}

void pl_billing_wake(struct pl_billing *b)
{
    if (!b->started || b->freeing)
        return;
    tick(b);
}

void pl_billing_set_gateway(struct pl_billing *b, struct pl_gateway *gw)
{
    b->gw = gw;
    if (b->halted) {
        b->halted = false;
        b->halt_reason[0] = '\0';
        b->stats.halted = false;
        pl_log_notice("billing", "billing resumed with the reloaded gateway settings");
        tick(b);
    }
}

void pl_billing_set_opts(struct pl_billing *b, const struct pl_billing_opts *opts)
{
    /* The node name owns the leases in flight: it never changes live. */
    struct pl_billing_opts o = *opts;
    char *node = pl_xstrdup(b->node);
    o.node_name = node;
    bool once = b->once;
    apply_opts(b, &o);
    free(node);
    b->once = once;
    if (!once && b->started)
        uv_timer_start(&b->poll_timer, poll_fired, (uint64_t)b->poll_interval_ms,
                       (uint64_t)b->poll_interval_ms);
}

void pl_billing_drain(struct pl_billing *b, pl_billing_drained_cb cb, void *arg)
{
    b->draining = true;
    b->stats.draining = true;
    b->drained_cb = cb;
    b->drained_arg = arg;
    uv_timer_stop(&b->poll_timer);
    withdraw_ready(b);
    check_idle(b);
}

bool pl_billing_halted(const struct pl_billing *b)
{
    return b->halted;
}

const char *pl_billing_halt_reason(const struct pl_billing *b)
{
    return b->halt_reason;
}

void pl_billing_stats(const struct pl_billing *b, struct pl_billing_stats *out)
{
    *out = b->stats;
    out->in_flight = b->n_inflight;
    out->ready = b->n_ready;
    out->buffered = (unsigned)b->nbuf;
    out->halted = b->halted;
    out->draining = b->draining;
}

static void work_free(struct work *w)
{
    if (!w)
        return;
    free(w->key);
    free(w->customer_ref);
    free(w->token);
    free(w->period);
    free(w->fund);
    free(w);
}

static void record_release(struct record *r)
{
    free(r->gateway_ref);
    free(r->request_id);
    free(r->error_type);
    free(r->code);
    free(r->decline);
    free(r->advice);
    free(r->message);
}

void pl_billing_free(struct pl_billing *b)
{
    if (!b)
        return;
    b->freeing = true;
    /* Cancelled operations call back synchronously; their charges stay
     * leased and are recovered with the same key. */
    while (b->inflight) {
        struct work *w = b->inflight;
        if (w->op)
            pl_gateway_cancel(w->op);
        else
            break;
    }
    /* Claimed and never sent: they stay leased too (a hard stop). */
    for (struct work *w; (w = ready_pop(b));)
        work_free(w);
    for (size_t i = 0; i < b->nbuf; i++)
        record_release(&b->buf[i]);
    b->nbuf = 0;
    uv_close((uv_handle_t *)&b->poll_timer, handle_closed);
    uv_close((uv_handle_t *)&b->flush_timer, handle_closed);
    uv_close((uv_handle_t *)&b->retry_timer, handle_closed);
    uv_close((uv_handle_t *)&b->alert_timer, handle_closed);
}

/* ---- idle / completion ---------------------------------------------------- */

static bool busy(const struct pl_billing *b)
{
    return b->materialising || b->claiming || b->flushing || b->counting || b->retrying ||
           b->n_inflight > 0 || b->n_ready > 0 || b->nbuf > 0;
}

static void report_done(struct pl_billing *b, int err)
{
    if (b->done_reported || !b->done_cb)
        return;
    b->done_reported = true;
    b->done_cb(b, err, b->done_arg);
}

static void next_pass(uv_timer_t *t)
{
    struct pl_billing *b = t->data;
    pass_begin(b);
    tick(b);
}

static void unknown_counted(const struct pl_db_result *r, int err, void *arg)
{
    struct pl_billing *b = arg;
    if (!db_returned(b))
        return;
    b->counting = false;
    int64_t unknown = 0;
    if (b->draining) {
        check_idle(b);
        return;
    }
    if (err == PL_EDBLOST || err == PL_ETIMEOUT) {
        /* The database went away between passes: ask again once it is back. */
        db_step_failed(b, "counting unknown outcomes", r, err);
        return;
    }
    b->check_before[0] = '\0';
    if (err != 0 || pl_db_result_int64(r, 0, 0, &unknown) < 0) {
        report_done(b, err ? err : PL_EDB);
        return;
    }
    if (unknown > 0 && b->once_passes < ONCE_RECONCILE_PASSES && !b->halted && !b->draining) {
        b->once_passes++;
        pl_log_info("billing", "%" PRId64 " outcomes still unknown; checking again (pass %d of %d)",
                    unknown, b->once_passes, ONCE_RECONCILE_PASSES);
        uv_timer_start(&b->retry_timer, next_pass, ONCE_PASS_PAUSE_MS, 0);
        return;
    }
    if (unknown > 0)
        pl_log_warn("billing",
                    "%" PRId64 " charges have an unknown outcome; the reconciler will check "
                    "them on its schedule (never guessed)",
                    unknown);
    report_done(b, 0);
}

/* Called whenever a piece of work finishes: completes a drain, ends a
 * --once pass, or starts the rescan a wake-up asked for. */
static void check_idle(struct pl_billing *b)
{
    if (b->freeing || busy(b))
        return;
    if (b->draining) {
        if (b->drained_cb) {
            pl_billing_drained_cb cb = b->drained_cb;
            b->drained_cb = NULL;
            cb(b, b->drained_arg);
        }
        return;
    }
    if (b->rescan && !b->halted) {
        b->rescan = false;
        tick(b);
        return;
    }
    if (!b->once || b->more_work)
        return;
    if (b->halted) {
        report_done(b, PL_ECONFLICT);
        return;
    }
    b->counting = true;
    if (db_query(b, SQL_COUNT_UNKNOWN, 0, NULL, unknown_counted) < 0) {
        b->counting = false;
        report_done(b, PL_EDB);
    }
}

/* A database step failed: try again after a pause (lib/db already logged
 * the outage once). In --once mode give up after a while. */
static void retry_fired(uv_timer_t *t)
{
    struct pl_billing *b = t->data;
    b->retrying = false;
    tick(b);
    check_idle(b);
}

static void db_step_failed(struct pl_billing *b, const char *what, const struct pl_db_result *r,
                           int err)
{
    if (err == PL_EDB)
        pl_log_error("billing", "%s failed: %s", what,
                     r && pl_db_result_error_message(r) ? pl_db_result_error_message(r) : "?");
    if (b->once && ++b->db_failures > ONCE_DB_FAILURES_MAX) {
        report_done(b, err);
        return;
    }
    if (!b->draining && !b->freeing) {
        /* Busy until the retry: --once must not finish a pass over a failed step. */
        b->retrying = true;
        uv_timer_start(&b->retry_timer, retry_fired, DB_RETRY_MS, 0);
    }
}

/* ---- materialise ---------------------------------------------------------- */

static void materialise_step(struct pl_billing *b);

static void materialised(const struct pl_db_result *r, int err, void *arg)
{
    struct pl_billing *b = arg;
    if (!db_returned(b))
        return;
    b->materialising = false;
    if (err != 0) {
        db_step_failed(b, "materialising due pledges", r, err);
        check_idle(b);
        return;
    }
    b->db_failures = 0;
    int64_t pledges = 0, scheduled = 0, skipped = 0;
    pl_db_result_int64(r, 0, 0, &pledges);
    pl_db_result_int64(r, 0, 1, &scheduled);
    pl_db_result_int64(r, 0, 2, &skipped);
    b->stats.materialised += (uint64_t)scheduled;
    b->stats.skipped += (uint64_t)skipped;
    if (skipped > 0)
        pl_log_notice("billing", "%" PRId64 " missed periods recorded as skipped (catch_up = %s)",
                      skipped, b->catch_up);
    if (pledges > 0 && !b->draining) {
        materialise_step(b);
        return;
    }
    claim_step(b);
}

static void materialise_step(struct pl_billing *b)
{
    const char *p[] = {b->tz, b->charge_time, b->catch_up, b->batch, b->actor};
    b->materialising = true;
    if (db_query(b, SQL_MATERIALISE, 5, p, materialised) < 0) {
        b->materialising = false;
        db_step_failed(b, "materialising due pledges", NULL, PL_EINVAL);
    }
}

static void tick(struct pl_billing *b)
{
    if (!b->started || b->freeing || b->draining)
        return;
    if (b->halted)
        return;
    if (b->materialising || b->claiming) {
        b->rescan = true;
        return;
    }
    materialise_step(b);
}

/* ---- claim and send --------------------------------------------------------- */

static void gateway_done(const struct pl_gateway_result *res, void *arg);

static void inflight_add(struct pl_billing *b, struct work *w)
{
    w->next = b->inflight;
    if (b->inflight)
        b->inflight->prev = w;
    b->inflight = w;
    b->n_inflight++;
}

static void inflight_remove(struct pl_billing *b, struct work *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        b->inflight = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->prev = w->next = NULL;
    b->n_inflight--;
}

static void buffer_record(struct pl_billing *b, const struct work *w, const char *outcome,
                          const struct pl_gateway_result *res);

/* Start the gateway operation for one claimed charge. */
static void send_work(struct pl_billing *b, struct work *w)
{
    int r;
    inflight_add(b, w);
    if (w->mode == MODE_LOOKUP) {
        r = pl_gateway_lookup_by_key(b->gw, w->key, gateway_done, w, &w->op);
    } else {
        char charge_id[24], description[160];
        snprintf(charge_id, sizeof(charge_id), "%" PRId64, w->charge_id);
        /* Deterministic from the attempt row, so a resend is byte-identical. */
        snprintf(description, sizeof(description), "Gift for %s (%s)", w->period, w->fund);
        const struct pl_gateway_kv meta[] = {
            {PL_GATEWAY_META_CHARGE, charge_id},
            {PL_GATEWAY_META_ATTEMPT, w->key},
        };
        const struct pl_gateway_charge c = {
            .amount_minor = w->amount_minor,
            .currency = w->currency,
            .customer_ref = w->customer_ref,
            .payment_method = w->token,
            .idempotency_key = w->key,
            .metadata = meta,
            .n_metadata = PL_ARRAY_LEN(meta),
            .description = description,
            .statement_descriptor_suffix = b->descriptor,
        };
        r = pl_gateway_charge(b->gw, &c, gateway_done, w, &w->op);
    }
    if (r < 0) {
        /* The driver refused the request before sending anything: input the
         * gateway must never see (say, an unusable token). The method cannot
         * be charged; record a hard decline so it is visible. */
        struct pl_gateway_result res;
        pl_gateway_result_init(&res, w->mode == MODE_LOOKUP ? PL_GW_LOOKUP_KEY : PL_GW_CHARGE);
        snprintf(res.error_type, sizeof(res.error_type), "invalid_request");
        snprintf(res.code, sizeof(res.code), "rejected_by_driver");
        snprintf(res.message, sizeof(res.message), "request refused before sending: %s",
                 pl_strerror(r));
        inflight_remove(b, w);
        buffer_record(b, w, w->mode == MODE_LOOKUP ? "unknown" : "declined_hard", &res);
        work_free(w);
    }
}

/* Is this charge already being sent, or its outcome waiting to be recorded? */
static bool in_hand(const struct pl_billing *b, int64_t charge_id)
{
    for (const struct work *w = b->inflight; w; w = w->next)
        if (w->charge_id == charge_id)
            return true;
    for (const struct work *w = b->ready; w; w = w->next)
        if (w->charge_id == charge_id)
            return true;
    for (size_t i = 0; i < b->nbuf; i++)
        if (b->buf[i].charge_id == charge_id)
            return true;
    return false;
}

/* in_hand's charges as an SQL array literal ("{1,2}"), or NULL when none. New. */
static char *in_hand_array(const struct pl_billing *b)
{
    size_t n = b->n_inflight + b->n_ready + b->nbuf;
    if (n == 0)
        return NULL;
    size_t cap = 3 + n * 21, len = 0;
    char *out = pl_xmalloc(cap);
    out[len++] = '{';
    for (const struct work *w = b->inflight; w; w = w->next)
        len +=
            (size_t)snprintf(out + len, cap - len, "%s%" PRId64, len > 1 ? "," : "", w->charge_id);
    for (const struct work *w = b->ready; w; w = w->next)
        len +=
            (size_t)snprintf(out + len, cap - len, "%s%" PRId64, len > 1 ? "," : "", w->charge_id);
    for (size_t i = 0; i < b->nbuf; i++)
        len += (size_t)snprintf(out + len, cap - len, "%s%" PRId64, len > 1 ? "," : "",
                                b->buf[i].charge_id);
    out[len++] = '}';
    out[len] = '\0';
    return out;
}

static void withdraw_work(struct pl_billing *b, struct work *w)
{
    struct pl_gateway_result res;
    pl_gateway_result_init(&res, w->mode == MODE_LOOKUP ? PL_GW_LOOKUP_KEY : PL_GW_CHARGE);
    res.sends = 0;
    buffer_record(b, w, "withdraw", &res);
    work_free(w);
}

static void ready_push(struct pl_billing *b, struct work *w)
{
    w->next = NULL;
    w->prev = b->ready_tail;
    if (b->ready_tail)
        b->ready_tail->next = w;
    else
        b->ready = w;
    b->ready_tail = w;
    b->n_ready++;
}

static struct work *ready_pop(struct pl_billing *b)
{
    struct work *w = b->ready;
    if (!w)
        return NULL;
    b->ready = w->next;
    if (b->ready)
        b->ready->prev = NULL;
    else
        b->ready_tail = NULL;
    w->next = w->prev = NULL;
    b->n_ready--;
    return w;
}

/* Start sends while there is a free slot. */
static void pump(struct pl_billing *b)
{
    while (b->ready && (int)b->n_inflight < b->max_in_flight && !b->halted && !b->draining &&
           !b->freeing)
        send_work(b, ready_pop(b));
}

/* Stopping (drain, halt): what was claimed but never sent goes back. */
static void withdraw_ready(struct pl_billing *b)
{
    struct work *w;
    while ((w = ready_pop(b)))
        withdraw_work(b, w);
}

static char *col_dup(const struct pl_db_result *r, int row, int col)
{
    const char *t = pl_db_result_text(r, row, col);
    return pl_xstrdup(t ? t : "");
}

static void claimed(const struct pl_db_result *r, int err, void *arg)
{
    struct pl_billing *b = arg;
    if (!db_returned(b))
        return;
    b->claiming = false;
    if (err != 0) {
        if (err == PL_EDBLOST) {
            /* The claim may have committed: charges leased to us that no
             * one here is sending. Take back this node's leases from before
             * now (those already in hand here are skipped). */
            now_text(b->started_at, sizeof(b->started_at));
            b->recover_own = true;
        }
        db_step_failed(b, "claiming charges", r, err);
        check_idle(b);
        return;
    }
    b->db_failures = 0;
    int n = pl_db_result_ntuples(r);
    b->more_work = n >= b->claim_requested;
    if (!b->more_work)
        b->recover_own = false; /* every lease of ours is back in hand */
    for (int i = 0; i < n; i++) {
        struct work *w = pl_xcalloc(1, sizeof(*w));
        w->b = b;
        int64_t v = 0;
        pl_db_result_int64(r, i, 0, &w->charge_id);
        pl_db_result_int64(r, i, 1, &v);
        w->attempt_no = (int)v;
        w->key = col_dup(r, i, 2);
        const char *mode = pl_db_result_text(r, i, 3);
        w->mode = !mode                         ? MODE_SEND
                  : strcmp(mode, "resend") == 0 ? MODE_RESEND
                  : strcmp(mode, "lookup") == 0 ? MODE_LOOKUP
                                                : MODE_SEND;
        bool recovered = false;
        pl_db_result_bool(r, i, 4, &recovered);
        pl_db_result_int64(r, i, 5, &w->amount_minor);
        const char *cur = pl_db_result_text(r, i, 6);
        pl_strlcpy(w->currency, cur ? cur : "", sizeof(w->currency));
        w->customer_ref = col_dup(r, i, 7);
        w->token = col_dup(r, i, 8);
        w->period = col_dup(r, i, 9);
        w->fund = col_dup(r, i, 10);
        if (in_hand(b, w->charge_id)) {
            /* Re-leased by a recovery after a lost claim, but already being
             * sent (or recorded) here: the one in hand answers for it. */
            work_free(w);
            continue;
        }
        if (recovered)
            b->stats.recovered++;
        else if (w->mode == MODE_SEND)
            b->stats.claimed++;
        else
            b->stats.checks++;
        if (b->halted || b->draining) {
            /* Claimed just before we stopped: send nothing new. An attempt
             * never sent is withdrawn; anything else goes back as it was. */
            withdraw_work(b, w);
            continue;
        }
        ready_push(b, w);
    }
    pump(b);
    if (b->stats.recovered && b->recovered_logged < b->stats.recovered) {
        pl_log_notice("billing",
                      "recovered %" PRIu64 " charges from expired leases; resending "
                      "with their original idempotency keys",
                      b->stats.recovered - b->recovered_logged);
        b->recovered_logged = b->stats.recovered;
    }
    if (n > 0)
        pl_log_debug("billing", "claimed %d charges (%u in flight)", n, b->n_inflight);
    /* Room left and more waiting: take it now. */
    if (b->more_work)
        claim_step(b);
    check_idle(b);
}

static void claim_step(struct pl_billing *b)
{
    if (b->claiming || b->halted || b->draining || b->freeing)
        return;
    int held = (int)(b->n_inflight + b->n_ready);
    int room = b->capacity - held;
    /* Refill below half capacity, so a stream of completions costs one
     * claim per half-batch instead of one per charge. */
    if (room <= 0 || (held > 0 && room < (b->capacity + 1) / 2))
        return;
    int n = room < b->batch_size ? room : b->batch_size;
    char limit[16];
    snprintf(limit, sizeof(limit), "%d", n);
    char *in_hand = in_hand_array(b);
    const char *p[] = {
        b->node,
        limit,
        b->lease,
        b->window,
        b->recover_own ? b->started_at : NULL,
        b->check_before[0] ? b->check_before : NULL,
        b->actor,
        in_hand,
    };
    b->claiming = true;
    b->more_work = false;
    b->claim_requested = n;
    int r = db_query(b, SQL_CLAIM, (int)PL_ARRAY_LEN(p), p, claimed);
    free(in_hand);
    if (r < 0) {
        b->claiming = false;
        db_step_failed(b, "claiming charges", NULL, PL_EINVAL);
    }
}

/* ---- outcomes ----------------------------------------------------------------- */

static const char *record_outcome(const struct work *w, const struct pl_gateway_result *res)
{
    switch (res->outcome) {
    case PL_OUT_SUCCEEDED:
        return "succeeded";
    case PL_OUT_DECLINED_SOFT:
        return "declined_soft";
    case PL_OUT_DECLINED_HARD:
        return "declined_hard";
    case PL_OUT_ACTION_REQUIRED:
        return "action_required";
    case PL_OUT_HALT:
        /* Only a first send can be withdrawn: a resend or lookup is of an
         * attempt that may have executed, which stays open. */
        return w->mode == MODE_SEND ? "halt" : "release";
    case PL_OUT_NOT_FOUND:
        /* Only a lookup after the idempotency window can prove the attempt
         * never executed; anything else that says "not found" is unknown. */
        return w->mode == MODE_LOOKUP ? "not_found" : "unknown";
    case PL_OUT_RETRY_NOW: /* same-key resends were spent: let the reconciler resend */
    case PL_OUT_UNKNOWN:
    default:
        return "unknown";
    }
}

static void buffer_record(struct pl_billing *b, const struct work *w, const char *outcome,
                          const struct pl_gateway_result *res)
{
    if (b->nbuf == b->capbuf) {
        b->capbuf = b->capbuf ? b->capbuf * 2 : 64;
        b->buf = pl_xrealloc(b->buf, b->capbuf * sizeof(*b->buf));
    }
    struct record *r = &b->buf[b->nbuf++];
    memset(r, 0, sizeof(*r));
    r->charge_id = w->charge_id;
    r->attempt_no = w->attempt_no;
    r->outcome = outcome;
    r->http_status = res->http_status;
    r->gateway_ref = dup_or_null(res->ref);
    r->request_id = dup_or_null(res->request_id);
    r->error_type = dup_or_null(res->error_type);
    r->code = dup_or_null(res->code);
    r->decline = dup_or_null(res->decline_code);
    r->advice = dup_or_null(res->advice_code);
    r->message = dup_or_null(res->message);
    r->has_fee = res->has_fee;
    r->fee_minor = res->fee_minor;
    /* A lookup's request is not a send of the charge request. */
    r->sends = w->mode == MODE_LOOKUP ? 0 : res->sends;

    if (b->nbuf - b->nflushing >= (size_t)b->batch_size || b->n_inflight == 0)
        flush(b);
    else if (!uv_is_active((uv_handle_t *)&b->flush_timer))
        uv_timer_start(&b->flush_timer, flush_retry_fired, FLUSH_DELAY_MS, 0);
}

static void halt(struct pl_billing *b, const struct pl_gateway_result *res)
{
    if (b->halted)
        return;
    b->halted = true;
    b->stats.halted = true;
    snprintf(b->halt_reason, sizeof(b->halt_reason),
             "the gateway refused our credentials (HTTP %ld%s%s)", res->http_status,
             res->code[0] ? ", " : "", res->code);
    pl_log_error("billing",
                 "BILLING HALTED: %s. Claiming stopped; no donor was charged or declined and "
                 "the attempts refused are withdrawn. Fix the API key (gateway.api_key_file or "
                 "the gateway_api_key credential) and reload with SIGHUP (systemctl reload "
                 "pledged).",
                 b->halt_reason);
}

static void gateway_done(const struct pl_gateway_result *res, void *arg)
{
    struct work *w = arg;
    struct pl_billing *b = w->b;
    w->op = NULL;
    inflight_remove(b, w);
    if (res->err == PL_ECANCELED) {
        /* Shutting down: leave the charge leased; recovery resends the key. */
        work_free(w);
        return;
    }
    b->stats.sent++;
    if ((unsigned)res->outcome < PL_OUT_COUNT)
        b->stats.outcomes[res->outcome]++;
    if (res->outcome == PL_OUT_HALT) {
        halt(b, res);
        withdraw_ready(b);
    }
    const char *outcome = record_outcome(w, res);
    pl_log_debug("billing", "charge %" PRId64 " attempt %s: %s (HTTP %ld %s)", w->charge_id, w->key,
                 outcome, res->http_status, res->decline_code);
    buffer_record(b, w, outcome, res);
    work_free(w);
    pump(b);
    if (b->more_work)
        claim_step(b);
    check_idle(b);
}

/* ---- recording ------------------------------------------------------------------ */

static void add_record_stmt(struct pl_billing *b, struct pl_db_tx *tx, const struct record *r)
{
    char charge[24], attempt[16], status[16], fee[24], sends[16];
    snprintf(charge, sizeof(charge), "%" PRId64, r->charge_id);
    snprintf(attempt, sizeof(attempt), "%d", r->attempt_no);
    snprintf(status, sizeof(status), "%ld", r->http_status);
    snprintf(fee, sizeof(fee), "%" PRId64, r->fee_minor);
    snprintf(sends, sizeof(sends), "%u", r->sends);
    const char *p[] = {
        b->node,
        charge,
        attempt,
        r->outcome,
        r->http_status > 0 ? status : NULL,
        r->gateway_ref,
        r->request_id,
        r->error_type,
        r->code,
        r->decline,
        r->advice,
        r->message,
        r->has_fee ? fee : NULL,
        sends,
        b->retry_schedule,
        b->lapse_after,
        b->reconcile_schedule,
        b->lookup_settle,
        b->actor,
    };
    pl_db_tx_add(tx, SQL_RECORD, (int)PL_ARRAY_LEN(p), p);
}

static void drop_flushed(struct pl_billing *b)
{
    for (size_t i = 0; i < b->nflushing; i++)
        record_release(&b->buf[i]);
    memmove(b->buf, b->buf + b->nflushing, (b->nbuf - b->nflushing) * sizeof(*b->buf));
    b->nbuf -= b->nflushing;
    b->nflushing = 0;
}

static void count_results(struct pl_billing *b, const struct pl_db_result *r, int first, int n)
{
    for (int i = first; i < n; i++) {
        const struct pl_db_result *s = pl_db_result_stmt(r, i);
        const char *t = s ? pl_db_result_text(s, 0, 0) : NULL;
        if (!t)
            continue;
        if (strcmp(t, "stale") == 0)
            b->stats.stale++;
        else if (strcmp(t, "retry_wait") == 0)
            b->stats.retry_waits++;
        else if (strcmp(t, "not_found") == 0)
            b->rescan = true; /* the charge is due again, under a new key */
    }
}

static void flush_retry_fired(uv_timer_t *t)
{
    flush(t->data);
}

static void recorded_singly(const struct pl_db_result *r, int err, void *arg)
{
    struct pl_billing *b = arg;
    if (!db_returned(b))
        return;
    b->flushing = false;
    if (err == PL_EDBLOST || err == PL_ETIMEOUT) {
        b->nflushing = 0; /* keep them; pl_record is idempotent */
        uv_timer_start(&b->flush_timer, flush_retry_fired, DB_RETRY_MS, 0);
        return;
    }
    int n = (int)b->nflushing;
    for (int i = 0; r && i < n; i++) {
        const struct pl_db_result *s = pl_db_result_stmt(r, i);
        if (s && pl_db_result_error_message(s)) {
            b->stats.record_errors++;
            pl_log_error("billing",
                         "recording the outcome of charge %" PRId64 " failed: %s; it stays "
                         "leased and will be recovered with the same key",
                         b->buf[i].charge_id, pl_db_result_error_message(s));
        }
    }
    if (r)
        count_results(b, r, 0, n);
    b->stats.record_batches++;
    drop_flushed(b);
    if (b->nbuf > 0)
        flush(b);
    check_idle(b);
}

static void recorded(const struct pl_db_result *r, int err, void *arg)
{
    struct pl_billing *b = arg;
    if (!db_returned(b))
        return;
    b->flushing = false;
    if (err == PL_EDB) {
        /* One bad statement rolled the whole batch back: record each on its
         * own so the others are not held hostage. */
        pl_log_warn("billing", "batch of %zu outcomes failed (%s); recording them one by one",
                    b->nflushing,
                    pl_db_result_error_message(r) ? pl_db_result_error_message(r) : "?");
        struct pl_db_tx *batch = pl_db_batch_new(b->db);
        for (size_t i = 0; i < b->nflushing; i++)
            add_record_stmt(b, batch, &b->buf[i]);
        b->flushing = true;
        if (db_commit(b, batch, recorded_singly) < 0) {
            b->flushing = false;
            b->nflushing = 0;
            uv_timer_start(&b->flush_timer, flush_retry_fired, DB_RETRY_MS, 0);
        }
        return;
    }
    if (err != 0) {
        /* Connection lost or no connection: the COMMIT may or may not have
         * happened. Recording again is safe: a second pl_record of the same
         * outcome is 'stale'. */
        b->nflushing = 0;
        uv_timer_start(&b->flush_timer, flush_retry_fired, DB_RETRY_MS, 0);
        return;
    }
    int first = 0;
    if (b->flush_bulk > 0) {
        int64_t applied = 0;
        pl_db_result_int64(pl_db_result_stmt(r, 0), 0, 0, &applied);
        if ((size_t)applied < b->flush_bulk)
            b->stats.stale += b->flush_bulk - (size_t)applied;
        first = 1;
    }
    count_results(b, r, first, pl_db_result_nstmts(r));
    b->stats.record_batches++;
    drop_flushed(b);
    if (b->nbuf > 0)
        flush(b);
    check_idle(b);
}

/* A growing string for array literals. */
struct sbuf {
    char *s;
    size_t len, cap;
};

static void sb_put(struct sbuf *sb, const char *t, size_t n)
{
    if (sb->len + n + 1 > sb->cap) {
        sb->cap = (sb->len + n + 1) * 2;
        sb->s = pl_xrealloc(sb->s, sb->cap);
    }
    memcpy(sb->s + sb->len, t, n);
    sb->len += n;
    sb->s[sb->len] = '\0';
}

/* Append one element to an array literal being built ("{" already in). */
static void arr_add(struct sbuf *sb, const char *v)
{
    if (sb->len > 1)
        sb_put(sb, ",", 1);
    if (!v) {
        sb_put(sb, "NULL", 4);
        return;
    }
    sb_put(sb, "\"", 1);
    for (const char *c = v; *c; c++) {
        if (*c == '"' || *c == '\\')
            sb_put(sb, "\\", 1);
        sb_put(sb, c, 1);
    }
    sb_put(sb, "\"", 1);
}

/* Successes go into one set-based statement; other outcomes one call each.
 * Returns how many records went into the set-based statement. */
static size_t add_records(struct pl_billing *b, struct pl_db_tx *tx, size_t n)
{
    struct sbuf arr[7] = {0};
    size_t bulk = 0;
    for (int k = 0; k < 7; k++)
        sb_put(&arr[k], "{", 1);
    for (size_t i = 0; i < n; i++) {
        const struct record *r = &b->buf[i];
        if (strcmp(r->outcome, "succeeded") != 0)
            continue;
        char charge[24], attempt[16], status[16], fee[24], sends[16];
        snprintf(charge, sizeof(charge), "%" PRId64, r->charge_id);
        snprintf(attempt, sizeof(attempt), "%d", r->attempt_no);
        snprintf(status, sizeof(status), "%ld", r->http_status);
        snprintf(fee, sizeof(fee), "%" PRId64, r->fee_minor);
        snprintf(sends, sizeof(sends), "%u", r->sends);
        arr_add(&arr[0], charge);
        arr_add(&arr[1], attempt);
        arr_add(&arr[2], r->gateway_ref);
        arr_add(&arr[3], r->request_id);
        arr_add(&arr[4], r->http_status > 0 ? status : NULL);
        arr_add(&arr[5], r->has_fee ? fee : NULL);
        arr_add(&arr[6], sends);
        bulk++;
    }
    for (int k = 0; k < 7; k++)
        sb_put(&arr[k], "}", 1);
    if (bulk > 0) {
        const char *p[] = {b->node,     arr[0].s, arr[1].s, arr[2].s, arr[3].s,
                           arr[4].s,    arr[5].s, arr[6].s, b->actor};
        pl_db_tx_add(tx, SQL_RECORD_SUCCEEDED, (int)PL_ARRAY_LEN(p), p);
    }
    for (int k = 0; k < 7; k++)
        free(arr[k].s);
    for (size_t i = 0; i < n; i++)
        if (strcmp(b->buf[i].outcome, "succeeded") != 0)
            add_record_stmt(b, tx, &b->buf[i]);
    return bulk;
}

static void flush(struct pl_billing *b)
{
    if (b->flushing || b->nbuf == 0 || b->freeing)
        return;
    uv_timer_stop(&b->flush_timer);
    size_t n = b->nbuf < (size_t)b->batch_size ? b->nbuf : (size_t)b->batch_size;
    struct pl_db_tx *tx = pl_db_tx_new(b->db);
    b->flush_bulk = add_records(b, tx, n);
    b->nflushing = n;
    b->flushing = true;
    if (db_commit(b, tx, recorded) < 0) {
        b->flushing = false;
        b->nflushing = 0;
        uv_timer_start(&b->flush_timer, flush_retry_fired, DB_RETRY_MS, 0);
    }
}
