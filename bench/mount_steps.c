/* What each step of a job's isolation setup costs, one variant at a time.
 *
 * Per iteration: fork a child that takes a new mount namespace (as the monitor's init
 * does: a copy of the host's mount tree, made private), runs the variant's steps, and
 * exits (its namespace torn down with it); the parent waits for it. Prints, per variant,
 * the median wall time of an iteration and the children's CPU time (user + system,
 * teardown included) per iteration; the "ns only" line is the part every variant shares.
 * Work the kernel defers to its own threads (RCU callbacks, expedited grace periods run on
 * other CPUs) shows in the wall time only.
 *
 * Usage: mount_steps ITERATIONS HIERARCHY...   (as root; makes and removes
 * /sys/fs/cgroup/<hierarchy>/mount-steps-bench in each named hierarchy, e.g. memory, for
 * the cgroup-view variants, the hierarchies not named being the ones a job is not in, and
 * /run/mount-steps-empty; variants run round robin, so the host's drift hits all alike)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/keyctl.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/mount.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXH 16
static const char *hier[MAXH];   /* hierarchies the "job" is in */
static int n_hier;
static const char *other[MAXH];  /* cgroup mount points it is not in */
static int n_other;
static char job_dir[MAXH][256];
static const char *leaf = "mount-steps-bench";

static void ms_die(const char *what)
{
    fprintf(stderr, "%s: %s\n", what, strerror(errno));
    _exit(1);
}

static void ms_tmpfs(const char *where)
{
    if (mount("tmpfs", where, "tmpfs", MS_NOSUID | MS_NODEV, "size=67108864,mode=1777") != 0)
        ms_die(where);
}

static void ms_bind(const char *from, const char *to)
{
    if (mount(from, to, NULL, MS_BIND, NULL) != 0)
        ms_die(to);
}

/* ---- variants ---- */

static void v_none(void) {}

static void v_tmp(void) { ms_tmpfs("/tmp"); }

static void v_four_tmpfs(void)
{
    ms_tmpfs("/tmp");
    ms_tmpfs("/var/tmp");
    ms_tmpfs("/run/lock");
    ms_tmpfs("/dev/shm");
}

static void v_cgroup_bind_detach(void)
{
    char p[256];
    for (int i = 0; i < n_hier; i++) {
        snprintf(p, sizeof p, "/sys/fs/cgroup/%s", hier[i]);
        ms_bind(job_dir[i], p);
    }
    for (int i = 0; i < n_other; i++) {
        snprintf(p, sizeof p, "/sys/fs/cgroup/%s", other[i]);
        if (umount2(p, MNT_DETACH) != 0)
            ms_die(p);
    }
}

static void v_cgroup_binds_only(void)
{
    char p[256];
    for (int i = 0; i < n_hier; i++) {
        snprintf(p, sizeof p, "/sys/fs/cgroup/%s", hier[i]);
        ms_bind(job_dir[i], p);
    }
}

static void v_one_detach(void)
{
    char p[256];
    snprintf(p, sizeof p, "/sys/fs/cgroup/%s", other[0]);
    if (umount2(p, MNT_DETACH) != 0)
        ms_die(p);
}

static void v_main(void)
{
    v_four_tmpfs();
    v_cgroup_bind_detach();
}

/* The cgroup view as one tmpfs over /sys/fs/cgroup (covering every hierarchy at once, no
 * detach) with a directory per hierarchy the job is in, its own cgroup bound there from
 * clones taken (open_tree) before the cover. */
static void v_cg_cover(void)
{
    char p[256];
    int fds[MAXH];
    for (int i = 0; i < n_hier; i++)
        if ((fds[i] = (int)syscall(SYS_open_tree, AT_FDCWD, job_dir[i],
                                   OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)) < 0)
            ms_die(job_dir[i]);
    if (mount("tmpfs", "/sys/fs/cgroup", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "size=4096,nr_inodes=32,mode=555") != 0)
        ms_die("cover");
    for (int i = 0; i < n_hier; i++) {
        snprintf(p, sizeof p, "/sys/fs/cgroup/%s", hier[i]);
        if (mkdir(p, 0555) != 0)
            ms_die(p);
        if (syscall(SYS_move_mount, fds[i], "", AT_FDCWD, p, MOVE_MOUNT_F_EMPTY_PATH) != 0)
            ms_die(p);
        close(fds[i]);
    }
}

/* The job's cgroups bound over their hierarchies' mount points, then each hidden one
 * covered by a bind of an empty directory (instead of detached). */
static void v_cg_cover_hidden(void)
{
    char p[256];
    for (int i = 0; i < n_hier; i++) {
        snprintf(p, sizeof p, "/sys/fs/cgroup/%s", hier[i]);
        ms_bind(job_dir[i], p);
    }
    for (int i = 0; i < n_other; i++) {
        snprintf(p, sizeof p, "/sys/fs/cgroup/%s", other[i]);
        ms_bind("/run/mount-steps-empty", p);
    }
}

/* A template mount namespace made once: the host's, with /sys/fs/cgroup a small read-only
 * tmpfs holding one empty directory per hierarchy. */
static int template_ns = -1;

static void make_template(void)
{
    int pipefd[2];
    if (pipe(pipefd) != 0)
        ms_die("pipe");
    pid_t pid = fork();
    if (pid == 0) {
        char p[256];
        if (unshare(CLONE_NEWNS) != 0 || mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
            ms_die("template ns");
        if (umount2("/sys/fs/cgroup", MNT_DETACH) != 0)
            ms_die("template detach");
        if (mount("tmpfs", "/sys/fs/cgroup", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  "size=4096,nr_inodes=32,mode=755") != 0)
            ms_die("template tmpfs");
        for (int i = 0; i < n_hier; i++) {
            snprintf(p, sizeof p, "/sys/fs/cgroup/%s", hier[i]);
            if (mkdir(p, 0555) != 0)
                ms_die(p);
        }
        if (mount(NULL, "/sys/fs/cgroup", NULL, MS_REMOUNT | MS_RDONLY, NULL) != 0)
            ms_die("template ro");
        (void)!write(pipefd[1], "r", 1);
        pause(); /* until the parent kills it, holding the namespace */
        _exit(0);
    }
    char c;
    if (read(pipefd[0], &c, 1) != 1)
        ms_die("template ready");
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/mnt", (int)pid);
    template_ns = open(path, O_RDONLY | O_CLOEXEC);
    if (template_ns < 0)
        ms_die(path);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* Per job from the template: the job's cgroup directories cloned (open_tree) in the host's
 * namespace, then a copy of the template, the four tmpfs, the clones moved in. */
static void v_template(void)
{
    char p[256];
    int fds[MAXH];
    /* once() made a host copy already (dropped by the setns); a real init would not. */
    for (int i = 0; i < n_hier; i++)
        if ((fds[i] = (int)syscall(SYS_open_tree, AT_FDCWD, job_dir[i],
                                   OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)) < 0)
            ms_die(job_dir[i]);
    if (setns(template_ns, CLONE_NEWNS) != 0 || unshare(CLONE_NEWNS) != 0)
        ms_die("setns");
    v_four_tmpfs();
    for (int i = 0; i < n_hier; i++) {
        snprintf(p, sizeof p, "/sys/fs/cgroup/%s", hier[i]);
        if (syscall(SYS_move_mount, fds[i], "", AT_FDCWD, p, MOVE_MOUNT_F_EMPTY_PATH) != 0)
            ms_die(p);
        close(fds[i]);
    }
}

static void v_four_tmpfs_empty(void)
{
    v_four_tmpfs();
    v_cg_cover_hidden();
}

static void v_four_tmpfs_cover(void)
{
    v_four_tmpfs();
    v_cg_cover();
}

/* Tmpfs part only: one tmpfs, three binds out of it and /tmp's over it. */
static void v_one_tmpfs_no_cg(void)
{
    ms_tmpfs("/tmp");
    mode_t old = umask(0);
    const char *dirs[] = {"/tmp/.t", "/tmp/.shm", "/tmp/.var-tmp", "/tmp/.lock"};
    for (int i = 0; i < 4; i++)
        if (mkdir(dirs[i], 01777) != 0)
            ms_die(dirs[i]);
    umask(old);
    ms_bind("/tmp/.shm", "/dev/shm");
    ms_bind("/tmp/.var-tmp", "/var/tmp");
    ms_bind("/tmp/.lock", "/run/lock");
    ms_bind("/tmp/.t", "/tmp");
}

/* A seccomp filter of about the default's size: 60 instructions of compares. */
static struct sock_filter prog_ins[64];
static struct sock_fprog prog;

static void build_prog(void)
{
    int n = 0;
    prog_ins[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                                 offsetof(struct seccomp_data, nr));
    for (int i = 0; i < 58; i++)
        prog_ins[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
                                                     (uint32_t)(400 + i), 58 - i, 0);
    prog_ins[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    prog_ins[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K,
                                                 SECCOMP_RET_ERRNO | EPERM);
    prog.len = (unsigned short)n;
    prog.filter = prog_ins;
}

static void v_seccomp(void)
{
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        ms_die("nnp");
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0)
        ms_die("seccomp");
}

static struct sock_filter allow_ins[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
static struct sock_fprog allow_prog = {1, allow_ins};

static void v_seccomp_one(void)
{
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        ms_die("nnp");
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &allow_prog) != 0)
        ms_die("seccomp");
}

static void v_keyring(void)
{
    if (syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL) < 0)
        ms_die("keyctl");
}

struct variant {
    const char *name;
    void (*fn)(void);
};

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

static long long ms_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long rusage_ns(const struct rusage *ru)
{
    return (ru->ru_utime.tv_sec + ru->ru_stime.tv_sec) * 1000000000LL +
           (ru->ru_utime.tv_usec + ru->ru_stime.tv_usec) * 1000LL;
}

/* One iteration of variant v: (wall, the child's CPU) in ns. */
static void once(const struct variant *v, long long *wall, long long *cpu)
{
    long long t0 = ms_now_ns();
    pid_t pid = fork();
    if (pid < 0)
        ms_die("fork");
    if (pid == 0) {
        if (unshare(CLONE_NEWNS) != 0)
            ms_die("unshare");
        if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
            ms_die("private");
        v->fn();
        _exit(0);
    }
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) != pid || status != 0) {
        fprintf(stderr, "%s: child failed\n", v->name);
        exit(1);
    }
    *wall = ms_now_ns() - t0;
    *cpu = rusage_ns(&ru);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s ITERATIONS HIERARCHY...\n", argv[0]);
        return 2;
    }
    int iterations = atoi(argv[1]);
    for (int i = 2; i < argc && n_hier < MAXH; i++)
        hier[n_hier++] = argv[i];
    /* The cgroup mount points under /sys/fs/cgroup the job is not in. */
    FILE *mi = fopen("/proc/self/mountinfo", "r");
    char line[1024];
    while (mi && fgets(line, sizeof line, mi)) {
        char mp[512], *sep = strstr(line, " - ");
        if (!sep || sscanf(line, "%*s %*s %*s %*s %511s", mp) != 1)
            continue;
        if (strncmp(sep + 3, "cgroup", 6) != 0 || strncmp(mp, "/sys/fs/cgroup/", 15) != 0)
            continue;
        int in = 0;
        for (int k = 0; k < n_hier; k++)
            in |= strcmp(mp + 15, hier[k]) == 0;
        if (!in && n_other < MAXH)
            other[n_other++] = strdup(mp + 15);
    }
    if (mi)
        fclose(mi);
    for (int i = 0; i < n_hier; i++) {
        snprintf(job_dir[i], sizeof job_dir[i], "/sys/fs/cgroup/%s/%s", hier[i], leaf);
        if (mkdir(job_dir[i], 0755) != 0 && errno != EEXIST)
            ms_die(job_dir[i]);
    }
    build_prog();
    make_template();
    if (mkdir("/run/mount-steps-empty", 0555) != 0 && errno != EEXIST)
        ms_die("empty dir");
    const struct variant variants[] = {
        {"ns only", v_none},
        {"tmpfs /tmp (old main)", v_tmp},
        {"4 tmpfs (main)", v_four_tmpfs},
        {"cgroup binds + detaches", v_cgroup_bind_detach},
        {"cgroup binds only", v_cgroup_binds_only},
        {"one detach", v_one_detach},
        {"main: 4 tmpfs + cgroup view", v_main},
        {"one tmpfs + 4 binds", v_one_tmpfs_no_cg},
        {"cgroup cover (open_tree)", v_cg_cover},
        {"cgroup binds + empty binds", v_cg_cover_hidden},
        {"4 tmpfs + cgroup cover", v_four_tmpfs_cover},
        {"template ns (+ host copy)", v_template},
        {"4 tmpfs + binds + empty binds", v_four_tmpfs_empty},
        {"keyring join", v_keyring},
        {"seccomp install (60 ins)", v_seccomp},
        {"seccomp install (1 ins)", v_seccomp_one},
    };
    /* Round robin over the variants, so that the host's drift hits them all alike. */
    enum { NV = sizeof variants / sizeof variants[0] };
    long long *wall[NV], *cpu[NV];
    for (int k = 0; k < NV; k++) {
        wall[k] = calloc((size_t)iterations, sizeof **wall);
        cpu[k] = calloc((size_t)iterations, sizeof **cpu);
    }
    for (int i = 0; i < iterations; i++)
        for (int k = 0; k < NV; k++)
            once(&variants[k], &wall[k][i], &cpu[k][i]);
    printf("%d iterations each, medians (p25-p75); the child's CPU includes its teardown\n",
           iterations);
    for (int k = 0; k < NV; k++) {
        qsort(wall[k], (size_t)iterations, sizeof **wall, cmp_ll);
        qsort(cpu[k], (size_t)iterations, sizeof **cpu, cmp_ll);
        printf("%-28s wall %6.1f us (%6.1f-%6.1f)  cpu %6.1f us (%6.1f-%6.1f)\n",
               variants[k].name, wall[k][iterations / 2] / 1e3, wall[k][iterations / 4] / 1e3,
               wall[k][iterations * 3 / 4] / 1e3, cpu[k][iterations / 2] / 1e3,
               cpu[k][iterations / 4] / 1e3, cpu[k][iterations * 3 / 4] / 1e3);
    }
    for (int i = 0; i < n_hier; i++)
        rmdir(job_dir[i]);
    rmdir("/run/mount-steps-empty");
    return 0;
}
