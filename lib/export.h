/*
 * export — finance CSV exports: which exports exist (their COPY queries,
 * filters and status words), the COPY TO STDOUT stream, and the file that
 * appears whole or not at all.
 *
 * Owns: the export catalogue (column lists are a stable interface, see
 * docs/exports.md), streaming rows from PostgreSQL to a sink with flat
 * memory, and atomic files (a temporary file in the target directory,
 * fsync, then link or rename; fsync of the directory).
 *
 * Never: formats values in C (PostgreSQL does the quoting, the money and
 * the times: sql/008_export.sql), builds SQL from values (the queries read
 * their range and filters from transaction-local settings, see
 * PL_EXPORT_SETTINGS_SQL), opens transactions, or prints.
 */
#ifndef PL_EXPORT_H
#define PL_EXPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <libpq-fe.h>

enum pl_export_kind_flags {
    PL_EXPORT_RANGE_REQUIRED = 1u << 0, /* --from and --to must both be given */
    PL_EXPORT_HAS_STATUS = 1u << 1,     /* --status filters rows */
    PL_EXPORT_HAS_FUND = 1u << 2,       /* --fund filters rows */
};

struct pl_export_kind {
    const char *name;            /* "charges", "summary", ... */
    const char *about;           /* one line for --help */
    const char *range_on;        /* what --from/--to select on, for --help */
    unsigned flags;              /* enum pl_export_kind_flags */
    const char *const *statuses; /* NULL-terminated words --status accepts */
    const char *copy_sql;        /* COPY (...) TO STDOUT (FORMAT csv, HEADER), one line */
};

/* The catalogue, in --help order; NULL-terminated. Static storage. */
extern const struct pl_export_kind *const pl_export_kinds[];

/* The export called `name`, or NULL. Borrowed (static). */
const struct pl_export_kind *pl_export_kind_find(const char *name);

/* True when `status` is one of the kind's status words. */
bool pl_export_kind_status_ok(const struct pl_export_kind *k, const char *status);

/*
 * The statement that hands an export its range and filters: run it with
 * PQexecParams inside the export's transaction, parameters as text:
 *   $1 from date, $2 to date (YYYY-MM-DD; NULL or "" for unbounded),
 *   $3 statuses, $4 funds (JSON arrays of strings; NULL or "[]" for all).
 * It also pins DateStyle to ISO for the transaction.
 */
extern const char PL_EXPORT_SETTINGS_SQL[];

/* ---- sinks: where the CSV goes ------------------------------------------ */

enum pl_export_sink_flags {
    PL_EXPORT_FORCE = 1u << 0, /* a file sink may replace an existing file */
    PL_EXPORT_CRLF = 1u << 1,  /* end rows with CR LF instead of LF */
    PL_EXPORT_BOM = 1u << 2,   /* start with a UTF-8 byte order mark */
};

/* Mode of export files: they hold donors' personal data. */
#define PL_EXPORT_FILE_MODE 0600

struct pl_export_sink;

/*
 * A sink that becomes the file `path` only at pl_export_sink_commit(): the
 * rows go to an unnamed temporary file in the same directory (O_TMPFILE;
 * where the file system lacks it, a hidden ".NAME.tmp-XXXXXX" file), which
 * is fsynced and then linked (or, with PL_EXPORT_FORCE, renamed) into
 * place. Without PL_EXPORT_FORCE an existing `path` is refused here
 * (-EEXIST) and again, atomically, at commit.
 * Returns 0 and a new sink in *out, or -errno.
 */
int pl_export_sink_open_file(const char *path, unsigned flags, struct pl_export_sink **out);

/* A sink writing to fd (borrowed; not closed, not synced): e.g. stdout. */
int pl_export_sink_open_fd(int fd, unsigned flags, struct pl_export_sink **out);

/* Buffered write of n bytes: 0 or -errno (the sink is then failed and
 * every later write and the commit return the same error). */
int pl_export_sink_write(struct pl_export_sink *s, const void *data, size_t n);

/* Write one CSV row as COPY sent it (ending in LF), converting the line
 * end when the sink asks for CR LF. 0 or -errno. */
int pl_export_sink_write_row(struct pl_export_sink *s, const char *row, size_t n);

/* Flush; for a file sink fsync, put the file in place, fsync the directory.
 * 0 or -errno (then nothing is in place: pl_export_sink_free cleans up). */
int pl_export_sink_commit(struct pl_export_sink *s);

/* Close; a file sink that was not committed leaves nothing behind. NULL ok. */
void pl_export_sink_free(struct pl_export_sink *s);

/* ---- the stream ---------------------------------------------------------- */

/* Called every `every` rows with the count so far (progress display). */
typedef void (*pl_export_progress_fn)(uint64_t rows, void *arg);

/*
 * Run `copy_sql` (a COPY ... TO STDOUT) on conn and write every row to the
 * sink as it arrives (PQgetCopyData, one row in memory at a time).
 * *rows gets the data rows written (header excluded) on success.
 * Returns 0; PL_EDB with the server's message in err (size n) when the
 * statement or the stream failed; -errno with what failed in err when
 * writing failed (the COPY is then abandoned and the connection drained).
 * The sink is not committed here.
 */
int pl_export_copy(PGconn *conn, const char *copy_sql, struct pl_export_sink *sink,
                   pl_export_progress_fn progress, uint64_t every, void *arg, uint64_t *rows,
                   char *err, size_t n);

#endif
