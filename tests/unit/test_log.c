/* Unit tests for lib/log.c: levels, the three line formats, redaction of
 * each secret shape, JSON escaping and truncation. Output is captured with
 * pl_log_set_fd() on a pipe. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

struct capture {
    int rd, wr;
};

static int setup(void **state)
{
    struct capture *c = pl_xcalloc(1, sizeof(*c));
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0)
        return -1;
    /* make the write end blocking: the logger never expects EAGAIN */
    fcntl(fds[1], F_SETFL, 0);
    fcntl(fds[0], F_SETPIPE_SZ, 1 << 20);
    c->rd = fds[0];
    c->wr = fds[1];
    unsetenv("JOURNAL_STREAM");
    pl_log_set_fd(c->wr);
    pl_log_setup(PL_LOG_INFO, PL_LOG_TEXT);
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    struct capture *c = *state;
    pl_log_set_fd(-1);
    close(c->rd);
    close(c->wr);
    free(c);
    return 0;
}

/* Everything written so far (new string). */
static char *drain(struct capture *c)
{
    size_t cap = 1 << 16, len = 0;
    char *buf = pl_xmalloc(cap);
    for (;;) {
        if (len + 1 == cap)
            buf = pl_xrealloc(buf, cap *= 2);
        ssize_t n = read(c->rd, buf + len, cap - len - 1);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    return buf;
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void assert_matches(const char *text, const char *pattern)
{
    regex_t re;
    assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
    int r = regexec(&re, text, 0, NULL, 0);
    regfree(&re);
    if (r != 0)
        fail_msg("\"%s\" does not match /%s/", text, pattern);
}

static void redact_eq(const char *in, const char *want)
{
    char out[512];
    pl_log_redact(in, out, sizeof(out));
    assert_string_equal(out, want);
}

/* ---- levels -------------------------------------------------------------- */

static void test_level_filtering(void **state)
{
    struct capture *c = *state;
    pl_log_setup(PL_LOG_WARNING, PL_LOG_TEXT);
    assert_int_equal(pl_log_level(), PL_LOG_WARNING);
    pl_log_debug("t", "debug-line");
    pl_log_info("t", "info-line");
    pl_log_notice("t", "notice-line");
    pl_log_warn("t", "warn-line");
    pl_log_error("t", "error-line");
    assert_true(pl_log_enabled(PL_LOG_ERR));
    assert_true(pl_log_enabled(PL_LOG_WARNING));
    assert_false(pl_log_enabled(PL_LOG_NOTICE));
    char *out = drain(c);
    assert_null(strstr(out, "debug-line"));
    assert_null(strstr(out, "info-line"));
    assert_null(strstr(out, "notice-line"));
    assert_non_null(strstr(out, "warn-line"));
    assert_non_null(strstr(out, "error-line"));
    assert_int_equal(count_lines(out), 2);
    free(out);

    pl_log_setup(PL_LOG_DEBUG, PL_LOG_TEXT);
    pl_log_debug("t", "debug-line");
    out = drain(c);
    assert_non_null(strstr(out, "debug-line"));
    free(out);
}

static void test_level_and_format_names(void **state)
{
    (void)state;
    enum pl_log_level l;
    enum pl_log_format f;
    assert_int_equal(pl_log_level_parse("debug", &l), 0);
    assert_int_equal(l, PL_LOG_DEBUG);
    assert_int_equal(pl_log_level_parse("WARNING", &l), 0);
    assert_int_equal(l, PL_LOG_WARNING);
    assert_int_equal(pl_log_level_parse("warn", &l), 0);
    assert_int_equal(l, PL_LOG_WARNING);
    assert_int_equal(pl_log_level_parse("error", &l), 0);
    assert_int_equal(l, PL_LOG_ERR);
    assert_int_equal(pl_log_level_parse("notice", &l), 0);
    assert_int_equal(pl_log_level_parse("info", &l), 0);
    assert_int_equal(pl_log_level_parse("verbose", &l), PL_EINVAL);
    assert_int_equal(pl_log_level_parse("", &l), PL_EINVAL);
    assert_int_equal(pl_log_level_parse(NULL, &l), PL_EINVAL);
    assert_string_equal(pl_log_level_name(PL_LOG_WARNING), "warning");
    assert_string_equal(pl_log_level_name(PL_LOG_ERR), "error");

    assert_int_equal(pl_log_format_parse("json", &f), 0);
    assert_int_equal(f, PL_LOG_JSON);
    assert_int_equal(pl_log_format_parse("journal", &f), 0);
    assert_int_equal(f, PL_LOG_JOURNAL);
    assert_int_equal(pl_log_format_parse("auto", &f), 0);
    assert_int_equal(f, PL_LOG_AUTO);
    assert_int_equal(pl_log_format_parse("text", &f), 0);
    assert_int_equal(f, PL_LOG_TEXT);
    assert_int_equal(pl_log_format_parse("xml", &f), PL_EINVAL);
    assert_string_equal(pl_log_format_name(PL_LOG_JSON), "json");
}

/* ---- formats ------------------------------------------------------------- */

static void test_text_format(void **state)
{
    struct capture *c = *state;
    pl_log_setup(PL_LOG_INFO, PL_LOG_TEXT);
    pl_log_warn("db", "connection lost after %d ms", 1500);
    char *out = drain(c);
    assert_matches(out, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "
                        "warning db: connection lost after 1500 ms\n$");
    free(out);
}

static void test_text_one_line_per_message(void **state)
{
    struct capture *c = *state;
    pl_log_setup(PL_LOG_INFO, PL_LOG_TEXT);
    pl_log_info("db", "line1\nline2\r\x01 end");
    char *out = drain(c);
    assert_int_equal(count_lines(out), 1);
    assert_non_null(strstr(out, "line1\\nline2\\r\\x01 end\n"));
    free(out);
}

static void test_journal_format(void **state)
{
    struct capture *c = *state;
    pl_log_setup(PL_LOG_DEBUG, PL_LOG_JOURNAL);
    pl_log_error("billing", "boom");
    pl_log_warn("http", "slow");
    pl_log_debug("db", "detail");
    char *out = drain(c);
    assert_string_equal(out, "<3>billing: boom\n<4>http: slow\n<7>db: detail\n");
    free(out);
}

static void test_auto_format_follows_journal_stream(void **state)
{
    struct capture *c = *state;
    struct stat st;
    assert_int_equal(fstat(c->wr, &st), 0);
    char env[64];
    snprintf(env, sizeof(env), "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);

    /* JOURNAL_STREAM naming our fd: journal prefixes */
    setenv("JOURNAL_STREAM", env, 1);
    pl_log_setup(PL_LOG_INFO, PL_LOG_AUTO);
    pl_log_notice("main", "started");
    char *out = drain(c);
    assert_string_equal(out, "<5>main: started\n");
    free(out);

    /* inherited JOURNAL_STREAM that names another stream: plain text */
    setenv("JOURNAL_STREAM", "1:2", 1);
    pl_log_setup(PL_LOG_INFO, PL_LOG_AUTO);
    pl_log_notice("main", "started");
    out = drain(c);
    assert_matches(out, "^[0-9-]{10}T[0-9:.]{12}Z notice main: started\n$");
    free(out);

    /* no JOURNAL_STREAM: text */
    unsetenv("JOURNAL_STREAM");
    pl_log_setup(PL_LOG_INFO, PL_LOG_AUTO);
    pl_log_info("main", "x");
    out = drain(c);
    assert_matches(out, "Z info main: x\n$");
    free(out);
}

static void test_json_format(void **state)
{
    struct capture *c = *state;
    pl_log_setup(PL_LOG_INFO, PL_LOG_JSON);
    pl_log_warn("db", "pool exhausted (%d)", 4);
    char *out = drain(c);
    assert_matches(out, "^\\{\"ts\":\"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\\.[0-9]{3}Z\","
                        "\"level\":\"warning\",\"component\":\"db\","
                        "\"msg\":\"pool exhausted \\(4\\)\"\\}\n$");
    free(out);
}

static void test_json_escaping(void **state)
{
    struct capture *c = *state;
    pl_log_setup(PL_LOG_INFO, PL_LOG_JSON);
    pl_log_info("x\"y", "say \"hi\"\\ now\nnext\ttab\r\x01\x1f\x7f caf\xc3\xa9 \xe2\x82\xac");
    char *out = drain(c);
    assert_int_equal(count_lines(out), 1);
    assert_non_null(strstr(out, "\"component\":\"x\\\"y\""));
    assert_non_null(strstr(out, "\"msg\":\"say \\\"hi\\\"\\\\ now\\nnext\\ttab\\r\\u0001\\u001f"
                                "\\u007f caf\xc3\xa9 \xe2\x82\xac\"}\n"));
    free(out);
}

static void test_json_invalid_utf8_replaced(void **state)
{
    struct capture *c = *state;
    pl_log_setup(PL_LOG_INFO, PL_LOG_JSON);
    /* lone continuation byte, overlong '/', truncated sequence, surrogate */
    pl_log_info("x", "a\x80"
                     "b\xc0\xaf"
                     "c\xe2\x82"
                     "d\xed\xa0\x80"
                     "e");
    char *out = drain(c);
    assert_non_null(strstr(out, "\"msg\":\"a\\ufffdb\\ufffd\\ufffdc\\ufffd\\ufffdd"
                                "\\ufffd\\ufffd\\ufffde\"}\n"));
    free(out);
}

static void test_errno_preserved(void **state)
{
    (void)state;
    errno = ENOSPC;
    pl_log_error("t", "x");
    assert_int_equal(errno, ENOSPC);
    free(drain(*state));
}

/* ---- truncation ---------------------------------------------------------- */

static void check_truncated(struct capture *c, enum pl_log_format fmt, const char *tail)
{
    size_t big = 3 * PL_LOG_LINE_MAX;
    char *msg = pl_xmalloc(big + 1);
    /* multi-byte characters and quotes so the cut lands mid-sequence */
    for (size_t i = 0; i < big; i += 3)
        memcpy(msg + i, i % 2 ? "\xe2\x82\xac" : "\"\"\"", 3);
    msg[big] = '\0';
    pl_log_setup(PL_LOG_INFO, fmt);
    pl_log_info("t", "%s", msg);
    char *out = drain(c);
    size_t n = strlen(out);
    assert_true(n <= PL_LOG_LINE_MAX);
    assert_true(n > PL_LOG_LINE_MAX - 16);
    assert_int_equal(count_lines(out), 1);
    assert_true(n >= strlen(tail));
    assert_string_equal(out + n - strlen(tail), tail);
    /* nothing malformed before the marker: no cut multi-byte character */
    const char *mark = strstr(out, " [truncated]");
    assert_non_null(mark);
    const char *euro = mark;
    while (euro > out && ((unsigned char)euro[-1] & 0xc0) == 0x80)
        euro--;
    assert_true(mark - euro == 0 || (euro[-1] == '\xe2' && mark - euro == 2));
    free(out);
    free(msg);
}

static void test_truncation(void **state)
{
    check_truncated(*state, PL_LOG_TEXT, " [truncated]\n");
    check_truncated(*state, PL_LOG_JSON, " [truncated]\"}\n");
    check_truncated(*state, PL_LOG_JOURNAL, " [truncated]\n");
}

static void test_long_but_fitting_message_not_marked(void **state)
{
    struct capture *c = *state;
    char msg[1000];
    memset(msg, 'a', sizeof(msg) - 1);
    msg[sizeof(msg) - 1] = '\0';
    pl_log_setup(PL_LOG_INFO, PL_LOG_JSON);
    pl_log_info("t", "%s", msg);
    char *out = drain(c);
    assert_null(strstr(out, "[truncated]"));
    assert_non_null(strstr(out, msg));
    free(out);
}

/* ---- redaction ----------------------------------------------------------- */

static void test_redact_bearer(void **state)
{
    (void)state;
    redact_eq("sending Bearer abc.def-123 now", "sending Bearer [REDACTED] now");
    redact_eq("bearer \"tok\"", "bearer \"tok\"");
    redact_eq("token=\"Bearer abc\"", "token=\"Bearer [REDACTED]\"");
    redact_eq("Bearer", "Bearer");
    redact_eq("unbearer abc", "unbearer abc");
}

static void test_redact_authorization(void **state)
{
    (void)state;
    redact_eq("Authorization: Basic dXNlcjpwYXNz\nHost: x", "Authorization: [REDACTED]\nHost: x");
    redact_eq("hdr authorization:Bearer sk_live_x and more", "hdr authorization: [REDACTED]");
    redact_eq("Authorization required", "Authorization required");
}

static void test_redact_gateway_tokens(void **state)
{
    (void)state;
    redact_eq("key sk_live_51HxYzAbC, retrying", "key [REDACTED], retrying");
    redact_eq("key=sk_test_abc123", "key=[REDACTED]");
    redact_eq("restricted rk_live_ZZ9 done", "restricted [REDACTED] done");
    redact_eq("secret whsec_AbC123xyz.", "secret [REDACTED].");
    redact_eq("\"sk_live_q\"", "\"[REDACTED]\"");
    /* part of a longer identifier: not a key */
    redact_eq("work_queue disk_live_x", "work_queue disk_live_x");
    /* a publishable key is not secret */
    redact_eq("pk_live_abc", "pk_live_abc");
}

static void test_redact_password(void **state)
{
    (void)state;
    redact_eq("host=db user=pledged password=hunter2 dbname=p",
              "host=db user=pledged password=[REDACTED] dbname=p");
    redact_eq("password = 'a b\\' c' port=5432", "password = [REDACTED] port=5432");
    redact_eq("PGPASSWORD=xyz", "PGPASSWORD=[REDACTED]");
    redact_eq("postgresql://u@h/db?password=s3cret", "postgresql://u@h/db?password=[REDACTED]");
    redact_eq("postgresql://pledged:s3cret@db.example:5432/p",
              "postgresql://pledged:[REDACTED]@db.example:5432/p");
    redact_eq("{\"password\": \"x y\"}", "{\"password\": [REDACTED]}");
    /* not assignments */
    redact_eq("[database] password: use password_file", "[database] password: use password_file");
    redact_eq("password_file=/etc/x", "password_file=/etc/x");
    redact_eq("https://api.stripe.com:443/v1", "https://api.stripe.com:443/v1");
}

static void test_redact_bounds(void **state)
{
    (void)state;
    char out[16];
    pl_log_redact("Bearer 0123456789abcdef", out, sizeof(out));
    assert_string_equal(out, "Bearer [REDACTE");
    pl_log_redact("abcdefghijklmnopqrstuvwxyz", out, sizeof(out));
    assert_string_equal(out, "abcdefghijklmno");
    pl_log_redact(NULL, out, sizeof(out));
    assert_string_equal(out, "");
    char one[1] = {'x'};
    pl_log_redact("abc", one, 1);
    assert_int_equal(one[0], '\0');
}

static void test_log_line_is_redacted(void **state)
{
    struct capture *c = *state;
    pl_log_setup(PL_LOG_INFO, PL_LOG_JSON);
    pl_log_info("gateway", "POST with Authorization: Bearer sk_live_abc");
    pl_log_info("db", "conninfo host=x password=pw1");
    char *out = drain(c);
    assert_null(strstr(out, "sk_live_abc"));
    assert_null(strstr(out, "pw1"));
    assert_non_null(strstr(out, "Authorization: [REDACTED]\"}"));
    assert_non_null(strstr(out, "password=[REDACTED]\"}"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_level_filtering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_level_and_format_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_text_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_text_one_line_per_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_journal_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auto_format_follows_journal_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_escaping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_invalid_utf8_replaced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errno_preserved, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_but_fitting_message_not_marked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redact_bearer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redact_authorization, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redact_gateway_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redact_password, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redact_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_line_is_redacted, setup, teardown),
    };
    return cmocka_run_group_tests_name("log", tests, NULL, NULL);
}
