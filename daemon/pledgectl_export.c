/*
 * pledgectl export KIND: finance CSV (docs/exports.md).
 *
 * Thin: checks the command line, opens the output, hands the range and
 * filters to the export's transaction with set_config($n) (COPY takes no
 * bind parameters, and values never become SQL text), and streams the COPY
 * through lib/export. The transaction is REPEATABLE READ READ ONLY: one
 * snapshot for the whole file, and a read-only role (pledged_readonly) is
 * enough to run it.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "ctl.h"
#include "export.h"
#include "pledgectl.h"

/* Progress on a terminal every this many rows. */
#define PROGRESS_EVERY_ROWS 100000

static const char USAGE_HEAD[] =
    "usage: pledgectl export KIND [--from DATE] [--to DATE] [--status S[,S...]]...\n"
    "                        [--fund FUND]... [--out FILE|-] [--force] [--bom] [--crlf]\n"
    "       pledgectl export KIND --sql\n"
    "\n"
    "Write a finance CSV export (RFC 4180, UTF-8, header row; columns in\n"
    "docs/exports.md). Amounts are decimal strings by the currency's exponent,\n"
    "times ISO 8601 in the org time zone ([billing] timezone, default UTC).\n"
    "Text cells starting with = + - @ TAB or CR get a leading ' (formula\n"
    "injection); amounts, dates and ids never do.\n"
    "\n"
    "Kinds:\n";

static const char USAGE_TAIL[] =
    "\n"
    "Options:\n"
    "  --from DATE, --to DATE  inclusive org-local dates (YYYY-MM-DD); required\n"
    "                          for charges, refunds and summary\n"
    "  --status S[,S...]       only rows in these states (repeatable)\n"
    "  --fund FUND             only rows of this fund (repeatable)\n"
    "  --out FILE              write FILE whole or not at all (temporary file,\n"
    "                          fsync, then put in place; mode 0600). An existing\n"
    "                          FILE is refused (exit 4) unless --force.\n"
    "                          Default, or -: standard output\n"
    "  --force                 replace an existing FILE (atomically)\n"
    "  --bom                   start with a UTF-8 byte order mark (for Excel)\n"
    "  --crlf                  end rows with CR LF instead of LF\n"
    "  --sql                   print the COPY statement and exit (it reads its\n"
    "                          range and filters from pledged.export_* settings)\n"
    "\n"
    "Exit status: 0 ok, 1 failed, 2 usage, 4 FILE exists.\n";

static int usage(bool ok)
{
    FILE *out = ok ? stdout : stderr;
    fputs(USAGE_HEAD, out);
    for (size_t i = 0; pl_export_kinds[i]; i++) {
        const struct pl_export_kind *k = pl_export_kinds[i];
        fprintf(out, "  %-9s %s\n            range: %s\n", k->name, k->about, k->range_on);
        if (k->statuses) {
            fputs("            --status:", out);
            for (size_t j = 0; k->statuses[j]; j++)
                fprintf(out, "%s %s", j ? "," : "", k->statuses[j]);
            fputc('\n', out);
        }
    }
    fputs(USAGE_TAIL, out);
    return ok ? PL_EXIT_OK : PL_EXIT_USAGE;
}

struct progress {
    const char *kind;
    bool shown;
};

static void show_progress(uint64_t rows, void *arg)
{
    struct progress *p = arg;
    fprintf(stderr, "\rpledgectl: export %s: %llu rows", p->kind, (unsigned long long)rows);
    p->shown = true;
}

/* Append the comma-separated words of `text` to `list`, each checked
 * against the kind. 0 or PL_EXIT_USAGE (reported). */
static int add_statuses(const struct pl_export_kind *k, json_t *list, const char *text)
{
    char *copy = pl_xstrdup(text);
    int rc = 0;
    char *save = NULL;
    int n = 0;
    for (char *w = strtok_r(copy, ",", &save); w; w = strtok_r(NULL, ",", &save), n++) {
        if (!pl_export_kind_status_ok(k, w)) {
            ctl_error("--status: '%s' is not a status of the %s export (see pledgectl export "
                      "--help)",
                      w, k->name);
            rc = PL_EXIT_USAGE;
            break;
        }
        json_array_append_new(list, json_string(w));
    }
    if (rc == 0 && n == 0) {
        ctl_error("--status: no status given");
        rc = PL_EXIT_USAGE;
    }
    free(copy);
    return rc;
}

static char *dump(json_t *list)
{
    return json_array_size(list) ? json_dumps(list, JSON_COMPACT) : NULL;
}

int ctl_cmd_export(struct ctl *ctl, int argc, char **argv)
{
    if (argc < 2)
        return usage(false);
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0)
        return usage(true);
    const struct pl_export_kind *k = pl_export_kind_find(argv[1]);
    if (!k) {
        ctl_error("export: unknown kind '%s' (charges, refunds, donors, pledges, summary, "
                  "receipts)",
                  argv[1]);
        return PL_EXIT_USAGE;
    }
    argc--, argv++;

    static const struct option opts[] = {
        {"from", required_argument, NULL, 'F'},
        {"to", required_argument, NULL, 'T'},
        {"status", required_argument, NULL, 's'},
        {"fund", required_argument, NULL, 'f'},
        {"out", required_argument, NULL, 'o'},
        {"force", no_argument, NULL, 'x'},
        {"bom", no_argument, NULL, 'b'},
        {"crlf", no_argument, NULL, 'r'},
        {"sql", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *from = NULL, *to = NULL, *out = NULL;
    unsigned flags = 0;
    bool show_sql = false;
    json_t *statuses = json_array(), *funds = json_array();
    char *status_text = NULL, *fund_text = NULL;
    struct pl_export_sink *sink = NULL;
    int rc = PL_EXIT_USAGE, c;
    optind = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'F':
            from = optarg;
            break;
        case 'T':
            to = optarg;
            break;
        case 's':
            if (!(k->flags & PL_EXPORT_HAS_STATUS)) {
                ctl_error("--status: the %s export has no status to filter on", k->name);
                goto out;
            }
            if (add_statuses(k, statuses, optarg))
                goto out;
            break;
        case 'f': {
            if (!(k->flags & PL_EXPORT_HAS_FUND)) {
                ctl_error("--fund: the %s export has no fund to filter on", k->name);
                goto out;
            }
            json_t *s = json_string(optarg); /* NULL: not UTF-8 */
            if (!s || !*optarg) {
                ctl_error("--fund: '%s' is not a fund name", optarg);
                json_decref(s);
                goto out;
            }
            json_array_append_new(funds, s);
            break;
        }
        case 'o':
            out = optarg;
            break;
        case 'x':
            flags |= PL_EXPORT_FORCE;
            break;
        case 'b':
            flags |= PL_EXPORT_BOM;
            break;
        case 'r':
            flags |= PL_EXPORT_CRLF;
            break;
        case 'q':
            show_sql = true;
            break;
        case 'h':
            rc = usage(true);
            goto out;
        default:
            rc = usage(false);
            goto out;
        }
    }
    if (optind != argc) {
        ctl_error("export %s: unexpected argument '%s'", k->name, argv[optind]);
        goto out;
    }
    if (show_sql) {
        puts(k->copy_sql);
        rc = PL_EXIT_OK;
        goto out;
    }
    if ((k->flags & PL_EXPORT_RANGE_REQUIRED) && (!from || !to)) {
        ctl_error("export %s: --from DATE and --to DATE are required (inclusive org-local "
                  "dates)",
                  k->name);
        goto out;
    }
    if ((from && !pl_ctl_date_shape(from)) || (to && !pl_ctl_date_shape(to))) {
        ctl_error("%s: '%s' is not a date YYYY-MM-DD",
                  from && !pl_ctl_date_shape(from) ? "--from" : "--to",
                  from && !pl_ctl_date_shape(from) ? from : to);
        goto out;
    }
    if (from && to && strcmp(from, to) > 0) { /* same shape: text order is date order */
        ctl_error("--from %s is after --to %s", from, to);
        goto out;
    }
    if ((flags & PL_EXPORT_FORCE) && (!out || strcmp(out, "-") == 0)) {
        ctl_error("--force only applies to --out FILE");
        goto out;
    }

    /* The output first: an existing file is refused before any work. */
    bool to_file = out && strcmp(out, "-") != 0;
    int e = to_file ? pl_export_sink_open_file(out, flags, &sink)
                    : pl_export_sink_open_fd(STDOUT_FILENO, flags, &sink);
    if (e == -EEXIST) {
        ctl_error("--out: %s exists; pass --force to replace it", out);
        rc = PL_EXIT_CONFLICT;
        goto out;
    }
    if (e < 0) {
        ctl_error("--out: cannot write %s: %s", out ? out : "standard output", pl_strerror(e));
        rc = PL_EXIT_FAILED;
        goto out;
    }

    rc = PL_EXIT_FAILED;
    if (!ctl_db(ctl))
        goto out;
    if ((from && (rc = ctl_check_date(ctl, "--from", from))) ||
        (to && (rc = ctl_check_date(ctl, "--to", to))))
        goto out;
    rc = PL_EXIT_FAILED;
    if (PQsetClientEncoding(ctl->conn, "UTF8") != 0) {
        ctl_error("cannot set the client encoding to UTF-8");
        goto out;
    }
    PGresult *r = ctl_exec(ctl, "starting the export",
                           "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", 0, NULL);
    if (!r)
        goto out;
    PQclear(r);
    ctl->in_tx = true;
    status_text = dump(statuses);
    fund_text = dump(funds);
    const char *params[4] = {from, to, status_text, fund_text};
    r = ctl_exec(ctl, "setting the export range", PL_EXPORT_SETTINGS_SQL, 4, params);
    if (!r)
        goto out;
    PQclear(r);

    /* Progress only where a person watches and it cannot mix with the CSV. */
    struct progress prog = {.kind = k->name};
    bool tty = isatty(STDERR_FILENO) && (to_file || !isatty(STDOUT_FILENO));
    uint64_t rows = 0;
    char err[1024];
    e = pl_export_copy(ctl->conn, k->copy_sql, sink, tty ? show_progress : NULL,
                       PROGRESS_EVERY_ROWS, &prog, &rows, err, sizeof(err));
    if (prog.shown)
        fputc('\n', stderr);
    if (e < 0) {
        ctl_error("export %s: %s%s%s", k->name, err, to_file ? "; nothing was written to " : "",
                  to_file ? out : "");
        goto out;
    }
    if (ctl_commit(ctl))
        goto out;
    e = pl_export_sink_commit(sink);
    if (e == -EEXIST) {
        ctl_error("--out: %s appeared while exporting; nothing was written (pass --force to "
                  "replace it)",
                  out);
        rc = PL_EXIT_CONFLICT;
        goto out;
    }
    if (e < 0) {
        ctl_error("export %s: writing %s failed: %s%s", k->name, to_file ? out : "standard output",
                  pl_strerror(e), to_file ? "; nothing was written" : "");
        goto out;
    }
    if (isatty(STDERR_FILENO))
        fprintf(stderr, "pledgectl: export %s: %llu rows%s%s\n", k->name, (unsigned long long)rows,
                to_file ? " written to " : "", to_file ? out : "");
    rc = PL_EXIT_OK;
out:
    pl_export_sink_free(sink);
    free(status_text);
    free(fund_text);
    json_decref(statuses);
    json_decref(funds);
    return rc;
}
