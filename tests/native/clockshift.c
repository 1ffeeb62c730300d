/* LD_PRELOAD shim for tests: the wall clock (CLOCK_REALTIME through clock_gettime, gettimeofday and
 * time) shifted by the number of milliseconds written in the file $CLOCKSHIFT_FILE, re-read every
 * 100 ms. CLOCK_MONOTONIC is left alone, as a real step of the system clock leaves it: what an NTP
 * correction does to one process, without touching the clock of a machine others share.
 * (libfaketime 0.9.10 breaks Python's sleep when it keeps the monotonic clock.) */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static long long offset_ms;
static long long checked_ns = -1;

static void refresh(void) {
    struct timespec now;
    long long ns;
    const char *path;
    FILE *f;
    long long value;

    if (!real_clock_gettime)
        real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    real_clock_gettime(CLOCK_MONOTONIC, &now);
    ns = now.tv_sec * 1000000000LL + now.tv_nsec;
    if (checked_ns >= 0 && ns - checked_ns < 100000000LL)
        return;
    checked_ns = ns;
    path = getenv("CLOCKSHIFT_FILE");
    if (!path || !(f = fopen(path, "r")))
        return;
    if (fscanf(f, "%lld", &value) == 1)
        offset_ms = value;
    fclose(f);
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    int rc;
    long long ns;

    refresh();
    rc = real_clock_gettime(id, ts);
    if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        ns = ts->tv_sec * 1000000000LL + ts->tv_nsec + offset_ms * 1000000LL;
        ts->tv_sec = ns / 1000000000LL;
        ts->tv_nsec = ns % 1000000000LL;
    }
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;

    (void)tz;
    clock_gettime(CLOCK_REALTIME, &ts);
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
    return 0;
}

time_t time(time_t *t) {
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    if (t)
        *t = ts.tv_sec;
    return ts.tv_sec;
}
