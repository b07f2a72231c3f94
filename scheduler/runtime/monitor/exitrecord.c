/* The exit record: reserved when the monitor starts, written once at the end with the job's
 * final counters, renamed into place so a reader sees a whole record or none. */
#include "monitor.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Space for the exit record, taken when the monitor starts: a full state disk at the
 * job's end cannot lose its exit. Until then the file holds the monitor's pid on its first
 * line ("monitor_pid=N", zeros after it), which the agent reads to re-adopt a running job
 * (one file fewer per attempt: on ext4 without a journal every new inode costs a search
 * past recently deleted ones). The record (at most ERR_MAX + 512 bytes) overwrites the
 * reserved bytes in place (blocks that are already allocated need no new space on tmpfs,
 * ext4 or xfs), the file is cut to the record's length and renamed to DIR/exit, so a reader
 * sees a whole record or none. -1 until reserve_record() succeeded. */
static int reserve_fd = -1;

/* Whose record this is ("--identity": the database, node epoch, job, attempt, as the agent
 * spells it): written as an "identity=" line into the reservation and the exit record, so
 * that a record left by another attempt with the same directory name (a reset database
 * issues ids again) is never taken for this one's. NULL: none given (no line written). */
#define IDENTITY_MAX 200
static const char *record_identity;

/* Keep `text` as the identity; -1 (with `e` filled) if it is not 1..IDENTITY_MAX bytes of
 * [A-Za-z0-9:._-] (it becomes the value of a record line). */
int set_identity(const char *text, struct err *e)
{
    static const char allowed[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                  "0123456789:._-";
    size_t len = strlen(text);
    if (len == 0 || len > IDENTITY_MAX || strspn(text, allowed) != len) {
        return fail(e, "monitor: bad --identity %.64s", text);
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

int reserve_record(const char *dir, struct err *e)
{
    char path[PATH_MAX];
    static char block[RECORD_RESERVE];
    if (join(path, sizeof path, dir, RESERVE_NAME) != 0)
        return fail_errno(e, "monitor: reserve %s/%s", dir, RESERVE_NAME);
    snprintf(block, sizeof block, "monitor_pid=%d\nmonitor_start=%llu\n%s", (int)getpid(),
             start_ticks(), identity_line());
    /* Written whole into a file created empty: a reader sees the line or nothing. */
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return fail_errno(e, "monitor: reserve %s/%s", dir, RESERVE_NAME);
    if (write_all(fd, block, sizeof block) != 0) {
        fail_errno(e, "monitor: reserve %s/%s", dir, RESERVE_NAME);
        close(fd);
        unlink(path);
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
int write_record(const char *dir, const char *kind, int exit_code, int sig,
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

/* Record `e` as a start error (no job ran) and exit. */
void start_error(const char *dir, const struct err *e)
{
    struct rusage zero = {0};
    long long t = now_ns();
    if (write_record(dir, "start_error", -1, 0, e->msg, t, t, &zero, "") != 0) {
        fprintf(stderr, "scheduler-monitor: write %s/exit: %s (start error was: %s)\n", dir,
                strerror(errno), e->msg);
        exit(1);
    }
    exit(0);
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
void final_counters(const struct opts *o, char *out)
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
