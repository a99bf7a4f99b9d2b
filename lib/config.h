/*
 * config — pledged.conf: an INI file (inih) with the sections
 * [database] [gateway] [billing] [org] [http] [log].
 *
 * Owns: parsing, validation with "FILE:LINE: [section] key: reason"
 * messages (all of them, not just the first), defaults, and loading
 * secrets from files or systemd credentials ($CREDENTIALS_DIRECTORY).
 * Never: reads a secret from the INI file itself, logs, or exits.
 *
 * systemd/pledged.conf.example documents every key with its default.
 *
 * Values:
 *   durations  an integer and a unit: 500ms 30s 5m 24h 1d (no fractions,
 *              no sign, no spaces); stored as int64 milliseconds (`_ms`).
 *   booleans   true/false yes/no on/off 1/0
 *   lists      comma-separated durations, e.g. "1d, 3d, 5d, 7d"
 *   paths      absolute
 * An empty value ("key =") means "not set" for optional keys and is an
 * error for the others (remove the line to get the default).
 *
 * Secrets: [database] password_file, [gateway] api_key_file and
 * [http] webhook_secret_file name files; when unset, the systemd
 * credential of the same purpose is used ($CREDENTIALS_DIRECTORY/db_password,
 * gateway_api_key, webhook_secret). They are read by
 * pl_config_load_secrets(), not by pl_config_load(), so that each program
 * reads only what it needs.
 */
#ifndef PL_CONFIG_H
#define PL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log.h"

#define PL_CONFIG_DEFAULT_PATH "/etc/pledged/pledged.conf"

/* Capacity of a duration list; retry_schedule is further limited to
 * PL_RETRY_SCHEDULE_MAX entries (Visa: at most 15 retries in 30 days). */
#define PL_DURATION_LIST_MAX  16
#define PL_RETRY_SCHEDULE_MAX 14

/* Names of the systemd credentials (LoadCredential=NAME:PATH). */
#define PL_CRED_DB_PASSWORD     "db_password"
#define PL_CRED_GATEWAY_API_KEY "gateway_api_key"
#define PL_CRED_WEBHOOK_SECRET  "webhook_secret"

struct pl_duration_list {
    int64_t ms[PL_DURATION_LIST_MAX];
    size_t len;
};

enum pl_catch_up {
    PL_CATCH_UP_LATEST = 0, /* charge the most recent missed period, skip older */
    PL_CATCH_UP_ALL,        /* charge every missed period */
};

enum pl_jurisdiction {
    PL_JURISDICTION_US = 0,
    PL_JURISDICTION_CA,
};

/*
 * Every char * below is owned by the config (freed by pl_config_release)
 * and NULL when an optional key is not set, unless noted "never NULL".
 * Do not copy a struct pl_config by assignment and release both.
 */
struct pl_config {
    char *path; /* file it came from, never NULL ("<string>" names for tests) */

    struct {
        char *conninfo;      /* libpq conninfo or URI; never NULL, "" = PG* env defaults */
        char *password_file; /* NULL: credential db_password, if any */
        int pool_size;
        int64_t connect_timeout_ms;
        int64_t queue_deadline_ms; /* a query waiting longer for a connection fails */
        char *password;            /* secret, set by pl_config_load_secrets */
    } database;

    struct {
        char *driver;       /* never NULL; "stripe" */
        char *base_url;     /* never NULL; no trailing '/'; https or loopback http */
        char *api_key_file; /* NULL: credential gateway_api_key */
        char *ca_bundle;    /* NULL: system trust store */
        int max_in_flight;
        int rate_limit; /* requests per second */
        int rate_burst;
        int64_t connect_timeout_ms;
        int64_t request_timeout_ms;
        int64_t idempotency_window_ms; /* resend the same key only inside it */
        int64_t lookup_settle_ms;      /* trust "not found" only this long after a send */
        char *statement_descriptor_suffix;
        char *api_key; /* secret, set by pl_config_load_secrets */
    } gateway;

    struct {
        char *node_name;                        /* never NULL; default: the host name */
        char *timezone;                         /* never NULL; IANA name */
        int charge_time_minutes;                /* local minutes after midnight, 0..1439 */
        struct pl_duration_list retry_schedule; /* offsets from the first failure */
        int lapse_after;                        /* consecutive failed periods */
        enum pl_catch_up catch_up;
        int batch_size;
        int64_t lease_ms;
        int64_t poll_interval_ms;
        struct pl_duration_list reconcile_schedule; /* offsets from the unknown outcome */
        int64_t unknown_alert_after_ms;
        int64_t shutdown_deadline_ms;
        int retry_now_max; /* immediate resends of one attempt (same key) */
    } billing;

    /* Receipt issuer. Nothing is required at load; pl_config_check_org()
     * says what receipts need. The address is split like a donor's. */
    struct {
        char *legal_name;
        char *address_line1;
        char *address_line2;
        char *city;
        char *region; /* state / province */
        char *postal_code;
        char *country;
        char *tax_id; /* us: EIN 12-3456789; ca: BN 123456789RR0001 */
        enum pl_jurisdiction jurisdiction;
        char *city_issued; /* ca: "location of issue" printed on receipts */
        char *charity_registration_statement;
        char *signatory_name;
        char *signatory_title;
        char *signature_image; /* PNG */
        char *receipt_dir;     /* never NULL */
        char *email;
        char *website;
    } org;

    struct {
        char *listen;      /* never NULL; as written ("127.0.0.1:8425", "[::1]:8425") */
        char *listen_host; /* never NULL; IP literal without brackets */
        int listen_port;
        bool enabled;
        char *webhook_secret_file; /* NULL: credential webhook_secret */
        int64_t max_body;          /* bytes */
        char *webhook_secret;      /* secret, set by pl_config_load_secrets */
    } http;

    struct {
        enum pl_log_level level;
        enum pl_log_format format;
    } log;

    /* Non-fatal findings (e.g. a secret file readable by others), one per
     * line, for the caller to log; NULL when there are none. */
    char *warnings;

    int *key_lines; /* private: use pl_config_line() */
};

/* Fill `cfg` with defaults (node_name from gethostname). Release it later. */
void pl_config_defaults(struct pl_config *cfg);

/* Free everything `cfg` owns, wiping secrets first (explicit_bzero).
 * Leaves `cfg` zeroed; NULL is accepted. */
void pl_config_release(struct pl_config *cfg);

/*
 * Load and validate `path`. On success returns 0, fills *out (which the
 * caller releases) and sets *errors to NULL. On failure returns PL_EINVAL
 * (or -errno when the file cannot be read), leaves *out untouched and sets
 * *errors to a new string of newline-separated messages, one per problem,
 * "FILE:LINE: [section] key: reason"; free() it. `errors` may be NULL.
 */
int pl_config_load(const char *path, struct pl_config *out, char **errors);

/* Same, from text in memory; `name` stands in for the file name. */
int pl_config_load_string(const char *text, const char *name, struct pl_config *out, char **errors);

/* Which secrets pl_config_load_secrets() reads. */
enum pl_secret {
    PL_SECRET_DB_PASSWORD = 1u << 0,
    PL_SECRET_GATEWAY_API_KEY = 1u << 1,
    PL_SECRET_WEBHOOK_SECRET = 1u << 2,
};

/*
 * Read the secrets in `want` from their *_file key or, when that is unset,
 * from $CREDENTIALS_DIRECTORY/<credential>. A configured file that cannot
 * be read or is empty is an error; a secret in `need` (bits imply `want`)
 * that is nowhere to be found is an error; a secret in `want` only is left
 * NULL when absent (a database password is optional: peer auth, .pgpass).
 * One trailing newline (LF or CRLF) is removed. Files readable by group or
 * others are accepted with a line in cfg->warnings. Secrets already loaded
 * are replaced. Returns 0 or PL_EINVAL with *errors as for pl_config_load;
 * on failure no secret in `cfg` is changed.
 */
int pl_config_load_secrets(struct pl_config *cfg, unsigned want, unsigned need, char **errors);

/*
 * What receipts need from [org]: legal name, address (line1, city, region,
 * postal code, country), tax_id, signatory name and title, plus city_issued
 * for jurisdiction ca, and a readable PNG when signature_image is set.
 * Returns 0, or PL_EINVAL with *errors naming each missing key and where
 * ("FILE:LINE: [org] key: ..." or "FILE: [org] key: not set").
 */
int pl_config_check_org(const struct pl_config *cfg, char **errors);

/* Line where `section`.`key` was set, 0 when it was not (default). */
int pl_config_line(const struct pl_config *cfg, const char *section, const char *key);

/* "30s", "5m", "500ms", "1d": strict (see the top). 0, PL_EINVAL, PL_ERANGE. */
int pl_config_parse_duration(const char *s, int64_t *out_ms);

/* Shortest exact spelling of a duration ("90s", "1d", "1500ms") into buf. */
char *pl_config_format_duration(int64_t ms, char *buf, size_t n);

/*
 * Compare two loaded configs (SIGHUP reload). Returns the number of
 * differences (0 when none). *summary (may be NULL) gets a new string,
 * one line per changed key: "[gateway] rate_limit: 20 -> 50 (applied live)"
 * or "... (needs restart)"; NULL when nothing changed. Secret values are
 * never printed ("changed"). *needs_restart (may be NULL) tells whether any
 * changed key only takes effect after a restart: database conninfo and
 * pool size, gateway driver/base_url/ca_bundle, node_name, http listen and
 * enabled.
 */
int pl_config_diff(const struct pl_config *old_cfg, const struct pl_config *new_cfg, char **summary,
                   bool *needs_restart);

#endif
