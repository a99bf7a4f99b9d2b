/*
 * pledgectl — the operators' CLI. Thin: parses global options, connects,
 * dispatches to a noun; the helpers every noun shares live here too.
 * Exit codes: 0 ok, 1 failed, 2 usage, 3 not found, 4 conflict
 * (DESIGN.md §6).
 */
#include "pledgectl.h"

#include <getopt.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "money.h"
#include "schema.h"

static const char USAGE[] =
    "usage: pledgectl [--config FILE] [--json | --format FMT] COMMAND [ARGS...]\n"
    "\n"
    "Operate a pledged installation: schema, donors, pledges, charges.\n"
    "\n"
    "Commands:\n"
    "  migrate   apply pending schema migrations\n"
    "  status    queue health at a glance\n"
    "  donor     add, show, list, update donors\n"
    "  method    add, list, invalidate payment methods (gateway references only)\n"
    "  pledge    create, show, list, pause, resume, cancel, set-amount, set-method\n"
    "  import    onboard donors or pledges from a CRM export (CSV)\n"
    "  charge    list, show, retry, refund charges\n"
    "  clock     show or move the test clock (test databases only)\n"
    "  export    finance CSV: charges, refunds, donors, pledges, summary, receipts\n"
    "  receipts  year-end tax receipts: generate, list, show, void\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE   pledged config file ([database], [billing] timezone,\n"
    "                      [gateway]); default $PLEDGED_CONFIG; without either the\n"
    "                      libpq environment (PGHOST, PGDATABASE, ...) and UTC are used\n"
    "  -j, --json          machine-readable JSON output (same as --format json)\n"
    "  -f, --format FMT    auto (table on a terminal, tsv otherwise), table, tsv, json\n"
    "  -h, --help          show this help (also: pledgectl COMMAND [VERB] --help)\n"
    "  -V, --version       show the version\n"
    "\n"
    "Exit status: 0 ok, 1 failed, 2 usage, 3 not found, 4 conflict.\n"
    "See pledgectl(1).\n";

void ctl_error(const char *fmt, ...)
{
    va_list ap;
    fputs("pledgectl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int ctl_usage(const char *usage, bool ok)
{
    fputs(usage, ok ? stdout : stderr);
    return ok ? PL_EXIT_OK : PL_EXIT_USAGE;
}

static bool schema_checked_cmd = true;

PGconn *ctl_db(struct ctl *ctl)
{
    if (ctl->conn)
        return ctl->conn;
    const char *conninfo = ctl->have_cfg ? ctl->cfg.database.conninfo : "";
    const char *password = ctl->have_cfg ? ctl->cfg.database.password : NULL;
    const char *keys[4], *vals[4];
    int k = 0;
    /* dbname first, expanded: a conninfo string or URI; "" = the libpq defaults.
     * Later keys override what it says. */
    keys[k] = "dbname", vals[k++] = conninfo;
    keys[k] = "application_name", vals[k++] = "pledgectl";
    if (password)
        keys[k] = "password", vals[k++] = password;
    keys[k] = NULL, vals[k] = NULL;
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(c) != CONNECTION_OK) {
        char msg[512];
        pl_strlcpy(msg, PQerrorMessage(c), sizeof(msg));
        pl_rstrip(msg);
        ctl_error("cannot connect to the database: %s", msg);
        PQfinish(c);
        return NULL;
    }
    PQclear(PQexec(c, "SET client_min_messages = warning"));
    ctl->conn = c;
    if (schema_checked_cmd) {
        char err[512];
        if (pl_schema_check(c, err, sizeof(err)) < 0) {
            ctl_error("%s", err);
            goto fail;
        }
        const char *p[1] = {ctl->tz};
        PGresult *r = ctl_exec(ctl, "setting the time zone", "SELECT set_config('TimeZone', $1, false)",
                               1, p);
        if (!r) {
            ctl_error("[billing] timezone '%s' is not known to PostgreSQL", ctl->tz);
            goto fail;
        }
        PQclear(r);
    }
    return c;
fail:
    PQfinish(c);
    ctl->conn = NULL;
    return NULL;
}

/* SQLSTATE classes to exit codes. */
static int exit_for_sqlstate(const char *state)
{
    if (!state)
        return PL_EXIT_FAILED;
    if (strcmp(state, "23505") == 0 || strcmp(state, "55P03") == 0 ||
        strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0)
        return PL_EXIT_CONFLICT;
    if (strcmp(state, "23503") == 0)
        return PL_EXIT_NOTFOUND;
    if (strcmp(state, "23514") == 0 || strcmp(state, "23502") == 0 ||
        strncmp(state, "22", 2) == 0)
        return PL_EXIT_USAGE;
    return PL_EXIT_FAILED;
}

PGresult *ctl_exec(struct ctl *ctl, const char *what, const char *sql, int n,
                   const char *const *params)
{
    PGresult *r = PQexecParams(ctl->conn, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return r;
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    const char *detail = PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL);
    char buf[512];
    if (!msg) {
        pl_strlcpy(buf, PQerrorMessage(ctl->conn), sizeof(buf));
        pl_rstrip(buf);
        msg = buf;
    }
    ctl_error("%s: %s%s%s%s", what, msg, detail ? " (" : "", detail ? detail : "",
              detail ? ")" : "");
    ctl->db_exit = exit_for_sqlstate(state);
    PQclear(r);
    return NULL;
}

int ctl_begin(struct ctl *ctl)
{
    PGresult *r = ctl_exec(ctl, "begin", "BEGIN", 0, NULL);
    if (!r)
        return PL_EXIT_FAILED;
    PQclear(r);
    ctl->in_tx = true;
    return 0;
}

int ctl_commit(struct ctl *ctl)
{
    ctl->in_tx = false;
    PGresult *r = ctl_exec(ctl, "commit", "COMMIT", 0, NULL);
    if (!r)
        return PL_EXIT_FAILED;
    /* a COMMIT of an aborted transaction reports ROLLBACK */
    bool ok = strcmp(PQcmdStatus(r), "COMMIT") == 0;
    PQclear(r);
    if (!ok) {
        ctl_error("the transaction was rolled back; nothing was changed");
        return PL_EXIT_FAILED;
    }
    return 0;
}

void ctl_rollback(struct ctl *ctl)
{
    if (!ctl->in_tx || !ctl->conn)
        return;
    ctl->in_tx = false;
    PQclear(PQexec(ctl->conn, "ROLLBACK"));
}

int ctl_event(struct ctl *ctl, const char *entity, const char *entity_id, const char *action,
              json_t *detail)
{
    if (!detail)
        detail = json_object();
    char *text = json_dumps(detail, JSON_COMPACT | JSON_SORT_KEYS);
    const char *p[5] = {ctl->actor, entity, entity_id, action, text};
    PGresult *r = ctl_exec(ctl, "recording the event",
                           "INSERT INTO event (at, actor, entity, entity_id, action, detail) "
                           "VALUES (pl_now(), $1, $2, $3::bigint, $4, $5::jsonb)",
                           5, p);
    free(text);
    json_decref(detail);
    if (!r)
        return PL_EXIT_FAILED;
    PQclear(r);
    return 0;
}

void ctl_wake(struct ctl *ctl)
{
    PQclear(PQexec(ctl->conn, "NOTIFY pledged_wake"));
}

int ctl_parse_id(const char *what, const char *s, char out[24])
{
    int64_t v;
    if (!s || pl_parse_i64(s, &v) < 0 || v <= 0) {
        ctl_error("%s: '%s' is not a positive number", what, s ? s : "");
        return PL_EXIT_USAGE;
    }
    snprintf(out, 24, "%lld", (long long)v);
    return 0;
}

int ctl_currency_exponent(struct ctl *ctl, const char *opt, const char *code, int *exp)
{
    if (!pl_currency_code_valid(code)) {
        ctl_error("%s: '%s' is not an ISO 4217 currency code (three capital letters, e.g. USD)",
                  opt, code);
        return PL_EXIT_USAGE;
    }
    const char *p[1] = {code};
    PGresult *r = ctl_exec(ctl, "looking up the currency",
                           "SELECT exponent FROM currency WHERE code = $1", 1, p);
    if (!r)
        return PL_EXIT_FAILED;
    if (PQntuples(r) == 0) {
        PQclear(r);
        ctl_error("%s: unknown currency '%s' (not in the currency table)", opt, code);
        return PL_EXIT_USAGE;
    }
    *exp = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return 0;
}

int ctl_check_date(struct ctl *ctl, const char *opt, const char *text)
{
    if (!pl_ctl_date_shape(text)) {
        if (opt)
            ctl_error("%s: '%s' is not a date YYYY-MM-DD", opt, text);
        return PL_EXIT_USAGE;
    }
    if (ctl->in_tx)
        PQclear(PQexec(ctl->conn, "SAVEPOINT check_date"));
    const char *p[1] = {text};
    PGresult *r = PQexecParams(ctl->conn, "SELECT $1::date", 1, NULL, p, NULL, NULL, 0);
    bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    if (ctl->in_tx)
        PQclear(PQexec(ctl->conn, ok ? "RELEASE SAVEPOINT check_date"
                                     : "ROLLBACK TO SAVEPOINT check_date"));
    if (!ok) {
        if (opt)
            ctl_error("%s: '%s' is not a calendar date", opt, text);
        return PL_EXIT_USAGE;
    }
    return 0;
}

bool ctl_check_text(const char *what, const char *value)
{
    if (!value)
        return true;
    if (!pl_ctl_text_ok(value)) {
        ctl_error("%s: not valid UTF-8 text (or contains control characters)", what);
        return false;
    }
    if (pl_ctl_looks_like_pan(value)) {
        ctl_error("%s: looks like a card number (13-19 digits); pledged never stores card "
                  "data - use the gateway's references (cus_..., pm_...) instead",
                  what);
        return false;
    }
    return true;
}

const char *ctl_get(const PGresult *res, int row, const char *col)
{
    int c = PQfnumber(res, col);
    if (c < 0 || row >= PQntuples(res) || PQgetisnull(res, row, c))
        return NULL;
    return PQgetvalue(res, row, c);
}

#define OID_BOOL        16
#define OID_INT8        20
#define OID_INT2        21
#define OID_INT4        23
#define OID_JSON        114
#define OID_TIMESTAMPTZ 1184
#define OID_JSONB       3802

static enum pl_table_mode g_mode; /* for timestamp display in tables */

struct pl_table *ctl_table_from_result(const PGresult *res)
{
    struct pl_table *t = pl_table_new();
    int ncols = PQnfields(res);
    int exp_col = PQfnumber(res, "exponent");
    /* column j of the table for result column i: map[i] (-1 hidden), and the
     * formatted twin of an _minor column: twin[i] */
    int *map = pl_xcalloc((size_t)ncols + 1, sizeof(int));
    int *twin = pl_xcalloc((size_t)ncols + 1, sizeof(int));
    for (int i = 0; i < ncols; i++) {
        const char *name = PQfname(res, i);
        Oid type = PQftype(res, i);
        map[i] = twin[i] = -1;
        if (i == exp_col)
            continue;
        size_t len = strlen(name);
        if (exp_col >= 0 && len > 6 && strcmp(name + len - 6, "_minor") == 0) {
            char base[64];
            snprintf(base, sizeof(base), "%.*s", (int)(len - 6), name);
            twin[i] = (int)pl_table_add_column(t, base, NULL, PL_COL_TEXT, PL_COL_RIGHT);
            map[i] = (int)pl_table_add_column(t, name, NULL, PL_COL_INT, PL_COL_JSON_ONLY);
            continue;
        }
        enum pl_table_type tt = PL_COL_TEXT;
        if (type == OID_INT8 || type == OID_INT2 || type == OID_INT4)
            tt = PL_COL_INT;
        else if (type == OID_BOOL)
            tt = PL_COL_BOOL;
        else if (type == OID_JSON || type == OID_JSONB)
            tt = PL_COL_JSON;
        map[i] = (int)pl_table_add_column(t, name, NULL, tt, 0);
    }
    for (int r = 0; r < PQntuples(res); r++) {
        pl_table_add_row(t);
        for (int i = 0; i < ncols; i++) {
            if (map[i] < 0)
                continue;
            const char *v = PQgetisnull(res, r, i) ? NULL : PQgetvalue(res, r, i);
            if (v && PQftype(res, i) == OID_TIMESTAMPTZ) {
                char iso[64];
                pl_ctl_iso_timestamp(v, iso, sizeof(iso));
                if (g_mode == PL_TABLE_ALIGNED) { /* seconds are enough for people */
                    char *dot = strchr(iso, '.');
                    if (dot) {
                        char *tz = strpbrk(dot, "+-");
                        if (tz)
                            memmove(dot, tz, strlen(tz) + 1);
                    }
                }
                pl_table_set(t, (size_t)map[i], iso);
            } else {
                pl_table_set(t, (size_t)map[i], v);
            }
            if (twin[i] >= 0 && v && !PQgetisnull(res, r, exp_col)) {
                int64_t minor;
                char buf[PL_MONEY_FMT_MAX];
                if (pl_parse_i64(v, &minor) == 0 &&
                    pl_money_format(minor, atoi(PQgetvalue(res, r, exp_col)), buf,
                                    sizeof(buf)) == 0)
                    pl_table_set(t, (size_t)twin[i], buf);
            }
        }
    }
    free(map);
    free(twin);
    return t;
}

void ctl_print_result(struct ctl *ctl, const PGresult *res)
{
    struct pl_table *t = ctl_table_from_result(res);
    pl_table_print(t, stdout, ctl->mode);
    pl_table_free(t);
}

int ctl_print_rows(struct ctl *ctl, PGresult *res)
{
    if (!res)
        return ctl->db_exit == PL_EXIT_USAGE ? PL_EXIT_USAGE : PL_EXIT_FAILED;
    ctl_print_result(ctl, res);
    PQclear(res);
    return PL_EXIT_OK;
}

void ctl_print_record(struct ctl *ctl, const PGresult *res)
{
    struct pl_table *t = ctl_table_from_result(res);
    if (pl_table_rows(t) > 0)
        pl_table_print_record(t, 0, stdout, ctl->mode);
    pl_table_free(t);
}

void ctl_print_json(json_t *j)
{
    json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
    fputc('\n', stdout);
    json_decref(j);
}

void ctl_bad_option(void *arg, const char *field, const char *reason)
{
    (void)arg;
    ctl_error("%s: %s", field, reason);
}

json_t *ctl_result_row_json(const PGresult *res, int row)
{
    struct pl_table *t = ctl_table_from_result(res);
    json_t *j = row < (int)pl_table_rows(t) ? pl_table_row_json(t, (size_t)row) : json_null();
    pl_table_free(t);
    return j;
}

json_t *ctl_result_json(const PGresult *res)
{
    struct pl_table *t = ctl_table_from_result(res);
    json_t *j = pl_table_json(t);
    pl_table_free(t);
    return j;
}

int ctl_dispatch(struct ctl *ctl, const char *noun, const char *about,
                 const struct ctl_verb *verbs, size_t n, int argc, char **argv)
{
    bool help = argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
                strcmp(argv[1], "help") == 0;
    if (help) {
        FILE *out = argc < 2 ? stderr : stdout;
        fprintf(out, "usage: pledgectl %s VERB [ARGS...]\n\n%s\n\nVerbs:\n", noun, about);
        for (size_t i = 0; i < n; i++)
            fprintf(out, "  %-12s %s\n", verbs[i].name, verbs[i].summary);
        fprintf(out, "\nSee pledgectl %s VERB --help and pledgectl(1).\n", noun);
        return argc < 2 ? PL_EXIT_USAGE : PL_EXIT_OK;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(verbs[i].name, argv[1]) == 0) {
            optind = 0;
            return verbs[i].fn(ctl, argc - 1, argv + 1);
        }
    }
    ctl_error("%s: unknown verb '%s' (see pledgectl %s --help)", noun, argv[1], noun);
    return PL_EXIT_USAGE;
}

int ctl_resolve_donor(struct ctl *ctl, const char *id_text, const char *ref, char id[24])
{
    PGresult *r;
    if (ref) {
        const char *p[1] = {ref};
        r = ctl_exec(ctl, "looking up the donor", "SELECT id FROM donor WHERE external_ref = $1",
                     1, p);
    } else {
        char buf[24];
        int rc = ctl_parse_id("donor id", id_text, buf);
        if (rc)
            return rc;
        const char *p[1] = {buf};
        r = ctl_exec(ctl, "looking up the donor", "SELECT id FROM donor WHERE id = $1::bigint", 1,
                     p);
    }
    if (!r)
        return PL_EXIT_FAILED;
    if (PQntuples(r) == 0) {
        PQclear(r);
        if (ref)
            ctl_error("no donor with external ref '%s'", ref);
        else
            ctl_error("no donor with id %s", id_text);
        return PL_EXIT_NOTFOUND;
    }
    pl_strlcpy(id, PQgetvalue(r, 0, 0), 24);
    PQclear(r);
    return 0;
}

struct command {
    const char *name;
    ctl_cmd_fn fn;
};

static const struct command COMMANDS[] = {
    {"migrate", ctl_cmd_migrate}, {"status", ctl_cmd_status}, {"donor", ctl_cmd_donor},
    {"method", ctl_cmd_method},   {"pledge", ctl_cmd_pledge}, {"import", ctl_cmd_import},
    {"charge", ctl_cmd_charge},   {"clock", ctl_cmd_clock},
    {"export", ctl_cmd_export},   {"receipts", ctl_cmd_receipts},
};

static int load_config(struct ctl *ctl)
{
    char *errors = NULL;
    int r = pl_config_load(ctl->config_path, &ctl->cfg, &errors);
    if (r < 0) {
        if (errors) {
            fprintf(stderr, "%s", errors);
            if (errors[0] && errors[strlen(errors) - 1] != '\n')
                fputc('\n', stderr);
        }
        ctl_error("%s: cannot use this config file (%s)", ctl->config_path, pl_strerror(r));
        free(errors);
        return PL_EXIT_FAILED;
    }
    ctl->have_cfg = true;
    r = pl_config_load_secrets(&ctl->cfg, PL_SECRET_DB_PASSWORD, 0, &errors);
    if (r < 0) {
        fprintf(stderr, "%s\n", errors ? errors : "");
        free(errors);
        return PL_EXIT_FAILED;
    }
    ctl->tz = ctl->cfg.billing.timezone;
    return 0;
}

int main(int argc, char **argv)
{
    struct ctl ctl = {0};
    ctl.tz = "UTC";
    const char *format = "auto";
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"json", no_argument, NULL, 'j'},
        {"format", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "+c:jf:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            ctl.config_path = optarg;
            break;
        case 'j':
            format = "json";
            break;
        case 'f':
            format = optarg;
            break;
        case 'h':
            fputs(USAGE, stdout);
            return PL_EXIT_OK;
        case 'V':
            printf("pledgectl %s\n", PL_VERSION);
            return PL_EXIT_OK;
        default:
            fputs(USAGE, stderr);
            return PL_EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        fputs(USAGE, stderr);
        return PL_EXIT_USAGE;
    }
    if (strcmp(format, "json") == 0) {
        ctl.json = true;
        ctl.mode = PL_TABLE_JSON;
    } else if (strcmp(format, "table") == 0) {
        ctl.mode = PL_TABLE_ALIGNED;
    } else if (strcmp(format, "tsv") == 0) {
        ctl.mode = PL_TABLE_TSV;
    } else if (strcmp(format, "auto") == 0) {
        ctl.mode = pl_table_mode_auto(stdout, false);
    } else {
        ctl_error("--format: '%s' is not one of auto, table, tsv, json", format);
        return PL_EXIT_USAGE;
    }
    g_mode = ctl.mode;

    if (!ctl.config_path) {
        const char *env = getenv("PLEDGED_CONFIG");
        if (env && *env)
            ctl.config_path = env;
    }

    struct passwd *pw = getpwuid(getuid());
    snprintf(ctl.actor, sizeof(ctl.actor), "pledgectl:%s", pw ? pw->pw_name : "unknown");

    const char *name = argv[optind];
    for (size_t i = 0; i < PL_ARRAY_LEN(COMMANDS); i++) {
        if (strcmp(COMMANDS[i].name, name) != 0)
            continue;
        bool wants_help = false;
        for (int a = optind + 1; a < argc; a++)
            if (strcmp(argv[a], "--help") == 0 || strcmp(argv[a], "-h") == 0)
                wants_help = true;
        if (ctl.config_path && !wants_help) {
            int rc = load_config(&ctl);
            if (rc) {
                pl_config_release(&ctl.cfg);
                return rc;
            }
        }
        schema_checked_cmd = strcmp(name, "migrate") != 0;
        int sub_argc = argc - optind;
        char **sub_argv = argv + optind;
        optind = 0; /* re-initialise getopt for the command's own options */
        int rc = COMMANDS[i].fn(&ctl, sub_argc, sub_argv);
        ctl_rollback(&ctl);
        if (ctl.conn)
            PQfinish(ctl.conn);
        if (ctl.have_cfg)
            pl_config_release(&ctl.cfg);
        fflush(stdout);
        if (ferror(stdout) && rc == PL_EXIT_OK) {
            ctl_error("writing the output failed");
            return PL_EXIT_FAILED;
        }
        return rc;
    }
    ctl_error("unknown command '%s' (see pledgectl --help)", name);
    return PL_EXIT_USAGE;
}

/* ---- migrate ----------------------------------------------------------- */

static const char MIGRATE_USAGE[] =
    "usage: pledgectl migrate [--status] [--test-mode]\n"
    "\n"
    "Apply the pending schema migrations in order, each in its own transaction.\n"
    "Concurrent runs are safe (they take turns). A migration that was changed\n"
    "after it was applied is refused.\n"
    "\n"
    "  --status      list applied and pending migrations; change nothing\n"
    "  --test-mode   create a test database: enables the test clock. Only\n"
    "                possible on the first migration of an empty database.\n";

static void print_applied(const struct pl_migration *m, void *arg)
{
    struct ctl *ctl = arg;
    if (!ctl->json)
        printf("applied %s\n", m->name);
}

static const char *state_name(enum pl_schema_state s)
{
    switch (s) {
    case PL_SCHEMA_PENDING:
        return "pending";
    case PL_SCHEMA_APPLIED:
        return "applied";
    case PL_SCHEMA_CHANGED:
        return "changed";
    case PL_SCHEMA_UNKNOWN:
        return "unknown";
    }
    return "?";
}

static int migrate_status(struct ctl *ctl, PGconn *conn)
{
    struct pl_schema_row *rows;
    size_t n;
    char err[1024];
    if (pl_schema_status(conn, &rows, &n, err, sizeof(err)) < 0) {
        ctl_error("%s", err);
        return PL_EXIT_FAILED;
    }
    bool bad = false;
    if (ctl->json)
        fputs("{\"migrations\":[", stdout);
    for (size_t i = 0; i < n; i++) {
        if (rows[i].state == PL_SCHEMA_CHANGED || rows[i].state == PL_SCHEMA_UNKNOWN)
            bad = true;
        if (ctl->json) {
            /* names are [0-9a-z_.] by construction (sql/embed.py) */
            printf("%s{\"version\":%d,\"name\":\"%s\",\"state\":\"%s\",\"applied_at\":%s%s%s}",
                   i ? "," : "", rows[i].version, rows[i].name, state_name(rows[i].state),
                   rows[i].applied_at[0] ? "\"" : "",
                   rows[i].applied_at[0] ? rows[i].applied_at : "null",
                   rows[i].applied_at[0] ? "\"" : "");
        } else {
            printf("%3d  %-24s %-8s %s\n", rows[i].version, rows[i].name,
                   state_name(rows[i].state), rows[i].applied_at);
        }
    }
    if (ctl->json)
        fputs("]}\n", stdout);
    free(rows);
    return bad ? PL_EXIT_FAILED : PL_EXIT_OK;
}

int ctl_cmd_migrate(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"status", no_argument, NULL, 's'},
        {"test-mode", no_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool status = false, test_mode = false;
    int c;
    while ((c = getopt_long(argc, argv, "sth", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            status = true;
            break;
        case 't':
            test_mode = true;
            break;
        case 'h':
            fputs(MIGRATE_USAGE, stdout);
            return PL_EXIT_OK;
        default:
            fputs(MIGRATE_USAGE, stderr);
            return PL_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        ctl_error("migrate: unexpected argument '%s'", argv[optind]);
        return PL_EXIT_USAGE;
    }
    PGconn *conn = ctl_db(ctl);
    if (!conn)
        return PL_EXIT_FAILED;
    if (status)
        return migrate_status(ctl, conn);

    char err[1024];
    int applied = 0;
    PQclear(PQexec(conn, "SET client_min_messages = warning"));
    int r = pl_schema_migrate(conn, test_mode, print_applied, ctl, &applied, err, sizeof(err));
    if (r < 0) {
        ctl_error("migrate: %s", err);
        return r == PL_ECONFLICT ? PL_EXIT_CONFLICT : PL_EXIT_FAILED;
    }
    if (ctl->json)
        printf("{\"applied\":%d,\"version\":%d}\n", applied, pl_schema_latest());
    else if (applied == 0)
        printf("schema is up to date (version %d)\n", pl_schema_latest());
    else
        printf("schema now at version %d (%d applied)\n", pl_schema_latest(), applied);
    return PL_EXIT_OK;
}
