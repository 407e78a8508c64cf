// The synchronous write-protect reader thread (wp_sync.cc): the dirty
// tracker's fallback, and the fault side of a live snapshot (snapshot.cc),
// which hooks in to save a page before its protection is lifted.
#pragma once

#include <napi.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

struct AddonState;

namespace wp_sync {

// Slots of the status array (an Int32Array over a SharedArrayBuffer for the
// tracker; the snapshot keeps its own).
enum Status { kFailure = 0, kFaults = 1, kForeign = 2, kStatusSlots = 3 };

struct Region {
  uint64_t address;
  uint64_t length;
  uint64_t first_bit;  // bit of the region's first page in the bitmap
};

// Runs on the reader thread, under the tracker's lock, for a faulting page
// whose bit is not yet set, before the bit is set and the protection lifted.
// Returns 0 or an errno, which becomes the tracker's failure; the page is
// un-protected either way, so that no writer sleeps forever.
using BeforeUnprotect = std::function<int(uint64_t page, uint64_t bit)>;

struct Tracker {
  int uffd = -1;
  int stop_fd = -1;
  uint64_t page_size = 0;
  std::vector<Region> regions;
  uint32_t* bitmap = nullptr;
  uint64_t bits = 0;
  int32_t* status = nullptr;
  BeforeUnprotect before_unprotect;
  std::thread thread;
  bool stopped = false;
  // Held by the thread from marking a page to un-protecting it, and by
  // whoever else changes bits and protection together (a collect, a
  // snapshot's copier), so that neither sees half of the other.
  std::mutex lock;
  // How long faults waited for this thread, from the read that returned them
  // to the ioctl that woke their writer.
  std::atomic<uint64_t> served_ns_total{0};
  std::atomic<uint64_t> served_ns_max{0};
  AddonState* state = nullptr;  // set when the environment's teardown must stop it
  // The SharedArrayBuffers stay referenced while the thread may write them.
  Napi::Reference<Napi::Value> bitmap_ref;
  Napi::Reference<Napi::Value> status_ref;
};

// Starts the thread on a descriptor of its own (a dup of `uffd`). 0 or errno.
int Launch(Tracker* t, int uffd);
// Stops and joins the thread and closes its descriptors. `unprotect` first
// lifts the protection of every region, which wakes any writer waiting.
void Stop(Tracker* t, bool unprotect);
inline bool Marked(const Tracker* t, uint64_t bit) {
  return bit < t->bits && (__atomic_load_n(&t->bitmap[bit / 32], __ATOMIC_SEQ_CST) & (1u << (bit % 32))) != 0;
}
inline void MarkBit(Tracker* t, uint64_t bit) {
  if (bit < t->bits) __atomic_fetch_or(&t->bitmap[bit / 32], 1u << (bit % 32), __ATOMIC_SEQ_CST);
}

void Init(Napi::Env env, Napi::Object exports);

}  // namespace wp_sync
