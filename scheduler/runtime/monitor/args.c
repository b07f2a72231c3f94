/* The command line (see monitor.h); a malformed one is a start error of its own. */
#include "monitor.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* --cgroup-view NAME DIR, --cgroup-hide NAME, --no-seccomp: how many argv entries the flag
 * at argv[i] takes (0: not an isolation flag, -1: malformed). */
static int isolation_arg(struct opts *o, int argc, char **argv, int i, struct err *e)
{
    const char *a = argv[i];
    int left = argc - i - 1;
    if (strcmp(a, "--no-seccomp") == 0) {
        o->no_seccomp = 1;
        return 1;
    }
    int view = strcmp(a, "--cgroup-view") == 0, hide = strcmp(a, "--cgroup-hide") == 0;
    if (!view && !hide)
        return 0;
    if (left < 1 + view)
        return fail(e, "monitor: %s needs %s", a, view ? "NAME and DIR" : "NAME");
    if (!o->view_names) {
        o->view_names = calloc((size_t)argc, sizeof *o->view_names);
        o->view_dirs = calloc((size_t)argc, sizeof *o->view_dirs);
        o->hide_names = calloc((size_t)argc, sizeof *o->hide_names);
        if (!o->view_names || !o->view_dirs || !o->hide_names)
            return fail(e, "monitor: out of memory");
    }
    const char *name = argv[i + 1];
    /* A mount point right under /sys/fs/cgroup ("." is that mount itself, a v2 host). */
    if (!*name || strchr(name, '/') || strcmp(name, "..") == 0 ||
        (hide && strcmp(name, ".") == 0))
        return fail(e, "monitor: bad %s name %s", a, name);
    if (hide) {
        o->hide_names[o->n_hides++] = name;
        return 2;
    }
    o->view_names[o->n_views] = name;
    o->view_dirs[o->n_views++] = argv[i + 2];
    return 3;
}

/* A uid or gid: decimal, below 2^32-1 ((uid_t)-1 means "unchanged" to the kernel). */
static long parse_id(const char *text)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-' || v >= 0xffffffffULL)
        return -1;
    return (long)v;
}

int parse_args(int argc, char **argv, struct opts *o, struct err *e)
{
    memset(o, 0, sizeof *o);
    /* Each list holds at most argc entries; never freed (the process is short-lived). */
    o->mkdirs = calloc((size_t)argc, sizeof *o->mkdirs);
    o->write_paths = calloc((size_t)argc, sizeof *o->write_paths);
    o->write_values = calloc((size_t)argc, sizeof *o->write_values);
    o->procs = calloc((size_t)argc, sizeof *o->procs);
    o->lowers = calloc((size_t)argc, sizeof *o->lowers);
    o->counter_names = calloc((size_t)argc, sizeof *o->counter_names);
    o->counter_paths = calloc((size_t)argc, sizeof *o->counter_paths);
    o->gauge_names = calloc((size_t)argc, sizeof *o->gauge_names);
    o->gauge_paths = calloc((size_t)argc, sizeof *o->gauge_paths);
    o->uid = o->gid = -1;
    if (!o->mkdirs || !o->write_paths || !o->write_values || !o->procs || !o->lowers ||
        !o->counter_names || !o->counter_paths || !o->gauge_names || !o->gauge_paths)
        return fail(e, "monitor: out of memory");
    const char *tmp_size = NULL, *uid = NULL, *gid = NULL;
    int i;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        int left = argc - i - 1; /* values available after the flag */
        int taken = isolation_arg(o, argc, argv, i, e);
        if (taken < 0)
            return -1;
        if (taken > 0) {
            i += taken - 1;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        } else if (strcmp(a, "--write") == 0 && left >= 2) {
            o->write_paths[o->n_writes] = argv[++i];
            o->write_values[o->n_writes++] = argv[++i];
        } else if (strcmp(a, "--counter") == 0 && left >= 2) {
            o->counter_names[o->n_counters] = argv[++i];
            o->counter_paths[o->n_counters++] = argv[++i];
        } else if (strcmp(a, "--gauge") == 0 && left >= 2) {
            o->gauge_names[o->n_gauges] = argv[++i];
            o->gauge_paths[o->n_gauges++] = argv[++i];
        } else if (strcmp(a, "--host-net") == 0) {
            o->host_net = 1;
        } else if (left < 1) {
            return fail(e, "monitor: bad argument %s", a);
        } else if (strcmp(a, "--run-dir") == 0) {
            o->run_dir = argv[++i];
        } else if (strcmp(a, "--output-dir") == 0) {
            o->output_dir = argv[++i];
        } else if (strcmp(a, "--hostname") == 0) {
            o->hostname = argv[++i];
        } else if (strcmp(a, "--cwd") == 0) {
            o->cwd = argv[++i];
        } else if (strcmp(a, "--tmp-size") == 0) {
            tmp_size = argv[++i];
        } else if (strcmp(a, "--mkdir") == 0) {
            o->mkdirs[o->n_mkdirs++] = argv[++i];
        } else if (strcmp(a, "--procs") == 0) {
            o->procs[o->n_procs++] = argv[++i];
        } else if (strcmp(a, "--uid") == 0) {
            uid = argv[++i];
        } else if (strcmp(a, "--gid") == 0) {
            gid = argv[++i];
        } else if (strcmp(a, "--overlay-dir") == 0) {
            o->overlay_dir = argv[++i];
        } else if (strcmp(a, "--lower") == 0) {
            o->lowers[o->n_lowers++] = argv[++i];
        } else if (strcmp(a, "--empty-check") == 0) {
            o->empty_check = argv[++i];
        } else if (strcmp(a, "--identity") == 0) {
            if (set_identity(argv[++i], e) != 0)
                return -1;
        } else if (is_output_option(a)) {
            if (set_output_option(a, argv[++i]) != 0)
                return fail(e, "monitor: bad %s %s", a, argv[i]);
        } else {
            return fail(e, "monitor: bad argument %s", a);
        }
    }
    o->argv = &argv[i];
    if (!o->run_dir || !o->hostname || !o->cwd || !tmp_size || i >= argc)
        return fail(e, "monitor: usage: --run-dir DIR [--output-dir OUT] --hostname H --cwd C "
                       "--tmp-size BYTES [--mkdir P]... [--write P V]... [--procs P]... "
                       "-- ARGV...");
    if (!o->output_dir)
        o->output_dir = o->run_dir;
    if (!uid != !gid)
        return fail(e, "monitor: --uid and --gid go together");
    if (uid && ((o->uid = parse_id(uid)) < 0 || (o->gid = parse_id(gid)) < 0))
        return fail(e, "monitor: bad --uid/--gid %s/%s", uid, gid);
    if (!o->overlay_dir != !o->n_lowers)
        return fail(e, "monitor: --overlay-dir and --lower go together");
    if ((o->n_counters || o->n_gauges) && !o->empty_check)
        return fail(e, "monitor: --counter and --gauge need --empty-check");
    for (int k = 0; k < o->n_counters + o->n_gauges; k++) {
        const char *name = k < o->n_counters ? o->counter_names[k]
                                              : o->gauge_names[k - o->n_counters];
        /* The name becomes a record key: one line, no '='. */
        if (!*name || strpbrk(name, "=\n"))
            return fail(e, "monitor: bad counter name %s", name);
    }
    char *end;
    errno = 0;
    o->tmp_size = strtoull(tmp_size, &end, 10);
    /* 0 would mean "no limit" to tmpfs. */
    if (errno != 0 || end == tmp_size || *end != '\0' || tmp_size[0] == '-' || !o->tmp_size)
        return fail(e, "monitor: bad --tmp-size %s", tmp_size);
    return 0;
}
