/* Unit tests for lib/money.c: parsing and formatting minor units. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "money.h"
#include "util.h"

struct parse_case {
    const char *text;
    int exponent;
    unsigned flags;
    int want_err;
    int64_t want;
};

static const struct parse_case parse_cases[] = {
    /* USD: two decimals */
    {"25", 2, 0, 0, 2500},
    {"25.00", 2, 0, 0, 2500},
    {"25.5", 2, 0, 0, 2550},
    {"0.01", 2, 0, 0, 1},
    {"25.001", 2, 0, PL_EINVAL, 0},
    {"0", 2, 0, PL_EINVAL, 0},
    {"0.00", 2, 0, PL_EINVAL, 0},
    {"0.00", 2, PL_MONEY_ALLOW_ZERO, 0, 0},
    {"-1.00", 2, 0, PL_EINVAL, 0},
    {"+1.00", 2, 0, PL_EINVAL, 0},
    {"", 2, 0, PL_EINVAL, 0},
    {" 1.00", 2, 0, PL_EINVAL, 0},
    {"1.00 ", 2, 0, PL_EINVAL, 0},
    {"1,000.00", 2, 0, PL_EINVAL, 0},
    {"1e3", 2, 0, PL_EINVAL, 0},
    {"1.", 2, 0, PL_EINVAL, 0},
    {".5", 2, 0, PL_EINVAL, 0},
    {"12a", 2, 0, PL_EINVAL, 0},
    {"0x10", 2, 0, PL_EINVAL, 0},
    /* JPY: no decimals */
    {"2500", 0, 0, 0, 2500},
    {"2500.0", 0, 0, PL_EINVAL, 0},
    {"1", 0, 0, 0, 1},
    /* BHD: three decimals */
    {"1.250", 3, 0, 0, 1250},
    {"1.25", 3, 0, 0, 1250},
    {"0.001", 3, 0, 0, 1},
    {"1.2501", 3, 0, PL_EINVAL, 0},
    /* int64 boundaries */
    {"9223372036854775807", 0, 0, 0, INT64_MAX},
    {"9223372036854775808", 0, 0, PL_ERANGE, 0},
    {"92233720368547758.07", 2, 0, 0, INT64_MAX},
    {"92233720368547758.08", 2, 0, PL_ERANGE, 0},
    {"92233720368547758", 2, 0, 0, 9223372036854775800LL},
    {"92233720368547759", 2, 0, PL_ERANGE, 0},
    {"99999999999999999999999", 2, 0, PL_ERANGE, 0},
    /* exponent sanity */
    {"1", 5, 0, PL_ERANGE, 0},
    {"1", -1, 0, PL_ERANGE, 0},
};

static void test_parse_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < PL_ARRAY_LEN(parse_cases); i++) {
        const struct parse_case *c = &parse_cases[i];
        int64_t got = -42;
        const char *why = NULL;
        int r = pl_money_parse(c->text, c->exponent, c->flags, &got, &why);
        if (r != c->want_err)
            fail_msg("case %zu \"%s\" exp %d: got err %d (%s), want %d", i, c->text, c->exponent,
                     r, why ? why : "-", c->want_err);
        if (r == 0) {
            assert_int_equal(got, c->want);
        } else {
            assert_int_equal(got, -42); /* untouched on failure */
            assert_non_null(why);
        }
    }
}

static void test_parse_null(void **state)
{
    (void)state;
    int64_t v;
    assert_int_equal(pl_money_parse(NULL, 2, 0, &v, NULL), PL_EINVAL);
}

struct fmt_case {
    int64_t minor;
    int exponent;
    const char *want;
};

static const struct fmt_case fmt_cases[] = {
    {2500, 2, "25.00"},   {1, 2, "0.01"},       {0, 2, "0.00"},     {99, 2, "0.99"},
    {100, 2, "1.00"},     {2500, 0, "2500"},    {0, 0, "0"},        {1250, 3, "1.250"},
    {1, 3, "0.001"},      {-1, 2, "-0.01"},     {-2550, 2, "-25.50"}, {12345, 4, "1.2345"},
    {INT64_MAX, 2, "92233720368547758.07"},     {INT64_MIN, 2, "-92233720368547758.08"},
    {INT64_MAX, 0, "9223372036854775807"},
};

static void test_format_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < PL_ARRAY_LEN(fmt_cases); i++) {
        char buf[PL_MONEY_FMT_MAX];
        assert_int_equal(pl_money_format(fmt_cases[i].minor, fmt_cases[i].exponent, buf,
                                         sizeof(buf)),
                         0);
        assert_string_equal(buf, fmt_cases[i].want);
    }
}

static void test_format_small_buffer(void **state)
{
    (void)state;
    char buf[5];
    assert_int_equal(pl_money_format(2500, 2, buf, sizeof(buf)), PL_ERANGE);
    char ok[6];
    assert_int_equal(pl_money_format(2500, 2, ok, sizeof(ok)), 0);
    assert_string_equal(ok, "25.00");
    assert_int_equal(pl_money_format(1, 9, ok, sizeof(ok)), PL_ERANGE);
}

static void test_round_trip(void **state)
{
    (void)state;
    const int64_t values[] = {1, 9, 10, 99, 100, 101, 123456789, INT64_MAX};
    for (int exp = 0; exp <= PL_MONEY_MAX_EXPONENT; exp++) {
        for (size_t i = 0; i < PL_ARRAY_LEN(values); i++) {
            char buf[PL_MONEY_FMT_MAX];
            int64_t back = 0;
            assert_int_equal(pl_money_format(values[i], exp, buf, sizeof(buf)), 0);
            assert_int_equal(pl_money_parse(buf, exp, 0, &back, NULL), 0);
            assert_int_equal(back, values[i]);
        }
    }
}

static void test_currency_code(void **state)
{
    (void)state;
    assert_true(pl_currency_code_valid("USD"));
    assert_true(pl_currency_code_valid("JPY"));
    assert_false(pl_currency_code_valid("usd"));
    assert_false(pl_currency_code_valid("US"));
    assert_false(pl_currency_code_valid("USDX"));
    assert_false(pl_currency_code_valid(""));
    assert_false(pl_currency_code_valid(NULL));
    assert_false(pl_currency_code_valid("U$D"));
}

static void test_checked_arithmetic(void **state)
{
    (void)state;
    int64_t r = 7;
    assert_int_equal(pl_money_add(INT64_MAX - 1, 1, &r), 0);
    assert_int_equal(r, INT64_MAX);
    assert_int_equal(pl_money_add(INT64_MAX, 1, &r), PL_ERANGE);
    assert_int_equal(r, INT64_MAX);
    assert_int_equal(pl_money_sub(INT64_MIN, 1, &r), PL_ERANGE);
    assert_int_equal(pl_money_sub(10, 25, &r), 0);
    assert_int_equal(r, -15);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_table),  cmocka_unit_test(test_parse_null),
        cmocka_unit_test(test_format_table), cmocka_unit_test(test_format_small_buffer),
        cmocka_unit_test(test_round_trip),   cmocka_unit_test(test_currency_code),
        cmocka_unit_test(test_checked_arithmetic),
    };
    return cmocka_run_group_tests_name("money", tests, NULL, NULL);
}
