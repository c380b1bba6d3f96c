/* Counts a process's malloc/calloc/realloc calls and writes the running count to
   $MALLOC_COUNT_DIR/<pid> every 4096 calls (bench/cpu_budget.py reads it around a run).
   With PYTHONMALLOC=malloc, Python's own objects go through malloc too.
   gcc -O2 -shared -fPIC -o /tmp/malloc_count.so bench/malloc_count.c */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
static _Atomic unsigned long calls;

static void record(void) {
    unsigned long count = atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed) + 1;
    if (count & 4095) return;
    const char *dir = getenv("MALLOC_COUNT_DIR");
    if (!dir) return;
    char path[256], text[32];
    size_t n = 0, t = 0;
    while (dir[n] && n < 200) { path[n] = dir[n]; n++; }
    path[n++] = '/';
    for (long pid = getpid(); pid; pid /= 10) text[t++] = '0' + pid % 10;
    while (t) path[n++] = text[--t];
    path[n] = 0;
    /* Fixed width, rewritten in place by one pwrite: a reader never sees an empty file. */
    char line[21];
    unsigned long c = count;
    for (int digit = 19; digit >= 0; digit--, c /= 10) line[digit] = '0' + c % 10;
    line[20] = '\n';
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    if (fd >= 0) { ssize_t ignored = pwrite(fd, line, sizeof line, 0); (void)ignored; close(fd); }
}

void *malloc(size_t size) { record(); return __libc_malloc(size); }
void *calloc(size_t n, size_t size) { record(); return __libc_calloc(n, size); }
void *realloc(void *p, size_t size) { record(); return __libc_realloc(p, size); }
