/* Unit tests for lib/export.c: the catalogue and the sinks (whole file or
 * nothing, no overwrite without FORCE, line ends, BOM). Includes the .c to
 * reach the named-temporary-file fallback. The COPY stream itself is tested
 * against a real server in tests/system/test_export.py. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../lib/export.c"

static char *make_dir(void)
{
    char tmpl[] = "/tmp/pl-export-test.XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return pl_xstrdup(d);
}

/* Number of entries in dir, "." and ".." excluded. */
static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *data = pl_xcalloc(1, 1 << 20);
    size_t n = fread(data, 1, (1 << 20) - 1, f);
    assert_true(n < (1 << 20) - 1);
    fclose(f);
    return data;
}

static void remove_dir(char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *p = pl_xasprintf("%s/%s", dir, e->d_name);
        unlink(p);
        free(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
    free(dir);
}

static void test_catalogue(void **state)
{
    (void)state;
    size_t n = 0;
    for (; pl_export_kinds[n]; n++) {
        const struct pl_export_kind *k = pl_export_kinds[n];
        assert_ptr_equal(pl_export_kind_find(k->name), k);
        /* one line (psql's \copy and --sql), a COPY to the client as CSV with a header */
        assert_null(strchr(k->copy_sql, '\n'));
        assert_int_equal(strncmp(k->copy_sql, "COPY (SELECT ", 13), 0);
        const char *tail = ") TO STDOUT (FORMAT csv, HEADER)";
        size_t len = strlen(k->copy_sql);
        assert_string_equal(k->copy_sql + len - strlen(tail), tail);
        assert_non_null(strstr(k->copy_sql, "pl_export_params()"));
        /* values never enter the SQL: no literal dates */
        assert_null(strstr(k->copy_sql, "'20"));
        assert_int_equal(k->statuses != NULL, (k->flags & PL_EXPORT_HAS_STATUS) != 0);
    }
    assert_int_equal(n, 6);
    assert_null(pl_export_kind_find("payouts"));
    const struct pl_export_kind *charges = pl_export_kind_find("charges");
    assert_true(pl_export_kind_status_ok(charges, "succeeded"));
    assert_true(pl_export_kind_status_ok(charges, "cancelled"));
    assert_false(pl_export_kind_status_ok(charges, "void"));
    assert_false(pl_export_kind_status_ok(charges, ""));
    assert_false(pl_export_kind_status_ok(pl_export_kind_find("donors"), "active"));
}

static void write_rows(struct pl_export_sink *s, int rows)
{
    assert_int_equal(pl_export_sink_write_row(s, "a,b\n", 4), 0);
    for (int i = 0; i < rows; i++) {
        char row[64];
        int n = snprintf(row, sizeof(row), "%d,\"x\ny\"\n", i);
        assert_int_equal(pl_export_sink_write_row(s, row, (size_t)n), 0);
    }
}

static void test_file_appears_only_on_commit(void **state)
{
    (void)state;
    char *dir = make_dir();
    char *path = pl_xasprintf("%s/out.csv", dir);
    struct pl_export_sink *s = NULL;
    assert_int_equal(pl_export_sink_open_file(path, 0, &s), 0);
    write_rows(s, 20000); /* more than the buffer: data is on disk, unnamed */
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(count_entries(dir), 0);
    assert_int_equal(pl_export_sink_commit(s), 0);
    pl_export_sink_free(s);
    assert_int_equal(count_entries(dir), 1);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, PL_EXPORT_FILE_MODE);
    char *data = slurp(path);
    assert_int_equal(strncmp(data, "a,b\n0,\"x\ny\"\n1,", 14), 0);
    free(data);

    /* abandoned: nothing left */
    unlink(path);
    assert_int_equal(pl_export_sink_open_file(path, 0, &s), 0);
    write_rows(s, 20000);
    pl_export_sink_free(s);
    assert_int_equal(count_entries(dir), 0);
    free(path);
    remove_dir(dir);
}

static void test_existing_file(void **state)
{
    (void)state;
    char *dir = make_dir();
    char *path = pl_xasprintf("%s/out.csv", dir);
    FILE *f = fopen(path, "w");
    fputs("old\n", f);
    fclose(f);
    struct pl_export_sink *s = NULL;
    assert_int_equal(pl_export_sink_open_file(path, 0, &s), -EEXIST);
    assert_null(s);

    /* FORCE: the old file stays until the commit, then is replaced whole */
    assert_int_equal(pl_export_sink_open_file(path, PL_EXPORT_FORCE, &s), 0);
    write_rows(s, 3);
    char *data = slurp(path);
    assert_string_equal(data, "old\n");
    free(data);
    assert_int_equal(pl_export_sink_commit(s), 0);
    pl_export_sink_free(s);
    data = slurp(path);
    assert_string_equal(data, "a,b\n0,\"x\ny\"\n1,\"x\ny\"\n2,\"x\ny\"\n");
    free(data);
    assert_int_equal(count_entries(dir), 1);

    /* a file that appears during the export is not overwritten at commit */
    unlink(path);
    assert_int_equal(pl_export_sink_open_file(path, 0, &s), 0);
    write_rows(s, 1);
    f = fopen(path, "w");
    fputs("raced\n", f);
    fclose(f);
    assert_int_equal(pl_export_sink_commit(s), -EEXIST);
    pl_export_sink_free(s);
    data = slurp(path);
    assert_string_equal(data, "raced\n");
    free(data);
    assert_int_equal(count_entries(dir), 1);

    char *sub = pl_xasprintf("%s/sub", dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    assert_int_equal(pl_export_sink_open_file(sub, PL_EXPORT_FORCE, &s), -EISDIR);
    rmdir(sub);
    free(sub);
    free(path);
    remove_dir(dir);
}

/* The fallback where O_TMPFILE is missing: a hidden named file, removed
 * when abandoned, linked or renamed into place on commit. */
static struct pl_export_sink *named_sink(const char *dir, const char *path, unsigned flags)
{
    struct pl_export_sink *s = sink_new(-1, true, flags);
    s->dir = pl_xstrdup(dir);
    s->target = pl_xstrdup(path);
    assert_int_equal(open_named_tmp(s), 0);
    assert_non_null(strstr(s->tmp_path, "/.out.csv.tmp-"));
    return s;
}

static void test_named_fallback(void **state)
{
    (void)state;
    char *dir = make_dir();
    char *path = pl_xasprintf("%s/out.csv", dir);
    struct pl_export_sink *s = named_sink(dir, path, 0);
    write_rows(s, 2);
    assert_int_equal(count_entries(dir), 1); /* the temporary file */
    pl_export_sink_free(s);
    assert_int_equal(count_entries(dir), 0);

    s = named_sink(dir, path, 0);
    write_rows(s, 2);
    assert_int_equal(pl_export_sink_commit(s), 0);
    pl_export_sink_free(s);
    assert_int_equal(count_entries(dir), 1);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, PL_EXPORT_FILE_MODE);

    s = named_sink(dir, path, 0); /* exists, no FORCE */
    write_rows(s, 1);
    assert_int_equal(pl_export_sink_commit(s), -EEXIST);
    pl_export_sink_free(s);
    assert_int_equal(count_entries(dir), 1);

    s = named_sink(dir, path, PL_EXPORT_FORCE);
    write_rows(s, 1);
    assert_int_equal(pl_export_sink_commit(s), 0);
    pl_export_sink_free(s);
    assert_int_equal(count_entries(dir), 1);
    char *data = slurp(path);
    assert_string_equal(data, "a,b\n0,\"x\ny\"\n");
    free(data);
    free(path);
    remove_dir(dir);
}

static void test_crlf_and_bom(void **state)
{
    (void)state;
    char *dir = make_dir();
    char *path = pl_xasprintf("%s/out.csv", dir);
    struct pl_export_sink *s = NULL;
    assert_int_equal(pl_export_sink_open_file(path, PL_EXPORT_CRLF | PL_EXPORT_BOM, &s), 0);
    write_rows(s, 1);
    assert_int_equal(pl_export_sink_commit(s), 0);
    pl_export_sink_free(s);
    char *data = slurp(path);
    /* the row end becomes CR LF; a newline inside a quoted cell stays LF */
    assert_string_equal(data, "\xEF\xBB\xBF"
                              "a,b\r\n0,\"x\ny\"\r\n");
    free(data);
    free(path);
    remove_dir(dir);
}

static void test_fd_sink_write_error_is_sticky(void **state)
{
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    close(fds[0]); /* writes now fail with EPIPE (SIGPIPE ignored below) */
    signal(SIGPIPE, SIG_IGN);
    struct pl_export_sink *s = NULL;
    assert_int_equal(pl_export_sink_open_fd(fds[1], 0, &s), 0);
    static char big[SINK_BUF_BYTES + 10];
    memset(big, 'x', sizeof(big));
    assert_int_equal(pl_export_sink_write(s, big, sizeof(big)), -EPIPE);
    assert_int_equal(pl_export_sink_write(s, "a", 1), -EPIPE);
    assert_int_equal(pl_export_sink_commit(s), -EPIPE);
    pl_export_sink_free(s);
    close(fds[1]);
    assert_int_equal(pl_export_sink_open_fd(-1, 0, &s), -EBADF);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_catalogue),     cmocka_unit_test(test_file_appears_only_on_commit),
        cmocka_unit_test(test_existing_file), cmocka_unit_test(test_named_fallback),
        cmocka_unit_test(test_crlf_and_bom),  cmocka_unit_test(test_fd_sink_write_error_is_sticky),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
