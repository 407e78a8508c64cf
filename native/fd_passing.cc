// File descriptors over Unix stream sockets (SCM_RIGHTS), and the socket
// plumbing Node's net module cannot do: a uffd belongs to the process that
// created it, so page servers receive it from the faulting process.
// All sockets are non-blocking and close-on-exec; readiness comes from a
// notify-mode poller on the event loop.
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <vector>

#include "addon_state.h"
#include "args.h"

namespace {

constexpr int kMaxFds = 16;

bool UnixAddress(const std::string& path, struct sockaddr_un* addr, socklen_t* len) {
  if (path.size() + 1 > sizeof(addr->sun_path)) return false;
  memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  memcpy(addr->sun_path, path.data(), path.size());
  *len = static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + path.size() + 1);
  return true;
}

Napi::Value Own(Napi::Env env, int fd) {
  AddonState::Of(env)->owned_fds.insert(fd);
  return args::Result(env, fd);
}

// socketPair() -> [fd, fd] | -errno
Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) != 0) return args::Result(env, -errno);
  AddonState::Of(env)->owned_fds.insert(sv[0]);
  AddonState::Of(env)->owned_fds.insert(sv[1]);
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, Napi::Number::New(env, sv[0]));
  out.Set(1u, Napi::Number::New(env, sv[1]));
  return out;
}

// unixListen(path, backlog) -> fd | -errno
Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t backlog = 0;
  if (!info[0].IsString() || !args::Int(info, 1, &backlog)) return args::Fail(info, "expected (path, backlog)"), env.Undefined();
  struct sockaddr_un addr;
  socklen_t len;
  if (!UnixAddress(info[0].As<Napi::String>().Utf8Value(), &addr, &len)) return args::Result(env, -ENAMETOOLONG);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return args::Result(env, -errno);
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&addr), len) != 0 || listen(fd, static_cast<int>(backlog)) != 0) {
    int err = errno;
    close(fd);
    return args::Result(env, -err);
  }
  return Own(env, fd);
}

// unixAccept(listenFd) -> fd | 0-length: -EAGAIN | -errno
Napi::Value UnixAccept(const Napi::CallbackInfo& info) {
  int fd;
  if (!args::Fd(info, 0, &fd)) return info.Env().Undefined();
  int conn = accept4(fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (conn < 0) return args::Result(info.Env(), -errno);
  return Own(info.Env(), conn);
}

// unixConnect(path) -> fd | -errno (blocking connect on a local socket is
// immediate; the socket is switched to non-blocking afterwards)
Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) return args::Fail(info, "expected a path"), env.Undefined();
  struct sockaddr_un addr;
  socklen_t len;
  if (!UnixAddress(info[0].As<Napi::String>().Utf8Value(), &addr, &len)) return args::Result(env, -ENAMETOOLONG);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return args::Result(env, -errno);
  if (connect(fd, reinterpret_cast<struct sockaddr*>(&addr), len) != 0) {
    int err = errno;
    close(fd);
    return args::Result(env, -err);
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return Own(env, fd);
}

// sendFds(sock, bytes: Uint8Array, fds: number[]) -> bytes sent | -errno
Napi::Value SendFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sock;
  if (!args::Fd(info, 0, &sock) || !info[1].IsTypedArray() || !info[2].IsArray())
    return args::Fail(info, "expected (fd, Uint8Array, fds[])"), env.Undefined();
  Napi::TypedArray data = info[1].As<Napi::TypedArray>();
  Napi::Array list = info[2].As<Napi::Array>();
  if (list.Length() > kMaxFds) return args::Result(env, -EINVAL);
  std::vector<int> fds;
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value v = list.Get(i);
    if (!v.IsNumber()) return args::Fail(info, "fds must be numbers"), env.Undefined();
    fds.push_back(v.As<Napi::Number>().Int32Value());
  }
  uint8_t dummy = 0;
  struct iovec iov;
  iov.iov_base = data.ByteLength() ? static_cast<uint8_t*>(data.ArrayBuffer().Data()) + data.ByteOffset() : &dummy;
  iov.iov_len = data.ByteLength() ? data.ByteLength() : 1;
  // Zeroed: CMSG_SPACE pads past CMSG_LEN, and those padding bytes go to
  // the kernel too (valgrind flagged them as uninitialised).
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    struct cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    memcpy(CMSG_DATA(cm), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n;
  do n = sendmsg(sock, &msg, MSG_NOSIGNAL); while (n < 0 && errno == EINTR);
  return args::Result(env, n < 0 ? -errno : static_cast<double>(n));
}

// recvFds(sock, into: Uint8Array) -> -errno | [bytes, fds[]]; 0 bytes with no
// fds is end of stream. Received descriptors are close-on-exec and owned.
Napi::Value RecvFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sock;
  if (!args::Fd(info, 0, &sock) || !info[1].IsTypedArray()) return args::Fail(info, "expected (fd, Uint8Array)"), env.Undefined();
  Napi::TypedArray into = info[1].As<Napi::TypedArray>();
  if (into.ByteLength() == 0) return args::Result(env, -EINVAL);
  struct iovec iov;
  iov.iov_base = static_cast<uint8_t*>(into.ArrayBuffer().Data()) + into.ByteOffset();
  iov.iov_len = into.ByteLength();
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC); while (n < 0 && errno == EINTR);
  if (n < 0) return args::Result(env, -errno);
  Napi::Array fds = Napi::Array::New(env);
  for (struct cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
      AddonState::Of(env)->owned_fds.insert(fd);
      fds.Set(fds.Length(), Napi::Number::New(env, fd));
    }
  }
  Napi::Array out = Napi::Array::New(env, 3);
  out.Set(0u, Napi::Number::New(env, static_cast<double>(n)));
  out.Set(1u, fds);
  out.Set(2u, Napi::Boolean::New(env, (msg.msg_flags & MSG_CTRUNC) != 0));
  return out;
}

// peerCred(sock) -> -errno | [pid, uid, gid]
Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sock;
  if (!args::Fd(info, 0, &sock)) return env.Undefined();
  struct ucred cred;
  socklen_t len = sizeof(cred);
  if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return args::Result(env, -errno);
  Napi::Array out = Napi::Array::New(env, 3);
  out.Set(0u, Napi::Number::New(env, cred.pid));
  out.Set(1u, Napi::Number::New(env, cred.uid));
  out.Set(2u, Napi::Number::New(env, cred.gid));
  return out;
}

// sockWrite / sockRead: plain bytes on a socket fd we own (non-blocking).
Napi::Value SockIo(const Napi::CallbackInfo& info, bool write_side) {
  int sock;
  if (!args::Fd(info, 0, &sock) || !info[1].IsTypedArray()) return args::Fail(info, "expected (fd, Uint8Array)"), info.Env().Undefined();
  Napi::TypedArray ta = info[1].As<Napi::TypedArray>();
  uint8_t* p = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  ssize_t n;
  do n = write_side ? send(sock, p, ta.ByteLength(), MSG_NOSIGNAL) : recv(sock, p, ta.ByteLength(), 0);
  while (n < 0 && errno == EINTR);
  return args::Result(info.Env(), n < 0 ? -errno : static_cast<double>(n));
}
Napi::Value SockWrite(const Napi::CallbackInfo& info) { return SockIo(info, true); }
Napi::Value SockRead(const Napi::CallbackInfo& info) { return SockIo(info, false); }

}  // namespace

void InitFdPassing(Napi::Env env, Napi::Object exports) {
  exports.Set("socketPair", Napi::Function::New(env, SocketPair, "socketPair"));
  exports.Set("unixListen", Napi::Function::New(env, UnixListen, "unixListen"));
  exports.Set("unixAccept", Napi::Function::New(env, UnixAccept, "unixAccept"));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect, "unixConnect"));
  exports.Set("sendFds", Napi::Function::New(env, SendFds, "sendFds"));
  exports.Set("recvFds", Napi::Function::New(env, RecvFds, "recvFds"));
  exports.Set("peerCred", Napi::Function::New(env, PeerCred, "peerCred"));
  exports.Set("sockWrite", Napi::Function::New(env, SockWrite, "sockWrite"));
  exports.Set("sockRead", Napi::Function::New(env, SockRead, "sockRead"));
}
