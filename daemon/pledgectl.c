/*
 * pledgectl — the operators' CLI. Thin: parses global options, connects,
 * dispatches to a noun. Exit codes: 0 ok, 1 failed, 2 usage, 3 not found,
 * 4 conflict (DESIGN.md §6).
 */
#include "pledgectl.h"

#include <getopt.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "schema.h"

static const char USAGE[] =
    "usage: pledgectl [--config FILE] [--json] COMMAND [ARGS...]\n"
    "\n"
    "Operate a pledged installation: schema, donors, pledges, charges, receipts, exports.\n"
    "\n"
    "Commands:\n"
    "  migrate [--status] [--test-mode]   apply pending schema migrations\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE   pledged config file (database section); without it the\n"
    "                      libpq environment (PGHOST, PGDATABASE, ...) is used\n"
    "  -j, --json          machine-readable JSON output\n"
    "  -h, --help          show this help (also: pledgectl COMMAND --help)\n"
    "  -V, --version       show the version\n"
    "\n"
    "Exit status: 0 ok, 1 failed, 2 usage, 3 not found, 4 conflict.\n";

void ctl_error(const char *fmt, ...)
{
    va_list ap;
    fputs("pledgectl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

PGconn *ctl_db(struct ctl *ctl)
{
    if (ctl->conn)
        return ctl->conn;
    const char *keys[] = {"application_name", "dbname", NULL};
    const char *vals[] = {"pledgectl", "", NULL};
    /* dbname "" with expand_dbname: use the libpq defaults (PGDATABASE...). */
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(c) != CONNECTION_OK) {
        char msg[512];
        pl_strlcpy(msg, PQerrorMessage(c), sizeof(msg));
        pl_rstrip(msg);
        ctl_error("cannot connect to the database: %s", msg);
        PQfinish(c);
        return NULL;
    }
    ctl->conn = c;
    return c;
}

struct command {
    const char *name;
    ctl_cmd_fn fn;
};

static const struct command COMMANDS[] = {
    {"migrate", ctl_cmd_migrate},
};

int main(int argc, char **argv)
{
    struct ctl ctl = {0};
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "+c:jhV", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            ctl.config_path = optarg;
            break;
        case 'j':
            ctl.json = true;
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

    struct passwd *pw = getpwuid(getuid());
    snprintf(ctl.actor, sizeof(ctl.actor), "pledgectl:%s", pw ? pw->pw_name : "unknown");

    const char *name = argv[optind];
    for (size_t i = 0; i < PL_ARRAY_LEN(COMMANDS); i++) {
        if (strcmp(COMMANDS[i].name, name) != 0)
            continue;
        int sub_argc = argc - optind;
        char **sub_argv = argv + optind;
        optind = 0; /* re-initialise getopt for the command's own options */
        int rc = COMMANDS[i].fn(&ctl, sub_argc, sub_argv);
        if (ctl.conn)
            PQfinish(ctl.conn);
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
