/*
 * faults.c — the fault-injection configuration: global and per payment-method
 * token, probabilistic (rates drawn from the seeded GM_RNG_FAULTS stream) or
 * deterministic (next_n counters). Set from flags at start (the "startup"
 * config, which /_mock/reset returns to) and by POST /_mock/config.
 */
#include "mock.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LATENCY_MS (3600 * 1000)
#define METHOD_GET     1u
#define METHOD_POST    2u
#define METHOD_DELETE  4u
#define METHOD_ALL     (METHOD_GET | METHOD_POST | METHOD_DELETE)

struct faultset {
    bool has_latency, has_jitter;
    int64_t latency_ms, jitter_ms;
    bool has_rate[GM_F_COUNT];
    double rate[GM_F_COUNT];
    int64_t next_n[GM_F_COUNT];
};

struct pm_faults {
    char *token;
    struct faultset fs;
};

struct config {
    struct faultset global;
    struct pm_faults *pm;
    size_t npm;
    unsigned retry_after_s;
    int64_t search_lag_ms;
    unsigned methods;
    char **paths;
    size_t npaths;
    uint64_t seed;
};

static struct config live = {.retry_after_s = GM_DEFAULT_RETRY_AFTER_S, .methods = METHOD_ALL};
static struct config startup = {.retry_after_s = GM_DEFAULT_RETRY_AFTER_S, .methods = METHOD_ALL};

static const char *fault_names[GM_F_COUNT] = {
    [GM_F_429] = "rate_429",
    [GM_F_503] = "error_503_before",
    [GM_F_DROP_BEFORE] = "drop_before",
    [GM_F_HANG] = "hang",
    [GM_F_500] = "error_500_after_execute",
    [GM_F_DROP_AFTER] = "drop_after",
};

const char *gm_fault_name(enum gm_fault f)
{
    return fault_names[f];
}

static int fault_by_name(const char *name)
{
    for (int i = 0; i < GM_F_COUNT; i++)
        if (strcmp(fault_names[i], name) == 0)
            return i;
    return -1;
}

static void config_free(struct config *c)
{
    for (size_t i = 0; i < c->npm; i++)
        free(c->pm[i].token);
    free(c->pm);
    for (size_t i = 0; i < c->npaths; i++)
        free(c->paths[i]);
    free(c->paths);
    c->pm = NULL;
    c->paths = NULL;
    c->npm = c->npaths = 0;
}

static int config_copy(struct config *dst, const struct config *src)
{
    *dst = *src;
    dst->pm = NULL;
    dst->paths = NULL;
    dst->npm = dst->npaths = 0;
    if (src->npm) {
        dst->pm = calloc(src->npm, sizeof(*dst->pm));
        if (!dst->pm)
            goto fail;
        for (size_t i = 0; i < src->npm; i++) {
            dst->pm[i].fs = src->pm[i].fs;
            dst->pm[i].token = strdup(src->pm[i].token);
            dst->npm++;
            if (!dst->pm[i].token)
                goto fail;
        }
    }
    if (src->npaths) {
        dst->paths = calloc(src->npaths, sizeof(*dst->paths));
        if (!dst->paths)
            goto fail;
        for (size_t i = 0; i < src->npaths; i++) {
            dst->paths[i] = strdup(src->paths[i]);
            dst->npaths++;
            if (!dst->paths[i])
                goto fail;
        }
    }
    return 0;
fail:
    config_free(dst);
    return -ENOMEM;
}

static struct faultset *pm_lookup(struct config *c, const char *token, bool create)
{
    for (size_t i = 0; i < c->npm; i++)
        if (strcmp(c->pm[i].token, token) == 0)
            return &c->pm[i].fs;
    if (!create)
        return NULL;
    struct pm_faults *v = realloc(c->pm, (c->npm + 1) * sizeof(*v));
    if (!v)
        return NULL;
    c->pm = v;
    memset(&v[c->npm], 0, sizeof(v[c->npm]));
    v[c->npm].token = strdup(token);
    if (!v[c->npm].token)
        return NULL;
    return &v[c->npm++].fs;
}

static void pm_remove(struct config *c, const char *token)
{
    for (size_t i = 0; i < c->npm; i++) {
        if (strcmp(c->pm[i].token, token) == 0) {
            free(c->pm[i].token);
            c->pm[i] = c->pm[c->npm - 1];
            c->npm--;
            return;
        }
    }
}

static int get_ms(json_t *v, int64_t *out, const char *key, char *err, size_t errlen)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) > MAX_LATENCY_MS) {
        snprintf(err, errlen, "%s must be an integer between 0 and %d", key, MAX_LATENCY_MS);
        return -EINVAL;
    }
    *out = json_integer_value(v);
    return 0;
}

static int apply_faultset(struct faultset *fs, const char *key, json_t *v, char *err, size_t errlen)
{
    int f;
    if (strcmp(key, "latency_ms") == 0) {
        fs->has_latency = true;
        return get_ms(v, &fs->latency_ms, key, err, errlen);
    }
    if (strcmp(key, "jitter_ms") == 0) {
        fs->has_jitter = true;
        return get_ms(v, &fs->jitter_ms, key, err, errlen);
    }
    if ((f = fault_by_name(key)) >= 0) {
        if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 1) {
            snprintf(err, errlen, "%s must be a probability between 0 and 1", key);
            return -EINVAL;
        }
        fs->has_rate[f] = true;
        fs->rate[f] = json_number_value(v);
        return 0;
    }
    if (strcmp(key, "next_n") == 0) {
        const char *k;
        json_t *n;
        if (!json_is_object(v)) {
            snprintf(err, errlen, "next_n must be an object {\"<fault>\": count}");
            return -EINVAL;
        }
        json_object_foreach(v, k, n)
        {
            int ff = fault_by_name(k);
            if (ff < 0) {
                snprintf(err, errlen, "next_n: unknown fault '%s'", k);
                return -EINVAL;
            }
            if (!json_is_integer(n) || json_integer_value(n) < 0) {
                snprintf(err, errlen, "next_n.%s must be a non-negative integer", k);
                return -EINVAL;
            }
            fs->next_n[ff] = json_integer_value(n);
        }
        return 0;
    }
    snprintf(err, errlen, "unknown config key '%s'", key);
    return -EINVAL;
}

static int apply_methods(struct config *c, json_t *v, char *err, size_t errlen)
{
    size_t i;
    json_t *m;
    unsigned mask = 0;
    if (!json_is_array(v)) {
        snprintf(err, errlen, "http_methods must be an array such as [\"POST\"]");
        return -EINVAL;
    }
    json_array_foreach(v, i, m)
    {
        const char *s = json_string_value(m);
        if (s && strcmp(s, "GET") == 0)
            mask |= METHOD_GET;
        else if (s && strcmp(s, "POST") == 0)
            mask |= METHOD_POST;
        else if (s && strcmp(s, "DELETE") == 0)
            mask |= METHOD_DELETE;
        else {
            snprintf(err, errlen, "http_methods: expected GET, POST or DELETE");
            return -EINVAL;
        }
    }
    c->methods = json_array_size(v) ? mask : METHOD_ALL;
    return 0;
}

static int apply_paths(struct config *c, json_t *v, char *err, size_t errlen)
{
    size_t i;
    json_t *p;
    for (i = 0; i < c->npaths; i++)
        free(c->paths[i]);
    free(c->paths);
    c->paths = NULL;
    c->npaths = 0;
    if (json_is_null(v))
        return 0;
    if (!json_is_array(v)) {
        snprintf(err, errlen, "paths must be an array of path prefixes or null");
        return -EINVAL;
    }
    if (json_array_size(v) == 0)
        return 0;
    c->paths = calloc(json_array_size(v), sizeof(*c->paths));
    if (!c->paths)
        return -ENOMEM;
    json_array_foreach(v, i, p)
    {
        if (!json_is_string(p)) {
            snprintf(err, errlen, "paths must be strings");
            return -EINVAL;
        }
        c->paths[i] = strdup(json_string_value(p));
        if (!c->paths[i])
            return -ENOMEM;
        c->npaths++;
    }
    return 0;
}

static int apply(struct config *c, json_t *j, char *err, size_t errlen)
{
    const char *key;
    json_t *v;
    int rc;

    if (!json_is_object(j)) {
        snprintf(err, errlen, "config must be a JSON object");
        return -EINVAL;
    }
    if (json_is_true(json_object_get(j, "replace"))) {
        uint64_t seed = c->seed;
        config_free(c);
        memset(c, 0, sizeof(*c));
        c->retry_after_s = GM_DEFAULT_RETRY_AFTER_S;
        c->methods = METHOD_ALL;
        c->seed = seed;
    }
    json_object_foreach(j, key, v)
    {
        if (strcmp(key, "replace") == 0) {
            if (!json_is_boolean(v)) {
                snprintf(err, errlen, "replace must be a boolean");
                return -EINVAL;
            }
            continue;
        }
        if (strcmp(key, "retry_after_s") == 0) {
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 3600) {
                snprintf(err, errlen, "retry_after_s must be an integer 0..3600");
                return -EINVAL;
            }
            c->retry_after_s = (unsigned)json_integer_value(v);
        } else if (strcmp(key, "search_lag_ms") == 0) {
            if ((rc = get_ms(v, &c->search_lag_ms, key, err, errlen)) < 0)
                return rc;
        } else if (strcmp(key, "seed") == 0) {
            if (!json_is_integer(v)) {
                snprintf(err, errlen, "seed must be an integer");
                return -EINVAL;
            }
            c->seed = (uint64_t)json_integer_value(v);
            gm_rand_seed(c->seed);
        } else if (strcmp(key, "http_methods") == 0) {
            if ((rc = apply_methods(c, v, err, errlen)) < 0)
                return rc;
        } else if (strcmp(key, "paths") == 0) {
            if ((rc = apply_paths(c, v, err, errlen)) < 0)
                return rc;
        } else if (strcmp(key, "payment_methods") == 0) {
            const char *tok;
            json_t *sub;
            if (!json_is_object(v)) {
                snprintf(err, errlen, "payment_methods must be an object {token: {...}}");
                return -EINVAL;
            }
            json_object_foreach(v, tok, sub)
            {
                if (json_is_null(sub)) {
                    pm_remove(c, tok);
                    continue;
                }
                if (!json_is_object(sub)) {
                    snprintf(err, errlen, "payment_methods.%s must be an object or null", tok);
                    return -EINVAL;
                }
                struct faultset *fs = pm_lookup(c, tok, true);
                if (!fs)
                    return -ENOMEM;
                const char *k2;
                json_t *v2;
                json_object_foreach(sub, k2, v2)
                {
                    if ((rc = apply_faultset(fs, k2, v2, err, errlen)) < 0)
                        return rc;
                }
            }
        } else if ((rc = apply_faultset(&c->global, key, v, err, errlen)) < 0) {
            return rc;
        }
    }
    return 0;
}

int gm_config_apply(json_t *j, char *err, size_t errlen)
{
    struct config tmp;
    int rc = config_copy(&tmp, &live);
    if (rc < 0) {
        snprintf(err, errlen, "out of memory");
        return rc;
    }
    rc = apply(&tmp, j, err, errlen);
    if (rc < 0) {
        if (rc == -ENOMEM)
            snprintf(err, errlen, "out of memory");
        config_free(&tmp);
        return rc;
    }
    config_free(&live);
    live = tmp;
    return 0;
}

void gm_config_commit_startup(void)
{
    struct config tmp;
    if (config_copy(&tmp, &live) == 0) {
        config_free(&startup);
        startup = tmp;
    }
}

void gm_config_reset(void)
{
    struct config tmp;
    if (config_copy(&tmp, &startup) == 0) {
        config_free(&live);
        live = tmp;
        gm_rand_seed(live.seed);
    }
}

static json_t *faultset_json(const struct faultset *fs, bool all)
{
    json_t *o = json_object();
    json_t *nn = json_object();
    if (!o || !nn) {
        json_decref(o);
        json_decref(nn);
        return NULL;
    }
    if (all || fs->has_latency)
        json_object_set_new(o, "latency_ms", json_integer(fs->latency_ms));
    if (all || fs->has_jitter)
        json_object_set_new(o, "jitter_ms", json_integer(fs->jitter_ms));
    for (int f = 0; f < GM_F_COUNT; f++) {
        if (all || fs->has_rate[f])
            json_object_set_new(o, fault_names[f], json_real(fs->rate[f]));
        if (all || fs->next_n[f])
            json_object_set_new(nn, fault_names[f], json_integer(fs->next_n[f]));
    }
    json_object_set_new(o, "next_n", nn);
    return o;
}

json_t *gm_config_json(void)
{
    json_t *o = faultset_json(&live.global, true);
    if (!o)
        return NULL;
    json_object_set_new(o, "retry_after_s", json_integer(live.retry_after_s));
    json_object_set_new(o, "search_lag_ms", json_integer(live.search_lag_ms));
    json_object_set_new(o, "seed", json_integer((json_int_t)live.seed));
    json_t *m = json_array();
    if (live.methods & METHOD_GET)
        json_array_append_new(m, json_string("GET"));
    if (live.methods & METHOD_POST)
        json_array_append_new(m, json_string("POST"));
    if (live.methods & METHOD_DELETE)
        json_array_append_new(m, json_string("DELETE"));
    json_object_set_new(o, "http_methods", m);
    json_t *p = json_array();
    for (size_t i = 0; i < live.npaths; i++)
        json_array_append_new(p, json_string(live.paths[i]));
    json_object_set_new(o, "paths", p);
    json_t *pm = json_object();
    for (size_t i = 0; i < live.npm; i++)
        json_object_set_new(pm, live.pm[i].token, faultset_json(&live.pm[i].fs, false));
    json_object_set_new(o, "payment_methods", pm);
    return o;
}

static bool applies(const char *method, const char *path)
{
    unsigned bit = strcmp(method, "GET") == 0    ? METHOD_GET
                   : strcmp(method, "POST") == 0 ? METHOD_POST
                                                 : METHOD_DELETE;
    if (!(live.methods & bit))
        return false;
    if (live.npaths == 0)
        return true;
    for (size_t i = 0; i < live.npaths; i++)
        if (strncmp(path, live.paths[i], strlen(live.paths[i])) == 0)
            return true;
    return false;
}

/* Per-token config: exact token first, then its base ("pm_card_visa__x" →
 * "pm_card_visa"). */
static struct faultset *token_faults(const char *token)
{
    if (!token || live.npm == 0)
        return NULL;
    struct faultset *fs = pm_lookup(&live, token, false);
    if (fs)
        return fs;
    const char *sep = strstr(token, "__");
    if (!sep)
        return NULL;
    char base[128];
    size_t n = (size_t)(sep - token);
    if (n >= sizeof(base))
        return NULL;
    memcpy(base, token, n);
    base[n] = '\0';
    return pm_lookup(&live, base, false);
}

bool gm_fault_roll(enum gm_fault f, const char *token, const char *method, const char *path)
{
    if (!applies(method, path))
        return false;
    struct faultset *fs = token_faults(token);
    if (fs && fs->next_n[f] > 0) {
        fs->next_n[f]--;
        return true;
    }
    if (live.global.next_n[f] > 0) {
        live.global.next_n[f]--;
        return true;
    }
    double rate = fs && fs->has_rate[f] ? fs->rate[f] : live.global.rate[f];
    if (rate <= 0.0)
        return false;
    if (rate >= 1.0)
        return true;
    return gm_rand01(GM_RNG_FAULTS) < rate;
}

int64_t gm_fault_latency_ms(const char *token, const char *method, const char *path)
{
    if (!applies(method, path))
        return 0;
    struct faultset *fs = token_faults(token);
    int64_t lat = fs && fs->has_latency ? fs->latency_ms : live.global.latency_ms;
    int64_t jit = fs && fs->has_jitter ? fs->jitter_ms : live.global.jitter_ms;
    if (jit > 0)
        lat += (int64_t)(gm_rand(GM_RNG_FAULTS) % (uint64_t)(jit + 1));
    return lat;
}

unsigned gm_config_retry_after_s(void)
{
    return live.retry_after_s;
}

int64_t gm_config_search_lag_ms(void)
{
    return live.search_lag_ms;
}
