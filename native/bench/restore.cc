// The C reference of a snapshot restore (npm run bench:restore): a
// hand-written page server for a guest process whose uffd the benchmark
// received over a socket. It serves the very guest the library's scenarios
// serve, in the same run, so the library's restore time is a ratio to this
// one. Two kinds of guest memory, as Firecracker's two backends:
// - continue: a memfd view registered MISSING|MINOR. On demand the handler
//   thread (bench::ServeUffd, the C reference's loop) copies each faulting
//   page from the image into the memfd (pwrite) and CONTINUEs it; a replay
//   copies the recorded pages, contiguous pages together, before the guest
//   is told to go, and maps each run with one CONTINUE.
// - copy: anonymous memory registered MISSING. On demand each faulting page
//   is filled by one UFFDIO_COPY from the image; a replay COPYs each run
//   with DONTWAKE and wakes the whole range once at the end.
// Faults on pages a recording missed are then served on demand. The whole
// image as the list is an eager copy.
// pageDigest hashes pages of a mapping: the guest digests what it read, the
// benchmark the same pages of the image, and the two must agree.
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "bench_common.h"

namespace {

enum PageState : uint8_t { kAbsent = 0, kWriting = 1, kWritten = 2 };

enum class Fill { kContinue, kCopy };

struct Restore {
  Fill fill = Fill::kContinue;
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
  uint64_t continues = 0;  // CONTINUE (or COPY) calls of the prefetch
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

// UFFDIO_COPY of pages [first, first + count) of the image into the guest's
// anonymous memory. A page already there (EEXIST) is skipped, so the rest of
// the run still goes in one call. Returns pages copied or -errno.
int64_t CopyRun(const Restore& r, size_t first, size_t count, bool wake) {
  size_t done = 0;
  size_t length = count * r.page_size;
  int64_t copied = 0;
  while (done < length) {
    struct uffdio_copy copy = {};
    copy.dst = r.base + first * r.page_size + done;
    copy.src = reinterpret_cast<uintptr_t>(r.image + first * r.page_size + done);
    copy.len = length - done;
    copy.mode = wake ? 0 : UFFDIO_COPY_MODE_DONTWAKE;
    if (ioctl(r.uffd, uffd_abi::kCopy, &copy) == 0) return copied + static_cast<int64_t>(copy.len) / static_cast<int64_t>(r.page_size);
    int err = errno;
    if (copy.copy > 0) {
      done += static_cast<size_t>(copy.copy);
      copied += copy.copy / static_cast<int64_t>(r.page_size);
      continue;
    }
    if (err == EAGAIN) continue;
    if (err != EEXIST) return -err;
    if (wake) {
      struct uffdio_range range = {copy.dst, r.page_size};
      ioctl(r.uffd, uffd_abi::kWake, &range);
    }
    done += r.page_size;
  }
  return copied;
}

void Wake(const Restore& r, uintptr_t start, size_t length) {
  struct uffdio_range range = {start, length};
  ioctl(r.uffd, uffd_abi::kWake, &range);
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
    if (r->fill == Fill::kCopy) {
      if (r->state[page].compare_exchange_strong(expected, kWriting)) {
        int64_t done = CopyRun(*r, page, 1, true);
        r->state[page].store(kWritten, std::memory_order_release);
        r->fetched++;
        if (done > 0) r->resolved++;
        else if (done == 0) r->existed++;
        else if (!r->error) r->error = static_cast<int>(done);
      } else {
        // The prefetch copied it without waking: wake this faulter.
        while (r->state[page].load(std::memory_order_acquire) != kWritten) bench::CpuRelax();
        Wake(*r, address, r->page_size);
        r->existed++;
      }
      continue;
    }
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
    if (r->fill == Fill::kCopy) {
      int64_t done = CopyRun(*r, first, run, false);
      if (done < 0 && !r->prefetch_error) r->prefetch_error = static_cast<int>(done);
      for (size_t p = first; p < first + run; p++) r->state[p].store(kWritten, std::memory_order_release);
    } else {
      int rc = CopyPages(*r, first, run);
      if (rc < 0 && !r->prefetch_error) r->prefetch_error = rc;
      for (size_t p = first; p < first + run; p++) r->state[p].store(kWritten, std::memory_order_release);
      int64_t done = bench::ContinueRange(r->uffd, r->base + first * r->page_size, run * r->page_size);
      if (done < 0 && !r->prefetch_error) r->prefetch_error = static_cast<int>(done);
    }
    r->continues++;
    r->prefetched += run;
    i += run;
  }
  // COPY runs went in without waking anyone: one wake for all of them.
  if (r->fill == Fill::kCopy && r->continues) Wake(*r, r->base, r->pages * r->page_size);
}

void Finalize(Napi::Env, Restore* r) { delete r; }

// cRestoreStart(uffdFd, base, length, pageSize, memfdFd, imageFd, prefetch: Uint32Array, fill?: 'continue' | 'copy')
//   Takes its own duplicates of the descriptors (memfdFd -1 with 'copy':
//   anonymous guest memory has none). Starts the handler
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
  if (info.Length() > 7 && !info[7].IsUndefined()) {
    std::string fill = info[7].IsString() ? info[7].As<Napi::String>().Utf8Value() : "";
    if (fill != "copy" && fill != "continue") {
      delete r;
      Napi::TypeError::New(env, "fill must be 'continue' or 'copy'").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    r->fill = fill == "copy" ? Fill::kCopy : Fill::kContinue;
  }
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
  if (r->fill == Fill::kContinue) {
    r->memfd = fcntl(info[4].As<Napi::Number>().Int32Value(), F_DUPFD_CLOEXEC, 0);
    if (r->memfd < 0) return fail(-errno, "dup memfd");
  }
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
  Napi::ArrayBuffer buffer;
  size_t page_size;
  // Hashed 8 bytes at a time.
  if (!bench::MappingArgs(info, "expected (ArrayBuffer, pageSize, Uint32Array)", 8, &buffer, &page_size)) return env.Undefined();
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
