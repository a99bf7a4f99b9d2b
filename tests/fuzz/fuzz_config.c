/*
 * libFuzzer target: the configuration parser (lib/config.c,
 * pl_config_load_string), which reads pledged.conf -- text an operator, a
 * package or a config-management tool wrote.
 *
 * The input is the file's text (NUL-terminated here, as pl_config_load
 * hands it over). Seeds: corpus/fuzz_config/ (the example config's shape,
 * error cases, odd syntax).
 *
 * Invariants besides "no crash" and "no leak": success leaves no error
 * text and a config whose required strings are set; failure leaves the
 * output untouched and says why, file name first; a loaded config diffs to
 * nothing against itself. Short inputs also go through the duration parser,
 * whose parse -> format -> parse must round-trip.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NAME "fuzz.conf"

static void check_duration(const char *s)
{
    int64_t ms = -1;
    if (pl_config_parse_duration(s, &ms) != 0)
        return;
    if (ms < 0)
        abort();
    char buf[64];
    const char *t = pl_config_format_duration(ms, buf, sizeof buf);
    int64_t back = -1;
    if (!t || pl_config_parse_duration(t, &back) != 0 || back != ms)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* pl_config_load reads files of at most 1 MiB; no need to go further */
    if (size > 65536)
        return 0;
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';

    if (size < 48)
        check_duration(text);

    struct pl_config cfg;
    memset(&cfg, 0xA5, sizeof cfg);
    char *errors = (char *)1;
    int r = pl_config_load_string(text, NAME, &cfg, &errors);
    if (r == 0) {
        if (errors)
            abort();
        if (!cfg.path || !cfg.database.conninfo || !cfg.gateway.driver ||
            !cfg.gateway.base_url || !cfg.billing.node_name || !cfg.billing.timezone ||
            !cfg.org.receipt_dir || !cfg.http.listen || !cfg.http.listen_host)
            abort();
        if (cfg.billing.retry_schedule.len > PL_RETRY_SCHEDULE_MAX ||
            cfg.billing.reconcile_schedule.len > PL_DURATION_LIST_MAX)
            abort();
        (void)pl_config_line(&cfg, "billing", "batch_size");
        (void)pl_config_line(&cfg, "nosuch", "key");
        char *summary = (char *)1;
        bool restart = true;
        if (pl_config_diff(&cfg, &cfg, &summary, &restart) != 0 || summary || restart)
            abort();
        /* check_org reads signature_image: a path such as /dev/stdin would
         * block the fuzzer, so only the pure checks run */
        if (!cfg.org.signature_image) {
            char *org_errors = NULL;
            if (pl_config_check_org(&cfg, &org_errors) != 0 && !org_errors)
                abort();
            free(org_errors);
        }
        pl_config_release(&cfg);
    } else {
        if (!errors || errors == (char *)1 || strncmp(errors, NAME, strlen(NAME)) != 0)
            abort();
        const unsigned char *p = (const unsigned char *)&cfg;
        for (size_t i = 0; i < sizeof cfg; i++)
            if (p[i] != 0xA5)
                abort();
        free(errors);
    }
    free(text);
    return 0;
}
