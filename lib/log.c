/*
 * log — see log.h. One process-wide logger; every line is built in a stack
 * buffer of at most PL_LOG_LINE_MAX bytes and handed to write(2) once, so
 * lines from one process never interleave in a pipe or the journal stream.
 *
 * Pipeline for each message: vsnprintf into a bounded buffer, redact
 * secrets, escape for the output format (control characters and invalid
 * UTF-8 never reach the output raw: a message cannot forge a second line),
 * cut at a character boundary if too long, write.
 */
#include "log.h"
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define COMPONENT_MAX 48
#define REDACTED      "[REDACTED]"
#define TRUNC_MARK    " [truncated]"

static enum pl_log_level g_level = PL_LOG_INFO;
static enum pl_log_format g_format = PL_LOG_AUTO;
static enum pl_log_format g_resolved = PL_LOG_AUTO; /* AUTO = not resolved yet */
static int g_fd = -1;                               /* -1: stderr */

static int out_fd(void)
{
    return g_fd >= 0 ? g_fd : STDERR_FILENO;
}

/*
 * JOURNAL_STREAM is "<dev>:<inode>" of the stream systemd connected to
 * stdout/stderr. It is inherited by children whose stderr may point
 * elsewhere, so it only counts when it names the fd we write to
 * (sd_journal_stream_fd(3), "JOURNAL_STREAM" in systemd.exec(5)).
 */
static bool journal_stream_is(int fd)
{
    const char *e = getenv("JOURNAL_STREAM");
    if (!e || !*e)
        return false;
    unsigned long long dev, ino;
    char tail;
    if (sscanf(e, "%llu:%llu%c", &dev, &ino, &tail) != 2)
        return false;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return false;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

static void resolve_format(void)
{
    if (g_format != PL_LOG_AUTO)
        g_resolved = g_format;
    else
        g_resolved = journal_stream_is(out_fd()) ? PL_LOG_JOURNAL : PL_LOG_TEXT;
}

void pl_log_setup(enum pl_log_level level, enum pl_log_format format)
{
    if (level < PL_LOG_ERR)
        level = PL_LOG_ERR;
    if (level > PL_LOG_DEBUG)
        level = PL_LOG_DEBUG;
    g_level = level;
    g_format = format;
    resolve_format();
}

void pl_log_set_fd(int fd)
{
    g_fd = fd < 0 ? -1 : fd;
    resolve_format();
}

enum pl_log_level pl_log_level(void)
{
    return g_level;
}

bool pl_log_enabled(enum pl_log_level level)
{
    return level <= g_level;
}

static const struct {
    const char *name;
    enum pl_log_level level;
} level_names[] = {
    {"error", PL_LOG_ERR},    {"err", PL_LOG_ERR},       {"warning", PL_LOG_WARNING},
    {"warn", PL_LOG_WARNING}, {"notice", PL_LOG_NOTICE}, {"info", PL_LOG_INFO},
    {"debug", PL_LOG_DEBUG},
};

int pl_log_level_parse(const char *s, enum pl_log_level *out)
{
    if (!s)
        return PL_EINVAL;
    for (size_t i = 0; i < PL_ARRAY_LEN(level_names); i++) {
        if (strcasecmp(s, level_names[i].name) == 0) {
            *out = level_names[i].level;
            return 0;
        }
    }
    return PL_EINVAL;
}

const char *pl_log_level_name(enum pl_log_level level)
{
    switch (level) {
    case PL_LOG_ERR:
        return "error";
    case PL_LOG_WARNING:
        return "warning";
    case PL_LOG_NOTICE:
        return "notice";
    case PL_LOG_INFO:
        return "info";
    case PL_LOG_DEBUG:
        return "debug";
    }
    return level < PL_LOG_ERR ? "error" : "debug";
}

static const char *const format_names[] = {
    [PL_LOG_AUTO] = "auto",
    [PL_LOG_TEXT] = "text",
    [PL_LOG_JSON] = "json",
    [PL_LOG_JOURNAL] = "journal",
};

int pl_log_format_parse(const char *s, enum pl_log_format *out)
{
    if (!s)
        return PL_EINVAL;
    for (size_t i = 0; i < PL_ARRAY_LEN(format_names); i++) {
        if (strcasecmp(s, format_names[i]) == 0) {
            *out = (enum pl_log_format)i;
            return 0;
        }
    }
    return PL_EINVAL;
}

const char *pl_log_format_name(enum pl_log_format format)
{
    if ((size_t)format < PL_ARRAY_LEN(format_names))
        return format_names[format];
    return "auto";
}

/* ---- redaction ---------------------------------------------------------- */

struct sink {
    char *buf;
    size_t cap; /* including the terminator */
    size_t len;
};

static void sink_putn(struct sink *s, const char *p, size_t n)
{
    while (n-- > 0 && s->len + 1 < s->cap)
        s->buf[s->len++] = *p++;
}

static void sink_puts(struct sink *s, const char *p)
{
    sink_putn(s, p, strlen(p));
}

/* Length of `word` if `s` starts with it, ignoring ASCII case; else 0. */
static size_t starts_ci(const char *s, const char *word)
{
    size_t n = strlen(word);
    return strncasecmp(s, word, n) == 0 ? n : 0;
}

static bool is_word(unsigned char c)
{
    return isalnum(c) || c == '_';
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static bool ends_value(char c)
{
    return c == '\0' || isspace((unsigned char)c) || c == '"' || c == '\'';
}

/* Secret-shaped tokens, masked whole. A preceding word character means it
 * is part of some other identifier ("work_queue" is not a restricted key). */
static const char *const token_prefixes[] = {"sk_live_", "sk_test_", "rk_", "whsec_"};

/*
 * Try each rule at in[i]; on a match, write the masked form to the sink and
 * return the number of input bytes consumed; return 0 for no match.
 */
static size_t redact_at(const char *in, size_t i, struct sink *s)
{
    const char *p = in + i;
    unsigned char prev = i > 0 ? (unsigned char)in[i - 1] : ' ';
    size_t n;

    /* "Authorization: anything" up to the end of the line */
    if (!is_word(prev) && (n = starts_ci(p, "authorization")) != 0) {
        size_t j = n;
        while (is_blank(p[j]))
            j++;
        if (p[j] == ':') {
            j++;
            sink_putn(s, p, j);
            sink_puts(s, " " REDACTED);
            while (p[j] && p[j] != '\n' && p[j] != '\r')
                j++;
            return j;
        }
    }

    /* "Bearer <token>" */
    if (!is_word(prev) && (n = starts_ci(p, "bearer")) != 0 && is_blank(p[n])) {
        size_t j = n;
        while (is_blank(p[j]))
            j++;
        if (!ends_value(p[j])) {
            sink_putn(s, p, j);
            sink_puts(s, REDACTED);
            while (!ends_value(p[j]))
                j++;
            return j;
        }
    }

    /* gateway keys and webhook secrets */
    if (!is_word(prev)) {
        for (size_t k = 0; k < PL_ARRAY_LEN(token_prefixes); k++) {
            n = strlen(token_prefixes[k]);
            if (strncmp(p, token_prefixes[k], n) == 0 && is_word((unsigned char)p[n])) {
                size_t j = n;
                sink_puts(s, REDACTED);
                while (is_word((unsigned char)p[j]))
                    j++;
                return j;
            }
        }
    }

    /* password=value (conninfo, URI query, PGPASSWORD=...) or "password": "value" */
    if ((n = starts_ci(p, "password")) != 0) {
        size_t j = n;
        bool json = p[j] == '"';
        if (json)
            j++;
        while (is_blank(p[j]))
            j++;
        if (p[j] == (json ? ':' : '=')) {
            j++;
            while (is_blank(p[j]))
                j++;
            sink_putn(s, p, j);
            sink_puts(s, REDACTED);
            if (p[j] == '\'' || p[j] == '"') {
                char q = p[j++];
                while (p[j] && p[j] != q) {
                    if (p[j] == '\\' && p[j + 1])
                        j++;
                    j++;
                }
                if (p[j] == q)
                    j++;
            } else {
                while (!ends_value(p[j]))
                    j++;
            }
            return j;
        }
    }

    /* scheme://user:password@host */
    if (strncmp(p, "://", 3) == 0) {
        size_t j = 3, at = 0, colon = 0;
        for (; p[j] && !strchr("/?#\"' \t\r\n", p[j]); j++) {
            if (p[j] == '@')
                at = j;
            else if (p[j] == ':' && !colon && !at)
                colon = j;
        }
        if (at && colon && colon < at) {
            sink_putn(s, p, colon + 1);
            sink_puts(s, REDACTED);
            return at;
        }
    }
    return 0;
}

char *pl_log_redact(const char *in, char *out, size_t n)
{
    if (!out || n == 0)
        return out;
    struct sink s = {.buf = out, .cap = n, .len = 0};
    if (in) {
        size_t i = 0;
        while (in[i] && s.len + 1 < s.cap) {
            size_t used = redact_at(in, i, &s);
            if (used) {
                i += used;
            } else {
                s.buf[s.len++] = in[i++];
            }
        }
    }
    out[s.len] = '\0';
    return out;
}

/* ---- escaping and line assembly ----------------------------------------- */

/* Length (1..4) of the well-formed UTF-8 sequence at p, 0 if malformed.
 * Rejects overlong forms, surrogates and code points above U+10FFFF. */
static size_t utf8_len(const unsigned char *p)
{
    unsigned char c = p[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return (p[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if ((p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80)
            return 0;
        if (c == 0xe0 && p[1] < 0xa0)
            return 0;
        if (c == 0xed && p[1] >= 0xa0)
            return 0;
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if ((p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80)
            return 0;
        if (c == 0xf0 && p[1] < 0x90)
            return 0;
        if (c == 0xf4 && p[1] >= 0x90)
            return 0;
        return 4;
    }
    return 0;
}

/*
 * Append `in` escaped for `json` (a JSON string body) or text (one line),
 * leaving `reserve` bytes free. Stops before a character that does not fit
 * and returns false when it had to cut.
 */
static bool append_escaped(struct sink *s, const char *in, bool json, size_t reserve)
{
    const unsigned char *p = (const unsigned char *)in;
    while (*p) {
        char esc[8];
        const char *piece = esc;
        size_t len, consumed;
        size_t u = utf8_len(p);
        if (u == 0) {
            /* malformed byte: JSON must stay valid UTF-8 */
            if (json)
                piece = "\\ufffd", len = 6;
            else
                len = (size_t)snprintf(esc, sizeof(esc), "\\x%02x", *p);
            consumed = 1;
        } else if (u > 1) {
            piece = (const char *)p, len = u, consumed = u;
        } else if (*p == '"' && json) {
            piece = "\\\"", len = 2, consumed = 1;
        } else if (*p == '\\' && json) {
            piece = "\\\\", len = 2, consumed = 1;
        } else if (*p == '\n') {
            piece = "\\n", len = 2, consumed = 1;
        } else if (*p == '\r') {
            piece = "\\r", len = 2, consumed = 1;
        } else if (*p == '\t') {
            piece = json ? "\\t" : "\t", len = json ? 2 : 1, consumed = 1;
        } else if (*p < 0x20 || *p == 0x7f) {
            len = (size_t)snprintf(esc, sizeof(esc), json ? "\\u%04x" : "\\x%02x", *p);
            consumed = 1;
        } else {
            piece = (const char *)p, len = 1, consumed = 1;
        }
        if (s->len + len + reserve + 1 > s->cap)
            return false;
        memcpy(s->buf + s->len, piece, len);
        s->len += len;
        p += consumed;
    }
    return true;
}

static void format_ts(char *buf, size_t n)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t len = strftime(buf, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + len, n - len, ".%03dZ", (int)(ts.tv_nsec / 1000000L));
}

static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, buf, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to report it */
        }
        buf += w;
        len -= (size_t)w;
    }
}

/* Drop a UTF-8 sequence cut short at the end of a truncated buffer. */
static void trim_partial_utf8(char *s)
{
    size_t n = strlen(s), back = 0;
    while (back < 4 && back < n && ((unsigned char)s[n - 1 - back] & 0xc0) == 0x80)
        back++;
    if (back < n && ((unsigned char)s[n - 1 - back]) >= 0xc0 &&
        utf8_len((const unsigned char *)s + n - 1 - back) == 0)
        s[n - 1 - back] = '\0';
}

void pl_log(enum pl_log_level level, const char *component, const char *fmt, ...)
{
    if (level > g_level)
        return;
    int saved_errno = errno;
    if (g_resolved == PL_LOG_AUTO)
        resolve_format();
    if (level < PL_LOG_ERR)
        level = PL_LOG_ERR;

    char msg[PL_LOG_LINE_MAX], clean[PL_LOG_LINE_MAX], line[PL_LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    bool cut = false;
    if (r < 0) {
        pl_strlcpy(msg, "(unformattable log message)", sizeof(msg));
    } else if ((size_t)r >= sizeof(msg)) {
        cut = true;
        trim_partial_utf8(msg);
    }
    pl_log_redact(msg, clean, sizeof(clean));
    if (strlen(clean) + 1 >= sizeof(clean))
        cut = true; /* masking made it longer than the buffer */

    char comp[COMPONENT_MAX + 1];
    pl_strlcpy(comp, component && *component ? component : "pledged", sizeof(comp));

    struct sink s = {.buf = line, .cap = sizeof(line), .len = 0};
    bool json = g_resolved == PL_LOG_JSON;
    const char *suffix = json ? "\"}\n" : "\n";
    size_t reserve = strlen(suffix) + strlen(TRUNC_MARK);

    if (g_resolved == PL_LOG_JOURNAL) {
        char pfx[8];
        snprintf(pfx, sizeof(pfx), "<%d>", (int)level);
        sink_puts(&s, pfx);
        append_escaped(&s, comp, false, reserve);
        sink_puts(&s, ": ");
    } else {
        char ts[64];
        format_ts(ts, sizeof(ts));
        if (json) {
            sink_puts(&s, "{\"ts\":\"");
            sink_puts(&s, ts);
            sink_puts(&s, "\",\"level\":\"");
            sink_puts(&s, pl_log_level_name(level));
            sink_puts(&s, "\",\"component\":\"");
            append_escaped(&s, comp, true, reserve);
            sink_puts(&s, "\",\"msg\":\"");
        } else {
            sink_puts(&s, ts);
            sink_puts(&s, " ");
            sink_puts(&s, pl_log_level_name(level));
            sink_puts(&s, " ");
            append_escaped(&s, comp, false, reserve);
            sink_puts(&s, ": ");
        }
    }
    if (!append_escaped(&s, clean, json, reserve))
        cut = true;
    if (cut)
        sink_puts(&s, TRUNC_MARK);
    sink_puts(&s, suffix);
    write_all(out_fd(), line, s.len);
    errno = saved_errno;
}
