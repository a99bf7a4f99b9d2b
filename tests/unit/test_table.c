/* Unit tests for lib/table.c (and the pure checks of lib/ctl.c that
 * pledgectl's output and input rest on). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ctl.h"
#include "table.h"
#include "util.h"

static char *render(const struct pl_table *t, enum pl_table_mode mode, bool record)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (record)
        pl_table_print_record(t, 0, f, mode);
    else
        pl_table_print(t, f, mode);
    fclose(f);
    return buf;
}

static struct pl_table *sample(void)
{
    struct pl_table *t = pl_table_new();
    pl_table_add_column(t, "id", NULL, PL_COL_INT, 0);
    pl_table_add_column(t, "full_name", NULL, PL_COL_TEXT, 0);
    pl_table_add_column(t, "amount", NULL, PL_COL_TEXT, PL_COL_RIGHT);
    pl_table_add_column(t, "amount_minor", NULL, PL_COL_INT, PL_COL_JSON_ONLY);
    pl_table_add_column(t, "active", NULL, PL_COL_BOOL, 0);
    pl_table_add_row(t);
    pl_table_set(t, 0, "1");
    pl_table_set(t, 1, "Zoë \"Z\", Ünlü");
    pl_table_set(t, 2, "5.00");
    pl_table_set(t, 3, "500");
    pl_table_set(t, 4, "t");
    pl_table_add_row(t);
    pl_table_set(t, 0, "22");
    pl_table_set(t, 1, "tab\there\nnewline \\ back");
    pl_table_set(t, 2, "1250.00");
    pl_table_set(t, 3, "125000");
    pl_table_set_key(t, "active", "f");
    return t;
}

static void test_tsv(void **state)
{
    (void)state;
    struct pl_table *t = sample();
    char *out = render(t, PL_TABLE_TSV, false);
    assert_string_equal(out, "id\tfull_name\tamount\tactive\n"
                             "1\tZoë \"Z\", Ünlü\t5.00\tt\n"
                             "22\ttab\\there\\nnewline \\\\ back\t1250.00\tf\n");
    free(out);
    pl_table_free(t);
}

static void test_aligned(void **state)
{
    (void)state;
    struct pl_table *t = sample();
    char *out = render(t, PL_TABLE_ALIGNED, false);
    /* widths by display columns: "Zoë" is 3 wide, not 4 bytes */
    assert_string_equal(out, "ID  FULL NAME                    AMOUNT  ACTIVE\n"
                             "1   Zoë \"Z\", Ünlü                  5.00  t\n"
                             "22  tab\\there\\nnewline \\\\ back  1250.00  f\n");
    free(out);
    pl_table_free(t);
}

static void test_json(void **state)
{
    (void)state;
    struct pl_table *t = sample();
    json_t *j = pl_table_json(t);
    assert_int_equal(json_array_size(j), 2);
    json_t *r0 = json_array_get(j, 0);
    assert_int_equal(json_integer_value(json_object_get(r0, "id")), 1);
    assert_string_equal(json_string_value(json_object_get(r0, "full_name")), "Zoë \"Z\", Ünlü");
    assert_int_equal(json_integer_value(json_object_get(r0, "amount_minor")), 500);
    assert_true(json_is_true(json_object_get(r0, "active")));
    json_t *r1 = json_array_get(j, 1);
    assert_string_equal(json_string_value(json_object_get(r1, "full_name")),
                        "tab\there\nnewline \\ back");
    assert_true(json_is_false(json_object_get(r1, "active")));
    /* key order is the column order */
    const char *first = json_object_iter_key(json_object_iter(r0));
    assert_string_equal(first, "id");
    json_decref(j);
    pl_table_free(t);
}

static void test_nulls_and_record(void **state)
{
    (void)state;
    struct pl_table *t = pl_table_new();
    pl_table_add_column(t, "id", NULL, PL_COL_INT, 0);
    pl_table_add_column(t, "email", "E-mail", PL_COL_TEXT, 0);
    pl_table_add_column(t, "detail", NULL, PL_COL_JSON, 0);
    pl_table_add_row(t);
    pl_table_set(t, 0, "7");
    pl_table_set(t, 2, "{\"a\": 1}");
    char *out = render(t, PL_TABLE_TSV, true);
    assert_string_equal(out, "id\t7\nemail\t\ndetail\t{\"a\": 1}\n");
    free(out);
    out = render(t, PL_TABLE_ALIGNED, true);
    assert_string_equal(out, "ID:      7\nE-mail:  \nDETAIL:  {\"a\": 1}\n");
    free(out);
    json_t *o = pl_table_row_json(t, 0);
    assert_true(json_is_null(json_object_get(o, "email")));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "detail"), "a")), 1);
    json_decref(o);
    pl_table_free(t);
    pl_table_free(NULL);
}

static void test_escape_and_width(void **state)
{
    (void)state;
    char *e = pl_table_escape("a\x01" "b\x7f");
    assert_string_equal(e, "a\\x01b\\x7f");
    free(e);
    e = pl_table_escape(NULL);
    assert_string_equal(e, "");
    free(e);
    assert_int_equal(pl_table_width("abc"), 3);
    assert_int_equal(pl_table_width("Zoë"), 3);
    assert_int_equal(pl_table_width("東京"), 4);
    assert_int_equal(pl_table_width("e\xcc\x81"), 1); /* combining acute */
    assert_int_equal(pl_table_width("\xff"), 1);
}

static void test_pan(void **state)
{
    (void)state;
    static const char *const yes[] = {
        "4242424242424242", "4242 4242 4242 4242", "4000-0566-5566-5556", "pm_4242424242424242",
        "378282246310005", "card 6011111111111117 exp", "4222222222222",
    };
    static const char *const no[] = {
        "pm_card_visa", "cus_NffrFeUfNV2Hib", "424242424242", "12 Harbour Road",
        "+1 555 123 4567", "123456789012345678901234", "", "2026-01-15",
    };
    for (size_t i = 0; i < PL_ARRAY_LEN(yes); i++)
        if (!pl_ctl_looks_like_pan(yes[i]))
            fail_msg("'%s' should look like a PAN", yes[i]);
    for (size_t i = 0; i < PL_ARRAY_LEN(no); i++)
        if (pl_ctl_looks_like_pan(no[i]))
            fail_msg("'%s' should not look like a PAN", no[i]);
    assert_false(pl_ctl_looks_like_pan(NULL));
}

static void test_schedule_words(void **state)
{
    (void)state;
    int v = -1;
    assert_int_equal(pl_ctl_parse_anchor("1", &v), 0);
    assert_int_equal(v, 1);
    assert_int_equal(pl_ctl_parse_anchor("31", &v), 0);
    assert_int_equal(pl_ctl_parse_anchor("last", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(pl_ctl_parse_anchor("0", &v), PL_EINVAL);
    assert_int_equal(pl_ctl_parse_anchor("32", &v), PL_EINVAL);
    assert_int_equal(pl_ctl_parse_anchor("1.5", &v), PL_EINVAL);
    assert_int_equal(pl_ctl_parse_interval("quarterly", &v), 0);
    assert_int_equal(v, 3);
    assert_int_equal(pl_ctl_parse_interval("12", &v), 0);
    assert_int_equal(v, 12);
    assert_int_equal(pl_ctl_parse_interval("weekly", &v), PL_EINVAL);
    assert_string_equal(pl_ctl_interval_name(6), "semiannual");
    assert_true(pl_ctl_date_shape("2026-02-28"));
    assert_false(pl_ctl_date_shape("2026-2-28"));
    assert_false(pl_ctl_date_shape("tomorrow"));
}

static void test_text_and_timestamps(void **state)
{
    (void)state;
    assert_true(pl_ctl_text_ok("Zoë\tÜnlü\n東京 🎉"));
    assert_false(pl_ctl_text_ok("bad\x01"));
    assert_false(pl_ctl_text_ok("\xc3"));         /* truncated */
    assert_false(pl_ctl_text_ok("\xc0\xaf"));     /* overlong */
    assert_false(pl_ctl_text_ok("\xed\xa0\x80")); /* surrogate */
    char buf[64];
    assert_string_equal(pl_ctl_iso_timestamp("2026-01-15 09:00:00+00", buf, sizeof(buf)),
                        "2026-01-15T09:00:00+00:00");
    assert_string_equal(pl_ctl_iso_timestamp("2026-01-15 09:00:00.5-03:30", buf, sizeof(buf)),
                        "2026-01-15T09:00:00.5-03:30");
    assert_string_equal(pl_ctl_iso_timestamp("infinity", buf, sizeof(buf)), "infinity");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tsv),
        cmocka_unit_test(test_aligned),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_nulls_and_record),
        cmocka_unit_test(test_escape_and_width),
        cmocka_unit_test(test_pan),
        cmocka_unit_test(test_schedule_words),
        cmocka_unit_test(test_text_and_timestamps),
    };
    return cmocka_run_group_tests_name("table", tests, NULL, NULL);
}
