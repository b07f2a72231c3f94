/* The fork server:
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
#include "monitor.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

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

int fork_server(void)
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
