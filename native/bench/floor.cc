// The floor: a plain minor fault with no userfaultfd at all. A fresh view of
// a memfd whose pages are in the page cache, fault-around off, touched by a
// native thread that times each first touch. Nothing in this process can make
// a minor fault cheaper than this.
#include "bench_common.h"

namespace {

// floor(pageSize, pages, huge, order: Uint32Array, cpu, options?)
//   options: { fd?: memfd filled with PageByte (else a fresh one), faultAround?: 0 }
//   -> { latencyNs: [Float64Array], touchCpus: [Int32Array], checksum, expected, wallNs } | { errno, where }
// faultAround 1 leaves the kernel's fault-around on (a plain sequential scan
// maps up to 16 pages per fault): the floor of the batched sequential rows.
Napi::Value Floor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t page_size, pages;
  bool huge;
  std::vector<uint32_t> order;
  if (!bench::Geometry(info, &page_size, &pages, &huge) || !bench::PageList(info, info[3], pages, &order)) return env.Undefined();
  int cpu = info[4].IsNumber() ? info[4].As<Napi::Number>().Int32Value() : -1;
  int fd = static_cast<int>(bench::Option(info[5], "fd", -1));
  bool fault_around = bench::Option(info[5], "faultAround", 0) != 0;

  bench::FilledMemfd mem;
  if (fd >= 0) {
    bench::BorrowMemfd(fd, page_size, pages, &mem);
  } else {
    int rc = bench::MakeFilledMemfd(page_size, pages, huge, &mem);
    if (rc < 0) return bench::Errno(env, rc, "memfd");
  }
  uint8_t* view = bench::MapView(mem, !fault_around);
  if (!view) return bench::Errno(env, -errno, "mmap");
  bench::TouchGroup group;
  group.orders.push_back(std::move(order));
  group.cpus.push_back(cpu);
  uint64_t sum = group.Run(view, page_size);
  munmap(view, mem.length());
  Napi::Object result = Napi::Object::New(env);
  bench::SetTouches(env, result, group);
  result.Set("checksum", Napi::Number::New(env, static_cast<double>(sum)));
  result.Set("expected", Napi::Number::New(env, static_cast<double>(bench::ExpectedSum(group.orders[0].data(), group.orders[0].size()))));
  return result;
}

}  // namespace

void InitBenchFloor(Napi::Env env, Napi::Object exports) {
  exports.Set("floor", Napi::Function::New(env, Floor, "floor"));
}
