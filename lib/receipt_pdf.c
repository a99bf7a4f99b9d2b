/*
 * receipt_pdf — see receipt_pdf.h. US Letter pages in points (1/72 in);
 * pango runs at 72 dpi so font sizes are points too. The page is laid out
 * twice: a measuring pass counts pages ("page 1 of 2"), the second draws.
 */
#include "receipt_pdf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cairo-pdf.h>
#include <cairo.h>
#include <pango/pangocairo.h>

#include "money.h"
#include "util.h"

#define PAGE_W_PT   612.0 /* US Letter */
#define PAGE_H_PT   792.0
#define MARGIN_PT   54.0
#define CONTENT_W   (PAGE_W_PT - 2 * MARGIN_PT)
#define FOOTER_H_PT 42.0
#define ROW_H_PT    17.0
#define SIG_MAX_W   170.0
#define SIG_MAX_H   48.0
#define FONT_FAMILY "DejaVu Sans"

/* colours */
static const double INK[3] = {0.13, 0.13, 0.15};
static const double MUTED[3] = {0.40, 0.42, 0.45};
static const double ACCENT[3] = {0.11, 0.30, 0.45};
static const double RULE[3] = {0.78, 0.80, 0.82};
static const double ZEBRA[3] = {0.955, 0.963, 0.972};
static const double NOTICE_BG[3] = {0.99, 0.94, 0.86};
static const double NOTICE_INK[3] = {0.55, 0.27, 0.02};

enum align { LEFT, RIGHT, CENTER };

struct pen {
    cairo_t *cr;
    PangoLayout *layout;
    bool draw; /* false: measuring pass */
    int page, pages;
    double y;
    const struct pl_receipt_doc *doc;
};

struct membuf {
    unsigned char *data;
    size_t len, cap;
};

static cairo_status_t mem_write(void *closure, const unsigned char *data, unsigned int len)
{
    struct membuf *m = closure;
    if (m->len + len > m->cap) {
        size_t cap = m->cap ? m->cap : 64 * 1024;
        while (cap < m->len + len)
            cap *= 2;
        m->data = pl_xrealloc(m->data, cap);
        m->cap = cap;
    }
    memcpy(m->data + m->len, data, len);
    m->len += len;
    return CAIRO_STATUS_SUCCESS;
}

struct memread {
    const unsigned char *data;
    size_t len, pos;
};

static cairo_status_t mem_read(void *closure, unsigned char *data, unsigned int len)
{
    struct memread *m = closure;
    if (m->len - m->pos < len)
        return CAIRO_STATUS_READ_ERROR;
    memcpy(data, m->data + m->pos, len);
    m->pos += len;
    return CAIRO_STATUS_SUCCESS;
}

int pl_receipt_money(int64_t minor, int exponent, const char *currency, char *buf, size_t n)
{
    char plain[PL_MONEY_FMT_MAX], grouped[PL_MONEY_FMT_MAX * 2];
    if (pl_money_format(minor, exponent, plain, sizeof(plain)) < 0)
        return PL_ERANGE;
    const char *p = plain;
    size_t o = 0;
    if (*p == '-')
        grouped[o++] = *p++;
    size_t int_len = strcspn(p, ".");
    for (size_t i = 0; i < int_len; i++) {
        if (i > 0 && (int_len - i) % 3 == 0)
            grouped[o++] = ',';
        grouped[o++] = p[i];
    }
    pl_strlcpy(grouped + o, p + int_len, sizeof(grouped) - o);
    int w = snprintf(buf, n, "%s %s", currency, grouped);
    return w < 0 || (size_t)w >= n ? PL_ERANGE : 0;
}

static const char *const MONTHS[12] = {
    "January", "February", "March",     "April",   "May",      "June",
    "July",    "August",   "September", "October", "November", "December",
};

char *pl_receipt_long_date(const char *iso, char *buf, size_t n)
{
    int y, m, d;
    char tail;
    if (iso && sscanf(iso, "%4d-%2d-%2d%c", &y, &m, &d, &tail) == 3 && m >= 1 && m <= 12)
        snprintf(buf, n, "%s %d, %d", MONTHS[m - 1], d, y);
    else
        snprintf(buf, n, "%s", iso ? iso : "");
    return buf;
}

/* "Jan 5, 2026" for the gift table */
static char *short_date(const char *iso, char *buf, size_t n)
{
    int y, m, d;
    char tail;
    if (sscanf(iso, "%4d-%2d-%2d%c", &y, &m, &d, &tail) == 3 && m >= 1 && m <= 12)
        snprintf(buf, n, "%.3s %d, %d", MONTHS[m - 1], d, y);
    else
        snprintf(buf, n, "%s", iso);
    return buf;
}

static bool set(const char *s)
{
    return s && *s;
}

/* ---- drawing primitives -------------------------------------------------- */

static void colour(struct pen *p, const double c[3])
{
    cairo_set_source_rgb(p->cr, c[0], c[1], c[2]);
}

/* Lay out `text` in a box of `width` at (x, p->y); returns its height.
 * Draws only in the drawing pass. */
static double text_at(struct pen *p, double x, double y, double width, enum align al,
                      const char *font, const double c[3], const char *text)
{
    PangoFontDescription *fd = pango_font_description_from_string(font);
    pango_layout_set_font_description(p->layout, fd);
    pango_font_description_free(fd);
    pango_layout_set_width(p->layout, (int)(width * PANGO_SCALE));
    pango_layout_set_wrap(p->layout, PANGO_WRAP_WORD_CHAR);
    pango_layout_set_alignment(p->layout, al == RIGHT    ? PANGO_ALIGN_RIGHT
                                          : al == CENTER ? PANGO_ALIGN_CENTER
                                                         : PANGO_ALIGN_LEFT);
    pango_layout_set_text(p->layout, text, -1);
    int w, h;
    pango_layout_get_size(p->layout, &w, &h);
    if (p->draw) {
        colour(p, c);
        cairo_move_to(p->cr, x, y);
        pango_cairo_show_layout(p->cr, p->layout);
    }
    return (double)h / PANGO_SCALE;
}

/* Text at the pen, which moves down past it. */
static void line(struct pen *p, double x, double width, enum align al, const char *font,
                 const double c[3], const char *text)
{
    p->y += text_at(p, x, p->y, width, al, font, c, text);
}

static void rule(struct pen *p, double x0, double x1, double y, double width, const double c[3])
{
    if (!p->draw)
        return;
    colour(p, c);
    cairo_set_line_width(p->cr, width);
    cairo_move_to(p->cr, x0, y);
    cairo_line_to(p->cr, x1, y);
    cairo_stroke(p->cr);
}

static void box(struct pen *p, double x, double y, double w, double h, const double c[3])
{
    if (!p->draw)
        return;
    colour(p, c);
    cairo_rectangle(p->cr, x, y, w, h);
    cairo_fill(p->cr);
}

/* "City, Region Postal" and the other address lines, one per element. */
static size_t address_lines(const struct pl_receipt_address *a, char out[4][512])
{
    size_t n = 0;
    if (set(a->line1))
        snprintf(out[n++], 512, "%s", a->line1);
    if (set(a->line2))
        snprintf(out[n++], 512, "%s", a->line2);
    char city[512] = "";
    snprintf(city, sizeof(city), "%s%s%s%s%s", set(a->city) ? a->city : "",
             set(a->city) && set(a->region) ? ", " : "", set(a->region) ? a->region : "",
             (set(a->city) || set(a->region)) && set(a->postal_code) ? "  " : "",
             set(a->postal_code) ? a->postal_code : "");
    if (city[0])
        snprintf(out[n++], 512, "%s", city);
    if (set(a->country))
        snprintf(out[n++], 512, "%s", a->country);
    return n;
}

/* ---- page parts ------------------------------------------------------------ */

static void footer(struct pen *p)
{
    const struct pl_receipt_doc *d = p->doc;
    if (!p->draw)
        return;
    double y = PAGE_H_PT - MARGIN_PT - FOOTER_H_PT + 12;
    rule(p, MARGIN_PT, PAGE_W_PT - MARGIN_PT, y - 6, 0.5, RULE);
    char contact[1024];
    snprintf(contact, sizeof(contact), "%s%s%s%s%s", d->org.legal_name,
             set(d->org.email) ? "  \xc2\xb7  " : "", set(d->org.email) ? d->org.email : "",
             set(d->org.website) ? "  \xc2\xb7  " : "", set(d->org.website) ? d->org.website : "");
    y += text_at(p, MARGIN_PT, y, CONTENT_W, CENTER, FONT_FAMILY " 7.5", MUTED, contact);
    char pg[128];
    snprintf(pg, sizeof(pg), "Receipt No. %s  \xc2\xb7  Page %d of %d  \xc2\xb7  "
             "Please keep this receipt for your tax records.",
             d->number, p->page, p->pages);
    text_at(p, MARGIN_PT, y + 1, CONTENT_W, CENTER, FONT_FAMILY " 7.5", MUTED, pg);
}

static void new_page(struct pen *p)
{
    footer(p);
    if (p->draw)
        cairo_show_page(p->cr);
    p->page++;
    p->y = MARGIN_PT;
    char cont[512];
    snprintf(cont, sizeof(cont), "%s \xe2\x80\x94 receipt No. %s (continued)",
             p->doc->org.legal_name, p->doc->number);
    line(p, MARGIN_PT, CONTENT_W, LEFT, FONT_FAMILY " Bold 9", MUTED, cont);
    p->y += 10;
}

static double bottom_limit(void)
{
    return PAGE_H_PT - MARGIN_PT - FOOTER_H_PT;
}

static void header(struct pen *p)
{
    const struct pl_receipt_doc *d = p->doc;
    char buf[1024];
    const double right_w = 230, left_w = CONTENT_W - right_w - 20;
    const double right_x = PAGE_W_PT - MARGIN_PT - right_w;

    /* left: the issuer */
    double y0 = p->y;
    double lx = MARGIN_PT + 12;
    line(p, lx, left_w - 12, LEFT, FONT_FAMILY " Bold 15", ACCENT, d->org.legal_name);
    p->y += 2;
    char addr[4][512];
    size_t n = address_lines(&d->org.address, addr);
    for (size_t i = 0; i < n; i++)
        line(p, lx, left_w - 12, LEFT, FONT_FAMILY " 9", INK, addr[i]);
    if (set(d->org.tax_id)) {
        snprintf(buf, sizeof(buf), "%s %s",
                 d->canada ? "Charitable registration No." : "EIN", d->org.tax_id);
        line(p, lx, left_w - 12, LEFT, FONT_FAMILY " 9", INK, buf);
    }
    if (set(d->org.email) || set(d->org.website)) {
        snprintf(buf, sizeof(buf), "%s%s%s", set(d->org.email) ? d->org.email : "",
                 set(d->org.email) && set(d->org.website) ? "  \xc2\xb7  " : "",
                 set(d->org.website) ? d->org.website : "");
        line(p, lx, left_w - 12, LEFT, FONT_FAMILY " 9", MUTED, buf);
    }
    double left_end = p->y;
    box(p, MARGIN_PT, y0 + 2, 3, left_end - y0 - 2, ACCENT);

    /* right: what this is */
    p->y = y0;
    line(p, right_x, right_w, RIGHT, FONT_FAMILY " Bold 14", INK,
         d->canada ? "Official receipt for income tax purposes" : "Donation Receipt");
    if (!d->canada)
        line(p, right_x, right_w, RIGHT, FONT_FAMILY " 9", MUTED, "Year-end statement of giving");
    p->y += 6;
    snprintf(buf, sizeof(buf), "Receipt No. %s", d->number);
    line(p, right_x, right_w, RIGHT, FONT_FAMILY " Bold 10", INK, buf);
    snprintf(buf, sizeof(buf), "%s %d", d->canada ? "Year received:" : "Tax year", d->tax_year);
    line(p, right_x, right_w, RIGHT, FONT_FAMILY " 9.5", INK, buf);
    char date[64];
    snprintf(buf, sizeof(buf), "Date issued: %s",
             pl_receipt_long_date(d->issued_on, date, sizeof(date)));
    line(p, right_x, right_w, RIGHT, FONT_FAMILY " 9.5", INK, buf);
    if (d->canada && set(d->org.city_issued)) {
        snprintf(buf, sizeof(buf), "Location issued: %s", d->org.city_issued);
        line(p, right_x, right_w, RIGHT, FONT_FAMILY " 9.5", INK, buf);
    }
    p->y = (p->y > left_end ? p->y : left_end) + 14;

    if (set(d->replaces_number)) {
        snprintf(buf, sizeof(buf), "Cancels and replaces receipt No. %s", d->replaces_number);
        bool draw = p->draw;
        p->draw = false; /* measure only */
        double h = text_at(p, 0, 0, CONTENT_W - 20, LEFT, FONT_FAMILY " Bold 10", NOTICE_INK, buf);
        p->draw = draw;
        box(p, MARGIN_PT, p->y, CONTENT_W, h + 12, NOTICE_BG);
        text_at(p, MARGIN_PT + 10, p->y + 6, CONTENT_W - 20, LEFT, FONT_FAMILY " Bold 10",
                NOTICE_INK, buf);
        p->y += h + 12 + 12;
    }
    rule(p, MARGIN_PT, PAGE_W_PT - MARGIN_PT, p->y, 1.0, ACCENT);
    p->y += 14;

    /* the donor, and the total at a glance */
    double top = p->y;
    line(p, MARGIN_PT, 280, LEFT, FONT_FAMILY " Bold 7.5", MUTED, "RECEIVED FROM");
    p->y += 3;
    line(p, MARGIN_PT, 280, LEFT, FONT_FAMILY " Bold 11", INK, d->donor.full_name);
    p->y += 1;
    n = address_lines(&d->donor.address, addr);
    for (size_t i = 0; i < n; i++)
        line(p, MARGIN_PT, 280, LEFT, FONT_FAMILY " 10", INK, addr[i]);
    double donor_end = p->y;

    const double tw = 190, tx = PAGE_W_PT - MARGIN_PT - tw;
    char money[64];
    pl_receipt_money(d->total_minor, d->exponent, d->currency, money, sizeof(money));
    box(p, tx, top, tw, 58, ZEBRA);
    snprintf(buf, sizeof(buf), "TOTAL GIFTS %d", d->tax_year);
    text_at(p, tx + 12, top + 9, tw - 24, LEFT, FONT_FAMILY " Bold 7.5", MUTED, buf);
    text_at(p, tx + 12, top + 23, tw - 24, LEFT, FONT_FAMILY " Bold 16", ACCENT, money);
    p->y = (donor_end > top + 58 ? donor_end : top + 58) + 18;

    snprintf(buf, sizeof(buf),
             "Thank you for your generous support. This receipt lists every gift %s received "
             "from you in %d.",
             d->org.legal_name, d->tax_year);
    line(p, MARGIN_PT, CONTENT_W, LEFT, FONT_FAMILY " 9.5", INK, buf);
    p->y += 12;
}

#define COL_DATE_X MARGIN_PT + 8
#define COL_REF_X  (MARGIN_PT + 150)
#define COL_AMT_W  160.0

static void table_head(struct pen *p)
{
    const struct pl_receipt_doc *d = p->doc;
    char buf[64];
    text_at(p, COL_DATE_X, p->y, 130, LEFT, FONT_FAMILY " Bold 8", MUTED, "DATE RECEIVED");
    text_at(p, COL_REF_X, p->y, 160, LEFT, FONT_FAMILY " Bold 8", MUTED, "REFERENCE");
    snprintf(buf, sizeof(buf), "AMOUNT (%s)", d->currency);
    p->y += text_at(p, PAGE_W_PT - MARGIN_PT - 8 - COL_AMT_W, p->y, COL_AMT_W, RIGHT,
                    FONT_FAMILY " Bold 8", MUTED, buf);
    p->y += 4;
    rule(p, MARGIN_PT, PAGE_W_PT - MARGIN_PT, p->y, 0.8, INK);
    p->y += 2;
}

static void table_row(struct pen *p, size_t i)
{
    const struct pl_receipt_doc *d = p->doc;
    const struct pl_receipt_gift *g = &d->gifts[i];
    char date[32], ref[48], money[64];
    if (i % 2 == 1)
        box(p, MARGIN_PT, p->y, CONTENT_W, ROW_H_PT, ZEBRA);
    short_date(g->received_on, date, sizeof(date));
    snprintf(ref, sizeof(ref), "Gift #%lld", (long long)g->charge_id);
    pl_receipt_money(g->amount_minor, d->exponent, d->currency, money, sizeof(money));
    double ty = p->y + 3;
    text_at(p, COL_DATE_X, ty, 130, LEFT, FONT_FAMILY " 9.5", INK, date);
    text_at(p, COL_REF_X, ty, 160, LEFT, FONT_FAMILY " 9.5", MUTED, ref);
    text_at(p, PAGE_W_PT - MARGIN_PT - 8 - COL_AMT_W, ty, COL_AMT_W, RIGHT, FONT_FAMILY " 9.5",
            INK, money);
    p->y += ROW_H_PT;
}

/* What follows the table: total, statements, signature. Measured first so
 * that it never splits across pages. */
static void closing(struct pen *p, cairo_surface_t *sig)
{
    const struct pl_receipt_doc *d = p->doc;
    char buf[1024], money[64];
    pl_receipt_money(d->total_minor, d->exponent, d->currency, money, sizeof(money));

    rule(p, MARGIN_PT, PAGE_W_PT - MARGIN_PT, p->y, 0.8, INK);
    p->y += 5;
    snprintf(buf, sizeof(buf), "Total received in %d", d->tax_year);
    text_at(p, COL_DATE_X, p->y, 250, LEFT, FONT_FAMILY " Bold 10.5", INK, buf);
    p->y += text_at(p, PAGE_W_PT - MARGIN_PT - 8 - COL_AMT_W, p->y, COL_AMT_W, RIGHT,
                    FONT_FAMILY " Bold 10.5", INK, money);
    p->y += 16;

    if (d->canada) {
        char zero[64];
        pl_receipt_money(0, d->exponent, d->currency, zero, sizeof(zero));
        const char *labels[3] = {"Amount of gift", "Value of advantage (none)",
                                 "Eligible amount of gift for tax purposes"};
        const char *values[3] = {money, zero, money};
        double w = CONTENT_W / 3.0, top = p->y, label_h = 0;
        bool draw = p->draw;
        p->draw = false; /* measure the labels: the longest may wrap */
        for (int i = 0; i < 3; i++) {
            double h = text_at(p, 0, 0, w - 20, LEFT, FONT_FAMILY " 7.5", MUTED, labels[i]);
            label_h = h > label_h ? h : label_h;
        }
        p->draw = draw;
        double box_h = 7 + label_h + 4 + 14 + 7;
        box(p, MARGIN_PT, top, CONTENT_W, box_h, ZEBRA);
        for (int i = 0; i < 3; i++) {
            text_at(p, MARGIN_PT + i * w + 10, top + 7, w - 20, LEFT, FONT_FAMILY " 7.5", MUTED,
                    labels[i]);
            text_at(p, MARGIN_PT + i * w + 10, top + 7 + label_h + 4, w - 20, LEFT,
                    FONT_FAMILY " Bold 10.5", INK, values[i]);
        }
        p->y += box_h + 12;
    }

    line(p, MARGIN_PT, CONTENT_W, LEFT, FONT_FAMILY " Bold 9.5", INK, PL_RECEIPT_NO_GOODS);
    p->y += 4;
    if (set(d->org.statement)) {
        line(p, MARGIN_PT, CONTENT_W, LEFT, FONT_FAMILY " 9", INK, d->org.statement);
        p->y += 4;
    }
    if (d->canada) {
        line(p, MARGIN_PT, CONTENT_W, LEFT, FONT_FAMILY " 9", INK,
             "Canada Revenue Agency: canada.ca/charities-giving");
        p->y += 4;
    } else {
        line(p, MARGIN_PT, CONTENT_W, LEFT, FONT_FAMILY " 9", MUTED,
             "Please keep this written acknowledgment with your tax records.");
        p->y += 4;
    }
    p->y += 18;

    /* signature */
    double sig_h = 0;
    if (sig) {
        double iw = cairo_image_surface_get_width(sig), ih = cairo_image_surface_get_height(sig);
        double s = SIG_MAX_W / iw < SIG_MAX_H / ih ? SIG_MAX_W / iw : SIG_MAX_H / ih;
        sig_h = ih * s;
        if (p->draw) {
            cairo_save(p->cr);
            cairo_translate(p->cr, MARGIN_PT, p->y);
            cairo_scale(p->cr, s, s);
            cairo_set_source_surface(p->cr, sig, 0, 0);
            cairo_paint(p->cr);
            cairo_restore(p->cr);
        }
    } else {
        sig_h = 30;
    }
    p->y += sig_h + 2;
    rule(p, MARGIN_PT, MARGIN_PT + 220, p->y, 0.6, INK);
    p->y += 4;
    line(p, MARGIN_PT, 300, LEFT, FONT_FAMILY " Bold 9.5", INK,
         set(d->org.signatory_name) ? d->org.signatory_name : "");
    snprintf(buf, sizeof(buf), "%s, %s", set(d->org.signatory_title) ? d->org.signatory_title : "",
             d->org.legal_name);
    line(p, MARGIN_PT, 300, LEFT, FONT_FAMILY " 9", MUTED, buf);
    if (d->canada)
        line(p, MARGIN_PT, 300, LEFT, FONT_FAMILY " 8", MUTED, "Authorized signature");
}

/* One full pass: measuring (draw=false) or drawing. */
static void lay_out(struct pen *p, cairo_surface_t *sig)
{
    const struct pl_receipt_doc *d = p->doc;
    p->page = 1;
    p->y = MARGIN_PT;
    header(p);
    table_head(p);

    /* how tall the closing part is, measured on a scratch pen */
    struct pen m = *p;
    m.draw = false;
    m.y = 0;
    closing(&m, sig);
    double closing_h = m.y;

    for (size_t i = 0; i < d->n_gifts; i++) {
        /* the last row stays with the total and the signature */
        bool last = i + 1 == d->n_gifts;
        if (p->y + ROW_H_PT + (last ? closing_h : 0) > bottom_limit()) {
            new_page(p);
            table_head(p);
        }
        table_row(p, i);
    }
    if (p->y + closing_h > bottom_limit())
        new_page(p);
    closing(p, sig);
    footer(p);
    if (p->draw)
        cairo_show_page(p->cr);
}

int pl_receipt_pdf_render(const struct pl_receipt_doc *doc, unsigned char **out, size_t *out_len,
                          char *err, size_t errlen)
{
    int rc = PL_EINVAL;
    struct membuf mb = {0};
    cairo_surface_t *sig = NULL, *surface = NULL;
    cairo_t *cr = NULL;
    PangoLayout *layout = NULL;

    if (!set(doc->number) || !set(doc->org.legal_name) || !set(doc->donor.full_name) ||
        !set(doc->currency)) {
        snprintf(err, errlen, "receipt document is missing its number, issuer or donor");
        return PL_EINVAL;
    }
    if (doc->org.signature_png && doc->org.signature_png_len > 0) {
        struct memread r = {doc->org.signature_png, doc->org.signature_png_len, 0};
        sig = cairo_image_surface_create_from_png_stream(mem_read, &r);
        if (cairo_surface_status(sig) != CAIRO_STATUS_SUCCESS) {
            snprintf(err, errlen, "signature image: %s",
                     cairo_status_to_string(cairo_surface_status(sig)));
            goto fail;
        }
    }

    surface = cairo_pdf_surface_create_for_stream(mem_write, &mb, PAGE_W_PT, PAGE_H_PT);
    if (cairo_surface_status(surface) != CAIRO_STATUS_SUCCESS) {
        snprintf(err, errlen, "cairo: %s", cairo_status_to_string(cairo_surface_status(surface)));
        goto fail;
    }
    char title[128];
    snprintf(title, sizeof(title), "%s %s", doc->canada ? "Official donation receipt" :
             "Donation receipt", doc->number);
    cairo_pdf_surface_set_metadata(surface, CAIRO_PDF_METADATA_TITLE, title);
    cairo_pdf_surface_set_metadata(surface, CAIRO_PDF_METADATA_AUTHOR, doc->org.legal_name);
    cairo_pdf_surface_set_metadata(surface, CAIRO_PDF_METADATA_CREATOR, "pledged");
    if (set(doc->created_at)) {
        /* fixed to the issue time so that the same receipt renders to the same bytes */
        cairo_pdf_surface_set_metadata(surface, CAIRO_PDF_METADATA_CREATE_DATE, doc->created_at);
        cairo_pdf_surface_set_metadata(surface, CAIRO_PDF_METADATA_MOD_DATE, doc->created_at);
    }

    cr = cairo_create(surface);
    layout = pango_cairo_create_layout(cr);
    PangoContext *ctx = pango_layout_get_context(layout);
    pango_cairo_context_set_resolution(ctx, 72.0);
    cairo_font_options_t *fo = cairo_font_options_create();
    cairo_font_options_set_hint_metrics(fo, CAIRO_HINT_METRICS_OFF);
    cairo_font_options_set_hint_style(fo, CAIRO_HINT_STYLE_NONE);
    pango_cairo_context_set_font_options(ctx, fo);
    cairo_font_options_destroy(fo);
    pango_layout_context_changed(layout);

    struct pen p = {.cr = cr, .layout = layout, .draw = false, .doc = doc};
    lay_out(&p, sig);
    p.pages = p.page;
    p.draw = true;
    lay_out(&p, sig);

    g_object_unref(layout);
    layout = NULL;
    cairo_destroy(cr);
    cr = NULL;
    cairo_surface_finish(surface);
    if (cairo_surface_status(surface) != CAIRO_STATUS_SUCCESS) {
        snprintf(err, errlen, "cairo: %s", cairo_status_to_string(cairo_surface_status(surface)));
        goto fail;
    }
    cairo_surface_destroy(surface);
    surface = NULL;
    if (sig)
        cairo_surface_destroy(sig);
    *out = mb.data;
    *out_len = mb.len;
    return 0;

fail:
    if (layout)
        g_object_unref(layout);
    if (cr)
        cairo_destroy(cr);
    if (surface)
        cairo_surface_destroy(surface);
    if (sig)
        cairo_surface_destroy(sig);
    free(mb.data);
    return rc;
}
