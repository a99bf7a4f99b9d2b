/*
 * pledged-gateway-mock-load — a tiny closed-loop HTTP/1.1 load generator for
 * the mock (used by tests/bench/mock_rps.sh; wrk/ab are not always present).
 * C threads, one keep-alive connection each, one request in flight per
 * connection. Prints requests/second and latency figures; asserts nothing.
 *
 *   pledged-gateway-mock-load --port N [--connections C] [--seconds S]
 *                             [--mode post|get] [--key sk_test_mock]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNECTIONS 256
#define BUF_BYTES       65536

struct worker {
    pthread_t tid;
    int id;
    uint64_t ok, bad, errors;
    uint64_t lat_sum_us, lat_max_us;
};

static unsigned port;
static int seconds = 5;
static bool post_mode = true;
static const char *api_key = "sk_test_mock";
static const char *get_path = "/v1/payment_intents?limit=1";
static int64_t deadline_us;

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0 ||
        connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static bool send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Read one response; returns the status or -1. */
static int read_response(int fd, char *buf)
{
    size_t have = 0;
    char *end = NULL;
    while (!end) {
        if (have == BUF_BYTES - 1)
            return -1;
        ssize_t r = recv(fd, buf + have, BUF_BYTES - 1 - have, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        have += (size_t)r;
        buf[have] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    int status = 0;
    if (sscanf(buf, "HTTP/1.1 %d", &status) != 1)
        return -1;
    const char *cl = strcasestr(buf, "\r\nContent-Length:");
    size_t len = cl ? strtoul(cl + 17, NULL, 10) : 0;
    size_t got = have - (size_t)(end + 4 - buf);
    while (got < len) {
        char sink[8192];
        size_t want = len - got < sizeof(sink) ? len - got : sizeof(sink);
        ssize_t r = recv(fd, sink, want, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return status;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    char *buf = malloc(BUF_BYTES);
    char req[1024];
    int fd = -1;
    uint64_t n = 0;
    if (!buf)
        return NULL;
    while (now_us() < deadline_us) {
        if (fd < 0 && (fd = dial()) < 0) {
            w->errors++;
            usleep(1000);
            continue;
        }
        int len;
        if (post_mode) {
            static const char body_fmt[] =
                "amount=2500&currency=usd&customer=cus_bench&payment_method=pm_card_visa"
                "&confirm=true&off_session=true&payment_method_types%%5B%%5D=card"
                "&metadata%%5Bpledged_attempt%%5D=bench-%d-%llu";
            char body[320];
            int bl = snprintf(body, sizeof(body), body_fmt, w->id, (unsigned long long)n);
            len = snprintf(req, sizeof(req),
                           "POST /v1/payment_intents HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           "Authorization: Bearer %s\r\nIdempotency-Key: bench-%d-%llu\r\n"
                           "Content-Type: application/x-www-form-urlencoded\r\n"
                           "Content-Length: %d\r\n\r\n%s",
                           api_key, w->id, (unsigned long long)n, bl, body);
        } else {
            len = snprintf(req, sizeof(req),
                           "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           "Authorization: Bearer %s\r\n\r\n",
                           get_path, api_key);
        }
        n++;
        int64_t t0 = now_us();
        int status = send_all(fd, req, (size_t)len) ? read_response(fd, buf) : -1;
        int64_t dt = now_us() - t0;
        if (status < 0) {
            w->errors++;
            close(fd);
            fd = -1;
            continue;
        }
        if (status == 200)
            w->ok++;
        else
            w->bad++;
        w->lat_sum_us += (uint64_t)dt;
        if ((uint64_t)dt > w->lat_max_us)
            w->lat_max_us = (uint64_t)dt;
    }
    if (fd >= 0)
        close(fd);
    free(buf);
    return NULL;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"port", required_argument, NULL, 'p'},
        {"connections", required_argument, NULL, 'c'},
        {"seconds", required_argument, NULL, 's'},
        {"mode", required_argument, NULL, 'm'},
        {"key", required_argument, NULL, 'k'},
        {"path", required_argument, NULL, 'g'},
        {NULL, 0, NULL, 0},
    };
    int conns = 8, opt;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'p':
            port = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'c':
            conns = atoi(optarg);
            break;
        case 's':
            seconds = atoi(optarg);
            break;
        case 'm':
            post_mode = strcmp(optarg, "get") != 0;
            break;
        case 'k':
            api_key = optarg;
            break;
        case 'g':
            get_path = optarg;
            break;
        default:
            fprintf(stderr,
                    "usage: %s --port N [--connections C] [--seconds S] "
                    "[--mode post|get] [--key K] [--path P]\n",
                    argv[0]);
            return 2;
        }
    }
    if (!port || conns < 1 || conns > MAX_CONNECTIONS || seconds < 1) {
        fprintf(stderr, "%s: --port is required; 1 <= connections <= %d; seconds >= 1\n", argv[0],
                MAX_CONNECTIONS);
        return 2;
    }
    struct worker *w = calloc((size_t)conns, sizeof(*w));
    if (!w)
        return 1;
    int64_t start = now_us();
    deadline_us = start + (int64_t)seconds * 1000000;
    int started = 0;
    for (int i = 0; i < conns; i++) {
        w[i].id = i;
        if (pthread_create(&w[i].tid, NULL, run, &w[i]) != 0) {
            fprintf(stderr, "%s: pthread_create failed\n", argv[0]);
            break;
        }
        started++;
    }
    uint64_t ok = 0, bad = 0, errors = 0, lat_sum = 0, lat_max = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(w[i].tid, NULL);
        ok += w[i].ok;
        bad += w[i].bad;
        errors += w[i].errors;
        lat_sum += w[i].lat_sum_us;
        if (w[i].lat_max_us > lat_max)
            lat_max = w[i].lat_max_us;
    }
    double elapsed = (double)(now_us() - start) / 1e6;
    uint64_t done = ok + bad;
    printf("mode=%s connections=%d seconds=%.2f requests=%llu ok=%llu non200=%llu errors=%llu "
           "rps=%.0f avg_latency_ms=%.3f max_latency_ms=%.3f\n",
           post_mode ? "post" : "get", started, elapsed, (unsigned long long)done,
           (unsigned long long)ok, (unsigned long long)bad, (unsigned long long)errors,
           (double)done / elapsed, done ? (double)lat_sum / (double)done / 1000.0 : 0.0,
           (double)lat_max / 1000.0);
    free(w);
    return errors || bad ? 1 : 0;
}
