// The fault engine's algorithm (see engine.h for the contract).
#include "engine.h"

#include "clock.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "uffd_abi.h"

namespace engine {

namespace {

int Ioctl(int fd, unsigned long request, void* arg) { return ioctl(fd, request, arg) == 0 ? 0 : -errno; }

void Push(std::vector<double>* out, int kind, double a = 0, double b = 0, double c = 0, double d = 0, double e = 0, double f = 0) {
  out->insert(out->end(), {static_cast<double>(kind), a, b, c, d, e, f});
}

void Cut(std::vector<Region>* regions, uint64_t start, uint64_t end) {
  std::vector<Region> kept;
  kept.reserve(regions->size() + 1);
  for (const Region& r : *regions) {
    uint64_t r_end = r.address + r.length;
    if (end <= r.address || start >= r_end) {
      kept.push_back(r);
      continue;
    }
    if (r.address < start) kept.push_back({r.address, start - r.address, r.offset, r.page_size});
    if (end < r_end) kept.push_back({end, r_end - end, r.offset + (end - r.address), r.page_size});
  }
  regions->swap(kept);
}

}  // namespace

Engine::Engine(int uffd, int backing_fd, uint64_t page_size, Fill fill, uint64_t map_ahead)
    : uffd_(uffd), backing_fd_(backing_fd), page_size_(page_size), fill_(fill), map_ahead_(map_ahead),
      epoch_ns_(MonotonicNs()) {}

uint64_t Engine::Now() const { return MonotonicNs() - epoch_ns_; }

bool Engine::Present(uint64_t page) const {
  if (page >= bitmap_bits_) return false;
  return (__atomic_load_n(&bitmap_[page >> 5], __ATOMIC_ACQUIRE) >> (page & 31)) & 1u;
}

void Engine::MarkPresent(uint64_t page) {
  if (page < bitmap_bits_) __atomic_fetch_or(&bitmap_[page >> 5], 1u << (page & 31), __ATOMIC_RELEASE);
}

void Engine::ClearPresent(uint64_t page) {
  if (page < bitmap_bits_) __atomic_fetch_and(&bitmap_[page >> 5], ~(1u << (page & 31)), __ATOMIC_RELEASE);
}

void Engine::Touched(uint64_t page) {
  if (page >= watch_bits_.load(std::memory_order_acquire)) return;
  const uint32_t bit = 1u << (page & 31);
  if (__atomic_fetch_and(&watch_[page >> 5], ~bit, __ATOMIC_ACQ_REL) & bit) Count(kWatchedTouched);
}

void Engine::AddRegion(const Region& region) {
  std::lock_guard<std::mutex> lock(mu_);
  regions_.push_back(region);
  if (regions_.back().page_size < page_size_) regions_.back().page_size = page_size_;
}

uint64_t Engine::PageSizeAt(uint64_t address) {
  Region r;
  return Find(address, &r) ? r.page_size : page_size_;
}

std::vector<Region> Engine::Regions() {
  std::lock_guard<std::mutex> lock(mu_);
  return regions_;
}

bool Engine::Find(uint64_t address, Region* out) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const Region& r : regions_)
    if (address >= r.address && address - r.address < r.length) {
      *out = r;
      return true;
    }
  return false;
}

void Engine::Record(uint64_t time_ns) {
  uint64_t now = Now();
  uint64_t us = now > time_ns ? (now - time_ns) / 1000 : 0;
  size_t b;
  if (us < kLinearBuckets) {
    b = static_cast<size_t>(us);
  } else {
    size_t log = 0;
    for (uint64_t v = us / kLinearBuckets; v > 1; v >>= 1) log++;
    b = kLinearBuckets + std::min(log, kLogBuckets - 1);
  }
  buckets_[b].fetch_add(1, std::memory_order_relaxed);
}

int Engine::Wake(uint64_t start, uint64_t length) {
  struct uffdio_range range = {start, length};
  return Ioctl(uffd_, uffd_abi::kWake, &range);
}

void Engine::ReleaseViews() {
  for (const Region& r : Regions()) {
    struct uffdio_range range = {r.address, r.length};
    Ioctl(uffd_, uffd_abi::kUnregister, &range);
    Wake(r.address, r.length);
  }
}

void Engine::Defer(const Fault& fault) {
  Count(kDeferrals);
  std::lock_guard<std::mutex> lock(mu_);
  deferred_.push_back(fault);
}

bool Engine::HasDeferred() {
  std::lock_guard<std::mutex> lock(mu_);
  return !deferred_.empty();
}

void Engine::WakeDeferred() {
  std::vector<Fault> list;
  {
    std::lock_guard<std::mutex> lock(mu_);
    list.swap(deferred_);
  }
  for (const Fault& f : list) {
    Region r;
    uint64_t ps = Find(f.address, &r) ? r.page_size : page_size_;
    Wake(f.address & ~(ps - 1), ps);
  }
}

int Engine::MapRun(uint64_t start, uint64_t end, uint64_t ps, uint64_t* mapped_end) {
  uint64_t at = start;
  uint64_t mode = 0;  // the first try wakes what it maps; retries leave it to one WAKE
  int first = 0;
  while (at < end) {
    uffdx_continue c = {};
    c.range.start = at;
    c.range.len = end - at;
    c.mode = mode;
    int rc = Ioctl(uffd_, uffd_abi::kContinue, &c);
    if (rc == 0) {
      at = end;
      break;
    }
    mode = uffd_abi::kContinueModeDontWake;
    if (c.mapped > 0) {  // partial progress: the prefix is mapped
      at += static_cast<uint64_t>(c.mapped);
      continue;
    }
    if (rc == -EEXIST) {  // mapped by someone else: its faulter is owed a wake
      at += ps;
      continue;
    }
    if (at == start) first = rc;
    break;
  }
  // Whatever was mapped with DONTWAKE, or found mapped (EEXIST wakes nobody),
  // gets one WAKE over the whole run.
  if (mode != 0 && at > start) Wake(start, at - start);
  *mapped_end = at;
  return at > start ? 0 : first;
}

int Engine::Finish(int rc, const Fault& fault, uint64_t page, uint64_t ps) {
  const uint64_t address = fault.address & ~(ps - 1);
  if (rc == 0 || rc == -ESRCH) {  // ESRCH: the faulting process is gone, nothing to answer
    Count(kResolved);
    Record(fault.time_ns);
    return 0;
  }
  if (rc == -EAGAIN) {  // a non-cooperative event is unread: retried after it
    Defer(fault);
    return -EAGAIN;
  }
  if (fill_ == Fill::kContinue && (rc == -EFAULT || rc == -EINVAL)) {
    // Marked present, but the page cache no longer holds it (punched,
    // truncated): absent again, so the retry asks the policy for it.
    ClearPresent(page);
    Fault again = fault;
    again.fetched = false;
    Defer(again);
    return -EAGAIN;
  }
  Wake(address, ps);
  return rc;
}

bool Engine::Locate(const Fault& fault, Located* at) {
  if (!Find(fault.address, &at->region)) {
    // Outside every view now (unmapped, moved): woken, it faults again if still registered.
    Count(kUntracked);
    Wake(fault.address & ~(page_size_ - 1), page_size_);
    return false;
  }
  at->ps = at->region.page_size;
  at->address = fault.address & ~(at->ps - 1);
  at->page = PageOf(at->region, at->address);
  return true;
}

int Engine::ServePresent(const Fault& fault) {
  Located at;
  if (!Locate(fault, &at)) return -ENOENT;
  return ServeLocated(fault, at);
}

int Engine::ServeLocated(const Fault& fault, const Located& at) {
  const Region& region = at.region;
  const uint64_t ps = at.ps, address = at.address, page = at.page;
  if (!Present(page)) {
    Defer(fault);
    return -EAGAIN;
  }
  if (fill_ == Fill::kCopy) return Finish(Wake(address, ps), fault, page, ps);
  uint64_t end = address + ps;
  if (map_ahead_ > 0) {
    uint64_t limit = std::min(region.address + region.length, address + (map_ahead_ + 1) * ps);
    while (end < limit && Present(PageOf(region, end))) end += ps;
  }
  uint64_t mapped_end = address;
  int rc = MapRun(address, end, ps, &mapped_end);
  if (rc == 0 && mapped_end > address + ps) Count(kMapAheadPages, (mapped_end - address) / ps - 1);
  return Finish(rc, fault, page, ps);
}

int Engine::ServeCopy(const Fault& fault, const uint8_t* bytes) {
  Located at;
  if (!Locate(fault, &at)) return -ENOENT;
  const uint64_t ps = at.ps, address = at.address, page = at.page;
  int rc;
  if (bytes == nullptr && ps == static_cast<uint64_t>(sysconf(_SC_PAGESIZE))) {
    struct uffdio_zeropage z = {};
    z.range.start = address;
    z.range.len = ps;
    rc = Ioctl(uffd_, uffd_abi::kZeropage, &z);
  } else {
    // hugetlb has no ZEROPAGE: its zeros arrive by COPY.
    if (bytes == nullptr) {
      if (zeros_.size() != ps) zeros_.assign(ps, 0);
      bytes = zeros_.data();
    }
    struct uffdio_copy c = {};
    c.dst = address;
    c.src = reinterpret_cast<uintptr_t>(bytes);
    c.len = ps;
    rc = Ioctl(uffd_, uffd_abi::kCopy, &c);
  }
  if (rc == -EEXIST) rc = Wake(address, ps);  // filled meanwhile: EEXIST wakes nobody
  if (rc == 0) {
    MarkPresent(page);
    Count(kCopied);
  }
  return Finish(rc, fault, page, ps);
}

int Engine::ServeZero(const Fault& fault) { return ServeCopy(fault, nullptr); }

int Engine::MapPresent(uint64_t offset, uint64_t length) {
  int result = 0;
  for (const Region& r : Regions()) {
    const uint64_t ps = r.page_size;
    uint64_t s = std::max(offset, r.offset), e = std::min(offset + length, r.offset + r.length);
    if (s >= e) continue;
    // Runs of present pages only (backing offsets in steps of the view's
    // page): an absent page must keep faulting.
    uint64_t p = s / ps * ps;
    const uint64_t last = (e + ps - 1) / ps * ps;
    while (p < last) {
      if (!Present(p / page_size_)) {
        p += ps;
        continue;
      }
      uint64_t q = p;
      while (q < last && Present(q / page_size_)) q += ps;
      uint64_t start = r.address + (p - r.offset);
      uint64_t end = r.address + (q - r.offset);
      while (start < end) {
        uint64_t mapped_end = start;
        int rc = MapRun(start, end, ps, &mapped_end);
        if (rc == -EAGAIN || rc == -EFAULT || rc == -EINVAL) {
          // Left to fault on its own: an event is unread, or the page went away.
          start += ps;
          continue;
        }
        if (rc < 0) {
          if (result == 0) result = rc;
          break;
        }
        start = mapped_end;
      }
      p = q;
    }
  }
  return result;
}

int64_t Engine::CopyRun(uint64_t offset, const uint8_t* bytes, uint64_t length) {
  int64_t copied = 0;
  int first = 0;
  for (const Region& r : Regions()) {
    const uint64_t ps = r.page_size;
    uint64_t s = std::max(offset, r.offset), e = std::min(offset + length, r.offset + r.length);
    if (s >= e || s % ps != 0 || e % ps != 0) continue;  // a larger page than the run covers: left to fault
    const uint64_t start = r.address + (s - r.offset), end = r.address + (e - r.offset);
    uint64_t at = start;
    while (at < end) {
      struct uffdio_copy c = {};
      c.dst = at;
      c.src = reinterpret_cast<uintptr_t>(bytes + (s - offset) + (at - start));
      c.len = end - at;
      c.mode = UFFDIO_COPY_MODE_DONTWAKE;
      int rc = Ioctl(uffd_, uffd_abi::kCopy, &c);
      uint64_t done = rc == 0 ? end - at : c.copy > 0 ? static_cast<uint64_t>(c.copy) : 0;
      for (uint64_t p = at; p < at + done; p += ps) MarkPresent(PageOf(r, p));
      copied += static_cast<int64_t>(done / ps);
      at += done;
      if (rc == 0 || done > 0) continue;
      if (rc == -EEXIST) {  // filled by a fault meanwhile
        at += ps;
        continue;
      }
      // EAGAIN (an event is unread), ENOENT, ESRCH...: the rest is left to fault.
      if (first == 0) first = rc;
      break;
    }
    // No wake per run: whoever faulted on the run meanwhile is woken when
    // its fault is read (the page is present then), and the caller wakes
    // once when its replay ends; a wake per run doubled a run's cost.
  }
  if (copied > 0) Count(kCopied, static_cast<uint64_t>(copied));
  return copied > 0 ? copied : first;
}

int Engine::Poison(uint64_t address, uint64_t length) {
  uffdx_poison p = {};
  p.range.start = address;
  p.range.len = length;
  int rc = Ioctl(uffd_, uffd_abi::kPoison, &p);
  if (rc == -EEXIST) rc = 0;  // poisoned or mapped already
  Region r;
  if (rc == 0) Count(kPoisoned, length / (Find(address, &r) ? r.page_size : page_size_));
  // Whoever waits on these pages finds out now (SIGBUS, or its page).
  Wake(address, length);
  return rc;
}

int Engine::PoisonAbsent() {
  int result = 0;
  for (const Region& r : Regions()) {
    const uint64_t ps = r.page_size;
    uint64_t p = r.offset;
    const uint64_t last = r.offset + r.length;
    while (p < last) {
      if (Present(p / page_size_)) {
        p += ps;
        continue;
      }
      uint64_t q = p;
      while (q < last && !Present(q / page_size_)) q += ps;
      int rc = Poison(r.address + (p - r.offset), q - p);
      if (rc < 0 && rc != -ESRCH && result == 0) result = rc;
      p = q;
    }
  }
  return result;
}

void Engine::LoopThreadFault(const Fault& fault, const Region& region, const Guard& guard, std::vector<double>* out) {
  const uint64_t ps = region.page_size;
  const uint64_t address = fault.address & ~(ps - 1);
  const uint64_t offset = region.offset + (address - region.address);
  if (!guard.map_as_is) {
    fprintf(stderr,
            "userfaultfd: FATAL: the JavaScript thread (tid %d) of the environment serving this userfaultfd touched "
            "address 0x%llx (memfd offset %llu), a page not marked present. Only a JavaScript fetch could provide "
            "it, and JavaScript cannot run while its own thread is blocked in the fault: the process would hang "
            "forever. Rule: the thread that resolves faults must not touch absent pages of the ranges it serves "
            "(mark them present first, touch them from another thread, or choose onLoopThreadFault: 'map-as-is'). "
            "Aborting.\n",
            static_cast<int>(guard.tid), static_cast<unsigned long long>(address), static_cast<unsigned long long>(offset));
    fflush(stderr);
    abort();
  }
  int rc;
  if (fill_ == Fill::kContinue) {
    // Map what the page cache holds; a hole becomes a zero page first, since
    // CONTINUE cannot map a hole. Allocation never overwrites content.
    fallocate(backing_fd_, 0, static_cast<off_t>(offset), static_cast<off_t>(ps));
    uint64_t mapped_end = address;
    rc = MapRun(address, address + ps, ps, &mapped_end);
  } else {
    rc = ServeZero(fault);
  }
  if (rc < 0) Wake(address, ps);
  Count(kLoopThreadFaults);
  Push(out, kLoopThreadMapped, static_cast<double>(address), static_cast<double>(offset));
}

void Engine::Serve(const Fault& fault, const Guard& guard, std::vector<double>* out) {
  Located at;
  if (!Locate(fault, &at)) return;
  const Region& region = at.region;
  const uint64_t ps = at.ps, address = at.address, page = at.page;
  if (Present(page)) {
    Touched(page);
    int rc = ServeLocated(fault, at);
    // Counted once per fault that needed no policy, when it is answered (a
    // deferred one is retried, and counted when the retry answers it).
    if (rc == 0 && !fault.fetched) Count(kAlreadyPresent);
    if (rc == 0 || rc == -EAGAIN || rc == -ENOENT) return;
    Push(out, kIoctlFailed, -rc, static_cast<double>(address), fill_ == Fill::kContinue ? 7 : 2);
    return;
  }
  if (guard.tid != 0 && static_cast<pid_t>(fault.tid) == guard.tid) return LoopThreadFault(fault, region, guard, out);
  Push(out, kPagefault, static_cast<double>(fault.address), fault.flags, fault.tid, static_cast<double>(fault.time_ns),
       static_cast<double>(page), static_cast<double>(ps));
}

void Engine::Apply(const struct uffd_msg& m, std::vector<double>* out) {
  const uint64_t ps = page_size_;
  switch (m.event) {
    case UFFD_EVENT_REMOVE: {
      uint64_t start = m.arg.remove.start, end = m.arg.remove.end;
      Push(out, kRemove, static_cast<double>(start), static_cast<double>(end));
      for (const Region& r : Regions()) {
        uint64_t s = std::max(start, r.address), e = std::min(end, r.address + r.length);
        if (s >= e) continue;
        uint64_t offset = r.offset + (s - r.address);
        if (fill_ == Fill::kCopy)
          for (uint64_t p = offset / ps; p < (offset + (e - s) + ps - 1) / ps; p++) ClearPresent(p);
        Push(out, kPagesRemoved, static_cast<double>(offset), static_cast<double>(e - s));
      }
      break;
    }
    case UFFD_EVENT_UNMAP: {
      uint64_t start = m.arg.remove.start, end = m.arg.remove.end;
      {
        std::lock_guard<std::mutex> lock(mu_);
        Cut(&regions_, start, end);
      }
      Push(out, kUnmap, static_cast<double>(start), static_cast<double>(end));
      break;
    }
    case UFFD_EVENT_REMAP: {
      uint64_t from = m.arg.remap.from, to = m.arg.remap.to, len = m.arg.remap.len;
      {
        std::lock_guard<std::mutex> lock(mu_);
        std::vector<Region> moved;
        for (const Region& r : regions_) {
          uint64_t s = std::max(from, r.address), e = std::min(from + len, r.address + r.length);
          if (s < e) moved.push_back({to + (s - from), e - s, r.offset + (s - r.address), r.page_size});
        }
        Cut(&regions_, from, from + len);
        regions_.insert(regions_.end(), moved.begin(), moved.end());
      }
      Push(out, kRemap, static_cast<double>(from), static_cast<double>(to), static_cast<double>(len));
      break;
    }
    case UFFD_EVENT_FORK:
      Push(out, kFork, static_cast<double>(m.arg.fork.ufd));
      break;
    default:
      break;
  }
}

void Engine::Process(const struct uffd_msg* msgs, size_t count, const Guard& guard, std::vector<double>* out) {
  // Events first: a REMOVE read together with a fault must apply before it.
  for (size_t i = 0; i < count; i++)
    if (msgs[i].event != UFFD_EVENT_PAGEFAULT) Apply(msgs[i], out);
  std::vector<Fault> retry;
  {
    std::lock_guard<std::mutex> lock(mu_);
    size_t n = std::min(deferred_.size(), kMessages);
    retry.assign(deferred_.begin(), deferred_.begin() + static_cast<std::ptrdiff_t>(n));
    deferred_.erase(deferred_.begin(), deferred_.begin() + static_cast<std::ptrdiff_t>(n));
  }
  for (const Fault& f : retry) Serve(f, guard, out);
  const uint64_t now = Now();
  for (size_t i = 0; i < count; i++) {
    const struct uffd_msg& m = msgs[i];
    if (m.event != UFFD_EVENT_PAGEFAULT) continue;
    // Counted when read, before any faulter is woken: a woken thread may
    // report back before this one runs again.
    Count(kFaults);
    Serve({m.arg.pagefault.address, static_cast<uint32_t>(m.arg.pagefault.flags), m.arg.pagefault.feat.ptid, now}, guard, out);
  }
}

}  // namespace engine
