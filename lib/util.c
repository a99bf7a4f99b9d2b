#include "util.h"

#include <ctype.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *pl_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
    case PL_EINVAL:
        return "invalid input";
    case PL_ERANGE:
        return "value out of range";
    case PL_ENOTFOUND:
        return "not found";
    case PL_ECONFLICT:
        return "conflict with current state";
    case PL_EDB:
        return "database error";
    case PL_EDBLOST:
        return "database connection lost (outcome unknown)";
    case PL_ETIMEOUT:
        return "timed out";
    case PL_ECANCELED:
        return "canceled";
    case PL_EPARSE:
        return "malformed input";
    case PL_ESCHEMA:
        return "database schema mismatch";
    default:
        break;
    }
    if (err < 0 && err > -PL_EBASE)
        return strerror(-err);
    return "unknown error";
}

static void oom(void)
{
    static const char msg[] = "pledged: out of memory\n";
    ssize_t ignored = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)ignored;
    abort();
}

void *pl_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom();
    return p;
}

void *pl_xcalloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        oom();
    return p;
}

void *pl_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom();
    return q;
}

char *pl_xstrdup(const char *s)
{
    char *p = strdup(s ? s : "");
    if (!p)
        oom();
    return p;
}

char *pl_xstrndup(const char *s, size_t n)
{
    char *p = strndup(s ? s : "", n);
    if (!p)
        oom();
    return p;
}

char *pl_xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *out = NULL;
    va_start(ap, fmt);
    int r = vasprintf(&out, fmt, ap);
    va_end(ap);
    if (r < 0)
        oom();
    return out;
}

bool pl_strlcpy(char *dst, const char *src, size_t n)
{
    if (n == 0)
        return false;
    size_t len = strlen(src);
    if (len >= n) {
        memcpy(dst, src, n - 1);
        dst[n - 1] = '\0';
        return false;
    }
    memcpy(dst, src, len + 1);
    return true;
}

int pl_parse_i64(const char *s, int64_t *out)
{
    if (!s || !*s || isspace((unsigned char)*s))
        return PL_EINVAL;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno == ERANGE)
        return PL_ERANGE;
    if (*end != '\0')
        return PL_EINVAL;
    *out = (int64_t)v;
    return 0;
}

int pl_parse_u64(const char *s, uint64_t *out)
{
    if (!s || !isdigit((unsigned char)*s))
        return PL_EINVAL;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE)
        return PL_ERANGE;
    if (*end != '\0')
        return PL_EINVAL;
    *out = (uint64_t)v;
    return 0;
}

int pl_read_file(const char *path, size_t max_bytes, char **out, size_t *out_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return -EINVAL;
    }
    if ((uint64_t)st.st_size > max_bytes) {
        close(fd);
        return PL_ERANGE;
    }
    size_t cap = (size_t)st.st_size + 1, len = 0;
    char *buf = pl_xmalloc(cap);
    for (;;) {
        if (len + 1 >= cap) {
            if (cap > max_bytes + 1) {
                free(buf);
                close(fd);
                return PL_ERANGE;
            }
            cap *= 2;
            buf = pl_xrealloc(buf, cap);
        }
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = -errno;
            free(buf);
            close(fd);
            return e;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    if (len > max_bytes) {
        free(buf);
        return PL_ERANGE;
    }
    buf[len] = '\0';
    *out = buf;
    if (out_len)
        *out_len = len;
    return 0;
}

void pl_rstrip(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
}

int64_t pl_monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * PL_US_PER_S + ts.tv_nsec / 1000;
}
