// CUDA back end: the shared host side (host_side.h) over real kernel launches.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <utility>

#define MLIC_ATOMIC_ADD(ptr, val) atomicAdd((ptr), (val))
#include "../device/pool.cuh"
#include "../device/roi_pool.cuh"
#include "../device/two_stream.cuh"
#include "../ops.h"

namespace mlic {
namespace {

c10::cuda::CUDAStream current_stream() { return c10::cuda::getCurrentCUDAStream(); }

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename... KArgs, typename... Args>
void launch_block_sync(void (*kernel)(KArgs...), dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  launch(kernel, grid, block, stream, std::forward<Args>(args)...);
}

}  // namespace
}  // namespace mlic

#define MLIC_BACKEND_FN(name) name##_cuda
#define MLIC_DEVICE_GUARD(device) c10::cuda::CUDAGuard guard(device)
#include "host_side.h"
