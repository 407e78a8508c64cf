// Touches, timed on the calling thread itself: the main thread or a worker
// faulting on a registered page while some other thread handles the fault.
// The clock is native so the number is the fault, not JavaScript's timer.
#include <string>

#include "bench_common.h"

namespace {

// touchHere(buffer: ArrayBuffer, pageSize, order: Uint32Array) -> { latencyNs, checksum }
// Only reads inside `buffer`, which is a mapping the caller owns.
Napi::Value TouchHere(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer() || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "expected (ArrayBuffer, pageSize, Uint32Array)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
  size_t page_size = info[1].As<Napi::Number>().Uint32Value();
  if (page_size == 0) {
    Napi::RangeError::New(env, "page size must be positive").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::vector<uint32_t> order;
  if (!bench::PageList(info, info[2], buffer.ByteLength() / page_size, &order)) return env.Undefined();
  std::vector<double> latency(order.size());
  uint64_t sum = bench::TimedTouches(static_cast<const uint8_t*>(buffer.Data()), page_size, order.data(), order.size(), latency.data());
  Napi::Object result = Napi::Object::New(env);
  result.Set("latencyNs", bench::ToArray(env, latency));
  result.Set("checksum", Napi::Number::New(env, static_cast<double>(sum)));
  return result;
}

// pinSelf(cpu): pins the calling thread (-1: every CPU again). Returns 0 or -errno.
Napi::Value PinSelf(const Napi::CallbackInfo& info) {
  int cpu = info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : -1;
  return Napi::Number::New(info.Env(), bench::PinSelf(cpu));
}

Napi::Value Gettid(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(syscall(SYS_gettid)));
}

// pinThread(tid, cpu): pins another thread of this process (a resolver thread
// the library started) so its placement matches the C reference's.
Napi::Value PinThread(const Napi::CallbackInfo& info) {
  int tid = info[0].As<Napi::Number>().Int32Value();
  int cpu = info[1].As<Napi::Number>().Int32Value();
  // Only threads of this process: never re-pin somebody else's.
  std::string task = "/proc/self/task/" + std::to_string(tid);
  if (tid <= 0 || access(task.c_str(), F_OK) != 0) return Napi::Number::New(info.Env(), -ESRCH);
  return Napi::Number::New(info.Env(), bench::PinThread(tid, cpu));
}

}  // namespace

void InitBenchTouch(Napi::Env env, Napi::Object exports) {
  exports.Set("touchHere", Napi::Function::New(env, TouchHere, "touchHere"));
  exports.Set("pinSelf", Napi::Function::New(env, PinSelf, "pinSelf"));
  exports.Set("pinThread", Napi::Function::New(env, PinThread, "pinThread"));
  exports.Set("gettid", Napi::Function::New(env, Gettid, "gettid"));
}
