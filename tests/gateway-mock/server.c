/*
 * server.c — libmicrohttpd glue: one thread per connection (so latency and
 * hangs block only their own client), connection and in-flight counters, the
 * /v1 request pipeline with its fault points, and the /_mock control API.
 *
 * Pipeline for /v1 (each step under gm_lock, sleeps outside it):
 *   auth (401, nothing saved) → rate_429 → error_503_before → drop_before
 *   → idempotency (replay / 409 in use / 400 mismatch / claim)
 *   → latency + jitter, hang (key stays claimed: a concurrent retry gets 409)
 *   → validate + execute → error_500_after_execute (saved) → save for key
 *   → drop_after (saved, executed, connection closed without reply) → reply
 */
#include "mock.h"

#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CONNECTION_LIMIT   4096u
#define THREAD_STACK_BYTES ((size_t)1024 * 1024)
#define REQUEST_ID_CHARS   14

struct conn_ctx {
    bool api; /* has made at least one /v1 request */
};

struct req_ctx {
    char *body;
    size_t len, cap;
    bool too_big;
    bool api;
    int64_t start_ms;
    char request_id[40];
};

struct reply_hdrs {
    int should_retry; /* -1 unset */
    unsigned retry_after_s;
    bool replayed;
    const char *original_request;
};

static struct MHD_Daemon *daemon_;
static struct gm_server_opts opts;
static int wake_pipe[2] = {-1, -1};

/* ---- waiting without burning CPU ---------------------------------------- */

/* Sleep up to ms; returns early (false) when the server is shutting down. */
static bool sleep_ms(int64_t ms)
{
    int64_t end = gm_now_ms() + ms;
    for (;;) {
        int64_t left = end - gm_now_ms();
        if (left <= 0)
            return true;
        struct pollfd p = {.fd = wake_pipe[0], .events = POLLIN};
        int r = poll(&p, 1, left > 60000 ? 60000 : (int)left);
        if (r > 0)
            return false;
        if (r < 0 && errno != EINTR)
            return true;
    }
}

/* Hold a connection until the client closes it or the server stops. */
static void hang_until_client_leaves(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    int fd = ci ? ci->connect_fd : -1;
    for (;;) {
        /* POLLRDHUP, not POLLIN: pipelined bytes must not make this spin */
        struct pollfd p[2] = {{.fd = wake_pipe[0], .events = POLLIN},
                              {.fd = fd, .events = POLLRDHUP}};
        int r = poll(p, fd >= 0 ? 2 : 1, -1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 || (p[0].revents & POLLIN) ||
            (fd >= 0 && (p[1].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))))
            return;
    }
}

/* ---- replies ----------------------------------------------------------- */

static bool add_header(struct MHD_Response *r, const char *k, const char *v)
{
    return MHD_add_response_header(r, k, v) == MHD_YES;
}

/* Takes ownership of body (malloc'd). */
static enum MHD_Result send_body(struct MHD_Connection *c, struct req_ctx *rq, unsigned status,
                                 char *body, const struct reply_hdrs *h)
{
    if (!body)
        return MHD_NO;
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    bool ok = add_header(r, "Content-Type", "application/json") &&
              add_header(r, "Request-Id", rq->request_id) &&
              add_header(r, "Stripe-Version", "2024-06-20");
    if (ok && h && h->should_retry >= 0)
        ok = add_header(r, "Stripe-Should-Retry", h->should_retry ? "true" : "false");
    if (ok && h && h->retry_after_s) {
        char ra[16];
        snprintf(ra, sizeof(ra), "%u", h->retry_after_s);
        ok = add_header(r, "Retry-After", ra);
    }
    if (ok && h && h->replayed)
        ok = add_header(r, "Idempotent-Replayed", "true");
    if (ok && h && h->original_request && h->original_request[0])
        ok = add_header(r, "Original-Request", h->original_request);
    enum MHD_Result res = ok ? MHD_queue_response(c, status, r) : MHD_NO;
    MHD_destroy_response(r);
    return res;
}

static enum MHD_Result send_json(struct MHD_Connection *c, struct req_ctx *rq, unsigned status,
                                 json_t *j, const struct reply_hdrs *h)
{
    if (!j)
        return MHD_NO;
    char *body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return send_body(c, rq, status, body, h);
}

static void access_log(const char *method, const char *url, unsigned status,
                       const struct req_ctx *rq, const char *note)
{
    if (opts.quiet)
        return;
    fprintf(stderr, "gateway-mock: %s %s %u %lldms %s%s\n", method, url, status,
            (long long)(gm_now_ms() - rq->start_ms), rq->request_id, note ? note : "");
}

/* Count and send a /v1 reply. */
static enum MHD_Result api_reply(struct MHD_Connection *c, struct req_ctx *rq, const char *method,
                                 const char *url, unsigned status, json_t *j,
                                 const struct reply_hdrs *h)
{
    if (pthread_mutex_lock(&gm_lock) == 0) {
        if (status < 600)
            gm_counters.by_status[status]++;
        pthread_mutex_unlock(&gm_lock);
    }
    access_log(method, url, status, rq, h && h->replayed ? " replayed" : NULL);
    return send_json(c, rq, status, j, h);
}

/* ---- the /v1 pipeline -------------------------------------------------- */

static enum MHD_Result collect_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    return gm_form_add(cls, key, value) == 0 ? MHD_YES : MHD_NO;
}

static bool key_ok(const char *auth)
{
    if (!auth || strncmp(auth, "Bearer ", 7) != 0)
        return false;
    const char *key = auth + 7;
    if (!opts.api_key)
        return *key != '\0';
    /* not constant-time: this is a test server */
    return strcmp(key, opts.api_key) == 0;
}

static json_t *auth_error(const char *auth)
{
    char msg[256];
    if (!auth || strncmp(auth, "Bearer ", 7) != 0) {
        snprintf(msg, sizeof(msg),
                 "You did not provide an API key. You need to provide your API key in the "
                 "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                 "YOUR_SECRET_KEY').");
    } else {
        const char *k = auth + 7;
        size_t n = strlen(k);
        snprintf(msg, sizeof(msg), "Invalid API Key provided: %.*s****%s", n > 8 ? 8 : 0, k,
                 n > 12 ? k + n - 4 : "");
    }
    return gm_error_json("invalid_request_error", "api_key_invalid", NULL, msg);
}

static enum MHD_Result handle_api(struct MHD_Connection *c, const char *url, const char *method,
                                  struct req_ctx *rq)
{
    struct gm_form params = {0};
    struct reply_hdrs h = {.should_retry = -1};
    bool post = strcmp(method, "POST") == 0;
    enum MHD_Result res;
    char *token = NULL, *fp = NULL, *saved_body = NULL, *scope = NULL;
    const char *idem_key = NULL;
    bool claimed = false;

    if (rq->too_big) {
        res = api_reply(
            c, rq, method, url, 413,
            gm_error_json("invalid_request_error", NULL, NULL, "Request body too large."), &h);
        goto out;
    }
    if (post && rq->len) {
        int rc = gm_form_parse(&params, rq->body, rq->len);
        if (rc < 0) {
            res = api_reply(c, rq, method, url, 400,
                            gm_error_json("invalid_request_error", NULL, NULL,
                                          rc == -ENOMEM ? "Out of memory."
                                                        : "Invalid request body: expected "
                                                          "application/x-www-form-urlencoded."),
                            &h);
            goto out;
        }
    } else if (!post &&
               MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, collect_arg, &params) < 0) {
        res = MHD_NO;
        goto out;
    }

    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!key_ok(auth)) {
        if (pthread_mutex_lock(&gm_lock) == 0) {
            gm_counters.requests_total++;
            pthread_mutex_unlock(&gm_lock);
        }
        res = api_reply(c, rq, method, url, 401, auth_error(auth), &h);
        goto out;
    }
    if (post)
        idem_key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Idempotency-Key");
    if (idem_key && (strlen(idem_key) > GM_MAX_IDEM_KEY_CHARS || !*idem_key)) {
        if (pthread_mutex_lock(&gm_lock) == 0) {
            gm_counters.requests_total++;
            pthread_mutex_unlock(&gm_lock);
        }
        res = api_reply(c, rq, method, url, 400,
                        gm_error_json("invalid_request_error", "idempotency_key_invalid", NULL,
                                      "Idempotency keys must be 1 to 255 characters long."),
                        &h);
        goto out;
    }
    /* Stripe scopes keys per account (API key) and endpoint. */
    if (idem_key &&
        (!(fp = gm_form_fingerprint(&params)) || asprintf(&scope, "%s %s", auth + 7, url) < 0)) {
        scope = NULL;
        res = MHD_NO;
        goto out;
    }

    if (pthread_mutex_lock(&gm_lock) != 0) {
        res = MHD_NO;
        goto out;
    }
    gm_counters.requests_total++;
    token = gm_api_token(method, url, &params);
    if (gm_fault_roll(GM_F_429, token, method, url)) {
        h.should_retry = 1;
        h.retry_after_s = gm_config_retry_after_s();
        pthread_mutex_unlock(&gm_lock);
        res = api_reply(c, rq, method, url, 429,
                        gm_error_json("invalid_request_error", "rate_limit", NULL,
                                      "Too many requests hit the API too quickly. We recommend "
                                      "an exponential backoff of your requests."),
                        &h);
        goto out;
    }
    if (gm_fault_roll(GM_F_503, token, method, url)) {
        h.should_retry = 1;
        pthread_mutex_unlock(&gm_lock);
        res = api_reply(c, rq, method, url, 503,
                        gm_error_json("api_error", NULL, NULL,
                                      "The service is temporarily unavailable (injected). The "
                                      "request was not executed; it is safe to retry."),
                        &h);
        goto out;
    }
    if (gm_fault_roll(GM_F_DROP_BEFORE, token, method, url)) {
        gm_counters.dropped_before++;
        pthread_mutex_unlock(&gm_lock);
        access_log(method, url, 0, rq, " dropped before execution");
        res = MHD_NO;
        goto out;
    }
    if (idem_key) {
        struct gm_saved saved;
        switch (gm_idem_begin(scope, idem_key, fp, &saved)) {
        case GM_IDEM_NEW:
            claimed = true;
            break;
        case GM_IDEM_REPLAY:
            gm_counters.replays++;
            saved_body = strdup(saved.body);
            pthread_mutex_unlock(&gm_lock);
            if (!saved_body) {
                res = MHD_NO;
                goto out;
            }
            h.replayed = true;
            h.original_request = saved.request_id;
            if (pthread_mutex_lock(&gm_lock) == 0) {
                if (saved.status < 600)
                    gm_counters.by_status[saved.status]++;
                pthread_mutex_unlock(&gm_lock);
            }
            access_log(method, url, saved.status, rq, " replayed");
            res = send_body(c, rq, saved.status, saved_body, &h);
            saved_body = NULL;
            goto out;
        case GM_IDEM_IN_USE:
            gm_counters.conflicts++;
            pthread_mutex_unlock(&gm_lock);
            h.should_retry = 1;
            res = api_reply(c, rq, method, url, 409,
                            gm_error_json("invalid_request_error", "idempotency_key_in_use", NULL,
                                          "There is currently another in-progress request "
                                          "using this Idempotent Key (that probably means you "
                                          "submitted twice, and the other request is still "
                                          "going through): retry in a moment."),
                            &h);
            goto out;
        case GM_IDEM_MISMATCH: {
            pthread_mutex_unlock(&gm_lock);
            char msg[512];
            snprintf(msg, sizeof(msg),
                     "Keys for idempotent requests can only be used with the same parameters "
                     "they were first used with. Try using a key other than '%s' if you meant "
                     "to execute a different request.",
                     idem_key);
            h.should_retry = 0;
            res = api_reply(c, rq, method, url, 400,
                            gm_error_json("idempotency_error", NULL, NULL, msg), &h);
            goto out;
        }
        }
    }
    int64_t latency = gm_fault_latency_ms(token, method, url);
    bool hang = gm_fault_roll(GM_F_HANG, token, method, url);
    if (hang)
        gm_counters.hung++;
    pthread_mutex_unlock(&gm_lock);

    if (latency > 0 && !sleep_ms(latency))
        hang = true; /* shutting down: leave without a reply */
    if (hang) {
        hang_until_client_leaves(c);
        if (pthread_mutex_lock(&gm_lock) == 0) {
            if (claimed)
                gm_idem_abandon(scope, idem_key);
            pthread_mutex_unlock(&gm_lock);
        }
        access_log(method, url, 0, rq, " hung until the client left");
        res = MHD_NO;
        goto out;
    }

    if (pthread_mutex_lock(&gm_lock) != 0) {
        res = MHD_NO;
        goto out;
    }
    struct gm_api_result ar;
    gm_api_dispatch(method, url, &params, idem_key, rq->request_id, &ar);
    bool ran = ar.executed || (!post && ar.status < 400);
    h.should_retry = ar.should_retry;
    if (!ar.executed && claimed) {
        gm_idem_abandon(scope, idem_key); /* validation failures save nothing */
        claimed = false;
    }
    if (ran && gm_fault_roll(GM_F_500, token, method, url)) {
        json_decref(ar.body);
        ar.status = 500;
        ar.body = gm_error_json("api_error", NULL, NULL,
                                "An unknown error occurred (injected after the request was "
                                "executed).");
        h.should_retry = -1;
        gm_ledger_mark_fault(ar.obj_id, gm_fault_name(GM_F_500));
    }
    char *body = ar.body ? json_dumps(ar.body, JSON_COMPACT) : NULL;
    json_decref(ar.body);
    if (!body) {
        if (claimed)
            gm_idem_abandon(scope, idem_key);
        pthread_mutex_unlock(&gm_lock);
        res = MHD_NO;
        goto out;
    }
    if (claimed)
        gm_idem_save(scope, idem_key, ar.status, body, rq->request_id);
    if (ran && gm_fault_roll(GM_F_DROP_AFTER, token, method, url)) {
        gm_counters.dropped_after++;
        gm_ledger_mark_fault(ar.obj_id, gm_fault_name(GM_F_DROP_AFTER));
        pthread_mutex_unlock(&gm_lock);
        free(body);
        access_log(method, url, ar.status, rq, " executed, then dropped");
        res = MHD_NO;
        goto out;
    }
    if (ar.status < 600)
        gm_counters.by_status[ar.status]++;
    pthread_mutex_unlock(&gm_lock);
    access_log(method, url, ar.status, rq, NULL);
    res = send_body(c, rq, ar.status, body, &h);
out:
    free(saved_body);
    free(scope);
    free(token);
    free(fp);
    gm_form_release(&params);
    return res;
}

/* ---- /_mock control API ------------------------------------------------ */

static json_t *msg_json(const char *k, const char *v)
{
    return json_pack("{s:s}", k, v);
}

static enum MHD_Result handle_control(struct MHD_Connection *c, const char *url, const char *method,
                                      struct req_ctx *rq)
{
    bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
    json_t *in = NULL, *out = NULL;
    unsigned status = 200;

    if (pthread_mutex_lock(&gm_lock) != 0)
        return MHD_NO;
    gm_counters.control_requests++;
    pthread_mutex_unlock(&gm_lock);

    if (post && rq->len) {
        json_error_t jerr;
        in = json_loadb(rq->body, rq->len, 0, &jerr);
        if (!in) {
            char msg[256];
            snprintf(msg, sizeof(msg), "invalid JSON: %s (line %d)", jerr.text, jerr.line);
            return send_json(c, rq, 400, msg_json("error", msg), NULL);
        }
    }
    if (strcmp(url, "/_mock/webhook") == 0 && post) {
        out = gm_webhook_send(in, &status);
    } else {
        if (pthread_mutex_lock(&gm_lock) != 0) {
            json_decref(in);
            return MHD_NO;
        }
        if (strcmp(url, "/_mock/config") == 0 && get) {
            out = gm_config_json();
        } else if (strcmp(url, "/_mock/config") == 0 && post) {
            char err[256];
            json_t *empty = in ? NULL : json_object();
            if (gm_config_apply(in ? in : empty, err, sizeof(err)) == 0) {
                out = gm_config_json();
            } else {
                status = 400;
                out = msg_json("error", err);
            }
            json_decref(empty);
        } else if (strcmp(url, "/_mock/ledger") == 0 && get) {
            out = gm_ledger_json();
        } else if (strcmp(url, "/_mock/reset") == 0 && post) {
            gm_state_clear();
            gm_config_reset();
            out = json_pack("{s:b}", "ok", 1);
        } else if (strcmp(url, "/_mock/health") == 0 && get) {
            out = json_pack("{s:b}", "ok", 1);
        } else {
            status = 404;
            out = msg_json("error", "unknown control endpoint: GET /_mock/config|ledger|health, "
                                    "POST /_mock/config|reset|webhook");
        }
        pthread_mutex_unlock(&gm_lock);
    }
    json_decref(in);
    if (!out)
        return MHD_NO;
    return send_json(c, rq, status, out, NULL);
}

/* ---- MHD callbacks ----------------------------------------------------- */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct req_ctx *rq = *con_cls;
    if (!rq) {
        rq = calloc(1, sizeof(*rq));
        if (!rq)
            return MHD_NO;
        *con_cls = rq;
        rq->api = strncmp(url, "/v1/", 4) == 0;
        rq->start_ms = gm_now_ms();
        if (pthread_mutex_lock(&gm_lock) != 0)
            return MHD_NO;
        gm_rand_id(GM_RNG_REQ, rq->request_id, "req_", REQUEST_ID_CHARS);
        if (rq->api) {
            if (++gm_counters.in_flight_current > gm_counters.in_flight_max)
                gm_counters.in_flight_max = gm_counters.in_flight_current;
            const union MHD_ConnectionInfo *ci =
                MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
            struct conn_ctx *cc = ci ? ci->socket_context : NULL;
            if (cc && !cc->api) {
                cc->api = true;
                if (++gm_counters.api_connections_current > gm_counters.api_connections_max)
                    gm_counters.api_connections_max = gm_counters.api_connections_current;
            }
        }
        pthread_mutex_unlock(&gm_lock);
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (rq->too_big || rq->len + n > GM_MAX_BODY_BYTES) {
            rq->too_big = true;
            return MHD_YES;
        }
        if (rq->len + n + 1 > rq->cap) {
            size_t cap = rq->cap ? rq->cap : 1024;
            while (cap < rq->len + n + 1)
                cap *= 2;
            char *b = realloc(rq->body, cap);
            if (!b)
                return MHD_NO;
            rq->body = b;
            rq->cap = cap;
        }
        memcpy(rq->body + rq->len, upload_data, n);
        rq->len += n;
        rq->body[rq->len] = '\0';
        return MHD_YES;
    }
    return rq->api ? handle_api(c, url, method, rq) : handle_control(c, url, method, rq);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct req_ctx *rq = *con_cls;
    if (!rq)
        return;
    if (rq->api && pthread_mutex_lock(&gm_lock) == 0) {
        gm_counters.in_flight_current--;
        pthread_mutex_unlock(&gm_lock);
    }
    free(rq->body);
    free(rq);
    *con_cls = NULL;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    if (pthread_mutex_lock(&gm_lock) != 0)
        return;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        *socket_context = calloc(1, sizeof(struct conn_ctx));
        gm_counters.connections_total++;
        if (++gm_counters.connections_current > gm_counters.connections_max)
            gm_counters.connections_max = gm_counters.connections_current;
    } else {
        struct conn_ctx *cc = *socket_context;
        if (cc && cc->api)
            gm_counters.api_connections_current--;
        free(cc);
        *socket_context = NULL;
        gm_counters.connections_current--;
    }
    pthread_mutex_unlock(&gm_lock);
}

/* Query strings: '+' is a space, as Stripe's clients encode them. */
static size_t unescape_cb(void *cls, struct MHD_Connection *c, char *s)
{
    size_t n = gm_unescape(s, true);
    return n == (size_t)-1 ? strlen(s) : n;
}

int gm_server_start(int listen_fd, const struct gm_server_opts *o)
{
    opts = *o;
    if (pipe2(wake_pipe, O_CLOEXEC) != 0)
        return -errno;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
    if (!opts.quiet)
        flags |= MHD_USE_ERROR_LOG;
    daemon_ = MHD_start_daemon(flags, 0, NULL, NULL, on_request, NULL, MHD_OPTION_LISTEN_SOCKET,
                               listen_fd, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                               MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL,
                               MHD_OPTION_UNESCAPE_CALLBACK, unescape_cb, NULL,
                               MHD_OPTION_CONNECTION_LIMIT, CONNECTION_LIMIT,
                               MHD_OPTION_THREAD_STACK_SIZE, THREAD_STACK_BYTES, MHD_OPTION_END);
    return daemon_ ? 0 : -EIO;
}

void gm_server_stop(void)
{
    if (wake_pipe[1] >= 0 && write(wake_pipe[1], "x", 1) != 1)
        fprintf(stderr, "gateway-mock: waking hung requests: %s\n", strerror(errno));
    if (daemon_)
        MHD_stop_daemon(daemon_);
    daemon_ = NULL;
}
