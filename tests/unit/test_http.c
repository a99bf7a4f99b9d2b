/*
 * Unit tests for lib/http.c: Retry-After and URL policy, then the client on
 * a real loop against a tiny HTTP/1.1 server running in the same loop
 * (paths: /ok /slow /big /drop /hang /echo). Checks the in-flight bound
 * (client and server side), the body cap, transport classes, the token
 * bucket, pause and delay, cancellation and teardown with nothing leaked.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <uv.h>

#include "http.h"
#include "util.h"

/* ---- pure parts ---------------------------------------------------------- */

static void test_retry_after(void **state)
{
    int64_t ms = -7;
    assert_int_equal(pl_http_parse_retry_after("3", 0, &ms), 0);
    assert_int_equal(ms, 3000);
    assert_int_equal(pl_http_parse_retry_after("  0 \r\n", 0, &ms), 0);
    assert_int_equal(ms, 0);
    /* clamped on both sides */
    assert_int_equal(pl_http_parse_retry_after("999999999999999999999", 0, &ms), 0);
    assert_int_equal(ms, PL_HTTP_RETRY_AFTER_MAX_MS);
    assert_int_equal(pl_http_parse_retry_after("120", 0, &ms), 0);
    assert_int_equal(ms, PL_HTTP_RETRY_AFTER_MAX_MS);
    assert_int_equal(pl_http_parse_retry_after("121", 0, &ms), 0);
    assert_int_equal(ms, PL_HTTP_RETRY_AFTER_MAX_MS);
    assert_int_equal(pl_http_parse_retry_after("119", 0, &ms), 0);
    assert_int_equal(ms, 119000);
    /* HTTP-date: 1994-11-06 08:49:37 GMT = 784111777 */
    assert_int_equal(pl_http_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111770, &ms), 0);
    assert_int_equal(ms, 7000);
    assert_int_equal(pl_http_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111800, &ms), 0);
    assert_int_equal(ms, 0); /* in the past */
    /* garbage leaves out alone */
    ms = -7;
    assert_int_equal(pl_http_parse_retry_after("", 0, &ms), PL_EPARSE);
    assert_int_equal(pl_http_parse_retry_after("-1", 0, &ms), PL_EPARSE);
    assert_int_equal(pl_http_parse_retry_after("1.5", 0, &ms), PL_EPARSE);
    assert_int_equal(pl_http_parse_retry_after("3s", 0, &ms), PL_EPARSE);
    assert_int_equal(pl_http_parse_retry_after("soon", 0, &ms), PL_EPARSE);
    assert_int_equal(pl_http_parse_retry_after(NULL, 0, &ms), PL_EPARSE);
    assert_int_equal(ms, -7);
}

static void test_url_policy(void **state)
{
    assert_true(pl_http_url_allowed("https://api.stripe.com/v1/payment_intents"));
    assert_true(pl_http_url_allowed("http://127.0.0.1:12111/v1"));
    assert_true(pl_http_url_allowed("http://127.1.2.3/"));
    assert_true(pl_http_url_allowed("http://localhost:8080"));
    assert_true(pl_http_url_allowed("http://[::1]:8080/"));
    assert_false(pl_http_url_allowed("http://example.com/"));
    assert_false(pl_http_url_allowed("http://127.0.0.1.example.com/"));
    assert_false(pl_http_url_allowed("http://127.0.0.1@example.com/"));
    assert_false(pl_http_url_allowed("https://user:pw@api.stripe.com/"));
    assert_false(pl_http_url_allowed("http://10.0.0.1/"));
    assert_false(pl_http_url_allowed("http://1270.0.0.1/"));
    assert_false(pl_http_url_allowed("ftp://127.0.0.1/"));
    assert_false(pl_http_url_allowed("file:///etc/passwd"));
    assert_false(pl_http_url_allowed("not a url"));
    assert_false(pl_http_url_allowed(""));
    assert_false(pl_http_url_allowed(NULL));
}

/* ---- a tiny server in the test's loop ------------------------------------ */

struct srv {
    uv_tcp_t listener;
    int port;
    unsigned open, max_open, requests;
    struct conn *conns;
};

struct conn {
    uv_tcp_t tcp;
    struct srv *srv;
    struct conn *next;
    uv_timer_t timer;
    char buf[65536];
    size_t len;
    bool closing;
    char pending_path[64];
};

static void conn_closed_timer(uv_handle_t *h)
{
    struct conn *c = h->data;
    free(c);
}

static void conn_closed(uv_handle_t *h)
{
    struct conn *c = pl_container_of((uv_tcp_t *)h, struct conn, tcp);
    uv_close((uv_handle_t *)&c->timer, conn_closed_timer);
}

static void conn_close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    c->srv->open--;
    struct conn **pp = &c->srv->conns;
    while (*pp && *pp != c)
        pp = &(*pp)->next;
    if (*pp)
        *pp = c->next;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

static void write_done(uv_write_t *w, int status)
{
    free(w->data);
    free(w);
}

static void send_raw(struct conn *c, const char *data, size_t n)
{
    uv_write_t *w = malloc(sizeof *w);
    char *copy = malloc(n);
    memcpy(copy, data, n);
    w->data = copy;
    uv_buf_t b = uv_buf_init(copy, (unsigned)n);
    if (uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, write_done) != 0) {
        free(copy);
        free(w);
    }
}

static void send_reply(struct conn *c, int status, const char *extra, const char *body,
                       size_t body_len)
{
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d X\r\nContent-Length: %zu\r\nContent-Type: text/plain\r\n%s\r\n",
                     status, body_len, extra ? extra : "");
    send_raw(c, head, (size_t)n);
    if (body_len)
        send_raw(c, body, body_len);
}

static void slow_fire(uv_timer_t *t)
{
    struct conn *c = t->data;
    send_reply(c, 200, NULL, "slow", 4);
}

static void handle(struct conn *c, const char *path, const char *body, size_t body_len)
{
    c->srv->requests++;
    if (strcmp(path, "/ok") == 0) {
        send_reply(c, 200,
                   "Request-Id: req_abc\r\nStripe-Should-Retry: false\r\nRetry-After: 3\r\n"
                   "Idempotent-Replayed: true\r\n",
                   "hello", 5);
    } else if (strcmp(path, "/slow") == 0) {
        uv_timer_start(&c->timer, slow_fire, 100, 0);
    } else if (strcmp(path, "/big") == 0) {
        size_t n = 2 * 1024 * 1024;
        char *b = malloc(n);
        memset(b, 'b', n);
        send_reply(c, 200, NULL, b, n);
        free(b);
    } else if (strcmp(path, "/drop") == 0) {
        conn_close(c);
    } else if (strcmp(path, "/hang") == 0) {
        /* nothing */
    } else if (strcmp(path, "/echo") == 0) {
        send_reply(c, 201, NULL, body, body_len);
    } else {
        send_reply(c, 404, NULL, "", 0);
    }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct conn *c = h->data;
    buf->base = c->buf + c->len;
    buf->len = sizeof c->buf - c->len - 1;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    if (n < 0) {
        conn_close(c);
        return;
    }
    c->len += (size_t)n;
    c->buf[c->len] = 0;
    for (;;) {
        char *end = strstr(c->buf, "\r\n\r\n");
        if (!end)
            return;
        size_t head_len = (size_t)(end - c->buf) + 4;
        size_t clen = 0;
        char *cl = strcasestr(c->buf, "\r\nContent-Length:");
        if (cl && cl < end)
            clen = strtoul(cl + 17, NULL, 10);
        if (c->len < head_len + clen)
            return;
        char path[64] = "";
        sscanf(c->buf, "%*s %63s", path);
        handle(c, path, c->buf + head_len, clen);
        if (c->closing)
            return;
        memmove(c->buf, c->buf + head_len + clen, c->len - head_len - clen);
        c->len -= head_len + clen;
        c->buf[c->len] = 0;
    }
}

static void on_conn(uv_stream_t *l, int status)
{
    struct srv *s = l->data;
    struct conn *c = calloc(1, sizeof *c);
    c->srv = s;
    uv_tcp_init(l->loop, &c->tcp);
    uv_timer_init(l->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, conn_closed);
        return;
    }
    c->next = s->conns;
    s->conns = c;
    s->open++;
    if (s->open > s->max_open)
        s->max_open = s->open;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void srv_start(uv_loop_t *loop, struct srv *s)
{
    memset(s, 0, sizeof *s);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_init(loop, &s->listener), 0);
    s->listener.data = s;
    assert_int_equal(uv_tcp_bind(&s->listener, (const struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&s->listener, 128, on_conn), 0);
    struct sockaddr_storage ss;
    int len = sizeof ss;
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len);
    s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void srv_stop(struct srv *s)
{
    while (s->conns)
        conn_close(s->conns);
    uv_close((uv_handle_t *)&s->listener, NULL);
}

/* ---- client helpers ------------------------------------------------------ */

struct got {
    int calls;
    enum pl_http_transport transport;
    int err;
    long status;
    char body[64];
    size_t body_len;
    bool truncated;
    char request_id[64];
    int should_retry;
    int64_t retry_after_ms;
    bool replayed;
    int64_t queued_us;
};

static void on_done(const struct pl_http_response *r, void *ud)
{
    struct got *g = ud;
    g->calls++;
    g->transport = r->transport;
    g->err = r->err;
    g->status = r->status;
    g->body_len = r->body_len;
    pl_strlcpy(g->body, r->body, sizeof g->body);
    g->truncated = r->body_truncated;
    pl_strlcpy(g->request_id, r->request_id, sizeof g->request_id);
    g->should_retry = r->should_retry;
    g->retry_after_ms = r->retry_after_ms;
    g->replayed = r->replayed;
    g->queued_us = r->queued_us;
    assert_int_equal(r->body[r->body_len], 0);
}

static char url_buf[128];
static const char *url(struct srv *s, const char *path)
{
    snprintf(url_buf, sizeof url_buf, "http://127.0.0.1:%d%s", s->port, path);
    return url_buf;
}

static void submit(struct pl_http *h, const char *u, struct got *g, unsigned delay_ms)
{
    struct pl_http_request rq = {
        .method = "GET", .url = u, .cb = on_done, .userdata = g, .delay_ms = delay_ms};
    assert_int_equal(pl_http_submit(h, &rq, NULL), 0);
}

static void run_until(uv_loop_t *loop, struct got *g, int n, int want)
{
    int64_t deadline = pl_monotonic_us() + 10 * PL_US_PER_S;
    for (;;) {
        int done = 0;
        for (int i = 0; i < n; i++)
            done += g[i].calls;
        if (done >= want)
            return;
        assert_true(pl_monotonic_us() < deadline);
        uv_run(loop, UV_RUN_ONCE);
    }
}

static void finish(uv_loop_t *loop, struct pl_http *h, struct srv *s)
{
    pl_http_free(h);
    srv_stop(s);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(loop), 0); /* every handle closed */
}

/* ---- live tests --------------------------------------------------------- */

static void test_reply_and_headers(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct srv s;
    srv_start(&loop, &s);
    struct pl_http *h = pl_http_new(&loop, NULL);
    assert_non_null(h);

    struct got g = {0};
    submit(h, url(&s, "/ok"), &g, 0);
    assert_int_equal(g.calls, 0); /* never from inside submit */
    run_until(&loop, &g, 1, 1);
    assert_int_equal(g.transport, PL_HTTP_REPLIED);
    assert_int_equal(g.err, 0);
    assert_int_equal(g.status, 200);
    assert_string_equal(g.body, "hello");
    assert_string_equal(g.request_id, "req_abc");
    assert_int_equal(g.should_retry, 0);
    assert_int_equal(g.retry_after_ms, 3000);
    assert_true(g.replayed);

    /* a POST body goes out byte for byte, NULs included */
    struct got e = {0};
    static const char body[] = "a=1&b=\0x";
    const char *hdrs[] = {"Content-Type: application/x-www-form-urlencoded"};
    struct pl_http_request rq = {.method = "POST",
                                 .url = url(&s, "/echo"),
                                 .headers = hdrs,
                                 .n_headers = 1,
                                 .body = body,
                                 .body_len = sizeof body - 1,
                                 .cb = on_done,
                                 .userdata = &e};
    assert_int_equal(pl_http_submit(h, &rq, NULL), 0);
    run_until(&loop, &e, 1, 1);
    assert_int_equal(e.status, 201);
    assert_int_equal(e.body_len, sizeof body - 1);
    assert_int_equal(e.request_id[0], 0);
    assert_int_equal(e.should_retry, -1);
    assert_int_equal(e.retry_after_ms, -1);

    struct pl_http_stats st;
    pl_http_stats(h, &st);
    assert_int_equal(st.started, 2);
    assert_int_equal(st.completed, 2);
    assert_int_equal(st.by_class[2], 2);
    assert_int_equal(st.duration_buckets[PL_HTTP_N_BUCKETS - 1], 2);
    finish(&loop, h, &s);
}

static void test_submit_refuses(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct pl_http *h = pl_http_new(&loop, NULL);
    struct got g = {0};
    const char *bad_hdr[] = {"X-Evil: a\r\nInjected: b"};
    const char *no_colon[] = {"NoColon"};
    struct pl_http_request cases[] = {
        {.method = "GET", .url = "http://example.com/", .cb = on_done, .userdata = &g},
        {.method = "GET", .url = "ftp://127.0.0.1/", .cb = on_done, .userdata = &g},
        {.method = "PUT", .url = "http://127.0.0.1/", .cb = on_done, .userdata = &g},
        {.method = "GET", .url = "http://127.0.0.1/", .cb = NULL},
        {.method = "GET",
         .url = "http://127.0.0.1/",
         .headers = bad_hdr,
         .n_headers = 1,
         .cb = on_done,
         .userdata = &g},
        {.method = "GET",
         .url = "http://127.0.0.1/",
         .headers = no_colon,
         .n_headers = 1,
         .cb = on_done,
         .userdata = &g},
    };
    for (size_t i = 0; i < PL_ARRAY_LEN(cases); i++)
        assert_int_equal(pl_http_submit(h, &cases[i], NULL), PL_EINVAL);
    pl_http_free(h);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(g.calls, 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_in_flight_bound(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct srv s;
    srv_start(&loop, &s);
    struct pl_http_opts o = {.max_in_flight = 4};
    struct pl_http *h = pl_http_new(&loop, &o);
    struct got g[20] = {0};
    for (int i = 0; i < 20; i++)
        submit(h, url(&s, "/slow"), &g[i], 0);
    struct pl_http_stats st;
    pl_http_stats(h, &st);
    assert_int_equal(st.queued, 20);
    run_until(&loop, g, 20, 20);
    for (int i = 0; i < 20; i++)
        assert_int_equal(g[i].status, 200);
    pl_http_stats(h, &st);
    assert_int_equal(st.max_in_flight_seen, 4);
    assert_true(s.max_open <= 4);
    assert_int_equal(s.requests, 20);

    /* lowered at run time */
    pl_http_set_limits(h, 2, 0, 0);
    struct got g2[6] = {0};
    for (int i = 0; i < 6; i++)
        submit(h, url(&s, "/slow"), &g2[i], 0);
    run_until(&loop, g2, 6, 2);
    pl_http_stats(h, &st);
    assert_true(st.in_flight <= 2);
    run_until(&loop, g2, 6, 6);
    finish(&loop, h, &s);
}

static void test_body_cap(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct srv s;
    srv_start(&loop, &s);
    struct pl_http_opts o = {.max_body_bytes = 1000};
    struct pl_http *h = pl_http_new(&loop, &o);
    struct got g = {0};
    submit(h, url(&s, "/big"), &g, 0);
    run_until(&loop, &g, 1, 1);
    assert_int_equal(g.transport, PL_HTTP_REPLIED);
    assert_int_equal(g.status, 200);
    assert_true(g.truncated);
    assert_int_equal(g.body_len, 1000);
    finish(&loop, h, &s);
}

static void test_transport_classes(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct srv s;
    srv_start(&loop, &s);
    struct pl_http_opts o = {.request_timeout_ms = 300};
    struct pl_http *h = pl_http_new(&loop, &o);

    /* closed port: refused before anything was sent */
    struct srv closed;
    srv_start(&loop, &closed);
    int dead_port = closed.port;
    srv_stop(&closed);
    uv_run(&loop, UV_RUN_NOWAIT);
    char dead[64];
    snprintf(dead, sizeof dead, "http://127.0.0.1:%d/ok", dead_port);

    struct got g[3] = {0};
    submit(h, dead, &g[0], 0);
    submit(h, url(&s, "/drop"), &g[1], 0);
    submit(h, url(&s, "/hang"), &g[2], 0);
    run_until(&loop, g, 3, 3);
    assert_int_equal(g[0].transport, PL_HTTP_NOT_SENT);
    assert_int_equal(g[0].err, -EIO);
    assert_int_equal(g[1].transport, PL_HTTP_MAYBE_SENT);
    assert_int_equal(g[2].transport, PL_HTTP_MAYBE_SENT);
    assert_int_equal(g[2].err, PL_ETIMEOUT);
    struct pl_http_stats st;
    pl_http_stats(h, &st);
    assert_int_equal(st.not_sent, 1);
    assert_int_equal(st.maybe_sent, 2);
    finish(&loop, h, &s);
}

static void test_rate_limit(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct srv s;
    srv_start(&loop, &s);
    struct pl_http_opts o = {.rate_limit = 50, .rate_burst = 1};
    struct pl_http *h = pl_http_new(&loop, &o);
    struct got g[11] = {0};
    for (int i = 0; i < 11; i++)
        submit(h, url(&s, "/ok"), &g[i], 0);
    run_until(&loop, g, 11, 11);
    struct pl_http_stats st;
    pl_http_stats(h, &st);
    int64_t span_ms = (st.last_start_us - st.first_start_us) / PL_US_PER_MS;
    /* 10 intervals of 20 ms, less at most the 5 ms of timer slack */
    assert_true(span_ms >= 194);
    assert_true(span_ms < 1000);
    finish(&loop, h, &s);
}

static void test_pause_and_delay(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct srv s;
    srv_start(&loop, &s);
    struct pl_http *h = pl_http_new(&loop, NULL);
    struct got g[2] = {0};
    pl_http_pause_for(h, 200);
    submit(h, url(&s, "/ok"), &g[0], 0);
    run_until(&loop, g, 1, 1);
    assert_true(g[0].queued_us >= 190 * PL_US_PER_MS);
    submit(h, url(&s, "/ok"), &g[1], 150);
    run_until(&loop, &g[1], 1, 1);
    assert_true(g[1].queued_us >= 145 * PL_US_PER_MS);
    /* a pause never shortens */
    pl_http_pause_for(h, 300);
    pl_http_pause_for(h, 10);
    struct pl_http_stats st;
    pl_http_stats(h, &st);
    assert_true(st.paused_until_ms - pl_monotonic_us() / PL_US_PER_MS > 250);
    finish(&loop, h, &s);
}

static void test_cancel_and_free(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct srv s;
    srv_start(&loop, &s);
    struct pl_http_opts o = {.max_in_flight = 2};
    struct pl_http *h = pl_http_new(&loop, &o);
    struct got g[6] = {0};
    struct pl_http_req *r5 = NULL;
    for (int i = 0; i < 5; i++)
        submit(h, url(&s, "/hang"), &g[i], 0);
    struct pl_http_request rq = {
        .method = "GET", .url = url(&s, "/hang"), .cb = on_done, .userdata = &g[5]};
    assert_int_equal(pl_http_submit(h, &rq, &r5), 0);
    /* let two reach the server */
    while (s.requests < 2)
        uv_run(&loop, UV_RUN_ONCE);
    pl_http_cancel(r5); /* queued: its callback runs now */
    assert_int_equal(g[5].calls, 1);
    assert_int_equal(g[5].err, PL_ECANCELED);
    assert_int_equal(g[5].transport, PL_HTTP_NOT_SENT);

    pl_http_free(h); /* callbacks run before it returns */
    int maybe = 0;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(g[i].calls, 1);
        assert_int_equal(g[i].err, PL_ECANCELED);
        maybe += g[i].transport == PL_HTTP_MAYBE_SENT;
    }
    assert_int_equal(maybe, 2);
    srv_stop(&s);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* free from inside a completion callback: the teardown waits for it */
struct self_free {
    struct pl_http *h;
    struct got g;
    int others;
};

static void free_in_cb(const struct pl_http_response *r, void *ud)
{
    struct self_free *sf = ud;
    on_done(r, &sf->g);
    pl_http_free(sf->h);
    struct pl_http_request rq = {
        .method = "GET", .url = "http://127.0.0.1:1/", .cb = on_done, .userdata = &sf->g};
    assert_int_equal(pl_http_submit(sf->h, &rq, NULL), PL_ECANCELED);
}

static void count_cb(const struct pl_http_response *r, void *ud)
{
    struct self_free *sf = ud;
    assert_int_equal(r->err, PL_ECANCELED);
    sf->others++;
}

static void test_free_inside_callback(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct srv s;
    srv_start(&loop, &s);
    struct self_free sf = {0};
    sf.h = pl_http_new(&loop, NULL);
    struct pl_http_request a = {
        .method = "GET", .url = url(&s, "/ok"), .cb = free_in_cb, .userdata = &sf};
    assert_int_equal(pl_http_submit(sf.h, &a, NULL), 0);
    struct pl_http_request b = {
        .method = "GET", .url = url(&s, "/hang"), .cb = count_cb, .userdata = &sf};
    assert_int_equal(pl_http_submit(sf.h, &b, NULL), 0);
    while (!sf.g.calls)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(sf.others, 1);
    srv_stop(&s);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_after),          cmocka_unit_test(test_url_policy),
        cmocka_unit_test(test_reply_and_headers),    cmocka_unit_test(test_submit_refuses),
        cmocka_unit_test(test_in_flight_bound),      cmocka_unit_test(test_body_cap),
        cmocka_unit_test(test_transport_classes),    cmocka_unit_test(test_rate_limit),
        cmocka_unit_test(test_pause_and_delay),      cmocka_unit_test(test_cancel_and_free),
        cmocka_unit_test(test_free_inside_callback),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
