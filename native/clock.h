// The one clock of the native layer: CLOCK_MONOTONIC in nanoseconds, the
// clock fault latencies, touch times and benchmark timings are all read on,
// so figures from the engine, the touchers and the C reference compare.
#pragma once

#include <time.h>

#include <cstdint>

inline uint64_t MonotonicNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}
