/*
 * LD_PRELOAD shim for tests/bench/billing: counts the daemon's writes to
 * PostgreSQL, i.e. its client->server round trips, until pledged reports
 * pl_db_stats itself.
 *
 * libpq writes with send(); every send() that moved bytes on a unix-domain
 * socket is counted (the gateway is TCP, so it is not). A large pipeline
 * that the kernel takes in several pieces counts more than once, which
 * overstates round trips slightly; it never understates them. The counts
 * are appended to $BILLING_SENDCOUNT_FILE at exit, one "sends=N bytes=M"
 * line per process (/usr/bin/time, which runs pledged, adds a line of its
 * own): the script sums them.
 *
 * Built by the script with `cc -shared -fPIC`, not by meson (it is not a
 * benchmark executable).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/types.h>

typedef ssize_t (*send_fn)(int, const void *, size_t, int);

static send_fn real_send;
static unsigned long long unix_sends, unix_bytes;

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
    if (!real_send) {
        real_send = (send_fn)dlsym(RTLD_NEXT, "send");
        if (!real_send)
            abort();
    }
    ssize_t n = real_send(fd, buf, len, flags);
    if (n > 0) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family == AF_UNIX) {
            unix_sends++;
            unix_bytes += (unsigned long long)n;
        }
    }
    return n;
}

__attribute__((destructor)) static void report(void)
{
    const char *path = getenv("BILLING_SENDCOUNT_FILE");
    if (!path || !*path)
        return;
    FILE *f = fopen(path, "a");
    if (!f)
        return;
    fprintf(f, "sends=%llu bytes=%llu\n", unix_sends, unix_bytes);
    fclose(f);
}
