/* The job's stdout and stderr: pipes the monitor drains into OUT/stdout and OUT/stderr,
 * each file (and OUT) made on the stream's first byte, under the output policy when the
 * agent gave one. */
#include "monitor.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* ---- output policy ----
 *
 * The job's stdout and stderr are its I/O: the agent bills the bytes kept, and asks the
 * monitor to keep at most --output-limit of them (both streams together), to move them to
 * disk at no more than --output-bps bytes per second (the job's io_write_bps: a job writing
 * faster blocks on its full pipe), and to stop keeping them while the output filesystem has
 * less than --output-reserve bytes free. Past the limit (or the reserve) the rest of a stream
 * is read and dropped after one marker line, "\n[scheduler: output dropped from here: WHY]\n",
 * which is what the agent looks for (see runtime/output.py). */
struct output_policy {
    long long limit;   /* most job bytes kept; -1: no limit */
    long long bps;     /* bytes per second to disk; 0: not throttled */
    long long reserve; /* free bytes the output filesystem keeps; 0: not checked */
    long long kept;    /* job bytes written to the files so far */
    double tokens;     /* the throttle's bucket, in bytes */
    long long refill_ns;
    int full;          /* nothing more is kept */
    char why[160];
    int devnull;       /* where dropped bytes are spliced (-1: read and discarded) */
};
static struct output_policy outp = {.limit = -1, .devnull = -1};

int is_output_option(const char *flag)
{
    return strcmp(flag, "--output-limit") == 0 || strcmp(flag, "--output-bps") == 0 ||
           strcmp(flag, "--output-reserve") == 0;
}

int set_output_option(const char *flag, const char *text)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < 0)
        return -1;
    if (strcmp(flag, "--output-limit") == 0)
        outp.limit = v;
    else if (strcmp(flag, "--output-bps") == 0)
        outp.bps = v;
    else
        outp.reserve = v;
    return 0;
}

/* OUT/<name>, made (with OUT) on the first byte. Not O_APPEND: splice refuses such files. */
static int open_sink(const struct opts *o, struct sink *s)
{
    char path[PATH_MAX];
    if (mkdir(o->output_dir, 0750) != 0 && errno != EEXIST)
        return -1;
    if (join(path, sizeof path, o->output_dir, s->name) != 0)
        return -1;
    s->file_fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0640);
    if (s->file_fd < 0)
        return -1;
    return lseek(s->file_fd, 0, SEEK_END) < 0 ? -1 : 0;
}


static char chunk[65536];

/* Read at most `max` bytes of the pipe into `chunk`. */
static ssize_t read_chunk(struct sink *s, size_t max)
{
    return read(s->pipe_fd, chunk, max < sizeof chunk ? max : sizeof chunk);
}

/* Move at most `max` bytes from the pipe into OUT/<name> (made on the first byte): splice,
 * or read + write where the output filesystem does not take splice. The bytes moved, 0 at
 * EOF, -1 with errno set. */
static ssize_t move_to_file(const struct opts *o, struct sink *s, size_t max)
{
    if (s->file_fd >= 0 && !s->copy) {
        ssize_t n = splice(s->pipe_fd, NULL, s->file_fd, NULL, max,
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (!(n < 0 && (errno == EINVAL || errno == ENOSYS)))
            return n;
        s->copy = 1;
    }
    ssize_t n = read_chunk(s, max);
    if (n > 0 && s->file_fd < 0 && open_sink(o, s) != 0)
        return -1; /* drain_sink: bytes came after all (between poll and read) */
    if (n > 0 && write_all(s->file_fd, chunk, (size_t)n) != 0)
        return -1;
    return n;
}

/* What a read or move of `n` bytes means for the stream: 1 to go on draining it, 0 to stop
 * (the pipe is empty for now, or at EOF, or failed itself: then it is closed). A write
 * error (a full output disk) loses the rest of this stream, never the job: it keeps
 * writing into a pipe that is still drained, and its exit is recorded as usual. */
static int keep_draining(const struct opts *o, struct sink *s, ssize_t n)
{
    if (n > 0 || (n < 0 && errno == EINTR))
        return 1;
    if (n < 0 && errno == EAGAIN)
        return 0;
    if (n < 0 && !s->broken) {
        fprintf(stderr, "scheduler-monitor: write %s/%s: %s\n", o->output_dir, s->name,
                strerror(errno));
        s->broken = 1;
        return 1;
    }
    /* EOF, or the pipe itself failed. */
    close(s->pipe_fd);
    s->pipe_fd = -1;
    return 0;
}

/* Move what the pipe holds now into the file; at EOF close the pipe. */
static void drain_sink(const struct opts *o, struct sink *s, short revents)
{
    /* POLLIN: bytes are waiting (a pipe at EOF reports POLLHUP alone). */
    if ((revents & POLLIN) && s->file_fd < 0 && !s->broken && open_sink(o, s) != 0) {
        fprintf(stderr, "scheduler-monitor: open %s/%s: %s\n", o->output_dir, s->name,
                strerror(errno));
        s->broken = 1;
    }
    for (;;) {
        ssize_t n = s->broken ? read_chunk(s, sizeof chunk) : move_to_file(o, s, 1 << 20);
        if (!keep_draining(o, s, n))
            return;
    }
}

/* ---- output policy: draining ---- */

static int output_active(void)
{
    return outp.limit >= 0 || outp.bps > 0 || outp.reserve > 0;
}

/* Bytes the sinks may move to disk now: what the throttle's bucket holds (refilled at
 * --output-bps, at most 1/8 s worth or 64 KiB), never past the limit, at most 1 MiB. */
static size_t output_allow(void)
{
    long long room = 1 << 20;
    if (outp.limit >= 0 && outp.limit - outp.kept < room)
        room = outp.limit - outp.kept;
    if (outp.bps > 0) {
        long long now = now_ns();
        double burst = outp.bps / 8.0 > 65536.0 ? outp.bps / 8.0 : 65536.0;
        if (outp.refill_ns == 0)
            outp.tokens = burst;
        else
            outp.tokens += (double)(now - outp.refill_ns) * (double)outp.bps / 1e9;
        if (outp.tokens > burst)
            outp.tokens = burst;
        outp.refill_ns = now;
        if ((long long)outp.tokens < room)
            room = (long long)outp.tokens;
    }
    return room > 0 ? (size_t)room : 0;
}

/* -1 when the sinks may be drained now; else the milliseconds until the throttle's bucket
 * holds a useful amount again (4 KiB), during which the pipes are not polled: the job blocks
 * on its full pipe, which is the throttle. */
int output_wait_ms(void)
{
    if (outp.bps <= 0 || outp.full || (outp.limit >= 0 && outp.kept >= outp.limit))
        return -1;
    output_allow();
    if (outp.tokens >= 4096.0)
        return -1;
    return (int)((4096.0 - outp.tokens) * 1000.0 / (double)outp.bps) + 1;
}

/* init is gone: nothing can write into the pipes any more, so what they hold is drained
 * unthrottled (within OUTPUT_CLOSE_MS, whatever the job's rate). */
void output_job_ended(void)
{
    outp.bps = 0;
}

/* From now on nothing more is kept, for the reason given. */
static void output_stop(const char *why)
{
    if (!outp.full)
        snprintf(outp.why, sizeof outp.why, "%s", why);
    outp.full = 1;
    if (outp.devnull < 0)
        outp.devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
}

/* True when the output filesystem has less free space than --output-reserve. */
static int output_disk_low(int fd)
{
    struct statvfs st;
    if (outp.reserve <= 0 || fstatvfs(fd, &st) != 0)
        return 0;
    return (long long)st.f_bavail * (long long)st.f_frsize < outp.reserve;
}

/* drain_sink under the output policy: bytes go to the file within the limit and the
 * throttle; past the limit (or the reserve) the marker line is written once per stream and
 * the rest is dropped. */

/* Bytes past the limit (or the reserve): into /dev/null by splice where it can, read and
 * discarded where not. */
static ssize_t drop(struct sink *s)
{
    if (outp.devnull >= 0) {
        ssize_t n = splice(s->pipe_fd, NULL, outp.devnull, NULL, 1 << 20, SPLICE_F_NONBLOCK);
        if (!(n < 0 && (errno == EINVAL || errno == ENOSYS)))
            return n;
        close(outp.devnull);
        outp.devnull = -1;
    }
    return read_chunk(s, sizeof chunk);
}

/* drain_sink under the output policy: bytes go to the file within the limit and the
 * throttle; past the limit (or the reserve) the marker line is written once per stream and
 * the rest is dropped. */
static void drain_limited(const struct opts *o, struct sink *s)
{
    for (;;) {
        ssize_t n;
        if (!outp.full && s->file_fd >= 0 && output_disk_low(s->file_fd))
            output_stop("the state disk is nearly full");
        if (!outp.full && outp.limit >= 0 && outp.kept >= outp.limit) {
            char why[96];
            snprintf(why, sizeof why, "output limit of %lld bytes reached", outp.limit);
            output_stop(why);
        }
        if (outp.full && !s->dropped && !s->broken) {
            /* Only a stream that has bytes to drop gets the marker. */
            n = read_chunk(s, sizeof chunk);
            if (n > 0) {
                char marker[256];
                int len = snprintf(marker, sizeof marker,
                                   "\n[scheduler: output dropped from here: %s]\n", outp.why);
                if ((s->file_fd >= 0 || open_sink(o, s) == 0) &&
                    write_all(s->file_fd, marker, (size_t)len) == 0)
                    s->dropped = 1;
                else
                    s->broken = 1;
                continue;
            }
        } else if (outp.full || s->broken) {
            n = drop(s);
        } else {
            size_t allow = output_allow();
            if (allow == 0) {
                if (outp.limit >= 0 && outp.kept >= outp.limit)
                    continue; /* stops above */
                return;       /* throttled: wait_job polls again when the bucket refills */
            }
            n = move_to_file(o, s, allow);
            if (n > 0) {
                outp.kept += n;
                if (outp.bps > 0)
                    outp.tokens -= (double)n;
            }
        }
        if (!keep_draining(o, s, n))
            return;
    }
}

/* Drain one stream that poll() reported (revents), under the policy if there is one. */
void drain(const struct opts *o, struct sink *s, short revents)
{
    if (output_active())
        drain_limited(o, s);
    else
        drain_sink(o, s, revents);
}
