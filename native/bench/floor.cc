// The floor: a plain minor fault with no userfaultfd at all. A fresh view of
// a memfd whose pages are in the page cache, fault-around off, touched by a
// native thread that times each first touch. Nothing in this process can make
// a minor fault cheaper than this.
#include <thread>

#include "bench_common.h"

namespace {

// floor(pageSize, pages, huge, order: Uint32Array, cpu)
//   -> { latencyNs, checksum, expected, wallNs } | { errno, where }
Napi::Value Floor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t page_size, pages;
  bool huge;
  std::vector<uint32_t> order;
  if (!bench::Geometry(info, &page_size, &pages, &huge) || !bench::PageList(info, info[3], pages, &order)) return env.Undefined();
  int cpu = info[4].IsNumber() ? info[4].As<Napi::Number>().Int32Value() : -1;

  bench::FilledMemfd mem;
  int rc = bench::MakeFilledMemfd(page_size, pages, huge, &mem);
  if (rc < 0) return bench::Errno(env, rc, "memfd");
  std::vector<double> latency(order.size());
  uint64_t sum = 0;
  int thread_rc = 0;
  uint64_t wall = 0;
  std::thread toucher([&] {
    if (cpu >= 0 && bench::PinSelf(cpu) < 0) thread_rc = -errno;
    uint8_t* view = bench::MapView(mem, true);
    if (!view) {
      thread_rc = -errno;
      return;
    }
    uint64_t t0 = bench::NowNs();
    sum = bench::TimedTouches(view, page_size, order.data(), order.size(), latency.data());
    wall = bench::NowNs() - t0;
    munmap(view, mem.length());
  });
  toucher.join();
  if (thread_rc < 0) return bench::Errno(env, thread_rc, "toucher");
  Napi::Object result = Napi::Object::New(env);
  result.Set("latencyNs", bench::ToArray(env, latency));
  result.Set("checksum", Napi::Number::New(env, static_cast<double>(sum)));
  result.Set("wallNs", Napi::Number::New(env, static_cast<double>(wall)));
  result.Set("expected", Napi::Number::New(env, static_cast<double>(bench::ExpectedSum(order.data(), order.size()))));
  return result;
}

}  // namespace

void InitBenchFloor(Napi::Env env, Napi::Object exports) {
  exports.Set("floor", Napi::Function::New(env, Floor, "floor"));
}
