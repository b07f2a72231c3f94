/* The processes inside the job's namespaces: init (pid 1) and the job (pid 2).
 *
 * Their start errors go over the err pipe to the monitor, which records them: each step
 * returns 0, or -1 with a `struct err`, and init_main and job_main report it (child_exit),
 * once, then _exit. */
#include "monitor.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/keyctl.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

void child_exit(int err_fd, const struct err *e)
{
    size_t n = strlen(e->msg);
    if (n > 0)
        (void)!write(err_fd, e->msg, n);
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

static int bring_lo_up(struct err *e)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return fail_errno(e, "net: socket");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0)
        return fail_errno(e, "net: get flags of lo");
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0)
        return fail_errno(e, "net: bring lo up");
    if (close(s) != 0)
        return fail_errno(e, "net: close");
    return 0;
}

/* Empty this process's capability bounding set: 0, or -1 with errno set by the cap that
 * could not be dropped (in *failed). Each drop is a credentials commit of its own (some
 * 2 us of CPU, 41 of them on Linux 6.x), so the fork server does it once for all jobs. */
int empty_bounding_set(int *failed)
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
int bounding_set_empty;

/* Leave the job nothing to gain: an empty bounding set (no exec can grant a capability
 * again, not even a setuid-root binary), no ambient or inheritable capabilities, no
 * supplementary groups, the job's uid/gid, and no_new_privs (setuid bits and file
 * capabilities are ignored by exec). Order matters: dropping from the bounding set and
 * changing ids need CAP_SETPCAP/CAP_SETUID/CAP_SETGID, so those go first. */
static int drop_privileges(const struct opts *o, struct err *e)
{
    int cap = -1;
    if (!bounding_set_empty && empty_bounding_set(&cap) != 0)
        return fail_errno(e, "sandbox: drop capability %d", cap);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0)
        return fail_errno(e, "sandbox: clear ambient capabilities");
    if (o->uid >= 0) {
        if (setgroups(0, NULL) != 0)
            return fail_errno(e, "sandbox: setgroups");
        if (setresgid((gid_t)o->gid, (gid_t)o->gid, (gid_t)o->gid) != 0)
            return fail_errno(e, "sandbox: setgid %ld", o->gid);
        if (setresuid((uid_t)o->uid, (uid_t)o->uid, (uid_t)o->uid) != 0)
            return fail_errno(e, "sandbox: setuid %ld", o->uid);
    }
    /* setuid clears the permitted and effective sets, not the inheritable one. */
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct none[2];
    memset(none, 0, sizeof none);
    if (syscall(SYS_capset, &hdr, none) != 0)
        return fail_errno(e, "sandbox: capset");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return fail_errno(e, "sandbox: no_new_privs");
    return 0;
}

/* Last steps before exec, as the job's user: a session keyring of its own (keys of earlier
 * jobs, in the session the agent had, are out of reach), then the filter. */
static int confine_job(const struct opts *o, struct err *e)
{
    if (syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL) < 0 && errno != ENOSYS)
        return fail_errno(e, "keyring: new session");
    if (!o->no_seccomp)
        return apply_seccomp(e);
    return 0;
}

/* The job's side up to its exec; it returns only when something failed (exec included). */
static int job_start(const struct opts *o, int out_fd, int errf_fd, struct err *e)
{
    sigset_t none;
    sigemptyset(&none);
    if (reset_signals() != 0 || sigprocmask(SIG_SETMASK, &none, NULL) != 0)
        return fail_errno(e, "job: reset signals");
    int null = open("/dev/null", O_RDONLY);
    if (null < 0)
        return fail_errno(e, "job: open /dev/null");
    /* 0..2 are always open in the monitor (see main.c), so null, out and err are >= 3. */
    if (dup2(null, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(errf_fd, 2) < 0)
        return fail_errno(e, "job: dup2");
    if (close(null) != 0)
        return fail_errno(e, "job: close");
    if (drop_privileges(o, e) != 0)
        return -1;
    /* After the switch, so the job's own permissions decide whether it may enter cwd. */
    if (chdir(o->cwd) != 0)
        return fail_errno(e, "cwd: %s", o->cwd);
    if (confine_job(o, e) != 0)
        return -1;
    execvp(o->argv[0], o->argv);
    return fail_errno(e, "exec: %s", o->argv[0]);
}

__attribute__((noreturn)) static void job_main(const struct opts *o, int out_fd, int errf_fd,
                                               int err_fd)
{
    struct err e;
    job_start(o, out_fd, errf_fd, &e);
    child_exit(err_fd, &e);
}

/* The namespaces' own setup: mounts, hostname, lo. It runs before the monitor moves init
 * into the job's cgroups: it is the runtime's work, not the job's, so it is neither billed
 * to the job nor counted against its cpu quota (a job of 0.01 cores gets 1 ms per 100 ms
 * period, and a throttled setup would delay its start by whole periods). */
static int setup_namespaces(const struct opts *o, struct err *e)
{
    /* CLONE_NEWNS copies the mounts with their propagation: make ours private first, or
     * the mounts below would leak back into the host's namespace. */
    if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        return fail_errno(e, "mount: make / private");
    if (o->overlay_dir) {
        if (enter_overlay_root(o, e) != 0)
            return -1;
    } else {
        /* A fresh proc instance shows only this pid namespace. */
        if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
            return fail_errno(e, "mount: /proc");
        if (private_mounts(o, "", 1, e) != 0 || cgroup_view(o, e) != 0 ||
            seal_private_mounts("", e) != 0)
            return -1;
    }
    if (sethostname(o->hostname, strlen(o->hostname)) != 0)
        return fail_errno(e, "hostname: %s", o->hostname);
    if (!o->host_net)
        return bring_lo_up(e);
    return 0;
}

/* Signals init forwards to the job (SIGCHLD it takes itself). */
static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

/* Once init is in every cgroup of the job: make that the root of a cgroup namespace (the
 * job sees itself at "/" and nothing of the tree above it), and block what init forwards
 * (and SIGCHLD) before forking, so nothing is lost in between; sigwaitinfo() then receives
 * them. Blocked signals are queued even for a pid-ns init, which otherwise drops signals
 * it has no handler for. */
static int enter_cgroups(sigset_t *set, struct err *e)
{
    if (unshare(CLONE_NEWCGROUP) != 0)
        return fail_errno(e, "init: cgroup namespace");
    sigemptyset(set);
    sigaddset(set, SIGCHLD);
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
        sigaddset(set, forwarded[i]);
    if (reset_signals() != 0 || sigprocmask(SIG_BLOCK, set, NULL) != 0)
        return fail_errno(e, "init: signals");
    return 0;
}

/* init's life once the job runs: forward signals to it, reap orphans, and when the job
 * itself exits, send its wait status to the monitor and exit (the kernel then SIGKILLs
 * everything left in the namespace). */
__attribute__((noreturn)) static void serve_job(pid_t job, const sigset_t *set, int status_fd)
{
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(set, &si);
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
                _exit(0);
            }
            if (pid == 0 || (pid < 0 && errno == ECHILD))
                break;
            if (pid < 0 && errno != EINTR)
                _exit(1);
        }
    }
}

/* Wait for the monitor's "go" (init is in the job's cgroups then); 0, or -1 if the monitor
 * gave up (cgroup.procs failed) or died. */
static int wait_go(int sync_fd)
{
    char go;
    ssize_t n;
    do
        n = read(sync_fd, &go, 1);
    while (n < 0 && errno == EINTR);
    return n == 1 ? 0 : -1;
}

void init_main(const struct opts *o, int ready_fd, int sync_fd, int err_fd, int status_fd,
               int out_fd, int errf_fd)
{
    struct err e;
    /* If the monitor dies, nobody would record the job: take it down with us. The
     * kernel delivers this SIGKILL even to a pid-namespace init (it comes from outside).
     * A monitor that died before this line is caught by EOF on the sync pipe below. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
        fail_errno(&e, "init: prctl");
        child_exit(err_fd, &e);
    }
    if (setup_namespaces(o, &e) != 0)
        child_exit(err_fd, &e);
    if (write_all(ready_fd, "r", 1) != 0 || close(ready_fd) != 0)
        _exit(1); /* the monitor is gone */
    if (wait_go(sync_fd) != 0)
        _exit(1);
    if (close(sync_fd) != 0) {
        fail_errno(&e, "init: close");
        child_exit(err_fd, &e);
    }
    sigset_t set;
    if (enter_cgroups(&set, &e) != 0)
        child_exit(err_fd, &e);
    pid_t job = fork();
    if (job < 0) {
        fail_errno(&e, "init: fork");
        child_exit(err_fd, &e);
    }
    if (job == 0)
        job_main(o, out_fd, errf_fd, err_fd);
    /* From here on only the job holds the err pipe; its exec closes it (EOF = started). */
    if (close(err_fd) != 0 || close(out_fd) != 0 || close(errf_fd) != 0)
        _exit(1);
    serve_job(job, &set, status_fd);
}
