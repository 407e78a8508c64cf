// Where a wp-async collect's time goes, without Node: one 1 GiB memfd view,
// populated and registered uffd-wp async, then per dirty fraction and layout
// (pages scattered at random, or one contiguous block) the PAGEMAP_SCAN call
// that DirtyTracker makes (PAGE_IS_WRITTEN, CHECK_WPASYNC, WP_MATCHING, one
// ioctl with a vector big enough for every region), the same scan looking
// only (no WP_MATCHING), and a clean re-scan. It prints the 2 MiB blocks that
// held a written page: the kernel flushes the TLB once per such block when it
// re-protects, and each re-protected page is one PTE write.
//
//   cc -O2 -o /tmp/pagemap-scan-cost native/bench/pagemap_scan_cost.c && /tmp/pagemap-scan-cost [reps]
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct region { uint64_t start, end, categories; };
struct scan_arg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define SCAN _IOWR('f', 16, struct scan_arg)
#define WP_MATCHING 1
#define CHECK_WPASYNC 2
#define IS_WRITTEN 2
#define FEATURE_WP_UNPOPULATED (1 << 13)
#define FEATURE_WP_ASYNC (1 << 15)

static const size_t kSize = 1ul << 30, kPage = 4096, kPages = (1ul << 30) / 4096;

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int cmp(const void* a, const void* b) { return *(const double*)a < *(const double*)b ? -1 : *(const double*)a > *(const double*)b; }
static double median(double* v, int n) { qsort(v, n, sizeof *v, cmp); return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2; }

static int scan(int pagemap, char* base, struct region* vec, size_t vec_len, int flags, size_t* pages) {
  struct scan_arg a = {.size = sizeof a, .flags = CHECK_WPASYNC | flags, .start = (uint64_t)base, .end = (uint64_t)base + kSize,
                       .vec = (uint64_t)vec, .vec_len = vec_len, .category_mask = IS_WRITTEN, .return_mask = IS_WRITTEN};
  int calls = 0;
  *pages = 0;
  while (a.start < (uint64_t)base + kSize) {
    int n = ioctl(pagemap, SCAN, &a);
    calls++;
    if (n < 0) { perror("PAGEMAP_SCAN"); exit(1); }
    for (int i = 0; i < n; i++) *pages += (vec[i].end - vec[i].start) / kPage;
    if (a.walk_end <= a.start) break;
    a.start = a.walk_end;
  }
  return calls;
}

int main(int argc, char** argv) {
  const int reps = argc > 1 ? atoi(argv[1]) : 5;
  setvbuf(stdout, NULL, _IOLBF, 0);
  int memfd = memfd_create("pagemap-scan-cost", MFD_CLOEXEC);
  if (memfd < 0 || ftruncate(memfd, kSize)) { perror("memfd"); return 1; }
  char* base = mmap(NULL, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (base == MAP_FAILED || madvise(base, kSize, MADV_POPULATE_WRITE)) { perror("mmap"); return 1; }
  int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  struct uffdio_api api = {.api = UFFD_API, .features = FEATURE_WP_ASYNC | FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM};
  struct uffdio_register reg = {.range = {(uint64_t)base, kSize}, .mode = UFFDIO_REGISTER_MODE_WP};
  if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) || ioctl(uffd, UFFDIO_REGISTER, &reg)) { perror("userfaultfd"); return 1; }
  struct uffdio_writeprotect wp = {.range = {(uint64_t)base, kSize}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
  double t0 = now_ms();
  if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp)) { perror("UFFDIO_WRITEPROTECT"); return 1; }
  printf("protect all of 1 GiB (%zu PTEs, one TLB flush): %.1f ms\n", kPages, now_ms() - t0);
  int pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  const size_t vec_len = kPages;  // never full: one ioctl per scan
  struct region* vec = calloc(vec_len, sizeof *vec);
  unsigned char* block_hit = calloc(kSize >> 21, 1);
  const double fractions[] = {0.001, 0.01, 0.05, 0.5};
  double* look = calloc(reps, sizeof(double));
  double* collect = calloc(reps, sizeof(double));
  double* clean = calloc(reps, sizeof(double));
  printf("| dirty | layout | 2 MiB blocks hit | look only (ms) | scan + re-protect (ms) | clean re-scan (ms) | ioctls |\n|---:|---|---:|---:|---:|---:|---:|\n");
  for (int layout = 0; layout < 2; layout++) {
    for (size_t f = 0; f < sizeof fractions / sizeof *fractions; f++) {
      const size_t n = (size_t)(kPages * fractions[f]);
      size_t blocks = 0, found = 0;
      int calls = 0;
      unsigned seed = 7;
      for (int r = 0; r < reps; r++) {
        memset(block_hit, 0, kSize >> 21);
        blocks = 0;
        for (size_t i = 0; i < n; i++) {
          size_t p = layout ? i : (size_t)rand_r(&seed) % kPages;
          base[p * kPage] = (char)r;
          if (!block_hit[p >> 9]) block_hit[p >> 9] = 1, blocks++;
        }
        t0 = now_ms();
        scan(pagemap, base, vec, vec_len, 0, &found);
        look[r] = now_ms() - t0;
        t0 = now_ms();
        calls = scan(pagemap, base, vec, vec_len, WP_MATCHING, &found);
        collect[r] = now_ms() - t0;
        t0 = now_ms();
        size_t again;
        scan(pagemap, base, vec, vec_len, WP_MATCHING, &again);
        clean[r] = now_ms() - t0;
        if (again) { fprintf(stderr, "clean re-scan found %zu pages\n", again); return 1; }
      }
      printf("| %g%% | %s | %zu | %.2f | %.2f | %.2f | %d |\n", fractions[f] * 100, layout ? "contiguous" : "scattered", blocks,
             median(look, reps), median(collect, reps), median(clean, reps), calls);
      (void)found;
    }
  }
  return 0;
}
