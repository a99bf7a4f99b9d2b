/*
 * pledgectl receipts …: year-end tax receipts. The work is lib/receipts.c
 * (and the SQL of sql/007_receipts.sql); this file parses the command
 * line and prints.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "money.h"
#include "pledgectl.h"
#include "receipt_pdf.h"
#include "receipts.h"

#define YEAR_MIN 2000
#define YEAR_MAX 2200

static int parse_year(const char *s, int *out)
{
    int64_t v;
    if (pl_parse_i64(s, &v) < 0 || v < YEAR_MIN || v > YEAR_MAX) {
        ctl_error("--year: '%s' is not a tax year (%d..%d)", s, YEAR_MIN, YEAR_MAX);
        return PL_EXIT_USAGE;
    }
    *out = (int)v;
    return 0;
}

/* "2026-000123": four digits, a dash, six or more digits. */
static bool number_shape(const char *s)
{
    size_t n = strlen(s);
    if (n < 11 || s[4] != '-')
        return false;
    for (size_t i = 0; i < n; i++)
        if (i != 4 && (s[i] < '0' || s[i] > '9'))
            return false;
    return true;
}

static int check_number(const char *s)
{
    if (!number_shape(s)) {
        ctl_error("'%s' is not a receipt number (like 2026-000123)", s);
        return PL_EXIT_USAGE;
    }
    return 0;
}

/* Receipts need the [org] section: say every missing key at once. */
static int need_org(struct ctl *ctl)
{
    if (!ctl->have_cfg) {
        ctl_error("receipts need the [org] section of the config: pass --config FILE "
                  "(or set PLEDGED_CONFIG)");
        return PL_EXIT_FAILED;
    }
    char *errors = NULL;
    if (pl_config_check_org(&ctl->cfg, &errors) < 0) {
        fprintf(stderr, "%s", errors ? errors : "");
        if (errors && errors[0] && errors[strlen(errors) - 1] != '\n')
            fputc('\n', stderr);
        free(errors);
        ctl_error("cannot issue receipts until the [org] section is complete");
        return PL_EXIT_FAILED;
    }
    return 0;
}

/* ---- generate ------------------------------------------------------------ */

static const char GENERATE_USAGE[] =
    "usage: pledgectl receipts generate --year YEAR [--donor ID] [--out DIR] [--dry-run]\n"
    "\n"
    "Issue one receipt per donor and currency for the gifts of YEAR: charges that\n"
    "succeeded in that year (org-local date, [billing] timezone), net of refunds;\n"
    "fully refunded and charged-back gifts are left out. Idempotent: donors whose\n"
    "gifts did not change get nothing new. When a donor's gifts changed after\n"
    "issue (a refund, a late success), or a receipt was voided, a replacement with\n"
    "a new number cancels and replaces the old one. PDFs are written as\n"
    "DIR/NUMBER.pdf with a manifest-YEAR-TIME.csv for the mailing step.\n"
    "\n"
    "  --year YEAR   tax year (required)\n"
    "  --donor ID    only this donor\n"
    "  --out DIR     where files go (default: [org] receipt_dir)\n"
    "  --dry-run     say what would be done; change and write nothing\n";

struct progress {
    bool on;
    bool shown;
};

static void show_progress(void *arg, size_t done, size_t total)
{
    struct progress *p = arg;
    if (!p->on || total == 0)
        return;
    fprintf(stderr, "\rreceipts: %zu/%zu donors processed", done, total);
    p->shown = true;
}

static json_t *outcome_json(const struct pl_receipt_outcome *o)
{
    char total[PL_MONEY_FMT_MAX] = "";
    pl_money_format(o->total_minor, o->exponent, total, sizeof(total));
    json_t *j = json_object();
    json_object_set_new(j, "action", json_string(pl_receipt_action_name(o->action)));
    json_object_set_new(j, "number", o->number[0] ? json_string(o->number) : json_null());
    json_object_set_new(j, "replaces", o->old_number[0] && o->action != PL_RCPT_VOID
                                           ? json_string(o->old_number) : json_null());
    json_object_set_new(j, "voided", o->old_number[0] && o->action == PL_RCPT_VOID
                                         ? json_string(o->old_number) : json_null());
    json_object_set_new(j, "donor_id", json_integer(o->donor_id));
    json_object_set_new(j, "donor_name", json_string(o->donor_name ? o->donor_name : ""));
    json_object_set_new(j, "email", o->email ? json_string(o->email) : json_null());
    json_object_set_new(j, "currency", json_string(o->currency));
    json_object_set_new(j, "total_minor", json_integer(o->total_minor));
    json_object_set_new(j, "total", json_string(total));
    json_object_set_new(j, "file", o->file ? json_string(o->file) : json_null());
    json_object_set_new(j, "sha256", o->sha256[0] ? json_string(o->sha256) : json_null());
    json_object_set_new(j, "reason", o->reason ? json_string(o->reason) : json_null());
    json_object_set_new(j, "restored", json_boolean(o->restored));
    return j;
}

static void print_summary(struct ctl *ctl, const struct pl_receipts_opts *o,
                          const struct pl_receipts_run *run, bool failed)
{
    if (ctl->json) {
        json_t *j = json_object();
        json_object_set_new(j, "tax_year", json_integer(o->tax_year));
        json_object_set_new(j, "dry_run", json_boolean(o->dry_run));
        json_object_set_new(j, "complete", json_boolean(!failed));
        json_object_set_new(j, "out_dir", json_string(o->out_dir));
        json_t *c = json_object();
        for (int a = 0; a < PL_RCPT_NACTIONS; a++)
            json_object_set_new(c, pl_receipt_action_name((enum pl_receipt_action)a),
                                json_integer((json_int_t)run->count[a]));
        json_object_set_new(c, "restored", json_integer((json_int_t)run->restored));
        json_object_set_new(j, "counts", c);
        json_object_set_new(j, "manifest", run->manifest ? json_string(run->manifest)
                                                         : json_null());
        json_t *arr = json_array();
        for (size_t i = 0; i < run->n; i++)
            json_array_append_new(arr, outcome_json(&run->items[i]));
        json_object_set_new(j, "receipts", arr);
        ctl_print_json(j);
        return;
    }
    const char *would = o->dry_run ? "would be " : "";
    printf("Receipts for %d%s%s\n", o->tax_year, o->dry_run ? " (dry run: nothing changed or written)" : "",
           failed ? " (stopped early: see the error)" : "");
    printf("  %-10s %6zu  new receipts %sissued\n", "issued", run->count[PL_RCPT_ISSUE], would);
    printf("  %-10s %6zu  %svoided and reissued with a new number\n", "replaced",
           run->count[PL_RCPT_REPLACE], would);
    for (size_t i = 0; i < run->n; i++) {
        const struct pl_receipt_outcome *r = &run->items[i];
        if (r->action == PL_RCPT_REPLACE)
            printf("               %s -> %s  donor %lld (%s) %s\n",
                   r->old_number[0] ? r->old_number : "?", r->number[0] ? r->number : "(new)",
                   (long long)r->donor_id, r->donor_name ? r->donor_name : "", r->currency);
    }
    printf("  %-10s %6zu  %svoided, no eligible gifts remain\n", "voided",
           run->count[PL_RCPT_VOID], would);
    for (size_t i = 0; i < run->n; i++) {
        const struct pl_receipt_outcome *r = &run->items[i];
        if (r->action == PL_RCPT_VOID)
            printf("               %s  donor %lld (%s) %s\n", r->old_number,
                   (long long)r->donor_id, r->donor_name ? r->donor_name : "", r->currency);
    }
    printf("  %-10s %6zu  up to date, nothing new", "unchanged", run->count[PL_RCPT_UNCHANGED]);
    if (run->restored)
        printf(" (%zu missing file%s written again from the snapshot)", run->restored,
               run->restored == 1 ? "" : "s");
    printf("\n");
    printf("  %-10s %6zu%s\n", "skipped", run->count[PL_RCPT_SKIP],
           run->count[PL_RCPT_SKIP] ? "  not issued, fix and run again:" : "");
    for (size_t i = 0; i < run->n; i++) {
        const struct pl_receipt_outcome *r = &run->items[i];
        if (r->action == PL_RCPT_SKIP)
            printf("               donor %lld (%s) %s: %s\n", (long long)r->donor_id,
                   r->donor_name ? r->donor_name : "", r->currency, r->reason ? r->reason : "");
    }
    for (size_t i = 0; i < run->n; i++) {
        const struct pl_receipt_outcome *r = &run->items[i];
        if (r->restored && r->reason)
            printf("  warning: %s: %s\n", r->number, r->reason);
    }
    if (!o->dry_run) {
        size_t files = run->count[PL_RCPT_ISSUE] + run->count[PL_RCPT_REPLACE] + run->restored;
        printf("Files: %zu written to %s\n", files, o->out_dir);
        if (run->manifest)
            printf("Manifest: %s\n", run->manifest);
    }
}

static int receipts_generate(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"year", required_argument, NULL, 'y'}, {"donor", required_argument, NULL, 'd'},
        {"out", required_argument, NULL, 'o'},  {"dry-run", no_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},       {NULL, 0, NULL, 0},
    };
    struct pl_receipts_opts o = {0};
    char donor[24] = "";
    int c, rc;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'y':
            if ((rc = parse_year(optarg, &o.tax_year)))
                return rc;
            break;
        case 'd':
            if ((rc = ctl_parse_id("--donor", optarg, donor)))
                return rc;
            break;
        case 'o':
            if (!optarg[0]) {
                ctl_error("--out: empty directory name");
                return PL_EXIT_USAGE;
            }
            o.out_dir = optarg;
            break;
        case 'n': o.dry_run = true; break;
        case 'h': return ctl_usage(GENERATE_USAGE, true);
        default: return ctl_usage(GENERATE_USAGE, false);
        }
    }
    if (optind < argc || o.tax_year == 0) {
        if (o.tax_year == 0)
            ctl_error("generate: --year is required");
        return ctl_usage(GENERATE_USAGE, false);
    }
    if ((rc = need_org(ctl)))
        return rc;
    if (!ctl_db(ctl))
        return PL_EXIT_FAILED;
    if (donor[0]) {
        char id[24];
        if ((rc = ctl_resolve_donor(ctl, donor, NULL, id)))
            return rc;
        pl_parse_i64(id, &o.donor_id);
    }
    if (!o.out_dir)
        o.out_dir = ctl->cfg.org.receipt_dir;
    o.actor = ctl->actor;
    o.timezone = ctl->tz;
    o.cfg = &ctl->cfg;
    struct progress prog = {.on = !ctl->json && isatty(STDERR_FILENO)};
    o.progress = show_progress;
    o.progress_arg = &prog;

    struct pl_receipts_run *run = NULL;
    char err[1024] = "";
    int r = pl_receipts_generate(ctl->conn, &o, &run, err, sizeof(err));
    if (prog.shown)
        fputc('\n', stderr);
    print_summary(ctl, &o, run, r < 0);
    pl_receipts_run_free(run);
    if (r < 0) {
        ctl_error("receipts generate: %s", err);
        return PL_EXIT_FAILED;
    }
    return PL_EXIT_OK;
}

/* ---- list ------------------------------------------------------------------ */

static const char LIST_USAGE[] =
    "usage: pledgectl receipts list [--year YEAR] [--donor ID] [--status issued|void]\n"
    "\n"
    "List receipts by number, with what each replaces or was replaced by.\n";

static int receipts_list(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"year", required_argument, NULL, 'y'},   {"donor", required_argument, NULL, 'd'},
        {"status", required_argument, NULL, 's'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char year[8] = "", donor[24] = "";
    const char *status = NULL;
    int c, rc, y;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'y':
            if ((rc = parse_year(optarg, &y)))
                return rc;
            snprintf(year, sizeof(year), "%d", y);
            break;
        case 'd':
            if ((rc = ctl_parse_id("--donor", optarg, donor)))
                return rc;
            break;
        case 's':
            if (strcmp(optarg, "issued") != 0 && strcmp(optarg, "void") != 0) {
                ctl_error("--status: '%s' is not issued or void", optarg);
                return PL_EXIT_USAGE;
            }
            status = optarg;
            break;
        case 'h': return ctl_usage(LIST_USAGE, true);
        default: return ctl_usage(LIST_USAGE, false);
        }
    }
    if (optind < argc)
        return ctl_usage(LIST_USAGE, false);
    if (!ctl_db(ctl))
        return PL_EXIT_FAILED;
    const char *p[3] = {year[0] ? year : NULL, donor[0] ? donor : NULL, status};
    PGresult *r = ctl_exec(
        ctl, "listing receipts",
        "SELECT r.number, r.tax_year, r.status, r.donor_id, "
        " r.donor_snapshot->>'full_name' AS donor_name, r.currency, cu.exponent, r.total_minor, "
        " (SELECT count(*) FROM receipt_line l WHERE l.receipt_id = r.id) AS gifts, "
        " rp.number AS replaces, rn.number AS replaced_by, r.issued_at, r.voided_at, r.file_name "
        "FROM receipt r JOIN currency cu ON cu.code = r.currency "
        "LEFT JOIN receipt rp ON rp.id = r.replaces_id "
        "LEFT JOIN receipt rn ON rn.replaces_id = r.id "
        "WHERE ($1::integer IS NULL OR r.tax_year = $1::integer) "
        "AND ($2::bigint IS NULL OR r.donor_id = $2::bigint) AND ($3::text IS NULL OR r.status = $3) "
        "ORDER BY r.tax_year, r.number",
        3, p);
    return ctl_print_rows(ctl, r);
}

/* ---- show ------------------------------------------------------------------ */

static const char SHOW_USAGE[] =
    "usage: pledgectl receipts show NUMBER [--pdf FILE]\n"
    "\n"
    "Show a receipt as it was issued (donor and organisation as frozen at issue\n"
    "time) with its gifts. --pdf renders it again from that snapshot into FILE.\n";

static int write_pdf(struct ctl *ctl, const char *number, const char *path)
{
    unsigned char *pdf;
    size_t len;
    char err[512], stored[65], sha[65];
    int r = pl_receipts_render(ctl->conn, number, &pdf, &len, stored, err, sizeof(err));
    if (r < 0) {
        ctl_error("%s", err);
        return r == PL_ENOTFOUND ? PL_EXIT_NOTFOUND : PL_EXIT_FAILED;
    }
    pl_receipts_sha256(pdf, len, sha);
    char *dir = pl_xstrdup(path);
    char *slash = strrchr(dir, '/');
    const char *base = path;
    if (slash) {
        *slash = '\0';
        base = slash + 1;
    }
    int dirfd = open(slash ? (dir[0] ? dir : "/") : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = dirfd < 0 ? -errno : pl_receipts_write_file(dirfd, base, pdf, len, false);
    if (dirfd >= 0)
        close(dirfd);
    free(dir);
    free(pdf);
    if (rc < 0) {
        ctl_error("--pdf: cannot write %s: %s", path, strerror(-rc));
        return PL_EXIT_FAILED;
    }
    if (stored[0] && strcmp(stored, sha) != 0)
        fprintf(stderr, "pledgectl: warning: %s differs from the file issued (sha256 %s, now "
                        "%s)\n",
                path, stored, sha);
    return 0;
}

static const char SHOW_SQL_HEAD[] =
    "SELECT r.number, r.status, r.tax_year, r.donor_id, "
    " r.donor_snapshot->>'full_name' AS donor_name, r.donor_snapshot->>'email' AS email, "
    " concat_ws(', ', nullif(r.donor_snapshot->>'address_line1', ''), "
    "   nullif(r.donor_snapshot->>'address_line2', ''), nullif(r.donor_snapshot->>'city', ''), "
    "   nullif(r.donor_snapshot->>'region', ''), nullif(r.donor_snapshot->>'postal_code', ''), "
    "   nullif(r.donor_snapshot->>'country', '')) AS donor_address, "
    " r.currency, cu.exponent, r.total_minor, r.issued_at, "
    " r.org_snapshot->>'legal_name' AS issuer, r.org_snapshot->>'jurisdiction' AS jurisdiction, "
    " rp.number AS replaces, rn.number AS replaced_by, r.voided_at, r.void_reason, "
    " r.file_name, r.sha256";
static const char SHOW_SQL_TAIL[] =
    "FROM receipt r JOIN currency cu ON cu.code = r.currency "
    "LEFT JOIN receipt rp ON rp.id = r.replaces_id "
    "LEFT JOIN receipt rn ON rn.replaces_id = r.id WHERE r.number = $1";

static int receipts_show(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"pdf", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *pdf = NULL;
    int c, rc;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'p': pdf = optarg; break;
        case 'h': return ctl_usage(SHOW_USAGE, true);
        default: return ctl_usage(SHOW_USAGE, false);
        }
    }
    if (optind != argc - 1)
        return ctl_usage(SHOW_USAGE, false);
    const char *number = argv[optind];
    if ((rc = check_number(number)))
        return rc;
    if (!ctl_db(ctl))
        return PL_EXIT_FAILED;
    const char *p[1] = {number};
    /* the snapshots in full are for programs; people get the columns */
    char sql[2048];
    snprintf(sql, sizeof(sql), "%s%s%s", SHOW_SQL_HEAD,
             ctl->json ? ", r.donor_snapshot, r.org_snapshot " : " ", SHOW_SQL_TAIL);
    PGresult *r = ctl_exec(ctl, "reading the receipt", sql, 1, p);
    if (!r)
        return PL_EXIT_FAILED;
    if (PQntuples(r) == 0) {
        PQclear(r);
        ctl_error("no receipt with number %s", number);
        return PL_EXIT_NOTFOUND;
    }
    PGresult *lines = ctl_exec(ctl, "reading the gifts",
                               "SELECT l.charge_id, l.received_on, l.amount_minor, cu.exponent, "
                               "r.currency FROM receipt_line l "
                               "JOIN receipt r ON r.id = l.receipt_id "
                               "JOIN currency cu ON cu.code = r.currency "
                               "WHERE r.number = $1 ORDER BY l.received_on, l.charge_id",
                               1, p);
    if (!lines) {
        PQclear(r);
        return PL_EXIT_FAILED;
    }
    if (ctl->json) {
        json_t *j = ctl_result_row_json(r, 0);
        json_object_set_new(j, "gifts", ctl_result_json(lines));
        ctl_print_json(j);
    } else {
        ctl_print_record(ctl, r);
        printf("\n");
        ctl_print_result(ctl, lines);
    }
    PQclear(lines);
    PQclear(r);
    if (pdf)
        return write_pdf(ctl, number, pdf);
    return PL_EXIT_OK;
}

/* ---- void ------------------------------------------------------------------- */

static const char VOID_USAGE[] =
    "usage: pledgectl receipts void NUMBER --reason TEXT\n"
    "\n"
    "Cancel an issued receipt (it is kept, marked void). The next `receipts\n"
    "generate` for its year issues a replacement with a new number that says it\n"
    "cancels and replaces this one, if the donor still has eligible gifts.\n";

static int receipts_void(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"reason", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *reason = NULL;
    int c, rc;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'r': reason = optarg; break;
        case 'h': return ctl_usage(VOID_USAGE, true);
        default: return ctl_usage(VOID_USAGE, false);
        }
    }
    if (optind != argc - 1)
        return ctl_usage(VOID_USAGE, false);
    const char *number = argv[optind];
    if ((rc = check_number(number)))
        return rc;
    if (!reason || !reason[0]) {
        ctl_error("void: --reason is required (it is kept with the receipt)");
        return PL_EXIT_USAGE;
    }
    if (!ctl_check_text("--reason", reason))
        return PL_EXIT_USAGE;
    if (!ctl_db(ctl))
        return PL_EXIT_FAILED;
    const char *p[1] = {number};
    PGresult *r = ctl_exec(ctl, "looking up the receipt",
                           "SELECT tax_year, status, donor_id FROM receipt WHERE number = $1", 1, p);
    if (!r)
        return PL_EXIT_FAILED;
    if (PQntuples(r) == 0) {
        PQclear(r);
        ctl_error("no receipt with number %s", number);
        return PL_EXIT_NOTFOUND;
    }
    char year[8], donor[24];
    pl_strlcpy(year, PQgetvalue(r, 0, 0), sizeof(year));
    pl_strlcpy(donor, PQgetvalue(r, 0, 2), sizeof(donor));
    PQclear(r);

    if ((rc = ctl_begin(ctl)))
        return rc;
    const char *lp[1] = {year};
    r = ctl_exec(ctl, "taking the receipts lock", "SELECT pl_receipt_lock($1::integer)", 1, lp);
    if (!r)
        return PL_EXIT_FAILED;
    PQclear(r);
    const char *q[2] = {number, reason};
    r = ctl_exec(ctl, "voiding the receipt",
                 "UPDATE receipt SET status = 'void', voided_at = pl_now(), void_reason = $2 "
                 "WHERE number = $1 AND status = 'issued' RETURNING id",
                 2, q);
    if (!r)
        return PL_EXIT_FAILED;
    if (PQntuples(r) == 0) {
        PQclear(r);
        ctl_error("receipt %s is already void", number);
        return PL_EXIT_CONFLICT;
    }
    char id[24];
    pl_strlcpy(id, PQgetvalue(r, 0, 0), sizeof(id));
    PQclear(r);
    json_t *d = json_pack("{s:s,s:s}", "number", number, "reason", reason);
    if ((rc = ctl_event(ctl, "receipt", id, "voided", d)) || (rc = ctl_commit(ctl)))
        return rc;
    if (ctl->json) {
        json_t *j = json_pack("{s:s,s:s,s:s}", "number", number, "status", "void", "reason",
                              reason);
        ctl_print_json(j);
    } else {
        printf("receipt %s voided; `pledgectl receipts generate --year %s --donor %s` issues "
               "its replacement\n",
               number, year, donor);
    }
    return PL_EXIT_OK;
}

int ctl_cmd_receipts(struct ctl *ctl, int argc, char **argv)
{
    static const struct ctl_verb verbs[] = {
        {"generate", receipts_generate, "issue, replace and void receipts for a tax year"},
        {"list", receipts_list, "list receipts"},
        {"show", receipts_show, "show a receipt as issued (optionally render its PDF again)"},
        {"void", receipts_void, "cancel a receipt; generate then issues its replacement"},
    };
    return ctl_dispatch(ctl, "receipts", "Year-end tax receipts (PDF), numbered per tax year.",
                        verbs, PL_ARRAY_LEN(verbs), argc, argv);
}
