// Host-side declarations shared by the op front end (frontend.h, mlic.cpp) and the back
// ends: CPU (cpu/), CUDA (cuda/), its host emulation (emulation/) and NVRTC (nvrtc/).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "device/common.cuh"

namespace mlic {

using at::Tensor;

// Accumulation type of the kernels: Caffe computes in the blob's own type, so float
// stays float; half and bfloat16 accumulate in float.
template <typename T> struct Acc { using type = T; };
template <> struct Acc<at::Half> { using type = float; };
template <> struct Acc<at::BFloat16> { using type = float; };
template <typename T> at::ScalarType acc_dtype() { return c10::CppTypeToScalarType<typename Acc<T>::type>::value; }

// The element types every kernel is instantiated for.
#define MLIC_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// Validated arguments of the RoI pooling ops (roi_pool is roi_spp with one level).
struct RoiArgs {
  RoiLevels levels{};
  double spatial_scale = 1, score_scale = 1, score_bias = 0;
};

// Validated arguments of the Caffe pooling ops (caffe_pool2d is one level, spp many).
struct PoolArgs {
  PoolLevels levels{};
};

// The functions a back end provides; the front end (frontend.h) validates the arguments,
// builds RoiArgs / PoolArgs and registers one kernel per op under the back end's
// dispatch key. Inputs have the documented shapes; outputs are flat per image / RoI:
//   roi_forward  -> (out [K, C*S], argmax [K, C*S] int32)
//   roi_backward -> grad of features [N, C, H, W] (in_shape)
//   pool_forward -> (out [N, C*S], argmax [N, C*S] int32, or [0, 0] for AVE)
//   pool_backward, two_stream_forward (image, region, cls_prob, det_prob), two_stream_backward.
#define MLIC_DECLARE_BACKEND                                                                                   \
  std::tuple<Tensor, Tensor> roi_forward(const Tensor& feat, const Tensor& rois, const RoiArgs& a);          \
  Tensor roi_backward(const Tensor& grad, const Tensor& rois, const Tensor& argmax, const RoiArgs& a,         \
                      at::IntArrayRef in_shape, bool deterministic);                                         \
  std::tuple<Tensor, Tensor> pool_forward(const Tensor& x, const PoolArgs& a);                               \
  Tensor pool_backward(const Tensor& grad, const Tensor& argmax, const PoolArgs& a, at::IntArrayRef in_shape); \
  std::tuple<Tensor, Tensor, Tensor, Tensor> two_stream_forward(const Tensor& cls, const Tensor& det);       \
  std::tuple<Tensor, Tensor> two_stream_backward(const Tensor& g_image, const Tensor& g_region, const Tensor& pc, \
                                                 const Tensor& pd);

namespace cpu { MLIC_DECLARE_BACKEND }
// The CUDA back end's host side (cuda/host_side.h) over three ways to run its kernels.
namespace cuda { MLIC_DECLARE_BACKEND }      // compiled by nvcc (cuda/ops_cuda.cu)
namespace emulated { MLIC_DECLARE_BACKEND }  // run on the host, for tests (emulation/)
namespace nvrtc { MLIC_DECLARE_BACKEND }     // compiled at run time through CuPy (nvrtc/)
#undef MLIC_DECLARE_BACKEND

// The NVRTC back end's launcher, set from Python (mlic/ops/_nvrtc.py): launches the
// kernel named by `name_expr` (e.g. "mlic::pool_forward_kernel<float, float>") with
// cuLaunchKernel's parameter array `params` on the current stream of `device_index`.
void nvrtc_launch(const std::string& name_expr, const std::string& element_type, const int64_t grid[3],
                  const int64_t block[3], int device_index, void** params);

}  // namespace mlic
