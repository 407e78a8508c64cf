// memfd creation, file I/O on it, and mappings exposed as ArrayBuffers over
// the mapped memory itself. A mapping is unmapped exactly once: either by an
// explicit munmap (which detaches the ArrayBuffer first, so no JavaScript view
// can reach the unmapped range) or by the ArrayBuffer's finalizer.
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "addon_state.h"
#include "args.h"
#include "uffd_abi.h"

namespace {

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  AddonState* state = AddonState::Of(info.Env());
  if (!info[0].IsString()) return args::Fail(info, "expected a name"), info.Env().Undefined();
  int64_t huge_shift;
  if (!args::Int(info, 1, &huge_shift)) return info.Env().Undefined();
  std::string name = info[0].As<Napi::String>().Utf8Value();
  unsigned flags = MFD_CLOEXEC;
  if (huge_shift > 0) flags |= MFD_HUGETLB | (static_cast<unsigned>(huge_shift) << MFD_HUGE_SHIFT);
  int fd = static_cast<int>(syscall(SYS_memfd_create, name.c_str(), flags));
  if (fd < 0) return args::Result(info.Env(), -errno);
  state->owned_fds.insert(fd);
  return args::Result(info.Env(), fd);
}

Napi::Value FdSize(const Napi::CallbackInfo& info) {
  int fd;
  if (!args::Fd(info, 0, &fd)) return info.Env().Undefined();
  struct stat st;
  if (fstat(fd, &st) != 0) return args::Result(info.Env(), -errno);
  return args::Result(info.Env(), static_cast<double>(st.st_size));
}

Napi::Value Truncate(const Napi::CallbackInfo& info) {
  int fd;
  uint64_t size;
  if (!args::Fd(info, 0, &fd) || !args::U64(info, 1, &size)) return info.Env().Undefined();
  return args::Result(info.Env(), ftruncate(fd, static_cast<off_t>(size)) == 0 ? 0 : -errno);
}

Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  int fd;
  int64_t mode;
  uint64_t offset, len;
  if (!args::Fd(info, 0, &fd) || !args::Int(info, 1, &mode) || !args::U64(info, 2, &offset) ||
      !args::U64(info, 3, &len))
    return info.Env().Undefined();
  int rc = fallocate(fd, static_cast<int>(mode), static_cast<off_t>(offset), static_cast<off_t>(len));
  return args::Result(info.Env(), rc == 0 ? 0 : -errno);
}

// pwrite/pread(fd, typedArray, fileOffset): the whole view or -errno. A short
// transfer (end of file on read) returns the bytes done.
template <bool kWrite>
Napi::Value FileIo(const Napi::CallbackInfo& info) {
  int fd;
  uint64_t offset;
  if (!args::Fd(info, 0, &fd) || !info[1].IsTypedArray() || !args::U64(info, 2, &offset))
    return info.Env().Undefined();
  Napi::TypedArray ta = info[1].As<Napi::TypedArray>();
  uint8_t* data = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  size_t len = ta.ByteLength(), done = 0;
  while (done < len) {
    ssize_t n = kWrite ? pwrite(fd, data + done, len - done, static_cast<off_t>(offset + done))
                       : pread(fd, data + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (done == 0) return args::Result(info.Env(), -errno);
      break;
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return args::Result(info.Env(), static_cast<double>(done));
}

void Release(MappingRecord* rec) {
  if (!rec->unmapped) {
    munmap(reinterpret_cast<void*>(rec->address), rec->length);
    if (rec->state) rec->state->mappings.erase(rec->address);
  }
  delete rec;
}

// A pinned mapping is in use by a native thread (at teardown the isolate
// frees every ArrayBuffer, referenced or not): unmapping it would turn the
// thread's next touch into a crash, so the last pin's release unmaps it.
void FinalizeMapping(Napi::Env, void*, MappingRecord* rec) {
  if (rec->pins > 0) {
    rec->finalized = true;
    return;
  }
  Release(rec);
}

// Records a new mapping and exposes it as [address, ArrayBuffer over it].
Napi::Value Expose(Napi::Env env, AddonState* state, void* p, size_t length) {
  auto* rec = new MappingRecord{reinterpret_cast<uintptr_t>(p), length, false, state, 0, false};
  state->mappings[rec->address] = rec;
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, p, length, FinalizeMapping, rec);
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, Napi::Number::New(env, static_cast<double>(rec->address)));
  out.Set(1u, ab);
  return out;
}

// mmap(fd, offset, length, prot, flags) -> -errno | [address, ArrayBuffer]
Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonState* state = AddonState::Of(env);
  int64_t fd;
  uint64_t offset, length;
  int64_t prot, flags;
  if (!args::Int(info, 0, &fd) || !args::U64(info, 1, &offset) || !args::U64(info, 2, &length) ||
      !args::Int(info, 3, &prot) || !args::Int(info, 4, &flags))
    return env.Undefined();
  // fd -1 with MAP_ANONYMOUS: private anonymous memory, the only kind UFFDIO_MOVE accepts.
  bool anonymous = (flags & MAP_ANONYMOUS) != 0;
  if (anonymous ? fd != -1 : (fd < 0 || fd > INT32_MAX)) return args::Fail(info, "expected a file descriptor"), env.Undefined();
  if (length == 0) return args::Result(env, -EINVAL);
  void* p = mmap(nullptr, length, static_cast<int>(prot), static_cast<int>(flags), static_cast<int>(fd), static_cast<off_t>(offset));
  if (p == MAP_FAILED) return args::Result(env, -errno);
  return Expose(env, state, p, static_cast<size_t>(length));
}

// munmap(address, arrayBuffer): detach first, then unmap. After this no
// TypedArray over the mapping can read or write it (byteLength becomes 0).
Napi::Value Munmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonState* state = AddonState::Of(env);
  uint64_t address;
  if (!args::U64(info, 0, &address) || !info[1].IsArrayBuffer()) return env.Undefined();
  auto it = state->mappings.find(static_cast<uintptr_t>(address));
  if (it == state->mappings.end()) return args::Result(env, -EINVAL);
  MappingRecord* rec = it->second;
  if (rec->pins > 0) return args::Result(env, -EBUSY);
  state->mappings.erase(it);
  size_t length = rec->length;
  rec->unmapped = true;  // the finalizer, whenever it runs, only frees rec
  Napi::ArrayBuffer ab = info[1].As<Napi::ArrayBuffer>();
  if (!ab.IsDetached()) ab.Detach();
  return args::Result(env, munmap(reinterpret_cast<void*>(address), length) == 0 ? 0 : -errno);
}

// mremap(address, arrayBuffer, newLength) -> -errno | [address, ArrayBuffer]:
// resizes a mapping, letting the kernel move it. On success the old buffer is
// detached and a new one covers the new range; on failure nothing changed.
Napi::Value Mremap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonState* state = AddonState::Of(env);
  uint64_t address, new_length;
  if (!args::U64(info, 0, &address) || !info[1].IsArrayBuffer() || !args::U64(info, 2, &new_length)) return env.Undefined();
  auto it = state->mappings.find(static_cast<uintptr_t>(address));
  if (it == state->mappings.end() || new_length == 0) return args::Result(env, -EINVAL);
  MappingRecord* old_rec = it->second;
  if (old_rec->pins > 0) return args::Result(env, -EBUSY);
  void* p = mremap(reinterpret_cast<void*>(address), old_rec->length, new_length, MREMAP_MAYMOVE);
  if (p == MAP_FAILED) return args::Result(env, -errno);
  state->mappings.erase(it);
  old_rec->unmapped = true;
  Napi::ArrayBuffer old_ab = info[1].As<Napi::ArrayBuffer>();
  if (!old_ab.IsDetached()) old_ab.Detach();
  return Expose(env, state, p, static_cast<size_t>(new_length));
}

Napi::Value Madvise(const Napi::CallbackInfo& info) {
  AddonState* state = AddonState::Of(info.Env());
  uint64_t address, length;
  int64_t advice;
  if (!args::U64(info, 0, &address) || !args::U64(info, 1, &length) || !args::Int(info, 2, &advice))
    return info.Env().Undefined();
  if (!state->OwnsRange(address, length)) return args::Result(info.Env(), -EFAULT);
  int rc = madvise(reinterpret_cast<void*>(address), length, static_cast<int>(advice));
  return args::Result(info.Env(), rc == 0 ? 0 : -errno);
}

}  // namespace

void ReleaseMappingPin(MappingRecord* rec) {
  if (--rec->pins == 0 && rec->finalized) Release(rec);
}

// At environment teardown the ArrayBuffers' finalizers, which may run after
// the state is gone, still unmap what is left (unless pinned); they must not
// touch the state.
void CleanupMappings(AddonState* state) {
  for (auto& entry : state->mappings) entry.second->state = nullptr;
  state->mappings.clear();
}

void InitMemfd(Napi::Env env, Napi::Object exports) {
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("fdSize", Napi::Function::New(env, FdSize, "fdSize"));
  exports.Set("truncate", Napi::Function::New(env, Truncate, "truncate"));
  exports.Set("fallocate", Napi::Function::New(env, Fallocate, "fallocate"));
  exports.Set("pwrite", Napi::Function::New(env, FileIo<true>, "pwrite"));
  exports.Set("pread", Napi::Function::New(env, FileIo<false>, "pread"));
  exports.Set("mmap", Napi::Function::New(env, Mmap, "mmap"));
  exports.Set("munmap", Napi::Function::New(env, Munmap, "munmap"));
  exports.Set("madvise", Napi::Function::New(env, Madvise, "madvise"));
  exports.Set("mremap", Napi::Function::New(env, Mremap, "mremap"));
}
