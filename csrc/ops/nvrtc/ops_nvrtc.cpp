// NVRTC back end: the CUDA back end's host side (cuda/host_side.h) launching the same
// device code compiled at run time by NVRTC through CuPy (mlic/ops/_nvrtc.py). The
// kernels' parameters are packed here, exactly typed, into cuLaunchKernel's array; Python
// only compiles the source, looks the kernel up by name and launches it. It is the CUDA
// kernel of the ops in a build without nvcc, and of the test namespace mlic_nvrtc always
// (so a GPU check can compare it with the compiled kernels).
#include "../emulation/cuda_on_host.h"  // first: gives the kernels' parameter types (never run here)

#include <ATen/Dispatch.h>
#include <c10/core/DeviceGuard.h>

#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../cuda/launch.h"
#include "../device/pool.cuh"
#include "../device/roi_pool.cuh"
#include "../device/two_stream.cuh"
#include "../frontend.h"

namespace mlic {
namespace nvrtc {
namespace {

struct Stream {
  int device_index;
};

Stream current_stream(const at::Device& device) { return Stream{device.index()}; }

template <typename... KArgs, typename... Args>
void launch(KernelRef<KArgs...> k, dim3 grid, dim3 block, Stream stream, Args&&... args) {
  static_assert(sizeof...(KArgs) == sizeof...(Args), "a kernel launched with the wrong number of arguments");
  // Each argument converted to the kernel's parameter type, as <<<>>> would.
  std::tuple<std::decay_t<KArgs>...> values(static_cast<std::decay_t<KArgs>>(std::forward<Args>(args))...);
  void* params[sizeof...(KArgs) > 0 ? sizeof...(KArgs) : 1];
  std::apply([&params](auto&... v) {
    size_t i = 0;
    ((params[i++] = const_cast<void*>(static_cast<const void*>(&v))), ...);
  }, values);
  const std::string expr = std::string("mlic::") + k.name + "<" + k.element_type + ", " + k.acc_type + ">";
  const int64_t g[3] = {grid.x, grid.y, grid.z}, b[3] = {block.x, block.y, block.z};
  nvrtc_launch(expr, k.element_type, g, b, stream.device_index, params);
}

template <typename... KArgs, typename... Args>
void launch_block_sync(KernelRef<KArgs...> k, dim3 grid, dim3 block, Stream stream, Args&&... args) {
  launch(k, grid, block, stream, std::forward<Args>(args)...);
}

}  // namespace

#define MLIC_DEVICE_GUARD(device) c10::DeviceGuard guard(device)
#include "../cuda/host_side.h"
#undef MLIC_DEVICE_GUARD

}  // namespace nvrtc

MLIC_BACKEND_STRUCT(NvrtcBackend, nvrtc, false)

}  // namespace mlic

TORCH_LIBRARY_IMPL(mlic_nvrtc, CUDA, m) { mlic::OpKernels<mlic::NvrtcBackend>::register_kernels(m); }

#ifndef MLIC_WITH_CUDA
TORCH_LIBRARY_IMPL(mlic, CUDA, m) { mlic::OpKernels<mlic::NvrtcBackend>::register_kernels(m); }
#endif
