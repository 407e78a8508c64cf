// Kernel ABI for userfaultfd and memfd, with fallbacks for build hosts whose
// <linux/userfaultfd.h> predates the running kernel (Debian 12 ships 6.1
// headers: no MOVE, POISON, WP_ASYNC). Every value here is fixed kernel ABI,
// so defining it ourselves is safe; the static_asserts pin the layouts that
// native code and lib/events.ts both decode.
#pragma once

#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include <cstddef>
#include <cstdint>

#ifndef __NR_userfaultfd
#if defined(__x86_64__)
#define __NR_userfaultfd 323
#elif defined(__aarch64__)
#define __NR_userfaultfd 282
#else
#error "userfaultfd: unsupported architecture (x86-64 and arm64 only)"
#endif
#endif

#ifndef USERFAULTFD_IOC
#define USERFAULTFD_IOC 0xAA
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

#ifndef UFFD_FEATURE_MINOR_HUGETLBFS
#define UFFD_FEATURE_MINOR_HUGETLBFS (1 << 9)
#endif
#ifndef UFFD_FEATURE_MINOR_SHMEM
#define UFFD_FEATURE_MINOR_SHMEM (1 << 10)
#endif
#ifndef UFFD_FEATURE_EXACT_ADDRESS
#define UFFD_FEATURE_EXACT_ADDRESS (1 << 11)
#endif
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif

#ifndef UFFDIO_REGISTER_MODE_MINOR
#define UFFDIO_REGISTER_MODE_MINOR ((__u64)1 << 2)
#endif
#ifndef UFFD_PAGEFAULT_FLAG_MINOR
#define UFFD_PAGEFAULT_FLAG_MINOR (1 << 2)
#endif

// Structs that old headers lack. Names carry a uffdx_ prefix so they never
// collide with the header's own definition when it exists.
struct uffdx_continue {
  struct uffdio_range range;
  __u64 mode;
  __s64 mapped;
};
struct uffdx_poison {
  struct uffdio_range range;
  __u64 mode;
  __s64 updated;
};
struct uffdx_move {
  __u64 dst;
  __u64 src;
  __u64 len;
  __u64 mode;
  __s64 move;
};

namespace uffd_abi {
// Request codes spelled out: the 5.13-rc headers had CONTINUE as _IOR, which
// the kernel rejects, so the header's value is not trusted for CONTINUE.
constexpr unsigned long kApi = _IOWR(0xAA, 0x3F, struct uffdio_api);
constexpr unsigned long kRegister = _IOWR(0xAA, 0x00, struct uffdio_register);
constexpr unsigned long kUnregister = _IOR(0xAA, 0x01, struct uffdio_range);
constexpr unsigned long kWake = _IOR(0xAA, 0x02, struct uffdio_range);
constexpr unsigned long kCopy = _IOWR(0xAA, 0x03, struct uffdio_copy);
constexpr unsigned long kZeropage = _IOWR(0xAA, 0x04, struct uffdio_zeropage);
constexpr unsigned long kMove = _IOWR(0xAA, 0x05, struct uffdx_move);
constexpr unsigned long kWriteprotect = _IOWR(0xAA, 0x06, struct uffdio_writeprotect);
constexpr unsigned long kContinue = _IOWR(0xAA, 0x07, struct uffdx_continue);
constexpr unsigned long kPoison = _IOWR(0xAA, 0x08, struct uffdx_poison);

constexpr uint64_t kContinueModeDontWake = 1;
constexpr uint64_t kContinueModeWp = 2;
constexpr size_t kMsgSize = 32;

static_assert(sizeof(struct uffd_msg) == kMsgSize, "uffd_msg is 32 bytes");
static_assert(offsetof(struct uffd_msg, arg.pagefault.flags) == 8, "pagefault.flags");
static_assert(offsetof(struct uffd_msg, arg.pagefault.address) == 16, "pagefault.address");
static_assert(offsetof(struct uffd_msg, arg.pagefault.feat.ptid) == 24, "pagefault.ptid");
static_assert(offsetof(struct uffd_msg, arg.remap.to) == 16, "remap.to");
static_assert(sizeof(struct uffdio_api) == 24, "uffdio_api");
static_assert(sizeof(struct uffdio_register) == 32, "uffdio_register");
static_assert(sizeof(struct uffdio_copy) == 40, "uffdio_copy");
static_assert(sizeof(struct uffdio_zeropage) == 32, "uffdio_zeropage");
static_assert(sizeof(struct uffdio_writeprotect) == 24, "uffdio_writeprotect");
static_assert(sizeof(struct uffdx_continue) == 32, "uffdio_continue");
static_assert(sizeof(struct uffdx_poison) == 32, "uffdio_poison");
static_assert(sizeof(struct uffdx_move) == 40, "uffdio_move");
static_assert(kContinue == 0xC020AA07, "UFFDIO_CONTINUE request code");
static_assert(kApi == 0xC018AA3F, "UFFDIO_API request code");
static_assert(kPoison == 0xC020AA08, "UFFDIO_POISON request code");
static_assert(kMove == 0xC028AA05, "UFFDIO_MOVE request code");
}  // namespace uffd_abi

#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif
#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MFD_HUGE_SHIFT
#define MFD_HUGE_SHIFT 26
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
