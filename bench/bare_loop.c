/*
 * The limit for launch speed: the kernel work of one isolated job, with nothing else.
 *
 *   bare_loop JOBS INFLIGHT PARENT_DIR...
 *
 * Per job: mkdir a leaf under every PARENT_DIR (one per cgroup hierarchy the driver uses),
 * clone a child into new pid/mount/uts/ipc/net namespaces, write its pid into every leaf's
 * cgroup.procs, let it go; the child makes its mounts private, mounts a fresh /proc and
 * execs /bin/true; wait for it, read the counters (cpu, memory peak, pids) and rmdir the
 * leaves. INFLIGHT worker processes share the JOBS; prints "jobs seconds".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void write_file(const char *path, const char *value)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, value, strlen(value)) < 0 || close(fd) != 0)
        die(path);
}

static long long read_counter(const char *path)
{
    char buf[64];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    return atoll(buf);
}

static void one_job(int nparents, char **parents, int worker, int index)
{
    char leaf[nparents][4096], path[4096], pid_text[32];
    for (int i = 0; i < nparents; i++) {
        snprintf(leaf[i], sizeof leaf[i], "%s/bare-%d-%d", parents[i], worker, index);
        if (mkdir(leaf[i], 0755) != 0)
            die(leaf[i]);
    }
    int go[2];
    if (pipe2(go, O_CLOEXEC) != 0)
        die("pipe");
    long flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET;
    pid_t child = (pid_t)syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (child < 0)
        die("clone");
    if (child == 0) {
        char c;
        close(go[1]);
        if (read(go[0], &c, 1) != 1)
            _exit(1);
        if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
            _exit(2);
        char *argv[] = {"true", NULL};
        execv("/bin/true", argv);
        _exit(3);
    }
    close(go[0]);
    snprintf(pid_text, sizeof pid_text, "%d", (int)child);
    for (int i = 0; i < nparents; i++) {
        snprintf(path, sizeof path, "%s/cgroup.procs", leaf[i]);
        write_file(path, pid_text);
    }
    if (write(go[1], "g", 1) != 1)
        die("go");
    close(go[1]);
    int status;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "job failed: status %d\n", status);
        exit(1);
    }
    static const char *counters[] = {"cpuacct.usage", "memory.max_usage_in_bytes",
                                     "pids.current", "cpu.stat"};
    for (int i = 0; i < nparents; i++)
        for (size_t k = 0; k < sizeof counters / sizeof counters[0]; k++) {
            snprintf(path, sizeof path, "%s/%s", leaf[i], counters[k]);
            (void)read_counter(path);
        }
    for (int i = 0; i < nparents; i++) {
        for (int tries = 0; rmdir(leaf[i]) != 0; tries++) {
            if (errno != EBUSY || tries > 1000)
                die(leaf[i]);
            usleep(100);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: bare_loop JOBS INFLIGHT PARENT_DIR...\n");
        return 2;
    }
    int jobs = atoi(argv[1]), inflight = atoi(argv[2]);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int w = 0; w < inflight; w++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            for (int i = w; i < jobs; i += inflight)
                one_job(argc - 3, argv + 3, w, i);
            _exit(0);
        }
    }
    int failed = 0, status;
    while (wait(&status) > 0)
        failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%d %.6f\n", jobs, seconds);
    return failed;
}
