// The userfaultfd descriptor and its ioctls. Every wrapper returns a number:
// >= 0 on success, -errno on failure, with side results (bytes done after a
// partial CONTINUE/COPY, which open path failed) in the scratch slots.
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "addon_state.h"
#include "args.h"
#include "uffd_abi.h"

namespace {

int OpenBySyscall(int flags) {
  int fd = static_cast<int>(syscall(__NR_userfaultfd, flags));
  return fd >= 0 ? fd : -errno;
}

int OpenByDevice(int flags) {
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev < 0) return -errno;
  int fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
  int err = errno;
  close(dev);
  return fd >= 0 ? fd : -err;
}

// uffdOpen(userModeOnly, via): via 0 = syscall then device, 1 = syscall only,
// 2 = device only. scratch[1] and scratch[2] receive the syscall and device
// errnos (0 when that path was not tried) so the error can name both.
Napi::Value Open(const Napi::CallbackInfo& info) {
  AddonState* state = AddonState::Of(info.Env());
  int64_t user_mode_only, via;
  if (!args::Int(info, 0, &user_mode_only) || !args::Int(info, 1, &via)) return info.Env().Undefined();
  // O_NONBLOCK is not optional: a blocking uffd polls as POLLERR forever,
  // which would spin libuv and every poll()-based reader.
  int flags = O_CLOEXEC | O_NONBLOCK | (user_mode_only ? UFFD_USER_MODE_ONLY : 0);
  int by_syscall = 0, by_device = 0, fd = -1;
  if (via != 2) {
    fd = OpenBySyscall(flags);
    if (fd < 0) by_syscall = -fd;
  }
  if (fd < 0 && via != 1) {
    fd = OpenByDevice(flags);
    if (fd < 0) by_device = -fd;
  }
  state->scratch[1] = by_syscall;
  state->scratch[2] = by_device;
  if (fd >= 0) state->owned_fds.insert(fd);
  return args::Result(info.Env(), fd >= 0 ? fd : -(by_device ? by_device : by_syscall));
}

// uffdApi(fd, features) -> -errno | [featuresOffered, ioctls(bigint)]
Napi::Value Api(const Napi::CallbackInfo& info) {
  int fd;
  uint64_t features;
  if (!args::Fd(info, 0, &fd) || !args::U64(info, 1, &features)) return info.Env().Undefined();
  struct uffdio_api api = {};
  api.api = UFFD_API;
  api.features = features;
  if (ioctl(fd, uffd_abi::kApi, &api) != 0) return args::Result(info.Env(), -errno);
  Napi::Array out = Napi::Array::New(info.Env(), 2);
  out.Set(0u, Napi::Number::New(info.Env(), static_cast<double>(api.features)));
  out.Set(1u, Napi::BigInt::New(info.Env(), static_cast<uint64_t>(api.ioctls)));
  return out;
}

bool Range(const Napi::CallbackInfo& info, int* fd, struct uffdio_range* r) {
  uint64_t start, len;
  if (!args::Fd(info, 0, fd) || !args::U64(info, 1, &start) || !args::U64(info, 2, &len)) return false;
  r->start = start;
  r->len = len;
  return true;
}

// uffdRegister(fd, start, len, mode) -> -errno | ioctls(bigint)
Napi::Value Register(const Napi::CallbackInfo& info) {
  int fd;
  struct uffdio_register reg = {};
  uint64_t mode;
  if (!Range(info, &fd, &reg.range) || !args::U64(info, 3, &mode)) return info.Env().Undefined();
  reg.mode = mode;
  if (ioctl(fd, uffd_abi::kRegister, &reg) != 0) return args::Result(info.Env(), -errno);
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(reg.ioctls));
}

Napi::Value RangeIoctl(const Napi::CallbackInfo& info, unsigned long request) {
  int fd;
  struct uffdio_range r = {};
  if (!Range(info, &fd, &r)) return info.Env().Undefined();
  return args::Result(info.Env(), ioctl(fd, request, &r) == 0 ? 0 : -errno);
}

Napi::Value Unregister(const Napi::CallbackInfo& info) { return RangeIoctl(info, uffd_abi::kUnregister); }
Napi::Value Wake(const Napi::CallbackInfo& info) { return RangeIoctl(info, uffd_abi::kWake); }

// Shared shape of CONTINUE / ZEROPAGE / POISON: range, mode, then a signed
// progress field the kernel fills. Returns bytes done, or -errno with the
// (non-negative) bytes done in scratch[0].
template <typename T, typename ProgressField>
Napi::Value ProgressIoctl(const Napi::CallbackInfo& info, unsigned long request, ProgressField field) {
  AddonState* state = AddonState::Of(info.Env());
  int fd;
  T arg = {};
  uint64_t mode;
  if (!Range(info, &fd, &arg.range) || !args::U64(info, 3, &mode)) return info.Env().Undefined();
  arg.mode = mode;
  int rc = ioctl(fd, request, &arg);
  int64_t done = arg.*field;
  state->scratch[0] = done > 0 ? static_cast<double>(done) : 0;
  if (rc == 0) return args::Result(info.Env(), static_cast<double>(done));
  return args::Result(info.Env(), -errno);
}

Napi::Value Continue(const Napi::CallbackInfo& info) {
  return ProgressIoctl<uffdx_continue>(info, uffd_abi::kContinue, &uffdx_continue::mapped);
}
Napi::Value Zeropage(const Napi::CallbackInfo& info) {
  return ProgressIoctl<struct uffdio_zeropage>(info, uffd_abi::kZeropage, &uffdio_zeropage::zeropage);
}
Napi::Value Poison(const Napi::CallbackInfo& info) {
  return ProgressIoctl<uffdx_poison>(info, uffd_abi::kPoison, &uffdx_poison::updated);
}

// uffdCopy(fd, dst, srcAddress, len, mode): src is an address in this process
// (a Mapping's), validated by the caller against live mappings.
Napi::Value Copy(const Napi::CallbackInfo& info) {
  AddonState* state = AddonState::Of(info.Env());
  int fd;
  struct uffdio_copy c = {};
  uint64_t dst, src, len, mode;
  if (!args::Fd(info, 0, &fd) || !args::U64(info, 1, &dst) || !args::U64(info, 2, &src) ||
      !args::U64(info, 3, &len) || !args::U64(info, 4, &mode))
    return info.Env().Undefined();
  c.dst = dst; c.src = src; c.len = len; c.mode = mode;
  int rc = ioctl(fd, uffd_abi::kCopy, &c);
  state->scratch[0] = c.copy > 0 ? static_cast<double>(c.copy) : 0;
  return args::Result(info.Env(), rc == 0 ? static_cast<double>(c.copy) : -errno);
}

// uffdCopyBuffer(fd, dst, bytes, mode): COPY from a JS buffer's own memory.
Napi::Value CopyBuffer(const Napi::CallbackInfo& info) {
  AddonState* state = AddonState::Of(info.Env());
  int fd;
  uint64_t dst, mode;
  if (!args::Fd(info, 0, &fd) || !args::U64(info, 1, &dst) || !info[2].IsTypedArray() || !args::U64(info, 3, &mode))
    return info.Env().Undefined();
  Napi::TypedArray ta = info[2].As<Napi::TypedArray>();
  struct uffdio_copy c = {};
  c.dst = dst;
  c.src = reinterpret_cast<uintptr_t>(static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset());
  c.len = ta.ByteLength();
  c.mode = mode;
  int rc = ioctl(fd, uffd_abi::kCopy, &c);
  state->scratch[0] = c.copy > 0 ? static_cast<double>(c.copy) : 0;
  return args::Result(info.Env(), rc == 0 ? static_cast<double>(c.copy) : -errno);
}

Napi::Value WriteProtect(const Napi::CallbackInfo& info) {
  int fd;
  struct uffdio_writeprotect wp = {};
  uint64_t mode;
  if (!Range(info, &fd, &wp.range) || !args::U64(info, 3, &mode)) return info.Env().Undefined();
  wp.mode = mode;
  return args::Result(info.Env(), ioctl(fd, uffd_abi::kWriteprotect, &wp) == 0 ? 0 : -errno);
}

// uffdMove(fd, dst, src, len, mode)
Napi::Value Move(const Napi::CallbackInfo& info) {
  AddonState* state = AddonState::Of(info.Env());
  int fd;
  uffdx_move m = {};
  uint64_t dst, src, len, mode;
  if (!args::Fd(info, 0, &fd) || !args::U64(info, 1, &dst) || !args::U64(info, 2, &src) ||
      !args::U64(info, 3, &len) || !args::U64(info, 4, &mode))
    return info.Env().Undefined();
  m.dst = dst; m.src = src; m.len = len; m.mode = mode;
  int rc = ioctl(fd, uffd_abi::kMove, &m);
  state->scratch[0] = m.move > 0 ? static_cast<double>(m.move) : 0;
  return args::Result(info.Env(), rc == 0 ? static_cast<double>(m.move) : -errno);
}

// uffdRead(fd, arrayBuffer) -> messages read (0 when none pending) | -errno.
// Reads as many 32-byte messages as fit in one read(2).
Napi::Value Read(const Napi::CallbackInfo& info) {
  int fd;
  if (!args::Fd(info, 0, &fd)) return info.Env().Undefined();
  if (!info[1].IsArrayBuffer()) return args::Fail(info, "expected an ArrayBuffer"), info.Env().Undefined();
  Napi::ArrayBuffer buf = info[1].As<Napi::ArrayBuffer>();
  size_t cap = buf.ByteLength() / uffd_abi::kMsgSize * uffd_abi::kMsgSize;
  if (cap == 0) return args::Fail(info, "buffer smaller than one message"), info.Env().Undefined();
  ssize_t n = read(fd, buf.Data(), cap);
  if (n < 0) return args::Result(info.Env(), errno == EAGAIN ? 0 : -errno);
  return args::Result(info.Env(), static_cast<double>(n / uffd_abi::kMsgSize));
}

}  // namespace

void InitUffd(Napi::Env env, Napi::Object exports) {
  exports.Set("uffdOpen", Napi::Function::New(env, Open, "uffdOpen"));
  exports.Set("uffdApi", Napi::Function::New(env, Api, "uffdApi"));
  exports.Set("uffdRegister", Napi::Function::New(env, Register, "uffdRegister"));
  exports.Set("uffdUnregister", Napi::Function::New(env, Unregister, "uffdUnregister"));
  exports.Set("uffdWake", Napi::Function::New(env, Wake, "uffdWake"));
  exports.Set("uffdContinue", Napi::Function::New(env, Continue, "uffdContinue"));
  exports.Set("uffdZeropage", Napi::Function::New(env, Zeropage, "uffdZeropage"));
  exports.Set("uffdPoison", Napi::Function::New(env, Poison, "uffdPoison"));
  exports.Set("uffdCopy", Napi::Function::New(env, Copy, "uffdCopy"));
  exports.Set("uffdCopyBuffer", Napi::Function::New(env, CopyBuffer, "uffdCopyBuffer"));
  exports.Set("uffdWriteProtect", Napi::Function::New(env, WriteProtect, "uffdWriteProtect"));
  exports.Set("uffdMove", Napi::Function::New(env, Move, "uffdMove"));
  exports.Set("uffdRead", Napi::Function::New(env, Read, "uffdRead"));
}
