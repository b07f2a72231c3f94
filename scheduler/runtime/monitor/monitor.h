/*
 * scheduler-monitor: the per-job monitor started by the agent (see launcher.py).
 *
 *   scheduler-monitor --run-dir DIR [--output-dir OUT] --hostname H --cwd C --tmp-size BYTES
 *       [--mkdir PATH]... [--write PATH VALUE]... [--procs PATH]...
 *       [--uid N --gid N] [--host-net] [--overlay-dir D --lower DIR...]
 *       [--counter NAME PATH]... [--gauge NAME PATH]... [--empty-check PATH]
 *       [--output-limit BYTES] [--output-bps BYTES] [--output-reserve BYTES] -- ARGV...
 *   scheduler-monitor --fork-server     (forks a monitor per request; see forkserver.c)
 *
 * Three processes take part:
 *
 *   monitor  runs the cgroup plan, clones `init` into fresh pid/mount/uts/ipc/net
 *            namespaces, puts it into every cgroup of the plan once its namespaces are
 *            set up, then waits for it and writes DIR/exit atomically, with the job's
 *            final counters when it was asked for them (see exitrecord.c). It ignores
 *            the usual termination signals so it outlives the agent. The job's stdout and
 *            stderr are pipes it drains into OUT/stdout and OUT/stderr (drain.c), each file
 *            (and OUT) created when the first byte arrives: a job that prints nothing costs
 *            no inode on the output disk. DIR (the reserved exit record) is meant to be a
 *            tmpfs. (main.c)
 *   init     pid 1 of the new pid namespace: mounts /proc and /tmp (or an overlay root
 *            with /proc, /dev and /tmp, entered with pivot_root), sets the hostname,
 *            brings `lo` up, says so; then, in its cgroups, enters a new cgroup
 *            namespace, forks the job, forwards signals to it, reaps orphans and reports
 *            the job's raw wait status to the monitor. (init.c, mounts.c)
 *   job      pid 2: resets signals, wires stdin/stdout/stderr, drops privileges (empty
 *            capability bounding set, no supplementary groups, --uid/--gid, no_new_privs,
 *            no capabilities left), chdir, a session keyring, the seccomp filter
 *            (seccomp.c), execvp. (init.c)
 *
 * Pipes between them (all O_CLOEXEC, so the user's program never sees them):
 *   ready   init -> monitor:   one byte once the namespaces are set up (EOF: init failed).
 *   sync    monitor -> init:   one byte once init is in every cgroup ("go").
 *   err     init/job -> monitor: a start error message; EOF means exec succeeded.
 *   status  init -> monitor:   the job's raw wait status (an int).
 *
 * The job's environment is the monitor's own environ, untouched.
 *
 * Errors: a step that can fail returns 0, or -1 with a `struct err` it was handed filled
 * in; only the top of each process reports it (the monitor into its exit record, init and
 * the job over the err pipe), once.
 */
#ifndef SCHEDULER_MONITOR_H
#define SCHEDULER_MONITOR_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stddef.h>
#include <sys/resource.h>
#include <sys/types.h>

/* The longest start error a record carries (the record's error line). */
#define ERR_MAX 1024

/* How a step failed. */
struct err {
    int errnum;        /* the errno of the call that failed; 0 when none did (bad input) */
    char msg[ERR_MAX]; /* the whole text, as the exit record's error line gives it */
};

/* Fill `e` with the text (and errnum 0); -1, for `return fail(e, ...)`. */
__attribute__((format(printf, 2, 3))) int fail(struct err *e, const char *fmt, ...);
/* Fill `e` with the text, ": ", and strerror(errno) (errnum = errno); -1. */
__attribute__((format(printf, 2, 3))) int fail_errno(struct err *e, const char *fmt, ...);

struct opts {
    const char *run_dir, *output_dir, *hostname, *cwd;
    unsigned long long tmp_size;
    const char **mkdirs;
    int n_mkdirs;
    const char **write_paths, **write_values;
    int n_writes;
    const char **procs;
    int n_procs;
    long uid, gid; /* -1: keep the monitor's (root); the agent always sets both */
    int host_net;  /* share the host's network namespace */
    const char *overlay_dir;
    const char **lowers; /* top layer first */
    int n_lowers;
    /* The final read: counter files (compared until they settle) and gauges (read once
     * after), each with the name the agent parses it by; the file that says the cgroup is
     * empty (cgroup.events, or a cgroup.procs). */
    const char **counter_names, **counter_paths;
    int n_counters;
    const char **gauge_names, **gauge_paths;
    int n_gauges;
    const char *empty_check;
    char **argv;
    /* Isolation (see mounts.c): the job's view of /sys/fs/cgroup (each mount point NAME
     * under it bound to the job's own cgroup DIR, or detached), and whether the default
     * seccomp filter is left out (--no-seccomp, a trusted tenant). */
    const char **view_names, **view_dirs;
    int n_views;
    const char **hide_names;
    int n_hides;
    int no_seccomp;
};

/* util.c: small I/O helpers. */
long long now_ns(void);
int join(char *out, size_t size, const char *dir, const char *name);
int write_all(int fd, const char *buf, size_t len);
int write_file(const char *path, const char *value);
int write_atomic(const char *dir, const char *name, const char *text);
ssize_t read_all(int fd, char *buf, size_t size);

/* args.c: the command line. */
int parse_args(int argc, char **argv, struct opts *o, struct err *e);

/* main.c: one job's monitor (argv as an exec'd monitor gets it). */
int monitor_main(int argc, char **argv);

/* init.c: the processes inside the namespaces. */
__attribute__((noreturn)) void init_main(const struct opts *o, int ready_fd, int sync_fd,
                                         int err_fd, int status_fd, int out_fd, int errf_fd);
/* Report `e` over the err pipe and exit 127 (init and the job's start errors). */
__attribute__((noreturn)) void child_exit(int err_fd, const struct err *e);
int empty_bounding_set(int *failed);
extern int bounding_set_empty;

/* mounts.c: the job's filesystem (overlay root, private scratch, cgroup view). */
int enter_overlay_root(const struct opts *o, struct err *e);
int private_mounts(const struct opts *o, const char *root, int shm, struct err *e);
int seal_private_mounts(const char *root, struct err *e);
int cgroup_view(const struct opts *o, struct err *e);

/* seccomp.c: the default filter. */
void prepare_seccomp(void);
int apply_seccomp(struct err *e);

/* exitrecord.c: the reserved exit record and the final counters. */
#define RECORD_RESERVE 4096
#define RESERVE_NAME "exit.reserve"
/* The record's own lines take at most RECORD_BASE bytes; the final counters (if any) the
 * rest of the reservation. */
#define RECORD_BASE (ERR_MAX + 512)
#define COUNTERS_MAX (RECORD_RESERVE - RECORD_BASE)
int set_identity(const char *text, struct err *e);
int reserve_record(const char *dir, struct err *e);
int write_record(const char *dir, const char *kind, int exit_code, int sig, const char *error,
                 long long start_ns, long long end_ns, const struct rusage *ru,
                 const char *counters);
__attribute__((noreturn)) void start_error(const char *dir, const struct err *e);
void final_counters(const struct opts *o, char *out);

/* drain.c: the job's output streams and the output policy. */
struct sink {
    int pipe_fd; /* -1 once at EOF (or given up) */
    int file_fd; /* -1 until the first byte arrived */
    int copy;    /* splice is not supported by the output filesystem: read + write */
    int broken;  /* the file could not be made or written: the rest is discarded */
    const char *name;
    int dropped; /* the output policy's marker line is written: the rest is discarded */
};
int is_output_option(const char *flag);
int set_output_option(const char *flag, const char *text);
void drain(const struct opts *o, struct sink *s, short revents);
int output_wait_ms(void);
void output_job_ended(void);

/* forkserver.c */
int fork_server(void);

#endif
