/*
 * receipts — year-end tax receipts: which gifts a receipt covers, numbering,
 * void and reissue, the PDF files and the mailing manifest.
 *
 * The rules are SQL (sql/007_receipts.sql: pl_receipt_plan, pl_receipt_issue);
 * this module drives them in short transactions, renders each new receipt
 * from its frozen snapshots (receipt_pdf), and writes files atomically
 * (temporary file, fsync, rename after the commit, fsync of the directory).
 *
 * Concurrency: every transaction that changes a tax year's receipts takes
 * pl_receipt_lock(year) first, then decides again from committed data; two
 * runs at once take turns batch by batch, so no number is handed out twice
 * and no donor is receipted twice (receipt_one_live is the backstop).
 *
 * Crash safety: a receipt is committed before its file is renamed into
 * place; a run that died in between leaves a committed receipt without its
 * file, which the next run renders again from the snapshots (same bytes).
 *
 * Uses a plain synchronous PGconn: pledgectl only, never the daemon's loop.
 * Never: edits an issued receipt (it is voided and replaced), or prints.
 */
#ifndef PL_RECEIPTS_H
#define PL_RECEIPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "config.h"

enum pl_receipt_action {
    PL_RCPT_ISSUE = 0, /* first receipt for the donor, year and currency */
    PL_RCPT_REPLACE,   /* a new number that cancels and replaces old_number */
    PL_RCPT_VOID,      /* live receipt voided: no eligible gifts remain */
    PL_RCPT_UNCHANGED, /* live receipt still covers exactly the eligible gifts */
    PL_RCPT_SKIP,      /* cannot be issued; reason says why */
    PL_RCPT_NACTIONS,
};

/* "issued", "replaced", "voided", "unchanged", "skipped" (static). */
const char *pl_receipt_action_name(enum pl_receipt_action a);

struct pl_receipts_opts {
    int tax_year;
    int64_t donor_id;       /* 0: every donor */
    const char *out_dir;    /* PDFs and manifest; created (one level) if missing */
    bool dry_run;           /* decide and report; write nothing, anywhere */
    const char *actor;      /* for the event log */
    const char *timezone;   /* org time zone ([billing] timezone) */
    const struct pl_config *cfg; /* [org]: checked by the caller (pl_config_check_org) */
    size_t batch;           /* (donor, currency) pairs per transaction; 0: default */
    /* called after each batch and at the end; may be NULL */
    void (*progress)(void *arg, size_t done, size_t total);
    void *progress_arg;
};

struct pl_receipt_outcome {
    enum pl_receipt_action action;
    int64_t donor_id;
    char currency[4];
    int exponent;
    int64_t total_minor;  /* of the receipt issued (or live); 0 for void/skip */
    char number[32];      /* receipt issued, or the live one when unchanged; "" otherwise */
    char old_number[32];  /* replaced or voided receipt; "" otherwise */
    char sha256[65];      /* of the PDF, "" when none was written */
    char *file;           /* file name inside out_dir, NULL when none */
    char *donor_name;     /* as frozen on the receipt (or current, for skip/void) */
    char *email;          /* NULL when the donor has none */
    char *reason;         /* skip / void: why; NULL otherwise */
    bool restored;        /* unchanged, but its missing file was rendered again */
};

struct pl_receipts_run {
    struct pl_receipt_outcome *items;
    size_t n;
    size_t count[PL_RCPT_NACTIONS];
    size_t restored;
    char *manifest; /* path of the manifest written, NULL when none */
};

/*
 * Bring the receipts of opts->tax_year up to date (see the top). Returns 0
 * or a negative error with `err` filled; *out (never NULL after the call)
 * gets what was done, including the batches committed before a failure.
 * Free it with pl_receipts_run_free().
 */
int pl_receipts_generate(PGconn *conn, const struct pl_receipts_opts *opts,
                         struct pl_receipts_run **out, char *err, size_t errlen);

/* NULL is accepted. */
void pl_receipts_run_free(struct pl_receipts_run *run);

/*
 * Render issued or void receipt `number` from its snapshots into a new
 * buffer (*pdf, free()). The document's stored sha256 (or "") goes into
 * stored_sha256 when not NULL. 0, PL_ENOTFOUND, PL_EDB or PL_EINVAL.
 */
int pl_receipts_render(PGconn *conn, const char *number, unsigned char **pdf, size_t *len,
                       char stored_sha256[65], char *err, size_t errlen);

/* The organisation as frozen on a receipt: a new JSON object. */
json_t *pl_receipts_org_snapshot(const struct pl_config *cfg, const char *timezone,
                                 const char *signature_sha256);

/*
 * Write `data` to dirfd/name atomically: a temporary file in the same
 * directory, fsync, rename, fsync of the directory. With `exclusive`, an
 * existing `name` is an error (-EEXIST) instead of being replaced.
 * 0 or -errno.
 */
int pl_receipts_write_file(int dirfd, const char *name, const void *data, size_t len,
                           bool exclusive);

/* Lowercase hex sha256 of data. */
void pl_receipts_sha256(const void *data, size_t len, char out[65]);

/* A CSV cell for the manifest: quoted when needed, and neutralised with a
 * leading ' when it starts with = + - @ TAB or CR (formula injection). New
 * string. */
char *pl_receipts_csv_cell(const char *s);

#endif
