/*
 * form.c — application/x-www-form-urlencoded bodies and query strings, as
 * Stripe's clients send them (percent escapes, '+' for space, bracketed keys
 * such as metadata[k] kept verbatim after decoding).
 */
#include "mock.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

size_t gm_unescape(char *s, bool plus_is_space)
{
    char *w = s;
    for (const char *r = s; *r; r++) {
        if (*r == '%') {
            int hi = hexval(r[1]);
            int lo = hi < 0 ? -1 : hexval(r[2]);
            if (hi < 0 || lo < 0)
                return (size_t)-1;
            *w++ = (char)(hi * 16 + lo);
            r += 2;
        } else if (*r == '+' && plus_is_space) {
            *w++ = ' ';
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
    return (size_t)(w - s);
}

int gm_form_add(struct gm_form *f, const char *key, const char *val)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        struct gm_param *v = realloc(f->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        f->v = v;
        f->cap = cap;
    }
    char *k = strdup(key);
    char *x = strdup(val ? val : "");
    if (!k || !x) {
        free(k);
        free(x);
        return -ENOMEM;
    }
    f->v[f->n].key = k;
    f->v[f->n].val = x;
    f->n++;
    return 0;
}

int gm_form_parse(struct gm_form *f, const char *body, size_t len)
{
    char *copy = malloc(len + 1);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, body, len);
    copy[len] = '\0';

    int rc = 0;
    char *save = NULL;
    for (char *pair = strtok_r(copy, "&", &save); pair; pair = strtok_r(NULL, "&", &save)) {
        if (*pair == '\0')
            continue;
        char *eq = strchr(pair, '=');
        char *val = "";
        if (eq) {
            *eq = '\0';
            val = eq + 1;
        }
        if (gm_unescape(pair, true) == (size_t)-1 || gm_unescape(val, true) == (size_t)-1) {
            rc = -EINVAL;
            break;
        }
        if (*pair == '\0') {
            rc = -EINVAL;
            break;
        }
        rc = gm_form_add(f, pair, val);
        if (rc < 0)
            break;
    }
    free(copy);
    return rc;
}

void gm_form_release(struct gm_form *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n; i++) {
        free(f->v[i].key);
        free(f->v[i].val);
    }
    free(f->v);
    f->v = NULL;
    f->n = f->cap = 0;
}

const char *gm_form_get(const struct gm_form *f, const char *key)
{
    for (size_t i = f->n; i > 0; i--)
        if (strcmp(f->v[i - 1].key, key) == 0)
            return f->v[i - 1].val;
    return NULL;
}

static int cmp_param(const void *a, const void *b)
{
    const struct gm_param *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    return c ? c : strcmp(x->val, y->val);
}

char *gm_form_fingerprint(const struct gm_form *f)
{
    size_t total = 1;
    struct gm_param *sorted = malloc((f->n ? f->n : 1) * sizeof(*sorted));
    if (!sorted)
        return NULL;
    for (size_t i = 0; i < f->n; i++) {
        sorted[i] = f->v[i];
        total += strlen(f->v[i].key) + strlen(f->v[i].val) + 2;
    }
    qsort(sorted, f->n, sizeof(*sorted), cmp_param);
    char *out = malloc(total);
    if (!out) {
        free(sorted);
        return NULL;
    }
    char *w = out;
    for (size_t i = 0; i < f->n; i++) {
        size_t kl = strlen(sorted[i].key), vl = strlen(sorted[i].val);
        memcpy(w, sorted[i].key, kl);
        w += kl;
        *w++ = '\x1f';
        memcpy(w, sorted[i].val, vl);
        w += vl;
        *w++ = '\x1e';
    }
    *w = '\0';
    free(sorted);
    return out;
}
