/*
 * pledgectl pledge …: create, inspect and change pledges. Schedule rules are
 * PostgreSQL's (pl_period_on_or_after, pl_today); this file never does
 * calendar arithmetic.
 *
 * Pause and cancel end the pledge's scheduled and retry_wait charges as
 * `cancelled` (an event per charge records why); a charge already
 * processing finishes, and an unknown outcome is left to the reconciler.
 * Resume and reactivation restart at the next anchor date on or after
 * today: no back-charging.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "money.h"
#include "pledgectl.h"

int ctl_parse_amount(const char *text, const char *code, int exp, int64_t *out, char *why,
                     size_t n)
{
    const char *reason;
    int r = pl_money_parse(text, exp, 0, out, &reason);
    if (r == 0)
        return 0;
    if (strstr(reason, "more decimals") || strstr(reason, "no minor units"))
        snprintf(why, n, "%s has more decimals than %s allows (%d)", text, code, exp);
    else
        snprintf(why, n, "'%s': %s", text, reason);
    return PL_EINVAL;
}

int ctl_donor_default_method(struct ctl *ctl, const char *donor_id, char id[24])
{
    const char *p[1] = {donor_id};
    PGresult *r = ctl_exec(ctl, "finding the donor's payment method",
                           "SELECT id FROM payment_method WHERE donor_id = $1::bigint "
                           "AND status = 'active' ORDER BY created_at DESC, id DESC LIMIT 1",
                           1, p);
    if (!r)
        return PL_EXIT_FAILED;
    pl_strlcpy(id, PQntuples(r) ? PQgetvalue(r, 0, 0) : "", 24);
    PQclear(r);
    return 0;
}

int ctl_pledge_insert(struct ctl *ctl, const struct ctl_pledge *pl, char id[24])
{
    char months[8];
    snprintf(months, sizeof(months), "%d", pl->interval_months);
    const char *p[11] = {
        pl->donor_id, pl->method_id,  pl->external_ref, pl->amount_minor,
        pl->currency, months,         pl->anchor,       pl->fund ? pl->fund : "general",
        pl->start,    pl->end,        ctl->tz,
    };
    PGresult *r = ctl_exec(
        ctl, "creating the pledge",
        "INSERT INTO pledge (donor_id, payment_method_id, external_ref, amount_minor, currency, "
        " interval_months, anchor_day, fund, status, start_on, end_on, next_charge_on, "
        " created_at, updated_at) "
        "SELECT $1::bigint, $2::bigint, $3, $4::bigint, $5, $6::smallint, a.anchor, $8, "
        " CASE WHEN $2::bigint IS NULL THEN 'needs_payment_method' ELSE 'active' END, "
        " s.start_on, $10::date, "
        " pl_period_on_or_after(a.anchor, greatest(s.start_on, pl_today($11))), "
        " pl_now(), pl_now() "
        "FROM (SELECT coalesce($9::date, pl_today($11)) AS start_on) s "
        "CROSS JOIN LATERAL (SELECT CASE WHEN $7::int IS NULL "
        " THEN extract(day FROM s.start_on)::int WHEN $7::int = 0 THEN NULL "
        " ELSE $7::int END AS anchor) a "
        "RETURNING id",
        11, p);
    if (!r)
        return ctl->db_exit;
    pl_strlcpy(id, PQgetvalue(r, 0, 0), 24);
    PQclear(r);
    return 0;
}

static const char PLEDGE_SQL[] =
    "SELECT p.id, p.external_ref, p.donor_id, d.full_name AS donor_name, p.status, "
    "p.amount_minor, p.currency, c.exponent, "
    "CASE p.interval_months WHEN 1 THEN 'monthly' WHEN 3 THEN 'quarterly' "
    "WHEN 6 THEN 'semiannual' ELSE 'annual' END AS interval, "
    "coalesce(p.anchor_day::text, 'last') AS anchor, p.fund, "
    "p.payment_method_id AS method_id, p.next_charge_on, p.start_on, p.end_on, "
    "p.failed_periods, p.created_at, p.updated_at, p.cancelled_at, p.cancel_reason "
    "FROM pledge p JOIN donor d ON d.id = p.donor_id JOIN currency c ON c.code = p.currency "
    "WHERE p.id = $1::bigint";

static const char PLEDGE_CHARGES_SQL[] =
    "SELECT ch.id, ch.period, ch.status, ch.amount_minor, ch.refunded_minor, ch.currency, "
    "c.exponent, ch.dunning_attempts, ch.next_attempt_at, ch.failure_code, ch.decline_code, "
    "ch.succeeded_at FROM charge ch JOIN currency c ON c.code = ch.currency "
    "WHERE ch.pledge_id = $1::bigint ORDER BY ch.period DESC, ch.id DESC";

/* ---- create ------------------------------------------------------------- */

static const char CREATE_USAGE[] =
    "usage: pledgectl pledge create --donor ID|--donor-ref REF --amount AMOUNT\n"
    "                               --currency CUR [--interval INTERVAL]\n"
    "                               [--anchor 1..31|last] [--fund FUND] [--start DATE]\n"
    "                               [--end DATE] [--method ID] [--ref REF]\n"
    "\n"
    "Create a pledge. AMOUNT is a decimal in the currency's units (25.00 USD,\n"
    "2500 JPY). INTERVAL: monthly (default), quarterly, semiannual, annual.\n"
    "--anchor: the day of the month charged (default: the start date's day; 'last'\n"
    "for the month's last day; 31 means the 30th in April). --start defaults to\n"
    "today in the org's time zone; the first charge is the first anchor date on or\n"
    "after the later of --start and today. --method defaults to the donor's\n"
    "newest active payment method; without one the pledge starts as\n"
    "needs_payment_method.\n";

/* Start a change of pledge `id`: connect, BEGIN, lock the row. Columns:
 * status, donor_id, currency, exponent, amount_minor, payment_method_id,
 * anchor_day. *out (new) is the row; the caller clears it. */
static int begin_pledge_change(struct ctl *ctl, const char *id, PGresult **out)
{
    if (!ctl_db(ctl) || ctl_begin(ctl))
        return PL_EXIT_FAILED;
    const char *p[1] = {id};
    PGresult *r = ctl_exec(ctl, "reading the pledge",
                           "SELECT p.status, p.donor_id, p.currency, c.exponent, p.amount_minor, "
                           "p.payment_method_id, p.anchor_day FROM pledge p "
                           "JOIN currency c ON c.code = p.currency WHERE p.id = $1::bigint "
                           "FOR UPDATE OF p",
                           1, p);
    if (!r)
        return PL_EXIT_FAILED;
    if (PQntuples(r) == 0) {
        PQclear(r);
        ctl_error("no pledge with id %s", id);
        return PL_EXIT_NOTFOUND;
    }
    *out = r;
    return 0;
}

/* A method usable for the donor's pledge: 0, 3 (no such method), 4 (other
 * donor's or invalid). */
static int check_method(struct ctl *ctl, const char *method, const char *donor)
{
    const char *p[1] = {method};
    PGresult *r = ctl_exec(ctl, "reading the payment method",
                           "SELECT donor_id, status FROM payment_method WHERE id = $1::bigint", 1,
                           p);
    if (!r)
        return PL_EXIT_FAILED;
    int rc = 0;
    if (PQntuples(r) == 0) {
        ctl_error("--method: no payment method with id %s", method);
        rc = PL_EXIT_NOTFOUND;
    } else if (strcmp(PQgetvalue(r, 0, 0), donor) != 0) {
        ctl_error("--method: payment method %s belongs to donor %s, not donor %s", method,
                  PQgetvalue(r, 0, 0), donor);
        rc = PL_EXIT_CONFLICT;
    } else if (strcmp(PQgetvalue(r, 0, 1), "active") != 0) {
        ctl_error("--method: payment method %s is %s", method, PQgetvalue(r, 0, 1));
        rc = PL_EXIT_CONFLICT;
    }
    PQclear(r);
    return rc;
}

static int print_pledge_done(struct ctl *ctl, const char *id, const char *what)
{
    if (ctl->json) {
        const char *p[1] = {id};
        PGresult *r = ctl_exec(ctl, "reading the pledge", PLEDGE_SQL, 1, p);
        if (!r)
            return PL_EXIT_FAILED;
        ctl_print_json(ctl_result_row_json(r, 0));
        PQclear(r);
    } else if (ctl->mode == PL_TABLE_ALIGNED) {
        printf("pledge %s %s\n", id, what);
    } else {
        printf("%s\n", id);
    }
    return PL_EXIT_OK;
}

static int pledge_create(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"donor", required_argument, NULL, 'd'},    {"donor-ref", required_argument, NULL, 'D'},
        {"amount", required_argument, NULL, 'a'},   {"currency", required_argument, NULL, 'c'},
        {"interval", required_argument, NULL, 'i'}, {"anchor", required_argument, NULL, 'A'},
        {"fund", required_argument, NULL, 'f'},     {"start", required_argument, NULL, 's'},
        {"end", required_argument, NULL, 'e'},      {"method", required_argument, NULL, 'm'},
        {"ref", required_argument, NULL, 'r'},      {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *donor = NULL, *donor_ref = NULL, *amount = NULL, *currency = NULL;
    const char *interval = "monthly", *anchor = NULL, *method = NULL;
    struct ctl_pledge pl = {0};
    int c, rc;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': donor = optarg; break;
        case 'D': donor_ref = optarg; break;
        case 'a': amount = optarg; break;
        case 'c': currency = optarg; break;
        case 'i': interval = optarg; break;
        case 'A': anchor = optarg; break;
        case 'f': pl.fund = optarg; break;
        case 's': pl.start = optarg; break;
        case 'e': pl.end = optarg; break;
        case 'm': method = optarg; break;
        case 'r': pl.external_ref = optarg; break;
        case 'h': return ctl_usage(CREATE_USAGE, true);
        default: return ctl_usage(CREATE_USAGE, false);
        }
    }
    if (optind < argc)
        return ctl_usage(CREATE_USAGE, false);
    if (!donor == !donor_ref) {
        ctl_error("pledge create: give exactly one of --donor ID or --donor-ref REF");
        return PL_EXIT_USAGE;
    }
    if (!amount || !currency) {
        ctl_error("pledge create: %s is required", !amount ? "--amount" : "--currency");
        return PL_EXIT_USAGE;
    }
    if (pl_ctl_parse_interval(interval, &pl.interval_months) < 0) {
        ctl_error("--interval: '%s' is not monthly, quarterly, semiannual or annual", interval);
        return PL_EXIT_USAGE;
    }
    char anchor_buf[8];
    if (anchor) {
        int a;
        if (pl_ctl_parse_anchor(anchor, &a) < 0) {
            ctl_error("--anchor: '%s' is not a day of the month 1..31 or 'last'", anchor);
            return PL_EXIT_USAGE;
        }
        snprintf(anchor_buf, sizeof(anchor_buf), "%d", a);
        pl.anchor = anchor_buf;
    }
    if (pl.start && !pl_ctl_date_shape(pl.start)) {
        ctl_error("--start: '%s' is not a date YYYY-MM-DD", pl.start);
        return PL_EXIT_USAGE;
    }
    if (pl.end && !pl_ctl_date_shape(pl.end)) {
        ctl_error("--end: '%s' is not a date YYYY-MM-DD", pl.end);
        return PL_EXIT_USAGE;
    }
    if (pl.fund && (!*pl.fund || strlen(pl.fund) > 100 || !ctl_check_text("--fund", pl.fund))) {
        if (pl.fund && (!*pl.fund || strlen(pl.fund) > 100))
            ctl_error("--fund: must be 1 to 100 characters");
        return PL_EXIT_USAGE;
    }
    if (pl.external_ref &&
        (!*pl.external_ref || !ctl_check_text("--ref", pl.external_ref))) {
        if (!*pl.external_ref)
            ctl_error("--ref: must not be empty");
        return PL_EXIT_USAGE;
    }
    char mid[24] = "";
    if (method && (rc = ctl_parse_id("--method", method, mid)))
        return rc;
    if (!ctl_db(ctl))
        return PL_EXIT_FAILED;
    if ((pl.start && (rc = ctl_check_date(ctl, "--start", pl.start))) ||
        (pl.end && (rc = ctl_check_date(ctl, "--end", pl.end))))
        return rc;
    int exp;
    if ((rc = ctl_currency_exponent(ctl, "--currency", currency, &exp)))
        return rc;
    int64_t minor;
    char why[200];
    if (ctl_parse_amount(amount, currency, exp, &minor, why, sizeof(why)) < 0) {
        ctl_error("--amount: %s", why);
        return PL_EXIT_USAGE;
    }
    snprintf(pl.amount_minor, sizeof(pl.amount_minor), "%lld", (long long)minor);
    pl.currency = currency;
    if ((rc = ctl_begin(ctl)))
        return rc;
    char did[24], id[24];
    if ((rc = ctl_resolve_donor(ctl, donor, donor_ref, did)))
        return rc;
    pl.donor_id = did;
    if (mid[0]) {
        if ((rc = check_method(ctl, mid, did)))
            return rc;
    } else if ((rc = ctl_donor_default_method(ctl, did, mid))) {
        return rc;
    }
    pl.method_id = mid[0] ? mid : NULL;
    if (pl.external_ref) {
        const char *p[1] = {pl.external_ref};
        PGresult *r = ctl_exec(ctl, "checking the external ref",
                               "SELECT id FROM pledge WHERE external_ref = $1", 1, p);
        if (!r)
            return PL_EXIT_FAILED;
        if (PQntuples(r)) {
            ctl_error("--ref: a pledge with external ref '%s' already exists (id %s)",
                      pl.external_ref, PQgetvalue(r, 0, 0));
            PQclear(r);
            return PL_EXIT_CONFLICT;
        }
        PQclear(r);
    }
    if ((rc = ctl_pledge_insert(ctl, &pl, id)))
        return rc;
    json_t *detail = json_pack("{s:s,s:s,s:s}", "donor_id", did, "amount_minor",
                               pl.amount_minor, "currency", currency);
    if ((rc = ctl_event(ctl, "pledge", id, "created", detail)) || (rc = ctl_commit(ctl)))
        return rc;
    if (!pl.method_id)
        fprintf(stderr,
                "pledgectl: warning: donor %s has no active payment method; pledge %s "
                "needs one before it can be charged (pledge set-method)\n",
                did, id);
    return print_pledge_done(ctl, id, "created");
}

/* ---- show / list -------------------------------------------------------- */

static const char SHOW_USAGE[] =
    "usage: pledgectl pledge show ID | --by-ref REF\n"
    "\n"
    "Show a pledge and its charges, newest period first.\n";

static int pledge_show(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"by-ref", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *by_ref = NULL;
    int c, rc;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'r')
            by_ref = optarg;
        else
            return ctl_usage(SHOW_USAGE, c == 'h');
    }
    if ((by_ref && optind != argc) || (!by_ref && optind != argc - 1))
        return ctl_usage(SHOW_USAGE, false);
    char id[24];
    if (!by_ref && (rc = ctl_parse_id("pledge id", argv[optind], id)))
        return rc;
    if (!ctl_db(ctl))
        return PL_EXIT_FAILED;
    if (by_ref) {
        const char *p[1] = {by_ref};
        PGresult *r = ctl_exec(ctl, "looking up the pledge",
                               "SELECT id FROM pledge WHERE external_ref = $1", 1, p);
        if (!r)
            return PL_EXIT_FAILED;
        if (PQntuples(r) == 0) {
            PQclear(r);
            ctl_error("no pledge with external ref '%s'", by_ref);
            return PL_EXIT_NOTFOUND;
        }
        pl_strlcpy(id, PQgetvalue(r, 0, 0), sizeof(id));
        PQclear(r);
    }
    const char *p[1] = {id};
    PGresult *pr = ctl_exec(ctl, "reading the pledge", PLEDGE_SQL, 1, p);
    if (!pr)
        return PL_EXIT_FAILED;
    if (PQntuples(pr) == 0) {
        PQclear(pr);
        ctl_error("no pledge with id %s", id);
        return PL_EXIT_NOTFOUND;
    }
    PGresult *cr = ctl_exec(ctl, "reading the charges", PLEDGE_CHARGES_SQL, 1, p);
    if (!cr) {
        PQclear(pr);
        return PL_EXIT_FAILED;
    }
    if (ctl->json) {
        json_t *o = ctl_result_row_json(pr, 0);
        json_object_set_new(o, "charges", ctl_result_json(cr));
        ctl_print_json(o);
    } else {
        bool tty = ctl->mode == PL_TABLE_ALIGNED;
        ctl_print_record(ctl, pr);
        printf(tty ? "\nCharges:\n" : "\n# charges\n");
        if (PQntuples(cr) || !tty)
            ctl_print_result(ctl, cr);
        else
            printf("  (none)\n");
    }
    PQclear(pr);
    PQclear(cr);
    return PL_EXIT_OK;
}

static const char *const PLEDGE_STATUSES[] = {
    "active", "paused", "past_due", "needs_payment_method", "lapsed", "cancelled",
};

static bool in_list(const char *s, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, list[i]) == 0)
            return true;
    return false;
}

static const char LIST_USAGE[] =
    "usage: pledgectl pledge list [--donor ID|--donor-ref REF] [--status STATUS]\n"
    "                             [--fund FUND] [--limit N] [--offset N]\n"
    "\n"
    "List pledges by id. STATUS: active, paused, past_due, needs_payment_method,\n"
    "lapsed, cancelled. Default limit 100; --limit 0 lists all.\n";

static int pledge_list(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"donor", required_argument, NULL, 'd'},  {"donor-ref", required_argument, NULL, 'D'},
        {"status", required_argument, NULL, 's'}, {"fund", required_argument, NULL, 'f'},
        {"limit", required_argument, NULL, 'l'},  {"offset", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    const char *donor = NULL, *donor_ref = NULL, *status = NULL, *fund = NULL;
    char limit[24] = "100", offset[24] = "0";
    int c, rc;
    int64_t v;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': donor = optarg; break;
        case 'D': donor_ref = optarg; break;
        case 's':
            status = optarg;
            if (!in_list(status, PLEDGE_STATUSES, PL_ARRAY_LEN(PLEDGE_STATUSES))) {
                ctl_error("--status: '%s' is not a pledge status (active, paused, past_due, "
                          "needs_payment_method, lapsed, cancelled)",
                          status);
                return PL_EXIT_USAGE;
            }
            break;
        case 'f': fund = optarg; break;
        case 'l':
        case 'o':
            if (pl_parse_i64(optarg, &v) < 0 || v < 0) {
                ctl_error("--%s: '%s' is not a number >= 0", c == 'l' ? "limit" : "offset",
                          optarg);
                return PL_EXIT_USAGE;
            }
            snprintf(c == 'l' ? limit : offset, 24, "%lld", (long long)v);
            break;
        case 'h': return ctl_usage(LIST_USAGE, true);
        default: return ctl_usage(LIST_USAGE, false);
        }
    }
    if (optind < argc || (donor && donor_ref))
        return ctl_usage(LIST_USAGE, false);
    if (!ctl_db(ctl))
        return PL_EXIT_FAILED;
    char did[24];
    const char *dp = NULL;
    if (donor || donor_ref) {
        if ((rc = ctl_resolve_donor(ctl, donor, donor_ref, did)))
            return rc;
        dp = did;
    }
    const char *p[5] = {dp, status, fund, limit, offset};
    PGresult *r = ctl_exec(
        ctl, "listing pledges",
        "SELECT p.id, p.external_ref, p.donor_id, d.full_name AS donor_name, p.status, "
        "p.amount_minor, p.currency, c.exponent, "
        "CASE p.interval_months WHEN 1 THEN 'monthly' WHEN 3 THEN 'quarterly' "
        "WHEN 6 THEN 'semiannual' ELSE 'annual' END AS interval, "
        "coalesce(p.anchor_day::text, 'last') AS anchor, p.fund, "
        "p.payment_method_id AS method_id, p.next_charge_on "
        "FROM pledge p JOIN donor d ON d.id = p.donor_id JOIN currency c ON c.code = p.currency "
        "WHERE ($1::bigint IS NULL OR p.donor_id = $1) AND ($2::text IS NULL OR p.status = $2) "
        "AND ($3::text IS NULL OR p.fund = $3) "
        "ORDER BY p.id LIMIT nullif($4::bigint, 0) OFFSET $5::bigint",
        5, p);
    return ctl_print_rows(ctl, r);
}

/* ---- state changes ------------------------------------------------------ */

/* End the pledge's waiting charges (scheduled, retry_wait) as cancelled,
 * with an event each. *n gets how many. */
static int cancel_waiting_charges(struct ctl *ctl, const char *id, const char *why, int *n)
{
    const char *p[3] = {id, ctl->actor, why};
    PGresult *r = ctl_exec(
        ctl, "cancelling waiting charges",
        "WITH c AS (UPDATE charge SET status = 'cancelled', next_attempt_at = NULL, "
        " updated_at = pl_now() WHERE pledge_id = $1::bigint "
        " AND status IN ('scheduled', 'retry_wait') RETURNING id, period, status) "
        "INSERT INTO event (at, actor, entity, entity_id, action, detail) "
        "SELECT pl_now(), $2, 'charge', c.id, 'cancelled', "
        " jsonb_build_object('pledge_id', $1::bigint, 'period', c.period, 'reason', $3::text) "
        "FROM c RETURNING entity_id",
        3, p);
    if (!r)
        return PL_EXIT_FAILED;
    *n = PQntuples(r);
    PQclear(r);
    return 0;
}

struct change_opts {
    const char *reason;
    const char *amount;
    const char *method;
};

static int parse_change(int argc, char **argv, const char *usage, bool want_reason,
                        bool need_reason, bool want_amount, bool want_method,
                        struct change_opts *o, char id[24])
{
    static const struct option opts[] = {
        {"reason", required_argument, NULL, 'R'}, {"amount", required_argument, NULL, 'a'},
        {"method", required_argument, NULL, 'm'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'h')
            return ctl_usage(usage, true) - 100; /* -100: --help shown, exit 0 */
        if (c == 'R' && want_reason)
            o->reason = optarg;
        else if (c == 'a' && want_amount)
            o->amount = optarg;
        else if (c == 'm' && want_method)
            o->method = optarg;
        else
            return ctl_usage(usage, false);
    }
    if (optind != argc - 1)
        return ctl_usage(usage, false);
    int rc = ctl_parse_id("pledge id", argv[optind], id);
    if (rc)
        return rc;
    if (need_reason && !o->reason) {
        ctl_error("--reason is required: say why (it is kept with the pledge)");
        return PL_EXIT_USAGE;
    }
    if (o->reason && (!*o->reason || !ctl_check_text("--reason", o->reason))) {
        if (!*o->reason)
            ctl_error("--reason: must not be empty");
        return PL_EXIT_USAGE;
    }
    if (want_amount && !o->amount) {
        ctl_error("--amount is required");
        return PL_EXIT_USAGE;
    }
    if (want_method && !o->method) {
        ctl_error("--method is required");
        return PL_EXIT_USAGE;
    }
    return 0;
}

#define HELP_SHOWN (-100)

static int refuse_status(const char *id, const char *status, const char *verb, const char *ok)
{
    ctl_error("pledge %s is %s: cannot %s it (only %s)", id, status, verb, ok);
    return PL_EXIT_CONFLICT;
}

/* The common end of pause and cancel (pledge row already updated): its
 * waiting charges are cancelled, the event written, the change committed. */
static int stop_pledge(struct ctl *ctl, const char *id, const char *from, const char *action,
                       const char *reason)
{
    int n, rc;
    char why[40];
    snprintf(why, sizeof(why), "pledge %s", action);
    if ((rc = cancel_waiting_charges(ctl, id, why, &n)))
        return rc;
    json_t *d = json_pack("{s:s,s:i}", "from", from, "charges_cancelled", n);
    if (reason)
        json_object_set_new(d, "reason", json_string(reason));
    if ((rc = ctl_event(ctl, "pledge", id, action, d)) || (rc = ctl_commit(ctl)))
        return rc;
    if (!ctl->json && n)
        fprintf(stderr, "pledgectl: %d waiting charge%s cancelled\n", n, n == 1 ? "" : "s");
    return print_pledge_done(ctl, id, action);
}

static const char PAUSE_USAGE[] =
    "usage: pledgectl pledge pause ID [--reason TEXT]\n"
    "\n"
    "Stop charging a pledge until it is resumed. Its waiting charges (scheduled,\n"
    "retry_wait) are cancelled, each with an event; a charge already processing\n"
    "finishes. Allowed for active, past_due and needs_payment_method pledges.\n";

static int pledge_pause(struct ctl *ctl, int argc, char **argv)
{
    struct change_opts o = {0};
    char id[24];
    int rc = parse_change(argc, argv, PAUSE_USAGE, true, false, false, false, &o, id);
    if (rc)
        return rc == HELP_SHOWN ? PL_EXIT_OK : rc;
    PGresult *cur;
    if ((rc = begin_pledge_change(ctl, id, &cur)))
        return rc;
    char status[32];
    pl_strlcpy(status, PQgetvalue(cur, 0, 0), sizeof(status));
    PQclear(cur);
    if (strcmp(status, "active") != 0 && strcmp(status, "past_due") != 0 &&
        strcmp(status, "needs_payment_method") != 0)
        return refuse_status(id, status, "pause", "active, past_due or needs_payment_method");
    const char *p[1] = {id};
    PGresult *r = ctl_exec(ctl, "pausing the pledge",
                           "UPDATE pledge SET status = 'paused', next_charge_on = NULL, "
                           "updated_at = pl_now() WHERE id = $1::bigint",
                           1, p);
    if (!r)
        return PL_EXIT_FAILED;
    PQclear(r);
    return stop_pledge(ctl, id, status, "paused", o.reason);
}

static const char RESUME_USAGE[] =
    "usage: pledgectl pledge resume ID\n"
    "\n"
    "Charge a paused (or lapsed) pledge again, from the next anchor date on or\n"
    "after today: missed periods are not charged.\n";

static int pledge_resume(struct ctl *ctl, int argc, char **argv)
{
    struct change_opts o = {0};
    char id[24];
    int rc = parse_change(argc, argv, RESUME_USAGE, false, false, false, false, &o, id);
    if (rc)
        return rc == HELP_SHOWN ? PL_EXIT_OK : rc;
    PGresult *cur;
    if ((rc = begin_pledge_change(ctl, id, &cur)))
        return rc;
    char status[32];
    pl_strlcpy(status, PQgetvalue(cur, 0, 0), sizeof(status));
    PQclear(cur);
    if (strcmp(status, "paused") != 0 && strcmp(status, "lapsed") != 0)
        return refuse_status(id, status, "resume", "paused or lapsed");
    const char *p[2] = {id, ctl->tz};
    PGresult *r = ctl_exec(
        ctl, "resuming the pledge",
        "UPDATE pledge p SET status = CASE WHEN EXISTS (SELECT 1 FROM payment_method m "
        " WHERE m.id = p.payment_method_id AND m.status = 'active') THEN 'active' "
        " ELSE 'needs_payment_method' END, "
        " next_charge_on = pl_period_on_or_after(p.anchor_day, pl_today($2)), "
        " failed_periods = 0, updated_at = pl_now() "
        "WHERE p.id = $1::bigint RETURNING p.status, p.next_charge_on",
        2, p);
    if (!r)
        return PL_EXIT_FAILED;
    json_t *d = json_pack("{s:s,s:s,s:s}", "from", status, "to", PQgetvalue(r, 0, 0),
                          "next_charge_on", PQgetvalue(r, 0, 1));
    bool needs = strcmp(PQgetvalue(r, 0, 0), "active") != 0;
    PQclear(r);
    if ((rc = ctl_event(ctl, "pledge", id, "resumed", d)) || (rc = ctl_commit(ctl)))
        return rc;
    if (needs)
        fprintf(stderr,
                "pledgectl: warning: pledge %s has no usable payment method: it needs one "
                "before it can be charged (pledge set-method)\n",
                id);
    return print_pledge_done(ctl, id, "resumed");
}

static const char CANCEL_USAGE[] =
    "usage: pledgectl pledge cancel ID --reason TEXT\n"
    "\n"
    "End a pledge for good. Waiting charges (scheduled, retry_wait) are cancelled;\n"
    "a charge already processing finishes.\n";

static int pledge_cancel(struct ctl *ctl, int argc, char **argv)
{
    struct change_opts o = {0};
    char id[24];
    int rc = parse_change(argc, argv, CANCEL_USAGE, true, true, false, false, &o, id);
    if (rc)
        return rc == HELP_SHOWN ? PL_EXIT_OK : rc;
    PGresult *cur;
    if ((rc = begin_pledge_change(ctl, id, &cur)))
        return rc;
    char status[32];
    pl_strlcpy(status, PQgetvalue(cur, 0, 0), sizeof(status));
    PQclear(cur);
    if (strcmp(status, "cancelled") == 0) {
        ctl_error("pledge %s is already cancelled", id);
        return PL_EXIT_CONFLICT;
    }
    const char *p[2] = {id, o.reason};
    PGresult *r = ctl_exec(ctl, "cancelling the pledge",
                           "UPDATE pledge SET status = 'cancelled', cancelled_at = pl_now(), "
                           "cancel_reason = $2, next_charge_on = NULL, updated_at = pl_now() "
                           "WHERE id = $1::bigint",
                           2, p);
    if (!r)
        return PL_EXIT_FAILED;
    PQclear(r);
    return stop_pledge(ctl, id, status, "cancelled", o.reason);
}

static const char SET_AMOUNT_USAGE[] =
    "usage: pledgectl pledge set-amount ID --amount AMOUNT\n"
    "\n"
    "Change the amount (in the pledge's currency). It applies from the next\n"
    "attempt: a waiting charge is attempted with the new amount.\n";

static int pledge_set_amount(struct ctl *ctl, int argc, char **argv)
{
    struct change_opts o = {0};
    char id[24];
    int rc = parse_change(argc, argv, SET_AMOUNT_USAGE, false, false, true, false, &o, id);
    if (rc)
        return rc == HELP_SHOWN ? PL_EXIT_OK : rc;
    PGresult *cur;
    if ((rc = begin_pledge_change(ctl, id, &cur)))
        return rc;
    char status[32], currency[8], old[24];
    pl_strlcpy(status, PQgetvalue(cur, 0, 0), sizeof(status));
    pl_strlcpy(currency, PQgetvalue(cur, 0, 2), sizeof(currency));
    int exp = atoi(PQgetvalue(cur, 0, 3));
    pl_strlcpy(old, PQgetvalue(cur, 0, 4), sizeof(old));
    PQclear(cur);
    int64_t minor;
    char why[200], minor_text[24];
    if (ctl_parse_amount(o.amount, currency, exp, &minor, why, sizeof(why)) < 0) {
        ctl_error("--amount: %s", why);
        return PL_EXIT_USAGE;
    }
    if (strcmp(status, "cancelled") == 0)
        return refuse_status(id, status, "change", "pledges that are not cancelled");
    snprintf(minor_text, sizeof(minor_text), "%lld", (long long)minor);
    const char *p[2] = {id, minor_text};
    PGresult *r = ctl_exec(ctl, "changing the amount",
                           "UPDATE pledge SET amount_minor = $2::bigint, updated_at = pl_now() "
                           "WHERE id = $1::bigint",
                           2, p);
    if (!r)
        return PL_EXIT_FAILED;
    PQclear(r);
    /* waiting charges show what their next attempt will take (claim re-reads
     * the pledge's amount anyway) */
    r = ctl_exec(ctl, "updating waiting charges",
                 "UPDATE charge SET amount_minor = $2::bigint, updated_at = pl_now() "
                 "WHERE pledge_id = $1::bigint AND status IN ('scheduled', 'retry_wait')",
                 2, p);
    if (!r)
        return PL_EXIT_FAILED;
    PQclear(r);
    json_t *d = json_pack("{s:I,s:I,s:s}", "from_minor", (json_int_t)atoll(old), "to_minor",
                          (json_int_t)minor, "currency", currency);
    if ((rc = ctl_event(ctl, "pledge", id, "amount_changed", d)) || (rc = ctl_commit(ctl)))
        return rc;
    return print_pledge_done(ctl, id, "updated");
}

static const char SET_METHOD_USAGE[] =
    "usage: pledgectl pledge set-method ID --method METHOD_ID\n"
    "\n"
    "Charge the pledge to another of the donor's active payment methods, from the\n"
    "next attempt. A needs_payment_method pledge becomes active again, from the\n"
    "next anchor date on or after today.\n";

static int pledge_set_method(struct ctl *ctl, int argc, char **argv)
{
    struct change_opts o = {0};
    char id[24], mid[24];
    int rc = parse_change(argc, argv, SET_METHOD_USAGE, false, false, false, true, &o, id);
    if (rc)
        return rc == HELP_SHOWN ? PL_EXIT_OK : rc;
    if ((rc = ctl_parse_id("--method", o.method, mid)))
        return rc;
    PGresult *cur;
    if ((rc = begin_pledge_change(ctl, id, &cur)))
        return rc;
    char status[32], donor[24], old[24];
    pl_strlcpy(status, PQgetvalue(cur, 0, 0), sizeof(status));
    pl_strlcpy(donor, PQgetvalue(cur, 0, 1), sizeof(donor));
    pl_strlcpy(old, PQgetisnull(cur, 0, 5) ? "" : PQgetvalue(cur, 0, 5), sizeof(old));
    PQclear(cur);
    if (strcmp(status, "cancelled") == 0)
        return refuse_status(id, status, "change", "pledges that are not cancelled");
    if ((rc = check_method(ctl, mid, donor)))
        return rc;
    bool reactivate = strcmp(status, "needs_payment_method") == 0;
    const char *p[3] = {id, mid, ctl->tz};
    PGresult *r = ctl_exec(
        ctl, "changing the payment method",
        "UPDATE pledge SET payment_method_id = $2::bigint, updated_at = pl_now(), "
        " status = CASE WHEN status = 'needs_payment_method' THEN 'active' ELSE status END, "
        " next_charge_on = CASE WHEN status = 'needs_payment_method' "
        "  THEN pl_period_on_or_after(anchor_day, pl_today($3)) ELSE next_charge_on END "
        "WHERE id = $1::bigint RETURNING status, next_charge_on",
        3, p);
    if (!r)
        return PL_EXIT_FAILED;
    json_t *d = json_pack("{s:o,s:I}", "from_method_id",
                          old[0] ? json_integer(atoll(old)) : json_null(), "to_method_id",
                          (json_int_t)atoll(mid));
    if (reactivate) {
        json_object_set_new(d, "reactivated", json_true());
        json_object_set_new(d, "next_charge_on", json_string(PQgetvalue(r, 0, 1)));
    }
    PQclear(r);
    if ((rc = ctl_event(ctl, "pledge", id, "method_changed", d)) || (rc = ctl_commit(ctl)))
        return rc;
    return print_pledge_done(ctl, id, reactivate ? "reactivated" : "updated");
}

int ctl_cmd_pledge(struct ctl *ctl, int argc, char **argv)
{
    static const struct ctl_verb verbs[] = {
        {"create", pledge_create, "create a pledge"},
        {"show", pledge_show, "show a pledge and its charges"},
        {"list", pledge_list, "list pledges"},
        {"pause", pledge_pause, "stop charging until resumed"},
        {"resume", pledge_resume, "charge again from the next anchor date"},
        {"cancel", pledge_cancel, "end a pledge"},
        {"set-amount", pledge_set_amount, "change the amount from the next attempt"},
        {"set-method", pledge_set_method, "change the payment method (reactivates)"},
    };
    return ctl_dispatch(ctl, "pledge", "Pledges: a donor's promise to give on a schedule.",
                        verbs, PL_ARRAY_LEN(verbs), argc, argv);
}
