// Launch geometry and kernel references of the CUDA back end's host side (host_side.h):
// one source for the compiled CUDA kernels, their host emulation and the NVRTC path.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace mlic {

constexpr int kThreads = 256;             // grid-stride kernels
constexpr int kTwoStreamThreads = 512;    // the two-stream kernels: one block per image
constexpr int64_t kMaxBlocks = 65536 * 8; // grid-stride kernels loop beyond this
constexpr int64_t kMaxGridYZ = 65535;     // CUDA's limit on gridDim.y and gridDim.z

inline int64_t blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return b < kMaxBlocks ? (b > 0 ? b : 1) : kMaxBlocks;
}

// The element type of a kernel instance as the device code names it (NVRTC's name expressions).
template <typename T> constexpr const char* device_type_name();
template <> constexpr const char* device_type_name<float>() { return "float"; }
template <> constexpr const char* device_type_name<double>() { return "double"; }
template <> constexpr const char* device_type_name<c10::Half>() { return "__half"; }
template <> constexpr const char* device_type_name<c10::BFloat16>() { return "__nv_bfloat16"; }

// A kernel instance: its function (a __global__ function, or its host-compiled twin under
// the emulation and the NVRTC back end, where it gives the parameter types) and its name.
template <typename... KArgs>
struct KernelRef {
  void (*fn)(KArgs...);
  const char* name;  // e.g. "pool_forward_kernel"
  const char* element_type;
  const char* acc_type;
};

template <typename... KArgs>
KernelRef<KArgs...> kernel_ref(void (*fn)(KArgs...), const char* name, const char* t, const char* a) {
  return KernelRef<KArgs...>{fn, name, t, a};
}

// Kernel K instantiated for element type T and accumulation type A.
#define MLIC_KERNEL(K, T, A) \
  ::mlic::kernel_ref(&K<T, A>, #K, ::mlic::device_type_name<T>(), ::mlic::device_type_name<A>())

}  // namespace mlic
