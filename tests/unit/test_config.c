/* Unit tests for lib/config.c: defaults, a full file, every class of error
 * with its FILE:LINE, boundaries on both sides, durations, secrets from
 * files and $CREDENTIALS_DIRECTORY, [org] checks and the reload diff. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "util.h"

#define NAME "/etc/pledged/pledged.conf"

/* ---- helpers --------------------------------------------------------------- */

static int load(const char *text, struct pl_config *cfg, char **errs)
{
    return pl_config_load_string(text, NAME, cfg, errs);
}

static void assert_contains(const char *hay, const char *needle)
{
    if (!hay || !strstr(hay, needle))
        fail_msg("expected to find\n  %s\nin\n  %s", needle, hay ? hay : "(null)");
}

static size_t count_lines(const char *s)
{
    if (!s || !*s)
        return 0;
    size_t n = 1;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* `text` must fail with exactly one error containing `want`. */
static void expect_error(const char *text, const char *want)
{
    struct pl_config cfg;
    memset(&cfg, 0xab, sizeof(cfg));
    struct pl_config untouched = cfg;
    char *errs = NULL;
    int r = load(text, &cfg, &errs);
    if (r != PL_EINVAL)
        fail_msg("expected PL_EINVAL for:\n%s", text);
    assert_contains(errs, want);
    if (count_lines(errs) != 1)
        fail_msg("expected one error, got:\n%s", errs);
    /* output parameter untouched on failure */
    assert_memory_equal(&cfg, &untouched, sizeof(cfg));
    free(errs);
}

static void expect_ok(const char *text, struct pl_config *cfg)
{
    char *errs = NULL;
    int r = load(text, cfg, &errs);
    if (r != 0)
        fail_msg("expected success for:\n%s\ngot:\n%s", text, errs);
    assert_null(errs);
}

/* Load "[section]\nkey = value\n"; 0 or PL_EINVAL, config released. */
static int try_value(const char *section, const char *key, const char *value)
{
    char *text = pl_xasprintf("[%s]\n%s = %s\n", section, key, value);
    struct pl_config cfg;
    char *errs = NULL;
    int r = load(text, &cfg, &errs);
    if (r == 0)
        pl_config_release(&cfg);
    free(errs);
    free(text);
    return r;
}

struct tmp {
    char dir[64];
};

static char *tmp_file(struct tmp *t, const char *name, const char *content, mode_t mode)
{
    char *path = pl_xasprintf("%s/%s", t->dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
    return path;
}

static int tmp_setup(void **state)
{
    struct tmp *t = pl_xcalloc(1, sizeof(*t));
    snprintf(t->dir, sizeof(t->dir), "/tmp/pl-config-test-XXXXXX");
    if (!mkdtemp(t->dir))
        return -1;
    unsetenv("CREDENTIALS_DIRECTORY");
    *state = t;
    return 0;
}

static int tmp_teardown(void **state)
{
    struct tmp *t = *state;
    char *cmd = pl_xasprintf("rm -rf '%s'", t->dir);
    int ignored = system(cmd);
    (void)ignored;
    free(cmd);
    free(t);
    unsetenv("CREDENTIALS_DIRECTORY");
    return 0;
}

/* ---- defaults and a full file ---------------------------------------------- */

static void test_defaults_from_empty_file(void **state)
{
    (void)state;
    struct pl_config cfg;
    expect_ok("", &cfg);
    assert_string_equal(cfg.path, NAME);
    assert_string_equal(cfg.database.conninfo, "");
    assert_null(cfg.database.password_file);
    assert_int_equal(cfg.database.pool_size, 4);
    assert_int_equal(cfg.database.connect_timeout_ms, 5000);
    assert_int_equal(cfg.database.queue_deadline_ms, 30000);
    assert_string_equal(cfg.gateway.driver, "stripe");
    assert_string_equal(cfg.gateway.base_url, "https://api.stripe.com");
    assert_null(cfg.gateway.api_key_file);
    assert_null(cfg.gateway.ca_bundle);
    assert_int_equal(cfg.gateway.max_in_flight, 32);
    assert_int_equal(cfg.gateway.rate_limit, 20);
    assert_int_equal(cfg.gateway.rate_burst, 5);
    assert_int_equal(cfg.gateway.connect_timeout_ms, 10000);
    assert_int_equal(cfg.gateway.request_timeout_ms, 60000);
    assert_int_equal(cfg.gateway.idempotency_window_ms, 24LL * 3600 * 1000);
    assert_null(cfg.gateway.statement_descriptor_suffix);
    assert_non_null(cfg.billing.node_name);
    assert_true(strlen(cfg.billing.node_name) > 0);
    assert_string_equal(cfg.billing.timezone, "UTC");
    assert_int_equal(cfg.billing.charge_time_minutes, 9 * 60);
    assert_int_equal(cfg.billing.retry_schedule.len, 4);
    assert_int_equal(cfg.billing.retry_schedule.ms[0], 86400000);
    assert_int_equal(cfg.billing.retry_schedule.ms[3], 7 * 86400000LL);
    assert_int_equal(cfg.billing.lapse_after, 3);
    assert_int_equal(cfg.billing.catch_up, PL_CATCH_UP_LATEST);
    assert_int_equal(cfg.billing.batch_size, 200);
    assert_int_equal(cfg.billing.lease_ms, 300000);
    assert_int_equal(cfg.billing.poll_interval_ms, 60000);
    assert_int_equal(cfg.billing.reconcile_schedule.len, 4);
    assert_int_equal(cfg.billing.reconcile_schedule.ms[0], 60000);
    assert_int_equal(cfg.billing.reconcile_schedule.ms[3], 86400000);
    assert_int_equal(cfg.billing.unknown_alert_after_ms, 2 * 3600000);
    assert_int_equal(cfg.billing.shutdown_deadline_ms, 30000);
    assert_int_equal(cfg.billing.retry_now_max, 5);
    assert_null(cfg.org.legal_name);
    assert_int_equal(cfg.org.jurisdiction, PL_JURISDICTION_US);
    assert_string_equal(cfg.org.receipt_dir, "/var/lib/pledged/receipts");
    assert_string_equal(cfg.http.listen, "127.0.0.1:8425");
    assert_string_equal(cfg.http.listen_host, "127.0.0.1");
    assert_int_equal(cfg.http.listen_port, 8425);
    assert_true(cfg.http.enabled);
    assert_null(cfg.http.webhook_secret_file);
    assert_int_equal(cfg.http.max_body, 65536);
    assert_int_equal(cfg.log.level, PL_LOG_INFO);
    assert_int_equal(cfg.log.format, PL_LOG_AUTO);
    assert_null(cfg.warnings);
    assert_null(cfg.database.password);
    assert_int_equal(pl_config_line(&cfg, "gateway", "max_in_flight"), 0);
    pl_config_release(&cfg);

    /* comments and blank lines only: still defaults */
    expect_ok("# comment\n; another\n\n   \n[gateway]\n", &cfg);
    assert_int_equal(cfg.gateway.max_in_flight, 32);
    pl_config_release(&cfg);
}

static const char full_file[] =
    "# pledged.conf\n"                                                      /* 1 */
    "[database]\n"                                                          /* 2 */
    "conninfo = host=/run/postgresql dbname=pledged user=pledged_daemon\n"  /* 3 */
    "password_file = /etc/pledged/db_password\n"                            /* 4 */
    "pool_size = 8\n"                                                       /* 5 */
    "connect_timeout = 3s\n"                                                /* 6 */
    "queue_deadline = 1m\n"                                                 /* 7 */
    "\n"                                                                    /* 8 */
    "[gateway]\n"                                                           /* 9 */
    "driver = stripe\n"                                                     /* 10 */
    "base_url = http://127.0.0.1:12111/\n"                                  /* 11 */
    "api_key_file = /etc/pledged/stripe_key\n"                              /* 12 */
    "max_in_flight = 64\n"                                                  /* 13 */
    "rate_limit = 25\n"                                                     /* 14 */
    "rate_burst = 10\n"                                                     /* 15 */
    "connect_timeout = 2s\n"                                                /* 16 */
    "request_timeout = 30s\n"                                               /* 17 */
    "idempotency_window = 23h\n"                                            /* 18 */
    "statement_descriptor_suffix = PLEDGE\n"                                /* 19 */
    "[billing]\n"                                                           /* 20 */
    "node_name = node-a.example\n"                                          /* 21 */
    "timezone = America/Toronto\n"                                          /* 22 */
    "charge_time = 14:30\n"                                                 /* 23 */
    "retry_schedule = 2d, 4d ,8d\n"                                         /* 24 */
    "lapse_after = 2\n"                                                     /* 25 */
    "catch_up = all\n"                                                      /* 26 */
    "batch_size = 500\n"                                                    /* 27 */
    "lease = 2m\n"                                                          /* 28 */
    "poll_interval = 15s\n"                                                 /* 29 */
    "reconcile_schedule = 30s,2m,1h\n"                                      /* 30 */
    "unknown_alert_after = 90m\n"                                           /* 31 */
    "shutdown_deadline = 20s\n"                                             /* 32 */
    "retry_now_max = 3\n"                                                   /* 33 */
    "[org]\n"                                                               /* 34 */
    "legal_name = \"Friends of the Library, Inc.\"\n"                       /* 35 */
    "address_line1 = 1 Main St\n"                                           /* 36 */
    "address_line2 = Suite 2\n"                                             /* 37 */
    "city = Toronto\n"                                                      /* 38 */
    "region = ON\n"                                                         /* 39 */
    "postal_code = M5V 2T6\n"                                               /* 40 */
    "country = Canada\n"                                                    /* 41 */
    "tax_id = 123456789RR0001\n"                                            /* 42 */
    "jurisdiction = ca\n"                                                   /* 43 */
    "city_issued = Toronto\n"                                               /* 44 */
    "charity_registration_statement = Registered charity 123456789RR0001\n" /* 45 */
    "signatory_name = Ada Lovelace\n"                                       /* 46 */
    "signatory_title = Treasurer\n"                                         /* 47 */
    "signature_image = /etc/pledged/signature.png\n"                        /* 48 */
    "receipt_dir = /srv/receipts\n"                                         /* 49 */
    "email = receipts@example.org\n"                                        /* 50 */
    "website = https://example.org\n"                                       /* 51 */
    "[http]\n"                                                              /* 52 */
    "listen = [::1]:9000\n"                                                 /* 53 */
    "enabled = no\n"                                                        /* 54 */
    "webhook_secret_file = /etc/pledged/whsec\n"                            /* 55 */
    "max_body = 131072\n"                                                   /* 56 */
    "[log]\n"                                                               /* 57 */
    "  level = debug   ; inline comment\n"                                  /* 58 */
    "format = json\n";                                                      /* 59 */

static void test_full_valid_file(void **state)
{
    (void)state;
    struct pl_config cfg;
    expect_ok(full_file, &cfg);
    assert_string_equal(cfg.database.conninfo,
                        "host=/run/postgresql dbname=pledged user=pledged_daemon");
    assert_string_equal(cfg.database.password_file, "/etc/pledged/db_password");
    assert_int_equal(cfg.database.pool_size, 8);
    assert_int_equal(cfg.database.connect_timeout_ms, 3000);
    assert_int_equal(cfg.database.queue_deadline_ms, 60000);
    assert_string_equal(cfg.gateway.base_url, "http://127.0.0.1:12111");
    assert_string_equal(cfg.gateway.api_key_file, "/etc/pledged/stripe_key");
    assert_int_equal(cfg.gateway.max_in_flight, 64);
    assert_int_equal(cfg.gateway.rate_limit, 25);
    assert_int_equal(cfg.gateway.rate_burst, 10);
    assert_int_equal(cfg.gateway.connect_timeout_ms, 2000);
    assert_int_equal(cfg.gateway.request_timeout_ms, 30000);
    assert_int_equal(cfg.gateway.idempotency_window_ms, 23 * 3600000LL);
    assert_string_equal(cfg.gateway.statement_descriptor_suffix, "PLEDGE");
    assert_string_equal(cfg.billing.node_name, "node-a.example");
    assert_string_equal(cfg.billing.timezone, "America/Toronto");
    assert_int_equal(cfg.billing.charge_time_minutes, 14 * 60 + 30);
    assert_int_equal(cfg.billing.retry_schedule.len, 3);
    assert_int_equal(cfg.billing.retry_schedule.ms[1], 4 * 86400000LL);
    assert_int_equal(cfg.billing.lapse_after, 2);
    assert_int_equal(cfg.billing.catch_up, PL_CATCH_UP_ALL);
    assert_int_equal(cfg.billing.batch_size, 500);
    assert_int_equal(cfg.billing.lease_ms, 120000);
    assert_int_equal(cfg.billing.poll_interval_ms, 15000);
    assert_int_equal(cfg.billing.reconcile_schedule.len, 3);
    assert_int_equal(cfg.billing.reconcile_schedule.ms[0], 30000);
    assert_int_equal(cfg.billing.unknown_alert_after_ms, 90 * 60000);
    assert_int_equal(cfg.billing.shutdown_deadline_ms, 20000);
    assert_int_equal(cfg.billing.retry_now_max, 3);
    assert_string_equal(cfg.org.legal_name, "Friends of the Library, Inc.");
    assert_string_equal(cfg.org.postal_code, "M5V 2T6");
    assert_string_equal(cfg.org.tax_id, "123456789RR0001");
    assert_int_equal(cfg.org.jurisdiction, PL_JURISDICTION_CA);
    assert_string_equal(cfg.org.city_issued, "Toronto");
    assert_string_equal(cfg.org.receipt_dir, "/srv/receipts");
    assert_string_equal(cfg.org.email, "receipts@example.org");
    assert_string_equal(cfg.http.listen, "[::1]:9000");
    assert_string_equal(cfg.http.listen_host, "::1");
    assert_int_equal(cfg.http.listen_port, 9000);
    assert_false(cfg.http.enabled);
    assert_string_equal(cfg.http.webhook_secret_file, "/etc/pledged/whsec");
    assert_int_equal(cfg.http.max_body, 131072);
    assert_int_equal(cfg.log.level, PL_LOG_DEBUG);
    assert_int_equal(cfg.log.format, PL_LOG_JSON);

    assert_int_equal(pl_config_line(&cfg, "database", "conninfo"), 3);
    assert_int_equal(pl_config_line(&cfg, "gateway", "max_in_flight"), 13);
    assert_int_equal(pl_config_line(&cfg, "org", "legal_name"), 35);
    assert_int_equal(pl_config_line(&cfg, "log", "level"), 58);
    assert_int_equal(pl_config_line(&cfg, "log", "format"), 59);
    assert_int_equal(pl_config_line(&cfg, "nope", "nope"), 0);
    pl_config_release(&cfg);
    pl_config_release(&cfg); /* released twice: harmless */
    pl_config_release(NULL);
}

static void test_load_from_file(void **state)
{
    struct tmp *t = *state;
    char *path =
        tmp_file(t, "pledged.conf", "\xef\xbb\xbf[gateway]\r\nmax_in_flight = 7\r\n", 0644);
    struct pl_config cfg;
    char *errs = NULL;
    assert_int_equal(pl_config_load(path, &cfg, &errs), 0);
    assert_null(errs);
    assert_string_equal(cfg.path, path);
    assert_int_equal(cfg.gateway.max_in_flight, 7);
    assert_int_equal(pl_config_line(&cfg, "gateway", "max_in_flight"), 2);
    pl_config_release(&cfg);
    free(path);

    path = tmp_file(t, "bad.conf", "[gateway]\nmax_in_flight = lots\n", 0644);
    assert_int_equal(pl_config_load(path, &cfg, &errs), PL_EINVAL);
    char *want = pl_xasprintf("%s:2: [gateway] max_in_flight: must be an integer between 1 and "
                              "1024, got \"lots\"",
                              path);
    assert_string_equal(errs, want);
    free(want);
    free(errs);
    free(path);

    path = pl_xasprintf("%s/missing.conf", t->dir);
    assert_int_equal(pl_config_load(path, &cfg, &errs), -ENOENT);
    assert_contains(errs, "missing.conf: cannot read: No such file or directory");
    free(errs);
    assert_int_equal(pl_config_load(path, &cfg, NULL), -ENOENT);
    free(path);
}

/* ---- each class of error --------------------------------------------------- */

static void test_error_unknown_section(void **state)
{
    (void)state;
    expect_error("[database]\npool_size = 4\n[gatway]\nmax_in_flight = 9\nwhatever = 1\n",
                 NAME ":3: unknown section [gatway]");
}

static void test_error_unknown_key(void **state)
{
    (void)state;
    expect_error("[gateway]\n\nmax_inflight = 9\n",
                 NAME ":3: [gateway] max_inflight: unknown key (did you mean max_in_flight?)");
    expect_error("[billing]\nrate_limit = 9\n",
                 NAME ":2: [billing] rate_limit: unknown key here; it belongs in [gateway]");
    expect_error("[log]\ncolour = yes\n", NAME ":2: [log] colour: unknown key");
    expect_error("pool_size = 4\n", NAME ":1: pool_size: key outside any section");
    expect_error("[log]\n= x\n", NAME ":2: [log] missing key name");
}

static void test_error_bad_int(void **state)
{
    (void)state;
    expect_error("[gateway]\nmax_in_flight = lots\n",
                 NAME ":2: [gateway] max_in_flight: must be an integer between 1 and 1024, "
                      "got \"lots\"");
    expect_error("[database]\npool_size = 4.5\n",
                 NAME ":2: [database] pool_size: must be an integer between 1 and 64, got \"4.5\"");
    expect_error("[database]\npool_size = 99999999999999999999999\n",
                 "[database] pool_size: must be an integer between 1 and 64");
}

static void test_error_out_of_range(void **state)
{
    (void)state;
    expect_error("[database]\npool_size = 65\n",
                 NAME ":2: [database] pool_size: must be an integer between 1 and 64, got \"65\"");
    expect_error("[billing]\nlapse_after = 0\n",
                 NAME ":2: [billing] lapse_after: must be an integer between 1 and 24");
    expect_error("[billing]\nlease = 5s\n",
                 NAME ":2: [billing] lease: must be between 10s and 1d, got \"5s\"");
    expect_error("[http]\nmax_body = 100\n",
                 NAME ":2: [http] max_body: must be an integer between 1024 and 16777216");
}

static void test_error_bad_duration(void **state)
{
    (void)state;
    expect_error("[gateway]\nrequest_timeout = 30\n",
                 NAME ":2: [gateway] request_timeout: must be a whole number with a unit "
                      "(ms, s, m, h, d) such as 30s or 5m, got \"30\"");
    expect_error("[gateway]\nrequest_timeout = 1.5s\n", "request_timeout: must be a whole number");
    expect_error("[gateway]\nrequest_timeout = -5s\n", "request_timeout: must be a whole number");
    expect_error("[gateway]\nrequest_timeout = 99999999999999999999d\n",
                 NAME ":2: [gateway] request_timeout: duration too large");
    expect_error("[billing]\nretry_schedule = 1d,3x\n",
                 NAME ":2: [billing] retry_schedule: entry 2 must be a whole number");
    expect_error("[billing]\nretry_schedule = 1d,,3d\n",
                 NAME ":2: [billing] retry_schedule: entry 2 must be a whole number");
}

static void test_error_bad_bool(void **state)
{
    (void)state;
    expect_error("[http]\nenabled = maybe\n",
                 NAME ":2: [http] enabled: must be true or false (also yes/no, on/off, 1/0), "
                      "got \"maybe\"");
}

static void test_error_bad_timezone(void **state)
{
    (void)state;
    expect_error("[billing]\ntimezone = Mars/Olympus_Mons\n",
                 NAME ":2: [billing] timezone: unknown time zone \"Mars/Olympus_Mons\"");
    expect_error("[billing]\ntimezone = ../../etc/passwd\n",
                 NAME ":2: [billing] timezone: must be an IANA time zone name");
    expect_error("[billing]\ntimezone = /etc/localtime\n", "timezone: must be an IANA time zone");
    /* a file in the zoneinfo directory that is not a zone */
    expect_error("[billing]\ntimezone = leapseconds\n", "timezone: unknown time zone");
}

static void test_error_http_base_url(void **state)
{
    (void)state;
    expect_error("[gateway]\nbase_url = http://api.stripe.com\n",
                 NAME ":2: [gateway] base_url: plain http is only allowed for loopback "
                      "(the mock gateway)");
    expect_error("[gateway]\nbase_url = http://10.0.0.1:8080/\n", "plain http is only allowed");
    expect_error("[gateway]\nbase_url = http://127.0.0.1.evil.com/\n",
                 "plain http is only allowed");
    expect_error("[gateway]\nbase_url = ftp://x\n", "base_url: must be an https:// URL");
    expect_error("[gateway]\nbase_url = https://u:sk_live_abc@x\n",
                 "base_url: must not contain credentials");
    expect_error("[gateway]\nbase_url = https://x:99999\n", "base_url: has an invalid port");
    expect_error("[gateway]\nbase_url = https://\n", "base_url: has no valid host name");
    assert_int_equal(try_value("gateway", "base_url", "http://127.0.0.1:12111"), 0);
    assert_int_equal(try_value("gateway", "base_url", "http://127.9.9.9"), 0);
    assert_int_equal(try_value("gateway", "base_url", "http://localhost:8080/v1"), 0);
    assert_int_equal(try_value("gateway", "base_url", "http://[::1]:8080"), 0);
    assert_int_equal(try_value("gateway", "base_url", "https://stripe.example.com:8443"), 0);
    assert_int_equal(try_value("gateway", "base_url", "http://[::2]:8080"), PL_EINVAL);
}

static void test_error_secret_inline(void **state)
{
    (void)state;
    struct pl_config cfg;
    char *errs = NULL;
    assert_int_equal(load("[gateway]\napi_key = sk_live_supersecret\n"
                          "[database]\npassword = hunter2\n"
                          "conninfo = host=db password=hunter3\n"
                          "[http]\nwebhook_secret = whsec_abc\n",
                          &cfg, &errs),
                     PL_EINVAL);
    assert_contains(errs, NAME ":2: [gateway] api_key: secrets are not read from the "
                               "configuration file");
    assert_contains(errs, "set api_key_file = /path/to/file");
    assert_contains(errs, "credential gateway_api_key");
    assert_contains(errs, NAME ":4: [database] password: secrets are not read");
    assert_contains(errs, "password_file");
    assert_contains(errs, NAME ":5: [database] conninfo: must not contain a password");
    assert_contains(errs, NAME ":7: [http] webhook_secret: secrets are not read");
    assert_int_equal(count_lines(errs), 4);
    /* the secrets themselves never appear in the messages */
    assert_null(strstr(errs, "supersecret"));
    assert_null(strstr(errs, "hunter"));
    assert_null(strstr(errs, "whsec_abc"));
    free(errs);

    expect_error("[database]\nconninfo = postgresql://pledged:hunter2@db/pledged\n",
                 "[database] conninfo: must not contain a password");
    expect_error("[database]\nconninfo = postgresql://db/pledged?password=x\n",
                 "[database] conninfo: must not contain a password");
    expect_error("[database]\nconninfo = host=db dbname\n",
                 NAME ":2: [database] conninfo: not a valid libpq connection string");
    /* a secret pasted on a line of its own is not echoed either */
    assert_int_equal(load("[gateway]\nsk_live_abcdef\n", &cfg, &errs), PL_EINVAL);
    assert_contains(errs, NAME ":2: expected \"key = value\"");
    assert_null(strstr(errs, "abcdef"));
    free(errs);
}

static void test_error_duplicate_key(void **state)
{
    (void)state;
    expect_error("[gateway]\nrate_limit = 5\n[billing]\n[gateway]\nrate_limit = 6\n",
                 NAME ":5: [gateway] rate_limit: duplicate key (first set on line 2)");
}

static void test_error_syntax(void **state)
{
    (void)state;
    expect_error("[gateway\nmax_in_flight = 3\n", NAME ":1: section header without ']'");
    expect_error("[gateway]\njust some words\n",
                 NAME ":2: expected \"key = value\" or \"[section]\", got \"just some words\"");
    expect_error("[org]\nlegal_name = \"Friends ; of\"\n",
                 NAME ":2: [org] legal_name: has an opening '\"' without a closing one");
    expect_error("[billing]\nnode_name =\n",
                 NAME ":2: [billing] node_name: must not be empty; remove the line");
    char *long_line = pl_xmalloc(400);
    memset(long_line, 'x', 399);
    long_line[399] = '\0';
    char *text = pl_xasprintf("[org]\nwebsite = %s\n", long_line);
    expect_error(text, NAME ":2: line is longer than");
    free(text);
    free(long_line);
    expect_error("[org]\nemail = nobody\n", NAME ":2: [org] email: must be an email address");
    expect_error("[org]\nreceipt_dir = receipts\n",
                 NAME ":2: [org] receipt_dir: must be an absolute path, got \"receipts\"");
}

static void test_indented_lines_are_not_continuations(void **state)
{
    (void)state;
    struct pl_config cfg;
    /* inih would glue an indented line onto the previous value */
    expect_ok("[gateway]\nrate_limit = 5\n    rate_burst = 6\n", &cfg);
    assert_int_equal(cfg.gateway.rate_limit, 5);
    assert_int_equal(cfg.gateway.rate_burst, 6);
    pl_config_release(&cfg);
    expect_error("[gateway]\nrate_limit = 5\n    7\n", NAME ":3: expected \"key = value\"");
}

static void test_many_errors_all_reported(void **state)
{
    (void)state;
    struct pl_config cfg;
    char *errs = NULL;
    const char *text = "[database]\n"              /* 1 */
                       "pool_size = 0\n"           /* 2 */
                       "[gateway]\n"               /* 3 */
                       "max_in_flight = lots\n"    /* 4 */
                       "bogus = 1\n"               /* 5 */
                       "[nope]\n"                  /* 6 */
                       "x = 1\n"                   /* 7 */
                       "[http]\n"                  /* 8 */
                       "enabled = maybe\n"         /* 9 */
                       "listen = example.com:80\n" /* 10 */
                       "[log]\n"                   /* 11 */
                       "level = loud\n"            /* 12 */
                       "format = xml\n";           /* 13 */
    assert_int_equal(load(text, &cfg, &errs), PL_EINVAL);
    assert_int_equal(count_lines(errs), 8);
    assert_contains(errs, NAME ":2: [database] pool_size:");
    assert_contains(errs, NAME ":4: [gateway] max_in_flight:");
    assert_contains(errs, NAME ":5: [gateway] bogus: unknown key");
    assert_contains(errs, NAME ":6: unknown section [nope]");
    assert_contains(errs, NAME ":9: [http] enabled:");
    assert_contains(errs, NAME ":10: [http] listen: must be IP:PORT");
    assert_contains(errs, NAME ":12: [log] level: must be one of error, warning");
    assert_contains(errs, NAME ":13: [log] format: must be one of auto, text, json, journal");
    /* in file order */
    assert_true(strstr(errs, ":2:") < strstr(errs, ":13:"));
    free(errs);

    /* a runaway file is summarised, not dumped */
    struct {
        char *s;
        size_t len;
    } big = {pl_xstrdup("[gateway]\n"), 0};
    for (int i = 0; i < 150; i++) {
        char *n = pl_xasprintf("%sbogus%d = 1\n", big.s, i);
        free(big.s);
        big.s = n;
    }
    assert_int_equal(load(big.s, &cfg, &errs), PL_EINVAL);
    assert_int_equal(count_lines(errs), 101);
    assert_contains(errs, "... and 50 more errors");
    free(errs);
    free(big.s);

    /* errors may be ignored */
    assert_int_equal(load("[x]\n", &cfg, NULL), PL_EINVAL);
}

/* ---- boundaries ------------------------------------------------------------- */

static void test_max_in_flight_bounds(void **state)
{
    (void)state;
    assert_int_equal(try_value("gateway", "max_in_flight", "0"), PL_EINVAL);
    assert_int_equal(try_value("gateway", "max_in_flight", "1"), 0);
    assert_int_equal(try_value("gateway", "max_in_flight", "1024"), 0);
    assert_int_equal(try_value("gateway", "max_in_flight", "1025"), PL_EINVAL);
    assert_int_equal(try_value("gateway", "max_in_flight", "-1"), PL_EINVAL);
    assert_int_equal(try_value("gateway", "max_in_flight", " 5"), 0); /* inih trims */
    assert_int_equal(try_value("gateway", "max_in_flight", "+5"), 0);
    assert_int_equal(try_value("gateway", "rate_limit", "10000"), 0);
    assert_int_equal(try_value("gateway", "rate_limit", "10001"), PL_EINVAL);
    assert_int_equal(try_value("billing", "batch_size", "5000"), 0);
    assert_int_equal(try_value("billing", "batch_size", "5001"), PL_EINVAL);
    assert_int_equal(try_value("billing", "retry_now_max", "0"), 0);
    assert_int_equal(try_value("billing", "retry_now_max", "21"), PL_EINVAL);
    assert_int_equal(try_value("http", "max_body", "1024"), 0);
    assert_int_equal(try_value("http", "max_body", "1023"), PL_EINVAL);
}

static void test_retry_schedule_bounds(void **state)
{
    (void)state;
    struct pl_config cfg;
    expect_ok("[billing]\nretry_schedule = 1d,2d,3d,4d,5d,6d,7d,8d,9d,10d,11d,12d,13d,14d\n", &cfg);
    assert_int_equal(cfg.billing.retry_schedule.len, 14);
    assert_int_equal(cfg.billing.retry_schedule.ms[13], 14 * 86400000LL);
    pl_config_release(&cfg);
    expect_error("[billing]\nretry_schedule = 1d,2d,3d,4d,5d,6d,7d,8d,9d,10d,11d,12d,13d,14d,15d\n",
                 NAME ":2: [billing] retry_schedule: has 15 entries; at most 14 are allowed");
    assert_int_equal(try_value("billing", "retry_schedule", "1d,30d"), 0);
    expect_error("[billing]\nretry_schedule = 1d,31d\n",
                 "retry_schedule: entry 2 must be between 1m and 30d, got \"31d\"");
    expect_error("[billing]\nretry_schedule = 0s\n", "retry_schedule: entry 1 must be between");
    expect_error("[billing]\nretry_schedule = 1d,3d,3d\n",
                 "retry_schedule: must be strictly increasing, but entry 3 (3d) is not after "
                 "entry 2 (3d)");
    expect_error("[billing]\nretry_schedule = 3d,1d\n", "must be strictly increasing");
    assert_int_equal(try_value("billing", "retry_schedule", "12h"), 0);
    assert_int_equal(try_value("billing", "reconcile_schedule",
                               "1s,2s,3s,4s,5s,6s,7s,8s,9s,10s,"
                               "11s,12s,13s,14s,15s,16s"),
                     0);
    assert_int_equal(try_value("billing", "reconcile_schedule",
                               "1s,2s,3s,4s,5s,6s,7s,8s,9s,10s,"
                               "11s,12s,13s,14s,15s,16s,17s"),
                     PL_EINVAL);
}

static void test_other_values(void **state)
{
    (void)state;
    assert_int_equal(try_value("billing", "charge_time", "00:00"), 0);
    assert_int_equal(try_value("billing", "charge_time", "23:59"), 0);
    assert_int_equal(try_value("billing", "charge_time", "9:05"), 0);
    assert_int_equal(try_value("billing", "charge_time", "24:00"), PL_EINVAL);
    assert_int_equal(try_value("billing", "charge_time", "12:60"), PL_EINVAL);
    assert_int_equal(try_value("billing", "charge_time", "9am"), PL_EINVAL);
    assert_int_equal(try_value("billing", "charge_time", "09:00:00"), PL_EINVAL);
    assert_int_equal(try_value("billing", "catch_up", "none"), PL_EINVAL);
    assert_int_equal(try_value("billing", "node_name", "a b"), PL_EINVAL);
    assert_int_equal(try_value("billing", "timezone", "Etc/UTC"), 0);
    assert_int_equal(try_value("billing", "timezone", "Asia/Kolkata"), 0);
    assert_int_equal(try_value("gateway", "driver", "paypal"), PL_EINVAL);
    assert_int_equal(try_value("gateway", "idempotency_window", "24h"), 0);
    assert_int_equal(try_value("gateway", "idempotency_window", "25h"), PL_EINVAL);
    assert_int_equal(try_value("gateway", "statement_descriptor_suffix", "1234567890123456789012"),
                     0);
    assert_int_equal(try_value("gateway", "statement_descriptor_suffix", "12345678901234567890123"),
                     PL_EINVAL);
    assert_int_equal(try_value("gateway", "statement_descriptor_suffix", "A*B"), PL_EINVAL);
    assert_int_equal(try_value("gateway", "statement_descriptor_suffix", "A<B"), PL_EINVAL);
    assert_int_equal(try_value("gateway", "ca_bundle", "/nonexistent/ca.pem"), PL_EINVAL);
    assert_int_equal(try_value("gateway", "ca_bundle", "/etc"), PL_EINVAL);
    assert_int_equal(try_value("gateway", "ca_bundle", "/etc/passwd"), 0);
    assert_int_equal(try_value("gateway", "api_key_file", "relative/key"), PL_EINVAL);
    assert_int_equal(try_value("http", "listen", "0.0.0.0:0"), 0);
    assert_int_equal(try_value("http", "listen", "127.0.0.1:65535"), 0);
    assert_int_equal(try_value("http", "listen", "127.0.0.1:65536"), PL_EINVAL);
    assert_int_equal(try_value("http", "listen", "127.0.0.1"), PL_EINVAL);
    assert_int_equal(try_value("http", "listen", "localhost:80"), PL_EINVAL);
    assert_int_equal(try_value("http", "listen", "::1:80"), PL_EINVAL);
    assert_int_equal(try_value("http", "enabled", "ON"), 0);
    assert_int_equal(try_value("http", "enabled", "0"), 0);
    assert_int_equal(try_value("log", "level", "warning"), 0);
    assert_int_equal(try_value("org", "tax_id", "12-3456789"), 0);
    assert_int_equal(try_value("org", "tax_id", "123456789"), PL_EINVAL);
    assert_int_equal(try_value("org", "address_line2", ""), 0);
    expect_error("[org]\ntax_id = 12-3456789\njurisdiction = ca\n",
                 NAME ":2: [org] tax_id: must be a CRA business number such as 123456789RR0001 "
                      "for jurisdiction ca, got \"12-3456789\"");
}

static void test_lease_must_outlast_a_request(void **state)
{
    (void)state;
    expect_error("[billing]\nlease = 1m\n[gateway]\nrequest_timeout = 2m\n",
                 NAME ":2: [billing] lease: must be longer than [gateway] connect_timeout + "
                      "request_timeout (130s)");
    /* not echoed when the timeout itself is invalid */
    expect_error("[billing]\nlease = 1m\n[gateway]\nrequest_timeout = forever\n",
                 "request_timeout: must be a whole number");
    assert_int_equal(try_value("billing", "lease", "71s"), 0);
    assert_int_equal(try_value("billing", "lease", "70s"), PL_EINVAL);
}

/* ---- durations -------------------------------------------------------------- */

static void test_parse_duration(void **state)
{
    (void)state;
    int64_t ms = -1;
    assert_int_equal(pl_config_parse_duration("0s", &ms), 0);
    assert_int_equal(ms, 0);
    assert_int_equal(pl_config_parse_duration("500ms", &ms), 0);
    assert_int_equal(ms, 500);
    assert_int_equal(pl_config_parse_duration("30s", &ms), 0);
    assert_int_equal(ms, 30000);
    assert_int_equal(pl_config_parse_duration("5m", &ms), 0);
    assert_int_equal(ms, 300000);
    assert_int_equal(pl_config_parse_duration("24h", &ms), 0);
    assert_int_equal(ms, 86400000);
    assert_int_equal(pl_config_parse_duration("1d", &ms), 0);
    assert_int_equal(ms, 86400000);
    assert_int_equal(pl_config_parse_duration("007s", &ms), 0);
    assert_int_equal(ms, 7000);
    /* the largest day count that fits, and one more */
    assert_int_equal(pl_config_parse_duration("106751991167d", &ms), 0);
    assert_int_equal(ms, 106751991167LL * 86400000LL);
    assert_int_equal(pl_config_parse_duration("106751991168d", &ms), PL_ERANGE);
    assert_int_equal(pl_config_parse_duration("9223372036854775807ms", &ms), 0);
    assert_int_equal(ms, INT64_MAX);
    assert_int_equal(pl_config_parse_duration("9223372036854775808ms", &ms), PL_ERANGE);
    assert_int_equal(pl_config_parse_duration("99999999999999999999999s", &ms), PL_ERANGE);

    ms = 42;
    const char *bad[] = {"",    "s",  "30",   "1.5s",  "-5s", "+5s", " 5s",   "5s ",
                         "5 s", "5S", "5sec", "1h30m", "5w",  "ms",  "0x10s", "1e3ms"};
    for (size_t i = 0; i < PL_ARRAY_LEN(bad); i++) {
        if (pl_config_parse_duration(bad[i], &ms) != PL_EINVAL)
            fail_msg("\"%s\" should be rejected", bad[i]);
    }
    assert_int_equal(pl_config_parse_duration(NULL, &ms), PL_EINVAL);
    assert_int_equal(ms, 42); /* untouched on failure */

    char buf[32];
    assert_string_equal(pl_config_format_duration(0, buf, sizeof(buf)), "0s");
    assert_string_equal(pl_config_format_duration(1500, buf, sizeof(buf)), "1500ms");
    assert_string_equal(pl_config_format_duration(90000, buf, sizeof(buf)), "90s");
    assert_string_equal(pl_config_format_duration(86400000, buf, sizeof(buf)), "1d");
    assert_string_equal(pl_config_format_duration(7200000, buf, sizeof(buf)), "2h");
}

/* ---- secrets ---------------------------------------------------------------- */

static void test_secret_from_file(void **state)
{
    struct tmp *t = *state;
    char *key = tmp_file(t, "key", "sk_test_123\n", 0600);
    char *db = tmp_file(t, "db", "pw with space \r\n", 0600);
    char *text =
        pl_xasprintf("[gateway]\napi_key_file = %s\n[database]\npassword_file = %s\n", key, db);
    struct pl_config cfg;
    expect_ok(text, &cfg);
    char *errs = NULL;
    assert_int_equal(
        pl_config_load_secrets(&cfg, PL_SECRET_DB_PASSWORD, PL_SECRET_GATEWAY_API_KEY, &errs), 0);
    assert_null(errs);
    assert_string_equal(cfg.gateway.api_key, "sk_test_123");
    assert_string_equal(cfg.database.password, "pw with space ");
    assert_null(cfg.http.webhook_secret);
    assert_null(cfg.warnings);

    /* reloading replaces the value */
    free(tmp_file(t, "key", "sk_test_456", 0600));
    assert_int_equal(pl_config_load_secrets(&cfg, PL_SECRET_GATEWAY_API_KEY, 0, &errs), 0);
    assert_string_equal(cfg.gateway.api_key, "sk_test_456");
    pl_config_release(&cfg);
    assert_null(cfg.gateway.api_key);
    free(text);
    free(key);
    free(db);
}

static void test_secret_from_credentials_directory(void **state)
{
    struct tmp *t = *state;
    free(tmp_file(t, "gateway_api_key", "sk_live_cred\n", 0400));
    free(tmp_file(t, "webhook_secret", "whsec_cred\n", 0400));
    setenv("CREDENTIALS_DIRECTORY", t->dir, 1);
    struct pl_config cfg;
    expect_ok("", &cfg);
    char *errs = NULL;
    assert_int_equal(pl_config_load_secrets(&cfg, PL_SECRET_DB_PASSWORD,
                                            PL_SECRET_GATEWAY_API_KEY | PL_SECRET_WEBHOOK_SECRET,
                                            &errs),
                     0);
    assert_string_equal(cfg.gateway.api_key, "sk_live_cred");
    assert_string_equal(cfg.http.webhook_secret, "whsec_cred");
    assert_null(cfg.database.password); /* optional and absent */
    pl_config_release(&cfg);

    /* an explicit *_file wins over the credential */
    char *key = tmp_file(t, "explicit", "sk_live_file", 0600);
    char *text = pl_xasprintf("[gateway]\napi_key_file = %s\n", key);
    expect_ok(text, &cfg);
    assert_int_equal(pl_config_load_secrets(&cfg, 0, PL_SECRET_GATEWAY_API_KEY, &errs), 0);
    assert_string_equal(cfg.gateway.api_key, "sk_live_file");
    pl_config_release(&cfg);
    free(text);
    free(key);
}

static void test_secret_missing(void **state)
{
    struct tmp *t = *state;
    struct pl_config cfg;
    char *errs = NULL;
    expect_ok("[http]\nenabled = yes\n", &cfg);

    /* not needed: absent is fine (pledgectl never asks for the webhook secret) */
    assert_int_equal(pl_config_load_secrets(&cfg, PL_SECRET_WEBHOOK_SECRET, 0, &errs), 0);
    assert_null(cfg.http.webhook_secret);

    /* needed, no credentials directory */
    assert_int_equal(pl_config_load_secrets(&cfg, 0, PL_SECRET_GATEWAY_API_KEY, &errs), PL_EINVAL);
    assert_string_equal(errs,
                        NAME ": [gateway] api_key_file: not set, and no systemd credential "
                             "gateway_api_key ($CREDENTIALS_DIRECTORY is not set); the gateway "
                             "API key is required");
    free(errs);

    /* needed, credentials directory without it */
    setenv("CREDENTIALS_DIRECTORY", t->dir, 1);
    assert_int_equal(pl_config_load_secrets(&cfg, 0, PL_SECRET_WEBHOOK_SECRET, &errs), PL_EINVAL);
    assert_contains(errs, "[http] webhook_secret_file: not set, and there is no systemd "
                          "credential webhook_secret in $CREDENTIALS_DIRECTORY");
    free(errs);
    pl_config_release(&cfg);

    /* configured file missing or empty: an error even when only wanted; nothing changes */
    char *empty = tmp_file(t, "empty", "\n", 0600);
    char *good = tmp_file(t, "good", "sk_test_ok", 0600);
    char *text = pl_xasprintf("[database]\npassword_file = %s/nope\n"
                              "[gateway]\napi_key_file = %s\n"
                              "[http]\nwebhook_secret_file = %s\n",
                              t->dir, good, empty);
    expect_ok(text, &cfg);
    assert_int_equal(pl_config_load_secrets(&cfg,
                                            PL_SECRET_DB_PASSWORD | PL_SECRET_GATEWAY_API_KEY |
                                                PL_SECRET_WEBHOOK_SECRET,
                                            0, &errs),
                     PL_EINVAL);
    assert_int_equal(count_lines(errs), 2);
    assert_contains(errs, NAME ":2: [database] password_file: cannot read ");
    assert_contains(errs, "No such file or directory");
    assert_contains(errs, NAME ":6: [http] webhook_secret_file: ");
    assert_contains(errs, "empty is empty");
    assert_null(cfg.gateway.api_key); /* all or nothing */
    free(errs);
    pl_config_release(&cfg);
    free(text);
    free(empty);
    free(good);
}

static void test_secret_with_line_break_rejected(void **state)
{
    struct tmp *t = *state;
    char *key = tmp_file(t, "key", "sk_test_a\nsk_test_b\n", 0600);
    char *text = pl_xasprintf("[gateway]\napi_key_file = %s\n", key);
    struct pl_config cfg;
    expect_ok(text, &cfg);
    char *errs = NULL;
    assert_int_equal(pl_config_load_secrets(&cfg, 0, PL_SECRET_GATEWAY_API_KEY, &errs), PL_EINVAL);
    assert_contains(errs, NAME ":2: [gateway] api_key_file: ");
    assert_contains(errs, "contains a control character");
    assert_null(strstr(errs, "sk_test_a"));
    assert_null(cfg.gateway.api_key);
    free(errs);
    pl_config_release(&cfg);
    free(text);
    free(key);
}

static void test_secret_readable_by_others_warns(void **state)
{
    struct tmp *t = *state;
    char *key = tmp_file(t, "key", "sk_test_x\n", 0644);
    char *hook = tmp_file(t, "hook", "whsec_x\n", 0640);
    char *text =
        pl_xasprintf("[gateway]\napi_key_file = %s\n[http]\nwebhook_secret_file = %s\n", key, hook);
    struct pl_config cfg;
    expect_ok(text, &cfg);
    char *errs = NULL;
    assert_int_equal(pl_config_load_secrets(
                         &cfg, 0, PL_SECRET_GATEWAY_API_KEY | PL_SECRET_WEBHOOK_SECRET, &errs),
                     0);
    assert_string_equal(cfg.gateway.api_key, "sk_test_x");
    assert_non_null(cfg.warnings);
    assert_int_equal(count_lines(cfg.warnings), 2);
    assert_contains(cfg.warnings, "key is readable by others (mode 0644)");
    assert_contains(cfg.warnings, "hook is readable by its group (mode 0640)");
    pl_config_release(&cfg);
    free(text);
    free(key);
    free(hook);
}

/* ---- [org] ------------------------------------------------------------------- */

static void test_check_org(void **state)
{
    struct tmp *t = *state;
    struct pl_config cfg;
    char *errs = NULL;
    expect_ok("[org]\nlegal_name = Friends\ntax_id =\n", &cfg);
    assert_int_equal(pl_config_check_org(&cfg, &errs), PL_EINVAL);
    assert_contains(errs, NAME ": [org] address_line1: not set; receipts need it");
    assert_contains(errs, NAME ":3: [org] tax_id: is empty; receipts need it");
    assert_null(strstr(errs, "legal_name"));
    assert_null(strstr(errs, "city_issued")); /* us */
    assert_int_equal(count_lines(errs), 8);
    free(errs);
    pl_config_release(&cfg);

    char *png = tmp_file(t, "sig.png", "\x89PNG\r\n\x1a\n....", 0644);
    char *jpg = tmp_file(t, "sig.jpg", "\xff\xd8\xff\xe0....", 0644);
    const char *org = "[org]\nlegal_name = L\naddress_line1 = A\ncity = C\nregion = R\n"
                      "postal_code = P\ncountry = CA\ntax_id = 123456789RR0001\n"
                      "signatory_name = N\nsignatory_title = T\njurisdiction = ca\n";
    char *text = pl_xasprintf("%ssignature_image = %s\n", org, png);
    expect_ok(text, &cfg);
    assert_int_equal(pl_config_check_org(&cfg, &errs), PL_EINVAL);
    assert_string_equal(errs, NAME ": [org] city_issued: not set; receipts need it");
    free(errs);
    pl_config_release(&cfg);
    free(text);

    text = pl_xasprintf("%scity_issued = Ottawa\nsignature_image = %s\n", org, png);
    expect_ok(text, &cfg);
    assert_int_equal(pl_config_check_org(&cfg, &errs), 0);
    assert_null(errs);
    pl_config_release(&cfg);
    free(text);

    text = pl_xasprintf("%scity_issued = Ottawa\nsignature_image = %s\n", org, jpg);
    expect_ok(text, &cfg);
    assert_int_equal(pl_config_check_org(&cfg, &errs), PL_EINVAL);
    assert_contains(errs, NAME ":13: [org] signature_image: ");
    assert_contains(errs, "is not a PNG image");
    free(errs);
    pl_config_release(&cfg);
    free(text);
    free(png);
    free(jpg);
}

/* ---- diff -------------------------------------------------------------------- */

static void test_diff(void **state)
{
    (void)state;
    struct pl_config a, b;
    char *summary = NULL;
    bool restart = true;
    expect_ok("[gateway]\nrate_limit = 20\n", &a);
    expect_ok("[gateway]\nrate_limit = 20\n", &b);
    assert_int_equal(pl_config_diff(&a, &b, &summary, &restart), 0);
    assert_null(summary);
    assert_false(restart);
    pl_config_release(&b);

    expect_ok("[gateway]\nrate_limit = 50\nrate_burst = 9\n"
              "[billing]\nretry_schedule = 1d,2d\n[log]\nlevel = debug\n",
              &b);
    assert_int_equal(pl_config_diff(&a, &b, &summary, &restart), 4);
    assert_false(restart);
    assert_string_equal(summary, "[gateway] rate_limit: 20 -> 50 (applied live)\n"
                                 "[gateway] rate_burst: 5 -> 9 (applied live)\n"
                                 "[billing] retry_schedule: 1d,3d,5d,7d -> 1d,2d (applied live)\n"
                                 "[log] level: info -> debug (applied live)");
    free(summary);
    pl_config_release(&b);

    expect_ok("[database]\npool_size = 8\nconninfo = host=db2\n[http]\nlisten = 0.0.0.0:80\n"
              "[billing]\nnode_name = other\n",
              &b);
    assert_int_equal(pl_config_diff(&a, &b, &summary, &restart), 4);
    assert_true(restart);
    assert_contains(summary, "[database] conninfo: \"\" -> \"host=db2\" (needs restart)");
    assert_contains(summary, "[database] pool_size: 4 -> 8 (needs restart)");
    assert_contains(summary, "[http] listen: \"127.0.0.1:8425\" -> \"0.0.0.0:80\" (needs restart)");
    assert_contains(summary, "[billing] node_name: ");
    free(summary);

    /* secrets: reported, never printed */
    pl_config_release(&b);
    expect_ok("", &b);
    a.gateway.api_key = pl_xstrdup("sk_live_old");
    b.gateway.api_key = pl_xstrdup("sk_live_new");
    b.http.webhook_secret = pl_xstrdup("whsec_new");
    assert_int_equal(pl_config_diff(&a, &b, &summary, NULL), 2);
    assert_string_equal(summary, "the gateway API key: changed (applied live)\n"
                                 "the webhook signing secret: now set (applied live)");
    free(summary);
    assert_int_equal(pl_config_diff(&a, &b, NULL, NULL), 2);
    pl_config_release(&a);
    pl_config_release(&b);
}

/* ---- the shipped example ------------------------------------------------------ */

static char *example_path(void)
{
    const char *src = getenv("PLEDGE_SOURCE_DIR");
    char *path = pl_xasprintf("%s/systemd/pledged.conf.example", src && *src ? src : ".");
    if (access(path, R_OK) < 0) {
        free(path);
        return NULL;
    }
    return path;
}

/* Every key of the example, as shipped and with each "#key = default" line
 * uncommented, loads and equals the built-in defaults. */
static void test_example_documents_every_default(void **state)
{
    (void)state;
    static const char *const all_keys[][2] = {
        {"database", "conninfo"},
        {"database", "password_file"},
        {"database", "pool_size"},
        {"database", "connect_timeout"},
        {"database", "queue_deadline"},
        {"gateway", "driver"},
        {"gateway", "base_url"},
        {"gateway", "api_key_file"},
        {"gateway", "ca_bundle"},
        {"gateway", "max_in_flight"},
        {"gateway", "rate_limit"},
        {"gateway", "rate_burst"},
        {"gateway", "connect_timeout"},
        {"gateway", "request_timeout"},
        {"gateway", "idempotency_window"},
        {"gateway", "lookup_settle"},
        {"gateway", "statement_descriptor_suffix"},
        {"billing", "timezone"},
        {"billing", "charge_time"},
        {"billing", "retry_schedule"},
        {"billing", "lapse_after"},
        {"billing", "catch_up"},
        {"billing", "batch_size"},
        {"billing", "lease"},
        {"billing", "poll_interval"},
        {"billing", "reconcile_schedule"},
        {"billing", "unknown_alert_after"},
        {"billing", "shutdown_deadline"},
        {"billing", "retry_now_max"},
        {"org", "legal_name"},
        {"org", "address_line1"},
        {"org", "address_line2"},
        {"org", "city"},
        {"org", "region"},
        {"org", "postal_code"},
        {"org", "country"},
        {"org", "tax_id"},
        {"org", "jurisdiction"},
        {"org", "city_issued"},
        {"org", "charity_registration_statement"},
        {"org", "signatory_name"},
        {"org", "signatory_title"},
        {"org", "signature_image"},
        {"org", "receipt_dir"},
        {"org", "email"},
        {"org", "website"},
        {"http", "listen"},
        {"http", "enabled"},
        {"http", "webhook_secret_file"},
        {"http", "max_body"},
        {"log", "level"},
        {"log", "format"},
    };
    char *path = example_path();
    if (!path) {
        print_message("systemd/pledged.conf.example not found; set PLEDGE_SOURCE_DIR\n");
        skip();
    }
    struct pl_config defaults, shipped, uncommented;
    char *errs = NULL;
    expect_ok("", &defaults);
    if (pl_config_load(path, &shipped, &errs) != 0)
        fail_msg("%s", errs);
    assert_int_equal(pl_config_diff(&defaults, &shipped, NULL, NULL), 0);

    char *text = NULL;
    assert_int_equal(pl_read_file(path, 1 << 20, &text, NULL), 0);
    /* "#key = value" -> "key = value", except placeholders like <host name> */
    for (char *line = text; line && *line;
         line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        size_t n = strspn(line + 1, "abcdefghijklmnopqrstuvwxyz0123456789_");
        char *eol = strchr(line, '\n');
        size_t len = eol ? (size_t)(eol - line) : strlen(line);
        if (line[0] == '#' && n > 0 && strncmp(line + 1 + n, " =", 2) == 0 &&
            !memchr(line, '<', len))
            line[0] = ' ';
    }
    if (pl_config_load_string(text, "example", &uncommented, &errs) != 0)
        fail_msg("%s", errs);
    char *summary = NULL;
    if (pl_config_diff(&defaults, &uncommented, &summary, NULL) != 0)
        fail_msg("example differs from the defaults:\n%s", summary);
    for (size_t i = 0; i < PL_ARRAY_LEN(all_keys); i++) {
        if (pl_config_line(&uncommented, all_keys[i][0], all_keys[i][1]) == 0)
            fail_msg("[%s] %s is not in the example", all_keys[i][0], all_keys[i][1]);
    }
    pl_config_release(&defaults);
    pl_config_release(&shipped);
    pl_config_release(&uncommented);
    free(text);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_from_empty_file),
        cmocka_unit_test(test_full_valid_file),
        cmocka_unit_test_setup_teardown(test_load_from_file, tmp_setup, tmp_teardown),
        cmocka_unit_test(test_error_unknown_section),
        cmocka_unit_test(test_error_unknown_key),
        cmocka_unit_test(test_error_bad_int),
        cmocka_unit_test(test_error_out_of_range),
        cmocka_unit_test(test_error_bad_duration),
        cmocka_unit_test(test_error_bad_bool),
        cmocka_unit_test(test_error_bad_timezone),
        cmocka_unit_test(test_error_http_base_url),
        cmocka_unit_test(test_error_secret_inline),
        cmocka_unit_test(test_error_duplicate_key),
        cmocka_unit_test(test_error_syntax),
        cmocka_unit_test(test_indented_lines_are_not_continuations),
        cmocka_unit_test(test_many_errors_all_reported),
        cmocka_unit_test(test_max_in_flight_bounds),
        cmocka_unit_test(test_retry_schedule_bounds),
        cmocka_unit_test(test_other_values),
        cmocka_unit_test(test_lease_must_outlast_a_request),
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test_setup_teardown(test_secret_from_file, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_secret_from_credentials_directory, tmp_setup,
                                        tmp_teardown),
        cmocka_unit_test_setup_teardown(test_secret_missing, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_secret_with_line_break_rejected, tmp_setup,
                                        tmp_teardown),
        cmocka_unit_test_setup_teardown(test_secret_readable_by_others_warns, tmp_setup,
                                        tmp_teardown),
        cmocka_unit_test_setup_teardown(test_check_org, tmp_setup, tmp_teardown),
        cmocka_unit_test(test_diff),
        cmocka_unit_test(test_example_documents_every_default),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
