// The C reference handlers: what a hand-written handler costs on this
// machine, measured in the same run (interleaved with the library's rows) so
// that the ratio holds from machine to machine. Two kinds:
//   blocking (spinUs 0): poll(2), read a batch of messages, CONTINUE each
//     faulting page — the plain handler every ratio divides by;
//   spinning (spinUs > 0): after each batch, busy-polls the non-blocking uffd
//     with read(2) for up to spinUs before sleeping in poll(2) again, so a
//     fault that arrives while it spins needs no cross-CPU wake-up.
// `handlers` threads serve one uffd (the scaling rows compare the library
// with as many handler threads). N toucher threads (bench::TouchGroup, the
// benchmark's one toucher) time their first touches. Placement (handler CPU,
// toucher CPUs) is the caller's choice; each handler records the CPU it
// resolved each page on, and the CPU time it used.
#include <thread>

#include "bench_common.h"

namespace {

struct Counts {
  uint64_t messages = 0;
  uint64_t resolved = 0;  // CONTINUEs that mapped the page
  uint64_t existed = 0;   // EEXIST: mapped already, woken
  int error = 0;          // first unexpected -errno
  uint64_t cpu_ns = 0;    // CPU time of the handler thread
};

struct Shared {
  int uffd;
  uintptr_t base;
  size_t page_size;
  uint64_t spin_ns;
  const std::atomic<bool>* stop;
  std::vector<int32_t>* cpu_by_page;  // handler CPU that resolved each page
};

inline void Resolve(const Shared& sh, const struct uffd_msg* msgs, size_t count, Counts* counts) {
  for (size_t i = 0; i < count; i++) {
    if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
    counts->messages++;
    uintptr_t page = msgs[i].arg.pagefault.address & ~static_cast<uintptr_t>(sh.page_size - 1);
    int64_t done = bench::ContinueRange(sh.uffd, page, sh.page_size);
    if (done > 0) counts->resolved++;
    else if (done == 0) counts->existed++;
    else if (!counts->error) counts->error = static_cast<int>(done);
    size_t index = (page - sh.base) / sh.page_size;
    if (index < sh.cpu_by_page->size()) (*sh.cpu_by_page)[index] = sched_getcpu();
  }
}

void Handle(Shared sh, int cpu, Counts* counts) {
  if (cpu >= 0) bench::PinSelf(cpu);
  uint64_t cpu0 = bench::ThreadCpuNs();
  int error = bench::ServeUffd(sh.uffd, sh.spin_ns, *sh.stop, [&](const struct uffd_msg* msgs, size_t count) { Resolve(sh, msgs, count, counts); });
  if (error && !counts->error) counts->error = error;
  counts->cpu_ns = bench::ThreadCpuNs() - cpu0;
}

// cReference(pageSize, pages, huge, orders: Uint32Array[], handlerCpu, toucherCpus: number[], options?)
//   options: { fd?: memfd filled with PageByte (else a fresh one), spinUs?: 0, handlers?: 1 }
//   -> { latencyNs: Float64Array[], touchCpus: Int32Array[], handlerCpuByPage: Int32Array, checksum, expected,
//        messages, resolved, existed, error, wallNs, handlerCpuNs } | { errno, where }
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
  int fd = static_cast<int>(bench::Option(info[6], "fd", -1));
  uint64_t spin_ns = static_cast<uint64_t>(bench::Option(info[6], "spinUs", 0) * 1000);
  int handlers = static_cast<int>(bench::Option(info[6], "handlers", 1));
  if (handlers < 1 || handlers > 64) {
    Napi::RangeError::New(env, "handlers must be 1..64").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  size_t threads = order_list.Length();
  bench::TouchGroup group;
  group.orders.resize(threads);
  group.cpus.assign(threads, -1);
  uint64_t expected = 0;
  for (uint32_t t = 0; t < threads; t++) {
    if (!bench::PageList(info, order_list.Get(t), pages, &group.orders[t])) return env.Undefined();
    expected += bench::ExpectedSum(group.orders[t].data(), group.orders[t].size());
    if (t < cpu_list.Length()) group.cpus[t] = cpu_list.Get(t).As<Napi::Number>().Int32Value();
  }

  bench::FilledMemfd mem;
  if (fd >= 0) {
    bench::BorrowMemfd(fd, page_size, pages, &mem);
  } else {
    int rc = bench::MakeFilledMemfd(page_size, pages, huge, &mem);
    if (rc < 0) return bench::Errno(env, rc, "memfd");
  }
  uint8_t* view;
  int uffd;
  Napi::Value failed = bench::MapRegisteredView(env, mem, true, huge, &view, &uffd);
  if (!failed.IsUndefined()) return failed;

  std::atomic<bool> stop{false};
  std::vector<int32_t> cpu_by_page(pages, -1);
  Shared sh = {uffd, reinterpret_cast<uintptr_t>(view), page_size, spin_ns, &stop, &cpu_by_page};
  std::vector<Counts> counts(handlers);
  std::vector<std::thread> handler_threads;
  for (int h = 0; h < handlers; h++) handler_threads.emplace_back(Handle, sh, handler_cpu, &counts[h]);
  uint64_t sum = group.Run(view, page_size);
  stop.store(true, std::memory_order_release);
  for (auto& th : handler_threads) th.join();
  close(uffd);
  munmap(view, mem.length());

  Counts total;
  for (const Counts& c : counts) {
    total.messages += c.messages;
    total.resolved += c.resolved;
    total.existed += c.existed;
    total.cpu_ns += c.cpu_ns;
    if (!total.error) total.error = c.error;
  }
  Napi::Object result = Napi::Object::New(env);
  bench::SetTouches(env, result, group);
  result.Set("handlerCpuByPage", bench::ToArray(env, cpu_by_page));
  result.Set("checksum", Napi::Number::New(env, static_cast<double>(sum)));
  result.Set("expected", Napi::Number::New(env, static_cast<double>(expected)));
  result.Set("messages", Napi::Number::New(env, static_cast<double>(total.messages)));
  result.Set("resolved", Napi::Number::New(env, static_cast<double>(total.resolved)));
  result.Set("existed", Napi::Number::New(env, static_cast<double>(total.existed)));
  result.Set("error", Napi::Number::New(env, total.error));
  result.Set("handlerCpuNs", Napi::Number::New(env, static_cast<double>(total.cpu_ns)));
  return result;
}

}  // namespace

void InitBenchReference(Napi::Env env, Napi::Object exports) {
  exports.Set("cReference", Napi::Function::New(env, Reference, "cReference"));
}
