/*
 * billing — the charging protocol of DESIGN.md §5 on the daemon's loop:
 * materialise due periods, claim charges under a lease, send them through
 * the gateway driver, record outcomes in batches, reconcile unknown ones.
 *
 * The state machine itself lives in SQL (sql/005_billing.sql: pl_materialise,
 * pl_claim, pl_record), so every transition is one guarded statement; this
 * module decides when to call them and carries work between the database
 * and the gateway.
 *
 * Owns: the work in flight (claimed charges and their gateway operations),
 * the buffer of outcomes not yet recorded, the halt flag, the counters.
 * Never: holds a charge without a lease in the database, sends a request
 * before its attempt row is committed, guesses an unknown outcome, blocks.
 */
#ifndef PL_BILLING_H
#define PL_BILLING_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "db.h"
#include "gateway.h"

struct pl_billing;

struct pl_billing_opts {
    const char *node_name;   /* lease owner; stable across restarts */
    const char *timezone;    /* org time zone (IANA) */
    int charge_time_minutes; /* local time of day a period becomes due */
    enum pl_catch_up catch_up;
    int batch_size;    /* materialise / claim / record batch */
    int max_in_flight; /* requests the gateway client keeps open */
    int rate_limit;    /* gateway requests per second (bounds how much is claimed) */
    int64_t lease_ms;
    int64_t poll_interval_ms; /* timer between scans when nothing wakes us */
    int64_t idempotency_window_ms;
    int64_t lookup_settle_ms; /* trust a lookup's "not found" only after this */
    const struct pl_duration_list *retry_schedule;
    const struct pl_duration_list *reconcile_schedule;
    int lapse_after;
    int64_t unknown_alert_after_ms;
    const char *statement_descriptor_suffix; /* may be NULL */
    bool once;                               /* bill what is due now, then report done */
};

struct pl_billing_stats {
    uint64_t materialised, skipped;      /* charge rows created */
    uint64_t claimed, recovered, checks; /* work taken: new attempts, expired leases, unknowns */
    uint64_t sent;                       /* gateway operations completed */
    uint64_t outcomes[PL_OUT_COUNT];     /* by class, as returned by the gateway */
    uint64_t retry_waits, stale; /* soft declines put on the dunning schedule; late results */
    uint64_t record_batches, record_errors;
    unsigned in_flight, ready, buffered; /* sent / claimed, not yet sent / outcomes to record */
    uint64_t stuck_unknown; /* charges unknown for longer than unknown_alert_after */
    bool halted;
    bool draining;
};

/* Called in --once mode when nothing due is left (err 0), or when billing
 * cannot go on (halted: PL_ECONFLICT; database gone: PL_EDBLOST). */
typedef void (*pl_billing_done_cb)(struct pl_billing *b, int err, void *arg);

/*
 * New engine. db and gw are borrowed and must outlive it (the gateway can
 * be replaced with pl_billing_set_gateway). Options are copied. Nothing
 * happens until pl_billing_start().
 */
struct pl_billing *pl_billing_new(uv_loop_t *loop, struct pl_db *db, struct pl_gateway *gw,
                                  const struct pl_billing_opts *opts, pl_billing_done_cb done,
                                  void *done_arg);

/* Begin: recover this node's own leases, then materialise and claim. */
void pl_billing_start(struct pl_billing *b);

/* Something may be due (NOTIFY pledged_wake, an operator's retry). */
void pl_billing_wake(struct pl_billing *b);

/* Replace the gateway (after a SIGHUP reload) and options that may change
 * live (never the node name: it owns the leases); clears a halt. The old
 * gateway must have no operations left from this engine (drain first) or
 * be kept alive by the caller until idle.
 *
 * Halt: a reply saying our credentials are refused (401/403) stops all
 * claiming. The attempt it answered is withdrawn when it was a first send
 * (nothing executed; no donor's attempt burned, nothing marked declined);
 * a resend or lookup leaves its attempt open for the reconciler. */
void pl_billing_set_gateway(struct pl_billing *b, struct pl_gateway *gw);
void pl_billing_set_opts(struct pl_billing *b, const struct pl_billing_opts *opts);

/*
 * Stop claiming; let sends in flight finish and their outcomes be recorded.
 * A claim that returns after this sends nothing: its new attempts are
 * withdrawn (the charges go back as they were), anything else is released
 * as it was. cb runs once nothing is in flight or buffered. What is still
 * in flight when the caller gives up stays leased in the database for
 * recovery with the same keys.
 */
typedef void (*pl_billing_drained_cb)(struct pl_billing *b, void *arg);
void pl_billing_drain(struct pl_billing *b, pl_billing_drained_cb cb, void *arg);

void pl_billing_stats(const struct pl_billing *b, struct pl_billing_stats *out);
bool pl_billing_halted(const struct pl_billing *b);
const char *pl_billing_halt_reason(const struct pl_billing *b);

/* Cancel gateway operations (their outcomes are NOT recorded: the charges
 * stay leased for recovery) and free. Accepts NULL. */
void pl_billing_free(struct pl_billing *b);

#endif
