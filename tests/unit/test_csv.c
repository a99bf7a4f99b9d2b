/* Unit tests for lib/csv.c: RFC 4180 reading with line numbers. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "csv.h"
#include "util.h"

/* Read all records of `text` joined as "a|b;c|d;" (fields by |, records by
 * ;) with "@line" after each record. Returns a new string or NULL on error. */
static char *read_all(const char *text, size_t len, char *err, size_t errlen)
{
    struct pl_csv *r = pl_csv_new(text, len);
    char *out = pl_xstrdup("");
    char **f;
    size_t n;
    long line;
    int rc;
    while ((rc = pl_csv_next(r, &f, &n, &line)) == 1) {
        for (size_t i = 0; i < n; i++) {
            char *next = pl_xasprintf("%s%s%s", out, i ? "|" : "", f[i]);
            free(out);
            out = next;
        }
        char *next = pl_xasprintf("%s@%ld;", out, line);
        free(out);
        out = next;
    }
    if (rc < 0) {
        pl_strlcpy(err, pl_csv_error(r), errlen);
        free(out);
        out = NULL;
    }
    pl_csv_free(r);
    return out;
}

struct ok_case {
    const char *in;
    const char *want;
};

static const struct ok_case ok_cases[] = {
    {"a,b\n1,2\n", "a|b@1;1|2@2;"},
    {"a,b\r\n1,2\r\n", "a|b@1;1|2@2;"},
    {"\xEF\xBB\xBF" "a,b\n1,2", "a|b@1;1|2@2;"},         /* BOM, no final newline */
    {"a,b\n\n1,2\n\n", "a|b@1;1|2@3;"},                   /* blank lines skipped */
    {"\"x,y\",\"say \"\"hi\"\"\"\n", "x,y|say \"hi\"@1;"},
    {"\"multi\nline\",z\nnext,1\n", "multi\nline|z@1;next|1@3;"},
    {"\"crlf\r\ninside\",z\r\n", "crlf\ninside|z@1;"},    /* CRLF in quotes read as LF */
    {",,\n", "||@1;"},                                     /* empty fields */
    {"\"\",x\n", "|x@1;"},
    {"a\rb\r", "a@1;b@2;"},                                /* lone CR ends a line */
    {"Zoë,東京\n", "Zoë|東京@1;"},
    {"", ""},
};

static void test_ok_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < PL_ARRAY_LEN(ok_cases); i++) {
        char err[200] = "";
        char *got = read_all(ok_cases[i].in, strlen(ok_cases[i].in), err, sizeof(err));
        if (!got)
            fail_msg("case %zu: unexpected error %s", i, err);
        assert_string_equal(got, ok_cases[i].want);
        free(got);
    }
}

struct bad_case {
    const char *in;
    const char *want_err;
};

static const struct bad_case bad_cases[] = {
    {"a,b\n1,\"open\n", "line 2: quoted field is never closed"},
    {"a,b\n1,x\"y\n", "line 2: quote inside an unquoted field"},
    {"a\n\"q\"x\n", "line 2: text after the closing quote"},
    {"a\n\"multi\nline\"x\n", "line 3: text after the closing quote"},
};

static void test_bad_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < PL_ARRAY_LEN(bad_cases); i++) {
        char err[200] = "";
        char *got = read_all(bad_cases[i].in, strlen(bad_cases[i].in), err, sizeof(err));
        assert_null(got);
        if (strncmp(err, bad_cases[i].want_err, strlen(bad_cases[i].want_err)) != 0)
            fail_msg("case %zu: got '%s', want '%s...'", i, err, bad_cases[i].want_err);
    }
}

static void test_nul_byte(void **state)
{
    (void)state;
    char err[200] = "";
    static const char in[] = "a,b\n1,x\0y\n";
    assert_null(read_all(in, sizeof(in) - 1, err, sizeof(err)));
    assert_string_equal(err, "line 2: NUL byte in the input");
}

static void test_error_is_sticky(void **state)
{
    (void)state;
    static const char in[] = "a\"\nb\n";
    struct pl_csv *r = pl_csv_new(in, strlen(in));
    char **f;
    size_t n;
    long line = 99;
    assert_int_equal(pl_csv_next(r, &f, &n, &line), PL_EPARSE);
    assert_int_equal(pl_csv_next(r, &f, &n, &line), PL_EPARSE);
    assert_int_equal(line, 99);
    pl_csv_free(r);
    pl_csv_free(NULL);
}

static void test_many_fields(void **state)
{
    (void)state;
    /* more fields than the initial capacity, and a long field */
    char *in = pl_xstrdup("");
    for (int i = 0; i < 100; i++) {
        char *next = pl_xasprintf("%s%s%d", in, i ? "," : "", i);
        free(in);
        in = next;
    }
    char *big = pl_xmalloc(5000);
    memset(big, 'x', 4999);
    big[4999] = '\0';
    char *all = pl_xasprintf("%s\n\"%s\"\n", in, big);
    struct pl_csv *r = pl_csv_new(all, strlen(all));
    char **f;
    size_t n;
    long line;
    assert_int_equal(pl_csv_next(r, &f, &n, &line), 1);
    assert_int_equal(n, 100);
    assert_string_equal(f[99], "99");
    assert_int_equal(pl_csv_next(r, &f, &n, &line), 1);
    assert_int_equal(n, 1);
    assert_string_equal(f[0], big);
    assert_int_equal(line, 2);
    assert_int_equal(pl_csv_next(r, &f, &n, &line), 0);
    pl_csv_free(r);
    free(in);
    free(big);
    free(all);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ok_cases),        cmocka_unit_test(test_bad_cases),
        cmocka_unit_test(test_nul_byte),        cmocka_unit_test(test_error_is_sticky),
        cmocka_unit_test(test_many_fields),
    };
    return cmocka_run_group_tests_name("csv", tests, NULL, NULL);
}
