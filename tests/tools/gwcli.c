/*
 * pledged-gwcli — drive lib/http + a gateway driver from the command line,
 * for tests against the mock gateway. Prints one JSON object per line per
 * result, and for bulk-charge a final {"summary": …} line.
 *
 *   pledged-gwcli --base-url URL --api-key-file F [client options] COMMAND …
 *
 * client options: --driver NAME (stripe) --max-in-flight N --rate-limit R
 *   --rate-burst B --max-retries N --retry-base-ms N --retry-cap-ms N
 *   --connect-timeout-ms N --request-timeout-ms N --max-body-bytes N
 * commands:
 *   charge --amount N --currency C [--customer cus_…] --pm pm_… --key K
 *          [--charge-id ID] [--description D] [--suffix S] [--meta k=v]…
 *   lookup --key K | --ref pi_…
 *   refund --ref pi_… [--amount N] [--reason R] --key K
 *   bulk-charge --count N [--pm pm_…] [--amount N] [--currency C]
 *          [--customer cus_…] [--key-prefix P] [--quiet]
 *
 * Exit: 0 when every operation completed (whatever its class), 1 when one
 * could not be started, 2 usage. The API key is read from a file and only
 * ever handed to the driver.
 */
#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "gateway.h"
#include "http.h"
#include "util.h"

#define MAX_META 16

struct cli {
    uv_loop_t *loop;
    struct pl_http *http;
    struct pl_gateway *gw;
    unsigned pending;
    unsigned outcomes[PL_OUT_COUNT];
    unsigned canceled;
    bool quiet;
    int64_t t0_us;
};

static void usage(void)
{
    fprintf(stderr,
            "usage: pledged-gwcli --base-url URL --api-key-file FILE [options] COMMAND ...\n"
            "  commands: charge, lookup, refund, bulk-charge (see the header of gwcli.c)\n");
    exit(PL_EXIT_USAGE);
}

static int64_t num(const char *s, const char *what)
{
    int64_t v;
    if (pl_parse_i64(s, &v) < 0) {
        fprintf(stderr, "pledged-gwcli: %s: not an integer: %s\n", what, s);
        exit(PL_EXIT_USAGE);
    }
    return v;
}

static const char *transport_name(enum pl_http_transport t)
{
    switch (t) {
    case PL_HTTP_REPLIED:
        return "replied";
    case PL_HTTP_NOT_SENT:
        return "not_sent";
    case PL_HTTP_MAYBE_SENT:
        return "maybe_sent";
    }
    return "invalid";
}

static void print_result(const struct pl_gateway_result *r)
{
    json_t *o = json_object();
    json_object_set_new(o, "op", json_string(pl_gateway_op_name(r->op)));
    json_object_set_new(o, "outcome", json_string(pl_outcome_name(r->outcome)));
    json_object_set_new(o, "err", json_integer(r->err));
    json_object_set_new(o, "http_status", json_integer(r->http_status));
    json_object_set_new(o, "transport", json_string(transport_name(r->transport)));
#define S(name) json_object_set_new(o, #name, json_string(r->name))
    S(ref);
    S(charge_ref);
    S(object_status);
    S(currency);
    S(attempt_key);
    S(request_id);
    S(error_type);
    S(code);
    S(decline_code);
    S(advice_code);
#undef S
    /* the gateway's message may hold invalid UTF-8: jansson refuses that */
    json_t *msg = json_string(r->message);
    json_object_set_new(o, "message", msg ? msg : json_string("(not UTF-8)"));
    json_object_set_new(o, "amount_minor", json_integer(r->amount_minor));
    json_object_set_new(o, "amount_received_minor", json_integer(r->amount_received_minor));
    if (r->has_fee)
        json_object_set_new(o, "fee_minor", json_integer(r->fee_minor));
    json_object_set_new(o, "retry_after_ms", json_integer(r->retry_after_ms));
    json_object_set_new(o, "replayed", json_boolean(r->replayed));
    json_object_set_new(o, "livemode", json_boolean(r->livemode));
    json_object_set_new(o, "matches", json_integer(r->matches));
    json_object_set_new(o, "sends", json_integer(r->sends));
    json_object_set_new(o, "duration_ms", json_real((double)r->duration_us / 1000.0));
    char *s = json_dumps(o, JSON_COMPACT);
    if (s) {
        puts(s);
        free(s);
    }
    json_decref(o);
    fflush(stdout);
}

static void on_result(const struct pl_gateway_result *r, void *ud)
{
    struct cli *c = ud;
    c->outcomes[r->outcome < PL_OUT_COUNT ? r->outcome : PL_OUT_UNKNOWN]++;
    if (r->err == PL_ECANCELED)
        c->canceled++;
    if (!c->quiet)
        print_result(r);
    c->pending--;
}

static void print_summary(struct cli *c, unsigned count)
{
    struct pl_http_stats st;
    pl_http_stats(c->http, &st);
    double elapsed = (double)(pl_monotonic_us() - c->t0_us) / 1e6;
    double span = (double)(st.last_start_us - st.first_start_us) / 1e6;
    json_t *o = json_object();
    json_t *by = json_object();
    for (unsigned i = 0; i < PL_OUT_COUNT; i++)
        if (c->outcomes[i])
            json_object_set_new(by, pl_outcome_name((enum pl_outcome)i),
                                json_integer(c->outcomes[i]));
    json_object_set_new(o, "count", json_integer(count));
    json_object_set_new(o, "by_outcome", by);
    json_object_set_new(o, "canceled", json_integer(c->canceled));
    json_object_set_new(o, "elapsed_s", json_real(elapsed));
    json_object_set_new(o, "http_started", json_integer((json_int_t)st.started));
    json_object_set_new(o, "start_span_s", json_real(span));
    /* starts per second between the first and the last start: what the
     * token bucket governs, independent of reply latency */
    json_object_set_new(o, "req_per_s",
                        json_real(span > 0 ? (double)(st.started - 1) / span : 0.0));
    json_object_set_new(o, "max_in_flight_observed", json_integer(st.max_in_flight_seen));
    json_object_set_new(o, "status_429", json_integer((json_int_t)st.status_429));
    json_object_set_new(o, "not_sent", json_integer((json_int_t)st.not_sent));
    json_object_set_new(o, "maybe_sent", json_integer((json_int_t)st.maybe_sent));
    json_object_set_new(
        o, "duration_ms_avg",
        json_real(st.completed ? (double)st.duration_us_sum / (double)st.completed / 1000.0 : 0.0));
    json_t *wrap = json_object();
    json_object_set_new(wrap, "summary", o);
    char *s = json_dumps(wrap, JSON_COMPACT);
    if (s) {
        puts(s);
        free(s);
    }
    json_decref(wrap);
    fflush(stdout);
}

static void run_until_idle(struct cli *c)
{
    while (c->pending > 0) {
        if (uv_run(c->loop, UV_RUN_ONCE) == 0 && c->pending > 0) {
            /* nothing left to wake us: cannot happen, every op ends */
            fprintf(stderr, "pledged-gwcli: loop idle with %u operations pending\n", c->pending);
            break;
        }
    }
}

int main(int argc, char **argv)
{
    const char *base_url = NULL, *key_file = NULL, *driver = "stripe";
    struct pl_http_opts hopts = {0};
    struct pl_gateway_opts gopts;
    pl_gateway_opts_init(&gopts);

    enum {
        O_BASE = 256,
        O_KEYFILE,
        O_DRIVER,
        O_MIF,
        O_RATE,
        O_BURST,
        O_RETRIES,
        O_RBASE,
        O_RCAP,
        O_CTO,
        O_RTO,
        O_MAXBODY,
    };
    static const struct option gopt[] = {
        {"base-url", required_argument, NULL, O_BASE},
        {"api-key-file", required_argument, NULL, O_KEYFILE},
        {"driver", required_argument, NULL, O_DRIVER},
        {"max-in-flight", required_argument, NULL, O_MIF},
        {"rate-limit", required_argument, NULL, O_RATE},
        {"rate-burst", required_argument, NULL, O_BURST},
        {"max-retries", required_argument, NULL, O_RETRIES},
        {"retry-base-ms", required_argument, NULL, O_RBASE},
        {"retry-cap-ms", required_argument, NULL, O_RCAP},
        {"connect-timeout-ms", required_argument, NULL, O_CTO},
        {"request-timeout-ms", required_argument, NULL, O_RTO},
        {"max-body-bytes", required_argument, NULL, O_MAXBODY},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    int ch;
    /* '+': stop at the command; its own options are parsed below */
    while ((ch = getopt_long(argc, argv, "+h", gopt, NULL)) != -1) {
        switch (ch) {
        case O_BASE:
            base_url = optarg;
            break;
        case O_KEYFILE:
            key_file = optarg;
            break;
        case O_DRIVER:
            driver = optarg;
            break;
        case O_MIF:
            hopts.max_in_flight = (unsigned)num(optarg, "--max-in-flight");
            break;
        case O_RATE:
            hopts.rate_limit = (unsigned)num(optarg, "--rate-limit");
            break;
        case O_BURST:
            hopts.rate_burst = (unsigned)num(optarg, "--rate-burst");
            break;
        case O_RETRIES:
            gopts.max_retries = (unsigned)num(optarg, "--max-retries");
            break;
        case O_RBASE:
            gopts.retry_base_ms = (unsigned)num(optarg, "--retry-base-ms");
            break;
        case O_RCAP:
            gopts.retry_cap_ms = (unsigned)num(optarg, "--retry-cap-ms");
            break;
        case O_CTO:
            hopts.connect_timeout_ms = (unsigned)num(optarg, "--connect-timeout-ms");
            break;
        case O_RTO:
            hopts.request_timeout_ms = (unsigned)num(optarg, "--request-timeout-ms");
            break;
        case O_MAXBODY:
            hopts.max_body_bytes = (size_t)num(optarg, "--max-body-bytes");
            break;
        default:
            usage();
        }
    }
    if (!base_url || !key_file || optind >= argc)
        usage();
    const char *cmd = argv[optind];
    int cargc = argc - optind;
    char **cargv = argv + optind;

    /* command options */
    int64_t amount = -1, count = 0, charge_id = -1;
    const char *currency = "USD", *customer = NULL, *pm = NULL, *key = NULL, *ref = NULL;
    const char *description = NULL, *suffix = NULL, *reason = NULL, *key_prefix = NULL;
    struct pl_gateway_kv meta[MAX_META + 2];
    size_t n_meta = 0;
    bool quiet = false;
    static const struct option copt[] = {
        {"amount", required_argument, NULL, 'a'},
        {"currency", required_argument, NULL, 'c'},
        {"customer", required_argument, NULL, 'u'},
        {"pm", required_argument, NULL, 'p'},
        {"key", required_argument, NULL, 'k'},
        {"ref", required_argument, NULL, 'r'},
        {"charge-id", required_argument, NULL, 'i'},
        {"description", required_argument, NULL, 'd'},
        {"suffix", required_argument, NULL, 's'},
        {"reason", required_argument, NULL, 'R'},
        {"meta", required_argument, NULL, 'm'},
        {"count", required_argument, NULL, 'n'},
        {"key-prefix", required_argument, NULL, 'P'},
        {"quiet", no_argument, NULL, 'q'},
        {0},
    };
    optind = 1;
    while ((ch = getopt_long(cargc, cargv, "", copt, NULL)) != -1) {
        switch (ch) {
        case 'a':
            amount = num(optarg, "--amount");
            break;
        case 'c':
            currency = optarg;
            break;
        case 'u':
            customer = optarg;
            break;
        case 'p':
            pm = optarg;
            break;
        case 'k':
            key = optarg;
            break;
        case 'r':
            ref = optarg;
            break;
        case 'i':
            charge_id = num(optarg, "--charge-id");
            break;
        case 'd':
            description = optarg;
            break;
        case 's':
            suffix = optarg;
            break;
        case 'R':
            reason = optarg;
            break;
        case 'm': {
            char *eq = strchr(optarg, '=');
            if (!eq || n_meta >= MAX_META)
                usage();
            *eq = 0;
            meta[n_meta].key = optarg;
            meta[n_meta].value = eq + 1;
            n_meta++;
            break;
        }
        case 'n':
            count = num(optarg, "--count");
            break;
        case 'P':
            key_prefix = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        default:
            usage();
        }
    }

    char *api_key = NULL;
    size_t api_key_len = 0;
    int err = pl_read_file(key_file, 4096, &api_key, &api_key_len);
    if (err < 0) {
        fprintf(stderr, "pledged-gwcli: %s: %s\n", key_file, pl_strerror(err));
        return PL_EXIT_FAILED;
    }
    pl_rstrip(api_key);
    gopts.base_url = base_url;
    gopts.api_key = api_key;

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "pledged-gwcli: curl_global_init failed\n");
        return PL_EXIT_FAILED;
    }
    struct cli c = {.loop = uv_default_loop(), .quiet = quiet, .t0_us = pl_monotonic_us()};
    c.http = pl_http_new(c.loop, &hopts);
    if (!c.http) {
        fprintf(stderr, "pledged-gwcli: cannot set up the HTTP client\n");
        return PL_EXIT_FAILED;
    }
    err = pl_gateway_new(c.loop, c.http, driver, &gopts, &c.gw);
    memset(api_key, 0, api_key_len);
    free(api_key);
    if (err < 0) {
        fprintf(stderr, "pledged-gwcli: gateway %s: %s (check --base-url and the key file)\n",
                driver, pl_strerror(err));
        return PL_EXIT_FAILED;
    }

    int rc = PL_EXIT_OK;
    unsigned started = 0;
    char charge_id_buf[24];
    if (strcmp(cmd, "charge") == 0) {
        if (amount <= 0 || !pm || !key)
            usage();
        if (charge_id >= 0) {
            snprintf(charge_id_buf, sizeof charge_id_buf, "%lld", (long long)charge_id);
            meta[n_meta++] = (struct pl_gateway_kv){PL_GATEWAY_META_CHARGE, charge_id_buf};
        }
        meta[n_meta++] = (struct pl_gateway_kv){PL_GATEWAY_META_ATTEMPT, key};
        struct pl_gateway_charge ch_req = {
            .amount_minor = amount,
            .currency = currency,
            .customer_ref = customer,
            .payment_method = pm,
            .idempotency_key = key,
            .metadata = meta,
            .n_metadata = n_meta,
            .description = description,
            .statement_descriptor_suffix = suffix,
        };
        err = pl_gateway_charge(c.gw, &ch_req, on_result, &c, NULL);
        started = 1;
    } else if (strcmp(cmd, "lookup") == 0) {
        if (key && !ref)
            err = pl_gateway_lookup_by_key(c.gw, key, on_result, &c, NULL);
        else if (ref && !key)
            err = pl_gateway_lookup_by_ref(c.gw, ref, on_result, &c, NULL);
        else
            usage();
        started = 1;
    } else if (strcmp(cmd, "refund") == 0) {
        if (!ref || !key)
            usage();
        struct pl_gateway_refund rf = {
            .payment_ref = ref,
            .amount_minor = amount > 0 ? amount : 0,
            .reason = reason,
            .idempotency_key = key,
            .metadata = meta,
            .n_metadata = n_meta,
        };
        err = pl_gateway_refund(c.gw, &rf, on_result, &c, NULL);
        started = 1;
    } else if (strcmp(cmd, "bulk-charge") == 0) {
        if (count <= 0)
            usage();
        char prefix[96];
        if (key_prefix)
            pl_strlcpy(prefix, key_prefix, sizeof prefix);
        else
            snprintf(prefix, sizeof prefix, "gwcli-%ld-%lld", (long)getpid(),
                     (long long)(pl_monotonic_us() / 1000));
        err = 0;
        for (int64_t i = 0; i < count && err == 0; i++) {
            char k[160], id[24];
            snprintf(k, sizeof k, "%s-%lld", prefix, (long long)i);
            snprintf(id, sizeof id, "%lld", (long long)i);
            struct pl_gateway_kv m[2] = {{PL_GATEWAY_META_CHARGE, id},
                                         {PL_GATEWAY_META_ATTEMPT, k}};
            struct pl_gateway_charge ch_req = {
                .amount_minor = amount > 0 ? amount : 1000,
                .currency = currency,
                .customer_ref = customer,
                .payment_method = pm ? pm : "pm_card_visa",
                .idempotency_key = k,
                .metadata = m,
                .n_metadata = 2,
            };
            err = pl_gateway_charge(c.gw, &ch_req, on_result, &c, NULL);
            if (err == 0)
                c.pending++;
        }
        started = 0; /* counted above */
    } else {
        usage();
    }
    if (err < 0) {
        fprintf(stderr, "pledged-gwcli: %s: %s\n", cmd, pl_strerror(err));
        rc = PL_EXIT_FAILED;
    } else {
        c.pending += started;
    }

    run_until_idle(&c);
    if (strcmp(cmd, "bulk-charge") == 0)
        print_summary(&c, (unsigned)count);

    pl_gateway_free(c.gw);
    pl_http_free(c.http);
    uv_run(c.loop, UV_RUN_DEFAULT); /* close callbacks */
    if (uv_loop_close(c.loop) != 0)
        fprintf(stderr, "pledged-gwcli: loop still had handles at exit\n");
    curl_global_cleanup();
    return rc;
}
