// A first C reference for the per-fault cost of the FaultHandler modes: one
// toucher thread, one handler thread (poll + read + UFFDIO_CONTINUE), MINOR
// faults on a memfd whose pages are all in the page cache. Prints the
// toucher's median per-fault latency in microseconds. The benchmark harness
// does this properly; this is the same-run baseline for a first number.
// Build: cc -O2 -pthread -o loop-overhead scripts/loop-overhead.c
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef UFFD_FEATURE_MINOR_SHMEM
#define UFFD_FEATURE_MINOR_SHMEM (1 << 10)
#endif
struct cont { uint64_t start, len, mode; int64_t mapped; };
#define CONTINUE_IOCTL 0xC020AA07

static int uffd;
static volatile int done;

static void *handler(void *arg) {
  (void)arg;
  struct uffd_msg msgs[64];
  struct pollfd p = {uffd, POLLIN, 0};
  while (!done) {
    if (poll(&p, 1, 10) <= 0) continue;
    ssize_t n = read(uffd, msgs, sizeof msgs);
    for (ssize_t i = 0; i < n / (ssize_t)sizeof msgs[0]; i++) {
      struct cont c = {msgs[i].arg.pagefault.address & ~4095ull, 4096, 0, 0};
      if (ioctl(uffd, CONTINUE_IOCTL, &c) != 0) {
        struct uffdio_range r = {c.start, 4096};
        ioctl(uffd, UFFDIO_WAKE, &r);
      }
    }
  }
  return NULL;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  size_t pages = argc > 1 ? strtoul(argv[1], 0, 10) : 4096;
  int mfd = syscall(SYS_memfd_create, "c-ref", 0);
  ftruncate(mfd, pages * 4096);
  fallocate(mfd, 0, 0, pages * 4096);
  char *guest = mmap(0, pages * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
  uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  struct uffdio_api api = {UFFD_API, UFFD_FEATURE_MINOR_SHMEM, 0};
  if (ioctl(uffd, UFFDIO_API, &api)) return perror("api"), 1;
  struct uffdio_register reg = {{(uint64_t)guest, pages * 4096}, 4 /* MINOR */, 0};
  if (ioctl(uffd, UFFDIO_REGISTER, &reg)) return perror("register"), 1;
  pthread_t t;
  pthread_create(&t, 0, handler, 0);
  double *lat = malloc(pages * sizeof *lat);
  unsigned sum = 0;
  for (size_t i = 0; i < pages; i++) {
    uint64_t t0 = now_ns();
    sum += ((volatile char *)guest)[i * 4096];
    lat[i] = (now_ns() - t0) / 1000.0;
  }
  done = 1;
  pthread_join(t, 0);
  qsort(lat, pages, sizeof *lat, cmp);
  printf("{\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f,\"sum\":%u}\n", lat[pages / 2], lat[pages * 9 / 10], lat[pages * 99 / 100], sum);
  return 0;
}
