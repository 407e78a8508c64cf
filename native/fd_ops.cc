// Descriptor bookkeeping and process facts. An environment closes, at
// teardown, only the descriptors it owns: ones it created, received over a
// socket, or got from a FORK event. Borrowed descriptors (a worker using the
// main thread's memfd by number) are never closed behind the owner's back.
#include <errno.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "addon_state.h"
#include "args.h"

namespace {

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  int fd;
  if (!args::Fd(info, 0, &fd)) return info.Env().Undefined();
  AddonState::Of(info.Env())->owned_fds.erase(fd);
  // Linux closes the descriptor even when close() reports EINTR: never retry.
  return args::Result(info.Env(), close(fd) == 0 || errno == EINTR ? 0 : -errno);
}

Napi::Value AdoptFd(const Napi::CallbackInfo& info) {
  int fd;
  if (!args::Fd(info, 0, &fd)) return info.Env().Undefined();
  AddonState::Of(info.Env())->owned_fds.insert(fd);
  return info.Env().Undefined();
}

Napi::Value DisownFd(const Napi::CallbackInfo& info) {
  int fd;
  if (!args::Fd(info, 0, &fd)) return info.Env().Undefined();
  AddonState::Of(info.Env())->owned_fds.erase(fd);
  return info.Env().Undefined();
}

// fdFlags(fd) -> -errno | F_GETFD << 32 | F_GETFL (as a number)
Napi::Value FdFlags(const Napi::CallbackInfo& info) {
  int fd;
  if (!args::Fd(info, 0, &fd)) return info.Env().Undefined();
  int fdflags = fcntl(fd, F_GETFD);
  if (fdflags < 0) return args::Result(info.Env(), -errno);
  int flflags = fcntl(fd, F_GETFL);
  return args::Result(info.Env(), static_cast<double>(fdflags) * 4294967296.0 + static_cast<unsigned>(flflags));
}

Napi::Value DupFd(const Napi::CallbackInfo& info) {
  int fd;
  if (!args::Fd(info, 0, &fd)) return info.Env().Undefined();
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (copy < 0) return args::Result(info.Env(), -errno);
  AddonState::Of(info.Env())->owned_fds.insert(copy);
  return args::Result(info.Env(), copy);
}

Napi::Value GetTid(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(syscall(SYS_gettid)));
}

Napi::Value PageSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(sysconf(_SC_PAGESIZE)));
}

}  // namespace

void InitFdOps(Napi::Env env, Napi::Object exports) {
  exports.Set("closeFd", Napi::Function::New(env, CloseFd, "closeFd"));
  exports.Set("adoptFd", Napi::Function::New(env, AdoptFd, "adoptFd"));
  exports.Set("disownFd", Napi::Function::New(env, DisownFd, "disownFd"));
  exports.Set("fdFlags", Napi::Function::New(env, FdFlags, "fdFlags"));
  exports.Set("dupFd", Napi::Function::New(env, DupFd, "dupFd"));
  exports.Set("gettid", Napi::Function::New(env, GetTid, "gettid"));
  exports.Set("pageSize", Napi::Function::New(env, PageSize, "pageSize"));
}
