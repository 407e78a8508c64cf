// Raw-argument readers for the native entry points. The public argument checks
// (types, alignment, ranges, with messages for users) live in lib/validate.ts;
// these only guarantee that a caller bypassing the TypeScript layer gets a
// TypeError instead of undefined behaviour.
#pragma once

#include <napi.h>

#include <cmath>
#include <cstdint>

namespace args {

inline bool Fail(const Napi::CallbackInfo& info, const char* what) {
  Napi::TypeError::New(info.Env(), what).ThrowAsJavaScriptException();
  return false;
}

// An unsigned 64-bit value given as a safe-integer number or a bigint.
// Every reader writes *out, failure included, so that no caller can read an
// uninitialized value after a failed read (and the compiler can see it).
inline bool U64(const Napi::CallbackInfo& info, size_t i, uint64_t* out) {
  *out = 0;
  Napi::Value v = info[i];
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= 0 && d <= 9007199254740991.0) || std::floor(d) != d)
      return Fail(info, "expected a non-negative safe integer");
    *out = static_cast<uint64_t>(d);
    return true;
  }
  if (v.IsBigInt()) {
    bool lossless = false;
    *out = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) return Fail(info, "bigint out of the unsigned 64-bit range");
    return true;
  }
  return Fail(info, "expected a number or bigint");
}

inline bool Int(const Napi::CallbackInfo& info, size_t i, int64_t* out) {
  *out = 0;
  Napi::Value v = info[i];
  if (!v.IsNumber()) return Fail(info, "expected a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d || std::fabs(d) > 9007199254740991.0)
    return Fail(info, "expected an integer");
  *out = static_cast<int64_t>(d);
  return true;
}

inline bool Fd(const Napi::CallbackInfo& info, size_t i, int* out) {
  *out = -1;
  int64_t v;
  if (!Int(info, i, &v)) return false;
  if (v < 0 || v > INT32_MAX) return Fail(info, "expected a file descriptor");
  *out = static_cast<int>(v);
  return true;
}

// A SharedArrayBuffer cannot be detached or transferred away: the memory a
// native thread reads stays where it is for as long as it is referenced.
inline bool OverShared(Napi::Env env, const Napi::TypedArray& array) {
  bool shared = false;
  napi_value global_sab;
  napi_get_named_property(env, env.Global(), "SharedArrayBuffer", &global_sab);
  napi_instanceof(env, array.ArrayBuffer(), global_sab, &shared);
  return shared;
}

// Runs of pages as a Uint32Array of [first, count] pairs (a replay's batch).
inline bool RunPairs(const Napi::CallbackInfo& info, size_t i, Napi::Uint32Array* out) {
  Napi::Value v = info[i];
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array ||
      v.As<Napi::TypedArray>().ElementLength() % 2 != 0)
    return Fail(info, "expected the runs as a Uint32Array of [first, count] pairs");
  *out = v.As<Napi::Uint32Array>();
  return true;
}

// Result convention shared by every syscall wrapper: >= 0 is success,
// a negative value is -errno. lib/errors.ts turns it into a Node-style error.
inline Napi::Number Result(Napi::Env env, double value) { return Napi::Number::New(env, value); }

}  // namespace args
