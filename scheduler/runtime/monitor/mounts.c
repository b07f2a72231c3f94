/* The job's filesystem, set up by init inside the new mount namespace: an overlay root
 * (when the job runs in an image), its private scratch space and its view of the cgroup
 * tree. Each step returns 0, or -1 with `e` saying what failed. */
#include "monitor.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* mkdir that tolerates an existing directory (the image may already have it). */
static int ensure_dir(const char *path, mode_t mode, struct err *e)
{
    if (mkdir(path, mode) != 0 && errno != EEXIST)
        return fail_errno(e, "rootfs: mkdir %s", path);
    return 0;
}

/* Build DIR/name into out or fail the start. */
static int path_in(char *out, const char *dir, const char *name, struct err *e)
{
    if (join(out, PATH_MAX, dir, name) != 0)
        return fail(e, "rootfs: path too long: %s/%s", dir, name);
    return 0;
}

/* A minimal /dev: a small tmpfs holding bind mounts of the host's harmless devices, a
 * tmpfs /dev/shm and the usual fd symlinks. No disks, no /dev/mem, no consoles. */
static int setup_dev(const char *root, struct err *e)
{
    static const char *devices[] = {"null", "zero", "full", "random", "urandom", "tty"};
    char dev[PATH_MAX], path[PATH_MAX], host[PATH_MAX];
    if (path_in(dev, root, "dev", e) != 0)
        return -1;
    if (ensure_dir(dev, 0755, e) != 0)
        return -1;
    if (mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=65536,mode=755") != 0)
        return fail_errno(e, "mount: %s", dev);
    for (size_t i = 0; i < sizeof devices / sizeof devices[0]; i++) {
        if (path_in(path, dev, devices[i], e) != 0)
            return -1;
        if (path_in(host, "/dev", devices[i], e) != 0)
            return -1;
        int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
        if (fd < 0 || close(fd) != 0)
            return fail_errno(e, "rootfs: create %s", path);
        if (mount(host, path, NULL, MS_BIND, NULL) != 0)
            return fail_errno(e, "mount: bind %s", host);
    }
    if (path_in(path, dev, "shm", e) != 0)
        return -1;
    if (ensure_dir(path, 01777, e) != 0) /* its tmpfs: private_mounts() */
        return -1;
    static const char *links[][2] = {{"/proc/self/fd", "fd"},
                                     {"/proc/self/fd/0", "stdin"},
                                     {"/proc/self/fd/1", "stdout"},
                                     {"/proc/self/fd/2", "stderr"}};
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
        if (path_in(path, dev, links[i][1], e) != 0)
            return -1;
        if (symlink(links[i][0], path) != 0)
            return fail_errno(e, "rootfs: symlink %s", path);
    }
    return 0;
}

/* The job's root: an overlay of the image's read-only layers (top first) and a writable
 * layer of this attempt's own (DIR/upper), with /proc, /dev and /tmp, entered with
 * pivot_root; the host's root is detached, so nothing of it stays reachable. */
int enter_overlay_root(const struct opts *o, struct err *e)
{
    char upper[PATH_MAX], work[PATH_MAX], root[PATH_MAX], path[PATH_MAX];
    if (path_in(upper, o->overlay_dir, "upper", e) != 0)
        return -1;
    if (path_in(work, o->overlay_dir, "work", e) != 0)
        return -1;
    if (path_in(root, o->overlay_dir, "root", e) != 0)
        return -1;
    if (ensure_dir(o->overlay_dir, 0700, e) != 0)
        return -1;
    if (ensure_dir(upper, 0755, e) != 0)
        return -1;
    if (ensure_dir(work, 0700, e) != 0)
        return -1;
    if (ensure_dir(root, 0755, e) != 0)
        return -1;
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
        return fail(e, "rootfs: overlay options longer than %zu bytes", sizeof data);
    if (mount("overlay", root, "overlay", 0, data) != 0)
        return fail_errno(e, "rootfs: mount overlay");
    if (path_in(path, root, "proc", e) != 0)
        return -1;
    if (ensure_dir(path, 0555, e) != 0)
        return -1;
    if (mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
        return fail_errno(e, "mount: %s", path);
    if (path_in(path, root, "tmp", e) != 0)
        return -1;
    if (ensure_dir(path, 01777, e) != 0) /* its tmpfs: private_mounts() */
        return -1;
    if (setup_dev(root, e) != 0)
        return -1;
    if (private_mounts(o, root, 1, e) != 0)
        return -1;
    if (seal_private_mounts(root, e) != 0)
        return -1;
    /* pivot_root(".", "."): the old root ends up stacked under the new one, and the
     * lazy unmount takes it (and every host mount below it) away. */
    if (chdir(root) != 0)
        return fail_errno(e, "rootfs: chdir %s", root);
    if (syscall(SYS_pivot_root, ".", ".") != 0)
        return fail_errno(e, "rootfs: pivot_root");
    if (umount2(".", MNT_DETACH) != 0)
        return fail_errno(e, "rootfs: detach the old root");
    if (chdir("/") != 0)
        return fail_errno(e, "rootfs: chdir /");
    return 0;
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
static int bind_scratch(const char *tmp, const char *where, const char *path, struct err *e)
{
    char name[32], dir[PATH_MAX];
    snprintf(name, sizeof name, "%s", where);
    for (char *c = name; *c; c++)
        if (*c == '/')
            *c = '-';
    if (path_in(dir, tmp, name, e) != 0)
        return -1;
    if (mkdir(dir, 01777) != 0)
        return fail_errno(e, "rootfs: mkdir %s", dir);
    if (mount(dir, path, NULL, MS_BIND, NULL) != 0)
        return fail_errno(e, "mount: bind %s", path);
    return 0;
}

int private_mounts(const struct opts *o, const char *root, int shm, struct err *e)
{
    static const char *shared[] = {"var/tmp", "run/lock", "var/lock", "var/crash"};
    char data[64], tmp[PATH_MAX], path[PATH_MAX];
    struct stat st;
    if (path_in(tmp, root, "tmp", e) != 0)
        return -1;
    snprintf(data, sizeof data, "size=%llu,mode=755", o->tmp_size);
    if (mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, data) != 0)
        return fail_errno(e, "mount: %s", tmp);
    mode_t umask_was = umask(0); /* the modes below exactly */
    if (path_in(path, tmp, "empty", e) != 0)
        return -1;
    if (o->n_hides > 0 && mkdir(path, 0555) != 0) /* for cgroup_view only (a mkdir: 5 us) */
        return fail_errno(e, "rootfs: mkdir %s", path);
    if (path_in(path, tmp, "tmp", e) != 0)
        return -1;
    if (mkdir(path, 01777) != 0)
        return fail_errno(e, "rootfs: mkdir %s", path);
    for (size_t i = 0; i < sizeof shared / sizeof shared[0]; i++) {
        if (path_in(path, root, shared[i], e) != 0)
            return -1;
        if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode))
            continue;
        if (i > 0 && !(st.st_mode & S_IWOTH)) /* /var/tmp always; the others if shared */
            continue;
        if (bind_scratch(tmp, shared[i], path, e) != 0)
            return -1;
    }
    if (shm) {
        if (path_in(path, root, "dev/shm", e) != 0)
            return -1;
        if (bind_scratch(tmp, "dev/shm", path, e) != 0)
            return -1;
    }
    umask(umask_was);
    return 0;
}

/* The tmpfs's "tmp" directory over ROOT/tmp: the last of the private mounts. */
int seal_private_mounts(const char *root, struct err *e)
{
    char tmp[PATH_MAX], dir[PATH_MAX];
    if (path_in(tmp, root, "tmp", e) != 0)
        return -1;
    if (path_in(dir, tmp, "tmp", e) != 0)
        return -1;
    if (mount(dir, tmp, NULL, MS_BIND, NULL) != 0)
        return fail_errno(e, "mount: bind %s", tmp);
    return 0;
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
int cgroup_view(const struct opts *o, struct err *e)
{
    const unsigned long flags = MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC;
    char path[PATH_MAX];
    for (int k = 0; k < o->n_views; k++) {
        if (strcmp(o->view_names[k], ".") == 0)
            snprintf(path, sizeof path, "%s", CGROUP_VIEW); /* v2: the one hierarchy */
        else if (path_in(path, CGROUP_VIEW, o->view_names[k], e) != 0)
            return -1;
        if (mount(o->view_dirs[k], path, NULL, flags, NULL) != 0)
            return fail_errno(e, "cgroup view: bind %s", o->view_dirs[k]);
    }
    for (int k = 0; k < o->n_hides; k++) {
        if (path_in(path, CGROUP_VIEW, o->hide_names[k], e) != 0)
            return -1;
        if (mount(SCRATCH_EMPTY, path, NULL, MS_BIND, NULL) != 0 && errno != ENOENT)
            return fail_errno(e, "cgroup view: cover %s", path);
    }
    return 0;
}
