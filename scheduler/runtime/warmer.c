/*
 * scheduler-warmer: keeps the kernel's cgroup migration lock "warm" while jobs arrive.
 *
 *   scheduler-warmer --procs CGROUP/cgroup.procs --interval-us N --window-ms M
 *
 * Why: every write to a cgroup.procs file takes the global cgroup_threadgroup_rwsem for
 * writing (a percpu rwsem). When nothing has taken it for about one RCU grace period, the
 * writer first waits for a whole grace period (rcu_sync_enter), 5-12 ms on a small VM, and
 * that wait sits between a job's claim and its first instruction, because the monitor must
 * put the job's init into its cgroups before it runs anything. A writer that comes within a
 * grace period of the previous one does not wait.
 *
 * So, while the agent says jobs are coming (any byte on stdin), this process re-writes its
 * own pid into its own cgroup (a no-op move that still takes the lock) every N us, for M ms
 * after the last byte. The first write after an idle spell pays the grace period itself,
 * overlapping the agent's claim query. Idle, it blocks in poll() and costs nothing. This is
 * what the cgroup2 mount option favordynmods does for a whole host, limited to the time the
 * agent is busy. The cost: readers of the rwsem (fork, exit) take their slower path (one
 * more memory barrier) while it is warm.
 *
 * It says "ok" on stdout once it sits in its cgroup. It exits when stdin reaches EOF (the
 * agent closed it or died); PR_SET_PDEATHSIG covers an agent killed before it could close
 * anything.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000LL + ts.tv_nsec / 1000000LL;
}

static long parse_positive(const char *flag, const char *text, long max)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v <= 0 || v > max) {
        fprintf(stderr, "scheduler-warmer: %s must be in 1..%ld, got %s\n", flag, max, text);
        exit(2);
    }
    return v;
}

/* One move of ourselves into the cgroup we are already in: the lock is what we want. */
static int touch(const char *procs, const char *pid)
{
    int fd = open(procs, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, pid, strlen(pid));
    int saved = errno;
    close(fd);
    errno = saved;
    return n < 0 ? -1 : 0;
}

int main(int argc, char **argv)
{
    const char *procs = NULL;
    long interval_us = 0, window_ms = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--procs") == 0)
            procs = argv[i + 1];
        else if (strcmp(argv[i], "--interval-us") == 0)
            interval_us = parse_positive("--interval-us", argv[i + 1], 1000000);
        else if (strcmp(argv[i], "--window-ms") == 0)
            window_ms = parse_positive("--window-ms", argv[i + 1], 3600000);
        else
            break;
    }
    if (!procs || !interval_us || !window_ms || argc != 7) {
        fprintf(stderr, "scheduler-warmer: usage: --procs PATH --interval-us N --window-ms M\n");
        return 2;
    }
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
        fprintf(stderr, "scheduler-warmer: prctl: %s\n", strerror(errno));
        return 1;
    }
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    /* The first move places us; a failure here is a setup error the agent reports. */
    if (touch(procs, pid) != 0) {
        fprintf(stderr, "scheduler-warmer: write %s: %s\n", procs, strerror(errno));
        return 1;
    }
    /* Tell the agent we are in place; stdout is not needed after that. */
    if (write(1, "ok\n", 3) != 3 || close(1) != 0) {
        fprintf(stderr, "scheduler-warmer: write ok: %s\n", strerror(errno));
        return 1;
    }

    long long warm_until = 0, last_touch = 0;
    long long interval_ms = (interval_us + 999) / 1000;
    for (;;) {
        long long now = now_ms();
        int timeout = -1; /* idle: sleep until the agent says something */
        if (now < warm_until) {
            long long due = last_touch + interval_ms - now;
            timeout = due > 0 ? (int)due : 0;
        }
        struct pollfd in = {.fd = 0, .events = POLLIN};
        int r = poll(&in, 1, timeout);
        if (r < 0 && errno != EINTR) {
            fprintf(stderr, "scheduler-warmer: poll: %s\n", strerror(errno));
            return 1;
        }
        now = now_ms();
        if (r > 0) {
            char buf[256];
            ssize_t n = read(0, buf, sizeof buf);
            if (n == 0)
                return 0; /* the agent is gone or done */
            if (n < 0 && errno != EINTR && errno != EAGAIN) {
                fprintf(stderr, "scheduler-warmer: read: %s\n", strerror(errno));
                return 1;
            }
            warm_until = now + window_ms;
        }
        /* At most one move per interval, however often the agent pokes. */
        if (now < warm_until && now - last_touch >= interval_ms) {
            if (touch(procs, pid) != 0) {
                fprintf(stderr, "scheduler-warmer: write %s: %s\n", procs, strerror(errno));
                return 1;
            }
            last_touch = now;
        }
    }
}
