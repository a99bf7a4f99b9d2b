/*
 * pledged-gateway-mock — a Stripe-dialect payment gateway for tests.
 *
 * main.c parses flags, binds 127.0.0.1:<port>, reports the port (stdout line
 * "port=N" and --port-file, written atomically), loads the state file, runs
 * the server and, on SIGTERM/SIGINT, stops it and saves the state.
 * See README.md for the flags, the control API and the ledger shape.
 */
#include "mock.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LISTEN_BACKLOG   1024
#define MAX_SECRET_BYTES 4096

static void usage(FILE *f)
{
    fprintf(f,
            "usage: pledged-gateway-mock [options]\n"
            "  --port N                    listen on 127.0.0.1:N (0 = any free port; default 0)\n"
            "  --port-file F               write the chosen port to F (atomically)\n"
            "  --api-key-file F            accepted secret key (default: any Bearer key)\n"
            "  --seed N                    seed for ids and fault draws (default: time-based)\n"
            "  --idempotency-retention S   seconds a saved reply is replayed (default 86400;\n"
            "                              fractions allowed)\n"
            "  --state-file F              load on start, journal every change, compact on exit\n"
            "  --webhook-url URL           where POST /_mock/webhook delivers events\n"
            "  --webhook-secret-file F     whsec_… used to sign events\n"
            "  --quiet                     no access log on stderr\n"
            "fault injection (startup config; POST /_mock/config changes it at run time):\n"
            "  --latency-ms N --jitter-ms N --rate-429 P --retry-after S --error-503-before P\n"
            "  --drop-before P --hang P --error-500-after-execute P --drop-after P\n"
            "  --search-lag-ms N --config-json JSON   (same keys as POST /_mock/config)\n");
}

/* Read a one-line secret; trailing whitespace dropped. New string or NULL. */
static char *read_secret(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "gateway-mock: cannot open %s: %s\n", path, strerror(errno));
        return NULL;
    }
    char *buf = calloc(1, MAX_SECRET_BYTES + 1);
    size_t n = buf ? fread(buf, 1, MAX_SECRET_BYTES, f) : 0;
    if (ferror(f) || !buf) {
        fprintf(stderr, "gateway-mock: cannot read %s\n", path);
        fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    while (n > 0 &&
           (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
        buf[--n] = '\0';
    if (n == 0) {
        fprintf(stderr, "gateway-mock: %s is empty\n", path);
        free(buf);
        return NULL;
    }
    return buf;
}

static int write_port_file(const char *path, unsigned port)
{
    size_t tl = strlen(path) + 32;
    char *tmp = malloc(tl);
    if (!tmp)
        return -ENOMEM;
    snprintf(tmp, tl, "%s.tmp.%ld", path, (long)getpid());
    int rc = 0;
    FILE *f = fopen(tmp, "w");
    if (!f) {
        rc = -errno;
        goto out;
    }
    if (fprintf(f, "%u\n", port) < 0)
        rc = -EIO;
    if (fclose(f) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc < 0)
        unlink(tmp);
out:
    free(tmp);
    return rc;
}

static int listen_on(unsigned port, unsigned *bound)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof(a);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, LISTEN_BACKLOG) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) != 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    *bound = ntohs(a.sin_port);
    return fd;
}

static bool parse_rate(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= 0.0 && v <= 1.0))
        return false;
    *out = v;
    return true;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-')
        return false;
    *out = v;
    return true;
}

enum {
    OPT_PORT = 256,
    OPT_PORT_FILE,
    OPT_API_KEY_FILE,
    OPT_SEED,
    OPT_RETENTION,
    OPT_STATE_FILE,
    OPT_WEBHOOK_URL,
    OPT_WEBHOOK_SECRET_FILE,
    OPT_QUIET,
    OPT_LATENCY,
    OPT_JITTER,
    OPT_RATE_429,
    OPT_RETRY_AFTER,
    OPT_503,
    OPT_DROP_BEFORE,
    OPT_HANG,
    OPT_500,
    OPT_DROP_AFTER,
    OPT_SEARCH_LAG,
    OPT_CONFIG_JSON,
    OPT_HELP,
};

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"port", required_argument, NULL, OPT_PORT},
        {"port-file", required_argument, NULL, OPT_PORT_FILE},
        {"api-key-file", required_argument, NULL, OPT_API_KEY_FILE},
        {"seed", required_argument, NULL, OPT_SEED},
        {"idempotency-retention", required_argument, NULL, OPT_RETENTION},
        {"state-file", required_argument, NULL, OPT_STATE_FILE},
        {"webhook-url", required_argument, NULL, OPT_WEBHOOK_URL},
        {"webhook-secret-file", required_argument, NULL, OPT_WEBHOOK_SECRET_FILE},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {"latency-ms", required_argument, NULL, OPT_LATENCY},
        {"jitter-ms", required_argument, NULL, OPT_JITTER},
        {"rate-429", required_argument, NULL, OPT_RATE_429},
        {"retry-after", required_argument, NULL, OPT_RETRY_AFTER},
        {"error-503-before", required_argument, NULL, OPT_503},
        {"drop-before", required_argument, NULL, OPT_DROP_BEFORE},
        {"hang", required_argument, NULL, OPT_HANG},
        {"error-500-after-execute", required_argument, NULL, OPT_500},
        {"drop-after", required_argument, NULL, OPT_DROP_AFTER},
        {"search-lag-ms", required_argument, NULL, OPT_SEARCH_LAG},
        {"config-json", required_argument, NULL, OPT_CONFIG_JSON},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    uint64_t port = 0;
    const char *port_file = NULL, *state_file = NULL, *config_json = NULL;
    char *api_key = NULL, *webhook_secret = NULL;
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
    double retention_s = GM_DEFAULT_RETENTION_S;
    bool quiet = false;
    json_t *flags = json_object();
    int opt, rc, exit_code = 1;

    if (!flags)
        return 1;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        double rate;
        uint64_t u;
        const char *fault = NULL;
        switch (opt) {
        case OPT_PORT:
            if (!parse_u64(optarg, &port) || port > 65535) {
                fprintf(stderr, "gateway-mock: --port: expected 0..65535, got '%s'\n", optarg);
                goto usage;
            }
            break;
        case OPT_PORT_FILE:
            port_file = optarg;
            break;
        case OPT_API_KEY_FILE:
            free(api_key);
            if (!(api_key = read_secret(optarg)))
                goto done;
            break;
        case OPT_SEED:
            if (!parse_u64(optarg, &seed)) {
                fprintf(stderr, "gateway-mock: --seed: expected an integer, got '%s'\n", optarg);
                goto usage;
            }
            break;
        case OPT_RETENTION: {
            char *end;
            errno = 0;
            retention_s = strtod(optarg, &end);
            if (errno || end == optarg || *end || !(retention_s >= 0 && retention_s < 1e9)) {
                fprintf(stderr,
                        "gateway-mock: --idempotency-retention: expected seconds, got "
                        "'%s'\n",
                        optarg);
                goto usage;
            }
            break;
        }
        case OPT_STATE_FILE:
            state_file = optarg;
            break;
        case OPT_WEBHOOK_URL:
            gm_webhook.url = optarg;
            break;
        case OPT_WEBHOOK_SECRET_FILE:
            free(webhook_secret);
            if (!(webhook_secret = read_secret(optarg)))
                goto done;
            gm_webhook.secret = webhook_secret;
            break;
        case OPT_QUIET:
            quiet = true;
            break;
        case OPT_LATENCY:
        case OPT_JITTER:
        case OPT_RETRY_AFTER:
        case OPT_SEARCH_LAG:
            if (!parse_u64(optarg, &u) || u > 3600 * 1000) {
                fprintf(stderr, "gateway-mock: %s: expected a non-negative integer\n",
                        argv[optind - 1]);
                goto usage;
            }
            json_object_set_new(flags,
                                opt == OPT_LATENCY       ? "latency_ms"
                                : opt == OPT_JITTER      ? "jitter_ms"
                                : opt == OPT_RETRY_AFTER ? "retry_after_s"
                                                         : "search_lag_ms",
                                json_integer((json_int_t)u));
            break;
        case OPT_RATE_429:
            fault = "rate_429";
            /* fall through */
        case OPT_503:
            fault = fault ? fault : "error_503_before";
            /* fall through */
        case OPT_DROP_BEFORE:
            fault = fault ? fault : "drop_before";
            /* fall through */
        case OPT_HANG:
            fault = fault ? fault : "hang";
            /* fall through */
        case OPT_500:
            fault = fault ? fault : "error_500_after_execute";
            /* fall through */
        case OPT_DROP_AFTER:
            fault = fault ? fault : "drop_after";
            if (!parse_rate(optarg, &rate)) {
                fprintf(stderr, "gateway-mock: %s: expected a probability 0..1, got '%s'\n",
                        argv[optind - 1], optarg);
                goto usage;
            }
            json_object_set_new(flags, fault, json_real(rate));
            break;
        case OPT_CONFIG_JSON:
            config_json = optarg;
            break;
        case OPT_HELP:
            usage(stdout);
            exit_code = 0;
            goto done;
        default:
            goto usage;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "gateway-mock: unexpected argument '%s'\n", argv[optind]);
        goto usage;
    }

    /* Startup fault config: flags, then --config-json on top. */
    char err[256];
    gm_rand_seed(seed);
    json_object_set_new(flags, "seed", json_integer((json_int_t)seed));
    if (gm_config_apply(flags, err, sizeof(err)) < 0) {
        fprintf(stderr, "gateway-mock: %s\n", err);
        goto done;
    }
    if (config_json) {
        json_error_t jerr;
        json_t *cj = json_loads(config_json, 0, &jerr);
        if (!cj) {
            fprintf(stderr, "gateway-mock: --config-json: %s\n", jerr.text);
            goto done;
        }
        rc = gm_config_apply(cj, err, sizeof(err));
        json_decref(cj);
        if (rc < 0) {
            fprintf(stderr, "gateway-mock: --config-json: %s\n", err);
            goto done;
        }
    }
    gm_config_commit_startup();
    gm_state_init((int64_t)(retention_s * 1000.0));

    if (state_file) {
        if ((rc = gm_state_load(state_file)) < 0) {
            fprintf(stderr, "gateway-mock: loading state file %s: %s\n", state_file, strerror(-rc));
            goto done;
        }
        if ((rc = gm_state_open_journal(state_file)) < 0) {
            fprintf(stderr, "gateway-mock: opening state file %s: %s\n", state_file, strerror(-rc));
            goto done;
        }
    }

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "gateway-mock: curl_global_init failed\n");
        goto done;
    }
    /* Every thread inherits this mask; main collects the signals in sigwait. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    signal(SIGPIPE, SIG_IGN);
    if ((rc = pthread_sigmask(SIG_BLOCK, &sigs, NULL)) != 0) {
        fprintf(stderr, "gateway-mock: pthread_sigmask: %s\n", strerror(rc));
        goto done;
    }

    unsigned bound = 0;
    int fd = listen_on((unsigned)port, &bound);
    if (fd < 0) {
        fprintf(stderr, "gateway-mock: cannot listen on 127.0.0.1:%u: %s\n", (unsigned)port,
                strerror(-fd));
        goto done;
    }
    struct gm_server_opts so = {.api_key = api_key, .quiet = quiet};
    if ((rc = gm_server_start(fd, &so)) < 0) {
        close(fd);
        fprintf(stderr, "gateway-mock: cannot start the HTTP server: %s\n", strerror(-rc));
        goto done;
    }
    if (port_file && (rc = write_port_file(port_file, bound)) < 0) {
        fprintf(stderr, "gateway-mock: writing %s: %s\n", port_file, strerror(-rc));
        gm_server_stop();
        goto done;
    }
    printf("port=%u\n", bound);
    fflush(stdout);
    if (!quiet)
        fprintf(stderr, "gateway-mock: listening on 127.0.0.1:%u (seed %llu)\n", bound,
                (unsigned long long)seed);

    int sig = 0;
    while ((rc = sigwait(&sigs, &sig)) == EINTR)
        ;
    if (!quiet)
        fprintf(stderr, "gateway-mock: signal %d, stopping\n", sig);
    gm_server_stop();
    exit_code = 0;
    if (pthread_mutex_lock(&gm_lock) == 0) {
        if ((rc = gm_state_save()) < 0) {
            fprintf(stderr, "gateway-mock: saving state file %s: %s\n", state_file, strerror(-rc));
            exit_code = 1;
        }
        pthread_mutex_unlock(&gm_lock);
    }
    curl_global_cleanup();
    goto done;
usage:
    usage(stderr);
    exit_code = 2;
done:
    json_decref(flags);
    free(api_key);
    free(webhook_secret);
    return exit_code;
}
