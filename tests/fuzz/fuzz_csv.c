/*
 * libFuzzer target: the CSV reader (lib/csv.c) behind `pledgectl import`,
 * which reads files exported by other systems.
 *
 * The input is the file, as is. It is copied into a buffer of exactly its
 * size with no terminating NUL -- the reader is given a length and must
 * never look past it (ASan reports an overread). Seeds: corpus/fuzz_csv/.
 *
 * Invariants besides "no crash": every record has at least one field, each
 * a NUL-terminated string no longer than the input; record lines never go
 * backwards; an error has a message naming a line and is sticky; the end
 * is sticky too.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "csv.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    if (size)
        memcpy(buf, data, size);

    struct pl_csv *r = pl_csv_new(buf, size);
    long last_line = 0;
    size_t records = 0, bytes = 0;
    int rc;
    for (;;) {
        char **fields = NULL;
        size_t n = 0;
        long line = 0;
        rc = pl_csv_next(r, &fields, &n, &line);
        if (rc != 1)
            break;
        if (!fields || n == 0 || line < 1 || line < last_line)
            abort();
        for (size_t i = 0; i < n; i++) {
            if (!fields[i])
                abort();
            size_t len = strlen(fields[i]);
            if (len > size)
                abort();
            bytes += len;
        }
        /* a record is never empty text: each costs at least a byte */
        if (++records > size)
            abort();
        last_line = line;
    }
    if (bytes > size)
        abort();
    if (rc == 0) {
        if (pl_csv_error(r)[0] != '\0')
            abort();
        char **f = NULL;
        size_t n = 0;
        long line = 0;
        if (pl_csv_next(r, &f, &n, &line) != 0 || f || n || line)
            abort();
    } else {
        if (rc != PL_EPARSE || strncmp(pl_csv_error(r), "line ", 5) != 0)
            abort();
        char **f = NULL;
        size_t n = 0;
        long line = 0;
        if (pl_csv_next(r, &f, &n, &line) != PL_EPARSE || f || n || line)
            abort();
    }
    pl_csv_free(r);
    free(buf);
    return 0;
}
