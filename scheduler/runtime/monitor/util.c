/* Small helpers every part uses: errors, time, paths, whole reads and writes. */
#include "monitor.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int fail(struct err *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->errnum = 0;
    return -1;
}

int fail_errno(struct err *e, const char *fmt, ...)
{
    int errnum = errno; /* before anything below may change it */
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof e->msg)
        snprintf(e->msg + n, sizeof e->msg - (size_t)n, ": %s", strerror(errnum));
    e->errnum = errnum;
    return -1;
}

long long now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0;
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int join(char *out, size_t size, const char *dir, const char *name)
{
    int n = snprintf(out, size, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= size) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Write `value` to an existing file (cgroupfs: one write(2) per value). */
int write_file(const char *path, const char *value)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (write_all(fd, value, strlen(value)) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return close(fd);
}

/* Create DIR/name with `text` atomically: write DIR/name.tmp, then rename. */
int write_atomic(const char *dir, const char *name, const char *text)
{
    char tmp[PATH_MAX], final[PATH_MAX], tmpname[NAME_MAX];
    snprintf(tmpname, sizeof tmpname, "%s.tmp", name);
    if (join(final, sizeof final, dir, name) != 0 || join(tmp, sizeof tmp, dir, tmpname) != 0)
        return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return -1;
    if (write_all(fd, text, strlen(text)) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    if (close(fd) != 0)
        return -1;
    return rename(tmp, final);
}

/* Read everything until EOF (at most size-1 bytes kept). Returns bytes kept or -1. */
ssize_t read_all(int fd, char *buf, size_t size)
{
    size_t used = 0;
    char sink[256];
    for (;;) {
        char *dst = used < size - 1 ? buf + used : sink;
        size_t room = used < size - 1 ? size - 1 - used : sizeof sink;
        ssize_t n = read(fd, dst, room);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0)
            break;
        if (dst == buf + used)
            used += (size_t)n;
    }
    buf[used] = '\0';
    return (ssize_t)used;
}
