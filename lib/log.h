/*
 * log — the one logger of pledged and pledgectl.
 *
 * Under systemd (JOURNAL_STREAM set, or format=journal) every line starts
 * with a "<N>" priority prefix that journald understands; otherwise lines
 * are plain text ("2026-11-28T14:13:31.123Z warning db: message") or JSON
 * objects, one per line, by configuration. Output goes to stderr.
 *
 * Owns: the global level and format. Never: prints a secret. Messages
 * pass through pl_log_redact(), which masks bearer tokens, Authorization
 * headers, sk_/rk_/whsec_ keys and libpq password=... settings; callers
 * must still not hand secrets to the logger on purpose.
 */
#ifndef PL_LOG_H
#define PL_LOG_H

#include <stdbool.h>
#include <stddef.h>

/* syslog priorities, so the journald prefix is the value itself */
enum pl_log_level {
    PL_LOG_ERR = 3,
    PL_LOG_WARNING = 4,
    PL_LOG_NOTICE = 5,
    PL_LOG_INFO = 6,
    PL_LOG_DEBUG = 7,
};

enum pl_log_format {
    PL_LOG_AUTO = 0, /* journal when JOURNAL_STREAM is set, text otherwise */
    PL_LOG_TEXT,
    PL_LOG_JSON,
    PL_LOG_JOURNAL,
};

/* Set level and format; safe to call again on reload. */
void pl_log_setup(enum pl_log_level level, enum pl_log_format format);
enum pl_log_level pl_log_level(void);

/* Parse "debug|info|notice|warning|error" / "auto|text|json|journal". */
int pl_log_level_parse(const char *s, enum pl_log_level *out);
int pl_log_format_parse(const char *s, enum pl_log_format *out);
const char *pl_log_level_name(enum pl_log_level level);

/* Log one line; `component` is a short module tag ("db", "billing"). */
void pl_log(enum pl_log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define pl_log_error(comp, ...)  pl_log(PL_LOG_ERR, comp, __VA_ARGS__)
#define pl_log_warn(comp, ...)   pl_log(PL_LOG_WARNING, comp, __VA_ARGS__)
#define pl_log_notice(comp, ...) pl_log(PL_LOG_NOTICE, comp, __VA_ARGS__)
#define pl_log_info(comp, ...)   pl_log(PL_LOG_INFO, comp, __VA_ARGS__)
#define pl_log_debug(comp, ...)  pl_log(PL_LOG_DEBUG, comp, __VA_ARGS__)

/*
 * Copy `in` into `out` (size n, always terminated) with secrets masked as
 * "[REDACTED]": "Bearer <token>", "Authorization: <anything>", tokens
 * starting sk_live_/sk_test_/rk_/whsec_, and "password=<value>".
 * Returns out.
 */
char *pl_log_redact(const char *in, char *out, size_t n);

/* --- additions (log.c) ------------------------------------------------- */

/* Longest line written, newline included. Lines up to PIPE_BUF bytes are
 * written atomically to a pipe, so lines from one process never interleave;
 * longer messages are cut at a character boundary and end in "[truncated]". */
#define PL_LOG_LINE_MAX 4096

/* Name of a format ("auto", "text", "json", "journal"); static storage. */
const char *pl_log_format_name(enum pl_log_format format);

/* True when a message at `level` would be written (to skip costly work). */
bool pl_log_enabled(enum pl_log_level level);

/* Write to `fd` instead of stderr (tests; a negative fd restores stderr).
 * The fd stays owned by the caller. Format "auto" is re-resolved against it. */
void pl_log_set_fd(int fd);

#endif
