/*
 * pledgectl — shared state of the operators' CLI. Each noun lives in its
 * own pledgectl_<noun>.c and is dispatched from pledgectl.c, which also
 * holds the helpers every noun uses (queries, transactions, events,
 * options, output).
 *
 * Conventions for commands:
 *   - a command returns an enum pl_exit code and has printed why on stderr
 *     ("pledgectl: ...") when it is not 0;
 *   - every change runs in one transaction with its event row; any failure
 *     before the commit rolls everything back;
 *   - exit 2 (usage) means "fix the command line and run again": unknown
 *     options, missing or malformed values, including amounts that do not
 *     fit the currency and unknown currency codes.
 */
#ifndef PLEDGECTL_H
#define PLEDGECTL_H

#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "config.h"
#include "table.h"
#include "util.h"

struct ctl {
    const char *config_path; /* NULL: libpq environment (PGHOST...) */
    bool json;               /* --json: machine-readable output */
    enum pl_table_mode mode; /* how read commands render */
    PGconn *conn;            /* opened on first use by ctl_db() */
    char actor[128];         /* "pledgectl:<user>" for the event log */
    struct pl_config cfg;    /* loaded when config_path is set */
    bool have_cfg;
    const char *tz;      /* org time zone ([billing] timezone, default UTC) */
    int db_exit;         /* exit code deserved by the last failed query */
    bool in_tx;
};

/* A command: returns an enum pl_exit code. argv[0] is the verb/noun. */
typedef int (*ctl_cmd_fn)(struct ctl *ctl, int argc, char **argv);

struct ctl_verb {
    const char *name;
    ctl_cmd_fn fn;
    const char *summary; /* one line for the noun's --help */
};

/* Connect (once) using the config's [database] section or the libpq
 * environment; on failure prints why and returns NULL. */
PGconn *ctl_db(struct ctl *ctl);

/* "pledgectl: <message>" on stderr. */
void ctl_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Run verbs[i] named by argv[1]; handles --help and unknown verbs. */
int ctl_dispatch(struct ctl *ctl, const char *noun, const char *about,
                 const struct ctl_verb *verbs, size_t n, int argc, char **argv);

/* Print a verb's usage to stdout (--help, exit 0) or stderr (misuse, 2). */
int ctl_usage(const char *usage, bool ok);

/*
 * Run a parameterised statement (text parameters, NULL = SQL NULL).
 * Returns the result (caller PQclear()s) when it succeeded; otherwise prints
 * "pledgectl: <what>: <server message>" and returns NULL, with
 * ctl->db_exit set to the exit code the error deserves (unique violation
 * → 4, foreign key → 3, bad value → 2, else 1).
 */
PGresult *ctl_exec(struct ctl *ctl, const char *what, const char *sql, int n,
                   const char *const *params);

/* Transactions: 0 or an exit code (already reported). rollback never fails
 * loudly and is a no-op outside a transaction. */
int ctl_begin(struct ctl *ctl);
int ctl_commit(struct ctl *ctl);
void ctl_rollback(struct ctl *ctl);

/* Append an event row (at = pl_now(), actor = ctl->actor); `detail` is
 * stolen (NULL: {}). 0 or an exit code (already reported). */
int ctl_event(struct ctl *ctl, const char *entity, const char *entity_id, const char *action,
              json_t *detail);

/* Wake the daemons (NOTIFY pledged_wake); best effort. */
void ctl_wake(struct ctl *ctl);

/* Parse a positive row id for `what` (e.g. "donor id"): 0 or PL_EXIT_USAGE
 * (reported). `out` gets the canonical decimal text. */
int ctl_parse_id(const char *what, const char *s, char out[24]);

/* The currency's exponent from the currency table: 0, PL_EXIT_USAGE
 * (unknown code, reported naming `opt`) or PL_EXIT_FAILED. */
int ctl_currency_exponent(struct ctl *ctl, const char *opt, const char *code, int *exp);

/* A YYYY-MM-DD date PostgreSQL accepts: 0 or PL_EXIT_USAGE (reported,
 * naming opt; opt NULL: quietly). Safe inside a transaction (uses a savepoint). */
int ctl_check_date(struct ctl *ctl, const char *opt, const char *text);

/* Refuse text that looks like a card number or is not clean UTF-8;
 * `what` names the field. true when fine (else reported). */
bool ctl_check_text(const char *what, const char *value);

/* Build a table from a query result: integer, boolean and json columns
 * keep their JSON types; timestamptz columns become ISO 8601; a column
 * `X_minor` is shown as X (formatted with the row's `exponent` column) and
 * kept as X_minor in JSON only; `exponent` itself is never shown. */
struct pl_table *ctl_table_from_result(const PGresult *res);

/* Print a whole result as a table / its first row as a record. */
void ctl_print_result(struct ctl *ctl, const PGresult *res);
/* The end of a list command: print res's rows and clear it (res stolen; NULL
 * after a failed query gives the exit code that failure deserves). */
int ctl_print_rows(struct ctl *ctl, PGresult *res);
void ctl_print_record(struct ctl *ctl, const PGresult *res);

/* Print a JSON value (stolen) with stable key order, then a newline. */
void ctl_print_json(json_t *j);

/* Text of a result cell, NULL for SQL NULL. */
const char *ctl_get(const PGresult *res, int row, const char *col);

/* Nouns */
int ctl_cmd_migrate(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_donor(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_method(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_pledge(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_charge(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_import(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_status(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_clock(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_export(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_receipts(struct ctl *ctl, int argc, char **argv);

/* Shared between nouns */

/* Resolve a donor given by id text or external ref (one of them NULL) into
 * `id`: 0, PL_EXIT_NOTFOUND or PL_EXIT_FAILED (reported). */
int ctl_resolve_donor(struct ctl *ctl, const char *id_text, const char *ref, char id[24]);

/* The pledge's fields as a new JSON object for show (pledge + charges). */
int ctl_pledge_show_json(struct ctl *ctl, const char *id, json_t **out);

#endif

/* ---- validation shared by the commands and import ---------------------- */

/* Reports one bad field: `field` is the option or column name. */
typedef void (*ctl_bad_fn)(void *arg, const char *field, const char *reason);

enum ctl_donor_field {
    DF_REF, DF_NAME, DF_EMAIL, DF_ADDR1, DF_ADDR2, DF_CITY, DF_REGION, DF_POSTAL, DF_COUNTRY,
    DF_COUNT
};
struct ctl_donor {
    const char *f[DF_COUNT]; /* NULL: not given */
    char country[3];         /* normalised (upper case) copy of f[DF_COUNTRY] */
};
/* Check the given fields; `creating` requires a name. Each problem is
 * reported through bad with names[field]. Returns the number of problems.
 * f[DF_COUNTRY] is replaced by the normalised country when valid. */
int ctl_donor_check(struct ctl_donor *d, bool creating, const char *const names[DF_COUNT],
                    ctl_bad_fn bad, void *arg);

enum ctl_method_field {
    MF_GATEWAY, MF_CUSTOMER, MF_TOKEN, MF_BRAND, MF_LAST4, MF_EXP_MONTH, MF_EXP_YEAR, MF_COUNT
};
struct ctl_method {
    const char *f[MF_COUNT];
};
/* customer and token are required when `required`. */
int ctl_method_check(const struct ctl_method *m, bool required,
                     const char *const names[MF_COUNT], ctl_bad_fn bad, void *arg);

/* Insert a donor / method (no event, no transaction): 0 and the new id, or
 * an exit code (reported). */
int ctl_donor_insert(struct ctl *ctl, const struct ctl_donor *d, char id[24]);
int ctl_method_insert(struct ctl *ctl, const char *donor_id, const struct ctl_method *m,
                      char id[24]);

/* Print "why" for a field of the command line. */
void ctl_bad_option(void *arg, const char *field, const char *reason);

/* donor/method/pledge row as JSON for the event log and --json output */
json_t *ctl_result_row_json(const PGresult *res, int row);
json_t *ctl_result_json(const PGresult *res);

/* Parse an amount for a currency: 0, or PL_EINVAL with why (e.g. "25.001
 * has more decimals than USD allows (2)"). */
int ctl_parse_amount(const char *text, const char *code, int exp, int64_t *out, char *why,
                     size_t n);

/* A validated pledge to insert. Text fields; NULL where noted. */
struct ctl_pledge {
    const char *donor_id;
    const char *method_id;    /* NULL: none (status needs_payment_method) */
    const char *external_ref; /* NULL ok */
    char amount_minor[24];
    const char *currency;
    int interval_months;
    const char *anchor; /* NULL: the start date's day; "0": last; "1".."31" */
    const char *fund;   /* NULL: general */
    const char *start;  /* NULL: today (org-local) */
    const char *end;    /* NULL ok */
};
/* Insert (no transaction, no event): 0 and id, or an exit code (reported). */
int ctl_pledge_insert(struct ctl *ctl, const struct ctl_pledge *p, char id[24]);

/* Newest active payment method of a donor into id ("" when none): 0 or an
 * exit code. */
int ctl_donor_default_method(struct ctl *ctl, const char *donor_id, char id[24]);
