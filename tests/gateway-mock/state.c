/*
 * state.c — everything the mock remembers: PaymentIntents, refunds, disputes,
 * the idempotency table, counters and the seeded random streams; plus the
 * ledger view and the optional state file.
 *
 * The state file is a JSON-lines journal: each mutation appends one line
 * (an upsert of the whole object), so even kill -9 of the mock loses nothing
 * it already answered. It is compacted into a snapshot on start and on exit.
 * Every function here expects gm_lock to be held by the caller.
 */
#include "mock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

pthread_mutex_t gm_lock = PTHREAD_MUTEX_INITIALIZER;
struct gm_counters gm_counters;

#define PRUNE_EVERY 1024

/* ---- time and randomness ---------------------------------------------- */

int64_t gm_now_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t gm_now_s(void)
{
    return gm_now_ms() / 1000;
}

static uint64_t rng_state[GM_RNG_COUNT];

void gm_rand_seed(uint64_t seed)
{
    for (int s = 0; s < GM_RNG_COUNT; s++)
        rng_state[s] = seed * 0x9E3779B97F4A7C15ull + (uint64_t)(s + 1) * 0xD1B54A32D192ED03ull;
}

uint64_t gm_rand(enum gm_stream s)
{
    uint64_t z = (rng_state[s] += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double gm_rand01(enum gm_stream s)
{
    return (double)(gm_rand(s) >> 11) * (1.0 / 9007199254740992.0);
}

void gm_rand_id(enum gm_stream s, char *out, const char *prefix, size_t n)
{
    static const char alnum[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    size_t pl = strlen(prefix);
    memcpy(out, prefix, pl);
    for (size_t i = 0; i < n; i++)
        out[pl + i] = alnum[gm_rand(s) % (sizeof(alnum) - 1)];
    out[pl + n] = '\0';
}

/* ---- a small chained string map ---------------------------------------- */

struct entry {
    char *key;
    void *val;
    struct entry *next;
};

struct map {
    struct entry **b;
    size_t nb;
    size_t n;
};

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int map_grow(struct map *m)
{
    size_t nb = m->nb ? m->nb * 2 : 256;
    struct entry **b = calloc(nb, sizeof(*b));
    if (!b)
        return -ENOMEM;
    for (size_t i = 0; i < m->nb; i++) {
        struct entry *e = m->b[i];
        while (e) {
            struct entry *next = e->next;
            size_t k = hash(e->key) & (nb - 1);
            e->next = b[k];
            b[k] = e;
            e = next;
        }
    }
    free(m->b);
    m->b = b;
    m->nb = nb;
    return 0;
}

static void *map_get(const struct map *m, const char *key)
{
    if (!m->nb)
        return NULL;
    for (struct entry *e = m->b[hash(key) & (m->nb - 1)]; e; e = e->next)
        if (strcmp(e->key, key) == 0)
            return e->val;
    return NULL;
}

static int map_put(struct map *m, const char *key, void *val)
{
    if (m->n + 1 > m->nb * 3 / 4 && map_grow(m) < 0)
        return -ENOMEM;
    size_t k = hash(key) & (m->nb - 1);
    for (struct entry *e = m->b[k]; e; e = e->next) {
        if (strcmp(e->key, key) == 0) {
            e->val = val;
            return 0;
        }
    }
    struct entry *e = malloc(sizeof(*e));
    if (!e)
        return -ENOMEM;
    e->key = strdup(key);
    if (!e->key) {
        free(e);
        return -ENOMEM;
    }
    e->val = val;
    e->next = m->b[k];
    m->b[k] = e;
    m->n++;
    return 0;
}

static void *map_del(struct map *m, const char *key)
{
    if (!m->nb)
        return NULL;
    struct entry **pp = &m->b[hash(key) & (m->nb - 1)];
    for (; *pp; pp = &(*pp)->next) {
        struct entry *e = *pp;
        if (strcmp(e->key, key) == 0) {
            void *val = e->val;
            *pp = e->next;
            free(e->key);
            free(e);
            m->n--;
            return val;
        }
    }
    return NULL;
}

/* Calls fn on each value; fn returns true to delete the entry (after which it
 * owns the value). */
static void map_sweep(struct map *m, bool (*fn)(void *val, void *cls), void *cls)
{
    for (size_t i = 0; i < m->nb; i++) {
        struct entry **pp = &m->b[i];
        while (*pp) {
            struct entry *e = *pp;
            if (fn(e->val, cls)) {
                *pp = e->next;
                free(e->key);
                free(e);
                m->n--;
            } else {
                pp = &e->next;
            }
        }
    }
}

/* ---- the store --------------------------------------------------------- */

struct idem {
    char *scope_key; /* "<scope>\n<key>" */
    char *fp;
    bool done;
    unsigned status;
    char *body;
    char request_id[40];
    int64_t saved_ms;
};

static struct {
    struct gm_pi **pis;
    size_t npis, cappis;
    struct gm_refund **refunds;
    size_t nrefunds, caprefunds;
    struct gm_dispute **disputes;
    size_t ndisputes, capdisputes;
    struct map pi_by_id, pi_by_charge, refund_by_id, idem;
    int64_t retention_ms;
    uint64_t idem_begins;
    int journal_fd;
    char *path;
} st = {.journal_fd = -1};

static int grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return 0;
    size_t nc = *cap ? *cap * 2 : 64;
    void *v = realloc(*arr, nc * elem);
    if (!v)
        return -ENOMEM;
    *arr = v;
    *cap = nc;
    return 0;
}

static void pi_free(struct gm_pi *pi)
{
    if (!pi)
        return;
    free(pi->customer);
    free(pi->payment_method);
    free(pi->pm_used);
    free(pi->description);
    free(pi->sd_suffix);
    free(pi->idem_key);
    free(pi->request_id);
    json_decref(pi->metadata);
    json_decref(pi->last_payment_error);
    json_decref(pi->next_action);
    free(pi);
}

static void refund_free(struct gm_refund *r)
{
    if (!r)
        return;
    free(r->reason);
    free(r->idem_key);
    free(r->source);
    json_decref(r->metadata);
    free(r);
}

static void dispute_free(struct gm_dispute *d)
{
    if (!d)
        return;
    free(d->reason);
    free(d);
}

static void idem_free(struct idem *e)
{
    if (!e)
        return;
    free(e->scope_key);
    free(e->fp);
    free(e->body);
    free(e);
}

static bool sweep_all_idem(void *val, void *cls)
{
    idem_free(val);
    return true;
}

static bool sweep_none(void *val, void *cls)
{
    return true;
}

static void map_clear(struct map *m, bool (*fn)(void *, void *))
{
    map_sweep(m, fn, NULL);
    free(m->b);
    m->b = NULL;
    m->nb = m->n = 0;
}

static void clear_objects(void)
{
    for (size_t i = 0; i < st.npis; i++)
        pi_free(st.pis[i]);
    for (size_t i = 0; i < st.nrefunds; i++)
        refund_free(st.refunds[i]);
    for (size_t i = 0; i < st.ndisputes; i++)
        dispute_free(st.disputes[i]);
    st.npis = st.nrefunds = st.ndisputes = 0;
    map_clear(&st.pi_by_id, sweep_none);
    map_clear(&st.pi_by_charge, sweep_none);
    map_clear(&st.refund_by_id, sweep_none);
    map_clear(&st.idem, sweep_all_idem);
}

int gm_state_init(int64_t retention_ms)
{
    st.retention_ms = retention_ms;
    return 0;
}

void gm_state_clear(void)
{
    clear_objects();
    int64_t cc = gm_counters.connections_current;
    int64_t ac = gm_counters.api_connections_current;
    int64_t fc = gm_counters.in_flight_current;
    memset(&gm_counters, 0, sizeof(gm_counters));
    gm_counters.connections_current = gm_counters.connections_max = cc;
    gm_counters.api_connections_current = gm_counters.api_connections_max = ac;
    gm_counters.in_flight_current = gm_counters.in_flight_max = fc;
    if (st.journal_fd >= 0 && ftruncate(st.journal_fd, 0) != 0)
        fprintf(stderr, "gateway-mock: truncating state file %s: %s\n", st.path, strerror(errno));
}

/* ---- journal ------------------------------------------------------------ */

static json_t *pi_internal_json(const struct gm_pi *pi);
static json_t *refund_internal_json(const struct gm_refund *r);
static json_t *dispute_internal_json(const struct gm_dispute *d);
static json_t *idem_internal_json(const struct idem *e);

static int write_line(int fd, json_t *rec)
{
    if (!rec)
        return -ENOMEM;
    char *s = json_dumps(rec, JSON_COMPACT);
    json_decref(rec);
    if (!s)
        return -ENOMEM;
    size_t len = strlen(s);
    s[len] = '\n'; /* the NUL becomes the line end; s is only freed after */
    const char *p = s;
    size_t left = len + 1;
    int rc = 0;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        p += w;
        left -= (size_t)w;
    }
    free(s);
    return rc;
}

static void journal(json_t *rec)
{
    if (st.journal_fd < 0) {
        json_decref(rec);
        return;
    }
    int rc = write_line(st.journal_fd, rec);
    if (rc < 0)
        fprintf(stderr, "gateway-mock: appending to state file %s: %s\n", st.path, strerror(-rc));
}

void gm_pi_persist(const struct gm_pi *pi)
{
    journal(pi_internal_json(pi));
}

/* ---- objects ----------------------------------------------------------- */

static void unique_id(struct map *m, char *out, const char *prefix)
{
    do
        gm_rand_id(GM_RNG_IDS, out, prefix, 24);
    while (map_get(m, out));
}

struct gm_pi *gm_pi_new(void)
{
    if (grow((void **)&st.pis, &st.cappis, st.npis, sizeof(*st.pis)) < 0)
        return NULL;
    struct gm_pi *pi = calloc(1, sizeof(*pi));
    if (!pi)
        return NULL;
    pi->metadata = json_object();
    if (!pi->metadata)
        goto fail;
    unique_id(&st.pi_by_id, pi->id, "pi_");
    if (map_put(&st.pi_by_id, pi->id, pi) < 0)
        goto fail;
    pi->created_ms = gm_now_ms();
    st.pis[st.npis++] = pi;
    return pi;
fail:
    pi_free(pi);
    return NULL;
}

int gm_pi_index_charge(struct gm_pi *pi)
{
    return pi->charge_id[0] ? map_put(&st.pi_by_charge, pi->charge_id, pi) : 0;
}

struct gm_pi *gm_pi_find(const char *id)
{
    return map_get(&st.pi_by_id, id);
}

struct gm_pi *gm_pi_find_by_charge(const char *charge_id)
{
    return map_get(&st.pi_by_charge, charge_id);
}

size_t gm_pi_count(void)
{
    return st.npis;
}

struct gm_pi *gm_pi_at(size_t i)
{
    return i < st.npis ? st.pis[i] : NULL;
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *ref_or_null(json_t *j)
{
    return j ? json_incref(j) : json_null();
}

json_t *gm_pi_json(const struct gm_pi *pi)
{
    char secret[80];
    snprintf(secret, sizeof(secret), "%s_secret_mock", pi->id);
    return json_pack("{s:s, s:s, s:I, s:I, s:I, s:s, s:s, s:s, s:I, s:s, s:o, s:o, s:o, s:o, "
                     "s:b, s:O, s:o, s:o, s:[s], s:s, s:o, s:n, s:n}",
                     "id", pi->id, "object", "payment_intent", "amount", (json_int_t)pi->amount,
                     "amount_capturable", (json_int_t)0, "amount_received",
                     (json_int_t)pi->amount_received, "capture_method", "automatic",
                     "client_secret", secret, "confirmation_method", "automatic", "created",
                     (json_int_t)(pi->created_ms / 1000), "currency", pi->currency, "customer",
                     str_or_null(pi->customer), "description", str_or_null(pi->description),
                     "last_payment_error", ref_or_null(pi->last_payment_error), "latest_charge",
                     pi->charge_id[0] ? json_string(pi->charge_id) : json_null(), "livemode", 0,
                     "metadata", pi->metadata, "next_action", ref_or_null(pi->next_action),
                     "payment_method", str_or_null(pi->payment_method), "payment_method_types",
                     "card", "status", pi->status, "statement_descriptor_suffix",
                     str_or_null(pi->sd_suffix), "canceled_at", "cancellation_reason");
}

static json_t *pi_internal_json(const struct gm_pi *pi)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:s, s:o, s:o, s:o, s:o, s:o, s:s, s:O, "
                     "s:o, s:o, s:I, s:o, s:o, s:s, s:b}",
                     "t", "pi", "id", pi->id, "charge_id", pi->charge_id, "amount",
                     (json_int_t)pi->amount, "amount_received", (json_int_t)pi->amount_received,
                     "amount_refunded", (json_int_t)pi->amount_refunded, "currency", pi->currency,
                     "customer", str_or_null(pi->customer), "payment_method",
                     str_or_null(pi->payment_method), "pm_used", str_or_null(pi->pm_used),
                     "description", str_or_null(pi->description), "sd_suffix",
                     str_or_null(pi->sd_suffix), "status", pi->status, "metadata", pi->metadata,
                     "last_payment_error", ref_or_null(pi->last_payment_error), "next_action",
                     ref_or_null(pi->next_action), "created_ms", (json_int_t)pi->created_ms,
                     "idem_key", str_or_null(pi->idem_key), "request_id",
                     str_or_null(pi->request_id), "fault", pi->fault, "confirmed", pi->confirmed);
}

static char *dup_or_null(json_t *v)
{
    return json_is_string(v) ? strdup(json_string_value(v)) : NULL;
}

static void copy_str(char *dst, size_t n, json_t *v)
{
    snprintf(dst, n, "%s", json_is_string(v) ? json_string_value(v) : "");
}

static int load_pi(json_t *r)
{
    const char *id = json_string_value(json_object_get(r, "id"));
    if (!id)
        return -EINVAL;
    struct gm_pi *pi = gm_pi_find(id);
    bool fresh = !pi;
    if (fresh) {
        if (grow((void **)&st.pis, &st.cappis, st.npis, sizeof(*st.pis)) < 0)
            return -ENOMEM;
        pi = calloc(1, sizeof(*pi));
        if (!pi)
            return -ENOMEM;
    } else {
        free(pi->customer);
        free(pi->payment_method);
        free(pi->pm_used);
        free(pi->description);
        free(pi->sd_suffix);
        free(pi->idem_key);
        free(pi->request_id);
        json_decref(pi->metadata);
        json_decref(pi->last_payment_error);
        json_decref(pi->next_action);
    }
    copy_str(pi->id, sizeof(pi->id), json_object_get(r, "id"));
    copy_str(pi->charge_id, sizeof(pi->charge_id), json_object_get(r, "charge_id"));
    pi->amount = json_integer_value(json_object_get(r, "amount"));
    pi->amount_received = json_integer_value(json_object_get(r, "amount_received"));
    pi->amount_refunded = json_integer_value(json_object_get(r, "amount_refunded"));
    copy_str(pi->currency, sizeof(pi->currency), json_object_get(r, "currency"));
    pi->customer = dup_or_null(json_object_get(r, "customer"));
    pi->payment_method = dup_or_null(json_object_get(r, "payment_method"));
    pi->pm_used = dup_or_null(json_object_get(r, "pm_used"));
    pi->description = dup_or_null(json_object_get(r, "description"));
    pi->sd_suffix = dup_or_null(json_object_get(r, "sd_suffix"));
    copy_str(pi->status, sizeof(pi->status), json_object_get(r, "status"));
    json_t *md = json_object_get(r, "metadata");
    pi->metadata = json_is_object(md) ? json_incref(md) : json_object();
    json_t *lpe = json_object_get(r, "last_payment_error");
    pi->last_payment_error = json_is_object(lpe) ? json_incref(lpe) : NULL;
    json_t *na = json_object_get(r, "next_action");
    pi->next_action = json_is_object(na) ? json_incref(na) : NULL;
    pi->created_ms = json_integer_value(json_object_get(r, "created_ms"));
    pi->idem_key = dup_or_null(json_object_get(r, "idem_key"));
    pi->request_id = dup_or_null(json_object_get(r, "request_id"));
    copy_str(pi->fault, sizeof(pi->fault), json_object_get(r, "fault"));
    pi->confirmed = json_is_true(json_object_get(r, "confirmed"));
    if (fresh) {
        if (map_put(&st.pi_by_id, pi->id, pi) < 0) {
            pi_free(pi);
            return -ENOMEM;
        }
        st.pis[st.npis++] = pi;
    }
    return gm_pi_index_charge(pi);
}

/* refunds */

struct gm_refund *gm_refund_new(struct gm_pi *pi, int64_t amount, const char *reason,
                                const char *idem_key, const char *source, json_t *metadata)
{
    if (grow((void **)&st.refunds, &st.caprefunds, st.nrefunds, sizeof(*st.refunds)) < 0)
        return NULL;
    struct gm_refund *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    unique_id(&st.refund_by_id, r->id, "re_");
    snprintf(r->pi_id, sizeof(r->pi_id), "%s", pi->id);
    snprintf(r->charge_id, sizeof(r->charge_id), "%s", pi->charge_id);
    snprintf(r->currency, sizeof(r->currency), "%s", pi->currency);
    r->amount = amount;
    r->reason = reason ? strdup(reason) : NULL;
    r->idem_key = idem_key ? strdup(idem_key) : NULL;
    r->source = strdup(source);
    r->metadata = metadata ? json_incref(metadata) : json_object();
    r->created_ms = gm_now_ms();
    if ((reason && !r->reason) || (idem_key && !r->idem_key) || !r->source || !r->metadata ||
        map_put(&st.refund_by_id, r->id, r) < 0) {
        refund_free(r);
        return NULL;
    }
    st.refunds[st.nrefunds++] = r;
    pi->amount_refunded += amount;
    journal(refund_internal_json(r));
    gm_pi_persist(pi);
    return r;
}

struct gm_refund *gm_refund_find(const char *id)
{
    return map_get(&st.refund_by_id, id);
}

json_t *gm_refund_json(const struct gm_refund *r)
{
    return json_pack("{s:s, s:s, s:I, s:s, s:I, s:s, s:O, s:s, s:o, s:s}", "id", r->id, "object",
                     "refund", "amount", (json_int_t)r->amount, "charge", r->charge_id, "created",
                     (json_int_t)(r->created_ms / 1000), "currency", r->currency, "metadata",
                     r->metadata, "payment_intent", r->pi_id, "reason", str_or_null(r->reason),
                     "status", "succeeded");
}

json_t *gm_pi_refunds_json(const struct gm_pi *pi)
{
    json_t *data = json_array();
    if (!data)
        return NULL;
    for (size_t i = st.nrefunds; i > 0; i--)
        if (strcmp(st.refunds[i - 1]->pi_id, pi->id) == 0)
            json_array_append_new(data, gm_refund_json(st.refunds[i - 1]));
    return json_pack("{s:s, s:o, s:b, s:I, s:s}", "object", "list", "data", data, "has_more", 0,
                     "total_count", (json_int_t)json_array_size(data), "url", "/v1/refunds");
}

static json_t *refund_internal_json(const struct gm_refund *r)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:I, s:s, s:o, s:o, s:s, s:O, s:I, s:s}", "t", "refund",
                     "id", r->id, "pi_id", r->pi_id, "charge_id", r->charge_id, "amount",
                     (json_int_t)r->amount, "currency", r->currency, "reason",
                     str_or_null(r->reason), "idem_key", str_or_null(r->idem_key), "source",
                     r->source, "metadata", r->metadata, "created_ms", (json_int_t)r->created_ms,
                     "fault", r->fault);
}

static int load_refund(json_t *j)
{
    const char *id = json_string_value(json_object_get(j, "id"));
    if (!id)
        return -EINVAL;
    if (gm_refund_find(id))
        return 0; /* refunds never change once written */
    if (grow((void **)&st.refunds, &st.caprefunds, st.nrefunds, sizeof(*st.refunds)) < 0)
        return -ENOMEM;
    struct gm_refund *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    copy_str(r->id, sizeof(r->id), json_object_get(j, "id"));
    copy_str(r->pi_id, sizeof(r->pi_id), json_object_get(j, "pi_id"));
    copy_str(r->charge_id, sizeof(r->charge_id), json_object_get(j, "charge_id"));
    copy_str(r->currency, sizeof(r->currency), json_object_get(j, "currency"));
    copy_str(r->fault, sizeof(r->fault), json_object_get(j, "fault"));
    r->amount = json_integer_value(json_object_get(j, "amount"));
    r->reason = dup_or_null(json_object_get(j, "reason"));
    r->idem_key = dup_or_null(json_object_get(j, "idem_key"));
    r->source = dup_or_null(json_object_get(j, "source"));
    json_t *md = json_object_get(j, "metadata");
    r->metadata = json_is_object(md) ? json_incref(md) : json_object();
    r->created_ms = json_integer_value(json_object_get(j, "created_ms"));
    if (!r->source || !r->metadata || map_put(&st.refund_by_id, r->id, r) < 0) {
        refund_free(r);
        return -ENOMEM;
    }
    st.refunds[st.nrefunds++] = r;
    return 0;
}

/* disputes */

struct gm_dispute *gm_dispute_new(const char *pi_id, const char *charge_id, int64_t amount,
                                  const char *currency, const char *reason)
{
    if (grow((void **)&st.disputes, &st.capdisputes, st.ndisputes, sizeof(*st.disputes)) < 0)
        return NULL;
    struct gm_dispute *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    gm_rand_id(GM_RNG_IDS, d->id, "dp_", 24);
    snprintf(d->pi_id, sizeof(d->pi_id), "%s", pi_id);
    snprintf(d->charge_id, sizeof(d->charge_id), "%s", charge_id);
    snprintf(d->currency, sizeof(d->currency), "%s", currency);
    d->amount = amount;
    d->reason = strdup(reason);
    d->created_ms = gm_now_ms();
    if (!d->reason) {
        dispute_free(d);
        return NULL;
    }
    st.disputes[st.ndisputes++] = d;
    journal(dispute_internal_json(d));
    return d;
}

json_t *gm_dispute_json(const struct gm_dispute *d)
{
    return json_pack("{s:s, s:s, s:I, s:s, s:I, s:s, s:b, s:{}, s:s, s:s, s:s}", "id", d->id,
                     "object", "dispute", "amount", (json_int_t)d->amount, "charge", d->charge_id,
                     "created", (json_int_t)(d->created_ms / 1000), "currency", d->currency,
                     "livemode", 0, "metadata", "payment_intent", d->pi_id, "reason", d->reason,
                     "status", "needs_response");
}

static json_t *dispute_internal_json(const struct gm_dispute *d)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:I, s:s, s:s, s:I}", "t", "dispute", "id", d->id,
                     "pi_id", d->pi_id, "charge_id", d->charge_id, "amount", (json_int_t)d->amount,
                     "currency", d->currency, "reason", d->reason, "created_ms",
                     (json_int_t)d->created_ms);
}

static int load_dispute(json_t *j)
{
    if (grow((void **)&st.disputes, &st.capdisputes, st.ndisputes, sizeof(*st.disputes)) < 0)
        return -ENOMEM;
    struct gm_dispute *d = calloc(1, sizeof(*d));
    if (!d)
        return -ENOMEM;
    copy_str(d->id, sizeof(d->id), json_object_get(j, "id"));
    copy_str(d->pi_id, sizeof(d->pi_id), json_object_get(j, "pi_id"));
    copy_str(d->charge_id, sizeof(d->charge_id), json_object_get(j, "charge_id"));
    copy_str(d->currency, sizeof(d->currency), json_object_get(j, "currency"));
    d->amount = json_integer_value(json_object_get(j, "amount"));
    d->reason = dup_or_null(json_object_get(j, "reason"));
    d->created_ms = json_integer_value(json_object_get(j, "created_ms"));
    if (!d->reason) {
        dispute_free(d);
        return -ENOMEM;
    }
    st.disputes[st.ndisputes++] = d;
    return 0;
}

/* ---- ledger ------------------------------------------------------------ */

void gm_ledger_mark_fault(const char *obj_id, const char *fault)
{
    if (!obj_id || !obj_id[0])
        return;
    struct gm_pi *pi = gm_pi_find(obj_id);
    if (pi) {
        snprintf(pi->fault, sizeof(pi->fault), "%s", fault);
        gm_pi_persist(pi);
        return;
    }
    struct gm_refund *r = gm_refund_find(obj_id);
    if (r) {
        snprintf(r->fault, sizeof(r->fault), "%s", fault);
        journal(refund_internal_json(r));
    }
}

static json_t *fault_or_null(const char *f)
{
    return f[0] ? json_string(f) : json_null();
}

static json_t *counters_json(void)
{
    json_t *by = json_object();
    if (!by)
        return NULL;
    for (int s = 0; s < 600; s++) {
        if (gm_counters.by_status[s]) {
            char k[8];
            snprintf(k, sizeof(k), "%d", s);
            json_object_set_new(by, k, json_integer((json_int_t)gm_counters.by_status[s]));
        }
    }
    const struct gm_counters *c = &gm_counters;
    return json_pack(
        "{s:I, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
        "requests_total", (json_int_t)c->requests_total, "by_status", by, "replays",
        (json_int_t)c->replays, "conflicts_409", (json_int_t)c->conflicts, "dropped_before",
        (json_int_t)c->dropped_before, "dropped_after", (json_int_t)c->dropped_after, "hung",
        (json_int_t)c->hung, "control_requests", (json_int_t)c->control_requests,
        "connections_current", (json_int_t)c->connections_current, "connections_max",
        (json_int_t)c->connections_max, "connections_total", (json_int_t)c->connections_total,
        "api_connections_current", (json_int_t)c->api_connections_current, "api_connections_max",
        (json_int_t)c->api_connections_max, "in_flight_current", (json_int_t)c->in_flight_current,
        "in_flight_max", (json_int_t)c->in_flight_max, "idempotency_keys", (json_int_t)st.idem.n);
}

json_t *gm_ledger_json(void)
{
    json_t *charges = json_array(), *refunds = json_array(), *disputes = json_array();
    if (!charges || !refunds || !disputes)
        goto fail;
    for (size_t i = 0; i < st.npis; i++) {
        const struct gm_pi *pi = st.pis[i];
        const char *decline = NULL;
        if (pi->last_payment_error)
            decline = json_string_value(json_object_get(pi->last_payment_error, "decline_code"));
        json_array_append_new(
            charges,
            json_pack("{s:o, s:s, s:s, s:I, s:I, s:I, s:s, s:o, s:o, s:s, s:o, s:O, s:I, s:I, "
                      "s:o, s:o, s:o, s:b}",
                      "idempotency_key", str_or_null(pi->idem_key), "id", pi->id, "object",
                      "payment_intent", "amount", (json_int_t)pi->amount, "amount_received",
                      (json_int_t)pi->amount_received, "amount_refunded",
                      (json_int_t)pi->amount_refunded, "currency", pi->currency, "customer",
                      str_or_null(pi->customer), "payment_method", str_or_null(pi->pm_used),
                      "status", pi->status, "decline_code", str_or_null(decline), "metadata",
                      pi->metadata, "created", (json_int_t)(pi->created_ms / 1000), "created_ms",
                      (json_int_t)pi->created_ms, "latest_charge",
                      pi->charge_id[0] ? json_string(pi->charge_id) : json_null(), "request_id",
                      str_or_null(pi->request_id), "fault", fault_or_null(pi->fault), "confirmed",
                      pi->confirmed));
    }
    for (size_t i = 0; i < st.nrefunds; i++) {
        const struct gm_refund *r = st.refunds[i];
        json_array_append_new(
            refunds,
            json_pack("{s:o, s:s, s:s, s:s, s:s, s:I, s:s, s:o, s:s, s:s, s:O, s:I, s:I, s:o}",
                      "idempotency_key", str_or_null(r->idem_key), "id", r->id, "object", "refund",
                      "payment_intent", r->pi_id, "charge", r->charge_id, "amount",
                      (json_int_t)r->amount, "currency", r->currency, "reason",
                      str_or_null(r->reason), "status", "succeeded", "source", r->source,
                      "metadata", r->metadata, "created", (json_int_t)(r->created_ms / 1000),
                      "created_ms", (json_int_t)r->created_ms, "fault", fault_or_null(r->fault)));
    }
    for (size_t i = 0; i < st.ndisputes; i++)
        json_array_append_new(disputes, gm_dispute_json(st.disputes[i]));
    return json_pack("{s:o, s:o, s:o, s:o}", "charges", charges, "refunds", refunds, "disputes",
                     disputes, "counters", counters_json());
fail:
    json_decref(charges);
    json_decref(refunds);
    json_decref(disputes);
    return NULL;
}

/* ---- idempotency ------------------------------------------------------- */

static char *scope_key(const char *scope, const char *key)
{
    size_t a = strlen(scope), b = strlen(key);
    char *s = malloc(a + b + 2);
    if (!s)
        return NULL;
    memcpy(s, scope, a);
    s[a] = '\n';
    memcpy(s + a + 1, key, b + 1);
    return s;
}

static bool expired(const struct idem *e, int64_t now)
{
    return e->done && now - e->saved_ms >= st.retention_ms;
}

static bool sweep_expired(void *val, void *cls)
{
    struct idem *e = val;
    if (!expired(e, *(int64_t *)cls))
        return false;
    idem_free(e);
    return true;
}

enum gm_idem_result gm_idem_begin(const char *scope, const char *key, const char *fingerprint,
                                  struct gm_saved *replay_out)
{
    int64_t now = gm_now_ms();
    if (++st.idem_begins % PRUNE_EVERY == 0)
        map_sweep(&st.idem, sweep_expired, &now);

    char *sk = scope_key(scope, key);
    if (!sk)
        return GM_IDEM_IN_USE; /* out of memory: ask the client to retry */
    struct idem *e = map_get(&st.idem, sk);
    if (e && expired(e, now)) {
        map_del(&st.idem, sk);
        idem_free(e);
        e = NULL;
    }
    if (e) {
        free(sk);
        if (!e->done)
            return GM_IDEM_IN_USE;
        if (strcmp(e->fp, fingerprint) != 0)
            return GM_IDEM_MISMATCH;
        replay_out->status = e->status;
        replay_out->body = e->body;
        snprintf(replay_out->request_id, sizeof(replay_out->request_id), "%s", e->request_id);
        return GM_IDEM_REPLAY;
    }
    e = calloc(1, sizeof(*e));
    if (!e || !(e->fp = strdup(fingerprint)) || map_put(&st.idem, sk, e) < 0) {
        idem_free(e);
        free(sk);
        return GM_IDEM_IN_USE;
    }
    e->scope_key = sk;
    return GM_IDEM_NEW;
}

void gm_idem_abandon(const char *scope, const char *key)
{
    char *sk = scope_key(scope, key);
    if (!sk)
        return;
    struct idem *e = map_get(&st.idem, sk);
    if (e && !e->done) {
        map_del(&st.idem, sk);
        idem_free(e);
    }
    free(sk);
}

void gm_idem_save(const char *scope, const char *key, unsigned status, const char *body,
                  const char *request_id)
{
    char *sk = scope_key(scope, key);
    if (!sk)
        return;
    struct idem *e = map_get(&st.idem, sk);
    free(sk);
    if (!e || e->done)
        return;
    e->body = strdup(body);
    if (!e->body)
        return; /* stays in progress: out of memory is fatal enough */
    e->done = true;
    e->status = status;
    e->saved_ms = gm_now_ms();
    snprintf(e->request_id, sizeof(e->request_id), "%s", request_id);
    journal(idem_internal_json(e));
}

static json_t *idem_internal_json(const struct idem *e)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:s, s:s, s:I}", "t", "idem", "scope_key", e->scope_key,
                     "fp", e->fp, "status", (json_int_t)e->status, "body", e->body, "request_id",
                     e->request_id, "saved_ms", (json_int_t)e->saved_ms);
}

static int load_idem(json_t *j)
{
    const char *sk = json_string_value(json_object_get(j, "scope_key"));
    const char *fp = json_string_value(json_object_get(j, "fp"));
    const char *body = json_string_value(json_object_get(j, "body"));
    if (!sk || !fp || !body)
        return -EINVAL;
    struct idem *e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    e->scope_key = strdup(sk);
    e->fp = strdup(fp);
    e->body = strdup(body);
    e->done = true;
    e->status = (unsigned)json_integer_value(json_object_get(j, "status"));
    e->saved_ms = json_integer_value(json_object_get(j, "saved_ms"));
    copy_str(e->request_id, sizeof(e->request_id), json_object_get(j, "request_id"));
    if (!e->scope_key || !e->fp || !e->body) {
        idem_free(e);
        return -ENOMEM;
    }
    if (expired(e, gm_now_ms())) {
        idem_free(e);
        return 0;
    }
    idem_free(map_del(&st.idem, sk));
    if (map_put(&st.idem, sk, e) < 0) {
        idem_free(e);
        return -ENOMEM;
    }
    return 0;
}

/* ---- persistence ------------------------------------------------------- */

int gm_state_load(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return errno == ENOENT ? 0 : -errno;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = 0;
    unsigned long lineno = 0, records = 0;
    while ((len = getline(&line, &cap, f)) > 0) {
        lineno++;
        json_error_t jerr;
        json_t *r = json_loadb(line, (size_t)len, 0, &jerr);
        if (!r) {
            /* a torn last line after kill -9 is expected; skip it */
            fprintf(stderr, "gateway-mock: %s:%lu: skipping unreadable line: %s\n", path, lineno,
                    jerr.text);
            continue;
        }
        const char *t = json_string_value(json_object_get(r, "t"));
        if (!t)
            rc = -EINVAL;
        else if (strcmp(t, "pi") == 0)
            rc = load_pi(r);
        else if (strcmp(t, "refund") == 0)
            rc = load_refund(r);
        else if (strcmp(t, "dispute") == 0)
            rc = load_dispute(r);
        else if (strcmp(t, "idem") == 0)
            rc = load_idem(r);
        else
            rc = -EINVAL;
        json_decref(r);
        if (rc == -EINVAL) {
            fprintf(stderr, "gateway-mock: %s:%lu: unknown record, skipped\n", path, lineno);
            rc = 0;
        }
        if (rc < 0)
            break;
        records++;
    }
    free(line);
    if (fclose(f) != 0 && rc == 0)
        rc = -errno;
    /* New ids must not repeat those already issued by the same seed. */
    for (unsigned long i = 0; i < records; i++)
        (void)gm_rand(GM_RNG_IDS);
    return rc;
}

static bool snapshot_idem(void *val, void *cls)
{
    int *fdp = cls;
    struct idem *e = val;
    if (e->done && *fdp >= 0 && write_line(*fdp, idem_internal_json(e)) < 0)
        *fdp = -1;
    return false;
}

static int snapshot(const char *path)
{
    size_t tl = strlen(path) + 16;
    char *tmp = malloc(tl);
    if (!tmp)
        return -ENOMEM;
    snprintf(tmp, tl, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        int rc = -errno;
        free(tmp);
        return rc;
    }
    int rc = 0;
    for (size_t i = 0; i < st.npis && rc == 0; i++)
        rc = write_line(fd, pi_internal_json(st.pis[i]));
    for (size_t i = 0; i < st.nrefunds && rc == 0; i++)
        rc = write_line(fd, refund_internal_json(st.refunds[i]));
    for (size_t i = 0; i < st.ndisputes && rc == 0; i++)
        rc = write_line(fd, dispute_internal_json(st.disputes[i]));
    if (rc == 0) {
        int wfd = fd;
        map_sweep(&st.idem, snapshot_idem, &wfd);
        if (wfd < 0)
            rc = -EIO;
    }
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc < 0)
        unlink(tmp);
    free(tmp);
    return rc;
}

int gm_state_open_journal(const char *path)
{
    st.path = strdup(path);
    if (!st.path)
        return -ENOMEM;
    int rc = snapshot(path);
    if (rc < 0)
        return rc;
    st.journal_fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    return st.journal_fd < 0 ? -errno : 0;
}

int gm_state_save(void)
{
    if (!st.path)
        return 0;
    int rc = snapshot(st.path);
    if (st.journal_fd >= 0) {
        close(st.journal_fd);
        st.journal_fd = -1;
    }
    return rc;
}
