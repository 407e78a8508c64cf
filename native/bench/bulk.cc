// Bulk installation: one UFFDIO_CONTINUE over a whole registered range against
// MADV_POPULATE_READ on a fresh view of the same pages. Both install page
// table entries for pages already in the page cache; the question is how many
// per second each manages.
#include "bench_common.h"

namespace {

uint64_t SumFirstBytes(const uint8_t* view, size_t page_size, size_t pages) {
  uint64_t sum = 0;
  for (size_t i = 0; i < pages; i++) sum += static_cast<const volatile uint8_t*>(view)[i * page_size];
  return sum;
}

// cBulk(pageSize, pages, huge, reps)
//   -> { continueNs, populateNs, populateRandomNs: Float64Array, checksOk } | { errno, where }
// populateRandomNs is POPULATE_READ with MADV_RANDOM (no fault-around), the
// closer match to CONTINUE's one-PTE-at-a-time work.
Napi::Value Bulk(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t page_size, pages;
  bool huge;
  if (!bench::Geometry(info, &page_size, &pages, &huge)) return env.Undefined();
  uint32_t reps = info[3].IsNumber() ? info[3].As<Napi::Number>().Uint32Value() : 3;
  bench::FilledMemfd mem;
  int rc = bench::MakeFilledMemfd(page_size, pages, huge, &mem);
  if (rc < 0) return bench::Errno(env, rc, "memfd");
  uint64_t expected = 0;
  for (size_t i = 0; i < pages; i++) expected += bench::PageByte(i);

  std::vector<double> cont_ns, pop_ns, pop_random_ns;
  bool ok = true;
  for (uint32_t r = 0; r < reps; r++) {
    uint8_t* view;
    int uffd;
    Napi::Value failed = bench::MapRegisteredView(env, mem, false, huge, &view, &uffd);
    if (!failed.IsUndefined()) return failed;
    uint64_t t0 = MonotonicNs();
    int64_t mapped = bench::ContinueRange(uffd, reinterpret_cast<uintptr_t>(view), mem.length());
    uint64_t t1 = MonotonicNs();
    if (mapped != static_cast<int64_t>(mem.length())) {
      close(uffd);
      munmap(view, mem.length());
      return bench::Errno(env, mapped < 0 ? static_cast<int>(mapped) : -EIO, "UFFDIO_CONTINUE");
    }
    cont_ns.push_back(static_cast<double>(t1 - t0));
    // Every page mapped, so this reads without a single fault.
    ok = ok && SumFirstBytes(view, page_size, pages) == expected;
    close(uffd);
    munmap(view, mem.length());

    for (int random = 0; random < 2; random++) {
      view = bench::MapView(mem, random == 1);
      if (!view) return bench::Errno(env, -errno, "mmap");
      t0 = MonotonicNs();
      rc = madvise(view, mem.length(), 22 /* MADV_POPULATE_READ */) == 0 ? 0 : -errno;
      t1 = MonotonicNs();
      if (rc < 0) {
        munmap(view, mem.length());
        return bench::Errno(env, rc, "MADV_POPULATE_READ");
      }
      (random ? pop_random_ns : pop_ns).push_back(static_cast<double>(t1 - t0));
      ok = ok && SumFirstBytes(view, page_size, pages) == expected;
      munmap(view, mem.length());
    }
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("continueNs", bench::ToArray(env, cont_ns));
  result.Set("populateNs", bench::ToArray(env, pop_ns));
  result.Set("populateRandomNs", bench::ToArray(env, pop_random_ns));
  result.Set("checksOk", Napi::Boolean::New(env, ok));
  return result;
}

}  // namespace

void InitBenchBulk(Napi::Env env, Napi::Object exports) {
  exports.Set("cBulk", Napi::Function::New(env, Bulk, "cBulk"));
}
