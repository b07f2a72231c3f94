/* The isolation steps of a job's start as the monitor runs them (its own functions), one at
 * a time, each in a child that takes a new mount namespace (a copy of the host's, made
 * private) and exits; per step the median wall time of an iteration and the child's CPU
 * time (user + system, its namespace's teardown included), steps taken round robin so that
 * the host's drift hits all alike.
 *
 * Against the monitor's sources (scheduler/runtime/monitor/, linked in without main.c and forkserver.c):
 *   cc -O2 -DSPLIT -DMONITOR=\"DIR\" -IDIR -o isolation_steps bench/isolation_steps.c \
 *      DIR/{args,drain,exitrecord,init,mounts,seccomp,util}.c
 * Against a monitor.c of one file (before the split; this file includes it):
 *   cc -O2 -o isolation_steps bench/isolation_steps.c -DMONITOR=\"path/to/monitor.c\"
 *      [-DDETACHING]   (a monitor.c from before seal_private_mounts: mount_tmp + detach)
 * Then:
 *   [ONLY=K] isolation_steps ITERATIONS HIERARCHY...   (as root; the job's hierarchies, e.g.
 *      memory: makes and removes /sys/fs/cgroup/<h>/isolation-steps-bench in each; the
 *      cgroup mounts not named are hidden, as the agent's CgroupView does; ONLY=K runs step
 *      K alone and prints the children's CPU per iteration: bench/isolation_steps.py counts
 *      the kernel threads' CPU around such runs)
 * bench/isolation_steps.py does the compiling.
 */
#ifdef SPLIT
#include "monitor.h"
/* The split monitor's steps return -1 with an error value; the bench's child exits on it. */
static struct err bench_err;
#define ERR_ARG &bench_err
#define CHECK(call)                                                                          \
    do {                                                                                     \
        if ((call) != 0) {                                                                   \
            fprintf(stderr, "%s\n", bench_err.msg);                                         \
            _exit(1);                                                                        \
        }                                                                                    \
    } while (0)
#else
#define main monitor_entry
#include MONITOR
#undef main
/* One file's steps report over an err pipe (fd 2 here) and exit themselves. */
#define ERR_ARG 2
#define CHECK(call) call
#endif
#include <errno.h>
#include <linux/keyctl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef DETACHING
static void prepare_seccomp(void) {} /* that monitor builds the filter in apply_seccomp */
#endif

#define MAXH 16
static struct opts bench_opts;
static const char *bench_leaf = "isolation-steps-bench";

static void die(const char *what)
{
    fprintf(stderr, "%s: %s\n", what, strerror(errno));
    _exit(1);
}

static void s_none(void) {}

static void s_mounts(void)
{
#ifdef DETACHING
    mount_tmp(&bench_opts, "/tmp", 2);
    private_mounts(&bench_opts, "", 1, 2);
    cgroup_view(&bench_opts, 2);
#else
    CHECK(private_mounts(&bench_opts, "", 1, ERR_ARG));
    CHECK(cgroup_view(&bench_opts, ERR_ARG));
    CHECK(seal_private_mounts("", ERR_ARG));
#endif
}

static void s_private_only(void)
{
#ifdef DETACHING
    mount_tmp(&bench_opts, "/tmp", 2);
    private_mounts(&bench_opts, "", 1, 2);
#else
    CHECK(private_mounts(&bench_opts, "", 1, ERR_ARG));
    CHECK(seal_private_mounts("", ERR_ARG));
#endif
}

static void s_keyring(void)
{
    if (syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL) < 0)
        die("keyctl");
}

static void s_seccomp(void)
{
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        die("no_new_privs");
    CHECK(apply_seccomp(ERR_ARG));
}

struct step {
    const char *name;
    void (*fn)(void);
};

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

static void once(const struct step *st, long long *wall, long long *cpu)
{
    long long t0 = now_ns();
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        if (unshare(CLONE_NEWNS) != 0)
            die("unshare");
        if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
            die("private");
        st->fn();
        _exit(0);
    }
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) != pid || status != 0) {
        fprintf(stderr, "%s: child failed\n", st->name);
        exit(1);
    }
    *wall = now_ns() - t0;
    *cpu = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000LL +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000LL;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s ITERATIONS HIERARCHY...\n", argv[0]);
        return 2;
    }
    int iterations = atoi(argv[1]);
    static const char *names[MAXH], *dirs[MAXH], *hides[MAXH];
    static char dir_text[MAXH][256];
    int n = 0, n_hide = 0;
    for (int i = 2; i < argc && n < MAXH; i++, n++) {
        names[n] = argv[i];
        snprintf(dir_text[n], sizeof dir_text[n], "/sys/fs/cgroup/%s/%s", argv[i], bench_leaf);
        dirs[n] = dir_text[n];
        if (mkdir(dirs[n], 0755) != 0 && errno != EEXIST)
            die(dirs[n]);
    }
    /* The cgroup mounts under /sys/fs/cgroup the job is not in: hidden. */
    FILE *mi = fopen("/proc/self/mountinfo", "r");
    char line[1024];
    while (mi && fgets(line, sizeof line, mi) && n_hide < MAXH) {
        char mp[512], *sep = strstr(line, " - ");
        if (!sep || sscanf(line, "%*s %*s %*s %*s %511s", mp) != 1)
            continue;
        if (strncmp(sep + 3, "cgroup", 6) != 0 || strncmp(mp, "/sys/fs/cgroup/", 15) != 0)
            continue;
        int in = 0;
        for (int k = 0; k < n; k++)
            in |= strcmp(mp + 15, names[k]) == 0;
        if (!in)
            hides[n_hide++] = strdup(mp + 15);
    }
    if (mi)
        fclose(mi);
    bench_opts.tmp_size = 64ULL << 20;
    bench_opts.view_names = names;
    bench_opts.view_dirs = dirs;
    bench_opts.n_views = n;
    bench_opts.hide_names = hides;
    bench_opts.n_hides = n_hide;
    prepare_seccomp(); /* as the fork server does */
    const struct step steps[] = {
        {"new mount ns only", s_none},
        {"private dirs (no cgroup view)", s_private_only},
        {"private dirs + cgroup view", s_mounts},
        {"keyring", s_keyring},
        {"no_new_privs + seccomp", s_seccomp},
    };
    enum { NS = sizeof steps / sizeof steps[0] };
    /* ONLY=k: step k alone, ITERATIONS times in a row, printing the children's CPU in us per
     * iteration (for a caller that also counts the kernel's threads around the run). */
    const char *only = getenv("ONLY");
    if (only) {
        int k = atoi(only);
        long long w, c, sum = 0;
        for (int i = 0; i < iterations; i++) {
            once(&steps[k], &w, &c);
            sum += c;
        }
        printf("%.1f\n", sum / 1e3 / iterations);
        for (int i = 0; i < n; i++)
            rmdir(dirs[i]);
        return 0;
    }
    long long *wall[NS], *cpu[NS];
    for (int k = 0; k < NS; k++) {
        wall[k] = calloc((size_t)iterations, sizeof **wall);
        cpu[k] = calloc((size_t)iterations, sizeof **cpu);
    }
    for (int i = 0; i < iterations; i++)
        for (int k = 0; k < NS; k++)
            once(&steps[k], &wall[k][i], &cpu[k][i]);
    printf("%s: %d iterations, %d hierarchies bound, %d hidden; medians (p25-p75)\n", MONITOR,
           iterations, n, n_hide);
    for (int k = 0; k < NS; k++) {
        qsort(wall[k], (size_t)iterations, sizeof **wall, cmp_ll);
        qsort(cpu[k], (size_t)iterations, sizeof **cpu, cmp_ll);
        printf("%-30s wall %6.1f us (%6.1f-%6.1f)  cpu %6.1f us (%6.1f-%6.1f)\n", steps[k].name,
               wall[k][iterations / 2] / 1e3, wall[k][iterations / 4] / 1e3,
               wall[k][iterations * 3 / 4] / 1e3, cpu[k][iterations / 2] / 1e3,
               cpu[k][iterations / 4] / 1e3, cpu[k][iterations * 3 / 4] / 1e3);
    }
    for (int i = 0; i < n; i++)
        rmdir(dirs[i]);
    return 0;
}
