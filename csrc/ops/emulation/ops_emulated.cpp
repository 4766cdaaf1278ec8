// The CUDA back end's host side and kernels, run on the host (cuda_on_host.h): CPU
// tensors in, CPU tensors out. Selected by set_cuda_emulation(true) for CPU tensors.
#include "cuda_on_host.h"

#include <ATen/Dispatch.h>

#include <utility>

#include "../device/pool.cuh"
#include "../device/roi_pool.cuh"
#include "../device/two_stream.cuh"
#include "../ops.h"

namespace mlic {
namespace {

emu::Stream current_stream() { return {}; }
using emu::launch;
using emu::launch_block_sync;

}  // namespace
}  // namespace mlic

#define MLIC_BACKEND_FN(name) name##_emu
#define MLIC_DEVICE_GUARD(device) (void)(device)
#include "../cuda/host_side.h"
