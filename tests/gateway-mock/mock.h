/*
 * pledged-gateway-mock: a test server that speaks Stripe's dialect.
 *
 * Internal header shared by the mock's translation units. The mock is a
 * standalone program (it never links libpledge). All mutable state (objects,
 * idempotency table, fault configuration, counters, random streams) lives
 * behind one mutex, gm_lock; every operation on it is short and in-memory,
 * so slow paths (latency, hangs, webhook delivery) always run unlocked.
 */
#ifndef GM_MOCK_H
#define GM_MOCK_H

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GM_MAX_BODY_BYTES        (1024 * 1024)
#define GM_MAX_IDEM_KEY_CHARS    255
#define GM_DEFAULT_RETENTION_S   86400
#define GM_DEFAULT_RETRY_AFTER_S 1

/* ---- form.c: application/x-www-form-urlencoded ------------------------ */

struct gm_param {
    char *key;
    char *val;
};

struct gm_form {
    struct gm_param *v;
    size_t n;
    size_t cap;
};

/* Decode %XX and (when plus_is_space) '+' in place; returns the new length,
 * or (size_t)-1 on a malformed escape. */
size_t gm_unescape(char *s, bool plus_is_space);
/* Parse a body into f (appends). 0, or -EINVAL on a malformed escape,
 * -ENOMEM. */
int gm_form_parse(struct gm_form *f, const char *body, size_t len);
/* Append a copy of key/val (val may be NULL → ""). 0 or -ENOMEM. */
int gm_form_add(struct gm_form *f, const char *key, const char *val);
void gm_form_release(struct gm_form *f);
/* Last value for key, borrowed; NULL when absent. */
const char *gm_form_get(const struct gm_form *f, const char *key);
/* Canonical, order-independent rendering of the parameters (new string), used
 * to tell "same key, other parameters" apart. NULL on ENOMEM. */
char *gm_form_fingerprint(const struct gm_form *f);

/* ---- util (state.c) ----------------------------------------------------- */

int64_t gm_now_ms(void);
int64_t gm_now_s(void);
/* Random streams (xoshiro-ish splitmix64), reproducible from --seed. */
enum gm_stream { GM_RNG_IDS, GM_RNG_REQ, GM_RNG_FAULTS, GM_RNG_COUNT };
uint64_t gm_rand(enum gm_stream s);
double gm_rand01(enum gm_stream s);
void gm_rand_seed(uint64_t seed);
/* Write "<prefix><n random alnum chars>" into out (size ≥ strlen(prefix)+n+1). */
void gm_rand_id(enum gm_stream s, char *out, const char *prefix, size_t n);

extern pthread_mutex_t gm_lock;

/* ---- faults.c ----------------------------------------------------------- */

enum gm_fault {
    GM_F_429,
    GM_F_503,
    GM_F_DROP_BEFORE,
    GM_F_HANG,
    GM_F_500,
    GM_F_DROP_AFTER,
    GM_F_COUNT
};

/* Reset the live config to the startup config. Locked by caller. */
void gm_config_reset(void);
/* Merge JSON into the live config (or the startup config while starting).
 * On error returns -EINVAL and writes a message into err. Locked by caller. */
int gm_config_apply(json_t *j, char *err, size_t errlen);
/* Copy the live config into the startup config (after flags are parsed). */
void gm_config_commit_startup(void);
json_t *gm_config_json(void); /* new reference; locked by caller */
/* Decide whether fault f fires for this request: next_n counters first (token
 * then global), then rates. Locked by caller. */
bool gm_fault_roll(enum gm_fault f, const char *token, const char *method, const char *path);
/* Latency to add (ms) for this request; locked by caller. */
int64_t gm_fault_latency_ms(const char *token, const char *method, const char *path);
unsigned gm_config_retry_after_s(void);
int64_t gm_config_search_lag_ms(void);
const char *gm_fault_name(enum gm_fault f);

/* ---- state.c: objects, idempotency, ledger, persistence ---------------- */

struct gm_pi {
    char id[40];
    char charge_id[40]; /* "" when no charge was attempted */
    int64_t amount;
    int64_t amount_received;
    int64_t amount_refunded;
    char currency[4];
    char *customer;       /* NULL when absent */
    char *payment_method; /* as reported in the PI (NULL after a decline) */
    char *pm_used;        /* the token the request named (ledger) */
    char *description;
    char *sd_suffix;
    char status[32];
    json_t *metadata;           /* owned object */
    json_t *last_payment_error; /* owned or NULL */
    json_t *next_action;        /* owned or NULL */
    int64_t created_ms;
    char *idem_key;
    char *request_id;
    char fault[32]; /* fault injected after execution, "" if none */
    bool confirmed;
};

struct gm_refund {
    char id[40];
    char pi_id[40];
    char charge_id[40];
    int64_t amount;
    char currency[4];
    char *reason;
    char *idem_key;
    char *source; /* "api" or "webhook" */
    json_t *metadata;
    int64_t created_ms;
    char fault[32];
};

struct gm_dispute {
    char id[40];
    char pi_id[40];
    char charge_id[40];
    int64_t amount;
    char currency[4];
    char *reason;
    int64_t created_ms;
};

struct gm_counters {
    uint64_t requests_total;
    uint64_t by_status[600];
    uint64_t replays;
    uint64_t dropped_before;
    uint64_t dropped_after;
    uint64_t hung;
    uint64_t conflicts;
    uint64_t control_requests;
    int64_t connections_current;
    int64_t connections_max;
    uint64_t connections_total;
    int64_t api_connections_current;
    int64_t api_connections_max;
    int64_t in_flight_current;
    int64_t in_flight_max;
};

extern struct gm_counters gm_counters;

/* Everything below: locked by caller. */
int gm_state_init(int64_t retention_s);
void gm_state_clear(void);     /* objects and idempotency; counters too */
struct gm_pi *gm_pi_new(void); /* stored; ids filled; NULL on ENOMEM */
struct gm_pi *gm_pi_find(const char *id);
struct gm_pi *gm_pi_find_by_charge(const char *charge_id);
/* Index pi->charge_id once it is set. 0 or -ENOMEM. */
int gm_pi_index_charge(struct gm_pi *pi);
size_t gm_pi_count(void);
struct gm_pi *gm_pi_at(size_t i); /* creation order */
void gm_pi_persist(const struct gm_pi *pi);
json_t *gm_pi_json(const struct gm_pi *pi); /* Stripe shape, new ref */
struct gm_refund *gm_refund_new(struct gm_pi *pi, int64_t amount, const char *reason,
                                const char *idem_key, const char *source, json_t *metadata);
struct gm_refund *gm_refund_find(const char *id);
json_t *gm_refund_json(const struct gm_refund *r);
json_t *gm_pi_refunds_json(const struct gm_pi *pi); /* Stripe list of refunds */
struct gm_dispute *gm_dispute_new(const char *pi_id, const char *charge_id, int64_t amount,
                                  const char *currency, const char *reason);
json_t *gm_dispute_json(const struct gm_dispute *d);
/* Mark the ledger object created by a request with an after-execute fault. */
void gm_ledger_mark_fault(const char *obj_id, const char *fault);
json_t *gm_ledger_json(void);

/* Idempotency. Scope is "<api key> <path>": keys are per API key and endpoint. */
enum gm_idem_result { GM_IDEM_NEW, GM_IDEM_REPLAY, GM_IDEM_IN_USE, GM_IDEM_MISMATCH };
struct gm_saved {
    unsigned status;
    char *body; /* owned by the table; copy before unlocking */
    char request_id[40];
};
enum gm_idem_result gm_idem_begin(const char *scope, const char *key, const char *fingerprint,
                                  struct gm_saved *replay_out /* borrowed on REPLAY */);
void gm_idem_abandon(const char *scope, const char *key);
void gm_idem_save(const char *scope, const char *key, unsigned status, const char *body,
                  const char *request_id);

/* Persistence: a JSON-lines journal, compacted at start and exit. */
int gm_state_load(const char *path);
int gm_state_open_journal(const char *path); /* compacts and opens for append */
int gm_state_save(void);                     /* compacts (on exit) */

/* ---- stripe.c: /v1 endpoints ------------------------------------------- */

struct gm_api_result {
    unsigned status;
    json_t *body;     /* owned */
    bool executed;    /* the endpoint began executing: save for the key */
    int should_retry; /* -1 unset, 0 false, 1 true */
    char obj_id[40];  /* ledger object created, "" if none */
};

/* The payment-method token a request concerns (for per-token faults), or
 * NULL. Returns a new string. Locked by caller. */
char *gm_api_token(const char *method, const char *path, const struct gm_form *params);
/* Run a /v1 request. Locked by caller. */
void gm_api_dispatch(const char *method, const char *path, const struct gm_form *params,
                     const char *idem_key, const char *request_id, struct gm_api_result *out);
json_t *gm_error_json(const char *type, const char *code, const char *param, const char *msg);
/* Base test token for a payment method ("pm_card_visa__donor7" → entry for
 * pm_card_visa) or NULL when unknown. */
struct gm_outcome {
    const char *token;
    const char *brand;
    const char *last4;
    const char *code; /* NULL: succeeds */
    const char *decline_code;
    const char *advice_code;
    const char *message;
    bool auth_required;
};
const struct gm_outcome *gm_outcome_for(const char *token);

/* ---- webhook.c ---------------------------------------------------------- */

struct gm_webhook_opts {
    const char *url;    /* default URL, may be NULL */
    const char *secret; /* default secret, may be NULL */
};
extern struct gm_webhook_opts gm_webhook;
/* Handle POST /_mock/webhook; sets *status_out and returns the reply body. */
json_t *gm_webhook_send(json_t *req, unsigned *status_out);

/* ---- server.c: libmicrohttpd glue and the request pipeline ------------ */

struct gm_server_opts {
    const char *api_key; /* NULL: any Bearer key is accepted */
    bool quiet;
};
/* Serve on listen_fd (ownership passes to the server). 0 or -errno. */
int gm_server_start(int listen_fd, const struct gm_server_opts *o);
/* Wake hung and sleeping requests, stop accepting, join every thread. */
void gm_server_stop(void);

#endif
