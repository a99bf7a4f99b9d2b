/*
 * http — an HTTP client on the daemon's libuv loop (libcurl multi-socket).
 *
 * Owns: one curl multi handle (one connection cache: keep-alive and reuse),
 * the uv_poll handles of its sockets, a FIFO of requests waiting to start,
 * a hard bound on requests in flight, a token-bucket rate limit, a global
 * pause (the gateway said 429 / Retry-After) and the counters /metrics shows.
 *
 * Never: blocks, turns TLS verification off, follows redirects, speaks
 * plain http:// to anything but a loopback host, buffers a reply body past
 * max_body_bytes, or logs (the caller decides what to log; request headers
 * carry secrets and are never exposed again after submission).
 *
 * Every callback runs on the loop thread, never from inside a libcurl
 * callback and never before pl_http_submit() has returned.
 */
#ifndef PL_HTTP_H
#define PL_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct pl_http;
struct pl_http_req;

#define PL_HTTP_DEFAULT_MAX_IN_FLIGHT      16
#define PL_HTTP_DEFAULT_CONNECT_TIMEOUT_MS 10000
#define PL_HTTP_DEFAULT_REQUEST_TIMEOUT_MS 80000 /* Stripe's own clients wait 80 s */
#define PL_HTTP_DEFAULT_MAX_BODY_BYTES     (1024 * 1024)
/* A Retry-After beyond this is treated as this: one bogus header must not
 * stall billing for hours. */
#define PL_HTTP_RETRY_AFTER_MAX_MS (120 * 1000)

/* Zero in any field selects the default named beside it. */
struct pl_http_opts {
    unsigned max_in_flight;      /* PL_HTTP_DEFAULT_MAX_IN_FLIGHT */
    unsigned rate_limit;         /* requests started per second; 0 = unlimited */
    unsigned rate_burst;         /* bucket size; default max(1, rate_limit / 10) */
    unsigned connect_timeout_ms; /* PL_HTTP_DEFAULT_CONNECT_TIMEOUT_MS */
    unsigned request_timeout_ms; /* whole transfer; PL_HTTP_DEFAULT_REQUEST_TIMEOUT_MS */
    const char *ca_bundle;       /* PEM file; NULL = the system store. Copied. */
    size_t max_body_bytes;       /* PL_HTTP_DEFAULT_MAX_BODY_BYTES */
    const char *user_agent;      /* NULL = "pledged/<version>". Copied. */
};

/* How far a request got. This is what tells "surely not executed" (safe to
 * resend at once) from "may have executed" (outcome unknown). */
enum pl_http_transport {
    PL_HTTP_REPLIED = 0, /* status line and headers arrived; see body_truncated */
    PL_HTTP_NOT_SENT,    /* failed or cancelled before any byte of the request was
                            handed to a connection (DNS, connect, TLS handshake,
                            connect timeout, still queued) */
    PL_HTTP_MAYBE_SENT,  /* failed or cancelled after that (timeout, reset, empty
                            reply): the server may have executed it */
};

/* Everything borrowed: valid only during the callback. */
struct pl_http_response {
    enum pl_http_transport transport;
    int err;           /* 0; PL_ECANCELED (pl_http_cancel/free); PL_ETIMEOUT;
                          -EIO or -ENOMEM for other transport failures */
    int curl_code;     /* CURLcode, for diagnostics */
    const char *error; /* curl's text for curl_code; "" when none */
    long status;       /* HTTP status; 0 when no status line arrived */
    const char *body;  /* NUL-terminated (body[body_len] == 0); "" when none */
    size_t body_len;
    bool body_truncated;    /* reply was larger than max_body_bytes: body is a prefix */
    const char *request_id; /* Request-Id header; "" when absent */
    int should_retry;       /* Stripe-Should-Retry: 1 true, 0 false, -1 absent */
    int64_t retry_after_ms; /* Retry-After (delta or HTTP-date), clamped to
                               [0, PL_HTTP_RETRY_AFTER_MAX_MS]; -1 absent/invalid */
    bool replayed;          /* Idempotent-Replayed: true */
    int64_t duration_us;    /* from start of transfer (not queueing) to completion */
    int64_t queued_us;      /* time spent waiting in the queue */
};

typedef void (*pl_http_cb)(const struct pl_http_response *resp, void *userdata);

struct pl_http_request {
    const char *method;         /* "GET", "POST", "DELETE" */
    const char *url;            /* https://…, or http:// to a loopback host */
    const char *const *headers; /* "Name: value" lines; CR/LF refused */
    size_t n_headers;
    const char *body; /* may be NULL for no body */
    size_t body_len;
    unsigned delay_ms; /* do not start before now + delay_ms (backoff) */
    pl_http_cb cb;
    void *userdata;
};

/*
 * New client on `loop`. opts may be NULL (all defaults). Returns NULL only if
 * curl cannot be set up or opts are invalid (ca_bundle unreadable is noticed
 * at request time by curl, as a NOT_SENT failure).
 * curl_global_init() is the caller's job (main), once, before any thread.
 */
struct pl_http *pl_http_new(uv_loop_t *loop, const struct pl_http_opts *opts);

/*
 * Queue a request. Everything in `req` is copied, so the caller may free it on
 * return. On success, *out (if not NULL) gets a handle valid until the
 * callback runs, and the callback runs exactly once, later, on the loop.
 * Errors (the callback is then never called):
 *   PL_EINVAL     bad method/url/header, or http:// to a non-loopback host
 *   PL_ECANCELED  the client is shutting down
 */
int pl_http_submit(struct pl_http *h, const struct pl_http_request *req, struct pl_http_req **out);

/* Cancel one request: its callback runs before this returns, with
 * err = PL_ECANCELED and transport NOT_SENT (was queued) or MAYBE_SENT
 * (was in flight). Must not be called from inside that request's callback. */
void pl_http_cancel(struct pl_http_req *r);

/* Start no request before `until_ms` on pl_monotonic_us()/1000's clock, or
 * for `delay_ms` from now. A pause only ever extends; requests in flight go on. */
void pl_http_pause_until(struct pl_http *h, int64_t until_ms);
void pl_http_pause_for(struct pl_http *h, int64_t delay_ms);

/* Change the limits at run time (SIGHUP); 0 keeps in-flight unchanged,
 * rate 0 = unlimited, burst 0 = default for the rate. Requests already in
 * flight above a lowered bound finish; no new one starts until under it. */
void pl_http_set_limits(struct pl_http *h, unsigned max_in_flight, unsigned rate_limit,
                        unsigned rate_burst);

/* Duration histogram upper bounds in milliseconds (Prometheus "le"); the
 * last bucket of `duration_buckets` is +Inf. */
#define PL_HTTP_N_BUCKETS 10
extern const unsigned pl_http_bucket_ms[PL_HTTP_N_BUCKETS - 1];

struct pl_http_stats {
    unsigned in_flight, queued;  /* now; queued includes delayed retries */
    unsigned max_in_flight_seen; /* high-water mark since pl_http_new */
    uint64_t started;            /* transfers handed to curl */
    uint64_t completed;          /* callbacks run (incl. failures and cancels) */
    uint64_t by_class[6];        /* [0] no reply, [1..5] 1xx..5xx */
    uint64_t status_429;
    uint64_t not_sent, maybe_sent;                /* transport failures by kind */
    uint64_t duration_us_sum;                     /* over replied requests */
    uint64_t duration_buckets[PL_HTTP_N_BUCKETS]; /* cumulative counts, Prometheus style */
    int64_t first_start_us, last_start_us;        /* pl_monotonic_us() of first/last start */
    int64_t paused_until_ms;                      /* 0 when never paused */
};
void pl_http_stats(const struct pl_http *h, struct pl_http_stats *out);

/*
 * Cancel everything (callbacks run with PL_ECANCELED before this returns,
 * queued first, then in flight) and close the uv handles; the memory is
 * released from their close callbacks, so run the loop afterwards until it
 * has no more handles. May be called from inside a callback of this client
 * (the teardown then happens when that callback returns). NULL is ignored.
 */
void pl_http_free(struct pl_http *h);

/* Parse a Retry-After value (delta-seconds or an HTTP-date) into ms from
 * `now_s` (unix seconds), clamped to [0, PL_HTTP_RETRY_AFTER_MAX_MS].
 * Returns 0, or PL_EPARSE (out untouched). */
int pl_http_parse_retry_after(const char *value, int64_t now_s, int64_t *out_ms);

/* True if `url` may be fetched: https://, or http:// to localhost, 127.0.0.0/8
 * or [::1]. Everything else (other schemes, userinfo tricks) is refused. */
bool pl_http_url_allowed(const char *url);

#endif
