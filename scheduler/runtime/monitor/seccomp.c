/* The default seccomp filter, installed on the job last before its exec.
 *
 * Built by hand (classic BPF) rather than with libseccomp: the monitor is compiled on each
 * node at run time and linked statically, and the rule set is a short deny list; a library
 * would be one more build dependency on every node for some forty comparisons. It is
 * modelled on the default profile container runtimes ship, as a deny list: every syscall is
 * allowed except those below, which fail with EPERM (ENOSYS for clone3, whose flags a
 * filter cannot read, so that the C library falls back to clone, which it can check).
 * A syscall of another ABI (i386 through int 0x80, x32) kills the process: the numbers
 * below are x86_64's, and another table would slip past them. */
#include "monitor.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/keyctl.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>

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

void prepare_seccomp(void)
{
    if (!seccomp_built)
        seccomp_built = build_filter(&seccomp_prog) == 0 ? 1 : -1;
}

int apply_seccomp(struct err *e)
{
    struct filter *f = &seccomp_prog;
    prepare_seccomp();
    if (seccomp_built != 1)
        return fail(e, "seccomp: the filter does not fit (%d instructions)", f->n);
    struct sock_fprog prog = {(unsigned short)f->n, f->ins};
    /* no_new_privs is set (drop_privileges), so this needs no privilege. */
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0)
        return fail_errno(e, "seccomp: install the filter");
    return 0;
}
#else
void prepare_seccomp(void) {}

int apply_seccomp(struct err *e)
{
    return fail(e, "seccomp: the default filter is written for x86_64 only; on this "
                   "architecture only trusted tenants' jobs (no filter) can run");
}
#endif
