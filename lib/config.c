/*
 * config — see config.h.
 *
 * Every key is a row of `keys[]`: section, name, how to parse it, where it
 * lives in struct pl_config, its bounds, and whether a change applies
 * live. Parsing, duplicate detection, line numbers, the diff and the
 * error messages all work from that one table.
 *
 * inih (Debian r55) calls the handler without a line number, so the
 * reader callback feeds it one line at a time and counts lines itself.
 * The reader also takes the lines inih would reject or misread (no '=',
 * unclosed section header, too long, indented continuation lines), reports
 * them and hands inih a blank line instead: every problem in the file is
 * reported, each with its line.
 */
#include "config.h"
#include "util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <ini.h>
#include <libpq-fe.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONFIG_FILE_MAX   (1024 * 1024)
#define SECRET_FILE_MAX   (64 * 1024)
#define ERRORS_MAX        100 /* after that, only a count */
#define QUOTE_MAX         64  /* bytes of a bad value echoed in a message */
#define NODE_NAME_MAX     63
#define DESCRIPTOR_MAX    22 /* Stripe statement descriptor limit */
#define MINUTES_PER_DAY   (24 * 60)
#define ZONEINFO_DIR      "/usr/share/zoneinfo"
#define DEFAULT_NODE_NAME "pledged"

#define MS_PER_S   INT64_C(1000)
#define MS_PER_MIN (60 * MS_PER_S)
#define MS_PER_H   (60 * MS_PER_MIN)
#define MS_PER_D   (24 * MS_PER_H)

/* ---- a growable string ---------------------------------------------------- */

struct buf {
    char *s;
    size_t len, cap;
};

__attribute__((format(printf, 2, 0))) static void buf_vprintf(struct buf *b, const char *fmt,
                                                                va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return;
    if (b->len + (size_t)n + 1 > b->cap) {
        b->cap = (b->len + (size_t)n + 1) * 2;
        b->s = pl_xrealloc(b->s, b->cap);
    }
    vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
    b->len += (size_t)n;
}

static void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(b, fmt, ap);
    va_end(ap);
}

/* Append one line to a newline-separated list kept as a malloc'd string. */
static void list_add(char **list, const char *line)
{
    char *old = *list;
    *list = old ? pl_xasprintf("%s\n%s", old, line) : pl_xstrdup(line);
    free(old);
}

/* A value quoted for a message: secrets masked (a key pasted into the wrong
 * place must not end up in an error message), escaped, cut to QUOTE_MAX
 * bytes. New string. */
static char *quote(const char *value)
{
    size_t cap = strlen(value) + 64;
    char *v = pl_xmalloc(cap);
    pl_log_redact(value, v, cap);
    struct buf b = {0};
    buf_printf(&b, "\"");
    size_t i = 0;
    for (; v[i] && i < QUOTE_MAX; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '"' || c == '\\')
            buf_printf(&b, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            buf_printf(&b, "\\x%02x", c);
        else
            buf_printf(&b, "%c", c);
    }
    buf_printf(&b, v[i] ? "\"..." : "\"");
    explicit_bzero(v, cap);
    free(v);
    return b.s;
}

/* ---- durations ------------------------------------------------------------ */

static const struct {
    const char *unit;
    int64_t ms;
} duration_units[] = {
    {"d", MS_PER_D}, {"h", MS_PER_H}, {"m", MS_PER_MIN}, {"s", MS_PER_S}, {"ms", 1},
};

int pl_config_parse_duration(const char *s, int64_t *out_ms)
{
    if (!s || !isdigit((unsigned char)*s))
        return PL_EINVAL;
    const char *unit = s;
    while (isdigit((unsigned char)*unit))
        unit++;
    int64_t factor = 0;
    for (size_t i = 0; i < PL_ARRAY_LEN(duration_units); i++)
        if (strcmp(unit, duration_units[i].unit) == 0)
            factor = duration_units[i].ms;
    if (!factor)
        return PL_EINVAL;
    int64_t v = 0;
    for (const char *p = s; p < unit; p++) {
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, *p - '0', &v))
            return PL_ERANGE;
    }
    if (__builtin_mul_overflow(v, factor, &v))
        return PL_ERANGE;
    *out_ms = v;
    return 0;
}

char *pl_config_format_duration(int64_t ms, char *buf, size_t n)
{
    if (ms == 0) {
        snprintf(buf, n, "0s");
        return buf;
    }
    for (size_t i = 0; i < PL_ARRAY_LEN(duration_units); i++) {
        if (ms % duration_units[i].ms == 0) {
            snprintf(buf, n, "%" PRId64 "%s", ms / duration_units[i].ms, duration_units[i].unit);
            break;
        }
    }
    return buf;
}

/* ---- the key table -------------------------------------------------------- */

enum kind {
    K_STR,    /* char * */
    K_INT,    /* int, [min, max] */
    K_I64,    /* int64_t, [min, max] */
    K_BOOL,   /* bool */
    K_MS,     /* int64_t milliseconds, [min, max] */
    K_LIST,   /* struct pl_duration_list: entries in [min, max], at most `count` */
    K_ENUM,   /* enum stored as int: index into `names` */
    K_CUSTOM, /* `parse` does it all, `fmt` prints it */
    K_SECRET, /* an inline secret: always refused */
};

enum {
    F_OPTIONAL = 1 << 0, /* empty value = not set (NULL) */
    F_PATH = 1 << 1,     /* must be an absolute path */
    F_RESTART = 1 << 2,  /* a change needs a restart */
};

struct key;
/* Validate (and store) a value; returns NULL or a new string: the reason. */
typedef char *(*parse_fn)(const struct key *k, const char *value, struct pl_config *cfg);
/* Print the stored value for the diff; new string. */
typedef char *(*fmt_fn)(const struct key *k, const struct pl_config *cfg);

struct key {
    const char *section;
    const char *name;
    enum kind kind;
    size_t off;
    int64_t min, max; /* ranges; for K_STR the longest length (0: no limit) */
    unsigned flags;
    parse_fn check;           /* K_STR: extra validation after the generic one; K_CUSTOM: parser */
    fmt_fn fmt;               /* K_CUSTOM */
    const char *const *names; /* K_ENUM */
    size_t count;             /* K_LIST: most entries */
    const char *file_key;     /* K_SECRET: where the secret belongs */
    const char *cred;         /* K_SECRET: the systemd credential */
};

#define OFF(f) offsetof(struct pl_config, f)

static void *field(const struct key *k, struct pl_config *cfg)
{
    return (char *)cfg + k->off;
}

static const void *cfield(const struct key *k, const struct pl_config *cfg)
{
    return (const char *)cfg + k->off;
}

static char *check_conninfo(const struct key *k, const char *v, struct pl_config *cfg);
static char *check_driver(const struct key *k, const char *v, struct pl_config *cfg);
static char *check_base_url(const struct key *k, const char *v, struct pl_config *cfg);
static char *check_readable(const struct key *k, const char *v, struct pl_config *cfg);
static char *check_descriptor(const struct key *k, const char *v, struct pl_config *cfg);
static char *check_node_name(const struct key *k, const char *v, struct pl_config *cfg);
static char *check_timezone(const struct key *k, const char *v, struct pl_config *cfg);
static char *check_email(const struct key *k, const char *v, struct pl_config *cfg);
static char *check_listen(const struct key *k, const char *v, struct pl_config *cfg);
static char *parse_charge_time(const struct key *k, const char *v, struct pl_config *cfg);
static char *fmt_charge_time(const struct key *k, const struct pl_config *cfg);
static char *parse_log_level(const struct key *k, const char *v, struct pl_config *cfg);
static char *fmt_log_level(const struct key *k, const struct pl_config *cfg);
static char *parse_log_format(const struct key *k, const char *v, struct pl_config *cfg);
static char *fmt_log_format(const struct key *k, const struct pl_config *cfg);

static const char *const catch_up_names[] = {"latest", "all", NULL};
static const char *const jurisdiction_names[] = {"us", "ca", NULL};

/* clang-format off */
#define STR(sec, name, f, maxlen, flags, check) \
    {sec, name, K_STR, OFF(f), 0, maxlen, flags, check, NULL, NULL, 0, NULL, NULL}
#define INT(sec, name, f, lo, hi, flags) \
    {sec, name, K_INT, OFF(f), lo, hi, flags, NULL, NULL, NULL, 0, NULL, NULL}
#define I64(sec, name, f, lo, hi, flags) \
    {sec, name, K_I64, OFF(f), lo, hi, flags, NULL, NULL, NULL, 0, NULL, NULL}
#define BOOL(sec, name, f, flags) \
    {sec, name, K_BOOL, OFF(f), 0, 1, flags, NULL, NULL, NULL, 0, NULL, NULL}
#define MS(sec, name, f, lo, hi, flags) \
    {sec, name, K_MS, OFF(f), lo, hi, flags, NULL, NULL, NULL, 0, NULL, NULL}
#define LIST(sec, name, f, lo, hi, n, flags) \
    {sec, name, K_LIST, OFF(f), lo, hi, flags, NULL, NULL, NULL, n, NULL, NULL}
#define ENUM(sec, name, f, names, flags) \
    {sec, name, K_ENUM, OFF(f), 0, 0, flags, NULL, NULL, names, 0, NULL, NULL}
#define CUSTOM(sec, name, f, parse, fmt, flags) \
    {sec, name, K_CUSTOM, OFF(f), 0, 0, flags, parse, fmt, NULL, 0, NULL, NULL}
#define SECRET(sec, name, file_key, cred) \
    {sec, name, K_SECRET, 0, 0, 0, 0, NULL, NULL, NULL, 0, file_key, cred}
/* clang-format on */

static const struct key keys[] = {
    STR("database", "conninfo", database.conninfo, 4096, F_OPTIONAL | F_RESTART, check_conninfo),
    STR("database", "password_file", database.password_file, PATH_MAX, F_OPTIONAL | F_PATH, NULL),
    SECRET("database", "password", "password_file", PL_CRED_DB_PASSWORD),
    INT("database", "pool_size", database.pool_size, 1, 64, F_RESTART),
    MS("database", "connect_timeout", database.connect_timeout_ms, 100, 10 * MS_PER_MIN, 0),
    MS("database", "queue_deadline", database.queue_deadline_ms, 100, MS_PER_H, 0),

    STR("gateway", "driver", gateway.driver, 32, F_RESTART, check_driver),
    STR("gateway", "base_url", gateway.base_url, 1024, F_RESTART, check_base_url),
    STR("gateway", "api_key_file", gateway.api_key_file, PATH_MAX, F_OPTIONAL | F_PATH, NULL),
    SECRET("gateway", "api_key", "api_key_file", PL_CRED_GATEWAY_API_KEY),
    STR("gateway", "ca_bundle", gateway.ca_bundle, PATH_MAX, F_OPTIONAL | F_PATH | F_RESTART,
        check_readable),
    INT("gateway", "max_in_flight", gateway.max_in_flight, 1, 1024, 0),
    INT("gateway", "rate_limit", gateway.rate_limit, 1, 10000, 0),
    INT("gateway", "rate_burst", gateway.rate_burst, 1, 1000, 0),
    /* lib/http sets these per client; changing them needs a restart */
    MS("gateway", "connect_timeout", gateway.connect_timeout_ms, 100, 10 * MS_PER_MIN, F_RESTART),
    MS("gateway", "request_timeout", gateway.request_timeout_ms, MS_PER_S, 10 * MS_PER_MIN,
       F_RESTART),
    MS("gateway", "idempotency_window", gateway.idempotency_window_ms, MS_PER_S, MS_PER_D, 0),
    MS("gateway", "lookup_settle", gateway.lookup_settle_ms, 0, MS_PER_D, 0),
    STR("gateway", "statement_descriptor_suffix", gateway.statement_descriptor_suffix,
        DESCRIPTOR_MAX, F_OPTIONAL, check_descriptor),

    STR("billing", "node_name", billing.node_name, NODE_NAME_MAX, F_RESTART, check_node_name),
    STR("billing", "timezone", billing.timezone, 255, 0, check_timezone),
    CUSTOM("billing", "charge_time", billing.charge_time_minutes, parse_charge_time,
           fmt_charge_time, 0),
    LIST("billing", "retry_schedule", billing.retry_schedule, MS_PER_MIN, 30 * MS_PER_D,
         PL_RETRY_SCHEDULE_MAX, 0),
    INT("billing", "lapse_after", billing.lapse_after, 1, 24, 0),
    ENUM("billing", "catch_up", billing.catch_up, catch_up_names, 0),
    INT("billing", "batch_size", billing.batch_size, 1, 5000, 0),
    MS("billing", "lease", billing.lease_ms, 10 * MS_PER_S, MS_PER_D, 0),
    MS("billing", "poll_interval", billing.poll_interval_ms, MS_PER_S, MS_PER_H, 0),
    LIST("billing", "reconcile_schedule", billing.reconcile_schedule, MS_PER_S, 30 * MS_PER_D,
         PL_DURATION_LIST_MAX, 0),
    MS("billing", "unknown_alert_after", billing.unknown_alert_after_ms, MS_PER_MIN, 30 * MS_PER_D,
       0),
    MS("billing", "shutdown_deadline", billing.shutdown_deadline_ms, MS_PER_S, MS_PER_H, 0),
    INT("billing", "retry_now_max", billing.retry_now_max, 0, 20, 0),

    STR("org", "legal_name", org.legal_name, 200, F_OPTIONAL, NULL),
    STR("org", "address_line1", org.address_line1, 200, F_OPTIONAL, NULL),
    STR("org", "address_line2", org.address_line2, 200, F_OPTIONAL, NULL),
    STR("org", "city", org.city, 100, F_OPTIONAL, NULL),
    STR("org", "region", org.region, 100, F_OPTIONAL, NULL),
    STR("org", "postal_code", org.postal_code, 20, F_OPTIONAL, NULL),
    STR("org", "country", org.country, 100, F_OPTIONAL, NULL),
    STR("org", "tax_id", org.tax_id, 40, F_OPTIONAL, NULL),
    ENUM("org", "jurisdiction", org.jurisdiction, jurisdiction_names, 0),
    STR("org", "city_issued", org.city_issued, 100, F_OPTIONAL, NULL),
    STR("org", "charity_registration_statement", org.charity_registration_statement, 0, F_OPTIONAL,
        NULL),
    STR("org", "signatory_name", org.signatory_name, 200, F_OPTIONAL, NULL),
    STR("org", "signatory_title", org.signatory_title, 200, F_OPTIONAL, NULL),
    STR("org", "signature_image", org.signature_image, PATH_MAX, F_OPTIONAL | F_PATH, NULL),
    STR("org", "receipt_dir", org.receipt_dir, PATH_MAX, F_PATH, NULL),
    STR("org", "email", org.email, 254, F_OPTIONAL, check_email),
    STR("org", "website", org.website, 200, F_OPTIONAL, NULL),

    STR("http", "listen", http.listen, 64, F_RESTART, check_listen),
    BOOL("http", "enabled", http.enabled, F_RESTART),
    STR("http", "webhook_secret_file", http.webhook_secret_file, PATH_MAX, F_OPTIONAL | F_PATH,
        NULL),
    SECRET("http", "webhook_secret", "webhook_secret_file", PL_CRED_WEBHOOK_SECRET),
    I64("http", "max_body", http.max_body, 1024, 16 * 1024 * 1024, 0),

    CUSTOM("log", "level", log.level, parse_log_level, fmt_log_level, 0),
    CUSTOM("log", "format", log.format, parse_log_format, fmt_log_format, 0),
};

#define NKEYS PL_ARRAY_LEN(keys)

static const char *const sections[] = {"database", "gateway", "billing", "org", "http", "log"};

static bool known_section(const char *s)
{
    for (size_t i = 0; i < PL_ARRAY_LEN(sections); i++)
        if (strcmp(s, sections[i]) == 0)
            return true;
    return false;
}

static const struct key *find_key(const char *section, const char *name)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
            return &keys[i];
    return NULL;
}

/* ---- defaults and release ------------------------------------------------- */

static void set_list(struct pl_duration_list *l, const int64_t *ms, size_t n)
{
    memset(l, 0, sizeof(*l));
    memcpy(l->ms, ms, n * sizeof(*ms));
    l->len = n;
}

void pl_config_defaults(struct pl_config *cfg)
{
    static const int64_t retry[] = {1 * MS_PER_D, 3 * MS_PER_D, 5 * MS_PER_D, 7 * MS_PER_D};
    static const int64_t reconcile[] = {MS_PER_MIN, 5 * MS_PER_MIN, MS_PER_H, MS_PER_D};

    memset(cfg, 0, sizeof(*cfg));
    cfg->path = pl_xstrdup(PL_CONFIG_DEFAULT_PATH);

    cfg->database.conninfo = pl_xstrdup("");
    cfg->database.pool_size = 4;
    cfg->database.connect_timeout_ms = 5 * MS_PER_S;
    cfg->database.queue_deadline_ms = 30 * MS_PER_S;

    cfg->gateway.driver = pl_xstrdup("stripe");
    cfg->gateway.base_url = pl_xstrdup("https://api.stripe.com");
    cfg->gateway.max_in_flight = 32;
    cfg->gateway.rate_limit = 20;
    cfg->gateway.rate_burst = 5;
    cfg->gateway.connect_timeout_ms = 10 * MS_PER_S;
    cfg->gateway.request_timeout_ms = 60 * MS_PER_S;
    cfg->gateway.idempotency_window_ms = 24 * MS_PER_H;
    cfg->gateway.lookup_settle_ms = MS_PER_H;

    char host[256] = "";
    char *bad_host = NULL;
    if (gethostname(host, sizeof(host) - 1) < 0 || (bad_host = check_node_name(NULL, host, NULL)))
        pl_strlcpy(host, DEFAULT_NODE_NAME, sizeof(host));
    free(bad_host);
    cfg->billing.node_name = pl_xstrdup(host);
    cfg->billing.timezone = pl_xstrdup("UTC");
    cfg->billing.charge_time_minutes = 9 * 60;
    set_list(&cfg->billing.retry_schedule, retry, PL_ARRAY_LEN(retry));
    cfg->billing.lapse_after = 3;
    cfg->billing.catch_up = PL_CATCH_UP_LATEST;
    cfg->billing.batch_size = 200;
    cfg->billing.lease_ms = 5 * MS_PER_MIN;
    cfg->billing.poll_interval_ms = 60 * MS_PER_S;
    set_list(&cfg->billing.reconcile_schedule, reconcile, PL_ARRAY_LEN(reconcile));
    cfg->billing.unknown_alert_after_ms = 2 * MS_PER_H;
    cfg->billing.shutdown_deadline_ms = 30 * MS_PER_S;
    cfg->billing.retry_now_max = 5;

    cfg->org.jurisdiction = PL_JURISDICTION_US;
    cfg->org.receipt_dir = pl_xstrdup("/var/lib/pledged/receipts");

    cfg->http.listen = pl_xstrdup("127.0.0.1:8425");
    cfg->http.listen_host = pl_xstrdup("127.0.0.1");
    cfg->http.listen_port = 8425;
    cfg->http.enabled = true;
    cfg->http.max_body = 65536;

    cfg->log.level = PL_LOG_INFO;
    cfg->log.format = PL_LOG_AUTO;

    cfg->key_lines = pl_xcalloc(NKEYS, sizeof(int));
}

static void free_secret(char **s)
{
    if (*s) {
        explicit_bzero(*s, strlen(*s));
        free(*s);
        *s = NULL;
    }
}

void pl_config_release(struct pl_config *cfg)
{
    if (!cfg)
        return;
    free_secret(&cfg->database.password);
    free_secret(&cfg->gateway.api_key);
    free_secret(&cfg->http.webhook_secret);
    for (size_t i = 0; i < NKEYS; i++)
        if (keys[i].kind == K_STR)
            free(*(char **)field(&keys[i], cfg));
    free(cfg->http.listen_host);
    free(cfg->path);
    free(cfg->warnings);
    free(cfg->key_lines);
    memset(cfg, 0, sizeof(*cfg));
}

int pl_config_line(const struct pl_config *cfg, const char *section, const char *key)
{
    const struct key *k = find_key(section, key);
    if (!k || !cfg->key_lines)
        return 0;
    return cfg->key_lines[k - keys];
}

/* ---- value checks --------------------------------------------------------- */

static char *check_conninfo(const struct key *k, const char *v, struct pl_config *cfg)
{
    /* The value is never echoed: a malformed one may still hold a secret. */
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(v, &err);
    if (!opts) {
        char *reason;
        /* libpq quotes pieces of the string; keep them out if a password
         * may be among them */
        if (err && !strcasestr(v, "password")) {
            pl_rstrip(err);
            reason = pl_xasprintf("not a valid libpq connection string: %s", err);
        } else {
            reason = pl_xstrdup("not a valid libpq connection string");
        }
        PQfreemem(err);
        return reason;
    }
    bool has_password = false;
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (strcmp(o->keyword, "password") == 0 && o->val && o->val[0])
            has_password = true;
    PQconninfoFree(opts);
    if (has_password)
        return pl_xstrdup(
            "must not contain a password; put it in a file named by "
            "[database] password_file or in the systemd credential " PL_CRED_DB_PASSWORD
            " (or use ~/.pgpass / peer authentication)");
    return NULL;
}

static char *check_driver(const struct key *k, const char *v, struct pl_config *cfg)
{
    if (strcmp(v, "stripe") != 0) {
        char *q = quote(v);
        char *r = pl_xasprintf("must be stripe (the only driver so far), got %s", q);
        free(q);
        return r;
    }
    return NULL;
}

static bool host_is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (strcasecmp(host, "localhost") == 0)
        return true;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6);
    return false;
}

/* Split "host:port" / "[v6]:port" / "host" into a new host string and the
 * port text (NULL when absent); NULL on a malformed bracket. */
static char *split_host_port(const char *hp, size_t len, const char **port, size_t *port_len)
{
    *port = NULL;
    *port_len = 0;
    if (len > 0 && hp[0] == '[') {
        const char *close = memchr(hp, ']', len);
        if (!close)
            return NULL;
        size_t rest = len - (size_t)(close + 1 - hp);
        if (rest > 0) {
            if (close[1] != ':')
                return NULL;
            *port = close + 2;
            *port_len = rest - 1;
        }
        return pl_xstrndup(hp + 1, (size_t)(close - hp - 1));
    }
    const char *colon = memchr(hp, ':', len);
    if (colon) {
        if (memchr(colon + 1, ':', len - (size_t)(colon + 1 - hp)))
            return NULL; /* a bare IPv6 address needs brackets */
        *port = colon + 1;
        *port_len = len - (size_t)(colon + 1 - hp);
        return pl_xstrndup(hp, (size_t)(colon - hp));
    }
    return pl_xstrndup(hp, len);
}

/* Port text to a number in [lo, 65535]; -1 if not. */
static int parse_port(const char *p, size_t n, int lo)
{
    if (n == 0 || n > 5)
        return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)p[i]))
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v >= lo && v <= 65535 ? v : -1;
}

static char *check_base_url(const struct key *k, const char *v, struct pl_config *cfg)
{
    bool https;
    const char *rest;
    if (strncasecmp(v, "https://", 8) == 0) {
        https = true;
        rest = v + 8;
    } else if (strncasecmp(v, "http://", 7) == 0) {
        https = false;
        rest = v + 7;
    } else {
        char *q = quote(v);
        char *r = pl_xasprintf("must be an https:// URL, got %s", q);
        free(q);
        return r;
    }
    size_t alen = strcspn(rest, "/?#");
    if (memchr(rest, '@', alen))
        return pl_xstrdup("must not contain credentials (user:password@); the API key comes "
                          "from [gateway] api_key_file or the credential " PL_CRED_GATEWAY_API_KEY);
    if (rest[alen] == '?' || rest[alen] == '#')
        return pl_xstrdup("must not have a query or fragment");
    const char *port;
    size_t port_len;
    char *host = split_host_port(rest, alen, &port, &port_len);
    char *reason = NULL;
    if (!host || !host[0] ||
        strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                     "0123456789.-:") != strlen(host)) {
        char *q = quote(v);
        reason = pl_xasprintf("has no valid host name, got %s", q);
        free(q);
    } else if (port && parse_port(port, port_len, 1) < 0) {
        reason = pl_xstrdup("has an invalid port (1..65535)");
    } else if (!https && !host_is_loopback(host)) {
        reason = pl_xasprintf("plain http is only allowed for loopback (the mock gateway), "
                              "got host \"%s\"; use https://",
                              host);
    }
    free(host);
    if (reason)
        return reason;
    /* normalise: no trailing '/', so "base_url + /v1/..." is one slash */
    char **f = field(k, cfg);
    size_t n = strlen(*f);
    while (n > 0 && (*f)[n - 1] == '/')
        (*f)[--n] = '\0';
    return NULL;
}

static char *check_readable(const struct key *k, const char *v, struct pl_config *cfg)
{
    struct stat st;
    if (stat(v, &st) < 0 || access(v, R_OK) < 0)
        return pl_xasprintf("cannot read %s: %s", v, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return pl_xasprintf("%s is not a regular file", v);
    return NULL;
}

static char *check_descriptor(const struct key *k, const char *v, struct pl_config *cfg)
{
    for (const char *p = v; *p; p++) {
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            return pl_xstrdup("must be printable ASCII (card statements show nothing else)");
        if (strchr("<>\\'\"*", *p))
            return pl_xasprintf("must not contain any of < > \\ ' \" * (found '%c')", *p);
    }
    return NULL;
}

static char *check_node_name(const struct key *k, const char *v, struct pl_config *cfg)
{
    size_t n = strlen(v);
    if (n == 0 || n > NODE_NAME_MAX ||
        strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != n) {
        char *q = quote(v);
        char *r = pl_xasprintf("must be 1 to %d letters, digits, '.', '_' or '-', got %s",
                               NODE_NAME_MAX, q);
        free(q);
        return r;
    }
    return NULL;
}

static char *check_timezone(const struct key *k, const char *v, struct pl_config *cfg)
{
    char *q = quote(v);
    char *reason = NULL;
    size_t n = strlen(v);
    if (strcmp(v, "UTC") == 0 || strcmp(v, "Etc/UTC") == 0)
        goto out; /* PostgreSQL knows it even where tzdata is not installed */
    if (v[0] == '/' || strstr(v, "..") ||
        strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/_+-") != n) {
        reason = pl_xasprintf("must be an IANA time zone name such as America/Toronto, got %s", q);
        goto out;
    }
    const char *dir = getenv("TZDIR");
    char *path = pl_xasprintf("%s/%s", dir && *dir ? dir : ZONEINFO_DIR, v);
    char magic[4] = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    bool ok = fd >= 0 && read(fd, magic, sizeof(magic)) == (ssize_t)sizeof(magic) &&
              memcmp(magic, "TZif", 4) == 0;
    if (fd >= 0)
        close(fd);
    if (!ok)
        reason = pl_xasprintf("unknown time zone %s (no zone file %s)", q, path);
    free(path);
out:
    free(q);
    return reason;
}

static char *check_email(const struct key *k, const char *v, struct pl_config *cfg)
{
    const char *at = strchr(v, '@');
    if (!at || at == v || !at[1] || strchr(at + 1, '@') || strpbrk(v, " \t<>,;")) {
        char *q = quote(v);
        char *r = pl_xasprintf("must be an email address, got %s", q);
        free(q);
        return r;
    }
    return NULL;
}

static char *check_listen(const struct key *k, const char *v, struct pl_config *cfg)
{
    const char *port;
    size_t port_len;
    char *host = split_host_port(v, strlen(v), &port, &port_len);
    unsigned char addr[sizeof(struct in6_addr)];
    int p = -1;
    if (host && port)
        p = parse_port(port, port_len, 0);
    if (!host || !port || p < 0 ||
        (inet_pton(AF_INET, host, addr) != 1 && inet_pton(AF_INET6, host, addr) != 1)) {
        free(host);
        char *q = quote(v);
        char *r = pl_xasprintf("must be IP:PORT such as 127.0.0.1:8425 or [::1]:8425 (port "
                               "0..65535), got %s",
                               q);
        free(q);
        return r;
    }
    free(cfg->http.listen_host);
    cfg->http.listen_host = host;
    cfg->http.listen_port = p;
    return NULL;
}

static char *parse_charge_time(const struct key *k, const char *v, struct pl_config *cfg)
{
    int h = -1, m = -1;
    size_t n = strlen(v);
    if ((n == 4 || n == 5) && v[n - 3] == ':' && isdigit((unsigned char)v[0]) &&
        isdigit((unsigned char)v[n - 2]) && isdigit((unsigned char)v[n - 1]) &&
        (n == 4 || isdigit((unsigned char)v[1]))) {
        h = n == 5 ? (v[0] - '0') * 10 + (v[1] - '0') : v[0] - '0';
        m = (v[n - 2] - '0') * 10 + (v[n - 1] - '0');
    }
    if (h < 0 || h > 23 || m < 0 || m > 59) {
        char *q = quote(v);
        char *r = pl_xasprintf("must be a 24-hour time HH:MM such as 09:00, got %s", q);
        free(q);
        return r;
    }
    *(int *)field(k, cfg) = h * 60 + m;
    return NULL;
}

static char *fmt_charge_time(const struct key *k, const struct pl_config *cfg)
{
    int v = *(const int *)cfield(k, cfg);
    return pl_xasprintf("%02d:%02d", v / 60, v % 60);
}

static char *parse_log_level(const struct key *k, const char *v, struct pl_config *cfg)
{
    enum pl_log_level l;
    if (pl_log_level_parse(v, &l) < 0) {
        char *q = quote(v);
        char *r = pl_xasprintf("must be one of error, warning, notice, info, debug, got %s", q);
        free(q);
        return r;
    }
    cfg->log.level = l;
    return NULL;
}

static char *fmt_log_level(const struct key *k, const struct pl_config *cfg)
{
    return pl_xstrdup(pl_log_level_name(cfg->log.level));
}

static char *parse_log_format(const struct key *k, const char *v, struct pl_config *cfg)
{
    enum pl_log_format f;
    if (pl_log_format_parse(v, &f) < 0) {
        char *q = quote(v);
        char *r = pl_xasprintf("must be one of auto, text, json, journal, got %s", q);
        free(q);
        return r;
    }
    cfg->log.format = f;
    return NULL;
}

static char *fmt_log_format(const struct key *k, const struct pl_config *cfg)
{
    return pl_xstrdup(pl_log_format_name(cfg->log.format));
}

/* ---- generic parsers ------------------------------------------------------ */

static char *parse_int(const struct key *k, const char *v, struct pl_config *cfg)
{
    int64_t n;
    if (pl_parse_i64(v, &n) < 0 || n < k->min || n > k->max) {
        char *q = quote(v);
        char *r = pl_xasprintf("must be an integer between %" PRId64 " and %" PRId64 ", got %s",
                               k->min, k->max, q);
        free(q);
        return r;
    }
    if (k->kind == K_INT)
        *(int *)field(k, cfg) = (int)n;
    else
        *(int64_t *)field(k, cfg) = n;
    return NULL;
}

/* One duration in [lo, hi]; NULL or the reason. */
static char *duration_in(const char *v, int64_t lo, int64_t hi, int64_t *out)
{
    char a[32], b[32];
    int64_t ms;
    int r = pl_config_parse_duration(v, &ms);
    char *q = quote(v);
    char *reason = NULL;
    if (r == PL_ERANGE)
        reason = pl_xasprintf("duration too large, got %s", q);
    else if (r < 0)
        reason = pl_xasprintf("must be a whole number with a unit (ms, s, m, h, d) such as 30s "
                              "or 5m, got %s",
                              q);
    else if (ms < lo || ms > hi)
        reason = pl_xasprintf("must be between %s and %s, got %s",
                              pl_config_format_duration(lo, a, sizeof(a)),
                              pl_config_format_duration(hi, b, sizeof(b)), q);
    else
        *out = ms;
    free(q);
    return reason;
}

static char *parse_ms(const struct key *k, const char *v, struct pl_config *cfg)
{
    return duration_in(v, k->min, k->max, (int64_t *)field(k, cfg));
}

static char *parse_bool(const struct key *k, const char *v, struct pl_config *cfg)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < PL_ARRAY_LEN(yes); i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *(bool *)field(k, cfg) = true;
            return NULL;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *(bool *)field(k, cfg) = false;
            return NULL;
        }
    }
    char *q = quote(v);
    char *r = pl_xasprintf("must be true or false (also yes/no, on/off, 1/0), got %s", q);
    free(q);
    return r;
}

static char *parse_enum(const struct key *k, const char *v, struct pl_config *cfg)
{
    struct buf b = {0};
    for (size_t i = 0; k->names[i]; i++) {
        if (strcasecmp(v, k->names[i]) == 0) {
            *(int *)field(k, cfg) = (int)i;
            free(b.s);
            return NULL;
        }
        buf_printf(&b, "%s%s", i ? ", " : "", k->names[i]);
    }
    char *q = quote(v);
    char *r = pl_xasprintf("must be one of %s, got %s", b.s, q);
    free(q);
    free(b.s);
    return r;
}

static char *parse_list(const struct key *k, const char *v, struct pl_config *cfg)
{
    struct pl_duration_list l = {0};
    char *copy = pl_xstrdup(v), *reason = NULL;
    size_t items = 0;
    for (const char *p = v; *p; p++)
        items += *p == ',';
    items++;
    if (items > k->count) {
        reason = pl_xasprintf("has %zu entries; at most %zu are allowed%s", items, k->count,
                              k->count == PL_RETRY_SCHEDULE_MAX
                                  ? " (card networks limit retries of one payment: Visa allows "
                                    "15 in 30 days)"
                                  : "");
        goto out;
    }
    for (char *tok = copy, *next; tok; tok = next) {
        next = strchr(tok, ',');
        if (next)
            *next++ = '\0';
        while (isspace((unsigned char)*tok))
            tok++;
        pl_rstrip(tok);
        int64_t ms = 0;
        char *why = duration_in(tok, k->min, k->max, &ms);
        if (why) {
            reason = pl_xasprintf("entry %zu %s", l.len + 1, why);
            free(why);
            goto out;
        }
        if (l.len > 0 && ms <= l.ms[l.len - 1]) {
            char a[32], b[32];
            reason = pl_xasprintf("must be strictly increasing, but entry %zu (%s) is not after "
                                  "entry %zu (%s)",
                                  l.len + 1, pl_config_format_duration(ms, a, sizeof(a)), l.len,
                                  pl_config_format_duration(l.ms[l.len - 1], b, sizeof(b)));
            goto out;
        }
        l.ms[l.len++] = ms;
    }
    *(struct pl_duration_list *)field(k, cfg) = l;
out:
    free(copy);
    return reason;
}

static char *parse_str(const struct key *k, const char *v, struct pl_config *cfg)
{
    size_t n = strlen(v);
    if (k->max > 0 && n > (size_t)k->max)
        return pl_xasprintf("must be at most %" PRId64 " characters, got %zu", k->max, n);
    if ((k->flags & F_PATH) && v[0] != '/') {
        char *q = quote(v);
        char *r = pl_xasprintf("must be an absolute path, got %s", q);
        free(q);
        return r;
    }
    char **f = field(k, cfg);
    char *old = *f;
    *f = pl_xstrdup(v);
    char *reason = k->check ? k->check(k, v, cfg) : NULL;
    if (reason) {
        free(*f);
        *f = old;
    } else {
        free(old);
    }
    return reason;
}

static char *parse_secret(const struct key *k, const char *v, struct pl_config *cfg)
{
    return pl_xasprintf("secrets are not read from the configuration file; put it in a file "
                        "only pledged can read and set %s = /path/to/file, or pass the systemd "
                        "credential %s (LoadCredential=%s:/path/to/file)",
                        k->file_key, k->cred, k->cred);
}

static char *parse_value(const struct key *k, const char *v, struct pl_config *cfg)
{
    switch (k->kind) {
    case K_STR:
        return parse_str(k, v, cfg);
    case K_INT:
    case K_I64:
        return parse_int(k, v, cfg);
    case K_BOOL:
        return parse_bool(k, v, cfg);
    case K_MS:
        return parse_ms(k, v, cfg);
    case K_LIST:
        return parse_list(k, v, cfg);
    case K_ENUM:
        return parse_enum(k, v, cfg);
    case K_CUSTOM:
        return k->check(k, v, cfg);
    case K_SECRET:
        return parse_secret(k, v, cfg);
    }
    return NULL;
}

/* The stored value as text (diff and "default" hints); new string. */
static char *format_value(const struct key *k, const struct pl_config *cfg)
{
    char a[32];
    switch (k->kind) {
    case K_STR: {
        const char *s = *(char *const *)cfield(k, cfg);
        return s ? quote(s) : pl_xstrdup("(not set)");
    }
    case K_INT:
        return pl_xasprintf("%d", *(const int *)cfield(k, cfg));
    case K_I64:
        return pl_xasprintf("%" PRId64, *(const int64_t *)cfield(k, cfg));
    case K_BOOL:
        return pl_xstrdup(*(const bool *)cfield(k, cfg) ? "true" : "false");
    case K_MS:
        return pl_xstrdup(
            pl_config_format_duration(*(const int64_t *)cfield(k, cfg), a, sizeof(a)));
    case K_LIST: {
        const struct pl_duration_list *l = cfield(k, cfg);
        struct buf b = {0};
        buf_printf(&b, "%s", "");
        for (size_t i = 0; i < l->len; i++)
            buf_printf(&b, "%s%s", i ? "," : "", pl_config_format_duration(l->ms[i], a, sizeof(a)));
        return b.s;
    }
    case K_ENUM:
        return pl_xstrdup(k->names[*(const int *)cfield(k, cfg)]);
    case K_CUSTOM:
        return k->fmt(k, cfg);
    case K_SECRET:
        break;
    }
    return pl_xstrdup("");
}

/* ---- the parser ----------------------------------------------------------- */

struct parser {
    const char *name; /* file name for messages */
    const char *text;
    size_t len, pos;
    int line;
    bool section_ok; /* current section is known (else its keys are not reported) */
    struct pl_config *cfg;
    bool bad[NKEYS]; /* value rejected: skip cross-checks that use it */
    struct buf errs;
    size_t nerrs;
};

static void add_error(struct parser *p, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void add_error(struct parser *p, int line, const char *fmt, ...)
{
    p->nerrs++;
    if (p->nerrs > ERRORS_MAX)
        return;
    if (p->errs.len)
        buf_printf(&p->errs, "\n");
    if (line > 0)
        buf_printf(&p->errs, "%s:%d: ", p->name, line);
    else
        buf_printf(&p->errs, "%s: ", p->name);
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&p->errs, fmt, ap);
    va_end(ap);
}

/* Case-insensitive edit distance, for "did you mean". */
static size_t distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return SIZE_MAX;
    size_t row[65];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
            size_t best = diag + cost;
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static void unknown_key(struct parser *p, const char *section, const char *raw_name)
{
    char name[256];
    pl_log_redact(raw_name, name, sizeof(name));
    for (size_t i = 0; i < NKEYS; i++) {
        if (strcmp(keys[i].name, name) == 0) {
            add_error(p, p->line, "[%s] %s: unknown key here; it belongs in [%s]", section, name,
                      keys[i].section);
            return;
        }
    }
    const struct key *best = NULL;
    size_t best_d = 3;
    for (size_t i = 0; i < NKEYS; i++) {
        if (strcmp(keys[i].section, section) != 0)
            continue;
        size_t d = distance(name, keys[i].name);
        if (d < best_d) {
            best_d = d;
            best = &keys[i];
        }
    }
    if (best)
        add_error(p, p->line, "[%s] %s: unknown key (did you mean %s?)", section, name, best->name);
    else
        add_error(p, p->line, "[%s] %s: unknown key", section, name);
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
    struct parser *p = user;
    if (!p->section_ok)
        return 1; /* the section header was reported */
    if (!section[0]) {
        add_error(p, p->line,
                  "%s: key outside any section; put it under one of [database] "
                  "[gateway] [billing] [org] [http] [log]",
                  name);
        return 1;
    }
    if (!name[0]) {
        add_error(p, p->line, "[%s] missing key name before '='", section);
        return 1;
    }
    const struct key *k = find_key(section, name);
    if (!k) {
        unknown_key(p, section, name);
        return 1;
    }
    size_t idx = (size_t)(k - keys);
    if (p->cfg->key_lines[idx]) {
        add_error(p, p->line, "[%s] %s: duplicate key (first set on line %d)", section, name,
                  p->cfg->key_lines[idx]);
        return 1;
    }
    p->cfg->key_lines[idx] = p->line;

    /* a value in double quotes is taken without them */
    char *v = pl_xstrdup(value);
    size_t n = strlen(v);
    char *reason = NULL;
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
        memmove(v, v + 1, n - 2);
        v[n - 2] = '\0';
    } else if (n >= 1 && v[0] == '"') {
        reason = pl_xstrdup("has an opening '\"' without a closing one (note: \" ;\" starts a "
                            "comment)");
    }
    for (const char *c = v; !reason && *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            reason = pl_xstrdup("must not contain control characters");
    if (!reason && !v[0] && k->kind != K_SECRET) {
        if (k->flags & F_OPTIONAL) {
            if (k->kind == K_STR) {
                char **f = field(k, p->cfg);
                free(*f);
                *f = k->off == OFF(database.conninfo) ? pl_xstrdup("") : NULL;
            }
        } else {
            reason = pl_xstrdup("must not be empty; remove the line to use the default");
        }
    } else if (!reason) {
        reason = parse_value(k, v, p->cfg);
    }
    if (reason) {
        p->bad[idx] = true;
        add_error(p, p->line, "[%s] %s: %s", section, name, reason);
        free(reason);
    }
    explicit_bzero(v, n); /* it may have been an inline secret */
    free(v);
    return 1;
}

/*
 * fgets-like reader for ini_parse_stream: one line per call, counted.
 * Lines inih would misread are reported here and replaced by a blank one.
 */
static char *reader(char *str, int num, void *stream)
{
    struct parser *p = stream;
    if (p->pos >= p->len || num < 4)
        return NULL;
    const char *s = p->text + p->pos;
    const char *nl = memchr(s, '\n', p->len - p->pos);
    size_t n = nl ? (size_t)(nl - s) : p->len - p->pos;
    p->pos += n + (nl ? 1 : 0);
    p->line++;
    if (p->line == 1 && n >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0)
        s += 3, n -= 3;
    if (n > 0 && s[n - 1] == '\r')
        n--;
    /* Leading blanks are dropped: an indented "key = value" is just that,
     * never an inih continuation of the previous value. */
    while (n > 0 && (*s == ' ' || *s == '\t'))
        s++, n--;
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;

    str[0] = '\n';
    str[1] = '\0';
    if (n == 0 || *s == ';' || *s == '#')
        return str;
    if (n > (size_t)num - 3) {
        add_error(p, p->line, "line is longer than %d characters", num - 3);
        p->section_ok = p->section_ok && *s != '[';
        return str;
    }
    if (*s == '[') {
        const char *close = memchr(s, ']', n);
        if (!close) {
            add_error(p, p->line, "section header without ']'");
            p->section_ok = false;
            return str;
        }
        char name[64];
        size_t nlen = (size_t)(close - s - 1);
        pl_strlcpy(name, s + 1, nlen + 1 < sizeof(name) ? nlen + 1 : sizeof(name));
        p->section_ok = known_section(name);
        if (!p->section_ok)
            add_error(p, p->line,
                      "unknown section [%s]; sections are [database] [gateway] "
                      "[billing] [org] [http] [log]",
                      name);
    } else if (!memchr(s, '=', n) && !memchr(s, ':', n)) {
        char *line = pl_xstrndup(s, n);
        char *q = quote(line);
        add_error(p, p->line, "expected \"key = value\" or \"[section]\", got %s", q);
        explicit_bzero(line, n);
        free(line);
        free(q);
        return str;
    }
    memcpy(str, s, n);
    str[n] = '\n';
    str[n + 1] = '\0';
    return str;
}

/* ---- checks across keys --------------------------------------------------- */

static int key_index(const char *section, const char *name)
{
    const struct key *k = find_key(section, name);
    return k ? (int)(k - keys) : -1;
}

static bool usable(struct parser *p, const char *section, const char *name)
{
    return !p->bad[key_index(section, name)];
}

static int line_of(struct parser *p, const char *section, const char *name)
{
    return p->cfg->key_lines[key_index(section, name)];
}

static bool all_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

static void cross_checks(struct parser *p)
{
    struct pl_config *c = p->cfg;
    char a[32];

    /* A lease shorter than one request would let another node resend a
     * charge that is still in flight. */
    if (usable(p, "billing", "lease") && usable(p, "gateway", "request_timeout") &&
        usable(p, "gateway", "connect_timeout")) {
        int64_t need = c->gateway.connect_timeout_ms + c->gateway.request_timeout_ms;
        if (c->billing.lease_ms <= need) {
            int line = line_of(p, "billing", "lease");
            add_error(p, line,
                      "[billing] lease: must be longer than [gateway] connect_timeout + "
                      "request_timeout (%s), so a live sender never loses its lease mid-request",
                      pl_config_format_duration(need, a, sizeof(a)));
        }
    }

    /* tax_id shape follows the jurisdiction */
    if (c->org.tax_id && usable(p, "org", "tax_id") && usable(p, "org", "jurisdiction")) {
        const char *t = c->org.tax_id;
        size_t n = strlen(t);
        bool ok;
        const char *want;
        if (c->org.jurisdiction == PL_JURISDICTION_CA) {
            ok =
                n == 15 && all_digits(t, 9) && t[9] == 'R' && t[10] == 'R' && all_digits(t + 11, 4);
            want = "a CRA business number such as 123456789RR0001";
        } else {
            ok = n == 10 && all_digits(t, 2) && t[2] == '-' && all_digits(t + 3, 7);
            want = "an EIN such as 12-3456789";
        }
        if (!ok) {
            char *q = quote(t);
            add_error(p, line_of(p, "org", "tax_id"),
                      "[org] tax_id: must be %s for jurisdiction %s, got %s", want,
                      jurisdiction_names[c->org.jurisdiction], q);
            free(q);
        }
    }
}

/* ---- load ----------------------------------------------------------------- */

static int load_text(const char *text, size_t len, const char *name, struct pl_config *out,
                     char **errors)
{
    struct pl_config cfg;
    pl_config_defaults(&cfg);
    free(cfg.path);
    cfg.path = pl_xstrdup(name);

    struct parser *p = pl_xcalloc(1, sizeof(*p));
    p->name = name;
    p->text = text;
    p->len = len;
    p->cfg = &cfg;
    p->section_ok = true; /* keys before any section are reported by the handler */

    if (memchr(text, '\0', len)) {
        add_error(p, 0, "contains a NUL byte; is it a text file?");
    } else {
        int r = ini_parse_stream(reader, p, handler, p);
        if (r == -2)
            add_error(p, 0, "out of memory while parsing");
        else if (r != 0 && p->nerrs == 0)
            add_error(p, r > 0 ? r : 0, "syntax error");
        cross_checks(p);
    }

    if (p->nerrs > ERRORS_MAX)
        buf_printf(&p->errs, "\n%s: ... and %zu more errors", name, p->nerrs - ERRORS_MAX);
    int rc = 0;
    if (p->nerrs > 0) {
        pl_config_release(&cfg);
        if (errors)
            *errors = p->errs.s;
        else
            free(p->errs.s);
        rc = PL_EINVAL;
    } else {
        *out = cfg;
        if (errors)
            *errors = NULL;
        free(p->errs.s);
    }
    free(p);
    return rc;
}

int pl_config_load_string(const char *text, const char *name, struct pl_config *out, char **errors)
{
    return load_text(text ? text : "", text ? strlen(text) : 0, name ? name : "<string>", out,
                     errors);
}

int pl_config_load(const char *path, struct pl_config *out, char **errors)
{
    char *text = NULL;
    size_t len = 0;
    int r = pl_read_file(path, CONFIG_FILE_MAX, &text, &len);
    if (r < 0) {
        if (errors)
            *errors = r == PL_ERANGE
                          ? pl_xasprintf("%s: larger than %d bytes; is it the right file?", path,
                                         CONFIG_FILE_MAX)
                          : pl_xasprintf("%s: cannot read: %s", path, pl_strerror(r));
        return r;
    }
    r = load_text(text, len, path, out, errors);
    free(text);
    return r;
}

/* ---- secrets -------------------------------------------------------------- */

static const struct secret_def {
    unsigned bit;
    const char *section, *file_key, *cred, *what;
    size_t file_off, value_off;
} secret_defs[] = {
    {PL_SECRET_DB_PASSWORD, "database", "password_file", PL_CRED_DB_PASSWORD,
     "the database password", OFF(database.password_file), OFF(database.password)},
    {PL_SECRET_GATEWAY_API_KEY, "gateway", "api_key_file", PL_CRED_GATEWAY_API_KEY,
     "the gateway API key", OFF(gateway.api_key_file), OFF(gateway.api_key)},
    {PL_SECRET_WEBHOOK_SECRET, "http", "webhook_secret_file", PL_CRED_WEBHOOK_SECRET,
     "the webhook signing secret", OFF(http.webhook_secret_file), OFF(http.webhook_secret)},
};

/* Read one secret file. 0 and *out set, or a reason in *why. */
static int read_secret(const char *path, char **out, char **why, char **warning)
{
    char *s = NULL;
    size_t len = 0;
    int r = pl_read_file(path, SECRET_FILE_MAX, &s, &len);
    if (r < 0) {
        *why = r == PL_ERANGE ? pl_xasprintf("%s is larger than %d bytes", path, SECRET_FILE_MAX)
                              : pl_xasprintf("cannot read %s: %s", path, pl_strerror(r));
        return r;
    }
    if (len > 0 && s[len - 1] == '\n')
        s[--len] = '\0';
    if (len > 0 && s[len - 1] == '\r')
        s[--len] = '\0';
    /* a line break inside a key would end up splitting an HTTP header */
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) {
            explicit_bzero(s, len);
            free(s);
            *why = pl_xasprintf("%s contains a control character (a second line?)", path);
            return PL_EINVAL;
        }
    }
    if (len == 0) {
        free(s);
        *why = pl_xasprintf("%s is empty", path);
        return PL_EINVAL;
    }
    struct stat st;
    if (stat(path, &st) == 0 && (st.st_mode & (S_IRGRP | S_IROTH)))
        *warning = pl_xasprintf("%s is readable by %s (mode %04o); chmod 0600 it, or pass it as "
                                "a systemd credential",
                                path, (st.st_mode & S_IROTH) ? "others" : "its group",
                                (unsigned)(st.st_mode & 07777));
    *out = s;
    return 0;
}

int pl_config_load_secrets(struct pl_config *cfg, unsigned want, unsigned need, char **errors)
{
    char *loaded[PL_ARRAY_LEN(secret_defs)] = {0};
    char *warnings[PL_ARRAY_LEN(secret_defs)] = {0};
    struct parser p = {.name = cfg->path, .cfg = cfg};
    const char *creds = getenv("CREDENTIALS_DIRECTORY");
    want |= need;

    for (size_t i = 0; i < PL_ARRAY_LEN(secret_defs); i++) {
        const struct secret_def *d = &secret_defs[i];
        if (!(want & d->bit))
            continue;
        const char *file = *(char **)((char *)cfg + d->file_off);
        int line = pl_config_line(cfg, d->section, d->file_key);
        char *why = NULL;
        if (file) {
            if (read_secret(file, &loaded[i], &why, &warnings[i]) < 0)
                add_error(&p, line, "[%s] %s: %s", d->section, d->file_key, why);
        } else if (creds && *creds) {
            char *path = pl_xasprintf("%s/%s", creds, d->cred);
            if (access(path, F_OK) == 0) {
                if (read_secret(path, &loaded[i], &why, &warnings[i]) < 0)
                    add_error(&p, 0, "systemd credential %s: %s", d->cred, why);
            } else if (need & d->bit) {
                add_error(&p, line,
                          "[%s] %s: not set, and there is no systemd credential %s in "
                          "$CREDENTIALS_DIRECTORY (%s); %s is required",
                          d->section, d->file_key, d->cred, creds, d->what);
            }
            free(path);
        } else if (need & d->bit) {
            add_error(&p, line,
                      "[%s] %s: not set, and no systemd credential %s "
                      "($CREDENTIALS_DIRECTORY is not set); %s is required",
                      d->section, d->file_key, d->cred, d->what);
        }
        free(why);
    }

    if (p.nerrs > 0) {
        for (size_t i = 0; i < PL_ARRAY_LEN(secret_defs); i++) {
            free_secret(&loaded[i]);
            free(warnings[i]);
        }
        if (errors)
            *errors = p.errs.s;
        else
            free(p.errs.s);
        return PL_EINVAL;
    }
    for (size_t i = 0; i < PL_ARRAY_LEN(secret_defs); i++) {
        const struct secret_def *d = &secret_defs[i];
        if (!(want & d->bit))
            continue;
        char **slot = (char **)((char *)cfg + d->value_off);
        free_secret(slot);
        *slot = loaded[i];
        if (warnings[i]) {
            list_add(&cfg->warnings, warnings[i]);
            free(warnings[i]);
        }
    }
    if (errors)
        *errors = NULL;
    return 0;
}

/* ---- [org] for receipts --------------------------------------------------- */

int pl_config_check_org(const struct pl_config *cfg, char **errors)
{
    static const char *const required[] = {
        "legal_name", "address_line1", "city",           "region",          "postal_code",
        "country",    "tax_id",        "signatory_name", "signatory_title",
    };
    struct parser p = {.name = cfg->path, .cfg = (struct pl_config *)cfg};

    for (size_t i = 0; i < PL_ARRAY_LEN(required) + 1; i++) {
        const char *name = i < PL_ARRAY_LEN(required) ? required[i] : "city_issued";
        if (i == PL_ARRAY_LEN(required) && cfg->org.jurisdiction != PL_JURISDICTION_CA)
            break;
        const struct key *k = find_key("org", name);
        if (*(char *const *)cfield(k, cfg))
            continue;
        int line = pl_config_line(cfg, "org", name);
        if (line)
            add_error(&p, line, "[org] %s: is empty; receipts need it", name);
        else
            add_error(&p, 0, "[org] %s: not set; receipts need it", name);
    }
    if (cfg->org.signature_image) {
        int line = pl_config_line(cfg, "org", "signature_image");
        unsigned char magic[8] = {0};
        int fd = open(cfg->org.signature_image, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            add_error(&p, line, "[org] signature_image: cannot read %s: %s",
                      cfg->org.signature_image, strerror(errno));
        } else {
            if (read(fd, magic, sizeof(magic)) != (ssize_t)sizeof(magic) ||
                memcmp(magic, "\x89PNG\r\n\x1a\n", 8) != 0)
                add_error(&p, line, "[org] signature_image: %s is not a PNG image",
                          cfg->org.signature_image);
            close(fd);
        }
    }
    if (p.nerrs > 0) {
        if (errors)
            *errors = p.errs.s;
        else
            free(p.errs.s);
        return PL_EINVAL;
    }
    if (errors)
        *errors = NULL;
    return 0;
}

/* ---- diff ----------------------------------------------------------------- */

static bool secret_differs(const char *a, const char *b)
{
    if (!a || !b)
        return a != b;
    return strcmp(a, b) != 0;
}

int pl_config_diff(const struct pl_config *old_cfg, const struct pl_config *new_cfg, char **summary,
                   bool *needs_restart)
{
    struct buf b = {0};
    int changes = 0;
    bool restart = false;

    for (size_t i = 0; i < NKEYS; i++) {
        const struct key *k = &keys[i];
        if (k->kind == K_SECRET)
            continue;
        char *was = format_value(k, old_cfg);
        char *now = format_value(k, new_cfg);
        if (strcmp(was, now) != 0) {
            bool r = (k->flags & F_RESTART) != 0;
            buf_printf(&b, "%s[%s] %s: %s -> %s (%s)", changes ? "\n" : "", k->section, k->name,
                       was, now, r ? "needs restart" : "applied live");
            restart |= r;
            changes++;
        }
        free(was);
        free(now);
    }
    for (size_t i = 0; i < PL_ARRAY_LEN(secret_defs); i++) {
        const struct secret_def *d = &secret_defs[i];
        const char *a = *(char *const *)((const char *)old_cfg + d->value_off);
        const char *c = *(char *const *)((const char *)new_cfg + d->value_off);
        if (secret_differs(a, c)) {
            buf_printf(&b, "%s%s: %s (applied live)", changes ? "\n" : "", d->what,
                       !a   ? "now set"
                       : !c ? "no longer set"
                            : "changed");
            changes++;
        }
    }
    if (summary)
        *summary = b.s;
    else
        free(b.s);
    if (needs_restart)
        *needs_restart = restart;
    return changes;
}
