// The fault engine: the one place where a fault becomes a mapped page. It
// owns the region table (views of the backing: address, length, offset),
// consults the present-page bitmap, and issues every resolving ioctl the
// library's policies need: CONTINUE over a run of present pages (MINOR
// memory), COPY / ZEROPAGE of given bytes (anonymous MISSING memory),
// POISON, and the WAKE that EEXIST and DONTWAKE leave owed. Faults whose
// page is absent, and non-cooperative events, leave it as records for the
// policy (JavaScript) to act on.
//
// Two drivers run it: the native resolver thread (resolver.cc) and the event
// loop (engineRead, called when the uffd is readable). Both call Process().
#pragma once

#include <linux/userfaultfd.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

namespace engine {

// How an absent page becomes present, chosen per backing.
enum class Fill : int {
  // Shared memory (memfd/shmem, hugetlbfs) registered MINOR: the policy
  // writes the page cache, the engine maps it with CONTINUE. A REMOVE keeps
  // the present bit: MADV_DONTNEED leaves the page cache as it was, and a
  // punched page is found out by CONTINUE's EFAULT and fetched again.
  kContinue = 0,
  // Anonymous memory registered MISSING: the policy hands bytes (or asks for
  // zeros) and the engine COPYs them in. A REMOVE drops the pages for good.
  kCopy = 1,
};

// Record kinds handed to the policy: the kernel's event codes, then ours.
enum RecordKind : int {
  kPagefault = UFFD_EVENT_PAGEFAULT,  // address, flags, tid, time (ns), bitmap page, the view's page size
  kFork = UFFD_EVENT_FORK,            // child uffd
  kRemap = UFFD_EVENT_REMAP,          // from, to, length
  kRemove = UFFD_EVENT_REMOVE,        // start, end
  kUnmap = UFFD_EVENT_UNMAP,          // start, end
  kLoopThreadMapped = 0x100,          // address, backing offset
  kReaderFailed = 0x101,              // errno
  kIoctlFailed = 0x102,               // errno, address, ioctl number
  kPagesRemoved = 0x103,              // backing offset, length (one per overlapping view)
};

// Every record is this many doubles: kind, then up to six fields.
constexpr size_t kRecordSize = 7;
constexpr size_t kMessages = 128;
// Records one engineRead may return: a batch of messages plus as many
// deferred retries, plus one pages-removed record per view for each event.
constexpr size_t kRecordCapacity = 4 * kMessages;

// Counters, by index in the array engineStats returns.
enum Stat : int {
  kFaults = 0,          // pagefault messages read
  kResolved,            // faulters woken with their page mapped
  kAlreadyPresent,      // resolved without the policy (page marked present)
  kMapAheadPages,      // extra pages mapped by map-ahead
  kLoopThreadFaults,    // deadlock-guard faults mapped as-is
  kDeferrals,           // ioctls answered EAGAIN and retried after events
  kUntracked,           // faults outside every view: woken
  kPoisoned,            // pages poisoned
  kCopied,              // pages filled by COPY or ZEROPAGE
  kResolverCpuNs,       // CPU time the native resolver threads used (spinning included)
  kWatchedTouched,      // faults that found a watched (prefetched, not yet mapped) page present
  kStatCount,
};

// Latency histogram: one bucket per µs below kLinearBuckets, then log2 buckets.
constexpr size_t kLinearBuckets = 1024;
constexpr size_t kLogBuckets = 32;
constexpr size_t kBuckets = kLinearBuckets + kLogBuckets;

// A view: `length` bytes at `address` showing the backing from `offset`, in
// pages of `page_size` (a multiple of the engine's bitmap granularity: one
// fd of Firecracker may mix base-page and hugetlb regions).
struct Region {
  uint64_t address;
  uint64_t length;
  uint64_t offset;
  uint64_t page_size;
};

struct Fault {
  uint64_t address;
  uint32_t flags;
  uint32_t tid;
  uint64_t time_ns;  // read time on the engine's clock
  // The policy made this fault's page present (it was fetched): when a
  // deferral brings it back, it is not a fault answered without the policy.
  bool fetched = false;
};

// The deadlock guard: a fault of thread `tid` on an absent page can only be
// answered by that same thread, so it is answered here (abort or map as-is).
struct Guard {
  pid_t tid = 0;  // 0: no guard
  bool map_as_is = false;
};

class Engine {
 public:
  // `page_size` is the bitmap's granularity: bit N stands for backing bytes
  // [N * page_size, (N + 1) * page_size); a larger page is stood for by its first bit.
  Engine(int uffd, int backing_fd, uint64_t page_size, Fill fill, uint64_t map_ahead);

  int uffd() const { return uffd_; }
  uint64_t page_size() const { return page_size_; }
  Fill fill() const { return fill_; }

  // The present bitmap: memory that cannot be detached (a SharedArrayBuffer's),
  // kept alive by the owner of this engine.
  void SetBitmap(uint32_t* words, uint64_t bits) {
    bitmap_ = words;
    bitmap_bits_ = bits;
  }
  // Pages to watch (a prefetcher's, made present but not mapped): the first
  // fault that finds one present is counted in kWatchedTouched and its bit
  // cleared. Same lifetime rule as the present bitmap.
  void SetWatch(uint32_t* words, uint64_t bits) {
    watch_bits_.store(0, std::memory_order_release);
    watch_ = words;
    watch_bits_.store(bits, std::memory_order_release);
  }
  bool Present(uint64_t page) const;
  void MarkPresent(uint64_t page);
  void ClearPresent(uint64_t page);

  void AddRegion(const Region& region);
  // The page size of the view holding `address` (the engine's when none does).
  uint64_t PageSizeAt(uint64_t address);
  std::vector<Region> Regions();

  // Nanoseconds on the engine's clock (monotonic, from the engine's creation).
  uint64_t Now() const;

  // Applies the events of a batch, retries deferred faults, then serves the
  // batch's faults; appends records for the policy to `out`.
  void Process(const struct uffd_msg* msgs, size_t count, const Guard& guard, std::vector<double>* out);

  // A fault whose page the policy made present: map it. 0 when resolved; a
  // negative errno: -EAGAIN (deferred, retried at the next Process), -ENOENT
  // (outside every view: woken), any other (woken; the policy fails).
  int ServePresent(const Fault& fault);
  // Fill modes: COPY `bytes` (page_size of them) or zeros at the fault's
  // page, then wake. Same results as ServePresent.
  int ServeCopy(const Fault& fault, const uint8_t* bytes);
  int ServeZero(const Fault& fault);
  // Maps the present pages of backing range [offset, offset + length) into
  // every view (a push arrived). Returns 0 or the first failure's -errno.
  int MapPresent(uint64_t offset, uint64_t length);
  // Fill mode, a run ahead of its faults: COPY `length` bytes of backing
  // range [offset, offset + length) into every view showing it, DONTWAKE
  // (a fault on the run is woken when it is read, or by the caller's one
  // WAKE at the end). Pages filled meanwhile (EEXIST) are skipped.
  // Returns the pages copied, or the first failure's -errno when none was.
  int64_t CopyRun(uint64_t offset, const uint8_t* bytes, uint64_t length);
  // Poisons the pages of [address, address + length) (SIGBUS on access).
  int Poison(uint64_t address, uint64_t length);
  // Poisons every absent page of every view (a failed migration's pages).
  int PoisonAbsent();

  // Wakes whoever waits in [start, start + length).
  int Wake(uint64_t start, uint64_t length);
  // Unregisters every view and wakes it: every faulter resumes as an
  // ordinary fault (UNREGISTER alone leaves MINOR faulters asleep).
  void ReleaseViews();

  bool HasDeferred();
  // Wakes every deferred fault and forgets it (the engine is going away).
  void WakeDeferred();

  uint64_t Stat(int index) const { return stats_[index].load(std::memory_order_relaxed); }
  void AddResolverCpu(uint64_t ns) { Count(kResolverCpuNs, ns); }
  uint64_t Bucket(size_t b) const { return buckets_[b].load(std::memory_order_relaxed); }

 private:
  bool Find(uint64_t address, Region* out);
  // Where a fault lands: its view, the view's page size, the page's address
  // and bitmap index. False (and the faulter woken) when no view holds it.
  struct Located {
    Region region;
    uint64_t ps, address, page;
  };
  bool Locate(const Fault& fault, Located* at);
  // ServePresent for a fault already located (the batch path looked it up once).
  int ServeLocated(const Fault& fault, const Located& at);
  void Serve(const Fault& fault, const Guard& guard, std::vector<double>* out);
  // CONTINUE [start, end) with EEXIST pages skipped, partial progress
  // resumed, and one WAKE owed for whatever DONTWAKE left asleep. Returns 0
  // when the first page is mapped, else its -errno; *mapped_end is where
  // mapping stopped.
  int MapRun(uint64_t start, uint64_t end, uint64_t ps, uint64_t* mapped_end);
  void Defer(const Fault& fault);
  void Record(uint64_t time_ns);
  void Count(int index, uint64_t n = 1) { stats_[index].fetch_add(n, std::memory_order_relaxed); }
  void LoopThreadFault(const Fault& fault, const Region& region, const Guard& guard, std::vector<double>* out);
  int Finish(int rc, const Fault& fault, uint64_t page, uint64_t ps);
  uint64_t PageOf(const Region& r, uint64_t address) const { return (r.offset + (address - r.address)) / page_size_; }
  void Apply(const struct uffd_msg& m, std::vector<double>* out);

  const int uffd_;
  const int backing_fd_;
  const uint64_t page_size_;
  const Fill fill_;
  const uint64_t map_ahead_;
  const uint64_t epoch_ns_;
  uint32_t* bitmap_ = nullptr;
  uint64_t bitmap_bits_ = 0;
  uint32_t* watch_ = nullptr;
  std::atomic<uint64_t> watch_bits_{0};
  void Touched(uint64_t page);
  std::vector<uint8_t> zeros_;

  std::mutex mu_;  // regions_ and deferred_: the resolver thread and JavaScript share them
  std::vector<Region> regions_;
  std::vector<Fault> deferred_;

  std::atomic<uint64_t> stats_[kStatCount] = {};
  std::atomic<uint64_t> buckets_[kBuckets] = {};
};

}  // namespace engine
