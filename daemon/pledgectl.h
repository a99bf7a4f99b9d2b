/*
 * pledgectl — shared state of the operators' CLI. Each noun lives in its
 * own pledgectl_<noun>.c and is dispatched from pledgectl.c.
 */
#ifndef PLEDGECTL_H
#define PLEDGECTL_H

#include <stdbool.h>
#include <libpq-fe.h>

#include "util.h"

struct ctl {
    const char *config_path; /* NULL: libpq environment (PGHOST...) */
    bool json;               /* --json: machine-readable output */
    PGconn *conn;            /* opened on first use by ctl_db() */
    char actor[128];         /* "pledgectl:<user>" for the event log */
};

/* A command: returns an enum pl_exit code. argv[0] is the verb/noun. */
typedef int (*ctl_cmd_fn)(struct ctl *ctl, int argc, char **argv);

/* Connect (once) using the config's [database] section or the libpq
 * environment; on failure prints why and returns NULL. */
PGconn *ctl_db(struct ctl *ctl);

/* "pledgectl: <message>" on stderr. */
void ctl_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

int ctl_cmd_migrate(struct ctl *ctl, int argc, char **argv);

#endif
