/*
 * http — libcurl's multi-socket interface driven by libuv.
 *
 * Shape (after curl's docs/examples/multi-uv.c, hardened):
 *   - curl tells us which sockets to watch (socket_cb) and when to wake it
 *     (timer_cb); both only record that in uv handles and never call curl.
 *     Sockets are found by fd in our own table, so socket_cb needs no
 *     curl_multi_assign.
 *   - uv tells us about readiness (poll_cb, errors passed as
 *     CURL_CSELECT_ERR) and timer expiry (curl_timeout_cb); both call
 *     curl_multi_socket_action and then drain curl_multi_info_read.
 *   - our own "gate" timer starts queued requests when the in-flight bound,
 *     the token bucket, the global pause and per-request delays allow it.
 *     pl_http_submit only queues and arms the gate, so no callback ever runs
 *     inside pl_http_submit.
 */
#include "http.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util.h"

#define TOKEN 1000000LL /* one request in the bucket's fixed-point units */
/* The gate timer wakes up to a few ms late (ms granularity, loop latency).
 * With the bucket capped at exactly `burst`, a request waiting on a full
 * bucket would lose that lateness every time (burst 1 at 100/s measured
 * 95/s). The bucket may hold this much accrual beyond the burst instead;
 * the long-run rate still cannot exceed the limit, tokens only ever accrue
 * at `rate`. */
#define TIMER_SLACK_US 5000LL

const unsigned pl_http_bucket_ms[PL_HTTP_N_BUCKETS - 1] = {50,   100,  250,   500,  1000,
                                                           2500, 5000, 10000, 30000};

enum req_state { REQ_QUEUED, REQ_DELAYED, REQ_IN_FLIGHT, REQ_DONE };

struct list {
    struct pl_http_req *head, *tail;
    unsigned n;
};

struct pl_http_req {
    struct pl_http *h;
    struct pl_http_req *prev, *next;
    enum req_state state;
    CURL *easy;
    struct curl_slist *hdrs;
    char *url, *method, *body;
    size_t body_len;
    int64_t not_before_us, queued_at_us, started_at_us;
    bool prereq_called;
    char errbuf[CURL_ERROR_SIZE];
    /* reply */
    char *resp;
    size_t resp_len, resp_cap;
    bool truncated;
    char request_id[128];
    char retry_after[64];
    int should_retry;
    bool replayed;
    pl_http_cb cb;
    void *userdata;
};

struct sock {
    uv_poll_t poll;
    struct pl_http *h;
    curl_socket_t fd;
};

struct pl_http {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t curl_timer; /* what curl asked for */
    uv_timer_t gate_timer; /* when the next queued request may start */
    struct list queue, delayed, in_flight;
    struct sock **socks; /* by fd */
    size_t n_socks;
    char *ca_bundle, *user_agent;
    unsigned max_in_flight, rate, burst, connect_timeout_ms, request_timeout_ms;
    size_t max_body_bytes;
    int64_t tokens; /* TOKEN units */
    int64_t tokens_at_us;
    int64_t paused_until_us;
    unsigned open_handles; /* uv handles not yet closed */
    int depth;             /* > 0 while user callbacks may be on the stack */
    bool closing, free_pending, timers_closed;
    struct pl_http_stats st;
};

static void process_completions(struct pl_http *h);
static void dispatch(struct pl_http *h);
static void teardown(struct pl_http *h);
static void arm_gate(struct pl_http *h, int64_t delay_us);

/* ---- lists ------------------------------------------------------------ */

static void list_push(struct list *l, struct pl_http_req *r)
{
    r->prev = l->tail;
    r->next = NULL;
    if (l->tail)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
    l->n++;
}

static void list_push_front(struct list *l, struct pl_http_req *r)
{
    r->prev = NULL;
    r->next = l->head;
    if (l->head)
        l->head->prev = r;
    else
        l->tail = r;
    l->head = r;
    l->n++;
}

static void list_remove(struct list *l, struct pl_http_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        l->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        l->tail = r->prev;
    r->prev = r->next = NULL;
    l->n--;
}

/* Delayed requests are kept sorted by not_before_us (stable). */
static void list_insert_sorted(struct list *l, struct pl_http_req *r)
{
    struct pl_http_req *at = l->tail;
    while (at && at->not_before_us > r->not_before_us)
        at = at->prev;
    if (!at) {
        list_push_front(l, r);
        return;
    }
    r->prev = at;
    r->next = at->next;
    if (at->next)
        at->next->prev = r;
    else
        l->tail = r;
    at->next = r;
    l->n++;
}

static struct list *list_of(struct pl_http *h, struct pl_http_req *r)
{
    switch (r->state) {
    case REQ_QUEUED:
        return &h->queue;
    case REQ_DELAYED:
        return &h->delayed;
    case REQ_IN_FLIGHT:
        return &h->in_flight;
    case REQ_DONE:
        break;
    }
    return NULL;
}

/* ---- small parsers ---------------------------------------------------- */

int pl_http_parse_retry_after(const char *value, int64_t now_s, int64_t *out_ms)
{
    if (!value)
        return PL_EPARSE;
    while (*value == ' ' || *value == '\t')
        value++;
    size_t n = strlen(value);
    while (n && (value[n - 1] == ' ' || value[n - 1] == '\t' || value[n - 1] == '\r' ||
                 value[n - 1] == '\n'))
        n--;
    if (n == 0 || n > 63)
        return PL_EPARSE;
    char buf[64];
    memcpy(buf, value, n);
    buf[n] = 0;

    int64_t ms;
    if (buf[0] >= '0' && buf[0] <= '9') {
        /* delta-seconds: digits only; a huge number is just "the maximum" */
        int64_t s = 0;
        for (size_t i = 0; i < n; i++) {
            if (buf[i] < '0' || buf[i] > '9')
                return PL_EPARSE;
            if (s < PL_HTTP_RETRY_AFTER_MAX_MS)
                s = s * 10 + (buf[i] - '0');
        }
        ms = s * PL_MS_PER_S;
    } else {
        time_t t = curl_getdate(buf, NULL);
        if (t == (time_t)-1)
            return PL_EPARSE;
        ms = ((int64_t)t - now_s) * PL_MS_PER_S;
    }
    if (ms < 0)
        ms = 0;
    if (ms > PL_HTTP_RETRY_AFTER_MAX_MS)
        ms = PL_HTTP_RETRY_AFTER_MAX_MS;
    *out_ms = ms;
    return 0;
}

static bool host_is_loopback(const char *host)
{
    if (strcasecmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0)
        return true;
    /* 127.0.0.0/8 written as a dotted quad of plain decimal numbers */
    if (strncmp(host, "127.", 4) != 0)
        return false;
    int parts = 1, digits = 0; /* parts after "127." */
    for (const char *p = host + 4; *p; p++) {
        if (*p == '.') {
            if (digits == 0)
                return false;
            parts++;
            digits = 0;
        } else if (*p >= '0' && *p <= '9' && digits < 3) {
            digits++;
        } else {
            return false;
        }
    }
    return parts == 3 && digits > 0;
}

bool pl_http_url_allowed(const char *url)
{
    if (!url)
        return false;
    CURLU *u = curl_url();
    if (!u)
        return false;
    bool ok = false;
    char *scheme = NULL, *host = NULL, *user = NULL;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
        goto out;
    if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
        goto out;
    /* userinfo in a URL is a smuggling trick here; we never need it */
    if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK)
        goto out;
    if (strcasecmp(scheme, "https") == 0)
        ok = true;
    else if (strcasecmp(scheme, "http") == 0)
        ok = host_is_loopback(host);
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(user);
    curl_url_cleanup(u);
    return ok;
}

/* ---- curl easy callbacks (never call curl from here) ------------------ */

static size_t write_cb(char *data, size_t size, size_t nmemb, void *ud)
{
    struct pl_http_req *r = ud;
    size_t n = size * nmemb;
    size_t max = r->h->max_body_bytes;
    if (r->resp_len + n > max) {
        /* keep the prefix, flag it, and end the transfer: never buffer
         * an unbounded reply */
        size_t room = max - r->resp_len;
        if (room) {
            if (r->resp_cap < max + 1) {
                r->resp = pl_xrealloc(r->resp, max + 1);
                r->resp_cap = max + 1;
            }
            memcpy(r->resp + r->resp_len, data, room);
            r->resp_len += room;
            r->resp[r->resp_len] = 0;
        }
        r->truncated = true;
        return CURL_WRITEFUNC_ERROR;
    }
    if (r->resp_len + n + 1 > r->resp_cap) {
        size_t cap = r->resp_cap ? r->resp_cap : 1024;
        while (cap < r->resp_len + n + 1)
            cap *= 2;
        if (cap > max + 1)
            cap = max + 1;
        r->resp = pl_xrealloc(r->resp, cap);
        r->resp_cap = cap;
    }
    memcpy(r->resp + r->resp_len, data, n);
    r->resp_len += n;
    r->resp[r->resp_len] = 0;
    return n;
}

static void copy_header_value(char *dst, size_t cap, const char *v, size_t n)
{
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, v, n);
    dst[n] = 0;
}

static size_t header_cb(char *data, size_t size, size_t nitems, void *ud)
{
    struct pl_http_req *r = ud;
    size_t n = size * nitems;
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        /* a new response head (after a 1xx): forget the previous one */
        r->request_id[0] = 0;
        r->retry_after[0] = 0;
        r->should_retry = -1;
        r->replayed = false;
        return n;
    }
    const char *colon = memchr(data, ':', n);
    if (!colon)
        return n;
    size_t name_len = (size_t)(colon - data);
    const char *v = colon + 1;
    size_t vlen = n - name_len - 1;
    while (vlen && (*v == ' ' || *v == '\t')) {
        v++;
        vlen--;
    }
    while (vlen && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' ' ||
                    v[vlen - 1] == '\t'))
        vlen--;

#define IS(name) (name_len == sizeof(name) - 1 && strncasecmp(data, name, name_len) == 0)
    if (IS("Request-Id")) {
        copy_header_value(r->request_id, sizeof r->request_id, v, vlen);
    } else if (IS("Retry-After")) {
        copy_header_value(r->retry_after, sizeof r->retry_after, v, vlen);
    } else if (IS("Stripe-Should-Retry")) {
        if (vlen == 4 && strncasecmp(v, "true", 4) == 0)
            r->should_retry = 1;
        else if (vlen == 5 && strncasecmp(v, "false", 5) == 0)
            r->should_retry = 0;
    } else if (IS("Idempotent-Replayed")) {
        r->replayed = vlen == 4 && strncasecmp(v, "true", 4) == 0;
    }
#undef IS
    return n;
}

static int prereq_cb(void *ud, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
    struct pl_http_req *r = ud;
    /* From here on bytes of the request may reach the server. */
    r->prereq_called = true;
    return CURL_PREREQFUNC_OK;
}

/* ---- request lifetime ------------------------------------------------- */

static void req_free(struct pl_http_req *r)
{
    if (r->easy)
        curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->hdrs);
    if (r->body) {
        /* bodies may carry customer references; do not leave them around */
        memset(r->body, 0, r->body_len);
        free(r->body);
    }
    free(r->url);
    free(r->method);
    free(r->resp);
    free(r);
}

static void stats_done(struct pl_http *h, const struct pl_http_response *resp)
{
    h->st.completed++;
    if (resp->transport == PL_HTTP_REPLIED) {
        long c = resp->status / 100;
        h->st.by_class[(c >= 1 && c <= 5) ? c : 0]++;
        if (resp->status == 429)
            h->st.status_429++;
        h->st.duration_us_sum += (uint64_t)resp->duration_us;
        int64_t ms = resp->duration_us / PL_US_PER_MS;
        for (size_t i = 0; i < PL_HTTP_N_BUCKETS; i++)
            if (i == PL_HTTP_N_BUCKETS - 1 || ms <= (int64_t)pl_http_bucket_ms[i])
                h->st.duration_buckets[i]++;
    } else {
        h->st.by_class[0]++;
        if (resp->transport == PL_HTTP_NOT_SENT)
            h->st.not_sent++;
        else
            h->st.maybe_sent++;
    }
}

/* Run the user callback for a request already unlinked from every list,
 * then free it. */
static void req_complete(struct pl_http_req *r, int curl_code, int err)
{
    struct pl_http *h = r->h;
    struct pl_http_response resp = {0};
    int64_t now = pl_monotonic_us();

    long status = 0;
    if (r->easy && r->started_at_us)
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);

    resp.curl_code = curl_code;
    resp.status = status;
    resp.error = r->errbuf[0] ? r->errbuf : (curl_code ? curl_easy_strerror(curl_code) : "");
    resp.body = r->resp ? r->resp : "";
    resp.body_len = r->resp_len;
    resp.body_truncated = r->truncated;
    resp.request_id = r->request_id;
    resp.should_retry = r->should_retry;
    resp.replayed = r->replayed;
    resp.retry_after_ms = -1;
    if (r->retry_after[0]) {
        int64_t ms;
        if (pl_http_parse_retry_after(r->retry_after, (int64_t)time(NULL), &ms) == 0)
            resp.retry_after_ms = ms;
    }
    resp.duration_us = r->started_at_us ? now - r->started_at_us : 0;
    resp.queued_us = (r->started_at_us ? r->started_at_us : now) - r->queued_at_us;

    if (err == 0 && (curl_code == CURLE_OK || (r->truncated && status > 0))) {
        resp.transport = PL_HTTP_REPLIED;
    } else {
        resp.transport = r->prereq_called ? PL_HTTP_MAYBE_SENT : PL_HTTP_NOT_SENT;
        if (err == 0)
            err = curl_code == CURLE_OPERATION_TIMEDOUT ? PL_ETIMEOUT
                  : curl_code == CURLE_OUT_OF_MEMORY    ? -ENOMEM
                                                        : -EIO;
        resp.err = err;
    }

    stats_done(h, &resp);
    r->state = REQ_DONE;
    h->depth++;
    r->cb(&resp, r->userdata);
    h->depth--;
    req_free(r);
}

static int req_setup(struct pl_http *h, struct pl_http_req *r, const struct pl_http_request *in)
{
    CURL *e = curl_easy_init();
    if (!e)
        return -ENOMEM;
    r->easy = e;

    for (size_t i = 0; i < in->n_headers; i++) {
        struct curl_slist *n = curl_slist_append(r->hdrs, in->headers[i]);
        if (!n)
            return -ENOMEM;
        r->hdrs = n;
    }
    /* no "Expect: 100-continue" round trip for bodies */
    struct curl_slist *n = curl_slist_append(r->hdrs, "Expect:");
    if (!n)
        return -ENOMEM;
    r->hdrs = n;

    CURLcode rc = CURLE_OK;
#define SET(opt, val)                           \
    do {                                        \
        if (rc == CURLE_OK)                     \
            rc = curl_easy_setopt(e, opt, val); \
    } while (0)
    SET(CURLOPT_URL, r->url);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    if (h->ca_bundle)
        SET(CURLOPT_CAINFO, h->ca_bundle);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)h->connect_timeout_ms);
    SET(CURLOPT_TIMEOUT_MS, (long)h->request_timeout_ms);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_USERAGENT, h->user_agent);
    SET(CURLOPT_HTTPHEADER, r->hdrs);
    SET(CURLOPT_ERRORBUFFER, r->errbuf);
    SET(CURLOPT_PRIVATE, r);
    SET(CURLOPT_WRITEFUNCTION, write_cb);
    SET(CURLOPT_WRITEDATA, r);
    SET(CURLOPT_HEADERFUNCTION, header_cb);
    SET(CURLOPT_HEADERDATA, r);
    SET(CURLOPT_PREREQFUNCTION, prereq_cb);
    SET(CURLOPT_PREREQDATA, r);
    if (strcmp(r->method, "GET") == 0) {
        SET(CURLOPT_HTTPGET, 1L);
    } else if (strcmp(r->method, "POST") == 0) {
        SET(CURLOPT_POST, 1L);
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
        SET(CURLOPT_POSTFIELDS, r->body ? r->body : "");
    } else {
        SET(CURLOPT_CUSTOMREQUEST, r->method);
        if (r->body) {
            SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
            SET(CURLOPT_POSTFIELDS, r->body);
        }
    }
#undef SET
    return rc == CURLE_OK ? 0 : PL_EINVAL;
}

static bool header_ok(const char *s)
{
    if (!s || !strchr(s, ':') || s[0] == ':')
        return false;
    for (const char *p = s; *p; p++)
        if (*p == '\r' || *p == '\n')
            return false;
    return true;
}

static bool method_ok(const char *m)
{
    return m && (strcmp(m, "GET") == 0 || strcmp(m, "POST") == 0 || strcmp(m, "DELETE") == 0);
}

int pl_http_submit(struct pl_http *h, const struct pl_http_request *in, struct pl_http_req **out)
{
    if (!h || !in || !in->cb || !method_ok(in->method) || !pl_http_url_allowed(in->url))
        return PL_EINVAL;
    if (in->n_headers && !in->headers)
        return PL_EINVAL;
    for (size_t i = 0; i < in->n_headers; i++)
        if (!header_ok(in->headers[i]))
            return PL_EINVAL;
    if (h->closing)
        return PL_ECANCELED;

    struct pl_http_req *r = pl_xcalloc(1, sizeof *r);
    r->h = h;
    r->url = pl_xstrdup(in->url);
    r->method = pl_xstrdup(in->method);
    if (in->body) {
        r->body = pl_xmalloc(in->body_len + 1);
        memcpy(r->body, in->body, in->body_len);
        r->body[in->body_len] = 0;
        r->body_len = in->body_len;
    }
    r->should_retry = -1;
    r->cb = in->cb;
    r->userdata = in->userdata;
    r->queued_at_us = pl_monotonic_us();
    r->not_before_us = r->queued_at_us + (int64_t)in->delay_ms * PL_US_PER_MS;

    int err = req_setup(h, r, in);
    if (err < 0) {
        req_free(r);
        return err;
    }
    if (in->delay_ms) {
        r->state = REQ_DELAYED;
        list_insert_sorted(&h->delayed, r);
    } else {
        r->state = REQ_QUEUED;
        list_push(&h->queue, r);
    }
    /* Start from the loop, not from here: keeps the caller's stack free of
     * callbacks and of curl. */
    arm_gate(h, 0);
    if (out)
        *out = r;
    return 0;
}

void pl_http_cancel(struct pl_http_req *r)
{
    if (!r || r->state == REQ_DONE)
        return;
    struct pl_http *h = r->h;
    list_remove(list_of(h, r), r);
    if (r->state == REQ_IN_FLIGHT)
        curl_multi_remove_handle(h->multi, r->easy); /* not inside a curl callback */
    req_complete(r, CURLE_OK, PL_ECANCELED);
    if (!h->closing)
        arm_gate(h, 0); /* a slot may have opened */
}

/* ---- the gate: in-flight bound, token bucket, pause, delays ---------- */

static void refill(struct pl_http *h, int64_t now)
{
    if (now > h->tokens_at_us) {
        h->tokens += (now - h->tokens_at_us) * (int64_t)h->rate;
        int64_t cap = (int64_t)h->burst * TOKEN + TIMER_SLACK_US * (int64_t)h->rate;
        if (h->tokens > cap)
            h->tokens = cap;
    }
    h->tokens_at_us = now;
}

static void start(struct pl_http *h, struct pl_http_req *r, int64_t now)
{
    r->started_at_us = now;
    CURLMcode mc = curl_multi_add_handle(h->multi, r->easy);
    if (mc != CURLM_OK) {
        req_complete(r, mc == CURLM_OUT_OF_MEMORY ? CURLE_OUT_OF_MEMORY : CURLE_FAILED_INIT, 0);
        return;
    }
    r->state = REQ_IN_FLIGHT;
    list_push(&h->in_flight, r);
    h->st.started++;
    if (!h->st.first_start_us)
        h->st.first_start_us = now;
    h->st.last_start_us = now;
    if (h->in_flight.n > h->st.max_in_flight_seen)
        h->st.max_in_flight_seen = h->in_flight.n;
}

static void dispatch(struct pl_http *h)
{
    if (h->closing)
        return;
    int64_t now = pl_monotonic_us();

    /* due retries go ahead of newer work, oldest first */
    struct pl_http_req *last_due = NULL;
    for (struct pl_http_req *d = h->delayed.head; d && d->not_before_us <= now; d = d->next)
        last_due = d;
    while (last_due) {
        struct pl_http_req *prev = last_due->prev;
        list_remove(&h->delayed, last_due);
        last_due->state = REQ_QUEUED;
        list_push_front(&h->queue, last_due);
        last_due = prev;
    }

    int64_t wait_us = -1;
    while (h->queue.head && h->in_flight.n < h->max_in_flight && !h->closing) {
        if (now < h->paused_until_us) {
            wait_us = h->paused_until_us - now;
            break;
        }
        if (h->rate) {
            refill(h, now);
            if (h->tokens < TOKEN) {
                wait_us = (TOKEN - h->tokens + h->rate - 1) / h->rate;
                break;
            }
            h->tokens -= TOKEN;
        }
        struct pl_http_req *r = h->queue.head;
        list_remove(&h->queue, r);
        start(h, r, now);
    }
    if (h->closing)
        return;
    if (h->delayed.head) {
        int64_t d = h->delayed.head->not_before_us - now;
        if (d < 0)
            d = 0;
        if (wait_us < 0 || d < wait_us)
            wait_us = d;
    }
    if (wait_us >= 0)
        arm_gate(h, wait_us);
}

static void maybe_teardown(struct pl_http *h)
{
    if (h->free_pending && h->depth == 0) {
        h->free_pending = false;
        teardown(h);
    }
}

static void gate_cb(uv_timer_t *t)
{
    struct pl_http *h = pl_container_of(t, struct pl_http, gate_timer);
    dispatch(h);
    maybe_teardown(h);
}

static void arm_gate(struct pl_http *h, int64_t delay_us)
{
    if (h->closing)
        return;
    uint64_t ms = (uint64_t)((delay_us + PL_US_PER_MS - 1) / PL_US_PER_MS);
    /* uv_timer_start only fails for a closing handle, which h->closing rules out */
    int rc = uv_timer_start(&h->gate_timer, gate_cb, ms, 0);
    (void)rc;
}

/* ---- curl multi <-> uv ------------------------------------------------ */

static void process_completions(struct pl_http *h)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(h->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *e = m->easy_handle;
        CURLcode res = m->data.result; /* m is invalid after remove_handle */
        char *priv = NULL;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, &priv);
        struct pl_http_req *r = (struct pl_http_req *)(void *)priv;
        curl_multi_remove_handle(h->multi, e);
        if (!r || r->state != REQ_IN_FLIGHT)
            continue; /* cannot happen: every easy handle we add is ours */
        list_remove(&h->in_flight, r);
        req_complete(r, res, 0);
    }
    dispatch(h);
}

static void poll_cb(uv_poll_t *p, int status, int events)
{
    struct sock *s = pl_container_of(p, struct sock, poll);
    struct pl_http *h = s->h;
    curl_socket_t fd = s->fd; /* s may be closed by the call below */
    int flags = 0;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    int running;
    /* An error here is a broken multi handle; the transfers end through
     * their own timeouts and info_read, which we drain regardless. */
    curl_multi_socket_action(h->multi, fd, flags, &running);
    process_completions(h);
    maybe_teardown(h);
}

static void curl_timeout_cb(uv_timer_t *t)
{
    struct pl_http *h = pl_container_of(t, struct pl_http, curl_timer);
    int running;
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    process_completions(h);
    maybe_teardown(h);
}

static void free_if_done(struct pl_http *h)
{
    if (h->open_handles == 0 && h->multi == NULL) {
        free(h->socks);
        free(h->ca_bundle);
        free(h->user_agent);
        free(h);
    }
}

static void sock_closed(uv_handle_t *hd)
{
    struct sock *s = pl_container_of((uv_poll_t *)hd, struct sock, poll);
    struct pl_http *h = s->h;
    free(s);
    h->open_handles--;
    free_if_done(h);
}

static void sock_close(struct pl_http *h, curl_socket_t fd)
{
    if (fd < 0 || (size_t)fd >= h->n_socks || !h->socks[fd])
        return;
    struct sock *s = h->socks[fd];
    h->socks[fd] = NULL;
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, sock_closed);
}

static int socket_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct pl_http *h = userp;
    if (what == CURL_POLL_REMOVE) {
        sock_close(h, fd);
        return 0;
    }
    if (fd < 0)
        return -1;
    if ((size_t)fd >= h->n_socks) {
        size_t n = h->n_socks ? h->n_socks : 64;
        while (n <= (size_t)fd)
            n *= 2;
        h->socks = pl_xrealloc(h->socks, n * sizeof *h->socks);
        memset(h->socks + h->n_socks, 0, (n - h->n_socks) * sizeof *h->socks);
        h->n_socks = n;
    }
    struct sock *s = h->socks[fd];
    if (!s) {
        s = pl_xcalloc(1, sizeof *s);
        s->h = h;
        s->fd = fd;
        if (uv_poll_init_socket(h->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        h->open_handles++;
        h->socks[fd] = s;
    }
    int events = 0;
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    return uv_poll_start(&s->poll, events, poll_cb) == 0 ? 0 : -1;
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp)
{
    struct pl_http *h = userp;
    if (h->timers_closed)
        return 0;
    if (timeout_ms < 0)
        return uv_timer_stop(&h->curl_timer) == 0 ? 0 : -1;
    if (timeout_ms == 0)
        timeout_ms = 1; /* run it from the loop, never from inside curl */
    return uv_timer_start(&h->curl_timer, curl_timeout_cb, (uint64_t)timeout_ms, 0) == 0 ? 0 : -1;
}

/* ---- public ----------------------------------------------------------- */

#ifndef PL_VERSION
#define PL_VERSION "0"
#endif

static unsigned default_burst(unsigned rate)
{
    return rate / 10 ? rate / 10 : 1;
}

static void timer_closed(uv_handle_t *hd)
{
    struct pl_http *h = hd->data;
    h->open_handles--;
    free_if_done(h);
}

struct pl_http *pl_http_new(uv_loop_t *loop, const struct pl_http_opts *opts)
{
    struct pl_http_opts o = {0};
    if (opts)
        o = *opts;
    if (!loop)
        return NULL;

    struct pl_http *h = pl_xcalloc(1, sizeof *h);
    h->loop = loop;
    h->max_in_flight = o.max_in_flight ? o.max_in_flight : PL_HTTP_DEFAULT_MAX_IN_FLIGHT;
    h->rate = o.rate_limit;
    h->burst = o.rate_burst ? o.rate_burst : default_burst(o.rate_limit);
    h->connect_timeout_ms =
        o.connect_timeout_ms ? o.connect_timeout_ms : PL_HTTP_DEFAULT_CONNECT_TIMEOUT_MS;
    h->request_timeout_ms =
        o.request_timeout_ms ? o.request_timeout_ms : PL_HTTP_DEFAULT_REQUEST_TIMEOUT_MS;
    h->max_body_bytes = o.max_body_bytes ? o.max_body_bytes : PL_HTTP_DEFAULT_MAX_BODY_BYTES;
    h->ca_bundle = o.ca_bundle ? pl_xstrdup(o.ca_bundle) : NULL;
    h->user_agent = pl_xstrdup(o.user_agent ? o.user_agent : "pledged/" PL_VERSION);
    h->tokens = (int64_t)h->burst * TOKEN;
    h->tokens_at_us = pl_monotonic_us();

    h->multi = curl_multi_init();
    if (!h->multi)
        goto fail;
    CURLMcode mc = CURLM_OK;
#define MSET(opt, val)                                  \
    do {                                                \
        if (mc == CURLM_OK)                             \
            mc = curl_multi_setopt(h->multi, opt, val); \
    } while (0)
    MSET(CURLMOPT_SOCKETFUNCTION, socket_cb);
    MSET(CURLMOPT_SOCKETDATA, h);
    MSET(CURLMOPT_TIMERFUNCTION, timer_cb);
    MSET(CURLMOPT_TIMERDATA, h);
    /* our in-flight bound is the real limit; these keep curl's connection
     * count and cache in line with it */
    MSET(CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)h->max_in_flight);
    MSET(CURLMOPT_MAXCONNECTS, (long)h->max_in_flight);
#undef MSET
    if (mc != CURLM_OK)
        goto fail;

    /* uv_timer_init cannot fail on a valid loop; past this point the
     * struct is only freed from close callbacks */
    uv_timer_init(loop, &h->curl_timer);
    uv_timer_init(loop, &h->gate_timer);
    h->curl_timer.data = h;
    h->gate_timer.data = h;
    h->open_handles = 2;
    return h;

fail:
    if (h->multi)
        curl_multi_cleanup(h->multi);
    free(h->ca_bundle);
    free(h->user_agent);
    free(h);
    return NULL;
}

void pl_http_pause_until(struct pl_http *h, int64_t until_ms)
{
    if (!h)
        return;
    int64_t until_us = until_ms * PL_US_PER_MS;
    if (until_us > h->paused_until_us) {
        h->paused_until_us = until_us;
        h->st.paused_until_ms = until_ms;
    }
    arm_gate(h, 0);
}

void pl_http_pause_for(struct pl_http *h, int64_t delay_ms)
{
    if (delay_ms < 0)
        delay_ms = 0;
    pl_http_pause_until(h, pl_monotonic_us() / PL_US_PER_MS + delay_ms);
}

void pl_http_set_limits(struct pl_http *h, unsigned max_in_flight, unsigned rate_limit,
                        unsigned rate_burst)
{
    if (!h || h->closing)
        return;
    if (max_in_flight) {
        h->max_in_flight = max_in_flight;
        curl_multi_setopt(h->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)max_in_flight);
        curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, (long)max_in_flight);
    }
    refill(h, pl_monotonic_us()); /* settle the old rate first */
    h->rate = rate_limit;
    h->burst = rate_burst ? rate_burst : default_burst(rate_limit);
    if (h->tokens > (int64_t)h->burst * TOKEN)
        h->tokens = (int64_t)h->burst * TOKEN;
    arm_gate(h, 0);
}

void pl_http_stats(const struct pl_http *h, struct pl_http_stats *out)
{
    *out = h->st;
    out->in_flight = h->in_flight.n;
    out->queued = h->queue.n + h->delayed.n;
}

static void teardown(struct pl_http *h)
{
    h->closing = true;
    /* queued work first (never sent), then transfers in flight; a callback
     * may cancel others, so always take the current head */
    while (h->queue.head) {
        struct pl_http_req *r = h->queue.head;
        list_remove(&h->queue, r);
        req_complete(r, CURLE_OK, PL_ECANCELED);
    }
    while (h->delayed.head) {
        struct pl_http_req *r = h->delayed.head;
        list_remove(&h->delayed, r);
        req_complete(r, CURLE_OK, PL_ECANCELED);
    }
    while (h->in_flight.head) {
        struct pl_http_req *r = h->in_flight.head;
        list_remove(&h->in_flight, r);
        curl_multi_remove_handle(h->multi, r->easy);
        req_complete(r, CURLE_OK, PL_ECANCELED);
    }
    h->timers_closed = true;
    uv_close((uv_handle_t *)&h->curl_timer, timer_closed);
    uv_close((uv_handle_t *)&h->gate_timer, timer_closed);
    /* closes the cached connections; socket_cb still closes their polls */
    curl_multi_cleanup(h->multi);
    for (size_t fd = 0; fd < h->n_socks; fd++)
        if (h->socks[fd])
            sock_close(h, (curl_socket_t)fd);
    h->multi = NULL;
}

void pl_http_free(struct pl_http *h)
{
    if (!h || h->closing)
        return;
    h->closing = true;
    if (h->depth > 0) {
        h->free_pending = true;
        return;
    }
    teardown(h);
}
