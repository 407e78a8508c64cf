// Shared plumbing of the benchmark-only addon (userfaultfd_bench). Every entry
// point here owns what it creates (memfd, mappings, uffd, threads) for the
// length of one call and releases it before returning, so the addon keeps no
// state between calls and nothing outlives the environment.
#pragma once

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <napi.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <cstdint>
#include <string>
#include <vector>

#include "../clock.h"
#include "../uffd_abi.h"

namespace bench {

// Pins thread `tid` (0: the caller) to `cpu`; cpu < 0 means every online
// CPU (undo an earlier pin).
inline int PinThread(pid_t tid, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (cpu >= 0) {
    CPU_SET(cpu, &set);
  } else {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    for (long i = 0; i < n && i < CPU_SETSIZE; i++) CPU_SET(i, &set);
  }
  return sched_setaffinity(tid, sizeof(set), &set) == 0 ? 0 : -errno;
}

inline int PinSelf(int cpu) { return PinThread(0, cpu); }

inline uint8_t PageByte(size_t page) { return static_cast<uint8_t>(page % 251 + 1); }

// A memfd whose pages all sit in the page cache, filled through a temporary
// shared mapping (hugetlbfs has no write(2)), which is unmapped again so the
// next mapping of the file takes a minor fault on every page.
struct FilledMemfd {
  int fd = -1;
  size_t page_size = 0;
  size_t pages = 0;
  bool owned = true;  // false: the caller's memfd (the same pages the library's rows use)
  size_t length() const { return page_size * pages; }
  ~FilledMemfd() {
    if (fd >= 0 && owned) close(fd);
  }
};

// The caller's memfd (already filled by the benchmark's JavaScript with
// PageByte), so that C and the library fault the very same pages.
inline void BorrowMemfd(int fd, size_t page_size, size_t pages, FilledMemfd* out) {
  out->fd = fd;
  out->page_size = page_size;
  out->pages = pages;
  out->owned = false;
}

inline int MakeFilledMemfd(size_t page_size, size_t pages, bool huge, FilledMemfd* out) {
  unsigned flags = MFD_CLOEXEC;
  if (huge) flags |= MFD_HUGETLB | (21u << MFD_HUGE_SHIFT);
  int fd = static_cast<int>(syscall(SYS_memfd_create, "userfaultfd-bench", flags));
  if (fd < 0) return -errno;
  out->fd = fd;
  out->page_size = page_size;
  out->pages = pages;
  if (ftruncate(fd, static_cast<off_t>(out->length())) < 0) return -errno;
  void* p = mmap(nullptr, out->length(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return -errno;
  auto* bytes = static_cast<uint8_t*>(p);
  for (size_t i = 0; i < pages; i++) {
    // Touch every 4 KiB of a huge page too: the whole page must be real.
    for (size_t off = 0; off < page_size; off += 4096) bytes[i * page_size + off] = PageByte(i);
  }
  munmap(p, out->length());
  return 0;
}

// A fresh view of the memfd: no PTE exists yet, so each first touch faults.
inline uint8_t* MapView(const FilledMemfd& mem, bool random_advice) {
  void* p = mmap(nullptr, mem.length(), PROT_READ | PROT_WRITE, MAP_SHARED, mem.fd, 0);
  if (p == MAP_FAILED) return nullptr;
  // Fault-around would map up to 16 neighbouring pages on one fault.
  if (random_advice) madvise(p, mem.length(), MADV_RANDOM);
  return static_cast<uint8_t*>(p);
}

// The benchmark's one toucher: touches the first byte of each listed page,
// timing each touch with MonotonicNs (native/clock.h, the one clock). When `cpus` is
// given, the CPU the thread ran on right after each touch goes there (read
// outside the timed region), so placement can be told per fault.
inline uint64_t TimedTouches(const uint8_t* base, size_t page_size, const uint32_t* order, size_t count, double* latency_ns,
                             int32_t* cpus = nullptr) {
  uint64_t sum = 0;
  for (size_t i = 0; i < count; i++) {
    const volatile uint8_t* p = base + static_cast<size_t>(order[i]) * page_size;
    uint64_t t0 = MonotonicNs();
    sum += *p;
    latency_ns[i] = static_cast<double>(MonotonicNs() - t0);
    if (cpus) cpus[i] = sched_getcpu();
  }
  return sum;
}

// A hint to the CPU that this is a spin-wait loop.
inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// CPU time this thread has used (user + system), in ns.
inline uint64_t ThreadCpuNs() {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// N toucher threads, each pinned to its CPU (< 0: unpinned), started
// together so that they really contend, each timing its own touches.
struct TouchGroup {
  std::vector<std::vector<uint32_t>> orders;
  std::vector<int> cpus;
  std::vector<std::vector<double>> latency;
  std::vector<std::vector<int32_t>> touch_cpus;
  std::vector<uint64_t> sums;
  uint64_t start_ns = 0;  // MonotonicNs when the touchers were started (a restore's guest reports its end as start + wall)
  uint64_t wall_ns = 0;

  // Runs every toucher to completion on `base`; returns the sum of the bytes read.
  uint64_t Run(const uint8_t* base, size_t page_size) {
    size_t threads = orders.size();
    latency.assign(threads, {});
    touch_cpus.assign(threads, {});
    sums.assign(threads, 0);
    cpus.resize(threads, -1);
    std::atomic<size_t> ready{0};
    std::vector<std::thread> touchers;
    uint64_t t0 = MonotonicNs();
    start_ns = t0;
    for (size_t t = 0; t < threads; t++) {
      latency[t].resize(orders[t].size());
      touch_cpus[t].resize(orders[t].size());
      touchers.emplace_back([&, t] {
        if (cpus[t] >= 0) PinSelf(cpus[t]);
        ready.fetch_add(1);
        while (ready.load() < threads) sched_yield();
        sums[t] = TimedTouches(base, page_size, orders[t].data(), orders[t].size(), latency[t].data(), touch_cpus[t].data());
      });
    }
    for (auto& th : touchers) th.join();
    wall_ns = MonotonicNs() - t0;
    uint64_t sum = 0;
    for (uint64_t s : sums) sum += s;
    return sum;
  }
};

inline uint64_t ExpectedSum(const uint32_t* order, size_t count) {
  uint64_t sum = 0;
  for (size_t i = 0; i < count; i++) sum += PageByte(order[i]);
  return sum;
}

inline int OpenUffd(bool huge) {
  int fd = static_cast<int>(syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
  if (fd < 0) return -errno;
  struct uffdio_api api = {};
  api.api = UFFD_API;
  api.features = huge ? UFFD_FEATURE_MINOR_HUGETLBFS : UFFD_FEATURE_MINOR_SHMEM;
  if (ioctl(fd, uffd_abi::kApi, &api) < 0) {
    int err = -errno;
    close(fd);
    return err;
  }
  return fd;
}

inline int RegisterMinor(int uffd, void* start, size_t length) {
  struct uffdio_register reg = {};
  reg.range.start = reinterpret_cast<uintptr_t>(start);
  reg.range.len = length;
  reg.mode = UFFDIO_REGISTER_MODE_MINOR;
  return ioctl(uffd, uffd_abi::kRegister, &reg) < 0 ? -errno : 0;
}

// CONTINUE one range; EEXIST (someone else mapped it) still needs a wake.
// Returns bytes mapped, 0 for EEXIST, or -errno.
inline int64_t ContinueRange(int uffd, uintptr_t start, size_t length) {
  struct uffdx_continue cont = {};
  cont.range.start = start;
  cont.range.len = length;
  if (ioctl(uffd, uffd_abi::kContinue, &cont) == 0) return cont.mapped;
  int err = errno;
  if (err != EEXIST) return -err;
  struct uffdio_range range = {start, length};
  ioctl(uffd, uffd_abi::kWake, &range);
  return 0;
}

// The C reference's handler loop: waits for the uffd in poll(2) (or, with
// spin_ns, keeps reading the non-blocking uffd for up to spin_ns after the
// last batch before sleeping again), reads batches of messages and hands
// each to `on_batch(msgs, count)`, until `stop`. Returns the first
// unexpected -errno of read(2), or 0.
template <typename OnBatch>
inline int ServeUffd(int uffd, uint64_t spin_ns, const std::atomic<bool>& stop, OnBatch on_batch) {
  struct uffd_msg msgs[64];
  struct pollfd pfd = {uffd, POLLIN, 0};
  uint64_t spin_until = 0;
  int error = 0;
  while (!stop.load(std::memory_order_acquire)) {
    if (spin_ns == 0) {
      // The timeout only bounds how long a finished run waits to notice `stop`.
      if (poll(&pfd, 1, 20) <= 0) continue;
    }
    ssize_t n = read(uffd, msgs, sizeof(msgs));
    if (n > 0) {
      on_batch(msgs, static_cast<size_t>(n) / sizeof(msgs[0]));
      if (spin_ns) spin_until = MonotonicNs() + spin_ns;
      continue;
    }
    if (n < 0 && errno != EAGAIN && !error) error = -errno;
    if (spin_ns == 0) continue;
    if (MonotonicNs() < spin_until) {
      CpuRelax();
      continue;
    }
    poll(&pfd, 1, 20);
  }
  return error;
}

inline Napi::Float64Array ToArray(Napi::Env env, const std::vector<double>& values) {
  Napi::Float64Array out = Napi::Float64Array::New(env, values.size());
  std::copy(values.begin(), values.end(), out.Data());
  return out;
}

inline Napi::Int32Array ToArray(Napi::Env env, const std::vector<int32_t>& values) {
  Napi::Int32Array out = Napi::Int32Array::New(env, values.size());
  std::copy(values.begin(), values.end(), out.Data());
  return out;
}

// A number field of an options object, or `fallback` when absent.
inline double Option(const Napi::Value& options, const char* key, double fallback) {
  if (!options.IsObject()) return fallback;
  Napi::Value v = options.As<Napi::Object>().Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : fallback;
}

// Latency and per-touch CPU of every toucher of a group, as JavaScript arrays.
inline void SetTouches(Napi::Env env, Napi::Object result, const TouchGroup& group) {
  Napi::Array lat = Napi::Array::New(env, group.latency.size());
  Napi::Array cpus = Napi::Array::New(env, group.touch_cpus.size());
  for (uint32_t t = 0; t < group.latency.size(); t++) {
    lat.Set(t, ToArray(env, group.latency[t]));
    cpus.Set(t, ToArray(env, group.touch_cpus[t]));
  }
  result.Set("latencyNs", lat);
  result.Set("touchCpus", cpus);
  result.Set("wallNs", Napi::Number::New(env, static_cast<double>(group.wall_ns)));
  result.Set("startNs", Napi::Number::New(env, static_cast<double>(group.start_ns)));
}

inline Napi::Value Errno(Napi::Env env, int neg_errno, const char* where) {
  Napi::Object result = Napi::Object::New(env);
  result.Set("errno", Napi::Number::New(env, neg_errno));
  result.Set("where", Napi::String::New(env, where));
  return result;
}

// Reads the (page size, page count, huge) triple every scenario starts with.
// A fresh view of `mem` registered MINOR with a new uffd. On failure returns
// Errno's value naming the step, with nothing left mapped or open.
inline Napi::Value MapRegisteredView(Napi::Env env, const FilledMemfd& mem, bool random_advice, bool huge,
                                     uint8_t** view, int* uffd) {
  *view = MapView(mem, random_advice);
  if (!*view) return Errno(env, -errno, "mmap");
  *uffd = OpenUffd(huge);
  int rc = *uffd < 0 ? *uffd : RegisterMinor(*uffd, *view, mem.length());
  if (rc == 0) return env.Undefined();
  if (*uffd >= 0) close(*uffd);
  munmap(*view, mem.length());
  return Errno(env, rc, *uffd < 0 ? "userfaultfd" : "UFFDIO_REGISTER");
}

inline bool Geometry(const Napi::CallbackInfo& info, size_t* page_size, size_t* pages, bool* huge) {
  if (!info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsBoolean()) {
    Napi::TypeError::New(info.Env(), "expected (pageSize, pages, huge, ...)").ThrowAsJavaScriptException();
    return false;
  }
  *page_size = info[0].As<Napi::Number>().Uint32Value();
  *pages = info[1].As<Napi::Number>().Uint32Value();
  *huge = info[2].As<Napi::Boolean>().Value();
  if (*page_size == 0 || (*page_size & (*page_size - 1)) != 0 || *pages == 0) {
    Napi::TypeError::New(info.Env(), "page size must be a power of two and pages > 0").ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

// The (buffer: ArrayBuffer, pageSize, ...) every entry point over a caller's
// mapping starts with; `signature` names them all for the TypeError. The page
// size must be a positive multiple of `granule` (a RangeError otherwise).
inline bool MappingArgs(const Napi::CallbackInfo& info, const char* signature, size_t granule, Napi::ArrayBuffer* buffer, size_t* page_size) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer() || !info[1].IsNumber()) {
    Napi::TypeError::New(env, signature).ThrowAsJavaScriptException();
    return false;
  }
  *buffer = info[0].As<Napi::ArrayBuffer>();
  *page_size = info[1].As<Napi::Number>().Uint32Value();
  if (*page_size < granule || *page_size % granule) {
    Napi::RangeError::New(env, granule == 1 ? "page size must be positive" : "page size must be a positive multiple of " + std::to_string(granule))
        .ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

// A Uint32Array of page indexes, each below `pages`.
inline bool PageList(const Napi::CallbackInfo& info, Napi::Value value, size_t pages, std::vector<uint32_t>* out) {
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
    Napi::TypeError::New(info.Env(), "expected a Uint32Array of page indexes").ThrowAsJavaScriptException();
    return false;
  }
  Napi::Uint32Array list = value.As<Napi::Uint32Array>();
  out->assign(list.Data(), list.Data() + list.ElementLength());
  for (uint32_t p : *out)
    if (p >= pages) {
      Napi::RangeError::New(info.Env(), "page index beyond the memfd").ThrowAsJavaScriptException();
      return false;
    }
  return true;
}

}  // namespace bench

void InitBenchFloor(Napi::Env env, Napi::Object exports);
void InitBenchReference(Napi::Env env, Napi::Object exports);
void InitBenchBulk(Napi::Env env, Napi::Object exports);
void InitBenchTouch(Napi::Env env, Napi::Object exports);
void InitBenchRestore(Napi::Env env, Napi::Object exports);
