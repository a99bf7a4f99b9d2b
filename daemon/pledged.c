/*
 * pledged — the billing service. Parses arguments, loads the config, and
 * wires lib/db, lib/http, lib/gateway and lib/billing onto one libuv loop.
 *
 *   pledged [--config FILE] [--check-config] [--once]
 *
 * Signals: SIGTERM/SIGINT drain (stop claiming, let sends in flight finish
 * up to billing.shutdown_deadline, record them, exit 0; whatever is still
 * in flight stays leased for recovery); SIGHUP reloads what can change
 * live. sd_notify: READY=1 after the schema check on the first connection,
 * STATUS=, WATCHDOG=1 from a loop timer, STOPPING=1.
 */
#include <curl/curl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#ifdef PL_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "pledged.h"
#include "billing.h"
#include "config.h"
#include "db.h"
#include "gateway.h"
#include "http.h"
#include "log.h"
#include "schema.h"
#include "util.h"

#define HEARTBEAT_MS 15000
/* STATUS= is recomputed this often and sent when it changed. */
#define STATUS_MS 1000
/* While halted, the alarm is logged again every this many heartbeats (5 min). */
#define HALT_REMIND_BEATS 20

static const char USAGE[] =
    "usage: pledged [--config FILE] [--check-config] [--once]\n"
    "\n"
    "The pledged billing service: charges due recurring donations exactly once.\n"
    "\n"
    "  -c, --config FILE   configuration (default " PL_CONFIG_DEFAULT_PATH ")\n"
    "      --check-config  validate the configuration and its secrets, then exit 0/1\n"
    "      --once          bill everything due now, wait for every outcome, exit\n"
    "  -h, --help          this help\n"
    "  -V, --version       version\n";

void pledged_notify(const char *state)
{
#ifdef PL_HAVE_SYSTEMD
    sd_notify(0, state);
#else
    (void)state;
#endif
}

/* ---- configuration -------------------------------------------------------- */

static int load_config(const char *path, struct pl_config *cfg, bool report_warnings)
{
    char *errors = NULL;
    if (pl_config_load(path, cfg, &errors) < 0) {
        fprintf(stderr, "pledged: configuration errors:\n%s\n", errors ? errors : "?");
        free(errors);
        return -1;
    }
    unsigned want = PL_SECRET_DB_PASSWORD | PL_SECRET_GATEWAY_API_KEY;
    if (cfg->http.enabled) /* webhooks are refused (503) without it, not fatal */
        want |= PL_SECRET_WEBHOOK_SECRET;
    if (pl_config_load_secrets(cfg, want, PL_SECRET_GATEWAY_API_KEY, &errors) < 0) {
        fprintf(stderr, "pledged: %s\n", errors ? errors : "cannot read secrets");
        free(errors);
        pl_config_release(cfg);
        return -1;
    }
    if (report_warnings && cfg->warnings)
        fprintf(stderr, "pledged: warning: %s\n", cfg->warnings);
    return 0;
}

static void billing_opts_from(const struct pl_config *c, bool once, struct pl_billing_opts *o)
{
    *o = (struct pl_billing_opts){
        .node_name = c->billing.node_name,
        .timezone = c->billing.timezone,
        .charge_time_minutes = c->billing.charge_time_minutes,
        .catch_up = c->billing.catch_up,
        .batch_size = c->billing.batch_size,
        .max_in_flight = c->gateway.max_in_flight,
        .rate_limit = c->gateway.rate_limit,
        .lease_ms = c->billing.lease_ms,
        .poll_interval_ms = c->billing.poll_interval_ms,
        .idempotency_window_ms = c->gateway.idempotency_window_ms,
        .lookup_settle_ms = c->gateway.lookup_settle_ms,
        .retry_schedule = &c->billing.retry_schedule,
        .reconcile_schedule = &c->billing.reconcile_schedule,
        .lapse_after = c->billing.lapse_after,
        .unknown_alert_after_ms = c->billing.unknown_alert_after_ms,
        .statement_descriptor_suffix = c->gateway.statement_descriptor_suffix,
        .once = once,
    };
}

static struct pl_gateway *make_gateway(struct daemon *d, const struct pl_config *c)
{
    struct pl_gateway_opts o;
    pl_gateway_opts_init(&o);
    o.base_url = c->gateway.base_url;
    o.api_key = c->gateway.api_key;
    o.max_retries = (unsigned)c->billing.retry_now_max;
    struct pl_gateway *gw = NULL;
    int r = pl_gateway_new(d->loop, d->http, c->gateway.driver, &o, &gw);
    if (r < 0) {
        pl_log_error("pledged", "cannot set up gateway driver '%s': %s", c->gateway.driver,
                     pl_strerror(r));
        return NULL;
    }
    return gw;
}

/* ---- shutdown ----------------------------------------------------------------- */

static void db_closed(void *arg)
{
    struct daemon *d = arg;
    d->db = NULL;
    uv_stop(d->loop);
}

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void close_all(struct daemon *d)
{
    if (d->closed)
        return;
    d->closed = true;
    pl_billing_free(d->billing);
    d->billing = NULL;
    pl_gateway_free(d->gw);
    pl_gateway_free(d->old_gw);
    d->gw = d->old_gw = NULL;
    pl_http_free(d->http);
    d->http = NULL;
    close_handle((uv_handle_t *)&d->sig_term);
    close_handle((uv_handle_t *)&d->sig_int);
    close_handle((uv_handle_t *)&d->sig_hup);
    close_handle((uv_handle_t *)&d->heartbeat);
    close_handle((uv_handle_t *)&d->watchdog);
    close_handle((uv_handle_t *)&d->deadline);
    close_handle((uv_handle_t *)&d->status_timer);
    pledged_http_stop(d);
    pl_db_free(d->db, db_closed, d);
}

static void drained(struct pl_billing *b, void *arg)
{
    struct daemon *d = arg;
    (void)b;
    pl_log_notice("pledged", "drained: every outcome in flight is recorded");
    close_all(d);
}

static void deadline_passed(uv_timer_t *t)
{
    struct daemon *d = t->data;
    struct pl_billing_stats st = {0};
    if (d->billing)
        pl_billing_stats(d->billing, &st);
    pl_log_warn("pledged",
                "shutdown deadline passed with %u requests in flight; their charges stay leased "
                "and will be recovered with the same idempotency keys",
                st.in_flight);
    close_all(d);
}

static void begin_shutdown(struct daemon *d, const char *why)
{
    if (d->stopping) {
        pl_log_warn("pledged", "%s again: stopping now", why);
        close_all(d);
        return;
    }
    d->stopping = true;
    pledged_notify("STOPPING=1");
    pl_log_notice("pledged", "%s: draining (deadline %" PRId64 " ms)", why,
                  d->cfg.billing.shutdown_deadline_ms);
    uv_timer_start(&d->deadline, deadline_passed, (uint64_t)d->cfg.billing.shutdown_deadline_ms, 0);
    if (d->billing)
        pl_billing_drain(d->billing, drained, d);
    else
        close_all(d);
}

/* ---- status -------------------------------------------------------------------- */

static void status_line(struct daemon *d, char *buf, size_t n)
{
    struct pl_billing_stats st = {0};
    if (d->billing)
        pl_billing_stats(d->billing, &st);
    char stuck[96] = "";
    if (st.stuck_unknown > 0) {
        char after[32];
        pl_config_format_duration(d->cfg.billing.unknown_alert_after_ms, after, sizeof(after));
        snprintf(stuck, sizeof(stuck), "; ALERT: %" PRIu64 " charges unknown for over %s",
                 st.stuck_unknown, after);
    }
    if (st.halted) {
        snprintf(buf, n, "HALTED: %s; fix the key and reload (SIGHUP)%s",
                 pl_billing_halt_reason(d->billing), stuck);
        return;
    }
    snprintf(buf, n,
             "%s; %" PRIu64 " succeeded, %" PRIu64 " declined, %" PRIu64 " unknown, %u in flight%s",
             d->stopping ? "stopping"
             : d->ready  ? "billing"
                         : "starting",
             st.outcomes[PL_OUT_SUCCEEDED],
             st.outcomes[PL_OUT_DECLINED_SOFT] + st.outcomes[PL_OUT_DECLINED_HARD] +
                 st.outcomes[PL_OUT_ACTION_REQUIRED],
             st.outcomes[PL_OUT_UNKNOWN] + st.outcomes[PL_OUT_RETRY_NOW], st.in_flight, stuck);
}

static void reported(const struct pl_db_result *r, int err, void *arg)
{
    (void)r;
    (void)err;
    (void)arg; /* best effort: lib/db logs outages */
}

/* Heartbeat row in daemon_node: what `pledgectl status` shows. */
static void node_report(struct daemon *d, const char *line)
{
    char pid[16];
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    struct pl_billing_stats st = {0};
    if (d->billing)
        pl_billing_stats(d->billing, &st);
    const char *p[] = {d->cfg.billing.node_name,
                       pid,
                       PL_VERSION,
                       st.halted ? "true" : "false",
                       st.halted ? pl_billing_halt_reason(d->billing) : NULL,
                       line};
    if (d->db &&
        pl_db_query(d->db, "SELECT pl_node_report($1, $2::integer, $3, $4::boolean, $5, $6)", 6, p,
                    reported, d) == 0) {
        d->reported_halted = st.halted;
        d->reported_stuck = st.stuck_unknown;
    }
}

static void send_status(struct daemon *d, const char *line)
{
    if (strcmp(line, d->status_sent) == 0)
        return;
    char status[300];
    snprintf(status, sizeof(status), "STATUS=%s", line);
    pledged_notify(status);
    pl_strlcpy(d->status_sent, line, sizeof(d->status_sent));
}

static void status_tick(uv_timer_t *t)
{
    struct daemon *d = t->data;
    char line[256];
    status_line(d, line, sizeof(line));
    send_status(d, line);
    /* A halt (or its end) and stuck outcomes reach operators now, not at
     * the next heartbeat. */
    struct pl_billing_stats st = {0};
    if (d->billing)
        pl_billing_stats(d->billing, &st);
    if (d->ready && (st.halted != d->reported_halted || st.stuck_unknown != d->reported_stuck))
        node_report(d, line);
}

static void heartbeat(uv_timer_t *t)
{
    struct daemon *d = t->data;
    char line[256];
    status_line(d, line, sizeof(line));
    send_status(d, line);
    node_report(d, line);
    if (d->billing && pl_billing_halted(d->billing)) {
        if (++d->halted_beats % HALT_REMIND_BEATS == 0)
            pl_log_error("pledged",
                         "billing is still HALTED: %s; fix the API key and reload "
                         "(SIGHUP)",
                         pl_billing_halt_reason(d->billing));
    } else {
        d->halted_beats = 0;
    }
    if (d->old_gw && pl_gateway_pending(d->old_gw) == 0) {
        pl_gateway_free(d->old_gw);
        d->old_gw = NULL;
    }
}

static void watchdog(uv_timer_t *t)
{
    /* Runs on the loop: if the loop stalls, systemd stops hearing from us. */
    (void)t;
    pledged_notify("WATCHDOG=1");
}

/* ---- start-up ------------------------------------------------------------------ */

static void billing_done(struct pl_billing *b, int err, void *arg)
{
    struct daemon *d = arg;
    struct pl_billing_stats st;
    pl_billing_stats(b, &st);
    pl_log_notice("pledged",
                  "once: %" PRIu64 " charges scheduled, %" PRIu64 " skipped, %" PRIu64
                  " attempts (%" PRIu64 " recovered, %" PRIu64 " checks): %" PRIu64
                  " succeeded, %" PRIu64 " declined (soft), %" PRIu64 " declined (hard), %" PRIu64
                  " action required, %" PRIu64 " unknown",
                  st.materialised, st.skipped, st.sent, st.recovered, st.checks,
                  st.outcomes[PL_OUT_SUCCEEDED], st.outcomes[PL_OUT_DECLINED_SOFT],
                  st.outcomes[PL_OUT_DECLINED_HARD], st.outcomes[PL_OUT_ACTION_REQUIRED],
                  st.outcomes[PL_OUT_UNKNOWN] + st.outcomes[PL_OUT_RETRY_NOW]);
    if (err != 0) {
        pl_log_error("pledged", "billing could not complete: %s",
                     err == PL_ECONFLICT ? pl_billing_halt_reason(b) : pl_strerror(err));
        d->exit_code = 1;
    }
    d->stopping = true;
    close_all(d);
}

static void wake(const char *channel, const char *payload, void *arg)
{
    struct daemon *d = arg;
    (void)channel;
    (void)payload; /* NULL after a (re)LISTEN: rescan anyway */
    if (d->billing && !d->stopping)
        pl_billing_wake(d->billing);
}

static void start_billing(struct daemon *d)
{
    struct pl_billing_opts bo;
    billing_opts_from(&d->cfg, d->once, &bo);
    d->billing = pl_billing_new(d->loop, d->db, d->gw, &bo, billing_done, d);
    if (!d->once)
        pl_db_listen(d->db, "pledged_wake", wake, d);
    pl_billing_start(d->billing);
}

static void schema_checked(const struct pl_db_result *r, int err, void *arg)
{
    struct daemon *d = arg;
    char msg[512];
    if (err == PL_EDB && r && pl_db_result_sqlstate(r) &&
        strcmp(pl_db_result_sqlstate(r), "42P01") == 0) {
        pl_log_error("pledged", "the database has no pledged schema: run `pledgectl migrate`");
        d->exit_code = 1;
        close_all(d);
        return;
    }
    if (err != 0) {
        pl_log_error("pledged", "cannot read the schema version: %s",
                     err == PL_EDB && pl_db_result_error_message(r) ? pl_db_result_error_message(r)
                                                                    : pl_strerror(err));
        d->exit_code = 1;
        close_all(d);
        return;
    }
    int n = pl_db_result_ntuples(r);
    int *versions = pl_xcalloc((size_t)n, sizeof(*versions));
    const char **shas = pl_xcalloc((size_t)n, sizeof(*shas));
    for (int i = 0; i < n; i++) {
        int64_t v = 0;
        pl_db_result_int64(r, i, 0, &v);
        versions[i] = (int)v;
        shas[i] = pl_db_result_text(r, i, 1);
    }
    int rc = pl_schema_check_rows((size_t)n, versions, shas, msg, sizeof(msg));
    free(versions);
    free(shas);
    if (rc < 0) {
        pl_log_error("pledged", "%s", msg);
        d->exit_code = 1;
        close_all(d);
        return;
    }
    d->ready = true;
    pledged_notify("READY=1\nSTATUS=billing");
    pl_strlcpy(d->status_sent, "billing", sizeof(d->status_sent));
    pl_log_notice("pledged", "ready: node %s, schema version %d, gateway %s at %s",
                  d->cfg.billing.node_name, pl_schema_latest(), d->cfg.gateway.driver,
                  d->cfg.gateway.base_url);
    start_billing(d);
    node_report(d, "billing");
}

static void db_ready(struct pl_db *db, void *arg)
{
    struct daemon *d = arg;
    if (pl_db_query(db, PL_SCHEMA_APPLIED_SQL, 0, NULL, schema_checked, d) < 0) {
        d->exit_code = 1;
        close_all(d);
    }
}

/* ---- reload ------------------------------------------------------------------------ */

#define SWAP(a, b)                     \
    do {                               \
        __typeof__(a) swap_tmp_ = (a); \
        (a) = (b);                     \
        (b) = swap_tmp_;               \
    } while (0)

/* Settings that only a restart applies keep their running values, so the
 * configuration in use always describes what the daemon really does (the
 * node name owns the leases in flight; the pool, the driver and the HTTP
 * client were built from the old values). Swapped, so each config still
 * frees what it owns. */
static void keep_restart_only(struct pl_config *next, struct pl_config *running)
{
    SWAP(next->database.conninfo, running->database.conninfo);
    SWAP(next->database.pool_size, running->database.pool_size);
    SWAP(next->gateway.driver, running->gateway.driver);
    SWAP(next->gateway.base_url, running->gateway.base_url);
    SWAP(next->gateway.ca_bundle, running->gateway.ca_bundle);
    /* lib/http has no way to change its timeouts live */
    SWAP(next->gateway.connect_timeout_ms, running->gateway.connect_timeout_ms);
    SWAP(next->gateway.request_timeout_ms, running->gateway.request_timeout_ms);
    SWAP(next->billing.node_name, running->billing.node_name);
    SWAP(next->http.listen, running->http.listen);
    SWAP(next->http.listen_host, running->http.listen_host);
    SWAP(next->http.listen_port, running->http.listen_port);
    SWAP(next->http.enabled, running->http.enabled);
}

static void reload(struct daemon *d)
{
    struct pl_config next;
    if (load_config(d->config_path, &next, false) < 0) {
        pl_log_error("pledged", "reload refused: the new configuration is invalid; keeping "
                                "the running one");
        return;
    }
    char *summary = NULL;
    bool restart = false;
    pl_config_diff(&d->cfg, &next, &summary, &restart);
    bool timeouts_changed = next.gateway.connect_timeout_ms != d->cfg.gateway.connect_timeout_ms ||
                            next.gateway.request_timeout_ms != d->cfg.gateway.request_timeout_ms;
    if (next.billing.lease_ms <=
        d->cfg.gateway.connect_timeout_ms + d->cfg.gateway.request_timeout_ms) {
        pl_log_error("pledged", "reload refused: [billing] lease must stay longer than the "
                                "running [gateway] connect_timeout + request_timeout (they "
                                "change only on a restart); keeping the running configuration");
        pl_config_release(&next);
        free(summary);
        return;
    }
    keep_restart_only(&next, &d->cfg);
    pl_log_setup(next.log.level, next.log.format);
    pl_http_set_limits(d->http, (unsigned)next.gateway.max_in_flight,
                       (unsigned)next.gateway.rate_limit, (unsigned)next.gateway.rate_burst);
    struct pl_gateway *gw = make_gateway(d, &next);
    if (!gw) {
        pl_log_error("pledged", "reload refused: gateway settings rejected");
        pl_config_release(&next);
        free(summary);
        return;
    }
    if (d->old_gw) /* a reload before the previous one went idle */
        pl_gateway_free(d->old_gw);
    d->old_gw = d->gw;
    d->gw = gw;
    if (d->billing) {
        struct pl_billing_opts bo;
        billing_opts_from(&next, d->once, &bo);
        pl_billing_set_opts(d->billing, &bo);
        pl_billing_set_gateway(d->billing, gw);
    }
    pl_config_release(&d->cfg);
    d->cfg = next;
    pl_log_notice("pledged", "configuration reloaded: %s%s%s",
                  summary && *summary ? summary : "nothing changed",
                  restart ? " (some changes take effect only after a restart)" : "",
                  timeouts_changed ? "; gateway connect_timeout/request_timeout take effect "
                                     "only after a restart"
                                   : "");
    free(summary);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct daemon *d = s->data;
    if (signum == SIGHUP)
        reload(d);
    else
        begin_shutdown(d, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ---- main ---------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    /* clang-format off */
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", no_argument, NULL, 'k'},
        {"once", no_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    /* clang-format on */
    struct daemon d = {.config_path = PL_CONFIG_DEFAULT_PATH};
    bool check_only = false;
    int c;
    while ((c = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            d.config_path = optarg;
            break;
        case 'k':
            check_only = true;
            break;
        case 'o':
            d.once = true;
            break;
        case 'h':
            fputs(USAGE, stdout);
            return 0;
        case 'V':
            printf("pledged %s\n", PL_VERSION);
            return 0;
        default:
            fputs(USAGE, stderr);
            return 2;
        }
    }
    if (optind < argc) {
        /* `pledged --check-config FILE` reads naturally; accept it. */
        if (check_only && optind + 1 == argc) {
            d.config_path = argv[optind];
        } else {
            fprintf(stderr, "pledged: unexpected argument '%s'\n%s", argv[optind], USAGE);
            return 2;
        }
    }

    if (load_config(d.config_path, &d.cfg, true) < 0)
        return 1;
    if (check_only) {
        printf("%s: configuration OK\n", d.config_path);
        pl_config_release(&d.cfg);
        return 0;
    }
    pl_log_setup(d.cfg.log.level, d.cfg.log.format);
    signal(SIGPIPE, SIG_IGN);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        pl_log_error("pledged", "cannot initialise libcurl");
        return 1;
    }

    d.loop = uv_default_loop();
    struct pl_http_opts ho = {
        .max_in_flight = (unsigned)d.cfg.gateway.max_in_flight,
        .rate_limit = (unsigned)d.cfg.gateway.rate_limit,
        .rate_burst = (unsigned)d.cfg.gateway.rate_burst,
        .connect_timeout_ms = (unsigned)d.cfg.gateway.connect_timeout_ms,
        .request_timeout_ms = (unsigned)d.cfg.gateway.request_timeout_ms,
        .ca_bundle = d.cfg.gateway.ca_bundle,
    };
    d.http = pl_http_new(d.loop, &ho);
    if (!d.http) {
        pl_log_error("pledged", "cannot set up the HTTP client");
        return 1;
    }
    d.gw = make_gateway(&d, &d.cfg);
    if (!d.gw)
        return 1;

    struct pl_db_opts dbo = {
        .conninfo = d.cfg.database.conninfo[0] ? d.cfg.database.conninfo : NULL,
        .password = d.cfg.database.password,
        .application_name = "pledged",
        .pool_size = (unsigned)d.cfg.database.pool_size,
        .connect_timeout_ms = (unsigned)d.cfg.database.connect_timeout_ms,
        .queue_deadline_ms = (unsigned)d.cfg.database.queue_deadline_ms,
        .on_ready = db_ready,
        .ready_arg = &d,
    };
    int err = 0;
    d.db = pl_db_new(d.loop, &dbo, &err);
    if (!d.db) {
        pl_log_error("pledged", "invalid database settings: %s", pl_strerror(err));
        return 1;
    }

    uv_signal_init(d.loop, &d.sig_term);
    uv_signal_init(d.loop, &d.sig_int);
    uv_signal_init(d.loop, &d.sig_hup);
    d.sig_term.data = d.sig_int.data = d.sig_hup.data = &d;
    uv_signal_start(&d.sig_term, on_signal, SIGTERM);
    uv_signal_start(&d.sig_int, on_signal, SIGINT);
    uv_signal_start(&d.sig_hup, on_signal, SIGHUP);

    uv_timer_init(d.loop, &d.heartbeat);
    uv_timer_init(d.loop, &d.watchdog);
    uv_timer_init(d.loop, &d.deadline);
    uv_timer_init(d.loop, &d.status_timer);
    d.heartbeat.data = d.watchdog.data = d.deadline.data = d.status_timer.data = &d;
    uv_timer_start(&d.heartbeat, heartbeat, HEARTBEAT_MS, HEARTBEAT_MS);
    uv_timer_start(&d.status_timer, status_tick, STATUS_MS, STATUS_MS);
    if (pledged_http_start(&d) < 0) {
        /* Close what was opened, through the loop, so nothing leaks. */
        d.exit_code = 1;
        close_all(&d);
    }
#ifdef PL_HAVE_SYSTEMD
    if (sd_watchdog_enabled(0, &d.watchdog_usec) > 0 && d.watchdog_usec > 0) {
        uint64_t every_ms = d.watchdog_usec / 2000;
        uv_timer_start(&d.watchdog, watchdog, every_ms ? every_ms : 1, every_ms ? every_ms : 1);
    }
#endif
    /* The loop must not be kept alive by the heartbeat alone in --once mode
     * once everything else has closed; close_all() closes it. */
    uv_run(d.loop, UV_RUN_DEFAULT);
    /* Let close callbacks run. */
    uv_run(d.loop, UV_RUN_NOWAIT);
    pl_config_release(&d.cfg);
    curl_global_cleanup();
    return d.exit_code;
}
