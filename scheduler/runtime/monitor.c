/*
 * scheduler-monitor: the per-job monitor started by the agent (see launcher.py).
 *
 *   scheduler-monitor --run-dir DIR [--output-dir OUT] --hostname H --cwd C --tmp-size BYTES
 *       [--mkdir PATH]... [--write PATH VALUE]... [--procs PATH]...
 *       [--uid N --gid N] [--host-net] [--overlay-dir D --lower DIR...]
 *       [--counter NAME PATH]... [--gauge NAME PATH]... [--empty-check PATH]
 *       [--output-limit BYTES] [--output-bps BYTES] [--output-reserve BYTES] -- ARGV...
 *   scheduler-monitor --fork-server     (forks a monitor per request; see the end of the file)
 *
 * Three processes take part:
 *
 *   monitor  runs the cgroup plan, clones `init` into fresh pid/mount/uts/ipc/net
 *            namespaces, puts it into every cgroup of the plan once its namespaces are
 *            set up, then waits for it and writes DIR/exit atomically, with the job's
 *            final counters when it was asked for them (see final_counters). It ignores
 *            the usual termination signals so it outlives the agent. The job's stdout and
 *            stderr are pipes it drains into OUT/stdout and OUT/stderr, each file (and OUT)
 *            created when the first byte arrives: a job that prints nothing costs no inode
 *            on the output disk. DIR (the reserved exit record) is meant to be a tmpfs.
 *   init     pid 1 of the new pid namespace: mounts /proc and /tmp (or an overlay root
 *            with /proc, /dev and /tmp, entered with pivot_root), sets the hostname,
 *            brings `lo` up, says so; then, in its cgroups, enters a new cgroup
 *            namespace, forks the job, forwards signals to it, reaps orphans and reports
 *            the job's raw wait status to the monitor.
 *   job      pid 2: resets signals, wires stdin/stdout/stderr, drops privileges (empty
 *            capability bounding set, no supplementary groups, --uid/--gid, no_new_privs,
 *            no capabilities left), chdir, execvp.
 *
 * Pipes between them (all O_CLOEXEC, so the user's program never sees them):
 *   ready   init -> monitor:   one byte once the namespaces are set up (EOF: init failed).
 *   sync    monitor -> init:   one byte once init is in every cgroup ("go").
 *   err     init/job -> monitor: a start error message; EOF means exec succeeded.
 *   status  init -> monitor:   the job's raw wait status (an int).
 *
 * The job's environment is the monitor's own environ, untouched.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/keyctl.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <poll.h>
#include <sys/prctl.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ERR_MAX 1024

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
    /* Isolation (see "---- isolation ----"): the job's view of /sys/fs/cgroup (each mount
     * point NAME under it bound to the job's own cgroup DIR, or detached), and whether the
     * default seccomp filter is left out (--no-seccomp, a trusted tenant). */
    const char **view_names, **view_dirs;
    int n_views;
    const char **hide_names;
    int n_hides;
    int no_seccomp;
};

static int isolation_arg(struct opts *o, int argc, char **argv, int i);
static void private_mounts(const struct opts *o, const char *root, int shm, int err_fd);
static void seal_private_mounts(const char *root, int err_fd);
static void cgroup_view(const struct opts *o, int err_fd);
static void confine_job(const struct opts *o, int err_fd);
static void prepare_seccomp(void);

/* The one start error of this run (monitor side), filled by set_error(). */
static char errbuf[ERR_MAX];

__attribute__((format(printf, 1, 2))) static void set_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, sizeof errbuf, fmt, ap);
    va_end(ap);
}

static long long now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0;
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int join(char *out, size_t size, const char *dir, const char *name)
{
    int n = snprintf(out, size, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= size) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Write `value` to an existing file (cgroupfs: one write(2) per value). */
static int write_file(const char *path, const char *value)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (write_all(fd, value, strlen(value)) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return close(fd);
}

/* Create DIR/name with `text` atomically: write DIR/name.tmp, then rename. */
static int write_atomic(const char *dir, const char *name, const char *text)
{
    char tmp[PATH_MAX], final[PATH_MAX], tmpname[NAME_MAX];
    snprintf(tmpname, sizeof tmpname, "%s.tmp", name);
    if (join(final, sizeof final, dir, name) != 0 || join(tmp, sizeof tmp, dir, tmpname) != 0)
        return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return -1;
    if (write_all(fd, text, strlen(text)) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    if (close(fd) != 0)
        return -1;
    return rename(tmp, final);
}

/* Space for the exit record, taken when the monitor starts: a full state disk at the
 * job's end cannot lose its exit. Until then the file holds the monitor's pid on its first
 * line ("monitor_pid=N", zeros after it), which the agent reads to re-adopt a running job
 * (one file fewer per attempt: on ext4 without a journal every new inode costs a search
 * past recently deleted ones). The record (at most ERR_MAX + 512 bytes) overwrites the
 * reserved bytes in place (blocks that are already allocated need no new space on tmpfs,
 * ext4 or xfs), the file is cut to the record's length and renamed to DIR/exit, so a reader
 * sees a whole record or none. -1 until reserve_record() succeeded. */
#define RECORD_RESERVE 4096
#define RESERVE_NAME "exit.reserve"
/* The record's own lines take at most RECORD_BASE bytes; the final counters (if any) the
 * rest of the reservation. */
#define RECORD_BASE (ERR_MAX + 512)
#define COUNTERS_MAX (RECORD_RESERVE - RECORD_BASE)
static int reserve_fd = -1;

/* Whose record this is ("--identity": the database, node epoch, job, attempt, as the agent
 * spells it): written as an "identity=" line into the reservation and the exit record, so
 * that a record left by another attempt with the same directory name (a reset database
 * issues ids again) is never taken for this one's. NULL: none given (no line written). */
#define IDENTITY_MAX 200
static const char *record_identity;

/* Keep `text` as the identity; -1 (with errbuf set) if it is not 1..IDENTITY_MAX bytes of
 * [A-Za-z0-9:._-] (it becomes the value of a record line). */
static int set_identity(const char *text)
{
    static const char allowed[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                  "0123456789:._-";
    size_t len = strlen(text);
    if (len == 0 || len > IDENTITY_MAX || strspn(text, allowed) != len) {
        set_error("monitor: bad --identity %.64s", text);
        return -1;
    }
    record_identity = text;
    return 0;
}

/* The identity's record line ("identity=...\n"), or "" when there is none. */
static const char *identity_line(void)
{
    static char line[IDENTITY_MAX + 16];
    if (!record_identity)
        return "";
    snprintf(line, sizeof line, "identity=%s\n", record_identity);
    return line;
}

/* This process's start time (clock ticks after boot, /proc/self/stat field 22): with the
 * pid, it names the monitor for good (a recycled pid has another start time), also when
 * a fork server made it and its command line is the server's. 0 if unreadable. */
static unsigned long long start_ticks(void)
{
    char text[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0)
        return 0;
    text[n] = '\0';
    char *p = strrchr(text, ')'); /* the command name may hold spaces and parentheses */
    for (int field = 2; p && field < 22; field++)
        p = strchr(p + 1, ' ');
    return p ? strtoull(p + 1, NULL, 10) : 0;
}

static int reserve_record(const char *dir)
{
    char path[PATH_MAX];
    static char block[RECORD_RESERVE];
    if (join(path, sizeof path, dir, RESERVE_NAME) != 0)
        return -1;
    snprintf(block, sizeof block, "monitor_pid=%d\nmonitor_start=%llu\n%s", (int)getpid(),
             start_ticks(), identity_line());
    /* Written whole into a file created empty: a reader sees the line or nothing. */
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return -1;
    if (write_all(fd, block, sizeof block) != 0) {
        int saved = errno;
        close(fd);
        unlink(path);
        errno = saved;
        return -1;
    }
    reserve_fd = fd;
    return 0;
}

/* Write `text` over the reserved bytes, trim, and rename the file to DIR/exit. */
static int write_reserved(const char *dir, const char *text)
{
    char from[PATH_MAX], to[PATH_MAX];
    size_t len = strlen(text), done = 0;
    if (join(from, sizeof from, dir, RESERVE_NAME) != 0 || join(to, sizeof to, dir, "exit") != 0)
        return -1;
    while (done < len) {
        ssize_t n = pwrite(reserve_fd, text + done, len - done, (off_t)done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        done += (size_t)n;
    }
    if (ftruncate(reserve_fd, (off_t)len) != 0)
        return -1;
    if (rename(from, to) != 0)
        return -1;
    int fd = reserve_fd;
    reserve_fd = -1;
    return close(fd);
}

/* The exit record: `key=value` lines, parsed by launcher.parse_exit_record(); `counters`
 * (lines of their own, or "") is appended as it is. */
static int write_record(const char *dir, const char *kind, int exit_code, int sig,
                        const char *error, long long start_ns, long long end_ns,
                        const struct rusage *ru, const char *counters)
{
    char code[16] = "", signo[16] = "", err[ERR_MAX], text[RECORD_RESERVE];
    if (exit_code >= 0)
        snprintf(code, sizeof code, "%d", exit_code);
    if (sig > 0)
        snprintf(signo, sizeof signo, "%d", sig);
    /* The record is line based: the error must stay on one line. */
    snprintf(err, sizeof err, "%s", error ? error : "");
    for (char *p = err; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    snprintf(text, RECORD_BASE,
             "kind=%s\nexit_code=%s\nsignal=%s\nerror=%s\nstart_ns=%lld\nend_ns=%lld\n"
             "utime_us=%lld\nstime_us=%lld\nmaxrss_kb=%ld\n%s",
             kind, code, signo, err, start_ns, end_ns,
             (long long)ru->ru_utime.tv_sec * 1000000LL + ru->ru_utime.tv_usec,
             (long long)ru->ru_stime.tv_sec * 1000000LL + ru->ru_stime.tv_usec,
             ru->ru_maxrss, identity_line());
    size_t used = strlen(text), extra = strlen(counters);
    if (extra < COUNTERS_MAX) /* always, by final_counters() */
        memcpy(text + used, counters, extra + 1);
    if (reserve_fd >= 0)
        return write_reserved(dir, text);
    return write_atomic(dir, "exit", text);
}

/* Record errbuf as a start error (no job ran) and exit. */
__attribute__((noreturn)) static void start_error(const char *dir)
{
    struct rusage zero = {0};
    long long t = now_ns();
    if (write_record(dir, "start_error", -1, 0, errbuf, t, t, &zero, "") != 0) {
        fprintf(stderr, "scheduler-monitor: write %s/exit: %s (start error was: %s)\n", dir,
                strerror(errno), errbuf);
        exit(1);
    }
    exit(0);
}

/* A uid or gid: decimal, below 2^32-1 ((uid_t)-1 means "unchanged" to the kernel). */
/* ---- output policy: options ----
 *
 * The job's stdout and stderr are its I/O: the agent bills the bytes kept, and asks the
 * monitor to keep at most --output-limit of them (both streams together), to move them to
 * disk at no more than --output-bps bytes per second (the job's io_write_bps: a job writing
 * faster blocks on its full pipe), and to stop keeping them while the output filesystem has
 * less than --output-reserve bytes free. Past the limit (or the reserve) the rest of a stream
 * is read and dropped after one marker line, "\n[scheduler: output dropped from here: WHY]\n",
 * which is what the agent looks for (see runtime/output.py). */
struct output_policy {
    long long limit;   /* most job bytes kept; -1: no limit */
    long long bps;     /* bytes per second to disk; 0: not throttled */
    long long reserve; /* free bytes the output filesystem keeps; 0: not checked */
    long long kept;    /* job bytes written to the files so far */
    double tokens;     /* the throttle's bucket, in bytes */
    long long refill_ns;
    int full;          /* nothing more is kept */
    char why[160];
    int devnull;       /* where dropped bytes are spliced (-1: read and discarded) */
};
static struct output_policy outp = {.limit = -1, .devnull = -1};

static int is_output_option(const char *flag)
{
    return strcmp(flag, "--output-limit") == 0 || strcmp(flag, "--output-bps") == 0 ||
           strcmp(flag, "--output-reserve") == 0;
}

static int set_output_option(const char *flag, const char *text)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < 0)
        return -1;
    if (strcmp(flag, "--output-limit") == 0)
        outp.limit = v;
    else if (strcmp(flag, "--output-bps") == 0)
        outp.bps = v;
    else
        outp.reserve = v;
    return 0;
}

static long parse_id(const char *text)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-' || v >= 0xffffffffULL)
        return -1;
    return (long)v;
}

static int parse_args(int argc, char **argv, struct opts *o)
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
        !o->counter_names || !o->counter_paths || !o->gauge_names || !o->gauge_paths) {
        set_error("monitor: out of memory");
        return -1;
    }
    const char *tmp_size = NULL, *uid = NULL, *gid = NULL;
    int i;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        int left = argc - i - 1; /* values available after the flag */
        int taken = isolation_arg(o, argc, argv, i);
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
            set_error("monitor: bad argument %s", a);
            return -1;
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
            if (set_identity(argv[++i]) != 0)
                return -1;
        } else if (is_output_option(a)) {
            if (set_output_option(a, argv[++i]) != 0) {
                set_error("monitor: bad %s %s", a, argv[i]);
                return -1;
            }
        } else {
            set_error("monitor: bad argument %s", a);
            return -1;
        }
    }
    o->argv = &argv[i];
    if (!o->run_dir || !o->hostname || !o->cwd || !tmp_size || i >= argc) {
        set_error("monitor: usage: --run-dir DIR [--output-dir OUT] --hostname H --cwd C "
                  "--tmp-size BYTES [--mkdir P]... [--write P V]... [--procs P]... -- ARGV...");
        return -1;
    }
    if (!o->output_dir)
        o->output_dir = o->run_dir;
    if (!uid != !gid) {
        set_error("monitor: --uid and --gid go together");
        return -1;
    }
    if (uid && ((o->uid = parse_id(uid)) < 0 || (o->gid = parse_id(gid)) < 0)) {
        set_error("monitor: bad --uid/--gid %s/%s", uid, gid);
        return -1;
    }
    if (!o->overlay_dir != !o->n_lowers) {
        set_error("monitor: --overlay-dir and --lower go together");
        return -1;
    }
    if ((o->n_counters || o->n_gauges) && !o->empty_check) {
        set_error("monitor: --counter and --gauge need --empty-check");
        return -1;
    }
    for (int k = 0; k < o->n_counters + o->n_gauges; k++) {
        const char *name = k < o->n_counters ? o->counter_names[k]
                                              : o->gauge_names[k - o->n_counters];
        /* The name becomes a record key: one line, no '='. */
        if (!*name || strpbrk(name, "=\n")) {
            set_error("monitor: bad counter name %s", name);
            return -1;
        }
    }
    char *end;
    errno = 0;
    o->tmp_size = strtoull(tmp_size, &end, 10);
    /* 0 would mean "no limit" to tmpfs. */
    if (errno != 0 || end == tmp_size || *end != '\0' || tmp_size[0] == '-' || !o->tmp_size) {
        set_error("monitor: bad --tmp-size %s", tmp_size);
        return -1;
    }
    return 0;
}

/* ---- child side (init and job): errors go over the err pipe, then _exit ---- */

__attribute__((noreturn, format(printf, 2, 3))) static void child_fail(int err_fd,
                                                                       const char *fmt, ...)
{
    char msg[ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n > 0)
        (void)!write(err_fd, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
    _exit(127);
}

/* Every catchable signal back to SIG_DFL (the monitor ignores some; children inherit it). */
static int reset_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        /* glibc reserves a few real-time signals for itself: EINVAL there is expected. */
        if (sigaction(sig, &sa, NULL) != 0 && errno != EINVAL)
            return -1;
    }
    return 0;
}

static void bring_lo_up(int err_fd)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        child_fail(err_fd, "net: socket: %s", strerror(errno));
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0)
        child_fail(err_fd, "net: get flags of lo: %s", strerror(errno));
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0)
        child_fail(err_fd, "net: bring lo up: %s", strerror(errno));
    if (close(s) != 0)
        child_fail(err_fd, "net: close: %s", strerror(errno));
}

/* Leave the job nothing to gain: an empty bounding set (no exec can grant a capability
 * again, not even a setuid-root binary), no ambient or inheritable capabilities, no
 * supplementary groups, the job's uid/gid, and no_new_privs (setuid bits and file
 * capabilities are ignored by exec). Order matters: dropping from the bounding set and
 * changing ids need CAP_SETPCAP/CAP_SETUID/CAP_SETGID, so those go first. */
/* Empty this process's capability bounding set: 0, or -1 with errno set by the cap that
 * could not be dropped (in *failed). Each drop is a credentials commit of its own (some
 * 2 us of CPU, 41 of them on Linux 6.x), so the fork server does it once for all jobs. */
static int empty_bounding_set(int *failed)
{
    for (int cap = 0;; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
            if (errno == EINVAL && cap > 0)
                return 0; /* past the kernel's last capability */
            *failed = cap;
            return -1;
        }
    }
}

/* Set in a fork server whose bounding set is empty. What it forks inherits the flag and the
 * empty set; the monitor and init keep every capability they use all the same (the
 * bounding set limits what an exec grants, and neither execs), and the job finds nothing
 * left to drop. */
static int bounding_set_empty;

static void drop_privileges(const struct opts *o, int err_fd)
{
    int cap = -1;
    if (!bounding_set_empty && empty_bounding_set(&cap) != 0)
        child_fail(err_fd, "sandbox: drop capability %d: %s", cap, strerror(errno));
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0)
        child_fail(err_fd, "sandbox: clear ambient capabilities: %s", strerror(errno));
    if (o->uid >= 0) {
        if (setgroups(0, NULL) != 0)
            child_fail(err_fd, "sandbox: setgroups: %s", strerror(errno));
        if (setresgid((gid_t)o->gid, (gid_t)o->gid, (gid_t)o->gid) != 0)
            child_fail(err_fd, "sandbox: setgid %ld: %s", o->gid, strerror(errno));
        if (setresuid((uid_t)o->uid, (uid_t)o->uid, (uid_t)o->uid) != 0)
            child_fail(err_fd, "sandbox: setuid %ld: %s", o->uid, strerror(errno));
    }
    /* setuid clears the permitted and effective sets, not the inheritable one. */
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct none[2];
    memset(none, 0, sizeof none);
    if (syscall(SYS_capset, &hdr, none) != 0)
        child_fail(err_fd, "sandbox: capset: %s", strerror(errno));
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        child_fail(err_fd, "sandbox: no_new_privs: %s", strerror(errno));
}

__attribute__((noreturn)) static void job_main(const struct opts *o, int out_fd, int errf_fd,
                                               int err_fd)
{
    sigset_t none;
    sigemptyset(&none);
    if (reset_signals() != 0 || sigprocmask(SIG_SETMASK, &none, NULL) != 0)
        child_fail(err_fd, "job: reset signals: %s", strerror(errno));
    int null = open("/dev/null", O_RDONLY);
    if (null < 0)
        child_fail(err_fd, "job: open /dev/null: %s", strerror(errno));
    /* 0..2 are always open in the monitor (see main), so null, out and err are >= 3. */
    if (dup2(null, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(errf_fd, 2) < 0)
        child_fail(err_fd, "job: dup2: %s", strerror(errno));
    if (close(null) != 0)
        child_fail(err_fd, "job: close: %s", strerror(errno));
    drop_privileges(o, err_fd);
    /* After the switch, so the job's own permissions decide whether it may enter cwd. */
    if (chdir(o->cwd) != 0)
        child_fail(err_fd, "cwd: %s: %s", o->cwd, strerror(errno));
    confine_job(o, err_fd);
    execvp(o->argv[0], o->argv);
    child_fail(err_fd, "exec: %s: %s", o->argv[0], strerror(errno));
}

/* mkdir that tolerates an existing directory (the image may already have it). */
static void ensure_dir(const char *path, mode_t mode, int err_fd)
{
    if (mkdir(path, mode) != 0 && errno != EEXIST)
        child_fail(err_fd, "rootfs: mkdir %s: %s", path, strerror(errno));
}

/* Build DIR/name into out or fail the start. */
static void path_in(char *out, const char *dir, const char *name, int err_fd)
{
    if (join(out, PATH_MAX, dir, name) != 0)
        child_fail(err_fd, "rootfs: path too long: %s/%s", dir, name);
}

/* A minimal /dev: a small tmpfs holding bind mounts of the host's harmless devices, a
 * tmpfs /dev/shm and the usual fd symlinks. No disks, no /dev/mem, no consoles. */
static void setup_dev(const char *root, int err_fd)
{
    static const char *devices[] = {"null", "zero", "full", "random", "urandom", "tty"};
    char dev[PATH_MAX], path[PATH_MAX], host[PATH_MAX];
    path_in(dev, root, "dev", err_fd);
    ensure_dir(dev, 0755, err_fd);
    if (mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=65536,mode=755") != 0)
        child_fail(err_fd, "mount: %s: %s", dev, strerror(errno));
    for (size_t i = 0; i < sizeof devices / sizeof devices[0]; i++) {
        path_in(path, dev, devices[i], err_fd);
        path_in(host, "/dev", devices[i], err_fd);
        int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
        if (fd < 0 || close(fd) != 0)
            child_fail(err_fd, "rootfs: create %s: %s", path, strerror(errno));
        if (mount(host, path, NULL, MS_BIND, NULL) != 0)
            child_fail(err_fd, "mount: bind %s: %s", host, strerror(errno));
    }
    path_in(path, dev, "shm", err_fd);
    ensure_dir(path, 01777, err_fd); /* its tmpfs: private_mounts() */
    static const char *links[][2] = {{"/proc/self/fd", "fd"},
                                     {"/proc/self/fd/0", "stdin"},
                                     {"/proc/self/fd/1", "stdout"},
                                     {"/proc/self/fd/2", "stderr"}};
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
        path_in(path, dev, links[i][1], err_fd);
        if (symlink(links[i][0], path) != 0)
            child_fail(err_fd, "rootfs: symlink %s: %s", path, strerror(errno));
    }
}

/* The job's root: an overlay of the image's read-only layers (top first) and a writable
 * layer of this attempt's own (DIR/upper), with /proc, /dev and /tmp, entered with
 * pivot_root; the host's root is detached, so nothing of it stays reachable. */
static void enter_overlay_root(const struct opts *o, int err_fd)
{
    char upper[PATH_MAX], work[PATH_MAX], root[PATH_MAX], path[PATH_MAX];
    path_in(upper, o->overlay_dir, "upper", err_fd);
    path_in(work, o->overlay_dir, "work", err_fd);
    path_in(root, o->overlay_dir, "root", err_fd);
    ensure_dir(o->overlay_dir, 0700, err_fd);
    ensure_dir(upper, 0755, err_fd);
    ensure_dir(work, 0700, err_fd);
    ensure_dir(root, 0755, err_fd);
    /* The agent refuses ':', ',' and '\\' in these paths: they would split the option. */
    char data[4096];
    size_t used = (size_t)snprintf(data, sizeof data, "lowerdir=");
    for (int i = 0; i < o->n_lowers && used < sizeof data; i++)
        used += (size_t)snprintf(data + used, sizeof data - used, "%s%s", i ? ":" : "",
                                 o->lowers[i]);
    if (used < sizeof data)
        used += (size_t)snprintf(data + used, sizeof data - used, ",upperdir=%s,workdir=%s",
                                 upper, work);
    if (used >= sizeof data)
        child_fail(err_fd, "rootfs: overlay options longer than %zu bytes", sizeof data);
    if (mount("overlay", root, "overlay", 0, data) != 0)
        child_fail(err_fd, "rootfs: mount overlay: %s", strerror(errno));
    path_in(path, root, "proc", err_fd);
    ensure_dir(path, 0555, err_fd);
    if (mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
        child_fail(err_fd, "mount: %s: %s", path, strerror(errno));
    path_in(path, root, "tmp", err_fd);
    ensure_dir(path, 01777, err_fd); /* its tmpfs: private_mounts() */
    setup_dev(root, err_fd);
    private_mounts(o, root, 1, err_fd);
    seal_private_mounts(root, err_fd);
    /* pivot_root(".", "."): the old root ends up stacked under the new one, and the
     * lazy unmount takes it (and every host mount below it) away. */
    if (chdir(root) != 0)
        child_fail(err_fd, "rootfs: chdir %s: %s", root, strerror(errno));
    if (syscall(SYS_pivot_root, ".", ".") != 0)
        child_fail(err_fd, "rootfs: pivot_root: %s", strerror(errno));
    if (umount2(".", MNT_DETACH) != 0)
        child_fail(err_fd, "rootfs: detach the old root: %s", strerror(errno));
    if (chdir("/") != 0)
        child_fail(err_fd, "rootfs: chdir /: %s", strerror(errno));
}

/* ---- isolation ----
 *
 * What keeps one tenant's job away from another's, beyond the namespaces and the user:
 *   - private_mounts: its own /tmp, /dev/shm and /var/tmp (directories of one tmpfs of its
 *     own, nosuid,nodev, --tmp-size in all, its pages charged to the job's memory cgroup,
 *     gone with its mount namespace);
 *   - cgroup_view: /sys/fs/cgroup shows the job's own cgroups only (each hierarchy's
 *     mount point bound to the job's directory in it, the others covered);
 *   - confine_job: a new session keyring, then the default seccomp filter, just before
 *     exec (docs/operations.md, "Tenant isolation", says what it blocks and why).
 */

/* --cgroup-view NAME DIR, --cgroup-hide NAME, --no-seccomp: how many argv entries the flag
 * at argv[i] takes (0: not an isolation flag, -1: malformed). */
static int isolation_arg(struct opts *o, int argc, char **argv, int i)
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
    if (left < 1 + view) {
        set_error("monitor: %s needs %s", a, view ? "NAME and DIR" : "NAME");
        return -1;
    }
    if (!o->view_names) {
        o->view_names = calloc((size_t)argc, sizeof *o->view_names);
        o->view_dirs = calloc((size_t)argc, sizeof *o->view_dirs);
        o->hide_names = calloc((size_t)argc, sizeof *o->hide_names);
        if (!o->view_names || !o->view_dirs || !o->hide_names) {
            set_error("monitor: out of memory");
            return -1;
        }
    }
    const char *name = argv[i + 1];
    /* A mount point right under /sys/fs/cgroup ("." is that mount itself, a v2 host). */
    if (!*name || strchr(name, '/') || strcmp(name, "..") == 0 ||
        (hide && strcmp(name, ".") == 0)) {
        set_error("monitor: bad %s name %s", a, name);
        return -1;
    }
    if (hide) {
        o->hide_names[o->n_hides++] = name;
        return 2;
    }
    o->view_names[o->n_views] = name;
    o->view_dirs[o->n_views++] = argv[i + 2];
    return 3;
}

/* The job's scratch space: ONE tmpfs of its own (nosuid,nodev, --tmp-size for all of it,
 * its pages charged to the job's memory cgroup, gone with its mount namespace) that is
 * ROOT/tmp, ROOT/dev/shm (when `shm`), ROOT/var/tmp (when the root has one) and the other
 * directories every user may write on common hosts (when they are), each a directory of
 * its own in it: nothing writable stays shared with another job. A symlink is left alone
 * (it leads to one of these, or into the root the job cannot write).
 *
 * One superblock, not one per place: a bind costs what a tmpfs mount does, but every tmpfs
 * superblock has its own setup and teardown (shrinker, lists, counters) on top. The tmpfs
 * goes on ROOT/tmp first; its directories are bound to their places here, and its "tmp"
 * directory over ROOT/tmp itself last (seal_private_mounts), stacked on the tmpfs's root,
 * which no path of the job's reaches then. Until the seal, SCRATCH_EMPTY (an empty
 * directory only root may write) is there for the cgroup view to cover hierarchies with. */
#define SCRATCH_EMPTY "/tmp/empty"

/* PATH (ROOT/WHERE) becomes a bind of its own directory of the tmpfs at TMP (named after
 * WHERE, '-' for '/': var-tmp, dev-shm, ...). The bind keeps the tmpfs mount's nosuid,nodev.
 * (PATH comes from the caller: a fresh stack page is a page fault in init.) */
static void bind_scratch(const char *tmp, const char *where, const char *path, int err_fd)
{
    char name[32], dir[PATH_MAX];
    snprintf(name, sizeof name, "%s", where);
    for (char *c = name; *c; c++)
        if (*c == '/')
            *c = '-';
    path_in(dir, tmp, name, err_fd);
    if (mkdir(dir, 01777) != 0)
        child_fail(err_fd, "rootfs: mkdir %s: %s", dir, strerror(errno));
    if (mount(dir, path, NULL, MS_BIND, NULL) != 0)
        child_fail(err_fd, "mount: bind %s: %s", path, strerror(errno));
}

static void private_mounts(const struct opts *o, const char *root, int shm, int err_fd)
{
    static const char *shared[] = {"var/tmp", "run/lock", "var/lock", "var/crash"};
    char data[64], tmp[PATH_MAX], path[PATH_MAX];
    struct stat st;
    path_in(tmp, root, "tmp", err_fd);
    snprintf(data, sizeof data, "size=%llu,mode=755", o->tmp_size);
    if (mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, data) != 0)
        child_fail(err_fd, "mount: %s: %s", tmp, strerror(errno));
    mode_t umask_was = umask(0); /* the modes below exactly */
    path_in(path, tmp, "empty", err_fd);
    if (o->n_hides > 0 && mkdir(path, 0555) != 0) /* for cgroup_view only (a mkdir: 5 us) */
        child_fail(err_fd, "rootfs: mkdir %s: %s", path, strerror(errno));
    path_in(path, tmp, "tmp", err_fd);
    if (mkdir(path, 01777) != 0)
        child_fail(err_fd, "rootfs: mkdir %s: %s", path, strerror(errno));
    for (size_t i = 0; i < sizeof shared / sizeof shared[0]; i++) {
        path_in(path, root, shared[i], err_fd);
        if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode))
            continue;
        if (i > 0 && !(st.st_mode & S_IWOTH)) /* /var/tmp always; the others if shared */
            continue;
        bind_scratch(tmp, shared[i], path, err_fd);
    }
    if (shm) {
        path_in(path, root, "dev/shm", err_fd);
        bind_scratch(tmp, "dev/shm", path, err_fd);
    }
    umask(umask_was);
}

/* The tmpfs's "tmp" directory over ROOT/tmp: the last of the private mounts. */
static void seal_private_mounts(const char *root, int err_fd)
{
    char tmp[PATH_MAX], dir[PATH_MAX];
    path_in(tmp, root, "tmp", err_fd);
    path_in(dir, tmp, "tmp", err_fd);
    if (mount(dir, tmp, NULL, MS_BIND, NULL) != 0)
        child_fail(err_fd, "mount: bind %s: %s", tmp, strerror(errno));
}

#define CGROUP_VIEW "/sys/fs/cgroup"

/* The job's /sys/fs/cgroup: its own cgroup in each hierarchy it is in, bound over that
 * hierarchy's mount point, and the hierarchies it is not in covered by an empty directory
 * (--cgroup-hide): no other tenant's cgroups or usage, and nothing of the tree above its
 * own. Binding over the mount points (rather than a fresh tmpfs with a directory per
 * hierarchy) costs half: a lookup in cgroupfs is what a bind pays most for. Covering, not
 * detaching: every umount ends in a synchronous RCU grace period (some 60 us of waiting and
 * an interrupt to every cpu), a bind does not. Done before the monitor moves init into the
 * job's cgroups, so the job is not billed for it; after private_mounts, before its seal
 * (SCRATCH_EMPTY). */
static void cgroup_view(const struct opts *o, int err_fd)
{
    const unsigned long flags = MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC;
    char path[PATH_MAX];
    for (int k = 0; k < o->n_views; k++) {
        if (strcmp(o->view_names[k], ".") == 0)
            snprintf(path, sizeof path, "%s", CGROUP_VIEW); /* v2: the one hierarchy */
        else
            path_in(path, CGROUP_VIEW, o->view_names[k], err_fd);
        if (mount(o->view_dirs[k], path, NULL, flags, NULL) != 0)
            child_fail(err_fd, "cgroup view: bind %s: %s", o->view_dirs[k], strerror(errno));
    }
    for (int k = 0; k < o->n_hides; k++) {
        path_in(path, CGROUP_VIEW, o->hide_names[k], err_fd);
        if (mount(SCRATCH_EMPTY, path, NULL, MS_BIND, NULL) != 0 && errno != ENOENT)
            child_fail(err_fd, "cgroup view: cover %s: %s", path, strerror(errno));
    }
}

/* ---- the default seccomp filter ----
 *
 * Built by hand (classic BPF) rather than with libseccomp: the monitor is compiled on each
 * node at run time and linked statically, and the rule set is a short deny list; a library
 * would be one more build dependency on every node for some forty comparisons. It is
 * modelled on the default profile container runtimes ship, as a deny list: every syscall is
 * allowed except those below, which fail with EPERM (ENOSYS for clone3, whose flags a
 * filter cannot read, so that the C library falls back to clone, which it can check).
 * A syscall of another ABI (i386 through int 0x80, x32) kills the process: the numbers
 * below are x86_64's, and another table would slip past them. */
#if defined(__x86_64__)
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>

#define FILTER_MAX 200
/* Symbolic jump targets: the returns (appended last) and the by-argument blocks. */
enum {
    TO_ALLOW = 1000, TO_EPERM, TO_ENOSYS, TO_KILL, /* returns, in this order */
    TO_CLONE, TO_UNSHARE, TO_ADD_KEY, TO_KEYCTL,    /* blocks */
    TO_END
};

struct filter {
    struct sock_filter ins[FILTER_MAX];
    int n;
    int at[TO_END - TO_ALLOW]; /* where each target starts */
};

/* One instruction; jt/jf are a count of instructions to skip, or a TO_* target. */
static void emit(struct filter *f, uint16_t code, uint32_t k, unsigned jt, unsigned jf)
{
    if (f->n >= FILTER_MAX) {
        f->n++;
        return;
    }
    f->ins[f->n] = (struct sock_filter){code, (uint8_t)(jt >= TO_ALLOW ? 0 : jt),
                                        (uint8_t)(jf >= TO_ALLOW ? 0 : jf), k};
    /* TO_* targets are resolved by build_filter() once every target is placed; until then
     * they ride in the code's bits 8-15 (classic BPF codes fit in the low 8). */
    f->ins[f->n].code |= (uint16_t)(((jt >= TO_ALLOW ? jt - TO_ALLOW + 1 : 0) << 8) |
                                    ((jf >= TO_ALLOW ? jf - TO_ALLOW + 1 : 0) << 12));
    f->n++;
}

#define ARG_LO(i) (offsetof(struct seccomp_data, args) + 8 * (i))

static void load(struct filter *f, uint32_t offset)
{
    emit(f, BPF_LD | BPF_W | BPF_ABS, offset, 0, 0);
}

/* Syscalls refused outright: module loading, kexec, reboot, swap, clocks, accounting,
 * quotas, the mount family, handles that bypass path checks, kernel introspection and
 * tracing (bpf, perf_event_open, syslog, lookup_dcookie), namespace entry (setns), raw io
 * ports, userfaultfd (a tool of kernel exploits), io_uring (its own syscall path, not seen
 * by this filter), request_key (runs a helper as root on a miss), chroot, and obsolete
 * calls. Then the calls decided by their arguments or answered otherwise. */
static const struct rule {
    uint32_t nr;
    unsigned to;
} rules[] = {
    {__NR_acct, TO_EPERM}, {__NR_bpf, TO_EPERM}, {__NR_clock_adjtime, TO_EPERM},
    {__NR_clock_settime, TO_EPERM}, {__NR_settimeofday, TO_EPERM},
    {__NR_create_module, TO_EPERM}, {__NR_delete_module, TO_EPERM},
    {__NR_init_module, TO_EPERM}, {__NR_finit_module, TO_EPERM},
    {__NR_get_kernel_syms, TO_EPERM}, {__NR_query_module, TO_EPERM},
    {__NR_kexec_load, TO_EPERM}, {__NR_kexec_file_load, TO_EPERM}, {__NR_reboot, TO_EPERM},
    {__NR_swapon, TO_EPERM}, {__NR_swapoff, TO_EPERM}, {__NR_mount, TO_EPERM},
    {__NR_umount2, TO_EPERM}, {__NR_pivot_root, TO_EPERM}, {__NR_fsopen, TO_EPERM},
    {__NR_fsconfig, TO_EPERM}, {__NR_fsmount, TO_EPERM}, {__NR_fspick, TO_EPERM},
    {__NR_move_mount, TO_EPERM}, {__NR_open_tree, TO_EPERM}, {__NR_mount_setattr, TO_EPERM},
    {__NR_open_by_handle_at, TO_EPERM}, {__NR_perf_event_open, TO_EPERM},
    {__NR_quotactl, TO_EPERM}, {__NR_quotactl_fd, TO_EPERM}, {__NR_setns, TO_EPERM},
    {__NR_userfaultfd, TO_EPERM}, {__NR_uselib, TO_EPERM}, {__NR_ustat, TO_EPERM},
    {__NR_sysfs, TO_EPERM}, {__NR__sysctl, TO_EPERM}, {__NR_iopl, TO_EPERM},
    {__NR_ioperm, TO_EPERM}, {__NR_syslog, TO_EPERM}, {__NR_lookup_dcookie, TO_EPERM},
    {__NR_nfsservctl, TO_EPERM}, {__NR_vhangup, TO_EPERM}, {__NR_fanotify_init, TO_EPERM},
    {__NR_io_uring_setup, TO_EPERM}, {__NR_io_uring_enter, TO_EPERM},
    {__NR_io_uring_register, TO_EPERM}, {__NR_chroot, TO_EPERM},
    {__NR_request_key, TO_EPERM}, {__NR_clone3, TO_ENOSYS}, {__NR_clone, TO_CLONE},
    {__NR_unshare, TO_UNSHARE}, {__NR_add_key, TO_ADD_KEY}, {__NR_keyctl, TO_KEYCTL},
};
#define N_RULES (sizeof rules / sizeof rules[0])

/* Namespace flags: a new user namespace would hand the job every capability inside it
 * (then mount, and the kernel surface only root reaches); the others need privileges the
 * job does not have, and are refused the same way for a clear EPERM. */
#define NS_FLAGS                                                                         \
    (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |         \
     CLONE_NEWPID | CLONE_NEWNET)
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

/* Key serials of the per-uid keyrings (KEY_SPEC_USER_KEYRING, _USER_SESSION_KEYRING): a
 * key put there would outlive the job and reach the tenant's later jobs. */
#define USER_KEYRING 0xfffffffcu
#define USER_SESSION_KEYRING 0xfffffffbu

/* A binary search over the sorted rules[lo, hi): the kernel runs the program for every
 * syscall number when the filter is installed (to cache the ones always allowed), so a
 * short path (some 8 comparisons, not 50) is what keeps the install cheap. */
static void emit_search(struct filter *f, const struct rule *sorted, int lo, int hi)
{
    if (hi - lo <= 3) {
        for (int i = lo; i < hi; i++)
            emit(f, BPF_JMP | BPF_JEQ | BPF_K, sorted[i].nr, sorted[i].to, 0);
        emit(f, BPF_JMP | BPF_JA, 0, TO_ALLOW, TO_ALLOW); /* resolved into k below */
        return;
    }
    int mid = lo + (hi - lo) / 2, at = f->n;
    emit(f, BPF_JMP | BPF_JGE | BPF_K, sorted[mid].nr, 0, 0);
    emit_search(f, sorted, lo, mid);
    if (f->n - at - 1 > 255)
        f->n = FILTER_MAX + 1; /* cannot be expressed: build_filter() fails */
    else if (at < FILTER_MAX)
        f->ins[at].jt = (uint8_t)(f->n - at - 1);
    emit_search(f, sorted, mid, hi);
}

static int by_nr(const void *a, const void *b)
{
    uint32_t x = ((const struct rule *)a)->nr, y = ((const struct rule *)b)->nr;
    return x < y ? -1 : x > y;
}

/* The program: arch check, the search, the by-argument blocks, the returns. */
static int build_filter(struct filter *f)
{
    struct rule sorted[N_RULES];
    memcpy(sorted, rules, sizeof sorted);
    qsort(sorted, N_RULES, sizeof sorted[0], by_nr);
    f->n = 0;
    load(f, offsetof(struct seccomp_data, arch));
    emit(f, BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, TO_KILL);
    load(f, offsetof(struct seccomp_data, nr));
    emit(f, BPF_JMP | BPF_JGE | BPF_K, 0x40000000u /* __X32_SYSCALL_BIT */, TO_KILL, 0);
    emit_search(f, sorted, 0, (int)N_RULES);
    /* clone(flags, ...) and unshare(flags): no namespace flag. */
    f->at[TO_CLONE - TO_ALLOW] = f->n;
    load(f, ARG_LO(0));
    emit(f, BPF_JMP | BPF_JSET | BPF_K, NS_FLAGS, TO_EPERM, TO_ALLOW);
    f->at[TO_UNSHARE - TO_ALLOW] = f->n;
    load(f, ARG_LO(0));
    emit(f, BPF_JMP | BPF_JSET | BPF_K, NS_FLAGS | CLONE_NEWTIME, TO_EPERM, TO_ALLOW);
    /* add_key(type, desc, payload, plen, keyring): not into a per-uid keyring. */
    f->at[TO_ADD_KEY - TO_ALLOW] = f->n;
    load(f, ARG_LO(4));
    emit(f, BPF_JMP | BPF_JEQ | BPF_K, USER_KEYRING, TO_EPERM, 0);
    emit(f, BPF_JMP | BPF_JEQ | BPF_K, USER_SESSION_KEYRING, TO_EPERM, TO_ALLOW);
    /* keyctl(op, ...): the job keeps its session keyring. It may not join or create another
     * session (by name: another job's), hand its session to its parent, change where
     * request_key puts keys, or link or move a key into a per-uid keyring. */
    f->at[TO_KEYCTL - TO_ALLOW] = f->n;
    load(f, ARG_LO(0));
    emit(f, BPF_JMP | BPF_JEQ | BPF_K, KEYCTL_JOIN_SESSION_KEYRING, TO_EPERM, 0);
    emit(f, BPF_JMP | BPF_JEQ | BPF_K, KEYCTL_SESSION_TO_PARENT, TO_EPERM, 0);
    emit(f, BPF_JMP | BPF_JEQ | BPF_K, KEYCTL_SET_REQKEY_KEYRING, TO_EPERM, 0);
    emit(f, BPF_JMP | BPF_JEQ | BPF_K, KEYCTL_LINK, 0, 3);
    load(f, ARG_LO(2));
    emit(f, BPF_JMP | BPF_JEQ | BPF_K, USER_KEYRING, TO_EPERM, 0);
    emit(f, BPF_JMP | BPF_JEQ | BPF_K, USER_SESSION_KEYRING, TO_EPERM, TO_ALLOW);
    emit(f, BPF_JMP | BPF_JEQ | BPF_K, KEYCTL_MOVE, 0, TO_ALLOW);
    load(f, ARG_LO(3));
    emit(f, BPF_JMP | BPF_JEQ | BPF_K, USER_KEYRING, TO_EPERM, 0);
    emit(f, BPF_JMP | BPF_JEQ | BPF_K, USER_SESSION_KEYRING, TO_EPERM, TO_ALLOW);
    /* The returns, in TO_* order. */
    int returns = f->n;
    emit(f, BPF_RET | BPF_K, SECCOMP_RET_ALLOW, 0, 0);
    emit(f, BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA), 0, 0);
    emit(f, BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA), 0, 0);
    emit(f, BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS, 0, 0);
    if (f->n > FILTER_MAX)
        return -1;
    for (int t = 0; t < TO_CLONE - TO_ALLOW; t++)
        f->at[t] = returns + t;
    for (int i = 0; i < returns; i++) {
        struct sock_filter *ins = &f->ins[i];
        int jt = (ins->code >> 8) & 15, jf = (ins->code >> 12) & 15;
        ins->code &= 0xff;
        if (BPF_OP(ins->code) == BPF_JA && BPF_CLASS(ins->code) == BPF_JMP) {
            ins->k = (uint32_t)(f->at[jt - 1] - (i + 1)); /* forward: the targets follow */
            ins->jt = ins->jf = 0;
            continue;
        }
        for (int side = 0; side < 2; side++) {
            int target = side ? jf : jt, distance;
            if (!target)
                continue;
            distance = f->at[target - 1] - (i + 1);
            if (distance < 0 || distance > 255)
                return -1;
            if (side)
                ins->jf = (uint8_t)distance;
            else
                ins->jt = (uint8_t)distance;
        }
    }
    return 0;
}

/* The program, built once per process that forks jobs: the fork server builds it before
 * its first fork (prepare_seccomp), so a job only installs it. */
static struct filter seccomp_prog;
static int seccomp_built; /* 1: built, -1: does not fit */

static void prepare_seccomp(void)
{
    if (!seccomp_built)
        seccomp_built = build_filter(&seccomp_prog) == 0 ? 1 : -1;
}

static void apply_seccomp(int err_fd)
{
    struct filter *f = &seccomp_prog;
    prepare_seccomp();
    if (seccomp_built != 1)
        child_fail(err_fd, "seccomp: the filter does not fit (%d instructions)", f->n);
    struct sock_fprog prog = {(unsigned short)f->n, f->ins};
    /* no_new_privs is set (drop_privileges), so this needs no privilege. */
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0)
        child_fail(err_fd, "seccomp: install the filter: %s", strerror(errno));
}
#else
static void prepare_seccomp(void) {}

static void apply_seccomp(int err_fd)
{
    child_fail(err_fd, "seccomp: the default filter is written for x86_64 only; on this "
                       "architecture only trusted tenants' jobs (no filter) can run");
}
#endif

/* Last steps before exec, as the job's user: a session keyring of its own (keys of earlier
 * jobs, in the session the agent had, are out of reach), then the filter. */
static void confine_job(const struct opts *o, int err_fd)
{
    if (syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL) < 0 && errno != ENOSYS)
        child_fail(err_fd, "keyring: new session: %s", strerror(errno));
    if (!o->no_seccomp)
        apply_seccomp(err_fd);
}

__attribute__((noreturn)) static void init_main(const struct opts *o, int ready_fd, int sync_fd,
                                                int err_fd, int status_fd, int out_fd,
                                                int errf_fd)
{
    /* If the monitor dies, nobody would record the job: take it down with us. The
     * kernel delivers this SIGKILL even to a pid-namespace init (it comes from outside).
     * A monitor that died before this line is caught by EOF on the sync pipe below. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        child_fail(err_fd, "init: prctl: %s", strerror(errno));
    /* The namespaces' own setup runs before the monitor moves us into the job's cgroups:
     * it is the runtime's work, not the job's, so it is neither billed to the job nor
     * counted against its cpu quota (a job of 0.01 cores gets 1 ms per 100 ms period, and
     * a throttled setup would delay its start by whole periods). */
    /* CLONE_NEWNS copies the mounts with their propagation: make ours private first, or
     * the mounts below would leak back into the host's namespace. */
    if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        child_fail(err_fd, "mount: make / private: %s", strerror(errno));
    if (o->overlay_dir) {
        enter_overlay_root(o, err_fd);
    } else {
        /* A fresh proc instance shows only this pid namespace. */
        if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
            child_fail(err_fd, "mount: /proc: %s", strerror(errno));
        private_mounts(o, "", 1, err_fd);
        cgroup_view(o, err_fd);
        seal_private_mounts("", err_fd);
    }
    if (sethostname(o->hostname, strlen(o->hostname)) != 0)
        child_fail(err_fd, "hostname: %s: %s", o->hostname, strerror(errno));
    if (!o->host_net)
        bring_lo_up(err_fd);
    if (write_all(ready_fd, "r", 1) != 0 || close(ready_fd) != 0)
        _exit(1); /* the monitor is gone */

    char go;
    ssize_t n;
    do
        n = read(sync_fd, &go, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1)
        _exit(1); /* the monitor gave up (cgroup.procs failed) or died */
    if (close(sync_fd) != 0)
        child_fail(err_fd, "init: close: %s", strerror(errno));

    /* init is in every cgroup of the job now: make that the root of a cgroup namespace,
     * so the job sees itself at "/" and nothing of the tree above it. */
    if (unshare(CLONE_NEWCGROUP) != 0)
        child_fail(err_fd, "init: cgroup namespace: %s", strerror(errno));

    /* Block what we forward (and SIGCHLD) before forking, so nothing is lost in between;
     * sigwaitinfo() then receives them. Blocked signals are queued even for a pid-ns
     * init, which otherwise drops signals it has no handler for. */
    static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
        sigaddset(&set, forwarded[i]);
    if (reset_signals() != 0 || sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        child_fail(err_fd, "init: signals: %s", strerror(errno));

    pid_t job = fork();
    if (job < 0)
        child_fail(err_fd, "init: fork: %s", strerror(errno));
    if (job == 0)
        job_main(o, out_fd, errf_fd, err_fd);
    /* From here on only the job holds the err pipe; its exec closes it (EOF = started). */
    if (close(err_fd) != 0 || close(out_fd) != 0 || close(errf_fd) != 0)
        _exit(1);

    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&set, &si);
        if (sig < 0) {
            if (errno == EINTR)
                continue;
            _exit(1);
        }
        if (sig != SIGCHLD) {
            if (kill(job, sig) != 0 && errno != ESRCH)
                _exit(1);
            continue;
        }
        /* SIGCHLDs coalesce: reap everything that is ready. */
        for (;;) {
            int status;
            pid_t pid = waitpid(-1, &status, WNOHANG);
            if (pid == job) {
                if (write_all(status_fd, (const char *)&status, sizeof status) != 0)
                    _exit(1);
                /* Exiting makes the kernel SIGKILL everything left in the namespace. */
                _exit(0);
            }
            if (pid == 0 || (pid < 0 && errno == ECHILD))
                break;
            if (pid < 0 && errno != EINTR)
                _exit(1);
        }
    }
}

/* ---- monitor ---- */

static int make_pipe(int fds[2])
{
    if (pipe2(fds, O_CLOEXEC) != 0) {
        set_error("monitor: pipe: %s", strerror(errno));
        return -1;
    }
    return 0;
}

/* Read everything until EOF (at most ERR_MAX-1 bytes kept). Returns bytes kept or -1. */
static ssize_t read_all(int fd, char *buf, size_t size)
{
    size_t used = 0;
    char sink[256];
    for (;;) {
        char *dst = used < size - 1 ? buf + used : sink;
        size_t room = used < size - 1 ? size - 1 - used : sizeof sink;
        ssize_t n = read(fd, dst, room);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0)
            break;
        if (dst == buf + used)
            used += (size_t)n;
    }
    buf[used] = '\0';
    return (ssize_t)used;
}

/* One of the job's output streams: the pipe's read end, drained into OUT/<name>. */
struct sink {
    int pipe_fd;   /* -1 once at EOF (or given up) */
    int file_fd;   /* -1 until the first byte arrived */
    int copy;      /* splice is not supported by the output filesystem: read + write */
    int broken;    /* the file could not be made or written: the rest is discarded */
    const char *name;
    int dropped;   /* the output policy's marker line is written: the rest is discarded */
};

/* OUT/<name>, made (with OUT) on the first byte. Not O_APPEND: splice refuses such files. */
static int open_sink(const struct opts *o, struct sink *s)
{
    char path[PATH_MAX];
    if (mkdir(o->output_dir, 0750) != 0 && errno != EEXIST)
        return -1;
    if (join(path, sizeof path, o->output_dir, s->name) != 0)
        return -1;
    s->file_fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0640);
    if (s->file_fd < 0)
        return -1;
    return lseek(s->file_fd, 0, SEEK_END) < 0 ? -1 : 0;
}

/* Move what the pipe holds now into the file; at EOF close the pipe. A write error (a full
 * output disk) loses the rest of this stream, never the job: it keeps writing into a pipe
 * that is still drained, and its exit is recorded as usual. */
static void drain_sink(const struct opts *o, struct sink *s, short revents)
{
    static char chunk[65536];
    /* POLLIN: bytes are waiting (a pipe at EOF reports POLLHUP alone). */
    if ((revents & POLLIN) && s->file_fd < 0 && !s->broken && open_sink(o, s) != 0) {
        fprintf(stderr, "scheduler-monitor: open %s/%s: %s\n", o->output_dir, s->name,
                strerror(errno));
        s->broken = 1;
    }
    for (;;) {
        ssize_t n;
        if (s->file_fd >= 0 && !s->broken && !s->copy) {
            n = splice(s->pipe_fd, NULL, s->file_fd, NULL, 1 << 20,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n < 0 && (errno == EINVAL || errno == ENOSYS)) {
                s->copy = 1;
                continue;
            }
        } else {
            n = read(s->pipe_fd, chunk, sizeof chunk);
            if (n > 0 && s->file_fd < 0 && !s->broken && open_sink(o, s) != 0)
                n = -1; /* bytes came after all (between poll and read) */
            else if (n > 0 && !s->broken && write_all(s->file_fd, chunk, (size_t)n) != 0)
                n = -1;
        }
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n < 0 && !s->broken) {
            fprintf(stderr, "scheduler-monitor: write %s/%s: %s\n", o->output_dir, s->name,
                    strerror(errno));
            s->broken = 1;
            continue;
        }
        /* EOF, or the pipe itself failed. */
        close(s->pipe_fd);
        s->pipe_fd = -1;
        return;
    }
}

/* ---- output policy: draining ---- */

static int output_active(void)
{
    return outp.limit >= 0 || outp.bps > 0 || outp.reserve > 0;
}

/* Bytes the sinks may move to disk now: what the throttle's bucket holds (refilled at
 * --output-bps, at most 1/8 s worth or 64 KiB), never past the limit, at most 1 MiB. */
static size_t output_allow(void)
{
    long long room = 1 << 20;
    if (outp.limit >= 0 && outp.limit - outp.kept < room)
        room = outp.limit - outp.kept;
    if (outp.bps > 0) {
        long long now = now_ns();
        double burst = outp.bps / 8.0 > 65536.0 ? outp.bps / 8.0 : 65536.0;
        if (outp.refill_ns == 0)
            outp.tokens = burst;
        else
            outp.tokens += (double)(now - outp.refill_ns) * (double)outp.bps / 1e9;
        if (outp.tokens > burst)
            outp.tokens = burst;
        outp.refill_ns = now;
        if ((long long)outp.tokens < room)
            room = (long long)outp.tokens;
    }
    return room > 0 ? (size_t)room : 0;
}

/* -1 when the sinks may be drained now; else the milliseconds until the throttle's bucket
 * holds a useful amount again (4 KiB), during which the pipes are not polled: the job blocks
 * on its full pipe, which is the throttle. */
static int output_wait_ms(void)
{
    if (outp.bps <= 0 || outp.full || (outp.limit >= 0 && outp.kept >= outp.limit))
        return -1;
    output_allow();
    if (outp.tokens >= 4096.0)
        return -1;
    return (int)((4096.0 - outp.tokens) * 1000.0 / (double)outp.bps) + 1;
}

/* init is gone: nothing can write into the pipes any more, so what they hold is drained
 * unthrottled (within OUTPUT_CLOSE_MS, whatever the job's rate). */
static void output_job_ended(void)
{
    outp.bps = 0;
}

/* From now on nothing more is kept, for the reason given. */
static void output_stop(const char *why)
{
    if (!outp.full)
        snprintf(outp.why, sizeof outp.why, "%s", why);
    outp.full = 1;
    if (outp.devnull < 0)
        outp.devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
}

/* True when the output filesystem has less free space than --output-reserve. */
static int output_disk_low(int fd)
{
    struct statvfs st;
    if (outp.reserve <= 0 || fstatvfs(fd, &st) != 0)
        return 0;
    return (long long)st.f_bavail * (long long)st.f_frsize < outp.reserve;
}

/* drain_sink under the output policy: bytes go to the file within the limit and the
 * throttle; past the limit (or the reserve) the marker line is written once per stream and
 * the rest is dropped. */
static void drain_limited(const struct opts *o, struct sink *s, short revents)
{
    static char chunk[65536];
    (void)revents;
    for (;;) {
        ssize_t n;
        if (!outp.full && s->file_fd >= 0 && output_disk_low(s->file_fd))
            output_stop("the state disk is nearly full");
        if (!outp.full && outp.limit >= 0 && outp.kept >= outp.limit) {
            char why[96];
            snprintf(why, sizeof why, "output limit of %lld bytes reached", outp.limit);
            output_stop(why);
        }
        if (outp.full || s->broken) {
            if (outp.full && !s->dropped && !s->broken) {
                /* Only a stream that has bytes to drop gets the marker. */
                n = read(s->pipe_fd, chunk, sizeof chunk);
                if (n < 0 && (errno == EINTR))
                    continue;
                if (n < 0 && errno == EAGAIN)
                    return;
                if (n > 0) {
                    char marker[256];
                    int len = snprintf(marker, sizeof marker,
                                       "\n[scheduler: output dropped from here: %s]\n", outp.why);
                    if ((s->file_fd >= 0 || open_sink(o, s) == 0) &&
                        write_all(s->file_fd, marker, (size_t)len) == 0)
                        s->dropped = 1;
                    else
                        s->broken = 1;
                    continue;
                }
            } else if (outp.devnull >= 0) {
                n = splice(s->pipe_fd, NULL, outp.devnull, NULL, 1 << 20, SPLICE_F_NONBLOCK);
                if (n < 0 && (errno == EINVAL || errno == ENOSYS)) {
                    close(outp.devnull);
                    outp.devnull = -1;
                    continue;
                }
            } else {
                n = read(s->pipe_fd, chunk, sizeof chunk);
            }
        } else {
            size_t allow = output_allow();
            if (allow == 0) {
                if (outp.limit >= 0 && outp.kept >= outp.limit)
                    continue; /* stops above */
                return;       /* throttled: wait_job polls again when the bucket refills */
            }
            if (s->file_fd >= 0 && !s->copy) {
                n = splice(s->pipe_fd, NULL, s->file_fd, NULL, allow,
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                if (n < 0 && (errno == EINVAL || errno == ENOSYS)) {
                    s->copy = 1;
                    continue;
                }
            } else {
                n = read(s->pipe_fd, chunk, allow < sizeof chunk ? allow : sizeof chunk);
                if (n > 0 && s->file_fd < 0 && open_sink(o, s) != 0)
                    n = -1;
                else if (n > 0 && write_all(s->file_fd, chunk, (size_t)n) != 0)
                    n = -1;
            }
            if (n > 0) {
                outp.kept += n;
                if (outp.bps > 0)
                    outp.tokens -= (double)n;
            }
        }
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n < 0 && !s->broken) {
            fprintf(stderr, "scheduler-monitor: write %s/%s: %s\n", o->output_dir, s->name,
                    strerror(errno));
            s->broken = 1;
            continue;
        }
        close(s->pipe_fd);
        s->pipe_fd = -1;
        return;
    }
}

/* What wait_job() saw. */
struct waits {
    char *msg; /* ERR_MAX bytes: the start error, if any */
    size_t msg_len;
    long long start_ns;
    int job_status;
    ssize_t status_len; /* sizeof(int) once the status arrived */
};

/* After init exits, its namespace's last processes get this long to close the output
 * pipes (they are being killed); stragglers stuck longer lose their last output, and the
 * exit is recorded. */
#define OUTPUT_CLOSE_MS 2000

/* Serve the err pipe, the status pipe and both output pipes until all are at EOF. */
static int wait_job(const struct opts *o, int err_fd, int status_fd, struct sink *sinks,
                    struct waits *w)
{
    int err_open = 1, status_open = 1;
    long long deadline_ns = 0;
    size_t status_got = 0;
    char sink_buf[256];
    for (;;) {
        struct pollfd p[4];
        int n = 0, i_err = -1, i_status = -1, i_sink[2] = {-1, -1};
        if (err_open)
            i_err = n, p[n++] = (struct pollfd){err_fd, POLLIN, 0};
        if (status_open)
            i_status = n, p[n++] = (struct pollfd){status_fd, POLLIN, 0};
        int throttle_ms = output_wait_ms();
        for (int k = 0; k < 2; k++)
            if (sinks[k].pipe_fd >= 0 && throttle_ms < 0)
                i_sink[k] = n, p[n++] = (struct pollfd){sinks[k].pipe_fd, POLLIN, 0};
        if (n == 0 && throttle_ms < 0)
            break;
        int timeout = throttle_ms;
        if (!err_open && !status_open) {
            output_job_ended();
            long long now = now_ns();
            if (deadline_ns == 0)
                deadline_ns = now + OUTPUT_CLOSE_MS * 1000000LL;
            if (now >= deadline_ns)
                break;
            int left = (int)((deadline_ns - now) / 1000000LL) + 1;
            timeout = timeout >= 0 && timeout < left ? timeout : left;
        }
        int ready = poll(p, (nfds_t)n, timeout);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            set_error("monitor: poll: %s", strerror(errno));
            return -1;
        }
        if (i_err >= 0 && p[i_err].revents) {
            char *dst = w->msg_len < ERR_MAX - 1 ? w->msg + w->msg_len : sink_buf;
            size_t room = w->msg_len < ERR_MAX - 1 ? ERR_MAX - 1 - w->msg_len : sizeof sink_buf;
            ssize_t got = read(err_fd, dst, room);
            if (got > 0 && dst != sink_buf)
                w->msg_len += (size_t)got;
            if (got == 0 || (got < 0 && errno != EINTR)) {
                w->start_ns = now_ns();
                err_open = 0;
            }
        }
        if (i_status >= 0 && p[i_status].revents) {
            ssize_t got = status_got < sizeof w->job_status
                              ? read(status_fd, (char *)&w->job_status + status_got,
                                     sizeof w->job_status - status_got)
                              : read(status_fd, sink_buf, sizeof sink_buf);
            if (got > 0 && status_got < sizeof w->job_status)
                status_got += (size_t)got;
            if (got == 0 || (got < 0 && errno != EINTR))
                status_open = 0;
        }
        for (int k = 0; k < 2; k++)
            if (i_sink[k] >= 0 && p[i_sink[k]].revents)
                (output_active() ? drain_limited : drain_sink)(o, &sinks[k],
                                                                p[i_sink[k]].revents);
    }
    for (int k = 0; k < 2; k++) {
        if (sinks[k].pipe_fd >= 0) {
            fprintf(stderr, "scheduler-monitor: %s still open %d ms after the job ended\n",
                    sinks[k].name, OUTPUT_CLOSE_MS);
            close(sinks[k].pipe_fd);
            sinks[k].pipe_fd = -1;
        }
    }
    w->msg[w->msg_len] = '\0';
    w->status_len = status_got == sizeof w->job_status ? (ssize_t)status_got : 0;
    return 0;
}

/* ---- the final read ----
 *
 * Once init is reaped the job's pid namespace is gone, and with it every process the job
 * had: its cgroup is empty. Its counters are read here, where a read is a few syscalls,
 * rather than in the agent: every --counter file, then again every SETTLE_MS until two
 * reads agree (the kernel may still be folding the last exits in) or SETTLE_LIMIT_MS
 * passed, then every --gauge once. They go into the exit record as "counter.NAME=TEXT"
 * lines, the text's newlines written as '|'. A file this kernel does not have is left out
 * (the agent counts it 0, as its own read would). Nothing is written, and the agent reads
 * the cgroup itself, when the cgroup is not empty or gone, a file cannot be read, or the
 * texts would not fit in the record. */
#define SETTLE_MS 2
#define SETTLE_LIMIT_MS 100

/* The whole text of an open file from offset 0 into buf (NUL-terminated); its length, or
 * -1 (EFBIG: longer than buf). cgroupfs regenerates a file's text on every read at 0. */
static ssize_t pread_small(int fd, char *buf, size_t size)
{
    size_t used = 0;
    for (;;) {
        ssize_t n = pread(fd, buf + used, size - 1 - used, (off_t)used);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        used += (size_t)n;
        if (used == size - 1) {
            errno = EFBIG;
            return -1;
        }
    }
    buf[used] = '\0';
    return (ssize_t)used;
}

/* True when `path` (a cgroup.events or cgroup.procs file) says no process is left. */
static int cgroup_empty(const char *path)
{
    char text[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = pread_small(fd, text, sizeof text);
    close(fd);
    if (n < 0)
        return 0;
    const char *base = strrchr(path, '/');
    if (base && strcmp(base + 1, "cgroup.events") == 0)
        return strncmp(text, "populated 0\n", 12) == 0 || strstr(text, "\npopulated 0\n");
    return text[0] == '\0';
}

/* Open each file (fds[k]; -1 for one this kernel does not have); 0, or -1 when a file
 * cannot be opened for another reason or the cgroup is gone. */
static int open_counters(const char **paths, int n, int *fds)
{
    for (int k = 0; k < n; k++) {
        fds[k] = open(paths[k], O_RDONLY | O_CLOEXEC);
        if (fds[k] >= 0)
            continue;
        char dir[PATH_MAX];
        struct stat st;
        snprintf(dir, sizeof dir, "%s", paths[k]);
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = '\0';
        /* No such file on this kernel is fine; no cgroup any more is not. */
        if (errno != ENOENT || !slash || stat(dir, &st) != 0)
            return -1;
    }
    return 0;
}

/* Append "counter.NAME=TEXT\n" for each open file to out (used bytes so far); the new
 * length, or -1. */
static ssize_t append_counters(char *out, size_t size, size_t used, const char **names,
                               const int *fds, int n)
{
    for (int k = 0; k < n; k++) {
        char text[COUNTERS_MAX];
        if (fds[k] < 0)
            continue;
        ssize_t len = pread_small(fds[k], text, sizeof text);
        if (len < 0)
            return -1;
        while (len > 0 && text[len - 1] == '\n')
            text[--len] = '\0';
        if (strchr(text, '|'))
            return -1;
        for (char *p = text; *p; p++)
            if (*p == '\n')
                *p = '|';
        int w = snprintf(out + used, size - used, "counter.%s=%s\n", names[k], text);
        if (w < 0 || (size_t)w >= size - used)
            return -1;
        used += (size_t)w;
    }
    return (ssize_t)used;
}

/* The final counters' record lines into out (size COUNTERS_MAX), or "" (see above). The
 * files are opened once and re-read with pread: an open walks kernfs, a re-read does not. */
static void final_counters(const struct opts *o, char *out)
{
    static char again[COUNTERS_MAX];
    int n = o->n_counters + o->n_gauges;
    int fds[n > 0 ? n : 1];
    for (int k = 0; k < n; k++)
        fds[k] = -1;
    out[0] = '\0';
    ssize_t len = -1;
    if (n > 0 && cgroup_empty(o->empty_check) &&
        open_counters(o->counter_paths, o->n_counters, fds) == 0 &&
        open_counters(o->gauge_paths, o->n_gauges, fds + o->n_counters) == 0)
        len = append_counters(out, COUNTERS_MAX, 0, o->counter_names, fds, o->n_counters);
    long long deadline = now_ns() + SETTLE_LIMIT_MS * 1000000LL;
    while (len >= 0 && now_ns() < deadline) {
        struct timespec pause = {0, SETTLE_MS * 1000000L};
        while (nanosleep(&pause, &pause) != 0 && errno == EINTR)
            ;
        ssize_t again_len =
            append_counters(again, sizeof again, 0, o->counter_names, fds, o->n_counters);
        int same = again_len == len && memcmp(again, out, (size_t)len) == 0;
        len = again_len;
        if (len >= 0 && !same)
            memcpy(out, again, (size_t)len + 1);
        if (same)
            break;
    }
    if (len >= 0)
        len = append_counters(out, COUNTERS_MAX, (size_t)len, o->gauge_names,
                              fds + o->n_counters, o->n_gauges);
    for (int k = 0; k < n; k++)
        if (fds[k] >= 0)
            close(fds[k]);
    if (len < 0)
        out[0] = '\0';
}

static int monitor_main(int argc, char **argv)
{
    struct opts o;
    if (parse_args(argc, argv, &o) != 0) {
        if (!o.run_dir) {
            fprintf(stderr, "scheduler-monitor: %s\n", errbuf);
            return 2;
        }
        start_error(o.run_dir);
    }

    /* Nothing the agent leaked should reach the job; 0..2 stay, pointing wherever. */
    if (close_range(3, ~0U, 0) != 0) {
        set_error("monitor: close_range: %s", strerror(errno));
        start_error(o.run_dir);
    }
    for (int fd = 0; fd <= 2; fd++) {
        /* Keep 0..2 occupied so the files opened below never land on them. */
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd) {
            set_error("monitor: open /dev/null: %s", strerror(errno));
            start_error(o.run_dir);
        }
    }

    /* Survive the agent: own session, and ignore what a dying agent's terminal or
     * supervisor would send. (The cgroup kill or a signal to init stops the job.) */
    /* EPERM: we already lead a process group (e.g. started from an interactive shell),
     * which is as detached as we can get. The agent's posix_spawn never does that. */
    if (setsid() < 0 && !(errno == EPERM && getpgrp() == getpid())) {
        set_error("monitor: setsid: %s", strerror(errno));
        start_error(o.run_dir);
    }
    static const int ignored[] = {SIGPIPE, SIGINT, SIGHUP, SIGTERM};
    for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++) {
        if (signal(ignored[i], SIG_IGN) == SIG_ERR) {
            set_error("monitor: signal: %s", strerror(errno));
            start_error(o.run_dir);
        }
    }

    /* Before anything else takes space in the run dir (see RECORD_RESERVE). */
    if (reserve_record(o.run_dir) != 0) {
        set_error("monitor: reserve %s/%s: %s", o.run_dir, RESERVE_NAME, strerror(errno));
        start_error(o.run_dir);
    }

    char buf[PATH_MAX];

    /* The job's stdout and stderr: pipes whose read ends the monitor drains (sinks). */
    int out_p[2], errf_p[2];
    if (make_pipe(out_p) != 0 || make_pipe(errf_p) != 0)
        start_error(o.run_dir);
    struct sink sinks[2] = {{out_p[0], -1, 0, 0, "stdout"}, {errf_p[0], -1, 0, 0, "stderr"}};
    for (int i = 0; i < 2; i++) {
        if (fcntl(sinks[i].pipe_fd, F_SETFL, O_NONBLOCK) != 0) {
            set_error("monitor: fcntl: %s", strerror(errno));
            start_error(o.run_dir);
        }
    }
    int out_fd = out_p[1], errf_fd = errf_p[1];

    for (int i = 0; i < o.n_mkdirs; i++) {
        if (mkdir(o.mkdirs[i], 0755) != 0 && errno != EEXIST) {
            set_error("cgroup: mkdir %s: %s", o.mkdirs[i], strerror(errno));
            start_error(o.run_dir);
        }
    }
    for (int i = 0; i < o.n_writes; i++) {
        if (write_file(o.write_paths[i], o.write_values[i]) != 0) {
            set_error("cgroup: write %s: %s", o.write_paths[i], strerror(errno));
            start_error(o.run_dir);
        }
    }

    int ready_p[2], sync_p[2], err_p[2], status_p[2];
    if (make_pipe(ready_p) != 0 || make_pipe(sync_p) != 0 || make_pipe(err_p) != 0 ||
        make_pipe(status_p) != 0)
        start_error(o.run_dir);

    /* A raw clone behaves like fork() here (no new stack: the child continues on a copy
     * of ours), which is safe because the monitor is single threaded. glibc's cached
     * thread id is stale in the child, so init must not use raise()/abort(); its fork()
     * refreshes it for the job. */
    long flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC;
    if (!o.host_net)
        flags |= CLONE_NEWNET;
    pid_t init = (pid_t)syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (init < 0) {
        set_error("monitor: clone: %s", strerror(errno));
        start_error(o.run_dir);
    }
    if (init == 0) {
        /* Drop the monitor's ends, or EOF on the sync pipe could never happen. */
        if (close(ready_p[0]) != 0 || close(sync_p[1]) != 0 || close(err_p[0]) != 0 ||
            close(status_p[0]) != 0 || close(out_p[0]) != 0 || close(errf_p[0]) != 0)
            child_fail(err_p[1], "init: close: %s", strerror(errno));
        init_main(&o, ready_p[1], sync_p[0], err_p[1], status_p[1], out_fd, errf_fd);
    }
    if (close(ready_p[1]) != 0 || close(sync_p[0]) != 0 || close(err_p[1]) != 0 ||
        close(status_p[1]) != 0 || close(out_fd) != 0 || close(errf_fd) != 0) {
        set_error("monitor: close: %s", strerror(errno));
        goto kill_init;
    }

    /* Wait for init's namespaces; EOF: its setup failed (its reason is on the err pipe). */
    char ready;
    ssize_t got_ready;
    do
        got_ready = read(ready_p[0], &ready, 1);
    while (got_ready < 0 && errno == EINTR);
    if (got_ready != 1) {
        set_error("init: namespace setup failed");
        goto kill_init;
    }
    if (close(ready_p[0]) != 0) {
        set_error("monitor: close: %s", strerror(errno));
        goto kill_init;
    }

    /* Move init into every cgroup before it may run anything; the job forks from it. */
    snprintf(buf, sizeof buf, "%d", (int)init);
    for (int i = 0; i < o.n_procs; i++) {
        if (write_file(o.procs[i], buf) != 0) {
            set_error("cgroup: write %s: %s", o.procs[i], strerror(errno));
            goto kill_init;
        }
    }
    if (write_all(sync_p[1], "g", 1) != 0 || close(sync_p[1]) != 0) {
        set_error("monitor: start init: %s", strerror(errno));
        goto kill_init;
    }

    /* EOF on the err pipe: the job's exec succeeded (or init/the job reported why not);
     * the status pipe carries the job's wait status, then EOF once init is gone. */
    char msg[ERR_MAX];
    struct waits w8 = {.msg = msg};
    if (wait_job(&o, err_p[0], status_p[0], sinks, &w8) != 0)
        goto kill_init;
    long long start_ns = w8.start_ns;
    ssize_t msg_len = (ssize_t)w8.msg_len;
    int job_status = w8.job_status;
    ssize_t got = w8.status_len;

    int init_status;
    struct rusage ru;
    pid_t w;
    do
        w = wait4(init, &init_status, 0, &ru);
    while (w < 0 && errno == EINTR);
    long long end_ns = now_ns();
    if (w < 0) {
        set_error("monitor: wait4: %s", strerror(errno));
        start_error(o.run_dir);
    }

    static char counters[COUNTERS_MAX];
    final_counters(&o, counters);

    int rc;
    if (msg_len > 0)
        rc = write_record(o.run_dir, "start_error", -1, 0, msg, start_ns, end_ns, &ru,
                          counters);
    else if (got == (ssize_t)sizeof job_status && WIFEXITED(job_status))
        rc = write_record(o.run_dir, "exited", WEXITSTATUS(job_status), 0, NULL, start_ns,
                          end_ns, &ru, counters);
    else if (got == (ssize_t)sizeof job_status && WIFSIGNALED(job_status))
        rc = write_record(o.run_dir, "signaled", -1, WTERMSIG(job_status), NULL, start_ns,
                          end_ns, &ru, counters);
    else if (WIFSIGNALED(init_status)) /* init itself was killed (e.g. a cgroup kill) */
        rc = write_record(o.run_dir, "signaled", -1, WTERMSIG(init_status), NULL, start_ns,
                          end_ns, &ru, counters);
    else {
        snprintf(msg, sizeof msg, "init: exited with status %d before the job ended",
                 WIFEXITED(init_status) ? WEXITSTATUS(init_status) : -1);
        rc = write_record(o.run_dir, "start_error", -1, 0, msg, start_ns, end_ns, &ru,
                          counters);
    }
    if (rc != 0) {
        fprintf(stderr, "scheduler-monitor: write %s/exit: %s\n", o.run_dir, strerror(errno));
        return 1;
    }
    return 0;

kill_init:
    /* init is still blocked on the sync pipe (or just past it): SIGKILL always works,
     * since it comes from outside its pid namespace. */
    if (kill(init, SIGKILL) != 0 && errno != ESRCH)
        fprintf(stderr, "scheduler-monitor: kill init: %s\n", strerror(errno));
    while (waitpid(init, NULL, 0) < 0 && errno == EINTR)
        ;
    /* init may have failed its own setup first (then the move failed with ESRCH): its
     * reason is the one to report. Every write end is closed now, so this cannot block. */
    if (read_all(err_p[0], msg, sizeof msg) > 0)
        set_error("%s", msg);
    start_error(o.run_dir);
}

/* ---- fork server ----
 *
 *   scheduler-monitor --fork-server     (fd 0: a stream socket to the agent)
 *
 * Exec'ing the monitor costs about three times the CPU of forking this small, already
 * running process, so the agent keeps one server and asks it for every launch. A request
 * is a 4-byte length (host order) and that many bytes of NUL-terminated strings: argc in
 * decimal, the monitor's argv, then the job's environment (KEY=VALUE). The server forks;
 * the child runs exactly what an exec'd monitor would (same argv, environ = the request's
 * environment, 0..2 on /dev/null). The answer is 4 bytes: the child's pid, or -errno, with
 * a pidfd of the child attached (SCM_RIGHTS) when the pid is valid: the agent waits on it,
 * so a pid recycled after the server reaped the child can never be mistaken for it. The
 * server reaps its exited children and exits at EOF (the agent is gone); its children
 * live on, as exec'd monitors do. It empties its capability bounding set when it starts,
 * so that no job has to (see bounding_set_empty). */
#define REQUEST_MAX (16u << 20)

static int read_full(int fd, void *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = read(fd, (char *)buf + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return done == 0 && n == 0 ? 1 : -1; /* 1: EOF before the first byte */
        done += (size_t)n;
    }
    return 0;
}

static void answer(int sock, int32_t value, int pidfd)
{
    struct iovec iov = {&value, sizeof value};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (pidfd >= 0) {
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof control.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &pidfd, sizeof(int));
    }
    while (sendmsg(sock, &msg, MSG_NOSIGNAL) < 0) {
        if (errno != EINTR)
            exit(0); /* the agent is gone */
    }
}

/* Split a request into argv and envp (pointers into buf); -1 if malformed. */
static int parse_request(char *buf, size_t len, char ***argv_out, int *argc_out, char ***env_out)
{
    if (len == 0 || buf[len - 1] != '\0')
        return -1;
    size_t count = 0;
    for (size_t i = 0; i < len; i++)
        count += buf[i] == '\0';
    char **strings = calloc(count + 2, sizeof *strings);
    if (!strings)
        return -1;
    size_t k = 0;
    for (char *p = buf; p < buf + len; p += strlen(p) + 1)
        strings[k++] = p;
    char *end;
    errno = 0;
    unsigned long argc = strtoul(strings[0], &end, 10);
    if (errno || end == strings[0] || *end || argc == 0 || argc > count - 1) {
        free(strings);
        return -1;
    }
    /* argv is strings[1..argc], NULL-terminated by moving the environment one slot up. */
    char **env = calloc(count - argc + 1, sizeof *env);
    if (!env) {
        free(strings);
        return -1;
    }
    for (size_t i = argc + 1; i < count; i++)
        env[i - argc - 1] = strings[i];
    strings[argc + 1] = NULL;
    *argv_out = strings + 1;
    *argc_out = (int)argc;
    *env_out = env;
    return 0;
}

static int fork_server(void)
{
    sigset_t chld, before;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &chld, &before) != 0)
        return 1;
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        return 1;
    /* The agent going away must end the server, not kill it mid-answer. */
    signal(SIGPIPE, SIG_IGN);
    /* Once for all jobs (see bounding_set_empty); if it cannot, each job drops its own. */
    int failed_cap;
    bounding_set_empty = empty_bounding_set(&failed_cap) == 0;
    prepare_seccomp(); /* once for all jobs: each only installs it */
    /* Fault tests (scheduler/failpoints.py: fork_server_unanswered): die once a monitor
     * is forked, before answering, as a server killed at that moment would. */
    const char *failpoint = getenv("SCHEDULER_FORK_SERVER_FAILPOINT");
    int die_unanswered = failpoint && strcmp(failpoint, "unanswered") == 0;
    for (;;) {
        struct pollfd p[2] = {{0, POLLIN, 0}, {sfd, POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        if (p[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0)
                ;
            while (waitpid(-1, NULL, WNOHANG) > 0)
                ;
        }
        if (!p[0].revents)
            continue;
        uint32_t len;
        int got = read_full(0, &len, sizeof len);
        if (got != 0 || len > REQUEST_MAX)
            return got == 1 ? 0 : 1; /* EOF: the agent closed; else a broken stream */
        char *buf = malloc((size_t)len + 1);
        if (!buf || read_full(0, buf, len) != 0)
            return 1;
        char **argv, **env;
        int argc;
        if (parse_request(buf, len, &argv, &argc, &env) != 0) {
            answer(0, -EINVAL, -1);
            free(buf);
            continue;
        }
        pid_t pid = fork();
        if (pid == 0) {
            int null = open("/dev/null", O_RDWR);
            if (null < 0 || dup2(null, 0) < 0 || sigprocmask(SIG_SETMASK, &before, NULL) != 0)
                _exit(1);
            signal(SIGPIPE, SIG_DFL);
            environ = env;
            exit(monitor_main(argc, argv)); /* closes every fd above 2, sfd included */
        }
        int saved = errno;
        if (pid > 0 && die_unanswered)
            _exit(3);
        int pidfd = pid > 0 ? (int)syscall(SYS_pidfd_open, pid, 0) : -1;
        if (pid > 0 && pidfd < 0) {
            /* No pidfd, no safe wait: the monitor must not run unwatched. It has not been
             * reaped (that happens only in this loop), so the pid is still its own. */
            saved = errno;
            kill(pid, SIGKILL);
            pid = -1;
        }
        answer(0, pid > 0 ? (int32_t)pid : -saved, pidfd);
        if (pidfd >= 0)
            close(pidfd);
        free(argv - 1);
        free(env);
        free(buf);
    }
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--fork-server") == 0)
        return fork_server();
    return monitor_main(argc, argv);
}
