/* The monitor: one per job attempt (see monitor.h for the three processes and their pipes).
 *
 * monitor_main is the sequence of its steps; each step returns 0, or -1 with a `struct err`
 * saying what failed, and monitor_main records that as the attempt's start error, once. */
#include "monitor.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int make_pipe(int fds[2], struct err *e)
{
    if (pipe2(fds, O_CLOEXEC) != 0)
        return fail_errno(e, "monitor: pipe");
    return 0;
}

/* Nothing the agent leaked reaches the job; the monitor survives the agent. */
static int detach(struct err *e)
{
    /* 0..2 stay, pointing wherever. */
    if (close_range(3, ~0U, 0) != 0)
        return fail_errno(e, "monitor: close_range");
    for (int fd = 0; fd <= 2; fd++) {
        /* Keep 0..2 occupied so the files opened below never land on them. */
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd)
            return fail_errno(e, "monitor: open /dev/null");
    }
    /* Survive the agent: own session, and ignore what a dying agent's terminal or
     * supervisor would send. (The cgroup kill or a signal to init stops the job.) */
    /* EPERM: we already lead a process group (e.g. started from an interactive shell),
     * which is as detached as we can get. The agent's posix_spawn never does that. */
    if (setsid() < 0 && !(errno == EPERM && getpgrp() == getpid()))
        return fail_errno(e, "monitor: setsid");
    static const int ignored[] = {SIGPIPE, SIGINT, SIGHUP, SIGTERM};
    for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++) {
        if (signal(ignored[i], SIG_IGN) == SIG_ERR)
            return fail_errno(e, "monitor: signal");
    }
    return 0;
}

/* The job's stdout and stderr: pipes whose read ends the monitor drains (sinks); their
 * write ends go to the job (*out_fd, *errf_fd). */
static int open_output_pipes(struct sink sinks[2], int *out_fd, int *errf_fd, struct err *e)
{
    int out_p[2], errf_p[2];
    if (make_pipe(out_p, e) != 0 || make_pipe(errf_p, e) != 0)
        return -1;
    sinks[0] = (struct sink){out_p[0], -1, 0, 0, "stdout", 0};
    sinks[1] = (struct sink){errf_p[0], -1, 0, 0, "stderr", 0};
    for (int i = 0; i < 2; i++) {
        if (fcntl(sinks[i].pipe_fd, F_SETFL, O_NONBLOCK) != 0)
            return fail_errno(e, "monitor: fcntl");
    }
    *out_fd = out_p[1];
    *errf_fd = errf_p[1];
    return 0;
}

/* The cgroup plan the agent gave: directories to make, values to write. */
static int run_cgroup_plan(const struct opts *o, struct err *e)
{
    for (int i = 0; i < o->n_mkdirs; i++) {
        if (mkdir(o->mkdirs[i], 0755) != 0 && errno != EEXIST)
            return fail_errno(e, "cgroup: mkdir %s", o->mkdirs[i]);
    }
    for (int i = 0; i < o->n_writes; i++) {
        if (write_file(o->write_paths[i], o->write_values[i]) != 0)
            return fail_errno(e, "cgroup: write %s", o->write_paths[i]);
    }
    return 0;
}

/* The pipes between the monitor and init ([0]: read end, [1]: write end). */
struct pipes {
    int ready[2], sync[2], err[2], status[2];
};

/* Clone init into its namespaces; it never returns in the child. A raw clone behaves like
 * fork() here (no new stack: the child continues on a copy of ours), which is safe because
 * the monitor is single threaded. glibc's cached thread id is stale in the child, so init
 * must not use raise()/abort(); its fork() refreshes it for the job. */
static pid_t clone_init(const struct opts *o, const struct pipes *p, const struct sink *sinks,
                        int out_fd, int errf_fd, struct err *e)
{
    long flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC;
    if (!o->host_net)
        flags |= CLONE_NEWNET;
    pid_t init = (pid_t)syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (init < 0) {
        fail_errno(e, "monitor: clone");
        return -1;
    }
    if (init == 0) {
        /* Drop the monitor's ends, or EOF on the sync pipe could never happen. */
        if (close(p->ready[0]) != 0 || close(p->sync[1]) != 0 || close(p->err[0]) != 0 ||
            close(p->status[0]) != 0 || close(sinks[0].pipe_fd) != 0 ||
            close(sinks[1].pipe_fd) != 0) {
            fail_errno(e, "init: close");
            child_exit(p->err[1], e);
        }
        init_main(o, p->ready[1], p->sync[0], p->err[1], p->status[1], out_fd, errf_fd);
    }
    return init;
}

/* Wait for init's namespaces (EOF: its setup failed, its reason is on the err pipe), move
 * init into every cgroup before it may run anything (the job forks from it), then "go". */
static int start_init(const struct opts *o, pid_t init, const struct pipes *p, struct err *e)
{
    char ready, buf[32];
    ssize_t got;
    do
        got = read(p->ready[0], &ready, 1);
    while (got < 0 && errno == EINTR);
    if (got != 1)
        return fail(e, "init: namespace setup failed");
    if (close(p->ready[0]) != 0)
        return fail_errno(e, "monitor: close");
    snprintf(buf, sizeof buf, "%d", (int)init);
    for (int i = 0; i < o->n_procs; i++) {
        if (write_file(o->procs[i], buf) != 0)
            return fail_errno(e, "cgroup: write %s", o->procs[i]);
    }
    if (write_all(p->sync[1], "g", 1) != 0 || close(p->sync[1]) != 0)
        return fail_errno(e, "monitor: start init");
    return 0;
}

/* What wait_job() saw. */
struct waits {
    char msg[ERR_MAX]; /* the start error, if any */
    size_t msg_len;
    long long start_ns;
    int job_status;
    ssize_t status_len; /* sizeof(int) once the status arrived */
};

/* After init exits, its namespace's last processes get this long to close the output
 * pipes (they are being killed); stragglers stuck longer lose their last output, and the
 * exit is recorded. */
#define OUTPUT_CLOSE_MS 2000

/* Serve the err pipe, the status pipe and both output pipes until all are at EOF: EOF on
 * the err pipe means the job's exec succeeded (or init/the job reported why not); the
 * status pipe carries the job's wait status, then EOF once init is gone. */
static int wait_job(const struct opts *o, int err_fd, int status_fd, struct sink *sinks,
                    struct waits *w, struct err *e)
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
            return fail_errno(e, "monitor: poll");
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
                drain(o, &sinks[k], p[i_sink[k]].revents);
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

/* The exit record for what wait_job saw and how init ended; 0, or -1 with errno. */
static int record_exit(const struct opts *o, struct waits *w, int init_status,
                       const struct rusage *ru, long long end_ns)
{
    static char counters[COUNTERS_MAX];
    final_counters(o, counters);
    int got_status = w->status_len == (ssize_t)sizeof w->job_status;
    if (w->msg_len > 0)
        return write_record(o->run_dir, "start_error", -1, 0, w->msg, w->start_ns, end_ns, ru,
                            counters);
    if (got_status && WIFEXITED(w->job_status))
        return write_record(o->run_dir, "exited", WEXITSTATUS(w->job_status), 0, NULL,
                            w->start_ns, end_ns, ru, counters);
    if (got_status && WIFSIGNALED(w->job_status))
        return write_record(o->run_dir, "signaled", -1, WTERMSIG(w->job_status), NULL,
                            w->start_ns, end_ns, ru, counters);
    if (WIFSIGNALED(init_status)) /* init itself was killed (e.g. a cgroup kill) */
        return write_record(o->run_dir, "signaled", -1, WTERMSIG(init_status), NULL,
                            w->start_ns, end_ns, ru, counters);
    snprintf(w->msg, sizeof w->msg, "init: exited with status %d before the job ended",
             WIFEXITED(init_status) ? WEXITSTATUS(init_status) : -1);
    return write_record(o->run_dir, "start_error", -1, 0, w->msg, w->start_ns, end_ns, ru,
                        counters);
}

/* The start failed after init was cloned: kill it and record the start error, init's own
 * reason when it gave one (it may have failed its own setup first; then the move into the
 * cgroups failed with ESRCH). */
__attribute__((noreturn)) static void abort_init(const struct opts *o, pid_t init, int err_fd,
                                                 struct err *e)
{
    /* init is still blocked on the sync pipe (or just past it): SIGKILL always works,
     * since it comes from outside its pid namespace. */
    if (kill(init, SIGKILL) != 0 && errno != ESRCH)
        fprintf(stderr, "scheduler-monitor: kill init: %s\n", strerror(errno));
    while (waitpid(init, NULL, 0) < 0 && errno == EINTR)
        ;
    /* Every write end is closed now, so this cannot block. */
    char msg[ERR_MAX];
    if (read_all(err_fd, msg, sizeof msg) > 0)
        fail(e, "%s", msg);
    start_error(o->run_dir, e);
}

int monitor_main(int argc, char **argv)
{
    struct opts o;
    struct err e;
    if (parse_args(argc, argv, &o, &e) != 0) {
        if (!o.run_dir) {
            fprintf(stderr, "scheduler-monitor: %s\n", e.msg);
            return 2;
        }
        start_error(o.run_dir, &e);
    }
    /* The reservation comes before anything else takes space in the run dir. */
    struct sink sinks[2];
    int out_fd = -1, errf_fd = -1;
    struct pipes p;
    if (detach(&e) != 0 || reserve_record(o.run_dir, &e) != 0 ||
        open_output_pipes(sinks, &out_fd, &errf_fd, &e) != 0 || run_cgroup_plan(&o, &e) != 0 ||
        make_pipe(p.ready, &e) != 0 || make_pipe(p.sync, &e) != 0 ||
        make_pipe(p.err, &e) != 0 || make_pipe(p.status, &e) != 0)
        start_error(o.run_dir, &e);
    pid_t init = clone_init(&o, &p, sinks, out_fd, errf_fd, &e);
    if (init < 0)
        start_error(o.run_dir, &e);
    if (close(p.ready[1]) != 0 || close(p.sync[0]) != 0 || close(p.err[1]) != 0 ||
        close(p.status[1]) != 0 || close(out_fd) != 0 || close(errf_fd) != 0) {
        fail_errno(&e, "monitor: close");
        abort_init(&o, init, p.err[0], &e);
    }
    static struct waits w;
    if (start_init(&o, init, &p, &e) != 0 ||
        wait_job(&o, p.err[0], p.status[0], sinks, &w, &e) != 0)
        abort_init(&o, init, p.err[0], &e);

    int init_status;
    struct rusage ru;
    pid_t reaped;
    do
        reaped = wait4(init, &init_status, 0, &ru);
    while (reaped < 0 && errno == EINTR);
    long long end_ns = now_ns();
    if (reaped < 0) {
        fail_errno(&e, "monitor: wait4");
        start_error(o.run_dir, &e);
    }
    if (record_exit(&o, &w, init_status, &ru, end_ns) != 0) {
        fprintf(stderr, "scheduler-monitor: write %s/exit: %s\n", o.run_dir, strerror(errno));
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--fork-server") == 0)
        return fork_server();
    return monitor_main(argc, argv);
}
