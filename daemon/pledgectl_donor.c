/*
 * pledgectl donor … and pledgectl method …: donors and their payment
 * methods. Payment methods are gateway references only (cus_…, pm_…);
 * anything that looks like a card number is refused in every field.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "pledgectl.h"

/* ---- validation --------------------------------------------------------- */

static const int DONOR_MAX[DF_COUNT] = {
    [DF_REF] = 200,   [DF_NAME] = 500,   [DF_EMAIL] = 320,  [DF_ADDR1] = 500,
    [DF_ADDR2] = 500, [DF_CITY] = 200,   [DF_REGION] = 200, [DF_POSTAL] = 40,
    [DF_COUNTRY] = 2,
};

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

int ctl_donor_check(struct ctl_donor *d, bool creating, const char *const names[DF_COUNT],
                    ctl_bad_fn bad, void *arg)
{
    int problems = 0;
    char why[160];
    for (int i = 0; i < DF_COUNT; i++) {
        const char *v = d->f[i];
        if (!v)
            continue;
        if (!pl_ctl_text_ok(v)) {
            bad(arg, names[i], "not valid UTF-8 text (or contains control characters)");
            problems++;
            continue;
        }
        if (pl_ctl_looks_like_pan(v)) {
            bad(arg, names[i],
                "looks like a card number (13-19 digits); pledged never stores card data");
            problems++;
            continue;
        }
        if (utf8_chars(v) > (size_t)DONOR_MAX[i] && i != DF_COUNTRY) {
            snprintf(why, sizeof(why), "longer than %d characters", DONOR_MAX[i]);
            bad(arg, names[i], why);
            problems++;
        }
    }
    if (creating && !d->f[DF_NAME]) {
        bad(arg, names[DF_NAME], "is required");
        problems++;
    }
    if (d->f[DF_NAME] && strspn(d->f[DF_NAME], " \t\r\n") == strlen(d->f[DF_NAME])) {
        bad(arg, names[DF_NAME], "must not be empty");
        problems++;
    }
    if (d->f[DF_REF] && (creating ? d->f[DF_REF][0] == '\0' : false)) {
        bad(arg, names[DF_REF], "must not be empty (leave it out instead)");
        problems++;
    }
    const char *e = d->f[DF_EMAIL];
    if (e && *e) {
        const char *at = strchr(e, '@');
        if (!at || at == e || !at[1] || strchr(at + 1, '@') || strpbrk(e, " \t\r\n")) {
            snprintf(why, sizeof(why), "'%.80s' is not an email address (name@domain)", e);
            bad(arg, names[DF_EMAIL], why);
            problems++;
        }
    }
    const char *c = d->f[DF_COUNTRY];
    if (c && *c) {
        if (strlen(c) != 2 || !((c[0] | 0x20) >= 'a' && (c[0] | 0x20) <= 'z') ||
            !((c[1] | 0x20) >= 'a' && (c[1] | 0x20) <= 'z')) {
            snprintf(why, sizeof(why), "'%.40s' is not an ISO 3166 two-letter code (e.g. US)",
                     c);
            bad(arg, names[DF_COUNTRY], why);
            problems++;
        } else {
            d->country[0] = (char)(c[0] & ~0x20);
            d->country[1] = (char)(c[1] & ~0x20);
            d->country[2] = '\0';
            d->f[DF_COUNTRY] = d->country;
        }
    }
    return problems;
}

static bool ref_chars_ok(const char *s)
{
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_'))
            return false;
    return true;
}

int ctl_method_check(const struct ctl_method *m, bool required,
                     const char *const names[MF_COUNT], ctl_bad_fn bad, void *arg)
{
    int problems = 0;
    char why[160];
    for (int i = 0; i < MF_COUNT; i++) {
        const char *v = m->f[i];
        if (v && pl_ctl_looks_like_pan(v)) {
            bad(arg, names[i],
                "looks like a card number (13-19 digits); pledged never stores card data - "
                "give the gateway's references (cus_..., pm_...) instead");
            problems++;
            return problems; /* say nothing else about a field holding a PAN */
        }
    }
    static const struct {
        int field;
        const char *prefix;
        const char *what;
    } refs[] = {
        {MF_CUSTOMER, "cus_", "a gateway customer reference (cus_...)"},
        {MF_TOKEN, "pm_", "a gateway payment method token (pm_...)"},
    };
    for (size_t i = 0; i < PL_ARRAY_LEN(refs); i++) {
        const char *v = m->f[refs[i].field];
        if (!v || !*v) {
            if (required) {
                snprintf(why, sizeof(why), "is required: %s", refs[i].what);
                bad(arg, names[refs[i].field], why);
                problems++;
            }
            continue;
        }
        size_t plen = strlen(refs[i].prefix);
        if (strncmp(v, refs[i].prefix, plen) != 0 || strlen(v) == plen || strlen(v) > 255 ||
            !ref_chars_ok(v)) {
            snprintf(why, sizeof(why), "'%.60s' is not %s", v, refs[i].what);
            bad(arg, names[refs[i].field], why);
            problems++;
        }
    }
    const char *g = m->f[MF_GATEWAY];
    if (g && *g) {
        bool ok = g[0] >= 'a' && g[0] <= 'z' && strlen(g) <= 40;
        for (const char *p = g; *p && ok; p++)
            ok = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_';
        if (!ok) {
            bad(arg, names[MF_GATEWAY], "must be a driver name such as stripe");
            problems++;
        }
    }
    const char *b = m->f[MF_BRAND];
    if (b && *b && (!pl_ctl_text_ok(b) || strlen(b) > 40)) {
        bad(arg, names[MF_BRAND], "must be a short card brand name such as visa");
        problems++;
    }
    const char *l4 = m->f[MF_LAST4];
    if (l4 && *l4 && (strlen(l4) != 4 || strspn(l4, "0123456789") != 4)) {
        bad(arg, names[MF_LAST4], "must be exactly the last 4 digits of the card");
        problems++;
    }
    int64_t v;
    const char *em = m->f[MF_EXP_MONTH];
    if (em && *em && (pl_parse_i64(em, &v) < 0 || v < 1 || v > 12)) {
        snprintf(why, sizeof(why), "'%.20s' is not a month 1..12", em);
        bad(arg, names[MF_EXP_MONTH], why);
        problems++;
    }
    const char *ey = m->f[MF_EXP_YEAR];
    if (ey && *ey && (pl_parse_i64(ey, &v) < 0 || v < 2000 || v > 2200)) {
        snprintf(why, sizeof(why), "'%.20s' is not a four-digit year", ey);
        bad(arg, names[MF_EXP_YEAR], why);
        problems++;
    }
    return problems;
}

static const char *empty_null(const char *s)
{
    return s && *s ? s : NULL;
}

int ctl_donor_insert(struct ctl *ctl, const struct ctl_donor *d, char id[24])
{
    const char *p[DF_COUNT];
    for (int i = 0; i < DF_COUNT; i++)
        p[i] = d->f[i] ? d->f[i] : "";
    p[DF_REF] = empty_null(d->f[DF_REF]);
    p[DF_EMAIL] = empty_null(d->f[DF_EMAIL]);
    p[DF_COUNTRY] = empty_null(d->f[DF_COUNTRY]);
    PGresult *r = ctl_exec(ctl, "adding the donor",
                           "INSERT INTO donor (external_ref, full_name, email, address_line1, "
                           "address_line2, city, region, postal_code, country, created_at, "
                           "updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, pl_now(), "
                           "pl_now()) RETURNING id",
                           DF_COUNT, p);
    if (!r)
        return ctl->db_exit;
    pl_strlcpy(id, PQgetvalue(r, 0, 0), 24);
    PQclear(r);
    return 0;
}

int ctl_method_insert(struct ctl *ctl, const char *donor_id, const struct ctl_method *m,
                      char id[24])
{
    const char *p[8] = {
        donor_id,
        empty_null(m->f[MF_GATEWAY]) ? m->f[MF_GATEWAY] : "stripe",
        m->f[MF_CUSTOMER],
        m->f[MF_TOKEN],
        empty_null(m->f[MF_BRAND]),
        empty_null(m->f[MF_LAST4]),
        empty_null(m->f[MF_EXP_MONTH]),
        empty_null(m->f[MF_EXP_YEAR]),
    };
    PGresult *r = ctl_exec(ctl, "adding the payment method",
                           "INSERT INTO payment_method (donor_id, gateway, customer_ref, token, "
                           "brand, last4, exp_month, exp_year, created_at, updated_at) "
                           "VALUES ($1::bigint, $2, $3, $4, $5, $6, $7::smallint, $8::smallint, "
                           "pl_now(), pl_now()) RETURNING id",
                           8, p);
    if (!r)
        return ctl->db_exit;
    pl_strlcpy(id, PQgetvalue(r, 0, 0), 24);
    PQclear(r);
    return 0;
}

/* ---- queries ------------------------------------------------------------ */

static const char DONOR_SQL[] =
    "SELECT id, external_ref, full_name, email, address_line1, address_line2, city, region, "
    "postal_code, country, created_at, updated_at FROM donor WHERE id = $1::bigint";

static const char METHODS_SQL[] =
    "SELECT id, donor_id, gateway, customer_ref, token, brand, last4, exp_month, exp_year, "
    "status, invalid_reason, created_at FROM payment_method WHERE donor_id = $1::bigint "
    "ORDER BY id";

static const char PLEDGES_OF_DONOR_SQL[] =
    "SELECT p.id, p.external_ref, p.status, p.amount_minor, p.currency, c.exponent, "
    "CASE p.interval_months WHEN 1 THEN 'monthly' WHEN 3 THEN 'quarterly' "
    "WHEN 6 THEN 'semiannual' ELSE 'annual' END AS interval, "
    "coalesce(p.anchor_day::text, 'last') AS anchor, p.fund, p.next_charge_on, "
    "p.payment_method_id AS method_id FROM pledge p JOIN currency c ON c.code = p.currency "
    "WHERE p.donor_id = $1::bigint ORDER BY p.id";

/* ---- donor -------------------------------------------------------------- */

static const char *const DONOR_OPT_NAMES[DF_COUNT] = {
    "--ref", "--name", "--email", "--address1", "--address2", "--city", "--region",
    "--postal-code", "--country",
};

static const struct option DONOR_FIELD_OPTS[] = {
    {"ref", required_argument, NULL, DF_REF},
    {"name", required_argument, NULL, DF_NAME},
    {"email", required_argument, NULL, DF_EMAIL},
    {"address1", required_argument, NULL, DF_ADDR1},
    {"address2", required_argument, NULL, DF_ADDR2},
    {"city", required_argument, NULL, DF_CITY},
    {"region", required_argument, NULL, DF_REGION},
    {"postal-code", required_argument, NULL, DF_POSTAL},
    {"country", required_argument, NULL, DF_COUNTRY},
    {"by-ref", required_argument, NULL, 'r'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const char DONOR_ADD_USAGE[] =
    "usage: pledgectl donor add --name NAME [--ref REF] [--email EMAIL]\n"
    "                           [--address1 TEXT] [--address2 TEXT] [--city TEXT]\n"
    "                           [--region TEXT] [--postal-code TEXT] [--country CC]\n"
    "\n"
    "Add a donor. --ref is the donor's id in your CRM (unique); --country is an\n"
    "ISO 3166 two-letter code. Prints the new donor's id (the record with --json).\n";

static int print_donor_added(struct ctl *ctl, const char *id, const char *verb)
{
    if (ctl->json) {
        const char *p[1] = {id};
        PGresult *r = ctl_exec(ctl, "reading the donor", DONOR_SQL, 1, p);
        if (!r)
            return PL_EXIT_FAILED;
        ctl_print_json(ctl_result_row_json(r, 0));
        PQclear(r);
    } else if (ctl->mode == PL_TABLE_ALIGNED) {
        printf("donor %s %s\n", id, verb);
    } else {
        printf("%s\n", id);
    }
    return PL_EXIT_OK;
}

static int donor_add(struct ctl *ctl, int argc, char **argv)
{
    struct ctl_donor d = {0};
    int c;
    while ((c = getopt_long(argc, argv, "h", DONOR_FIELD_OPTS, NULL)) != -1) {
        if (c == 'h')
            return ctl_usage(DONOR_ADD_USAGE, true);
        if (c < 0 || c >= DF_COUNT)
            return ctl_usage(DONOR_ADD_USAGE, false);
        d.f[c] = optarg;
    }
    if (optind < argc) {
        ctl_error("donor add: unexpected argument '%s'", argv[optind]);
        return PL_EXIT_USAGE;
    }
    if (ctl_donor_check(&d, true, DONOR_OPT_NAMES, ctl_bad_option, NULL) > 0)
        return PL_EXIT_USAGE;
    if (!ctl_db(ctl))
        return PL_EXIT_FAILED;
    int rc = ctl_begin(ctl);
    if (rc)
        return rc;
    char id[24];
    if (d.f[DF_REF]) {
        const char *p[1] = {d.f[DF_REF]};
        PGresult *r = ctl_exec(ctl, "checking the external ref",
                               "SELECT id FROM donor WHERE external_ref = $1", 1, p);
        if (!r)
            return PL_EXIT_FAILED;
        if (PQntuples(r) > 0) {
            ctl_error("--ref: a donor with external ref '%s' already exists (id %s)",
                      d.f[DF_REF], PQgetvalue(r, 0, 0));
            PQclear(r);
            return PL_EXIT_CONFLICT;
        }
        PQclear(r);
    }
    if ((rc = ctl_donor_insert(ctl, &d, id)))
        return rc;
    json_t *detail = json_object();
    if (d.f[DF_REF])
        json_object_set_new(detail, "external_ref", json_string(d.f[DF_REF]));
    if ((rc = ctl_event(ctl, "donor", id, "created", detail)) || (rc = ctl_commit(ctl)))
        return rc;
    return print_donor_added(ctl, id, "added");
}

static const char DONOR_SHOW_USAGE[] =
    "usage: pledgectl donor show ID | --by-ref REF\n"
    "\n"
    "Show a donor with their payment methods and pledges.\n";

static int donor_show(struct ctl *ctl, int argc, char **argv)
{
    const char *by_ref = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "h", DONOR_FIELD_OPTS, NULL)) != -1) {
        if (c == 'h')
            return ctl_usage(DONOR_SHOW_USAGE, true);
        if (c != 'r')
            return ctl_usage(DONOR_SHOW_USAGE, false);
        by_ref = optarg;
    }
    if ((by_ref && optind != argc) || (!by_ref && optind != argc - 1))
        return ctl_usage(DONOR_SHOW_USAGE, false);
    if (!by_ref) {
        char tmp[24];
        int rc = ctl_parse_id("donor id", argv[optind], tmp);
        if (rc)
            return rc;
    }
    if (!ctl_db(ctl))
        return PL_EXIT_FAILED;
    char id[24];
    int rc = ctl_resolve_donor(ctl, by_ref ? NULL : argv[optind], by_ref, id);
    if (rc)
        return rc;
    const char *p[1] = {id};
    PGresult *dr = ctl_exec(ctl, "reading the donor", DONOR_SQL, 1, p);
    PGresult *mr = dr ? ctl_exec(ctl, "reading payment methods", METHODS_SQL, 1, p) : NULL;
    PGresult *pr = mr ? ctl_exec(ctl, "reading pledges", PLEDGES_OF_DONOR_SQL, 1, p) : NULL;
    if (!pr) {
        PQclear(dr);
        PQclear(mr);
        return PL_EXIT_FAILED;
    }
    if (ctl->json) {
        json_t *o = ctl_result_row_json(dr, 0);
        json_object_set_new(o, "methods", ctl_result_json(mr));
        json_object_set_new(o, "pledges", ctl_result_json(pr));
        ctl_print_json(o);
    } else {
        ctl_print_record(ctl, dr);
        bool tty = ctl->mode == PL_TABLE_ALIGNED;
        printf(tty ? "\nPayment methods:\n" : "\n# methods\n");
        if (PQntuples(mr) || !tty)
            ctl_print_result(ctl, mr);
        else
            printf("  (none)\n");
        printf(tty ? "\nPledges:\n" : "\n# pledges\n");
        if (PQntuples(pr) || !tty)
            ctl_print_result(ctl, pr);
        else
            printf("  (none)\n");
    }
    PQclear(dr);
    PQclear(mr);
    PQclear(pr);
    return PL_EXIT_OK;
}

static const char DONOR_LIST_USAGE[] =
    "usage: pledgectl donor list [--search TEXT] [--limit N] [--offset N]\n"
    "\n"
    "List donors, oldest first. --search matches name, email or external ref\n"
    "(case-insensitive substring). Default limit 100; --limit 0 lists all.\n";

static int parse_count(const char *opt, const char *s, char out[24])
{
    int64_t v;
    if (pl_parse_i64(s, &v) < 0 || v < 0) {
        ctl_error("%s: '%s' is not a number >= 0", opt, s);
        return PL_EXIT_USAGE;
    }
    snprintf(out, 24, "%lld", (long long)v);
    return 0;
}

static int donor_list(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"search", required_argument, NULL, 's'}, {"limit", required_argument, NULL, 'l'},
        {"offset", required_argument, NULL, 'o'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *search = NULL;
    char limit[24] = "100", offset[24] = "0";
    int c, rc;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            search = optarg;
            break;
        case 'l':
            if ((rc = parse_count("--limit", optarg, limit)))
                return rc;
            break;
        case 'o':
            if ((rc = parse_count("--offset", optarg, offset)))
                return rc;
            break;
        case 'h':
            return ctl_usage(DONOR_LIST_USAGE, true);
        default:
            return ctl_usage(DONOR_LIST_USAGE, false);
        }
    }
    if (optind < argc)
        return ctl_usage(DONOR_LIST_USAGE, false);
    if (!ctl_db(ctl))
        return PL_EXIT_FAILED;
    const char *p[3] = {search, limit, offset};
    PGresult *r = ctl_exec(
        ctl, "listing donors",
        "SELECT d.id, d.external_ref, d.full_name, d.email, d.country, "
        "(SELECT count(*) FROM payment_method m WHERE m.donor_id = d.id "
        " AND m.status = 'active') AS methods, "
        "(SELECT count(*) FROM pledge p WHERE p.donor_id = d.id "
        " AND p.status NOT IN ('cancelled', 'lapsed')) AS pledges, d.created_at "
        "FROM donor d WHERE $1::text IS NULL "
        " OR strpos(lower(d.full_name), lower($1)) > 0 "
        " OR strpos(lower(coalesce(d.email, '')), lower($1)) > 0 "
        " OR strpos(lower(coalesce(d.external_ref, '')), lower($1)) > 0 "
        "ORDER BY d.id LIMIT nullif($2::bigint, 0) OFFSET $3::bigint",
        3, p);
    return ctl_print_rows(ctl, r);
}

static const char DONOR_UPDATE_USAGE[] =
    "usage: pledgectl donor update ID|--by-ref REF [--ref REF] [--name NAME] [--email EMAIL]\n"
    "                              [--address1 TEXT] [--address2 TEXT] [--city TEXT]\n"
    "                              [--region TEXT] [--postal-code TEXT] [--country CC]\n"
    "\n"
    "Change a donor's details. An empty value (--email '') clears an optional\n"
    "field. The event log records every changed field with its old and new value.\n";

static const char *const DONOR_COLS[DF_COUNT] = {
    "external_ref", "full_name", "email", "address_line1", "address_line2", "city", "region",
    "postal_code", "country",
};

static int donor_update(struct ctl *ctl, int argc, char **argv)
{
    struct ctl_donor d = {0};
    const char *by_ref = NULL;
    int c, rc;
    while ((c = getopt_long(argc, argv, "h", DONOR_FIELD_OPTS, NULL)) != -1) {
        if (c == 'h')
            return ctl_usage(DONOR_UPDATE_USAGE, true);
        if (c == 'r') {
            by_ref = optarg;
            continue;
        }
        if (c < 0 || c >= DF_COUNT)
            return ctl_usage(DONOR_UPDATE_USAGE, false);
        d.f[c] = optarg;
    }
    if ((by_ref && optind != argc) || (!by_ref && optind != argc - 1))
        return ctl_usage(DONOR_UPDATE_USAGE, false);
    if (!by_ref && (rc = ctl_parse_id("donor id", argv[optind], (char[24]){0})))
        return rc;
    if (ctl_donor_check(&d, false, DONOR_OPT_NAMES, ctl_bad_option, NULL) > 0)
        return PL_EXIT_USAGE;
    if (!ctl_db(ctl))
        return PL_EXIT_FAILED;
    if ((rc = ctl_begin(ctl)))
        return rc;
    char id[24];
    if ((rc = ctl_resolve_donor(ctl, by_ref ? NULL : argv[optind], by_ref, id)))
        return rc;
    const char *p[1] = {id};
    PGresult *old = ctl_exec(ctl, "reading the donor",
                             "SELECT external_ref, full_name, email, address_line1, "
                             "address_line2, city, region, postal_code, country "
                             "FROM donor WHERE id = $1::bigint FOR UPDATE",
                             1, p);
    if (!old)
        return PL_EXIT_FAILED;
    /* new values: unchanged unless given; "" clears the nullable ones */
    const char *nv[DF_COUNT + 1];
    json_t *changed = json_object();
    for (int i = 0; i < DF_COUNT; i++) {
        const char *was = PQgetisnull(old, 0, i) ? NULL : PQgetvalue(old, 0, i);
        const char *now = was;
        if (d.f[i]) {
            now = d.f[i];
            if (!*now && (i == DF_REF || i == DF_EMAIL || i == DF_COUNTRY))
                now = NULL;
        }
        nv[i] = now;
        bool same = (!was && !now) || (was && now && strcmp(was, now) == 0);
        if (!same) {
            json_t *ch = json_object();
            json_object_set_new(ch, "from", was ? json_string(was) : json_null());
            json_object_set_new(ch, "to", now ? json_string(now) : json_null());
            json_object_set_new(changed, DONOR_COLS[i], ch);
        }
    }
    nv[DF_COUNT] = id;
    if (json_object_size(changed) == 0) {
        json_decref(changed);
        PQclear(old);
        ctl_rollback(ctl);
        if (!ctl->json)
            fprintf(stderr, "pledgectl: donor %s: nothing to change\n", id);
        return print_donor_added(ctl, id, "unchanged");
    }
    PGresult *r = ctl_exec(ctl, "updating the donor",
                           "UPDATE donor SET external_ref = $1, full_name = $2, email = $3, "
                           "address_line1 = $4, address_line2 = $5, city = $6, region = $7, "
                           "postal_code = $8, country = $9, updated_at = pl_now() "
                           "WHERE id = $10::bigint",
                           DF_COUNT + 1, nv);
    PQclear(old);
    if (!r) {
        json_decref(changed);
        return ctl->db_exit;
    }
    PQclear(r);
    json_t *detail = json_object();
    json_object_set_new(detail, "changed", changed);
    if ((rc = ctl_event(ctl, "donor", id, "updated", detail)) || (rc = ctl_commit(ctl)))
        return rc;
    return print_donor_added(ctl, id, "updated");
}

int ctl_cmd_donor(struct ctl *ctl, int argc, char **argv)
{
    static const struct ctl_verb verbs[] = {
        {"add", donor_add, "add a donor"},
        {"show", donor_show, "show a donor with payment methods and pledges"},
        {"list", donor_list, "list donors"},
        {"update", donor_update, "change a donor's details"},
    };
    return ctl_dispatch(ctl, "donor", "Donors: the people who pledge.", verbs,
                        PL_ARRAY_LEN(verbs), argc, argv);
}

/* ---- method ------------------------------------------------------------- */

static const char *const METHOD_OPT_NAMES[MF_COUNT] = {
    "--gateway", "--customer", "--token", "--brand", "--last4", "--exp-month", "--exp-year",
};

static const char METHOD_ADD_USAGE[] =
    "usage: pledgectl method add --donor ID|--donor-ref REF --customer cus_... --token pm_...\n"
    "                            [--brand BRAND] [--last4 NNNN] [--exp-month M]\n"
    "                            [--exp-year YYYY] [--gateway stripe]\n"
    "\n"
    "Register a payment method saved at the gateway. Only the gateway's references\n"
    "are stored; anything that looks like a card number is refused.\n";

static int method_add(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"gateway", required_argument, NULL, MF_GATEWAY},
        {"customer", required_argument, NULL, MF_CUSTOMER},
        {"token", required_argument, NULL, MF_TOKEN},
        {"brand", required_argument, NULL, MF_BRAND},
        {"last4", required_argument, NULL, MF_LAST4},
        {"exp-month", required_argument, NULL, MF_EXP_MONTH},
        {"exp-year", required_argument, NULL, MF_EXP_YEAR},
        {"donor", required_argument, NULL, 'd'},
        {"donor-ref", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct ctl_method m = {0};
    const char *donor = NULL, *donor_ref = NULL;
    int c, rc;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'h')
            return ctl_usage(METHOD_ADD_USAGE, true);
        else if (c == 'd')
            donor = optarg;
        else if (c == 'r')
            donor_ref = optarg;
        else if (c >= 0 && c < MF_COUNT)
            m.f[c] = optarg;
        else
            return ctl_usage(METHOD_ADD_USAGE, false);
    }
    if (optind < argc) {
        /* a stray argument may be a card number typed by mistake: never echo it */
        ctl_error("method add: unexpected argument%s",
                  pl_ctl_looks_like_pan(argv[optind]) ? " (it looks like a card number: "
                                                        "pledged never stores card data)"
                                                      : "");
        return PL_EXIT_USAGE;
    }
    if (!donor == !donor_ref) {
        ctl_error("method add: give exactly one of --donor ID or --donor-ref REF");
        return PL_EXIT_USAGE;
    }
    if (ctl_method_check(&m, true, METHOD_OPT_NAMES, ctl_bad_option, NULL) > 0)
        return PL_EXIT_USAGE;
    if (!ctl_db(ctl))
        return PL_EXIT_FAILED;
    if ((rc = ctl_begin(ctl)))
        return rc;
    char did[24], id[24];
    if ((rc = ctl_resolve_donor(ctl, donor, donor_ref, did)))
        return rc;
    const char *p[2] = {m.f[MF_GATEWAY] && *m.f[MF_GATEWAY] ? m.f[MF_GATEWAY] : "stripe",
                        m.f[MF_TOKEN]};
    PGresult *r = ctl_exec(ctl, "checking the token",
                           "SELECT id, donor_id FROM payment_method WHERE gateway = $1 "
                           "AND token = $2",
                           2, p);
    if (!r)
        return PL_EXIT_FAILED;
    if (PQntuples(r) > 0) {
        ctl_error("--token: %s is already registered (payment method %s of donor %s)",
                  m.f[MF_TOKEN], PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1));
        PQclear(r);
        return PL_EXIT_CONFLICT;
    }
    PQclear(r);
    if ((rc = ctl_method_insert(ctl, did, &m, id)))
        return rc;
    json_t *detail = json_pack("{s:s}", "donor_id", did);
    if ((rc = ctl_event(ctl, "payment_method", id, "created", detail)) || (rc = ctl_commit(ctl)))
        return rc;
    if (ctl->json) {
        const char *q[1] = {id};
        r = ctl_exec(ctl, "reading the payment method",
                     "SELECT id, donor_id, gateway, customer_ref, token, brand, last4, exp_month, "
                     "exp_year, status, invalid_reason, created_at FROM payment_method "
                     "WHERE id = $1::bigint",
                     1, q);
        if (!r)
            return PL_EXIT_FAILED;
        ctl_print_json(ctl_result_row_json(r, 0));
        PQclear(r);
    } else if (ctl->mode == PL_TABLE_ALIGNED) {
        printf("payment method %s added to donor %s\n", id, did);
    } else {
        printf("%s\n", id);
    }
    return PL_EXIT_OK;
}

static const char METHOD_LIST_USAGE[] =
    "usage: pledgectl method list [--donor ID|--donor-ref REF] [--status active|invalid]\n"
    "\n"
    "List payment methods (all donors unless one is given).\n";

static int method_list(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"donor", required_argument, NULL, 'd'}, {"donor-ref", required_argument, NULL, 'r'},
        {"status", required_argument, NULL, 's'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *donor = NULL, *donor_ref = NULL, *status = NULL;
    int c, rc;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            donor = optarg;
            break;
        case 'r':
            donor_ref = optarg;
            break;
        case 's':
            status = optarg;
            if (strcmp(status, "active") != 0 && strcmp(status, "invalid") != 0) {
                ctl_error("--status: '%s' is not active or invalid", status);
                return PL_EXIT_USAGE;
            }
            break;
        case 'h':
            return ctl_usage(METHOD_LIST_USAGE, true);
        default:
            return ctl_usage(METHOD_LIST_USAGE, false);
        }
    }
    if (optind < argc || (donor && donor_ref))
        return ctl_usage(METHOD_LIST_USAGE, false);
    if (!ctl_db(ctl))
        return PL_EXIT_FAILED;
    char did[24];
    const char *dp = NULL;
    if (donor || donor_ref) {
        if ((rc = ctl_resolve_donor(ctl, donor, donor_ref, did)))
            return rc;
        dp = did;
    }
    const char *p[2] = {dp, status};
    PGresult *r = ctl_exec(ctl, "listing payment methods",
                           "SELECT id, donor_id, gateway, customer_ref, token, brand, last4, "
                           "exp_month, exp_year, status, invalid_reason, created_at "
                           "FROM payment_method WHERE ($1::bigint IS NULL OR donor_id = $1) "
                           "AND ($2::text IS NULL OR status = $2) ORDER BY id",
                           2, p);
    return ctl_print_rows(ctl, r);
}

static const char METHOD_INVALIDATE_USAGE[] =
    "usage: pledgectl method invalidate ID [--reason TEXT]\n"
    "\n"
    "Mark a payment method unusable (e.g. the donor reported the card stolen).\n"
    "Active and past-due pledges that use it become needs_payment_method at once,\n"
    "so nothing is charged to it; `pledge set-method` reactivates them.\n";

static int method_invalidate(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"reason", required_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *reason = "invalidated by operator";
    int c, rc;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'R')
            reason = optarg;
        else if (c == 'h')
            return ctl_usage(METHOD_INVALIDATE_USAGE, true);
        else
            return ctl_usage(METHOD_INVALIDATE_USAGE, false);
    }
    if (optind != argc - 1)
        return ctl_usage(METHOD_INVALIDATE_USAGE, false);
    char id[24];
    if ((rc = ctl_parse_id("payment method id", argv[optind], id)))
        return rc;
    if (!*reason || !ctl_check_text("--reason", reason))
        return PL_EXIT_USAGE;
    if (!ctl_db(ctl) || ctl_begin(ctl))
        return PL_EXIT_FAILED;
    const char *p[2] = {id, reason};
    PGresult *r = ctl_exec(ctl, "reading the payment method",
                           "SELECT status FROM payment_method WHERE id = $1::bigint FOR UPDATE",
                           1, p);
    if (!r)
        return PL_EXIT_FAILED;
    if (PQntuples(r) == 0) {
        PQclear(r);
        ctl_error("no payment method with id %s", id);
        return PL_EXIT_NOTFOUND;
    }
    bool already = strcmp(PQgetvalue(r, 0, 0), "invalid") == 0;
    PQclear(r);
    if (already) {
        ctl_error("payment method %s is already invalid", id);
        return PL_EXIT_CONFLICT;
    }
    r = ctl_exec(ctl, "invalidating the payment method",
                 "UPDATE payment_method SET status = 'invalid', invalid_reason = $2, "
                 "updated_at = pl_now() WHERE id = $1::bigint",
                 2, p);
    if (!r)
        return PL_EXIT_FAILED;
    PQclear(r);
    if ((rc = ctl_event(ctl, "payment_method", id, "invalidated",
                        json_pack("{s:s}", "reason", reason))))
        return rc;
    r = ctl_exec(ctl, "updating pledges",
                 "WITH p AS (UPDATE pledge SET status = 'needs_payment_method', "
                 "updated_at = pl_now() WHERE payment_method_id = $1::bigint "
                 "AND status IN ('active', 'past_due') RETURNING id) "
                 "INSERT INTO event (at, actor, entity, entity_id, action, detail) "
                 "SELECT pl_now(), $2, 'pledge', p.id, 'needs_payment_method', "
                 "jsonb_build_object('payment_method_id', $1::bigint, "
                 "'reason', 'payment method invalidated') FROM p RETURNING entity_id",
                 2, (const char *[]){id, ctl->actor});
    if (!r)
        return PL_EXIT_FAILED;
    int npledges = PQntuples(r);
    PQclear(r);
    if ((rc = ctl_commit(ctl)))
        return rc;
    if (ctl->json)
        ctl_print_json(json_pack("{s:I,s:s,s:i}", "id", (json_int_t)atoll(id), "status",
                                 "invalid", "pledges_needing_method", npledges));
    else
        printf("payment method %s invalidated; %d pledge%s now need%s a new payment method\n",
               id, npledges, npledges == 1 ? "" : "s", npledges == 1 ? "s" : "");
    return PL_EXIT_OK;
}

int ctl_cmd_method(struct ctl *ctl, int argc, char **argv)
{
    static const struct ctl_verb verbs[] = {
        {"add", method_add, "register a gateway payment method (cus_/pm_ references)"},
        {"list", method_list, "list payment methods"},
        {"invalidate", method_invalidate, "mark a payment method unusable"},
    };
    return ctl_dispatch(ctl, "method",
                        "Payment methods: gateway references only, never card numbers.", verbs,
                        PL_ARRAY_LEN(verbs), argc, argv);
}
