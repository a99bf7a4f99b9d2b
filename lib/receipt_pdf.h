/*
 * receipt_pdf — draws one year-end tax receipt as a PDF with cairo and
 * pango (fonts: DejaVu Sans from fonts-dejavu-core; none are bundled).
 *
 * Owns: layout, wording per jurisdiction (US acknowledgment, Canada's
 * official-receipt fields), money and date display, pagination.
 * Never: touches the database or the file system. Everything it prints
 * comes from the document (the receipt's frozen snapshots), so the same
 * document always renders to the same bytes: the creation date is the
 * issue time, not the time of rendering.
 */
#ifndef PL_RECEIPT_PDF_H
#define PL_RECEIPT_PDF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct pl_receipt_gift {
    int64_t charge_id;
    char received_on[11]; /* YYYY-MM-DD, org-local */
    int64_t amount_minor; /* net of refunds */
};

/* A postal address split like donor rows; NULL or "" parts are left out. */
struct pl_receipt_address {
    const char *line1, *line2, *city, *region, *postal_code, *country;
};

/* Every string is borrowed for the duration of the call; NULL = not set. */
struct pl_receipt_doc {
    const char *number;          /* "2026-000123" */
    const char *replaces_number; /* NULL unless this receipt cancels another */
    int tax_year;
    const char *currency; /* ISO 4217 */
    int exponent;         /* the currency's decimals */
    int64_t total_minor;
    const char *issued_on;  /* YYYY-MM-DD, org-local date of issue */
    const char *created_at; /* PDF creation date, ISO 8601 ("2027-01-15T09:00:00Z") */
    bool canada;            /* jurisdiction ca: official receipt wording */

    struct {
        const char *legal_name;
        struct pl_receipt_address address;
        const char *tax_id;
        const char *city_issued;
        const char *statement; /* charity registration statement, optional */
        const char *signatory_name;
        const char *signatory_title;
        const char *email;
        const char *website;
        const unsigned char *signature_png; /* NULL: no image */
        size_t signature_png_len;
    } org;

    struct {
        const char *full_name;
        struct pl_receipt_address address;
    } donor;

    const struct pl_receipt_gift *gifts;
    size_t n_gifts;
};

/* The sentence US receipts must carry (also printed on Canadian ones). */
#define PL_RECEIPT_NO_GOODS "No goods or services were provided in exchange for these contributions."

/*
 * Render `doc` into a new buffer (*out, free()) of *out_len bytes.
 * Returns 0, or PL_EINVAL (bad document, e.g. an undecodable signature
 * image) / PL_EPARSE with `err` saying why; outputs untouched on failure.
 */
int pl_receipt_pdf_render(const struct pl_receipt_doc *doc, unsigned char **out, size_t *out_len,
                          char *err, size_t errlen);

/* "USD 1,234.56", "JPY 12,000": the amount with the currency code and
 * thousands separators, into buf (size n). 0 or PL_ERANGE. */
int pl_receipt_money(int64_t minor, int exponent, const char *currency, char *buf, size_t n);

/* "2027-01-15" → "January 15, 2027" into buf (size n); other text is
 * copied unchanged. Returns buf. */
char *pl_receipt_long_date(const char *iso, char *buf, size_t n);

#endif
