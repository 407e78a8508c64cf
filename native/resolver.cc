// The native resolver: a thread that reads a userfaultfd, CONTINUEs the pages
// the present bitmap (shared with JavaScript) marks, and hands only absent
// pages and non-cooperative events to JavaScript, in batches, through a
// ThreadSafeFunction. It also enforces the deadlock rule: when the faulting
// thread is this environment's JavaScript thread and the page is absent,
// JavaScript can never run to fetch it, so the fault is either fatal (a clear
// message, then abort) or mapped as-is, as the user chose.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "addon_state.h"
#include "args.h"
#include "uffd_abi.h"

namespace {

// 0..1023 µs one bucket per µs, then log2 buckets (lib/fault-handler.ts
// turns them back into values for the merged histogram).
constexpr size_t kLinearBuckets = 1024;
constexpr size_t kBuckets = kLinearBuckets + 32;
constexpr size_t kMessages = 128;
constexpr double kLoopThreadMapped = 0x100;  // event codes JavaScript knows (LOOP_THREAD_MAPPED,
constexpr double kResolverFailed = 0x101;    // RESOLVER_FAILED in lib/fault-handler.ts)

struct Region {
  uint64_t address;
  uint64_t length;
  uint64_t offset;
};

struct Batch {
  std::vector<double> faults;  // address, flags, tid, read time (ns) per fault
  std::vector<double> events;  // code, a, b, c per event
};

struct Resolver {
  int uffd = -1;
  int memfd = -1;
  int stop_fd = -1;
  pid_t js_tid = 0;
  size_t page_size = 4096;
  uint64_t read_ahead = 0;
  int loop_action = 0;  // 0 abort, 1 map as-is

  // The bitmap lives in a JavaScript ArrayBuffer kept alive by bitmap_ref.
  uint32_t* bitmap = nullptr;
  uint64_t bitmap_bits = 0;
  Napi::ObjectReference bitmap_ref;

  std::mutex regions_mu;
  std::vector<Region> regions;
  bool regions_changed = false;

  std::thread thread;
  Napi::ThreadSafeFunction tsfn;
  bool joined = false;
  AddonState* state = nullptr;

  std::atomic<uint64_t> faults{0}, resolved{0}, already_present{0}, read_ahead_pages{0}, loop_faults{0}, deferrals{0};
  std::atomic<uint64_t> buckets[kBuckets] = {};

  bool Present(uint64_t page) const {
    if (page >= bitmap_bits) return false;
    return (__atomic_load_n(&bitmap[page >> 5], __ATOMIC_ACQUIRE) >> (page & 31)) & 1u;
  }
  void Clear(uint64_t page) {
    if (page < bitmap_bits) __atomic_fetch_and(&bitmap[page >> 5], ~(1u << (page & 31)), __ATOMIC_RELEASE);
  }
};

inline uint64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

void Record(Resolver* r, uint64_t start_ns) {
  uint64_t us = (NowNs() - start_ns) / 1000;
  size_t b;
  if (us < kLinearBuckets) {
    b = static_cast<size_t>(us);
  } else {
    size_t log = 0;
    for (uint64_t v = us / kLinearBuckets; v > 1; v >>= 1) log++;
    b = kLinearBuckets + (log < 31 ? log : 31);
  }
  r->buckets[b].fetch_add(1, std::memory_order_relaxed);
}

int Ioctl(int fd, unsigned long request, void* arg) { return ioctl(fd, request, arg) == 0 ? 0 : -errno; }

int Wake(int fd, uint64_t start, uint64_t len) {
  struct uffdio_range range = {start, len};
  return Ioctl(fd, uffd_abi::kWake, &range);
}

// CONTINUE at `address`, extended over following present pages of the
// region. Returns 0 when the faulting page is mapped (EEXIST: mapped by
// someone else, and then woken), or its -errno. Mirrors #map in
// lib/fault-handler.ts.
int MapRange(Resolver* r, const Region& region, uint64_t address, uint64_t page) {
  const uint64_t ps = r->page_size;
  uint64_t end = address + ps;
  if (r->read_ahead > 0) {
    uint64_t limit = std::min(region.address + region.length, address + (r->read_ahead + 1) * ps);
    for (uint64_t next = page + 1; end < limit && r->Present(next); next++) end += ps;
  }
  uint64_t at = address;
  uint64_t mapped = 0;
  while (at < end) {
    uffdx_continue c = {};
    c.range.start = at;
    c.range.len = end - at;
    int rc = Ioctl(r->uffd, uffd_abi::kContinue, &c);
    if (rc == 0) {
      mapped += end - at;
      at = end;
      break;
    }
    if (c.mapped > 0) {  // partial progress: the prefix is mapped and woken
      mapped += static_cast<uint64_t>(c.mapped);
      at += static_cast<uint64_t>(c.mapped);
      continue;
    }
    if (rc == -EEXIST) {  // mapped, but its faulter is not woken by the EEXIST
      Wake(r->uffd, at, ps);
      if (at == address) return 0;  // a repeated fault: its window was mapped with it
      at += ps;
      continue;
    }
    if (at == address) return rc;
    break;
  }
  // The faulting page is the first mapped whenever anything was mapped.
  if (mapped > ps) r->read_ahead_pages.fetch_add(mapped / ps - 1, std::memory_order_relaxed);
  return 0;
}

const Region* Find(const std::vector<Region>& regions, uint64_t address) {
  for (const Region& reg : regions)
    if (address >= reg.address && address - reg.address < reg.length) return &reg;
  return nullptr;
}

void Cut(std::vector<Region>& regions, uint64_t start, uint64_t end) {
  std::vector<Region> kept;
  for (const Region& reg : regions) {
    uint64_t reg_end = reg.address + reg.length;
    if (end <= reg.address || start >= reg_end) {
      kept.push_back(reg);
      continue;
    }
    if (reg.address < start) kept.push_back({reg.address, start - reg.address, reg.offset});
    if (end < reg_end) kept.push_back({end, reg_end - end, reg.offset + (end - reg.address)});
  }
  regions.swap(kept);
}

// The JavaScript thread faulted on a page only JavaScript could fetch.
void LoopThreadFault(Resolver* r, uint64_t address, uint64_t offset, Batch* batch) {
  if (r->loop_action == 0) {
    fprintf(stderr,
            "userfaultfd: FATAL: the JavaScript thread (tid %d) of the environment serving this userfaultfd touched "
            "address 0x%llx (memfd offset %llu), a page not marked present. Only a JavaScript fetch could provide "
            "it, and JavaScript cannot run while its own thread is blocked in the fault: the process would hang "
            "forever. Rule: the thread that resolves faults must not touch absent pages of the ranges it serves "
            "(mark them present first, touch them from another thread, or choose onLoopThreadFault: 'map-as-is'). "
            "Aborting.\n",
            static_cast<int>(r->js_tid), static_cast<unsigned long long>(address), static_cast<unsigned long long>(offset));
    fflush(stderr);
    abort();
  }
  // Map what the page cache holds; a hole becomes a zero page first, since
  // CONTINUE cannot map a hole. Allocation never overwrites existing content.
  fallocate(r->memfd, 0, static_cast<off_t>(offset), static_cast<off_t>(r->page_size));
  uffdx_continue c = {};
  c.range.start = address;
  c.range.len = r->page_size;
  int rc = Ioctl(r->uffd, uffd_abi::kContinue, &c);
  if (rc == -EEXIST || rc < 0) Wake(r->uffd, address, r->page_size);
  r->loop_faults.fetch_add(1, std::memory_order_relaxed);
  batch->events.insert(batch->events.end(), {kLoopThreadMapped, static_cast<double>(address), static_cast<double>(offset), 0});
}

void Deliver(Resolver* r, Batch* batch) {
  if (batch->faults.empty() && batch->events.empty()) {
    delete batch;
    return;
  }
  napi_status status = r->tsfn.NonBlockingCall(batch, [](Napi::Env env, Napi::Function cb, Batch* b) {
    std::unique_ptr<Batch> owned(b);
    if (env == nullptr || cb.IsEmpty()) return;
    size_t count = b->faults.size() / 4;
    Napi::Float64Array faults = Napi::Float64Array::New(env, b->faults.size());
    uint64_t now = NowNs();
    for (size_t i = 0; i < count; i++) {
      faults[i * 4] = b->faults[i * 4];
      faults[i * 4 + 1] = b->faults[i * 4 + 1];
      faults[i * 4 + 2] = b->faults[i * 4 + 2];
      // JavaScript has its own clock: hand it the age, not the read time.
      faults[i * 4 + 3] = static_cast<double>(now - static_cast<uint64_t>(b->faults[i * 4 + 3]));
    }
    Napi::Array events = Napi::Array::New(env, b->events.size());
    for (size_t i = 0; i < b->events.size(); i++) events.Set(static_cast<uint32_t>(i), Napi::Number::New(env, b->events[i]));
    cb.Call({faults, Napi::Number::New(env, static_cast<double>(count)), events});
  });
  if (status != napi_ok) {
    // The environment is going away: wake the faulters rather than lose them.
    for (size_t i = 0; i < batch->faults.size(); i += 4)
      Wake(r->uffd, static_cast<uint64_t>(batch->faults[i]) & ~(r->page_size - 1), r->page_size);
    delete batch;
  }
}

void Run(std::shared_ptr<Resolver> r) {
  std::vector<struct uffd_msg> msgs(kMessages);
  std::vector<Region> regions;
  std::vector<double> deferred;  // address, flags, tid, read time: faults whose CONTINUE met EAGAIN
  struct pollfd fds[2] = {{r->uffd, POLLIN, 0}, {r->stop_fd, POLLIN, 0}};
  const uint64_t ps = r->page_size;
  int failure = 0;  // errno that ended the loop, reported to JavaScript
  for (;;) {
    int rc = poll(fds, 2, deferred.empty() ? -1 : 1);
    if (rc < 0 && errno != EINTR) {
      failure = errno;
      break;
    }
    if (fds[1].revents) break;
    if (fds[0].revents & (POLLERR | POLLNVAL)) {
      failure = (fds[0].revents & POLLNVAL) ? EBADF : EIO;
      break;
    }
    ssize_t n = read(r->uffd, msgs.data(), msgs.size() * sizeof(struct uffd_msg));
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      failure = errno;
      break;
    }
    size_t count = n > 0 ? static_cast<size_t>(n) / sizeof(struct uffd_msg) : 0;
    uint64_t read_ns = NowNs();
    {
      std::lock_guard<std::mutex> lock(r->regions_mu);
      if (r->regions_changed) {
        regions = r->regions;
        r->regions_changed = false;
      }
    }
    auto* batch = new Batch();
    // Events before faults: a REMOVE read together with a fault must apply first.
    for (size_t i = 0; i < count; i++) {
      const struct uffd_msg& m = msgs[i];
      switch (m.event) {
        case UFFD_EVENT_REMOVE:
        case UFFD_EVENT_UNMAP: {
          uint64_t start = m.arg.remove.start, end = m.arg.remove.end;
          for (const Region& reg : regions) {
            uint64_t s = std::max(start, reg.address), e = std::min(end, reg.address + reg.length);
            if (m.event == UFFD_EVENT_REMOVE)
              for (uint64_t a = s; a < e; a += ps) r->Clear((reg.offset + (a - reg.address)) / ps);
          }
          if (m.event == UFFD_EVENT_UNMAP) Cut(regions, start, end);
          batch->events.insert(batch->events.end(), {static_cast<double>(m.event), static_cast<double>(start), static_cast<double>(end), 0});
          break;
        }
        case UFFD_EVENT_REMAP: {
          uint64_t from = m.arg.remap.from, to = m.arg.remap.to, len = m.arg.remap.len;
          std::vector<Region> moved;
          for (const Region& reg : regions) {
            uint64_t s = std::max(from, reg.address), e = std::min(from + len, reg.address + reg.length);
            if (s < e) moved.push_back({to + (s - from), e - s, reg.offset + (s - reg.address)});
          }
          Cut(regions, from, from + len);
          regions.insert(regions.end(), moved.begin(), moved.end());
          batch->events.insert(batch->events.end(), {static_cast<double>(m.event), static_cast<double>(from), static_cast<double>(to), static_cast<double>(len)});
          break;
        }
        case UFFD_EVENT_FORK:
          batch->events.insert(batch->events.end(), {static_cast<double>(m.event), static_cast<double>(m.arg.fork.ufd), 0, 0});
          break;
        default:
          break;
      }
    }
    std::vector<double> retry;
    retry.swap(deferred);
    for (size_t i = 0; i < count; i++) {
      const struct uffd_msg& m = msgs[i];
      if (m.event != UFFD_EVENT_PAGEFAULT) continue;
      // Counted when read, before any faulter is woken: a woken thread may
      // report back before this thread runs again.
      r->faults.fetch_add(1, std::memory_order_relaxed);
      retry.insert(retry.end(), {static_cast<double>(m.arg.pagefault.address), static_cast<double>(m.arg.pagefault.flags),
                                 static_cast<double>(m.arg.pagefault.feat.ptid), static_cast<double>(read_ns)});
    }
    for (size_t i = 0; i < retry.size(); i += 4) {
      uint64_t address = static_cast<uint64_t>(retry[i]) & ~(ps - 1);
      uint64_t started = static_cast<uint64_t>(retry[i + 3]);
      pid_t tid = static_cast<pid_t>(retry[i + 2]);
      const Region* reg = Find(regions, address);
      if (reg != nullptr) {
        uint64_t offset = reg->offset + (address - reg->address);
        uint64_t page = offset / ps;
        if (r->Present(page)) {
          int res = MapRange(r.get(), *reg, address, page);
          if (res == 0 || res == -ESRCH) {
            r->resolved.fetch_add(1, std::memory_order_relaxed);
            r->already_present.fetch_add(1, std::memory_order_relaxed);
            Record(r.get(), started);
            continue;
          }
          if (res == -EAGAIN) {
            r->deferrals.fetch_add(1, std::memory_order_relaxed);
            deferred.insert(deferred.end(), {retry[i], retry[i + 1], retry[i + 2], retry[i + 3]});
            continue;
          }
          if (res == -EFAULT || res == -EINVAL) r->Clear(page);  // gone since it was marked: fetch again
        }
        if (tid == r->js_tid && !r->Present(page)) {
          LoopThreadFault(r.get(), address, offset, batch);
          continue;
        }
      }
      batch->faults.insert(batch->faults.end(), {retry[i], retry[i + 1], retry[i + 2], retry[i + 3]});
    }
    Deliver(r.get(), batch);
  }
  // Leaving with faults deferred: wake them; JavaScript unregisters the
  // ranges when it stops, so they proceed.
  for (size_t i = 0; i < deferred.size(); i += 4) Wake(r->uffd, static_cast<uint64_t>(deferred[i]) & ~(ps - 1), ps);
  if (failure != 0) {
    // Nobody reads the uffd any more: JavaScript must stop loudly, not hang.
    auto* last = new Batch();
    last->events.insert(last->events.end(), {kResolverFailed, static_cast<double>(failure), 0, 0});
    Deliver(r.get(), last);
  }
  r->tsfn.Release();
}

void StopAndJoin(const std::shared_ptr<Resolver>& r) {
  if (r->joined) return;
  r->joined = true;
  uint64_t one = 1;
  ssize_t ignored = write(r->stop_fd, &one, sizeof(one));
  (void)ignored;
  if (r->thread.joinable()) r->thread.join();
  close(r->stop_fd);
  r->stop_fd = -1;
  if (r->state) r->state->RemoveStopper(r.get());
}

using Handle = std::shared_ptr<Resolver>;

Handle* HandleOf(const Napi::CallbackInfo& info) {
  if (!info[0].IsExternal()) return args::Fail(info, "expected a resolver handle"), nullptr;
  return info[0].As<Napi::External<Handle>>().Data();
}

// resolverStart(uffd, memfd, bitmap, readAhead, loopAction, onBatch[, pageSize]) -> External | -errno
Napi::Value Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonState* state = AddonState::Of(env);
  int uffd = -1, memfd = -1;
  int64_t read_ahead, loop_action;
  if (!args::Fd(info, 0, &uffd) || !args::Fd(info, 1, &memfd)) return env.Undefined();
  if (!info[2].IsArrayBuffer()) return args::Fail(info, "expected the bitmap ArrayBuffer"), env.Undefined();
  if (!args::Int(info, 3, &read_ahead) || !args::Int(info, 4, &loop_action)) return env.Undefined();
  if (!info[5].IsFunction()) return args::Fail(info, "expected a callback"), env.Undefined();
  auto r = std::make_shared<Resolver>();
  r->uffd = uffd;
  r->memfd = memfd;
  r->js_tid = state->js_thread_tid;
  r->page_size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  // A hugetlb memfd's faults, bitmap bits and CONTINUEs are per huge page.
  int64_t memfd_page = 0;
  if (info.Length() > 6 && !info[6].IsUndefined()) {
    if (!args::Int(info, 6, &memfd_page)) return env.Undefined();
    if (memfd_page <= 0 || (memfd_page & (memfd_page - 1)) != 0) return args::Fail(info, "expected a power-of-two page size"), env.Undefined();
    r->page_size = static_cast<size_t>(memfd_page);
  }
  r->read_ahead = read_ahead > 0 ? static_cast<uint64_t>(read_ahead) : 0;
  r->loop_action = static_cast<int>(loop_action);
  r->state = state;
  Napi::ArrayBuffer bitmap = info[2].As<Napi::ArrayBuffer>();
  r->bitmap = static_cast<uint32_t*>(bitmap.Data());
  r->bitmap_bits = static_cast<uint64_t>(bitmap.ByteLength() / 4) * 32;
  r->bitmap_ref = Napi::Persistent(bitmap.As<Napi::Object>());
  r->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (r->stop_fd < 0) return args::Result(env, -errno);
  // The finalizer holds the last reference the thread side needs; it runs on
  // the JavaScript thread after the thread released the function.
  auto* keep = new Handle(r);
  r->tsfn = Napi::ThreadSafeFunction::New(env, info[5].As<Napi::Function>(), "userfaultfd:resolver", 0, 1,
                                          [keep](Napi::Env) {
                                            (*keep)->bitmap_ref.Reset();
                                            delete keep;
                                          });
  r->thread = std::thread(Run, r);
  std::weak_ptr<Resolver> weak = r;
  state->AddStopper(r.get(), [weak] {
    if (auto s = weak.lock()) {
      s->state = nullptr;
      StopAndJoin(s);
    }
  });
  return Napi::External<Handle>::New(env, new Handle(r), [](Napi::Env, Handle* h) { delete h; });
}

Napi::Value SetRegions(const Napi::CallbackInfo& info) {
  Handle* h = HandleOf(info);
  if (!h) return info.Env().Undefined();
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
    return args::Fail(info, "expected a Float64Array"), info.Env().Undefined();
  Napi::Float64Array flat = info[1].As<Napi::Float64Array>();
  std::vector<Region> regions;
  for (size_t i = 0; i + 2 < flat.ElementLength(); i += 3)
    regions.push_back({static_cast<uint64_t>(flat[i]), static_cast<uint64_t>(flat[i + 1]), static_cast<uint64_t>(flat[i + 2])});
  std::lock_guard<std::mutex> lock((*h)->regions_mu);
  (*h)->regions.swap(regions);
  (*h)->regions_changed = true;
  return info.Env().Undefined();
}

Napi::Value Stop(const Napi::CallbackInfo& info) {
  if (Handle* h = HandleOf(info)) StopAndJoin(*h);
  return info.Env().Undefined();
}

Napi::Value Stats(const Napi::CallbackInfo& info) {
  Handle* h = HandleOf(info);
  if (!h) return info.Env().Undefined();
  Resolver* r = h->get();
  Napi::Float64Array out = Napi::Float64Array::New(info.Env(), 6 + kBuckets);
  out[0] = static_cast<double>(r->faults.load());
  out[1] = static_cast<double>(r->resolved.load());
  out[2] = static_cast<double>(r->already_present.load());
  out[3] = static_cast<double>(r->read_ahead_pages.load());
  out[4] = static_cast<double>(r->loop_faults.load());
  for (size_t b = 0; b < kBuckets; b++) out[5 + b] = static_cast<double>(r->buckets[b].load());
  out[5 + kBuckets] = static_cast<double>(r->deferrals.load());
  return out;
}

}  // namespace

void InitResolver(Napi::Env env, Napi::Object exports) {
  exports.Set("resolverStart", Napi::Function::New(env, Start, "resolverStart"));
  exports.Set("resolverSetRegions", Napi::Function::New(env, SetRegions, "resolverSetRegions"));
  exports.Set("resolverStop", Napi::Function::New(env, Stop, "resolverStop"));
  exports.Set("resolverStats", Napi::Function::New(env, Stats, "resolverStats"));
}
