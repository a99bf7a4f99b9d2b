/*
 * pledgectl status (queue health at a glance) and pledgectl clock (the test
 * clock of a test database; refused on a production database).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "pledgectl.h"

/* ---- status ------------------------------------------------------------- */

static const char STATUS_USAGE[] =
    "usage: pledgectl status\n"
    "\n"
    "Queue health at a glance: charges by status, the oldest due scheduled charge,\n"
    "unknown outcomes and the oldest one's age, daemons (halted?), last daemon\n"
    "activity, pledges needing a payment method and lapsed pledges.\n";

static const char STATUS_SQL[] =
    "SELECT pl_now() AS now, pl_today($1) AS today, "
    " (SELECT test_mode FROM instance) AS test_mode, "
    " (SELECT test_now IS NOT NULL FROM instance) AS test_clock, "
    " (SELECT json_object_agg(s, coalesce(n, 0) ORDER BY i) FROM unnest(ARRAY['scheduled', "
    "  'processing', 'retry_wait', 'unknown', 'succeeded', 'failed', 'action_required', "
    "  'skipped', 'cancelled']) WITH ORDINALITY AS t(s, i) LEFT JOIN (SELECT status, count(*) "
    "  AS n FROM charge GROUP BY status) c ON c.status = t.s) AS charges, "
    " (SELECT json_object_agg(s, coalesce(n, 0) ORDER BY i) FROM unnest(ARRAY['active', "
    "  'paused', 'past_due', 'needs_payment_method', 'lapsed', 'cancelled']) WITH ORDINALITY "
    "  AS t(s, i) LEFT JOIN (SELECT status, count(*) AS n FROM pledge GROUP BY status) p "
    "  ON p.status = t.s) AS pledges, "
    " (SELECT count(*) FROM pledge WHERE status = 'needs_payment_method') "
    "  AS pledges_needing_payment_method, "
    " (SELECT count(*) FROM pledge WHERE status = 'lapsed') AS pledges_lapsed, "
    " (SELECT count(*) FROM charge WHERE status IN ('scheduled', 'retry_wait') "
    "  AND next_attempt_at <= pl_now()) AS due_now, "
    " (SELECT id FROM charge WHERE status = 'scheduled' AND next_attempt_at <= pl_now() "
    "  ORDER BY next_attempt_at, id LIMIT 1) AS oldest_due_id, "
    " (SELECT min(next_attempt_at) FROM charge WHERE status = 'scheduled' "
    "  AND next_attempt_at <= pl_now()) AS oldest_due_at, "
    " (SELECT floor(extract(epoch FROM pl_now() - min(next_attempt_at)))::bigint FROM charge "
    "  WHERE status = 'scheduled' AND next_attempt_at <= pl_now()) AS oldest_due_age_s, "
    " (SELECT count(*) FROM charge_attempt WHERE state = 'unknown') AS unknown_attempts, "
    " (SELECT charge_id FROM charge_attempt WHERE state = 'unknown' ORDER BY started_at "
    "  LIMIT 1) AS oldest_unknown_charge_id, "
    " (SELECT min(started_at) FROM charge_attempt WHERE state = 'unknown') "
    "  AS oldest_unknown_since, "
    " (SELECT floor(extract(epoch FROM now() - min(started_at)))::bigint FROM charge_attempt "
    "  WHERE state = 'unknown') AS oldest_unknown_age_s, "
    " (SELECT count(*) FROM daemon_node) AS daemons, "
    " (SELECT count(*) FROM daemon_node WHERE halted) AS daemons_halted, "
    " (SELECT max(last_seen_at) FROM daemon_node) AS last_daemon_activity, "
    " (SELECT max(at) FROM event WHERE actor NOT LIKE 'pledgectl:%') AS last_billing_event";

static int cmd_status(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1)
        return ctl_usage(STATUS_USAGE, c == 'h');
    if (optind < argc)
        return ctl_usage(STATUS_USAGE, false);
    if (!ctl_db(ctl))
        return PL_EXIT_FAILED;
    const char *p[1] = {ctl->tz};
    PGresult *r = ctl_exec(ctl, "reading the queue", STATUS_SQL, 1, p);
    if (!r)
        return PL_EXIT_FAILED;
    PGresult *d = ctl_exec(ctl, "reading daemons",
                           "SELECT node_name, pid, version, started_at, last_seen_at, halted, "
                           "halt_reason, status_line FROM daemon_node ORDER BY node_name",
                           0, NULL);
    if (!d) {
        PQclear(r);
        return PL_EXIT_FAILED;
    }
    if (ctl->json) {
        json_t *o = ctl_result_row_json(r, 0);
        json_object_set_new(o, "halted", json_boolean(atoll(ctl_get(r, 0, "daemons_halted")) > 0));
        json_object_set_new(o, "daemon_nodes", ctl_result_json(d));
        ctl_print_json(o);
    } else {
        ctl_print_record(ctl, r);
        bool tty = ctl->mode == PL_TABLE_ALIGNED;
        printf(tty ? "\nDaemons:\n" : "\n# daemon_nodes\n");
        if (PQntuples(d) || !tty)
            ctl_print_result(ctl, d);
        else
            printf("  (none has reported)\n");
        for (int i = 0; i < PQntuples(d); i++)
            if (strcmp(PQgetvalue(d, i, 5), "t") == 0)
                fprintf(stderr, "pledgectl: daemon %s is HALTED: %s\n", PQgetvalue(d, i, 0),
                        PQgetisnull(d, i, 6) ? "(no reason given)" : PQgetvalue(d, i, 6));
    }
    PQclear(r);
    PQclear(d);
    return PL_EXIT_OK;
}

int ctl_cmd_status(struct ctl *ctl, int argc, char **argv)
{
    optind = 0;
    return cmd_status(ctl, argc, argv);
}

/* ---- clock -------------------------------------------------------------- */

static const char CLOCK_SHOW_SQL[] =
    "SELECT test_mode, test_now, pl_now() AS now, now() AS real_now, pl_today($1) AS today, "
    "$1::text AS timezone FROM instance";

static int clock_show(struct ctl *ctl, int argc, char **argv)
{
    static const char usage[] = "usage: pledgectl clock show\n\nShow the clock: real or test.\n";
    static const struct option opts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1)
        return ctl_usage(usage, c == 'h');
    if (optind < argc)
        return ctl_usage(usage, false);
    if (!ctl_db(ctl))
        return PL_EXIT_FAILED;
    const char *p[1] = {ctl->tz};
    PGresult *r = ctl_exec(ctl, "reading the clock", CLOCK_SHOW_SQL, 1, p);
    if (!r)
        return PL_EXIT_FAILED;
    ctl_print_record(ctl, r);
    PQclear(r);
    return PL_EXIT_OK;
}

/* Lock the instance row and refuse a production database. */
static int lock_test_clock(struct ctl *ctl, char *old, size_t n)
{
    PGresult *r = ctl_exec(ctl, "reading the clock",
                           "SELECT test_mode, coalesce(test_now::text, '') FROM instance "
                           "FOR UPDATE",
                           0, NULL);
    if (!r)
        return PL_EXIT_FAILED;
    bool test = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    if (test)
        pl_strlcpy(old, PQgetvalue(r, 0, 1), n);
    PQclear(r);
    if (!test) {
        ctl_error("clock: refused: this is a production database (not created with `pledgectl "
                  "migrate --test-mode`); its clock is the real time and cannot be moved");
        return PL_EXIT_CONFLICT;
    }
    return 0;
}

static int set_clock(struct ctl *ctl, const char *sql, const char *arg, const char *action)
{
    if (!ctl_db(ctl) || ctl_begin(ctl))
        return PL_EXIT_FAILED;
    char old[64];
    int rc = lock_test_clock(ctl, old, sizeof(old));
    if (rc)
        return rc;
    const char *p[1] = {arg};
    PGresult *r = ctl_exec(ctl, "moving the clock", sql, arg ? 1 : 0, arg ? p : NULL);
    if (!r)
        return ctl->db_exit == PL_EXIT_USAGE ? PL_EXIT_USAGE : PL_EXIT_FAILED;
    json_t *d = json_object();
    json_object_set_new(d, "from", old[0] ? json_string(old) : json_null());
    json_object_set_new(d, "to", PQgetisnull(r, 0, 0) ? json_null()
                                                       : json_string(PQgetvalue(r, 0, 0)));
    if (arg)
        json_object_set_new(d, "argument", json_string(arg));
    PQclear(r);
    if ((rc = ctl_event(ctl, "clock", NULL, action, d)))
        return rc;
    ctl_wake(ctl);
    if ((rc = ctl_commit(ctl)))
        return rc;
    const char *q[1] = {ctl->tz};
    r = ctl_exec(ctl, "reading the clock", CLOCK_SHOW_SQL, 1, q);
    if (!r)
        return PL_EXIT_FAILED;
    ctl_print_record(ctl, r);
    PQclear(r);
    return PL_EXIT_OK;
}

static int clock_set(struct ctl *ctl, int argc, char **argv)
{
    static const char usage[] =
        "usage: pledgectl clock set TIMESTAMP|real\n"
        "\n"
        "Set the test clock (test databases only). TIMESTAMP is anything PostgreSQL\n"
        "reads as timestamptz, e.g. '2026-03-01 09:00' (org time zone) or\n"
        "2026-03-01T09:00:00Z; 'now' freezes the clock at the current real time;\n"
        "'real' returns to the real time.\n";
    static const struct option opts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1)
        return ctl_usage(usage, c == 'h');
    if (optind != argc - 1)
        return ctl_usage(usage, false);
    const char *arg = argv[optind];
    if (strcmp(arg, "real") == 0)
        return set_clock(ctl, "UPDATE instance SET test_now = NULL RETURNING test_now", NULL,
                         "real_time");
    return set_clock(ctl, "UPDATE instance SET test_now = $1::timestamptz RETURNING test_now",
                     arg, "set");
}

static int clock_advance(struct ctl *ctl, int argc, char **argv)
{
    static const char usage[] =
        "usage: pledgectl clock advance DURATION\n"
        "\n"
        "Move the test clock forward (test databases only; from the real time when\n"
        "the clock is not set). DURATION: 30s 15m 36h 1d, or a PostgreSQL interval\n"
        "such as '1 month' or '2 weeks'.\n";
    static const struct option opts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1)
        return ctl_usage(usage, c == 'h');
    if (optind != argc - 1)
        return ctl_usage(usage, false);
    const char *arg = argv[optind];
    int64_t ms;
    char interval[64];
    if (pl_config_parse_duration(arg, &ms) == 0)
        snprintf(interval, sizeof(interval), "%lld milliseconds", (long long)ms);
    else
        pl_strlcpy(interval, arg, sizeof(interval));
    if (strchr(arg, '-')) {
        ctl_error("clock advance: '%s': the clock only moves forward (use clock set)", arg);
        return PL_EXIT_USAGE;
    }
    return set_clock(ctl,
                     "UPDATE instance SET test_now = coalesce(test_now, now()) + $1::interval "
                     "RETURNING test_now",
                     interval, "advanced");
}

int ctl_cmd_clock(struct ctl *ctl, int argc, char **argv)
{
    static const struct ctl_verb verbs[] = {
        {"show", clock_show, "show the clock (real or test)"},
        {"set", clock_set, "set the test clock, or 'real'"},
        {"advance", clock_advance, "move the test clock forward"},
    };
    return ctl_dispatch(ctl, "clock",
                        "The test clock: moves \"now\" for daemons and pledgectl together, in "
                        "test databases only.",
                        verbs, PL_ARRAY_LEN(verbs), argc, argv);
}
