// userfaultfd_bench: benchmark-only native code (the kernel floor, the C
// reference handler, bulk installation, touches timed on the calling thread,
// the C reference of a snapshot restore).
// Built as its own addon so the library's addon carries none of it.
#include "bench_common.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitBenchFloor(env, exports);
  InitBenchReference(env, exports);
  InitBenchBulk(env, exports);
  InitBenchTouch(env, exports);
  InitBenchRestore(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(userfaultfd_bench, Init)
