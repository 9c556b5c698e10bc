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
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

/* Close every descriptor from 3 up: close_range(2) (Linux 5.9), else one by one up to
 * the soft limit. */
static void close_from_3(void)
{
    struct rlimit limit;
    long fd, top = 65536;

    if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0)
        return;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY)
        top = (long)limit.rlim_cur;
    for (fd = 3; fd < top; fd++)
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

/* The child, between vfork and exec: never returns. On a failed exec the errno goes to
 * *error (memory shared with the suspended keeper) and the child exits 127. */
static void child(char *const paths[], char *const argv[], char *const envp[],
                  char *const fallback[], pid_t keeper, const sigset_t *mask,
                  volatile int *error)
{
    struct sigaction dfl;
    int sig, i, first = 0;

    if (setpgid(0, 0) != 0)
        goto fail;
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
        goto fail;
    if (getppid() != keeper)
        _exit(0); /* the keeper died before prctl: nothing may run */
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
    close_from_3();
    if (sigprocmask(SIG_SETMASK, mask, NULL) != 0)
        goto fail;
    errno = ENOENT; /* no candidate at all */
    /* execvpe's rule over the candidates the keeper listed (PATH's, in order): go on
     * past a missing one; remember a refused one. */
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
fail:
    *error = errno ? errno : ENOEXEC;
    _exit(127);
}

/* Start the job: its pid, or -1 with the exec's errno in *error_out (the child is then
 * reaped). `paths`, `argv`, `envp` and `fallback` (NULL: none) end with NULL. */
pid_t lelect_spawn(char *const paths[], char *const argv[], char *const envp[],
                   char *const fallback[], int *error_out)
{
    sigset_t all, mask;
    volatile int error = 0;
    pid_t keeper = getpid(), pid;
    int saved;

    sigfillset(&all);
    if (pthread_sigmask(SIG_SETMASK, &all, &mask) != 0) {
        *error_out = errno;
        return -1;
    }
    pid = vfork();
    if (pid == 0)
        child(paths, argv, envp, fallback, keeper, &mask, &error);
    saved = errno;
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
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
