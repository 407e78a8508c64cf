// The C reference handler: what a hand-written handler costs on this machine,
// measured in the same run as the library so the ratio holds from machine to
// machine. One handler thread blocks in poll(2), reads a batch of messages and
// CONTINUEs each faulting page; N native toucher threads time their first
// touches. Placement (handler CPU, toucher CPUs) is the caller's choice.
#include <poll.h>

#include <thread>

#include "bench_common.h"

namespace {

struct Counts {
  uint64_t messages = 0;
  uint64_t resolved = 0;  // CONTINUEs that mapped the page
  uint64_t existed = 0;   // EEXIST: mapped already, woken
  int error = 0;          // first unexpected -errno
};

void Handle(int uffd, size_t page_size, int cpu, const std::atomic<bool>* stop, Counts* counts) {
  if (cpu >= 0) bench::PinSelf(cpu);
  struct uffd_msg msgs[64];
  struct pollfd pfd = {uffd, POLLIN, 0};
  while (!stop->load(std::memory_order_acquire)) {
    // The timeout only bounds how long a finished run waits to notice `stop`.
    int ready = poll(&pfd, 1, 20);
    if (ready <= 0) continue;
    ssize_t n = read(uffd, msgs, sizeof(msgs));
    if (n < 0) {
      if (errno != EAGAIN && !counts->error) counts->error = -errno;
      continue;
    }
    for (ssize_t i = 0; i < n / static_cast<ssize_t>(sizeof(msgs[0])); i++) {
      if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
      counts->messages++;
      uintptr_t page = msgs[i].arg.pagefault.address & ~static_cast<uintptr_t>(page_size - 1);
      int64_t done = bench::ContinueRange(uffd, page, page_size);
      if (done > 0) counts->resolved++;
      else if (done == 0) counts->existed++;
      else if (!counts->error) counts->error = static_cast<int>(done);
    }
  }
}

// cReference(pageSize, pages, huge, orders: Uint32Array[], handlerCpu, toucherCpus: number[])
//   -> { latencyNs: Float64Array[], checksum, expected, messages, resolved, existed, wallNs }
Napi::Value Reference(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t page_size, pages;
  bool huge;
  if (!bench::Geometry(info, &page_size, &pages, &huge)) return env.Undefined();
  if (!info[3].IsArray() || !info[5].IsArray()) {
    Napi::TypeError::New(env, "expected orders and toucherCpus arrays").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array order_list = info[3].As<Napi::Array>();
  Napi::Array cpu_list = info[5].As<Napi::Array>();
  int handler_cpu = info[4].As<Napi::Number>().Int32Value();
  size_t threads = order_list.Length();
  std::vector<std::vector<uint32_t>> orders(threads);
  std::vector<int> cpus(threads, -1);
  uint64_t expected = 0;
  for (uint32_t t = 0; t < threads; t++) {
    if (!bench::PageList(info, order_list.Get(t), pages, &orders[t])) return env.Undefined();
    expected += bench::ExpectedSum(orders[t].data(), orders[t].size());
    if (t < cpu_list.Length()) cpus[t] = cpu_list.Get(t).As<Napi::Number>().Int32Value();
  }

  bench::FilledMemfd mem;
  int rc = bench::MakeFilledMemfd(page_size, pages, huge, &mem);
  if (rc < 0) return bench::Errno(env, rc, "memfd");
  uint8_t* view;
  int uffd;
  Napi::Value failed = bench::MapRegisteredView(env, mem, true, huge, &view, &uffd);
  if (!failed.IsUndefined()) return failed;

  std::atomic<bool> stop{false};
  Counts counts;
  std::thread handler(Handle, uffd, page_size, handler_cpu, &stop, &counts);
  std::vector<std::vector<double>> latency(threads);
  std::vector<uint64_t> sums(threads, 0);
  std::atomic<size_t> ready{0};
  std::vector<std::thread> touchers;
  uint64_t t0 = bench::NowNs();
  for (size_t t = 0; t < threads; t++) {
    latency[t].resize(orders[t].size());
    touchers.emplace_back([&, t] {
      if (cpus[t] >= 0) bench::PinSelf(cpus[t]);
      // Start together, so N touchers really contend for one handler.
      ready.fetch_add(1);
      while (ready.load() < threads) sched_yield();
      sums[t] = bench::TimedTouches(view, page_size, orders[t].data(), orders[t].size(), latency[t].data());
    });
  }
  for (auto& th : touchers) th.join();
  uint64_t wall = bench::NowNs() - t0;
  stop.store(true, std::memory_order_release);
  handler.join();
  close(uffd);
  munmap(view, mem.length());

  uint64_t sum = 0;
  Napi::Array lat = Napi::Array::New(env, threads);
  for (uint32_t t = 0; t < threads; t++) {
    lat.Set(t, bench::ToArray(env, latency[t]));
    sum += sums[t];
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("latencyNs", lat);
  result.Set("checksum", Napi::Number::New(env, static_cast<double>(sum)));
  result.Set("expected", Napi::Number::New(env, static_cast<double>(expected)));
  result.Set("messages", Napi::Number::New(env, static_cast<double>(counts.messages)));
  result.Set("resolved", Napi::Number::New(env, static_cast<double>(counts.resolved)));
  result.Set("existed", Napi::Number::New(env, static_cast<double>(counts.existed)));
  result.Set("error", Napi::Number::New(env, counts.error));
  result.Set("wallNs", Napi::Number::New(env, static_cast<double>(wall)));
  return result;
}

}  // namespace

void InitBenchReference(Napi::Env env, Napi::Object exports) {
  exports.Set("cReference", Napi::Function::New(env, Reference, "cReference"));
}
