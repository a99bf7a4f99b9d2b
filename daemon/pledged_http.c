/*
 * pledged_http — the daemon's local HTTP listener ([http] in the config):
 *
 *   GET  /healthz          200 {"status":"ok",...} when the database is
 *                          connected, the loop keeps time and billing is not
 *                          halted; 503 with the reason otherwise
 *   GET  /metrics          Prometheus text exposition (version 0.0.4)
 *   POST /webhooks/stripe  signed gateway events: refunds and disputes
 *
 * libmicrohttpd runs in "external polling" mode on the daemon's one libuv
 * loop: its epoll fd is watched by a uv_poll, MHD_get_timeout() drives a
 * uv_timer, and MHD_run() is called from either — never from inside MHD's
 * own callbacks. No MHD thread exists, so handlers may touch loop state.
 * A webhook waits for its database transaction with the connection
 * suspended (MHD_suspend_connection) and is resumed from the db callback.
 *
 * Everything the handlers read is cached or computed on the spot: the due
 * backlog and the count of unknown attempts come from a periodic async
 * query, the loop lag from a repeating timer. Nothing here blocks.
 *
 * Not started in --once mode (a cron run has no one to probe it, and would
 * collide with the running service's port).
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "pledged.h"
#include "billing.h"
#include "db.h"
#include "gateway.h"
#include "http.h"
#include "log.h"
#include "util.h"
#include "webhook.h"

#define LOG "http"

#define CONNECTION_LIMIT     64
#define CONNECTION_TIMEOUT_S 10
#define LAG_INTERVAL_MS      500
#define LAG_UNHEALTHY_MS     5000 /* /healthz fails when a tick came this late */
#define BACKLOG_INTERVAL_MS  15000
#define GATEWAY_NAME         "stripe"
#define WEBHOOK_ACTOR        "webhook:stripe"

enum route {
    ROUTE_NONE = 0,
    ROUTE_HEALTHZ,
    ROUTE_METRICS,
    ROUTE_WEBHOOK,
};

/* Counted webhook results, the label of pledged_webhooks_total. */
enum wh_result {
    WH_RECORDED = 0,
    WH_ALREADY_RECORDED,
    WH_DUPLICATE,
    WH_UNKNOWN_CHARGE,
    WH_IGNORED,
    WH_REJECTED, /* bad signature, stale, malformed, too large: 4xx */
    WH_RETRY,    /* 5xx: the gateway will redeliver */
    WH_COUNT,
};
static const char *const wh_result_names[WH_COUNT] = {
    "recorded", "already_recorded", "duplicate", "unknown_charge", "ignored", "rejected", "retry",
};

struct pledged_http;

/* One HTTP request; MHD's con_cls. Freed once MHD is done with the
 * connection and no database callback is pending. */
struct request {
    struct pledged_http *h; /* NULL once detached by pledged_http_stop */
    struct MHD_Connection *conn;
    struct request *next, *prev; /* h->waiting, while suspended */
    enum route route;
    char *body;
    size_t len;
    bool too_big, suspended, db_pending, conn_gone, answered;
    unsigned status; /* set by the db callback */
    char *reply;     /* JSON body to send once resumed */
    char event_id[PL_WEBHOOK_ID_MAX];
    char type[64];
};

struct pledged_http {
    struct daemon *d;
    struct MHD_Daemon *mhd;
    uv_poll_t poll;
    uv_timer_t mhd_timer, lag_timer, backlog_timer;
    unsigned refs; /* open handles + database callbacks outstanding */
    bool stopping;
    char *secret; /* copy of the webhook secret read at start */
    int64_t max_body;
    struct request *waiting;

    uint64_t lag_expected_ns;
    int64_t lag_ms, lag_max_ms;

    bool backlog_known, backlog_in_flight;
    int64_t due_backlog, unknown_attempts;

    uint64_t webhooks[WH_COUNT];
    uint64_t requests;
};

/* ---- lifetime --------------------------------------------------------------------- */

static void unref(struct pledged_http *h)
{
    if (--h->refs > 0)
        return;
    if (h->secret) {
        explicit_bzero(h->secret, strlen(h->secret));
        free(h->secret);
    }
    free(h);
}

static void handle_closed(uv_handle_t *handle)
{
    unref(handle->data);
}

static void request_free(struct request *req)
{
    free(req->body);
    free(req->reply);
    free(req);
}

static void unlink_waiting(struct request *req)
{
    struct pledged_http *h = req->h;
    if (!h)
        return;
    if (req->prev)
        req->prev->next = req->next;
    else if (h->waiting == req)
        h->waiting = req->next;
    if (req->next)
        req->next->prev = req->prev;
    req->next = req->prev = NULL;
}

/* ---- MHD on the loop ----------------------------------------------------------------- */

static void run_mhd(struct pledged_http *h);

static void mhd_timer_fired(uv_timer_t *t)
{
    run_mhd(pl_container_of(t, struct pledged_http, mhd_timer));
}

static void mhd_readable(uv_poll_t *p, int status, int events)
{
    (void)events;
    struct pledged_http *h = pl_container_of(p, struct pledged_http, poll);
    if (status < 0)
        pl_log_warn(LOG, "poll error on the listener: %s", uv_strerror(status));
    run_mhd(h);
}

/* Let MHD do what is ready, then arm the timer for what it waits on. */
static void run_mhd(struct pledged_http *h)
{
    if (!h->mhd || h->stopping)
        return;
    if (MHD_run(h->mhd) != MHD_YES)
        pl_log_warn(LOG, "MHD_run failed");
    MHD_UNSIGNED_LONG_LONG timeout_ms = 0;
    if (MHD_get_timeout(h->mhd, &timeout_ms) == MHD_YES)
        uv_timer_start(&h->mhd_timer, mhd_timer_fired, (uint64_t)timeout_ms, 0);
    else
        uv_timer_stop(&h->mhd_timer);
}

/* Run MHD on the next loop iteration (after a resume: never from inside
 * one of MHD's callbacks). */
static void kick_mhd(struct pledged_http *h)
{
    if (h && h->mhd && !h->stopping)
        uv_timer_start(&h->mhd_timer, mhd_timer_fired, 0, 0);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    pl_rstrip(msg);
    pl_log_warn(LOG, "libmicrohttpd: %s", msg);
}

/* ---- replies ------------------------------------------------------------------------- */

static enum MHD_Result send_reply(struct MHD_Connection *conn, unsigned status,
                                  const char *content_type, const char *body, size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD, POST");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *conn, unsigned status, const char *json)
{
    return send_reply(conn, status, "application/json", json, strlen(json));
}

/* `in` as the inside of a JSON string (quotes, backslashes, controls escaped). */
static void json_escape(const char *in, char *out, size_t n)
{
    size_t j = 0;
    for (const char *p = in; *p && j + 7 < n; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            out[j++] = '\\';
            out[j++] = (char)c;
        } else if (c < 0x20) {
            j += (size_t)snprintf(out + j, n - j, "\\u%04x", c);
        } else {
            out[j++] = (char)c;
        }
    }
    out[j] = '\0';
}

/* {"error": "<msg>"}: a new string. */
static char *error_json(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *error_json(const char *fmt, ...)
{
    char msg[400], esc[820];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_escape(msg, esc, sizeof(esc));
    return pl_xasprintf("{\"error\":\"%s\"}\n", esc);
}

/* ---- /healthz -------------------------------------------------------------------------- */

static enum MHD_Result healthz(struct pledged_http *h, struct MHD_Connection *conn)
{
    struct daemon *d = h->d;
    struct pl_db_stats ds = {0};
    pl_db_stats(d->db, &ds);
    bool halted = d->billing && pl_billing_halted(d->billing);
    const char *reason = NULL;
    char buf[300];
    if (d->stopping)
        reason = "stopping";
    else if (ds.connections_up == 0)
        reason = "database not connected";
    else if (h->lag_ms >= LAG_UNHEALTHY_MS)
        reason = "event loop lagging";
    else if (halted) {
        snprintf(buf, sizeof(buf), "billing halted: %s", pl_billing_halt_reason(d->billing));
        reason = buf;
    } else if (!d->ready || !d->billing)
        reason = "starting";
    char *body;
    if (reason) {
        char esc[700];
        json_escape(reason, esc, sizeof(esc));
        body = pl_xasprintf("{\"status\":\"unavailable\",\"reason\":\"%s\"}\n", esc);
    } else {
        body = pl_xasprintf("{\"status\":\"ok\",\"version\":\"%s\",\"db_connections\":%u,"
                            "\"loop_lag_ms\":%" PRId64 "}\n",
                            PL_VERSION, ds.connections_up, h->lag_ms);
    }
    enum MHD_Result r = send_json(conn, reason ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK, body);
    free(body);
    return r;
}

/* ---- /metrics -------------------------------------------------------------------------- */

static void metric_head(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metric_u64(FILE *f, const char *name, const char *type, const char *help, uint64_t v)
{
    metric_head(f, name, type, help);
    fprintf(f, "%s %" PRIu64 "\n", name, v);
}

static enum MHD_Result metrics(struct pledged_http *h, struct MHD_Connection *conn)
{
    struct daemon *d = h->d;
    struct pl_billing_stats bs = {0};
    struct pl_http_stats hs = {0};
    struct pl_db_stats ds = {0};
    if (d->billing)
        pl_billing_stats(d->billing, &bs);
    if (d->http)
        pl_http_stats(d->http, &hs);
    pl_db_stats(d->db, &ds);

    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return send_json(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "{\"error\":\"out of memory\"}\n");

    metric_head(f, "pledged_build_info", "gauge", "Version of the running pledged.");
    fprintf(f, "pledged_build_info{version=\"%s\"} 1\n", PL_VERSION);
    metric_u64(f, "pledged_ready", "gauge", "1 once the schema check passed and billing runs.",
               d->ready ? 1 : 0);
    metric_u64(f, "pledged_billing_halted", "gauge",
               "1 while billing is halted (gateway credentials refused).", bs.halted ? 1 : 0);

    metric_head(f, "pledged_charge_outcomes_total", "counter",
                "Gateway operations completed by this process, by outcome class.");
    for (int i = 0; i < PL_OUT_COUNT; i++)
        fprintf(f, "pledged_charge_outcomes_total{outcome=\"%s\"} %" PRIu64 "\n",
                pl_outcome_name((enum pl_outcome)i), bs.outcomes[i]);
    metric_head(f, "pledged_charge_attempts_total", "counter",
                "Charge work taken by this process: new attempts, recovered leases, checks "
                "of unknown outcomes.");
    fprintf(f, "pledged_charge_attempts_total{kind=\"new\"} %" PRIu64 "\n", bs.claimed);
    fprintf(f, "pledged_charge_attempts_total{kind=\"recovered\"} %" PRIu64 "\n", bs.recovered);
    fprintf(f, "pledged_charge_attempts_total{kind=\"check\"} %" PRIu64 "\n", bs.checks);
    metric_u64(f, "pledged_charges_materialised_total", "counter",
               "Charge rows created for due periods.", bs.materialised);
    metric_u64(f, "pledged_charges_skipped_total", "counter",
               "Missed periods recorded as skipped (catch-up policy).", bs.skipped);
    metric_u64(f, "pledged_retry_waits_total", "counter",
               "Soft declines put on the dunning schedule.", bs.retry_waits);
    metric_u64(f, "pledged_charges_in_flight", "gauge", "Charges sent and not yet answered.",
               bs.in_flight);

    metric_u64(f, "pledged_gateway_requests_in_flight", "gauge",
               "HTTP requests to the gateway in flight.", hs.in_flight);
    metric_u64(f, "pledged_gateway_requests_queued", "gauge",
               "HTTP requests to the gateway waiting for a slot or the rate limit.", hs.queued);
    metric_head(f, "pledged_gateway_request_duration_seconds", "histogram",
                "Duration of gateway HTTP requests that got a reply.");
    for (int i = 0; i < PL_HTTP_N_BUCKETS; i++) {
        if (i < PL_HTTP_N_BUCKETS - 1)
            fprintf(
                f, "pledged_gateway_request_duration_seconds_bucket{le=\"%u.%03u\"} %" PRIu64 "\n",
                pl_http_bucket_ms[i] / 1000, pl_http_bucket_ms[i] % 1000, hs.duration_buckets[i]);
        else
            fprintf(f, "pledged_gateway_request_duration_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n",
                    hs.duration_buckets[i]);
    }
    fprintf(f, "pledged_gateway_request_duration_seconds_sum %" PRIu64 ".%06" PRIu64 "\n",
            hs.duration_us_sum / 1000000, hs.duration_us_sum % 1000000);
    fprintf(f, "pledged_gateway_request_duration_seconds_count %" PRIu64 "\n",
            hs.duration_buckets[PL_HTTP_N_BUCKETS - 1]);
    metric_head(f, "pledged_gateway_responses_total", "counter",
                "Gateway HTTP requests completed, by status class (none: no reply).");
    static const char *const classes[6] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
    for (int i = 0; i < 6; i++)
        fprintf(f, "pledged_gateway_responses_total{class=\"%s\"} %" PRIu64 "\n", classes[i],
                hs.by_class[i]);

    /* no sample until the first count arrived: absent is not zero */
    metric_head(f, "pledged_due_backlog", "gauge",
                "Charges due now and not yet claimed (all daemons; refreshed every 15s).");
    if (h->backlog_known)
        fprintf(f, "pledged_due_backlog %" PRId64 "\n", h->due_backlog);
    metric_head(f, "pledged_unknown_attempts", "gauge",
                "Charge attempts whose outcome is unknown and awaits reconciliation "
                "(all daemons; refreshed every 15s).");
    if (h->backlog_known)
        fprintf(f, "pledged_unknown_attempts %" PRId64 "\n", h->unknown_attempts);

    metric_u64(f, "pledged_db_connections_up", "gauge", "Pool connections usable now.",
               ds.connections_up);
    metric_u64(f, "pledged_db_reconnects_total", "counter",
               "Successful database connects after a loss or failure.", ds.reconnects);
    metric_u64(f, "pledged_db_connect_failures_total", "counter",
               "Failed database connection attempts.", ds.connect_failures);
    metric_u64(f, "pledged_db_queue_length", "gauge", "Database units waiting for a connection.",
               ds.queue_len);
    metric_u64(f, "pledged_db_errors_total", "counter", "Database units the server refused.",
               ds.errors);

    metric_head(f, "pledged_loop_lag_seconds", "gauge",
                "How late the last event-loop tick ran (a blocked loop shows here).");
    fprintf(f, "pledged_loop_lag_seconds %" PRId64 ".%03" PRId64 "\n", h->lag_ms / 1000,
            h->lag_ms % 1000);
    metric_head(f, "pledged_loop_lag_max_seconds", "gauge",
                "Largest event-loop lag seen since start.");
    fprintf(f, "pledged_loop_lag_max_seconds %" PRId64 ".%03" PRId64 "\n", h->lag_max_ms / 1000,
            h->lag_max_ms % 1000);

    metric_head(f, "pledged_webhooks_total", "counter", "Webhook deliveries by result.");
    for (int i = 0; i < WH_COUNT; i++)
        fprintf(f, "pledged_webhooks_total{result=\"%s\"} %" PRIu64 "\n", wh_result_names[i],
                h->webhooks[i]);
    metric_u64(f, "pledged_http_requests_total", "counter", "Requests received by this listener.",
               h->requests);

    if (fclose(f) != 0) {
        free(text);
        return send_json(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "{\"error\":\"out of memory\"}\n");
    }
    enum MHD_Result r =
        send_reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
    return r;
}

/* ---- /webhooks/stripe ------------------------------------------------------------------- */

/* Append `s` to a PostgreSQL array literal as a quoted element. */
static void array_elem(FILE *f, const char *s, bool first)
{
    fputs(first ? "" : ",", f);
    if (!s) {
        fputs("NULL", f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void webhook_recorded(const struct pl_db_result *r, int err, void *arg);

/* Finish a suspended request: keep the reply, resume, let MHD send it. */
static void answer_later(struct request *req, unsigned status, char *reply)
{
    req->status = status;
    free(req->reply);
    req->reply = reply;
    req->answered = true;
    if (req->suspended && !req->conn_gone) {
        req->suspended = false;
        unlink_waiting(req);
        MHD_resume_connection(req->conn);
        kick_mhd(req->h);
    }
}

/* Returns MHD_YES with a reply queued, or with the connection suspended
 * while the database records the event. */
static enum MHD_Result webhook(struct pledged_http *h, struct request *req)
{
    struct daemon *d = h->d;
    struct MHD_Connection *conn = req->conn;
    enum MHD_Result ret;
    char *e = NULL;
    if (req->too_big) {
        h->webhooks[WH_REJECTED]++;
        pl_log_warn(LOG, "webhook refused: body larger than [http] max_body (%" PRId64 " bytes)",
                    h->max_body);
        e = error_json("request body larger than %" PRId64 " bytes", h->max_body);
        ret = send_json(conn, MHD_HTTP_CONTENT_TOO_LARGE, e);
        free(e);
        return ret;
    }
    const char *secret = d->cfg.http.webhook_secret ? d->cfg.http.webhook_secret : h->secret;
    if (!secret) {
        h->webhooks[WH_RETRY]++;
        pl_log_error(LOG, "webhook refused: no webhook signing secret configured (set [http] "
                          "webhook_secret_file or the systemd credential webhook_secret)");
        return send_json(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
                         "{\"error\":\"webhooks are not configured\"}\n");
    }
    const char *sig = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Stripe-Signature");
    int64_t t = 0;
    enum pl_webhook_verdict v = pl_webhook_verify(sig, req->body ? req->body : "", req->len, secret,
                                                  (int64_t)time(NULL), PL_WEBHOOK_TOLERANCE_S, &t);
    if (v != PL_WEBHOOK_VALID) {
        h->webhooks[WH_REJECTED]++;
        pl_log_warn(LOG, "webhook refused: %s (signed at %" PRId64 ", %zu bytes)",
                    pl_webhook_verdict_name(v), t, req->len);
        e = error_json("signature: %s", pl_webhook_verdict_name(v));
        ret = send_json(conn, MHD_HTTP_BAD_REQUEST, e);
        free(e);
        return ret;
    }
    char why[200];
    struct pl_webhook_event *ev = NULL;
    if (pl_webhook_parse_event(req->body, req->len, &ev, why, sizeof(why)) < 0) {
        h->webhooks[WH_REJECTED]++;
        pl_log_warn(LOG, "webhook refused: signed, but the event is malformed: %s", why);
        e = error_json("malformed event: %s", why);
        ret = send_json(conn, MHD_HTTP_BAD_REQUEST, e);
        free(e);
        return ret;
    }
    pl_strlcpy(req->event_id, ev->id, sizeof(req->event_id));
    pl_strlcpy(req->type, ev->type, sizeof(req->type));
    if (ev->kind == PL_WEBHOOK_OTHER) {
        h->webhooks[WH_IGNORED]++;
        pl_log_info(LOG, "webhook %s (%s): not a type pledged acts on; acknowledged", ev->id,
                    ev->type);
        pl_webhook_event_free(ev);
        return send_json(conn, MHD_HTTP_OK, "{\"received\":true,\"result\":\"ignored\"}\n");
    }
    if (!ev->payment_intent[0]) {
        h->webhooks[WH_UNKNOWN_CHARGE]++;
        pl_log_notice(LOG,
                      "webhook %s (%s): object %s has no payment intent: not a pledged "
                      "charge; nothing recorded",
                      ev->id, ev->type, ev->object_id);
        pl_webhook_event_free(ev);
        return send_json(conn, MHD_HTTP_OK, "{\"received\":true,\"result\":\"unknown_charge\"}\n");
    }

    /* the refunds that moved money, as array literals */
    char *refs = NULL, *amounts = NULL, *tags = NULL;
    size_t n1, n2, n3;
    FILE *f1 = open_memstream(&refs, &n1), *f2 = open_memstream(&amounts, &n2),
         *f3 = open_memstream(&tags, &n3);
    if (!f1 || !f2 || !f3)
        abort(); /* out of memory, as pl_x* */
    fputc('{', f1), fputc('{', f2), fputc('{', f3);
    bool first = true;
    for (size_t i = 0; i < ev->nrefunds; i++) {
        const struct pl_webhook_refund *rf = &ev->refunds[i];
        if (strcmp(rf->status, "succeeded") != 0)
            continue;
        array_elem(f1, rf->id, first);
        fprintf(f2, "%s%" PRId64, first ? "" : ",", rf->amount_minor);
        array_elem(f3, rf->pledged_refund[0] ? rf->pledged_refund : NULL, first);
        first = false;
    }
    fputc('}', f1), fputc('}', f2), fputc('}', f3);
    fclose(f1), fclose(f2), fclose(f3);
    /* no list at all → NULL arrays: the SQL falls back to amount_refunded */
    bool have_list = ev->refunds != NULL;
    char amount[24], refunded[24];
    snprintf(amount, sizeof(amount), "%" PRId64, ev->amount_minor);
    snprintf(refunded, sizeof(refunded), "%" PRId64, ev->amount_refunded_minor);
    const char *params[13] = {
        GATEWAY_NAME,
        ev->id,
        ev->type,
        ev->payment_intent,
        ev->object_id,
        ev->currency,
        amount,
        refunded,
        have_list ? refs : NULL,
        have_list ? amounts : NULL,
        have_list ? tags : NULL,
        ev->reason,
        WEBHOOK_ACTOR,
    };
    struct pl_db_tx *tx = pl_db_tx_new(d->db);
    int rc = tx ? pl_db_tx_add(tx,
                               "SELECT outcome, charge_id, recorded, recorded_minor FROM "
                               "pl_webhook_record($1, $2, $3, $4, $5, $6, $7::bigint, $8::bigint, "
                               "$9::text[], $10::bigint[], $11::text[], $12, $13)",
                               13, params)
                : PL_EINVAL;
    free(refs);
    free(amounts);
    free(tags);
    pl_webhook_event_free(ev);
    if (rc >= 0)
        rc = pl_db_tx_commit(tx, webhook_recorded, req);
    else
        pl_db_tx_free(tx);
    if (rc < 0) {
        h->webhooks[WH_RETRY]++;
        pl_log_error(LOG, "webhook %s: cannot queue the database work: %s", req->event_id,
                     pl_strerror(rc));
        return send_json(conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
                         "{\"error\":\"cannot record the event now\"}\n");
    }
    req->db_pending = true;
    req->suspended = true;
    req->next = h->waiting;
    if (h->waiting)
        h->waiting->prev = req;
    h->waiting = req;
    MHD_suspend_connection(conn);
    return MHD_YES;
}

static void webhook_recorded(const struct pl_db_result *r, int err, void *arg)
{
    struct request *req = arg;
    struct pledged_http *h = req->h;
    req->db_pending = false;
    if (!h || req->conn_gone) {
        /* the listener stopped or the client left: nothing to answer */
        if (req->conn_gone)
            request_free(req);
        return;
    }
    const char *state = err == PL_EDB && r ? pl_db_result_sqlstate(r) : NULL;
    const char *msg = err == PL_EDB && r ? pl_db_result_error_message(r) : NULL;
    if (err == 0) {
        const char *outcome = pl_db_result_text(r, 0, 0);
        const char *charge = pl_db_result_text(r, 0, 1);
        const char *count = pl_db_result_text(r, 0, 2);
        const char *minor = pl_db_result_text(r, 0, 3);
        outcome = outcome ? outcome : "?";
        enum wh_result res = WH_IGNORED;
        for (int i = 0; i < WH_COUNT; i++)
            if (strcmp(outcome, wh_result_names[i]) == 0)
                res = (enum wh_result)i;
        if (strcmp(outcome, "currency_mismatch") == 0) {
            res = WH_REJECTED;
            pl_log_error(LOG,
                         "webhook %s (%s): currency differs from charge %s: recorded in "
                         "the audit log, no money recorded; check the gateway account",
                         req->event_id, req->type, charge ? charge : "?");
        } else if (res == WH_UNKNOWN_CHARGE) {
            pl_log_notice(LOG,
                          "webhook %s (%s): no charge has this payment intent; nothing "
                          "recorded",
                          req->event_id, req->type);
        } else if (res == WH_DUPLICATE) {
            pl_log_info(LOG, "webhook %s (%s): seen before; nothing changed", req->event_id,
                        req->type);
        } else {
            pl_log_notice(LOG, "webhook %s (%s): charge %s: %s (%s rows, %s minor units)",
                          req->event_id, req->type, charge ? charge : "?", outcome,
                          count ? count : "0", minor ? minor : "0");
        }
        h->webhooks[res]++;
        answer_later(req, MHD_HTTP_OK,
                     pl_xasprintf("{\"received\":true,\"result\":\"%s\"%s%s}\n", outcome,
                                  charge ? ",\"charge_id\":" : "", charge ? charge : ""));
        return;
    }
    if (state && strcmp(state, "PLW01") == 0) {
        /* the charge's success is not recorded yet: let the gateway redeliver */
        h->webhooks[WH_RETRY]++;
        pl_log_warn(LOG, "webhook %s (%s): %s; asking the gateway to redeliver later",
                    req->event_id, req->type, msg ? msg : "charge not succeeded");
        answer_later(req, MHD_HTTP_SERVICE_UNAVAILABLE, error_json("%s", msg ? msg : "retry"));
        return;
    }
    if (state && strcmp(state, "PLW02") == 0) {
        h->webhooks[WH_REJECTED]++;
        pl_log_error(LOG,
                     "webhook %s (%s): %s; nothing recorded: compare the gateway's "
                     "refunds with `pledgectl charge show`",
                     req->event_id, req->type, msg ? msg : "refund exceeds the charge");
        answer_later(req, MHD_HTTP_CONFLICT, error_json("%s", msg ? msg : "conflict"));
        return;
    }
    h->webhooks[WH_RETRY]++;
    pl_log_error(LOG, "webhook %s (%s): not recorded: %s", req->event_id, req->type,
                 msg ? msg : pl_strerror(err));
    answer_later(
        req, err == PL_EDB ? MHD_HTTP_INTERNAL_SERVER_ERROR : MHD_HTTP_SERVICE_UNAVAILABLE,
        error_json("not recorded: %s", err == PL_EDB ? "database error" : pl_strerror(err)));
}

/* ---- dispatch --------------------------------------------------------------------------- */

static enum route route_of(const char *url)
{
    if (strcmp(url, "/healthz") == 0)
        return ROUTE_HEALTHZ;
    if (strcmp(url, "/metrics") == 0)
        return ROUTE_METRICS;
    if (strcmp(url, "/webhooks/" GATEWAY_NAME) == 0)
        return ROUTE_WEBHOOK;
    return ROUTE_NONE;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    struct pledged_http *h = cls;
    struct request *req = *con_cls;
    if (!req) {
        req = pl_xcalloc(1, sizeof(*req));
        req->h = h;
        req->conn = conn;
        req->route = route_of(url);
        *con_cls = req;
        h->requests++;
        bool get =
            strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
        bool post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
        switch (req->route) {
        case ROUTE_NONE:
            return send_json(conn, MHD_HTTP_NOT_FOUND, "{\"error\":\"not found\"}\n");
        case ROUTE_HEALTHZ:
            return get ? healthz(h, conn)
                       : send_json(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                                   "{\"error\":\"method not allowed\"}\n");
        case ROUTE_METRICS:
            return get ? metrics(h, conn)
                       : send_json(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                                   "{\"error\":\"method not allowed\"}\n");
        case ROUTE_WEBHOOK:
            if (!post)
                return send_json(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                                 "{\"error\":\"method not allowed\"}\n");
            /* refuse a declared oversize body before reading any of it */
            const char *cl =
                MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            uint64_t declared = 0;
            if (cl && pl_parse_u64(cl, &declared) == 0 && declared > (uint64_t)h->max_body) {
                req->too_big = true;
                return webhook(h, req);
            }
            return MHD_YES; /* the body follows */
        }
        return MHD_NO;
    }
    if (req->route != ROUTE_WEBHOOK)
        return MHD_NO; /* a body sent to a GET route: drop the connection */
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (req->too_big || req->len + n > (size_t)h->max_body) {
            req->too_big = true; /* keep reading (and dropping) to answer 413 */
            free(req->body);
            req->body = NULL;
            req->len = 0;
            return MHD_YES;
        }
        req->body = pl_xrealloc(req->body, req->len + n + 1);
        memcpy(req->body + req->len, upload_data, n);
        req->len += n;
        req->body[req->len] = '\0';
        return MHD_YES;
    }
    if (req->answered)
        return send_json(conn, req->status, req->reply ? req->reply : "{}\n");
    if (req->db_pending)
        return MHD_YES; /* still waiting (a spurious call) */
    return webhook(h, req);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    struct request *req = *con_cls;
    if (!req)
        return;
    *con_cls = NULL;
    unlink_waiting(req);
    req->conn_gone = true;
    if (!req->db_pending)
        request_free(req);
}

/* ---- cached figures ---------------------------------------------------------------------- */

static void lag_tick(uv_timer_t *t)
{
    struct pledged_http *h = pl_container_of(t, struct pledged_http, lag_timer);
    uint64_t now = uv_hrtime();
    int64_t lag_ms = now > h->lag_expected_ns ? (int64_t)((now - h->lag_expected_ns) / 1000000) : 0;
    h->lag_ms = lag_ms;
    if (lag_ms > h->lag_max_ms)
        h->lag_max_ms = lag_ms;
    h->lag_expected_ns = now + (uint64_t)LAG_INTERVAL_MS * 1000000;
}

static void backlog_read(const struct pl_db_result *r, int err, void *arg)
{
    struct pledged_http *h = arg;
    h->backlog_in_flight = false;
    if (!h->stopping && err == 0) {
        int64_t due = 0, unknown = 0;
        if (pl_db_result_int64(r, 0, 0, &due) == 0 && pl_db_result_int64(r, 0, 1, &unknown) == 0) {
            h->due_backlog = due;
            h->unknown_attempts = unknown;
            h->backlog_known = true;
        }
    }
    unref(h);
}

static void backlog_tick(uv_timer_t *t)
{
    struct pledged_http *h = pl_container_of(t, struct pledged_http, backlog_timer);
    if (h->backlog_in_flight || !h->d->ready)
        return;
    int rc = pl_db_query(h->d->db,
                         "SELECT (SELECT count(*) FROM charge WHERE status IN ('scheduled', "
                         "'retry_wait') AND next_attempt_at <= pl_now()), "
                         "(SELECT count(*) FROM charge_attempt WHERE state = 'unknown')",
                         0, NULL, backlog_read, h);
    if (rc == 0) {
        h->backlog_in_flight = true;
        h->refs++;
    }
}

/* ---- start / stop ------------------------------------------------------------------------ */

int pledged_http_start(struct daemon *d)
{
    const struct pl_config *c = &d->cfg;
    if (d->once) {
        pl_log_debug(LOG, "--once: no HTTP listener");
        return 0;
    }
    if (!c->http.enabled) {
        pl_log_info(LOG, "HTTP listener disabled ([http] enabled = false)");
        return 0;
    }
    char *errors = NULL;
    if (!c->http.webhook_secret &&
        pl_config_load_secrets(&d->cfg, PL_SECRET_WEBHOOK_SECRET, 0, &errors) < 0) {
        pl_log_error(LOG, "%s", errors ? errors : "cannot read the webhook secret");
        free(errors);
        return -1;
    }

    struct sockaddr_storage ss = {0};
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, c->http.listen_host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)c->http.listen_port);
    } else if (inet_pton(AF_INET6, c->http.listen_host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)c->http.listen_port);
        flags |= MHD_USE_IPv6;
    } else {
        pl_log_error(LOG, "[http] listen: %s is not an IP address", c->http.listen);
        return -1;
    }

    struct pledged_http *h = pl_xcalloc(1, sizeof(*h));
    h->d = d;
    h->max_body = c->http.max_body;
    if (c->http.webhook_secret)
        h->secret = pl_xstrdup(c->http.webhook_secret);
    else
        pl_log_warn(LOG,
                    "no webhook signing secret ([http] webhook_secret_file or credential "
                    "webhook_secret): POST /webhooks/%s answers 503",
                    GATEWAY_NAME);

    h->mhd = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)CONNECTION_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)CONNECTION_TIMEOUT_S, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h, MHD_OPTION_END);
    if (!h->mhd) {
        pl_log_error(LOG, "cannot listen on %s (address in use? see [http] listen)",
                     c->http.listen);
        free(h->secret);
        free(h);
        return -1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    int rc = info ? uv_poll_init(d->loop, &h->poll, info->epoll_fd) : UV_EINVAL;
    if (rc < 0) {
        pl_log_error(LOG, "cannot watch the listener: %s", uv_strerror(rc));
        MHD_stop_daemon(h->mhd);
        free(h->secret);
        free(h);
        return -1;
    }
    uv_timer_init(d->loop, &h->mhd_timer);
    uv_timer_init(d->loop, &h->lag_timer);
    uv_timer_init(d->loop, &h->backlog_timer);
    h->poll.data = h->mhd_timer.data = h->lag_timer.data = h->backlog_timer.data = h;
    h->refs = 4;
    uv_poll_start(&h->poll, UV_READABLE, mhd_readable);
    h->lag_expected_ns = uv_hrtime() + (uint64_t)LAG_INTERVAL_MS * 1000000;
    uv_timer_start(&h->lag_timer, lag_tick, LAG_INTERVAL_MS, LAG_INTERVAL_MS);
    uv_timer_start(&h->backlog_timer, backlog_tick, 1000, BACKLOG_INTERVAL_MS);
    /* the figures must not keep a draining daemon alive */
    uv_unref((uv_handle_t *)&h->lag_timer);
    uv_unref((uv_handle_t *)&h->backlog_timer);
    d->httpd = h;
    run_mhd(h);
    pl_log_notice(LOG, "listening on %s: /healthz /metrics /webhooks/%s", c->http.listen,
                  GATEWAY_NAME);
    return 0;
}

void pledged_http_stop(struct daemon *d)
{
    struct pledged_http *h = d->httpd;
    if (!h)
        return;
    d->httpd = NULL;
    /* answer nobody still waiting: detach them from us and resume, so
     * MHD_stop_daemon may close them (it must not meet suspended ones) */
    while (h->waiting) {
        struct request *req = h->waiting;
        unlink_waiting(req);
        req->h = NULL;
        if (req->suspended) {
            req->suspended = false;
            MHD_resume_connection(req->conn);
        }
    }
    h->stopping = true;
    /* stop watching the epoll fd before MHD closes it */
    uv_poll_stop(&h->poll);
    uv_close((uv_handle_t *)&h->poll, handle_closed);
    uv_close((uv_handle_t *)&h->mhd_timer, handle_closed);
    uv_close((uv_handle_t *)&h->lag_timer, handle_closed);
    uv_close((uv_handle_t *)&h->backlog_timer, handle_closed);
    MHD_stop_daemon(h->mhd);
    h->mhd = NULL;
}
