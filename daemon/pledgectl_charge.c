/*
 * pledgectl charge …: look at charges, send failed ones round again, refund.
 *
 * Retry is allowed for failed, action_required, retry_wait, cancelled and
 * skipped charges of an active or past_due pledge: the charge goes back to
 * `scheduled` with next_attempt_at = pl_now(), one more attempt that does
 * not restart the dunning schedule. Refused, each with its reason:
 * succeeded (refund instead), processing (a daemon holds it), unknown (the
 * reconciler must settle it first, or the donor could be charged twice),
 * scheduled (already waiting), and charges of paused, cancelled, lapsed or
 * needs_payment_method pledges. Explicit ids are all-or-nothing.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <uv.h>

#include "config.h"
#include "ctl.h"
#include "gateway.h"
#include "http.h"
#include "money.h"
#include "pledgectl.h"

static const char *const CHARGE_STATUSES[] = {
    "scheduled", "processing", "retry_wait", "unknown", "succeeded",
    "failed",    "action_required", "skipped", "cancelled",
};

static bool charge_status_valid(const char *s)
{
    for (size_t i = 0; i < PL_ARRAY_LEN(CHARGE_STATUSES); i++)
        if (strcmp(s, CHARGE_STATUSES[i]) == 0)
            return true;
    return false;
}

/* ---- list --------------------------------------------------------------- */

static const char LIST_USAGE[] =
    "usage: pledgectl charge list [--status STATUS] [--from DATE] [--to DATE]\n"
    "                             [--donor ID] [--pledge ID] [--fund FUND]\n"
    "                             [--limit N] [--offset N]\n"
    "\n"
    "List charges by period, then id. --from/--to bound the period (inclusive).\n"
    "STATUS: scheduled, processing, retry_wait, unknown, succeeded, failed,\n"
    "action_required, skipped, cancelled. Default limit 100; --limit 0 lists all.\n";

static int charge_list(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"status", required_argument, NULL, 's'}, {"from", required_argument, NULL, 'F'},
        {"to", required_argument, NULL, 'T'},     {"donor", required_argument, NULL, 'd'},
        {"pledge", required_argument, NULL, 'p'}, {"fund", required_argument, NULL, 'f'},
        {"limit", required_argument, NULL, 'l'},  {"offset", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    const char *status = NULL, *from = NULL, *to = NULL, *fund = NULL;
    char donor[24] = "", pledge[24] = "", limit[24] = "100", offset[24] = "0";
    int c, rc;
    int64_t v;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            status = optarg;
            if (!charge_status_valid(status)) {
                ctl_error("--status: '%s' is not a charge status (scheduled, processing, "
                          "retry_wait, unknown, succeeded, failed, action_required, skipped, "
                          "cancelled)",
                          status);
                return PL_EXIT_USAGE;
            }
            break;
        case 'F':
        case 'T':
            if (!pl_ctl_date_shape(optarg)) {
                ctl_error("--%s: '%s' is not a date YYYY-MM-DD", c == 'F' ? "from" : "to",
                          optarg);
                return PL_EXIT_USAGE;
            }
            *(c == 'F' ? &from : &to) = optarg;
            break;
        case 'd':
            if ((rc = ctl_parse_id("--donor", optarg, donor)))
                return rc;
            break;
        case 'p':
            if ((rc = ctl_parse_id("--pledge", optarg, pledge)))
                return rc;
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
    if (optind < argc)
        return ctl_usage(LIST_USAGE, false);
    if (!ctl_db(ctl))
        return PL_EXIT_FAILED;
    const char *p[8] = {status, from, to, donor[0] ? donor : NULL, pledge[0] ? pledge : NULL,
                        fund, limit, offset};
    PGresult *r = ctl_exec(
        ctl, "listing charges",
        "SELECT ch.id, ch.pledge_id, ch.donor_id, ch.period, ch.status, ch.amount_minor, "
        "ch.currency, cu.exponent, ch.refunded_minor, ch.fund, ch.dunning_attempts, "
        "ch.next_attempt_at, ch.failure_code, ch.decline_code, ch.succeeded_at "
        "FROM charge ch JOIN currency cu ON cu.code = ch.currency "
        "WHERE ($1::text IS NULL OR ch.status = $1) AND ($2::date IS NULL OR ch.period >= $2) "
        "AND ($3::date IS NULL OR ch.period <= $3) AND ($4::bigint IS NULL OR ch.donor_id = $4) "
        "AND ($5::bigint IS NULL OR ch.pledge_id = $5) AND ($6::text IS NULL OR ch.fund = $6) "
        "ORDER BY ch.period, ch.id LIMIT nullif($7::bigint, 0) OFFSET $8::bigint",
        8, p);
    return ctl_print_rows(ctl, r);
}

/* ---- show --------------------------------------------------------------- */

static const char SHOW_USAGE[] =
    "usage: pledgectl charge show ID\n"
    "\n"
    "Show a charge with every attempt, every refund and every event.\n";

static int charge_show(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c, rc;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1)
        return ctl_usage(SHOW_USAGE, c == 'h');
    if (optind != argc - 1)
        return ctl_usage(SHOW_USAGE, false);
    char id[24];
    if ((rc = ctl_parse_id("charge id", argv[optind], id)))
        return rc;
    if (!ctl_db(ctl))
        return PL_EXIT_FAILED;
    const char *p[1] = {id};
    PGresult *res[4] = {NULL};
    res[0] = ctl_exec(
        ctl, "reading the charge",
        "SELECT ch.id, ch.pledge_id, ch.donor_id, d.full_name AS donor_name, ch.period, "
        "ch.status, ch.amount_minor, ch.currency, cu.exponent, ch.refunded_minor, ch.fee_minor, "
        "ch.fund, ch.due_at, ch.next_attempt_at, ch.dunning_attempts, ch.lease_owner, "
        "ch.lease_expires_at, ch.gateway_ref, ch.failure_code, ch.decline_code, ch.skip_reason, "
        "ch.succeeded_at, ch.created_at, ch.updated_at "
        "FROM charge ch JOIN currency cu ON cu.code = ch.currency "
        "JOIN donor d ON d.id = ch.donor_id WHERE ch.id = $1::bigint",
        1, p);
    if (!res[0])
        return PL_EXIT_FAILED;
    if (PQntuples(res[0]) == 0) {
        PQclear(res[0]);
        ctl_error("no charge with id %s", id);
        return PL_EXIT_NOTFOUND;
    }
    res[1] = ctl_exec(ctl, "reading attempts",
                      "SELECT a.id, a.attempt_no, a.idempotency_key, a.payment_method_id, "
                      "a.amount_minor, cu.exponent, a.currency, a.state, a.outcome, a.sends, "
                      "a.http_status, a.gateway_ref, a.request_id, a.error_type, a.error_code, "
                      "a.decline_code, a.advice_code, a.message, a.started_at, a.last_sent_at, "
                      "a.next_check_at, a.finished_at FROM charge_attempt a "
                      "JOIN currency cu ON cu.code = a.currency "
                      "WHERE a.charge_id = $1::bigint ORDER BY a.attempt_no",
                      1, p);
    res[2] = res[1] ? ctl_exec(ctl, "reading refunds",
                               "SELECT r.id, r.kind, r.status, r.amount_minor, ch.currency, "
                               "cu.exponent, r.reason, r.gateway_ref, r.idempotency_key, "
                               "r.actor, r.created_at FROM refund r "
                               "JOIN charge ch ON ch.id = r.charge_id "
                               "JOIN currency cu ON cu.code = ch.currency "
                               "WHERE r.charge_id = $1::bigint ORDER BY r.id",
                               1, p)
                    : NULL;
    res[3] = res[2] ? ctl_exec(ctl, "reading events",
                               "SELECT e.id, e.at, e.actor, e.entity, e.entity_id, e.action, "
                               "e.detail FROM event e WHERE (e.entity = 'charge' "
                               "AND e.entity_id = $1::bigint) OR (e.entity = 'refund' AND "
                               "e.entity_id IN (SELECT id FROM refund WHERE charge_id = "
                               "$1::bigint)) ORDER BY e.id",
                               1, p)
                    : NULL;
    if (!res[3]) {
        for (int i = 0; i < 4; i++)
            PQclear(res[i]);
        return PL_EXIT_FAILED;
    }
    if (ctl->json) {
        json_t *o = ctl_result_row_json(res[0], 0);
        json_object_set_new(o, "attempts", ctl_result_json(res[1]));
        json_object_set_new(o, "refunds", ctl_result_json(res[2]));
        json_object_set_new(o, "events", ctl_result_json(res[3]));
        ctl_print_json(o);
    } else {
        bool tty = ctl->mode == PL_TABLE_ALIGNED;
        static const char *const titles[] = {NULL, "Attempts", "Refunds", "Events"};
        static const char *const keys[] = {NULL, "attempts", "refunds", "events"};
        ctl_print_record(ctl, res[0]);
        for (int i = 1; i < 4; i++) {
            if (tty)
                printf("\n%s:\n", titles[i]);
            else
                printf("\n# %s\n", keys[i]);
            if (PQntuples(res[i]) || !tty)
                ctl_print_result(ctl, res[i]);
            else
                printf("  (none)\n");
        }
    }
    for (int i = 0; i < 4; i++)
        PQclear(res[i]);
    return PL_EXIT_OK;
}

/* ---- retry -------------------------------------------------------------- */

static const char RETRY_USAGE[] =
    "usage: pledgectl charge retry [--dry-run] ID...\n"
    "       pledgectl charge retry [--dry-run] --status STATUS [--since DATE]\n"
    "\n"
    "Attempt charges again now: each goes back to scheduled with its next attempt\n"
    "due at once, and the daemons are woken. A retry is one more attempt; it does\n"
    "not restart the dunning schedule.\n"
    "Allowed: failed, action_required, retry_wait, cancelled, skipped charges of\n"
    "active or past_due pledges. Refused, with the reason: succeeded, processing,\n"
    "unknown, scheduled, and charges of other pledges. With ids, all or nothing.\n"
    "--since limits a --status selection to periods on or after DATE.\n"
    "  --dry-run   list what would be retried; change nothing\n";

static const char *retry_refusal(const char *status, const char *pledge_status)
{
    if (strcmp(status, "succeeded") == 0)
        return "it succeeded; charging again would charge the donor twice (refund instead?)";
    if (strcmp(status, "processing") == 0)
        return "a daemon is attempting it right now";
    if (strcmp(status, "unknown") == 0)
        return "its last attempt has an unknown outcome: the reconciler must settle it first "
               "(it may have been charged)";
    if (strcmp(status, "scheduled") == 0)
        return "it is already scheduled";
    if (strcmp(pledge_status, "active") != 0 && strcmp(pledge_status, "past_due") != 0) {
        if (strcmp(pledge_status, "needs_payment_method") == 0)
            return "its pledge needs a payment method (pledge set-method first)";
        if (strcmp(pledge_status, "paused") == 0)
            return "its pledge is paused (pledge resume first)";
        if (strcmp(pledge_status, "lapsed") == 0)
            return "its pledge has lapsed (pledge resume first)";
        return "its pledge is cancelled";
    }
    return NULL;
}

static bool retry_status_allowed(const char *s)
{
    return strcmp(s, "failed") == 0 || strcmp(s, "action_required") == 0 ||
           strcmp(s, "retry_wait") == 0 || strcmp(s, "cancelled") == 0 ||
           strcmp(s, "skipped") == 0;
}

static int charge_retry(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"status", required_argument, NULL, 's'}, {"since", required_argument, NULL, 'S'},
        {"dry-run", no_argument, NULL, 'n'},      {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *status = NULL, *since = NULL;
    bool dry = false;
    int c, rc;
    while ((c = getopt_long(argc, argv, "hn", opts, NULL)) != -1) {
        switch (c) {
        case 's': status = optarg; break;
        case 'S': since = optarg; break;
        case 'n': dry = true; break;
        case 'h': return ctl_usage(RETRY_USAGE, true);
        default: return ctl_usage(RETRY_USAGE, false);
        }
    }
    int nids = argc - optind;
    if ((nids > 0) == (status != NULL)) {
        ctl_error("charge retry: give charge ids or --status, not both (see --help)");
        return PL_EXIT_USAGE;
    }
    if (since && !status) {
        ctl_error("--since: only with --status");
        return PL_EXIT_USAGE;
    }
    if (since && !pl_ctl_date_shape(since)) {
        ctl_error("--since: '%s' is not a date YYYY-MM-DD", since);
        return PL_EXIT_USAGE;
    }
    if (status && !charge_status_valid(status)) {
        ctl_error("--status: '%s' is not a charge status", status);
        return PL_EXIT_USAGE;
    }
    if (status && !retry_status_allowed(status)) {
        ctl_error("--status: %s charges are never retried: %s", status,
                  retry_refusal(status, "active"));
        return PL_EXIT_CONFLICT;
    }
    /* the ids as a PostgreSQL array literal of validated integers */
    size_t cap = (size_t)nids * 24 + 4;
    char *ids = pl_xmalloc(cap);
    size_t o = 0;
    ids[o++] = '{';
    for (int i = 0; i < nids; i++) {
        char id[24];
        if ((rc = ctl_parse_id("charge id", argv[optind + i], id))) {
            free(ids);
            return rc;
        }
        o += (size_t)snprintf(ids + o, cap - o, "%s%s", i ? "," : "", id);
    }
    ids[o++] = '}';
    ids[o] = '\0';

    if (!ctl_db(ctl) || ctl_begin(ctl)) {
        free(ids);
        return PL_EXIT_FAILED;
    }
    /* lock the candidates: a daemon claiming one of them at this moment makes
     * us wait for its commit, and then we see it as processing */
    const char *p[3] = {status ? NULL : ids, status, since};
    PGresult *r = ctl_exec(
        ctl, "reading the charges",
        "SELECT ch.id, ch.status, p.status AS pledge_status, ch.pledge_id, ch.period "
        "FROM charge ch JOIN pledge p ON p.id = ch.pledge_id "
        "WHERE ($1::bigint[] IS NULL OR ch.id = ANY ($1::bigint[])) "
        "AND ($2::text IS NULL OR ch.status = $2) AND ($3::date IS NULL OR ch.period >= $3) "
        "ORDER BY ch.id FOR UPDATE OF ch",
        3, p);
    if (!r) {
        free(ids);
        return PL_EXIT_FAILED;
    }
    int exit = PL_EXIT_OK;
    if (!status) {
        /* every id must exist and be retryable */
        for (int i = 0; i < nids; i++) {
            char id[24];
            ctl_parse_id("charge id", argv[optind + i], id);
            bool found = false;
            for (int row = 0; row < PQntuples(r); row++)
                if (strcmp(PQgetvalue(r, row, 0), id) == 0)
                    found = true;
            if (!found) {
                ctl_error("charge %s: no such charge", id);
                if (exit == PL_EXIT_OK)
                    exit = PL_EXIT_NOTFOUND;
            }
        }
    }
    json_t *todo = json_array();
    for (int row = 0; row < PQntuples(r); row++) {
        const char *cs = PQgetvalue(r, row, 1), *ps = PQgetvalue(r, row, 2);
        const char *why = retry_refusal(cs, ps);
        if (!why && !retry_status_allowed(cs))
            why = "its status does not allow a retry";
        if (why) {
            if (!status) {
                ctl_error("charge %s (%s): refused: %s", PQgetvalue(r, row, 0), cs, why);
                if (exit == PL_EXIT_OK)
                    exit = PL_EXIT_CONFLICT;
            }
            continue;
        }
        json_array_append_new(todo, json_pack("{s:I,s:I,s:s,s:s}", "id",
                                              (json_int_t)atoll(PQgetvalue(r, row, 0)),
                                              "pledge_id",
                                              (json_int_t)atoll(PQgetvalue(r, row, 3)),
                                              "period", PQgetvalue(r, row, 4), "from", cs));
    }
    PQclear(r);
    free(ids);
    if (exit != PL_EXIT_OK) {
        ctl_error("nothing was retried");
        json_decref(todo);
        return exit;
    }
    if (!dry) {
        size_t i;
        json_t *it;
        json_array_foreach(todo, i, it)
        {
            char id[24];
            snprintf(id, sizeof(id), "%lld",
                     (long long)json_integer_value(json_object_get(it, "id")));
            const char *q[1] = {id};
            r = ctl_exec(ctl, "scheduling the retry",
                         "UPDATE charge SET status = 'scheduled', next_attempt_at = pl_now(), "
                         "skip_reason = NULL, updated_at = pl_now() WHERE id = $1::bigint",
                         1, q);
            if (!r) {
                json_decref(todo);
                return PL_EXIT_FAILED;
            }
            PQclear(r);
            json_t *d = json_pack("{s:O}", "from", json_object_get(it, "from"));
            if ((rc = ctl_event(ctl, "charge", id, "retry_requested", d))) {
                json_decref(todo);
                return rc;
            }
        }
        if (json_array_size(todo) > 0)
            ctl_wake(ctl); /* delivered when the transaction commits */
        if ((rc = ctl_commit(ctl))) {
            json_decref(todo);
            return rc;
        }
    } else {
        ctl_rollback(ctl);
    }
    if (ctl->json) {
        ctl_print_json(json_pack("{s:b,s:o}", "dry_run", dry, "charges", todo));
    } else {
        struct pl_table *t = pl_table_new();
        pl_table_add_column(t, "id", NULL, PL_COL_INT, 0);
        pl_table_add_column(t, "pledge_id", NULL, PL_COL_INT, 0);
        pl_table_add_column(t, "period", NULL, PL_COL_TEXT, 0);
        pl_table_add_column(t, "from", NULL, PL_COL_TEXT, 0);
        pl_table_add_column(t, "result", NULL, PL_COL_TEXT, 0);
        size_t i;
        json_t *it;
        json_array_foreach(todo, i, it)
        {
            char a[24], b[24];
            snprintf(a, sizeof(a), "%lld",
                     (long long)json_integer_value(json_object_get(it, "id")));
            snprintf(b, sizeof(b), "%lld",
                     (long long)json_integer_value(json_object_get(it, "pledge_id")));
            pl_table_add_row(t);
            pl_table_set(t, 0, a);
            pl_table_set(t, 1, b);
            pl_table_set(t, 2, json_string_value(json_object_get(it, "period")));
            pl_table_set(t, 3, json_string_value(json_object_get(it, "from")));
            pl_table_set(t, 4, dry ? "would retry" : "scheduled");
        }
        if (ctl->mode == PL_TABLE_ALIGNED && json_array_size(todo) == 0)
            printf("no charges to retry\n");
        else
            pl_table_print(t, stdout, ctl->mode);
        pl_table_free(t);
        json_decref(todo);
    }
    return PL_EXIT_OK;
}

int ctl_charge_refund(struct ctl *ctl, int argc, char **argv);

int ctl_cmd_charge(struct ctl *ctl, int argc, char **argv)
{
    static const struct ctl_verb verbs[] = {
        {"list", charge_list, "list charges"},
        {"show", charge_show, "show a charge with attempts, refunds and events"},
        {"retry", charge_retry, "attempt charges again now"},
        {"refund", ctl_charge_refund, "refund a succeeded charge through the gateway"},
    };
    return ctl_dispatch(ctl, "charge", "Charges: one per pledge and billing period.", verbs,
                        PL_ARRAY_LEN(verbs), argc, argv);
}

/* ---- refund ------------------------------------------------------------- */

/*
 * A refund is written `pending` with its own idempotency key
 * (pledged-refund-<refund id>) in a committed transaction before the
 * gateway is asked, so a crash or timeout leaves a visible row whose key can
 * be resent safely (--resume). The amount is checked against
 * amount - refunded - pending refunds under the charge's row lock.
 */

#define REFUND_KEY_PREFIX "pledged-refund-"

static const char REFUND_USAGE[] =
    "usage: pledgectl charge refund ID [--amount AMOUNT] [--reason TEXT]\n"
    "       pledgectl charge refund ID --resume\n"
    "\n"
    "Refund a succeeded charge through the gateway: needs --config (or\n"
    "$PLEDGED_CONFIG) for the [gateway] section and its API key.\n"
    "Default amount: all that is not refunded yet. A refund larger than that is\n"
    "refused (exit 4). The refund row is committed as pending with its own\n"
    "idempotency key before the gateway is called; when the gateway's answer is\n"
    "unknown it stays pending, and --resume sends it again with the same key.\n"
    "--reason is kept with the refund; requested_by_customer, duplicate or\n"
    "fraudulent are also passed to the gateway.\n";

struct refund_call {
    bool done;
    struct pl_gateway_result res;
};

static void refund_done(const struct pl_gateway_result *res, void *userdata)
{
    struct refund_call *call = userdata;
    call->res = *res;
    call->done = true;
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Ask the gateway; fills *res. 0, or an exit code (reported) when nothing
 * could be sent. */
static int gateway_refund(struct ctl *ctl, const char *payment_ref, int64_t amount_minor,
                          const char *reason, const char *key, const char *charge_id,
                          const char *refund_id, struct pl_gateway_result *res)
{
    const struct pl_config *cfg = &ctl->cfg;
    static bool curl_ready;
    if (!curl_ready) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
            ctl_error("cannot initialise libcurl");
            return PL_EXIT_FAILED;
        }
        curl_ready = true;
    }
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        ctl_error("cannot initialise the event loop");
        return PL_EXIT_FAILED;
    }
    struct pl_http_opts hopts = {
        .max_in_flight = 1,
        .connect_timeout_ms = (unsigned)cfg->gateway.connect_timeout_ms,
        .request_timeout_ms = (unsigned)cfg->gateway.request_timeout_ms,
        .ca_bundle = cfg->gateway.ca_bundle,
        .user_agent = "pledgectl/" PL_VERSION,
    };
    struct pl_http *http = pl_http_new(&loop, &hopts);
    struct pl_gateway *gw = NULL;
    int exit = PL_EXIT_FAILED;
    if (!http) {
        ctl_error("cannot set up the HTTP client");
        goto out;
    }
    struct pl_gateway_opts gopts;
    pl_gateway_opts_init(&gopts);
    gopts.base_url = cfg->gateway.base_url;
    gopts.api_key = cfg->gateway.api_key;
    int r = pl_gateway_new(&loop, http, cfg->gateway.driver, &gopts, &gw);
    if (r < 0) {
        ctl_error("[gateway]: cannot use driver '%s' at %s: %s", cfg->gateway.driver,
                  cfg->gateway.base_url, pl_strerror(r));
        goto out;
    }
    const char *gw_reason = NULL;
    if (reason && (strcmp(reason, "requested_by_customer") == 0 ||
                   strcmp(reason, "duplicate") == 0 || strcmp(reason, "fraudulent") == 0))
        gw_reason = reason;
    struct pl_gateway_kv meta[] = {
        {PL_GATEWAY_META_CHARGE, charge_id},
        {"pledged_refund", refund_id},
    };
    struct pl_gateway_refund req = {
        .payment_ref = payment_ref,
        .amount_minor = amount_minor,
        .reason = gw_reason,
        .idempotency_key = key,
        .metadata = meta,
        .n_metadata = PL_ARRAY_LEN(meta),
    };
    struct refund_call call = {0};
    r = pl_gateway_refund(gw, &req, refund_done, &call, NULL);
    if (r < 0) {
        ctl_error("the gateway refused to build the refund request: %s", pl_strerror(r));
        goto out;
    }
    while (!call.done && uv_run(&loop, UV_RUN_ONCE) != 0)
        ;
    if (!call.done) {
        ctl_error("the gateway call ended without an answer");
        goto out;
    }
    *res = call.res;
    exit = 0;
out:
    pl_gateway_free(gw);
    pl_http_free(http);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_walk(&loop, close_walk, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return exit;
}

static int print_refund(struct ctl *ctl, const char *refund_id)
{
    const char *p[1] = {refund_id};
    PGresult *r = ctl_exec(ctl, "reading the refund",
                           "SELECT r.id, r.charge_id, r.kind, r.status, r.amount_minor, "
                           "ch.currency, cu.exponent, r.reason, r.gateway_ref, "
                           "r.idempotency_key, ch.refunded_minor AS charge_refunded_minor, "
                           "r.actor, r.created_at FROM refund r "
                           "JOIN charge ch ON ch.id = r.charge_id "
                           "JOIN currency cu ON cu.code = ch.currency WHERE r.id = $1::bigint",
                           1, p);
    if (!r)
        return PL_EXIT_FAILED;
    if (ctl->json)
        ctl_print_json(ctl_result_row_json(r, 0));
    else
        ctl_print_record(ctl, r);
    PQclear(r);
    return 0;
}

int ctl_charge_refund(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"amount", required_argument, NULL, 'a'}, {"reason", required_argument, NULL, 'R'},
        {"resume", no_argument, NULL, 'r'},       {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *amount = NULL, *reason = NULL;
    bool resume = false;
    int c, rc;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'a': amount = optarg; break;
        case 'R': reason = optarg; break;
        case 'r': resume = true; break;
        case 'h': return ctl_usage(REFUND_USAGE, true);
        default: return ctl_usage(REFUND_USAGE, false);
        }
    }
    if (optind != argc - 1)
        return ctl_usage(REFUND_USAGE, false);
    char id[24];
    if ((rc = ctl_parse_id("charge id", argv[optind], id)))
        return rc;
    if (resume && (amount || reason)) {
        ctl_error("--resume sends the pending refund again as it was: no --amount or --reason");
        return PL_EXIT_USAGE;
    }
    if (reason && (!*reason || !ctl_check_text("--reason", reason)))
        return PL_EXIT_USAGE;
    if (!ctl->have_cfg) {
        ctl_error("charge refund needs the gateway settings: give --config FILE (or "
                  "$PLEDGED_CONFIG)");
        return PL_EXIT_USAGE;
    }
    char *errors = NULL;
    if (pl_config_load_secrets(&ctl->cfg, PL_SECRET_GATEWAY_API_KEY, PL_SECRET_GATEWAY_API_KEY,
                               &errors) < 0) {
        fprintf(stderr, "%s\n", errors ? errors : "gateway api key missing");
        free(errors);
        return PL_EXIT_FAILED;
    }
    if (!ctl_db(ctl) || ctl_begin(ctl))
        return PL_EXIT_FAILED;

    /* 1. under the charge's row lock: check, and commit the pending refund */
    const char *p[1] = {id};
    PGresult *r = ctl_exec(
        ctl, "reading the charge",
        "SELECT ch.status, ch.amount_minor, ch.refunded_minor, ch.currency, cu.exponent, "
        "ch.gateway_ref, (SELECT coalesce(sum(amount_minor), 0) FROM refund "
        " WHERE charge_id = ch.id AND status = 'pending') AS pending_minor, "
        "(SELECT max(id) FROM refund WHERE charge_id = ch.id AND status = 'pending') "
        " AS pending_id FROM charge ch JOIN currency cu ON cu.code = ch.currency "
        "WHERE ch.id = $1::bigint FOR UPDATE OF ch",
        1, p);
    if (!r)
        return PL_EXIT_FAILED;
    if (PQntuples(r) == 0) {
        PQclear(r);
        ctl_error("no charge with id %s", id);
        return PL_EXIT_NOTFOUND;
    }
    char status[32], currency[8], payment_ref[PL_GW_REF_MAX] = "", refund_id[24] = "";
    pl_strlcpy(status, PQgetvalue(r, 0, 0), sizeof(status));
    int64_t total = atoll(PQgetvalue(r, 0, 1)), refunded = atoll(PQgetvalue(r, 0, 2));
    pl_strlcpy(currency, PQgetvalue(r, 0, 3), sizeof(currency));
    int exp = atoi(PQgetvalue(r, 0, 4));
    if (!PQgetisnull(r, 0, 5))
        pl_strlcpy(payment_ref, PQgetvalue(r, 0, 5), sizeof(payment_ref));
    int64_t pending = atoll(PQgetvalue(r, 0, 6));
    if (!PQgetisnull(r, 0, 7))
        pl_strlcpy(refund_id, PQgetvalue(r, 0, 7), sizeof(refund_id));
    PQclear(r);
    if (strcmp(status, "succeeded") != 0) {
        ctl_error("charge %s is %s: only succeeded charges can be refunded", id, status);
        return PL_EXIT_CONFLICT;
    }
    if (!payment_ref[0]) {
        ctl_error("charge %s has no gateway reference: it cannot be refunded through the "
                  "gateway",
                  id);
        return PL_EXIT_CONFLICT;
    }
    int64_t minor = 0;
    char key[64];
    if (resume) {
        if (!refund_id[0]) {
            ctl_error("charge %s has no pending refund to resume", id);
            return PL_EXIT_CONFLICT;
        }
        const char *q[1] = {refund_id};
        r = ctl_exec(ctl, "reading the pending refund",
                     "SELECT amount_minor, idempotency_key, reason FROM refund "
                     "WHERE id = $1::bigint",
                     1, q);
        if (!r)
            return PL_EXIT_FAILED;
        minor = atoll(PQgetvalue(r, 0, 0));
        pl_strlcpy(key, PQgetvalue(r, 0, 1), sizeof(key));
        PQclear(r);
        ctl_rollback(ctl);
    } else {
        int64_t left = total - refunded - pending;
        char buf[3][PL_MONEY_FMT_MAX];
        pl_money_format(left, exp, buf[0], sizeof(buf[0]));
        if (pending > 0) {
            pl_money_format(pending, exp, buf[1], sizeof(buf[1]));
            fprintf(stderr, "pledgectl: note: %s %s of refunds of charge %s are still pending "
                            "(see charge show; --resume sends the newest again)\n",
                    buf[1], currency, id);
        }
        if (amount) {
            char why[200];
            if (ctl_parse_amount(amount, currency, exp, &minor, why, sizeof(why)) < 0) {
                ctl_error("--amount: %s", why);
                return PL_EXIT_USAGE;
            }
        } else {
            minor = left;
        }
        if (left <= 0) {
            ctl_error("charge %s is already refunded in full", id);
            return PL_EXIT_CONFLICT;
        }
        if (minor > left) {
            pl_money_format(minor, exp, buf[2], sizeof(buf[2]));
            ctl_error("--amount: refused: %s %s is more than the %s %s left to refund on charge "
                      "%s",
                      buf[2], currency, buf[0], currency, id);
            return PL_EXIT_CONFLICT;
        }
        char minor_text[24];
        snprintf(minor_text, sizeof(minor_text), "%lld", (long long)minor);
        const char *q[3] = {id, minor_text, reason};
        r = ctl_exec(ctl, "recording the refund",
                     "INSERT INTO refund (charge_id, amount_minor, reason, status, actor, "
                     "created_at) VALUES ($1::bigint, $2::bigint, $3, 'pending', $4, pl_now()) "
                     "RETURNING id",
                     4, (const char *[]){q[0], q[1], q[2], ctl->actor});
        if (!r)
            return PL_EXIT_FAILED;
        pl_strlcpy(refund_id, PQgetvalue(r, 0, 0), sizeof(refund_id));
        PQclear(r);
        snprintf(key, sizeof(key), REFUND_KEY_PREFIX "%s", refund_id);
        r = ctl_exec(ctl, "recording the refund key",
                     "UPDATE refund SET idempotency_key = $2 WHERE id = $1::bigint", 2,
                     (const char *[]){refund_id, key});
        if (!r)
            return PL_EXIT_FAILED;
        PQclear(r);
        json_t *d = json_pack("{s:s,s:I,s:s,s:s?}", "charge_id", id, "amount_minor",
                              (json_int_t)minor, "idempotency_key", key, "reason", reason);
        if ((rc = ctl_event(ctl, "refund", refund_id, "requested", d)) ||
            (rc = ctl_commit(ctl)))
            return rc;
    }

    /* 2. the gateway, with the refund's own key */
    struct pl_gateway_result res;
    rc = gateway_refund(ctl, payment_ref, minor, reason, key, id, refund_id, &res);
    if (rc) {
        ctl_error("refund %s stays pending; nothing was sent or the answer is unknown: run "
                  "`pledgectl charge refund %s --resume` to send it again with the same key",
                  refund_id, id);
        return rc;
    }

    /* 3. record the outcome */
    const char *outcome = pl_outcome_name(res.outcome);
    bool succeeded = res.outcome == PL_OUT_SUCCEEDED;
    bool unknown = res.outcome == PL_OUT_UNKNOWN || res.outcome == PL_OUT_RETRY_NOW;
    if (ctl_begin(ctl))
        return PL_EXIT_FAILED;
    if (!unknown) {
        const char *q[4] = {refund_id, succeeded ? "succeeded" : "failed",
                            res.ref[0] && succeeded ? res.ref : NULL, ctl->actor};
        r = ctl_exec(ctl, "recording the refund outcome",
                     "WITH rf AS (UPDATE refund SET status = $2, gateway_ref = $3 "
                     " WHERE id = $1::bigint AND status = 'pending' "
                     " RETURNING charge_id, amount_minor) "
                     "UPDATE charge ch SET refunded_minor = ch.refunded_minor + rf.amount_minor, "
                     " updated_at = pl_now() FROM rf WHERE ch.id = rf.charge_id AND $2 = "
                     "'succeeded' RETURNING ch.id",
                     3, q);
        if (!r)
            return PL_EXIT_FAILED;
        PQclear(r);
    }
    json_t *d = json_pack("{s:s,s:s,s:I,s:s,s:s,s:s}", "charge_id", id, "outcome", outcome,
                          "http_status", (json_int_t)res.http_status, "gateway_ref", res.ref,
                          "code", res.code, "message", res.message);
    if ((rc = ctl_event(ctl, "refund", refund_id,
                        succeeded ? "succeeded" : unknown ? "unknown" : "failed", d)) ||
        (rc = ctl_commit(ctl)))
        return rc;
    if (unknown) {
        ctl_error("refund %s: the gateway's answer is unknown (%s%s%s); it stays pending: run "
                  "`pledgectl charge refund %s --resume` to send it again with the same key",
                  refund_id, res.message[0] ? res.message : outcome,
                  res.code[0] ? ", " : "", res.code, id);
        print_refund(ctl, refund_id);
        return PL_EXIT_FAILED;
    }
    if (!succeeded) {
        ctl_error("refund %s failed at the gateway: %s%s%s (HTTP %ld)", refund_id,
                  res.message[0] ? res.message : outcome, res.code[0] ? " - " : "", res.code,
                  res.http_status);
        print_refund(ctl, refund_id);
        return PL_EXIT_FAILED;
    }
    return print_refund(ctl, refund_id) ? PL_EXIT_FAILED : PL_EXIT_OK;
}
