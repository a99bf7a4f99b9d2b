/*
 * util — small pieces every module shares: error codes, container_of,
 * checked allocation helpers and string helpers with bounds.
 *
 * Never holds state. Never logs.
 */
#ifndef PL_UTIL_H
#define PL_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <errno.h>

/*
 * Error convention (STYLE.md): functions return 0 on success and a negative
 * number on failure: -errno for system errors, or one of the PL_E* codes
 * below for domain errors. PL_E* values sit above the errno range.
 */
enum {
    PL_EBASE = 10000,
    PL_EINVAL = -(PL_EBASE + 1),    /* input failed validation */
    PL_ERANGE = -(PL_EBASE + 2),    /* value out of range / overflow */
    PL_ENOTFOUND = -(PL_EBASE + 3), /* no such row / object */
    PL_ECONFLICT = -(PL_EBASE + 4), /* state does not allow this */
    PL_EDB = -(PL_EBASE + 5),       /* database error (details in the result) */
    PL_EDBLOST = -(PL_EBASE + 6),   /* connection lost: outcome unknown */
    PL_ETIMEOUT = -(PL_EBASE + 7),  /* deadline passed */
    PL_ECANCELED = -(PL_EBASE + 8), /* shut down before completion */
    PL_EPARSE = -(PL_EBASE + 9),    /* malformed outside input */
    PL_ESCHEMA = -(PL_EBASE + 10),  /* schema missing, old or too new */
};

/* Text for an error code (errno or PL_E*); never NULL, static storage. */
const char *pl_strerror(int err);

/* Exit codes shared by pledged and pledgectl (DESIGN.md §6). */
enum pl_exit {
    PL_EXIT_OK = 0,
    PL_EXIT_FAILED = 1,
    PL_EXIT_USAGE = 2,
    PL_EXIT_NOTFOUND = 3,
    PL_EXIT_CONFLICT = 4,
};


#define PL_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Owner of an embedded member, e.g. the struct that holds a uv_timer_t. */
#define pl_container_of(ptr, type, member)                                                         \
    ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

#define PL_MS_PER_S  1000
#define PL_US_PER_S  1000000LL
#define PL_US_PER_MS 1000LL

/* Allocation that aborts on exhaustion: a daemon out of memory cannot
 * keep the contract anyway, and checking every small allocation hides
 * the real error paths. */
void *pl_xmalloc(size_t n);
void *pl_xcalloc(size_t count, size_t size);
void *pl_xrealloc(void *p, size_t n);
char *pl_xstrdup(const char *s);
char *pl_xstrndup(const char *s, size_t n);
/* printf into a new string (never NULL). */
char *pl_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Copy src into dst of size n, always terminated; returns false if cut. */
bool pl_strlcpy(char *dst, const char *src, size_t n);

/* Strict integer parsing of the whole string (no sign for u64). */
int pl_parse_i64(const char *s, int64_t *out);
int pl_parse_u64(const char *s, uint64_t *out);

/* Read a whole small file (secrets, config) into a new NUL-terminated
 * buffer; refuses files over max_bytes. Returns 0 or -errno / PL_ERANGE. */
int pl_read_file(const char *path, size_t max_bytes, char **out, size_t *out_len);

/* Strip trailing whitespace/newlines in place. */
void pl_rstrip(char *s);

/* Monotonic clock in microseconds (for timeouts and measurements only;
 * business time comes from the clock module). */
int64_t pl_monotonic_us(void);

#endif
