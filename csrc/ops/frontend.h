// The ops' front end: argument validation and Caffe's pooling geometry on the host
// (frontend.cpp; Python's rules are mlic/ops/geometry.py), and one kernel per op for a
// back end, registered under that back end's dispatch key (as torchvision registers a
// kernel per key).
//
// Value checks of the RoIs: the CPU back end reads the RoIs on the host anyway and checks
// them there; the CUDA back ends never copy them to the host (no sync in the forward or
// backward) and their kernels stay in bounds for any values; MLIC_CHECK_ROI_VALUES=1 in
// the environment when the extension is loaded makes them check on the host too (a
// debug switch).
#pragma once
#include <torch/library.h>

#include <vector>

#include "ops.h"

namespace mlic {

// Validation and argument building (frontend.cpp). `op` names the op in messages.
RoiArgs roi_forward_args(const Tensor& features, const Tensor& rois, at::IntArrayRef levels_h,
                         at::IntArrayRef levels_w, double spatial_scale, double score_scale, double score_bias,
                         const char* op, const char* hname, const char* wname);
RoiArgs roi_backward_args(const Tensor& grad, const Tensor& rois, const Tensor& argmax, at::IntArrayRef levels_h,
                          at::IntArrayRef levels_w, at::IntArrayRef in_shape, double spatial_scale,
                          double score_scale, double score_bias, const char* op);
PoolArgs spp_args(int64_t C, int64_t H, int64_t W, int64_t pyramid_height, c10::string_view mode, const char* op);
PoolArgs pool2d_args(int64_t C, int64_t H, int64_t W, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                     at::IntArrayRef padding, c10::string_view mode, const char* op);
void check_pool_input(const Tensor& x, const char* op);
void check_pool_backward(const Tensor& grad, const Tensor& argmax, const PoolArgs& a, at::IntArrayRef in_shape,
                         const char* op);
void check_two_stream(const Tensor& cls, const Tensor& det, const char* op);
void check_two_stream_backward(const Tensor& g_image, const Tensor& g_region, const Tensor& pc, const Tensor& pd,
                               const char* op);
// Host check of RoI values (finite, batch index in [0, N), |coordinate * scale| < 2^29).
void check_roi_values(const Tensor& rois, int64_t N, double spatial_scale, const char* op);
bool roi_value_debug_checks();  // MLIC_CHECK_ROI_VALUES=1 when the extension was loaded

// Every op of the library for back end B (a struct whose static functions are those of
// MLIC_DECLARE_BACKEND in ops.h; B::kChecksRoiValues says whether it checks RoI values).
template <class B>
struct OpKernels {
  static std::tuple<Tensor, Tensor> roi_spp(const Tensor& features, const Tensor& rois, at::IntArrayRef levels_h,
                                            at::IntArrayRef levels_w, double spatial_scale, double score_scale,
                                            double score_bias, bool /*deterministic: backward only*/) {
    const char* op = "mlic.roi_spp";
    const RoiArgs a = roi_forward_args(features, rois, levels_h, levels_w, spatial_scale, score_scale, score_bias, op,
                                       "levels_h", "levels_w");
    if (B::kChecksRoiValues || roi_value_debug_checks()) check_roi_values(rois, features.size(0), spatial_scale, op);
    return B::roi_forward(features, rois, a);
  }

  static std::tuple<Tensor, Tensor> roi_pool(const Tensor& features, const Tensor& rois, int64_t pooled_h,
                                             int64_t pooled_w, double spatial_scale, double score_scale,
                                             double score_bias, bool /*deterministic*/) {
    const char* op = "mlic.roi_pool";
    const RoiArgs a = roi_forward_args(features, rois, {pooled_h}, {pooled_w}, spatial_scale, score_scale, score_bias,
                                       op, "pooled_h", "pooled_w");
    if (B::kChecksRoiValues || roi_value_debug_checks()) check_roi_values(rois, features.size(0), spatial_scale, op);
    auto [out, argmax] = B::roi_forward(features, rois, a);
    const std::vector<int64_t> shape{rois.size(0), features.size(1), pooled_h, pooled_w};
    return {out.view(shape), argmax.view(shape)};
  }

  // Internal (the ops' autograd): argmax is what the forward returned. Any argmax is safe:
  // the CPU back end refuses one outside the plane, the CUDA kernels skip it.
  static Tensor roi_spp_backward(const Tensor& grad, const Tensor& rois, const Tensor& argmax,
                                 at::IntArrayRef levels_h, at::IntArrayRef levels_w, int64_t batch, int64_t channels,
                                 int64_t height, int64_t width, double spatial_scale, double score_scale,
                                 double score_bias, bool deterministic) {
    const char* op = "mlic.roi_spp_backward";
    const std::vector<int64_t> shape{batch, channels, height, width};
    const RoiArgs a = roi_backward_args(grad, rois, argmax, levels_h, levels_w, shape, spatial_scale, score_scale,
                                        score_bias, op);
    if (roi_value_debug_checks()) check_roi_values(rois, batch, spatial_scale, op);
    const int64_t K = rois.size(0), row = channels * a.levels.cells;
    // The ops' one determinism rule: the deterministic backward when the call asks for it
    // or torch.use_deterministic_algorithms(True) is in force as the backward runs (a false
    // flag cannot override that setting, as with PyTorch's own ops).
    const bool det = deterministic || at::globalContext().deterministicAlgorithms();
    return B::roi_backward(grad.reshape({K, row}), rois, argmax.reshape({K, row}), a, shape, det);
  }

  static std::tuple<Tensor, Tensor> spp(const Tensor& x, int64_t pyramid_height, c10::string_view mode) {
    const char* op = "mlic.spp";
    check_pool_input(x, op);
    return B::pool_forward(x, spp_args(x.size(1), x.size(2), x.size(3), pyramid_height, mode, op));
  }

  static Tensor spp_backward(const Tensor& grad, const Tensor& argmax, int64_t pyramid_height, c10::string_view mode,
                             int64_t batch, int64_t channels, int64_t height, int64_t width) {
    const char* op = "mlic.spp_backward";
    const PoolArgs a = spp_args(channels, height, width, pyramid_height, mode, op);
    const std::vector<int64_t> shape{batch, channels, height, width};
    check_pool_backward(grad, argmax, a, shape, op);
    return B::pool_backward(grad.reshape({batch, -1}), argmax, a, shape);
  }

  static std::tuple<Tensor, Tensor> caffe_pool2d(const Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                                 at::IntArrayRef padding, c10::string_view mode) {
    const char* op = "mlic.caffe_pool2d";
    check_pool_input(x, op);
    const PoolArgs a = pool2d_args(x.size(1), x.size(2), x.size(3), kernel_size, stride, padding, mode, op);
    auto [out, argmax] = B::pool_forward(x, a);
    const std::vector<int64_t> shape{x.size(0), x.size(1), a.levels.level[0].oh, a.levels.level[0].ow};
    return {out.view(shape), a.levels.mode == MLIC_POOL_MAX ? argmax.view(shape) : argmax};
  }

  static Tensor caffe_pool2d_backward(const Tensor& grad, const Tensor& argmax, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding, c10::string_view mode,
                                      int64_t batch, int64_t channels, int64_t height, int64_t width) {
    const char* op = "mlic.caffe_pool2d_backward";
    const PoolArgs a = pool2d_args(channels, height, width, kernel_size, stride, padding, mode, op);
    const std::vector<int64_t> shape{batch, channels, height, width};
    check_pool_backward(grad, argmax, a, shape, op);
    const Tensor am = a.levels.mode == MLIC_POOL_MAX ? argmax.reshape({batch, -1}) : argmax;
    return B::pool_backward(grad.reshape({batch, -1}), am, a, shape);
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor> wsddn_two_stream(const Tensor& cls, const Tensor& det) {
    check_two_stream(cls, det, "mlic.wsddn_two_stream");
    return B::two_stream_forward(cls, det);
  }

  static std::tuple<Tensor, Tensor> wsddn_two_stream_backward(const std::optional<Tensor>& g_image,
                                                              const std::optional<Tensor>& g_region, const Tensor& pc,
                                                              const Tensor& pd) {
    const Tensor gi = g_image.has_value() ? *g_image : Tensor();
    const Tensor gr = g_region.has_value() ? *g_region : Tensor();
    check_two_stream_backward(gi, gr, pc, pd, "mlic.wsddn_two_stream_backward");
    return B::two_stream_backward(gi, gr, pc, pd);
  }

  static void register_kernels(torch::Library& m) {
    m.impl("roi_pool", TORCH_FN(roi_pool));
    m.impl("roi_spp", TORCH_FN(roi_spp));
    m.impl("roi_spp_backward", TORCH_FN(roi_spp_backward));
    m.impl("spp", TORCH_FN(spp));
    m.impl("spp_backward", TORCH_FN(spp_backward));
    m.impl("caffe_pool2d", TORCH_FN(caffe_pool2d));
    m.impl("caffe_pool2d_backward", TORCH_FN(caffe_pool2d_backward));
    m.impl("wsddn_two_stream", TORCH_FN(wsddn_two_stream));
    m.impl("wsddn_two_stream_backward", TORCH_FN(wsddn_two_stream_backward));
  }
};

// A back end struct over the functions of namespace NS (see ops.h).
#define MLIC_BACKEND_STRUCT(NAME, NS, CHECKS_ROI_VALUES)                                                       \
  struct NAME {                                                                                               \
    static constexpr bool kChecksRoiValues = CHECKS_ROI_VALUES;                                               \
    static std::tuple<Tensor, Tensor> roi_forward(const Tensor& f, const Tensor& r, const RoiArgs& a) {       \
      return NS::roi_forward(f, r, a);                                                                        \
    }                                                                                                         \
    static Tensor roi_backward(const Tensor& g, const Tensor& r, const Tensor& am, const RoiArgs& a,          \
                               at::IntArrayRef s, bool det) {                                                 \
      return NS::roi_backward(g, r, am, a, s, det);                                                           \
    }                                                                                                         \
    static std::tuple<Tensor, Tensor> pool_forward(const Tensor& x, const PoolArgs& a) {                      \
      return NS::pool_forward(x, a);                                                                          \
    }                                                                                                         \
    static Tensor pool_backward(const Tensor& g, const Tensor& am, const PoolArgs& a, at::IntArrayRef s) {    \
      return NS::pool_backward(g, am, a, s);                                                                  \
    }                                                                                                         \
    static std::tuple<Tensor, Tensor, Tensor, Tensor> two_stream_forward(const Tensor& c, const Tensor& d) {  \
      return NS::two_stream_forward(c, d);                                                                    \
    }                                                                                                         \
    static std::tuple<Tensor, Tensor> two_stream_backward(const Tensor& gi, const Tensor& gr, const Tensor& pc, \
                                                          const Tensor& pd) {                                 \
      return NS::two_stream_backward(gi, gr, pc, pd);                                                         \
    }                                                                                                         \
  };

}  // namespace mlic
