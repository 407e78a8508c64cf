// The benchmark's touchers, all built on bench::TimedTouches (one toucher,
// one clock, MonotonicNs): touchHere times touches on the calling thread itself
// (the main thread or a worker faulting while some other thread handles the
// fault); touch starts N native threads (bench::TouchGroup, as the C
// reference does) and settles a promise when they are done, leaving the
// JavaScript thread free to run an event-loop handler meanwhile.
#include <string>

#include "bench_common.h"

namespace {

class TouchWorker : public Napi::AsyncWorker {
 public:
  TouchWorker(Napi::Env env, Napi::ArrayBuffer buffer, size_t page_size, bench::TouchGroup group)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), page_size_(page_size), group_(std::move(group)) {
    // Keeps the mapping's ArrayBuffer (and its finalizer) alive until the touchers are done.
    buffer_ = Napi::Persistent(buffer);
    base_ = static_cast<const uint8_t*>(buffer.Data());
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { sum_ = group_.Run(base_, page_size_); }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object result = Napi::Object::New(env);
    bench::SetTouches(env, result, group_);
    result.Set("checksum", Napi::Number::New(env, static_cast<double>(sum_)));
    deferred_.Resolve(result);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::Reference<Napi::ArrayBuffer> buffer_;
  const uint8_t* base_;
  size_t page_size_;
  bench::TouchGroup group_;
  uint64_t sum_ = 0;
};

// touch(buffer: ArrayBuffer, pageSize, orders: Uint32Array[], cpus: number[])
//   -> Promise<{ latencyNs: Float64Array[], touchCpus: Int32Array[], checksum, wallNs }>
// Only reads inside `buffer`, a mapping the caller owns and keeps mapped until the promise settles.
Napi::Value Touch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* signature = "expected (ArrayBuffer, pageSize, Uint32Array[], number[])";
  Napi::ArrayBuffer buffer;
  size_t page_size;
  if (!bench::MappingArgs(info, signature, 1, &buffer, &page_size)) return env.Undefined();
  if (!info[2].IsArray() || !info[3].IsArray()) {
    Napi::TypeError::New(env, signature).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array order_list = info[2].As<Napi::Array>();
  Napi::Array cpu_list = info[3].As<Napi::Array>();
  bench::TouchGroup group;
  group.orders.resize(order_list.Length());
  group.cpus.assign(order_list.Length(), -1);
  for (uint32_t t = 0; t < order_list.Length(); t++) {
    if (!bench::PageList(info, order_list.Get(t), buffer.ByteLength() / page_size, &group.orders[t])) return env.Undefined();
    if (t < cpu_list.Length()) group.cpus[t] = cpu_list.Get(t).As<Napi::Number>().Int32Value();
  }
  auto* worker = new TouchWorker(env, buffer, page_size, std::move(group));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// touchHere(buffer: ArrayBuffer, pageSize, order: Uint32Array) -> { latencyNs, touchCpus, checksum, wallNs }
// Only reads inside `buffer`, which is a mapping the caller owns.
Napi::Value TouchHere(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::ArrayBuffer buffer;
  size_t page_size;
  if (!bench::MappingArgs(info, "expected (ArrayBuffer, pageSize, Uint32Array)", 1, &buffer, &page_size)) return env.Undefined();
  std::vector<uint32_t> order;
  if (!bench::PageList(info, info[2], buffer.ByteLength() / page_size, &order)) return env.Undefined();
  std::vector<double> latency(order.size());
  std::vector<int32_t> cpus(order.size());
  uint64_t t0 = MonotonicNs();
  uint64_t sum = bench::TimedTouches(static_cast<const uint8_t*>(buffer.Data()), page_size, order.data(), order.size(), latency.data(), cpus.data());
  uint64_t wall = MonotonicNs() - t0;
  Napi::Object result = Napi::Object::New(env);
  result.Set("latencyNs", bench::ToArray(env, latency));
  result.Set("touchCpus", bench::ToArray(env, cpus));
  result.Set("wallNs", Napi::Number::New(env, static_cast<double>(wall)));
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
  exports.Set("touch", Napi::Function::New(env, Touch, "touch"));
  exports.Set("touchHere", Napi::Function::New(env, TouchHere, "touchHere"));
  exports.Set("pinSelf", Napi::Function::New(env, PinSelf, "pinSelf"));
  exports.Set("pinThread", Napi::Function::New(env, PinThread, "pinThread"));
  exports.Set("gettid", Napi::Function::New(env, Gettid, "gettid"));
}
