// The CUDA back end's host side and kernels, run on the host (cuda_on_host.h): CPU
// tensors in, CPU tensors out. Registered as the CPU kernels of the test-only op
// namespace mlic_emulated_cuda (torch.ops.mlic_emulated_cuda, mlic.ops.testing), never
// on the production dispatch path.
#include "cuda_on_host.h"  // first: the device headers below compile their kernels for the host

#include <ATen/Dispatch.h>

#include <utility>

#include "../cuda/launch.h"
#include "../device/pool.cuh"
#include "../device/roi_pool.cuh"
#include "../device/two_stream.cuh"
#include "../frontend.h"

namespace mlic {
namespace emulated {
namespace {

emu::Stream current_stream(const at::Device&) { return {}; }
using emu::launch;
using emu::launch_block_sync;

}  // namespace

#define MLIC_DEVICE_GUARD(device) (void)(device)
#include "../cuda/host_side.h"
#undef MLIC_DEVICE_GUARD

}  // namespace emulated

MLIC_BACKEND_STRUCT(EmulatedCudaBackend, emulated, false)

}  // namespace mlic

TORCH_LIBRARY_IMPL(mlic_emulated_cuda, CPU, m) { mlic::OpKernels<mlic::EmulatedCudaBackend>::register_kernels(m); }
