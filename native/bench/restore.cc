// The C reference of a snapshot restore (npm run bench:restore): a
// hand-written page server for a guest process's memfd view, registered
// MISSING|MINOR by the guest, whose uffd the benchmark received over a
// socket. It serves the very guest the library's scenarios serve, in the
// same run, so the library's restore time is a ratio to this one.
//   on demand: the handler thread (bench::ServeUffd, the C reference's loop)
//     copies each faulting page from the image into the memfd (pwrite) and
//     CONTINUEs it;
//   replay: before the guest is told to go, the pages of a recording are
//     copied in their recorded order, contiguous pages together, and each
//     run mapped with one CONTINUE; faults on pages the recording missed are
//     then served on demand. The whole image as the list is an eager copy.
// pageDigest hashes pages of a mapping: the guest digests what it read, the
// benchmark the same pages of the image, and the two must agree.
#include <cstdio>
#include <memory>
#include <thread>

#include "bench_common.h"

namespace {

enum PageState : uint8_t { kAbsent = 0, kWriting = 1, kWritten = 2 };

struct Restore {
  int uffd = -1;
  int memfd = -1;
  uintptr_t base = 0;
  size_t page_size = 0;
  size_t pages = 0;
  const uint8_t* image = nullptr;
  size_t image_length = 0;
  // Who copies a page: the prefetch or the handler, never both.
  std::unique_ptr<std::atomic<uint8_t>[]> state;
  std::atomic<bool> stop{false};
  std::thread handler;
  bool joined = false;
  uint64_t start_ns = 0;
  uint64_t prefetch_ns = 0;
  uint64_t prefetched = 0;
  uint64_t continues = 0;  // CONTINUE calls of the prefetch
  int prefetch_error = 0;
  // Handler thread only (read after join).
  uint64_t messages = 0;
  uint64_t fetched = 0;
  uint64_t resolved = 0;
  uint64_t existed = 0;
  uint64_t cpu_ns = 0;
  int error = 0;

  void Join() {
    if (joined) return;
    joined = true;
    stop.store(true, std::memory_order_release);
    if (handler.joinable()) handler.join();
  }
  ~Restore() {
    Join();
    if (image) munmap(const_cast<uint8_t*>(image), image_length);
    if (uffd >= 0) close(uffd);
    if (memfd >= 0) close(memfd);
  }
};

// Copies pages [first, first + count) of the image into the memfd.
int CopyPages(const Restore& r, size_t first, size_t count) {
  size_t offset = first * r.page_size;
  size_t length = count * r.page_size;
  while (length > 0) {
    ssize_t n = pwrite(r.memfd, r.image + offset, length, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    offset += static_cast<size_t>(n);
    length -= static_cast<size_t>(n);
  }
  return 0;
}

void Serve(Restore* r, const struct uffd_msg* msgs, size_t count) {
  for (size_t i = 0; i < count; i++) {
    if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
    r->messages++;
    uintptr_t address = msgs[i].arg.pagefault.address & ~static_cast<uintptr_t>(r->page_size - 1);
    size_t page = (address - r->base) / r->page_size;
    if (address < r->base || page >= r->pages) {
      if (!r->error) r->error = -ERANGE;
      continue;
    }
    uint8_t expected = kAbsent;
    if (r->state[page].compare_exchange_strong(expected, kWriting)) {
      int rc = CopyPages(*r, page, 1);
      if (rc < 0 && !r->error) r->error = rc;
      r->state[page].store(kWritten, std::memory_order_release);
      r->fetched++;
    } else {
      while (r->state[page].load(std::memory_order_acquire) != kWritten) bench::CpuRelax();
    }
    int64_t done = bench::ContinueRange(r->uffd, address, r->page_size);
    if (done > 0) r->resolved++;
    else if (done == 0) r->existed++;
    else if (!r->error) r->error = static_cast<int>(done);
  }
}

// Claims, copies and maps the listed pages, runs of consecutive pages at once.
void Prefetch(Restore* r, const uint32_t* list, size_t count) {
  size_t i = 0;
  while (i < count) {
    uint8_t expected = kAbsent;
    if (list[i] >= r->pages || !r->state[list[i]].compare_exchange_strong(expected, kWriting)) {
      i++;
      continue;
    }
    size_t first = list[i];
    size_t run = 1;
    while (i + run < count && list[i + run] == first + run && first + run < r->pages) {
      expected = kAbsent;
      if (!r->state[first + run].compare_exchange_strong(expected, kWriting)) break;
      run++;
    }
    int rc = CopyPages(*r, first, run);
    if (rc < 0 && !r->prefetch_error) r->prefetch_error = rc;
    for (size_t p = first; p < first + run; p++) r->state[p].store(kWritten, std::memory_order_release);
    int64_t done = bench::ContinueRange(r->uffd, r->base + first * r->page_size, run * r->page_size);
    r->continues++;
    if (done < 0 && !r->prefetch_error) r->prefetch_error = static_cast<int>(done);
    r->prefetched += run;
    i += run;
  }
}

void Finalize(Napi::Env, Restore* r) { delete r; }

// cRestoreStart(uffdFd, base, length, pageSize, memfdFd, imageFd, prefetch: Uint32Array)
//   Takes its own duplicates of the three descriptors. Starts the handler
//   thread, copies and maps the `prefetch` pages (empty: on demand only) and
//   returns; the guest may go then.
//   -> { handle, startNs, prefetchNs, prefetched, continues } | { errno, where }
Napi::Value RestoreStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  for (int i = 0; i < 6; i++)
    if (!info[i].IsNumber()) {
      Napi::TypeError::New(env, "expected (uffdFd, base, length, pageSize, memfdFd, imageFd, prefetch)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  auto* r = new Restore();
  auto fail = [&](int err, const char* where) {
    delete r;
    return bench::Errno(env, err, where);
  };
  r->base = static_cast<uintptr_t>(info[1].As<Napi::Number>().DoubleValue());
  size_t length = static_cast<size_t>(info[2].As<Napi::Number>().DoubleValue());
  r->page_size = info[3].As<Napi::Number>().Uint32Value();
  if (r->page_size == 0 || (r->page_size & (r->page_size - 1)) || length == 0 || length % r->page_size) {
    delete r;
    Napi::RangeError::New(env, "length must be a positive multiple of a power-of-two page size").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  r->pages = length / r->page_size;
  std::vector<uint32_t> list;
  if (!bench::PageList(info, info[6], r->pages, &list)) {
    delete r;
    return env.Undefined();
  }
  r->uffd = fcntl(info[0].As<Napi::Number>().Int32Value(), F_DUPFD_CLOEXEC, 0);
  if (r->uffd < 0) return fail(-errno, "dup uffd");
  r->memfd = fcntl(info[4].As<Napi::Number>().Int32Value(), F_DUPFD_CLOEXEC, 0);
  if (r->memfd < 0) return fail(-errno, "dup memfd");
  int image_fd = info[5].As<Napi::Number>().Int32Value();
  void* image = mmap(nullptr, length, PROT_READ, MAP_SHARED, image_fd, 0);
  if (image == MAP_FAILED) return fail(-errno, "mmap image");
  r->image = static_cast<const uint8_t*>(image);
  r->image_length = length;
  // Page tables of the image filled now, outside the timed restore: the
  // library's page server reads the image through a mapping it made (and
  // filled) long before, and so must this one.
  madvise(image, length, MADV_POPULATE_READ);
  r->state.reset(new std::atomic<uint8_t>[r->pages]);
  for (size_t p = 0; p < r->pages; p++) r->state[p].store(kAbsent, std::memory_order_relaxed);

  r->start_ns = MonotonicNs();
  r->handler = std::thread([r] {
    uint64_t cpu0 = bench::ThreadCpuNs();
    int error = bench::ServeUffd(r->uffd, 0, r->stop, [r](const struct uffd_msg* msgs, size_t count) { Serve(r, msgs, count); });
    if (error && !r->error) r->error = error;
    r->cpu_ns = bench::ThreadCpuNs() - cpu0;
  });
  Prefetch(r, list.data(), list.size());
  r->prefetch_ns = MonotonicNs() - r->start_ns;

  Napi::Object result = Napi::Object::New(env);
  result.Set("handle", Napi::External<Restore>::New(env, r, Finalize));
  result.Set("startNs", Napi::Number::New(env, static_cast<double>(r->start_ns)));
  result.Set("prefetchNs", Napi::Number::New(env, static_cast<double>(r->prefetch_ns)));
  result.Set("prefetched", Napi::Number::New(env, static_cast<double>(r->prefetched)));
  result.Set("continues", Napi::Number::New(env, static_cast<double>(r->continues)));
  return result;
}

// cRestoreStop(handle) -> { messages, fetched, prefetched, resolved, existed, bytesMoved, error, prefetchError, handlerCpuNs }
// Joins the handler thread; idempotent (the descriptors go with the handle).
Napi::Value RestoreStop(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsExternal()) {
    Napi::TypeError::New(env, "expected a cRestoreStart handle").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Restore* r = info[0].As<Napi::External<Restore>>().Data();
  r->Join();
  auto num = [&](uint64_t v) { return Napi::Number::New(env, static_cast<double>(v)); };
  Napi::Object result = Napi::Object::New(env);
  result.Set("messages", num(r->messages));
  result.Set("fetched", num(r->fetched));
  result.Set("prefetched", num(r->prefetched));
  result.Set("resolved", num(r->resolved));
  result.Set("existed", num(r->existed));
  result.Set("bytesMoved", num((r->fetched + r->prefetched) * r->page_size));
  result.Set("error", Napi::Number::New(env, r->error));
  result.Set("prefetchError", Napi::Number::New(env, r->prefetch_error));
  result.Set("handlerCpuNs", num(r->cpu_ns));
  return result;
}

// pageDigest(buffer: ArrayBuffer, pageSize, pages: Uint32Array) -> hex string
// Every byte of every listed page, each page's hash seeded with its index and
// the pages combined order-independently (xor), so touchers may split a list.
Napi::Value PageDigest(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer() || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "expected (ArrayBuffer, pageSize, Uint32Array)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
  size_t page_size = info[1].As<Napi::Number>().Uint32Value();
  if (page_size < 8 || page_size % 8) {
    Napi::RangeError::New(env, "page size must be a positive multiple of 8").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::vector<uint32_t> list;
  if (!bench::PageList(info, info[2], buffer.ByteLength() / page_size, &list)) return env.Undefined();
  const uint8_t* base = static_cast<const uint8_t*>(buffer.Data());
  uint64_t all = 0;
  for (uint32_t page : list) {
    const uint64_t* words = reinterpret_cast<const uint64_t*>(base + static_cast<size_t>(page) * page_size);
    uint64_t h = 0x9e3779b97f4a7c15ull * (page + 1ull);
    for (size_t w = 0; w < page_size / 8; w++) h = (h ^ words[w]) * 0x100000001b3ull;
    all ^= h;
  }
  char hex[17];
  snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(all));
  return Napi::String::New(env, hex);
}

Napi::Value Now(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(MonotonicNs()));
}

}  // namespace

void InitBenchRestore(Napi::Env env, Napi::Object exports) {
  exports.Set("cRestoreStart", Napi::Function::New(env, RestoreStart, "cRestoreStart"));
  exports.Set("cRestoreStop", Napi::Function::New(env, RestoreStop, "cRestoreStop"));
  exports.Set("pageDigest", Napi::Function::New(env, PageDigest, "pageDigest"));
  exports.Set("now", Napi::Function::New(env, Now, "now"));
}
