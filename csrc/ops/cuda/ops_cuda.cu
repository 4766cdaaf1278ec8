// CUDA back end: the shared host side (host_side.h) over nvcc's compiled kernels.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <utility>

#define MLIC_ATOMIC_ADD(ptr, val) atomicAdd((ptr), (val))
#include "../device/pool.cuh"
#include "../device/roi_pool.cuh"
#include "../device/two_stream.cuh"
#include "../frontend.h"
#include "launch.h"

namespace mlic {
namespace cuda {
namespace {

c10::cuda::CUDAStream current_stream(const at::Device& device) {
  return c10::cuda::getCurrentCUDAStream(device.index());
}

template <typename... KArgs, typename... Args>
void launch(KernelRef<KArgs...> k, dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  k.fn<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename... KArgs, typename... Args>
void launch_block_sync(KernelRef<KArgs...> k, dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  launch(k, grid, block, stream, std::forward<Args>(args)...);
}

}  // namespace

#define MLIC_DEVICE_GUARD(device) c10::cuda::CUDAGuard guard(device)
#include "host_side.h"
#undef MLIC_DEVICE_GUARD

}  // namespace cuda

MLIC_BACKEND_STRUCT(CudaBackend, cuda, false)

}  // namespace mlic

TORCH_LIBRARY_IMPL(mlic, CUDA, m) { mlic::OpKernels<mlic::CudaBackend>::register_kernels(m); }
