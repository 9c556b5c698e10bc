/* The keeper's fast start of a job: vfork and exec, with the job's process set up as
 * lelect's Python fork sets it up (lelect/_keeper.py, _exec_job):
 *
 *   - its own process group (its pid), made before its first instruction;
 *   - PR_SET_PDEATHSIG = SIGKILL, then a check that the keeper is still its parent (the
 *     kernel kills the job if the keeper dies, even by SIGKILL, which posix_spawn cannot
 *     ask for: that is why this file exists);
 *   - every signal the keeper catches, and those it ignores, back to the default;
 *   - no descriptor but 0-2;
 *   - the signal mask the keeper had; every signal is blocked from the vfork to the exec.
 *
 * A Python fork copies the keeper's page tables and faults on every page either side
 * writes after it (about 1 ms on a small host, the largest part of a handoff); vfork
 * shares the keeper's memory until the exec, so the child here calls nothing but system
 * calls and writes nothing but `*error` (the keeper waits, suspended, until the exec).
 *
 * The same set-up serves lelect_spawn_gate: the job's process for the candidate next in
 * line, started as the gate program (this file built with -DLELECT_GATE_PROGRAM, as
 * lelect/lelect-gate), which waits at lelect's gate and execs the job when lelect itself
 * writes its word there (docs/backends.md, "The next in line"). A program of its own, not
 * a fork of the keeper: a waiting fork would count the keeper's pages again.
 *
 * A plain shared library (no Python API): the keeper calls it with ctypes, and builds
 * without Python's headers. Linux only, as the keeper is. Optional: without it (no
 * compiler where lelect was installed) the keeper forks in Python, as before.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <time.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

/* Close the descriptors from `first` to `last` (-1: every one from `first` up):
 * close_range(2) (Linux 5.9), else one by one up to the soft limit. */
static void close_from(int first, int last)
{
    struct rlimit limit;
    long fd, top = 65536;

    if (last >= 0 && last < first)
        return;
    if (syscall(SYS_close_range, (unsigned)first, last < 0 ? ~0U : (unsigned)last, 0U) == 0)
        return;
    if (last >= 0)
        top = (long)last + 1;
    else if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY)
        top = (long)limit.rlim_cur;
    for (fd = first; fd < top; fd++)
        close((int)fd);
}

/* A file to hand to /bin/sh after ENOEXEC: not a binary (bash's test, as the keeper's
 * looks_like_text: no ELF header, no NUL in its first line). */
static int looks_like_text(const char *path)
{
    char head[128];
    ssize_t got, i;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return 0;
    got = read(fd, head, sizeof head);
    close(fd);
    if (got < 0)
        return 0;
    if (got >= 4 && head[0] == 0x7f && head[1] == 'E' && head[2] == 'L' && head[3] == 'F')
        return 0;
    for (i = 0; i < got && head[i] != '\n'; i++)
        if (head[i] == '\0')
            return 0;
    return 1;
}

/* The child's set-up, before anything of the job's: its own group, death with the keeper,
 * default signal dispositions, no descriptor but 0-2 and `keep_a`, `keep_b` (-1: none).
 * 0, or the errno of what failed; -1 if the keeper is already gone (nothing may run). */
static int set_up(pid_t keeper, int keep_a, int keep_b)
{
    struct sigaction dfl;
    int sig, low, high;

    if (setpgid(0, 0) != 0)
        return errno;
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
        return errno;
    if (getppid() != keeper)
        return -1; /* the keeper died before prctl: nothing may run */
    /* A handler of the keeper's must never run here (it would write to the keeper's
     * memory): caught signals to the default before any is unblocked; ignored ones
     * too, as a job expects them. */
    dfl.sa_handler = SIG_DFL;
    dfl.sa_flags = 0;
    sigemptyset(&dfl.sa_mask);
    for (sig = 1; sig < NSIG; sig++) {
        struct sigaction old;
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (sigaction(sig, NULL, &old) != 0)
            continue; /* not a signal (the C library's own) */
        if (old.sa_handler != SIG_DFL)
            sigaction(sig, &dfl, NULL);
    }
    low = keep_a < keep_b ? keep_a : keep_b;
    high = keep_a < keep_b ? keep_b : keep_a;
    if (low < 3) /* one kept (or none) */
        low = high;
    if (low < 3) {
        close_from(3, -1);
    } else {
        close_from(3, low - 1);
        if (high > low)
            close_from(low + 1, high - 1);
        close_from(high + 1, -1);
    }
    return 0;
}

/* execvpe's rule over the candidates the keeper listed (PATH's, in order): go on past a
 * missing one; remember a refused one. Returns only if none could be run: the errno. */
static int exec_job(char *const paths[], char *const argv[], char *const envp[],
                    char *const fallback[])
{
    int i, first = 0;

    errno = ENOENT; /* no candidate at all */
    for (i = 0; paths[i] != NULL; i++) {
        execve(paths[i], argv, envp);
        if (errno == ENOEXEC && fallback != NULL) {
            /* No #! line, and text: /bin/sh runs it, as execvp(3) and flock(1) do. */
            if (!looks_like_text(paths[i])) {
                errno = ENOEXEC;
                break;
            }
            execve("/bin/sh", fallback, envp);
        }
        if (errno == EACCES)
            first = EACCES;
        else if (errno != ENOENT && errno != ENOTDIR && errno != ESTALE)
            break;
    }
    if (first != 0 && (errno == ENOENT || errno == ENOTDIR || errno == ESTALE))
        errno = first;
    return errno ? errno : ENOEXEC;
}

/* The child, between vfork and exec: never returns. On a failed exec the errno goes to
 * *error (memory shared with the suspended keeper) and the child exits 127. */
static void child(char *const paths[], char *const argv[], char *const envp[],
                  char *const fallback[], pid_t keeper, const sigset_t *mask,
                  volatile int *error)
{
    int failed = set_up(keeper, -1, -1);

    if (failed < 0)
        _exit(0);
    if (failed == 0 && sigprocmask(SIG_SETMASK, mask, NULL) != 0)
        failed = errno;
    if (failed == 0)
        failed = exec_job(paths, argv, envp, fallback);
    *error = failed;
    _exit(127);
}

/* The keeper's side after a vfork (the child has exec'd, or failed: `error`, set by the
 * child, says why): the signal mask back to `mask`; the pid, or -1 with the errno in
 * *error_out (a failed child reaped). `saved`: the vfork's errno. */
static pid_t after_vfork(pid_t pid, int saved, const sigset_t *mask, int error,
                         int *error_out)
{
    pthread_sigmask(SIG_SETMASK, mask, NULL);
    if (pid < 0) {
        *error_out = saved;
        return -1;
    }
    if (error != 0) {
        *error_out = error;
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        return -1;
    }
    *error_out = 0;
    return pid;
}

/* Start the job: its pid, or -1 with the exec's errno in *error_out (the child is then
 * reaped). `paths`, `argv`, `envp` and `fallback` (NULL: none) end with NULL. */
pid_t lelect_spawn(char *const paths[], char *const argv[], char *const envp[],
                   char *const fallback[], int *error_out)
{
    sigset_t all, mask;
    volatile int error = 0;
    pid_t keeper = getpid(), pid;

    sigfillset(&all);
    if (pthread_sigmask(SIG_SETMASK, &all, &mask) != 0) {
        *error_out = errno;
        return -1;
    }
    pid = vfork();
    if (pid == 0)
        child(paths, argv, envp, fallback, keeper, &mask, &error);
    return after_vfork(pid, errno, &mask, error, error_out);
}

#ifdef LELECT_GATE_PROGRAM /* the waiting program's part (cc -DLELECT_GATE_PROGRAM) */
/* True when `item` ("NAME=value") names the variable `extra` ("NAME=...") sets. */
static int same_name(const char *item, const char *extra)
{
    while (*extra != '\0' && *extra != '=' && *item == *extra) {
        item++;
        extra++;
    }
    return *extra == '=' && *item == '=';
}

/* The gate program's wait (set up already by lelect_spawn_gate): never returns. It waits for lelect's word on `gate`:
 * "STOP_AT,DEADLINE\0NAME=value\0..." then EOF (CLOCK_MONOTONIC nanoseconds: after
 * STOP_AT the job must not start, 0 for no bound; DEADLINE is the lease's, for the
 * keeper; then what to add to its environment). What it tells the keeper on `report`
 * (close-on-exec: EOF right after the first line means the exec worked): nothing if
 * the gate closed untold (it exits 0); once told, "R" and the word's first item and a
 * newline (the keeper's dead-man switch has the lease before the job can run, whatever
 * lelect does next), then "U" if STOP_AT had passed (it exits 0), or the exec's errno
 * (it exits 127). */
static void gated_wait(char *const paths[], char *const argv[], char *const envp[],
                       char *const fallback[], const sigset_t *mask, int gate, int report)
{
    char told[4096], code[16], head[64], *extra[8], *item;
    size_t have = 0, n = 0, k, j;
    ssize_t got;
    long long stop_at = 0;
    struct timespec now;
    int failed = 0, len, extras = 0;

    for (;;) {
        got = read(gate, told + have, sizeof told - 1 - have);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        have += (size_t)got;
        if (have == sizeof told - 1)
            break; /* more than any word of lelect's: what came is read as it is */
    }
    close(gate);
    if (have == 0)
        _exit(0); /* never told (lelect is gone, or let this process go) */
    told[have] = '\0';
    head[0] = 'R';
    for (len = 1, item = told; len < (int)sizeof head - 1 && *item != '\0'; item++)
        if ((*item >= '0' && *item <= '9') || *item == ',')
            head[len++] = *item;
    head[len++] = '\n';
    (void)!write(report, head, (size_t)len); /* one write: the keeper reads it whole */
    item = told;
    while (*item >= '0' && *item <= '9')
        stop_at = stop_at * 10 + (*item++ - '0');
    while (item < told + have && extras < 8) {
        item += strlen(item) + 1; /* the next item */
        if (item < told + have && strchr(item, '=') != NULL)
            extra[extras++] = item;
    }
    if (stop_at > 0 && clock_gettime(CLOCK_MONOTONIC, &now) == 0
        && (long long)now.tv_sec * 1000000000LL + now.tv_nsec >= stop_at) {
        (void)!write(report, "U", 1);
        _exit(0); /* the lease could run out before the job got anywhere */
    }
    while (envp[n] != NULL)
        n++;
    {
        char *env[n + (size_t)extras + 1];

        for (k = 0, j = 0; k < n; k++) {
            int replaced = 0, e;
            for (e = 0; e < extras; e++)
                replaced |= same_name(envp[k], extra[e]);
            if (!replaced)
                env[j++] = envp[k];
        }
        for (k = 0; k < (size_t)extras; k++)
            env[j++] = extra[k];
        env[j] = NULL;
        if (sigprocmask(SIG_SETMASK, mask, NULL) != 0)
            failed = errno;
        else
            failed = exec_job(paths, argv, env, fallback);
    }
    len = sizeof code;
    do { /* the errno in decimal (no stdio before an exec) */
        code[--len] = (char)('0' + failed % 10);
        failed /= 10;
    } while (failed > 0 && len > 0);
    (void)!write(report, code + len, sizeof code - (size_t)len);
    _exit(127);
}

#endif

/* Start the gate program (LELECT_GATE_PROGRAM below), set up as the job's process is
 * (set_up), with `gate` and `report` kept open across its exec and every signal still
 * blocked: its pid, or -1 with the errno in *error_out (the program could not be run).
 * A vfork, as lelect_spawn: the keeper's pages are not copied (a waiting process that
 * is a fork of the keeper counts its memory again); the program is a few pages of C. */
pid_t lelect_spawn_gate(const char *program, char *const argv[], char *const envp[],
                        int gate, int report, int *error_out)
{
    sigset_t all, mask;
    volatile int error = 0;
    pid_t keeper = getpid(), pid;

    sigfillset(&all);
    if (pthread_sigmask(SIG_SETMASK, &all, &mask) != 0) {
        *error_out = errno;
        return -1;
    }
    pid = vfork();
    if (pid == 0) {
        int failed = set_up(keeper, gate, report);
        if (failed < 0)
            _exit(0);
        if (failed == 0 && (fcntl(gate, F_SETFD, 0) != 0 || fcntl(report, F_SETFD, 0) != 0))
            failed = errno;
        if (failed == 0) {
            execve(program, argv, envp); /* every signal still blocked: the program's to lift */
            failed = errno;
        }
        error = failed ? failed : ENOEXEC;
        _exit(127);
    }
    return after_vfork(pid, errno, &mask, error, error_out);
}

#ifdef LELECT_GATE_PROGRAM
extern char **environ;

/* A non-negative decimal, or -1. */
static long number(const char *text)
{
    long value = 0;

    if (*text == '\0')
        return -1;
    for (; *text != '\0'; text++) {
        if (*text < '0' || *text > '9' || value > 100000000L)
            return -1;
        value = value * 10 + (*text - '0');
    }
    return value;
}

/* lelect-gate GATE REPORT MASK NPATHS PATH... NFALLBACK FALLBACK... -- ARGV...
 * (the keeper's lelect_spawn_gate; MASK: the signals the job starts with blocked, as
 * numbers joined by commas, "-" for none; the environment is the job's). It waits at
 * the gate as gated_wait says, every signal blocked. */
int main(int argc, char **argv)
{
    char *paths[argc], *fallback[argc], **job;
    long gate, report, count, i;
    int at = 4, sig;
    sigset_t mask;
    const char *item;

    if (argc < 7)
        return 127;
    gate = number(argv[1]);
    report = number(argv[2]);
    count = number(argv[4]);
    if (gate < 3 || report < 3 || count < 1 || count > argc - 7)
        return 127;
    sigemptyset(&mask);
    for (item = argv[3]; *item != '\0' && *item != '-';) {
        for (sig = 0; *item >= '0' && *item <= '9'; item++)
            sig = sig * 10 + (*item - '0');
        if (sig > 0 && sig < NSIG)
            sigaddset(&mask, sig);
        if (*item == ',')
            item++;
        else
            break;
    }
    for (i = 0; i < count; i++)
        paths[i] = argv[++at];
    paths[count] = NULL;
    count = number(argv[++at]);
    if (count < 0 || at + count + 2 >= argc)
        return 127;
    for (i = 0; i < count; i++)
        fallback[i] = argv[++at];
    fallback[count] = NULL;
    if (strcmp(argv[++at], "--") != 0)
        return 127;
    job = argv + at + 1;
    if (fcntl((int)report, F_SETFD, FD_CLOEXEC) != 0) /* the job's exec ends the report */
        return 127;
    gated_wait(paths, job, environ, count ? fallback : NULL, &mask, (int)gate, (int)report);
    return 127;
}
#endif
