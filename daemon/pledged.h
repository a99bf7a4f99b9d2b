/*
 * pledged — the daemon's shared state, so its parts (pledged.c: start-up,
 * signals, billing; pledged_http.c: the local HTTP listener) can see it.
 * Everything here is owned by the one loop thread.
 */
#ifndef PLEDGED_H
#define PLEDGED_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "billing.h"
#include "config.h"
#include "db.h"
#include "gateway.h"
#include "http.h"

struct pledged_http;

struct daemon {
    uv_loop_t *loop;
    struct pl_config cfg;
    const char *config_path;
    bool once;
    int exit_code;

    struct pl_db *db;
    struct pl_http *http;
    struct pl_gateway *gw;
    struct pl_gateway *old_gw; /* replaced by a reload; freed once idle */
    struct pl_billing *billing;

    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t heartbeat, watchdog, deadline;
    uv_timer_t status_timer; /* STATUS= when it changes; daemon_node at once on a halt */
    char status_sent[256];   /* last STATUS= line sent */
    bool reported_halted;    /* halt flag last written to daemon_node */
    uint64_t reported_stuck; /* stuck-unknown count last written to daemon_node */
    unsigned halted_beats;   /* heartbeats while halted, to repeat the alarm */
    bool ready, stopping, closed;
    struct pledged_http *httpd; /* /healthz, /metrics, /webhooks (pledged_http.c) */
    uint64_t watchdog_usec;
};

/* sd_notify(3) when built with libsystemd; a no-op otherwise. */
void pledged_notify(const char *state);

/* The HTTP listener ([http] section): started before the loop runs, stopped
 * (handles closed) by close_all. Returns 0, or < 0 after logging why. */
int pledged_http_start(struct daemon *d);
void pledged_http_stop(struct daemon *d);

#endif
