// Op schemas (namespace mlic), argument checking, and dispatch to the CPU / CUDA back ends.
#include <torch/extension.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <sstream>

#include "ops/ops.h"

namespace mlic {

namespace {
std::atomic<bool> emulate_cuda{false};
}  // namespace

bool cuda_emulation() { return emulate_cuda.load(std::memory_order_relaxed); }
bool set_cuda_emulation(bool on) { return emulate_cuda.exchange(on); }

namespace {

std::string shape_str(const Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

void check_float(const Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(at::isFloatingType(t.scalar_type()), op, ": `", name, "` must be a floating-point tensor, got ",
                    t.scalar_type());
}

void check_same(const Tensor& a, const Tensor& b, const char* op, const char* na, const char* nb) {
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": `", na, "` and `", nb, "` must be on the same device, got ",
                    a.device(), " and ", b.device());
  TORCH_CHECK_VALUE(a.scalar_type() == b.scalar_type(), op, ": `", na, "` and `", nb,
                    "` must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
}

void check_positive(int64_t v, const char* op, const char* name) {
  TORCH_CHECK_VALUE(v > 0, op, ": `", name, "` must be positive, got ", v);
}

RoiArgs roi_args(at::IntArrayRef hs, at::IntArrayRef ws, double spatial_scale, double score_scale, double score_bias,
                 const char* op, const char* hname, const char* wname) {
  TORCH_CHECK_VALUE(!hs.empty() && hs.size() == ws.size(), op, ": `", hname, "` and `", wname,
                    "` must be non-empty and of equal length, got ", hs.size(), " and ", ws.size());
  TORCH_CHECK_VALUE(std::isfinite(spatial_scale) && spatial_scale > 0, op,
                    ": `spatial_scale` must be a positive finite number, got ", spatial_scale);
  TORCH_CHECK_VALUE(std::isfinite(score_scale) && std::isfinite(score_bias), op,
                    ": `score_scale` and `score_bias` must be finite");
  RoiArgs a;
  a.spatial_scale = spatial_scale;
  a.score_scale = score_scale;
  a.score_bias = score_bias;
  for (size_t l = 0; l < hs.size(); ++l) {
    check_positive(hs[l], op, hname);
    check_positive(ws[l], op, wname);
    a.lv.insert(a.lv.end(), {static_cast<int>(hs[l]), static_cast<int>(ws[l]), a.S});
    a.S += static_cast<int>(hs[l] * ws[l]);
  }
  return a;
}

void check_roi_inputs(const Tensor& features, const Tensor& rois, const char* op) {
  TORCH_CHECK_VALUE(features.dim() == 4, op, ": `features` must be 4-D [N, C, H, W], got shape ",
                    shape_str(features));
  TORCH_CHECK_VALUE(rois.dim() == 2 && (rois.size(1) == 5 || rois.size(1) == 6), op,
                    ": `rois` must be 2-D [K, 6] (batch, x1, y1, x2, y2, score) or [K, 5], got shape ",
                    shape_str(rois));
  check_float(features, op, "features");
  check_same(features, rois, op, "features", "rois");
  for (int d = 0; d < 4; ++d)
    TORCH_CHECK_VALUE(features.size(d) > 0, op, ": `features` has an empty dimension, shape ", shape_str(features));
}

// One host round trip validates every RoI: finite values, batch index in [0, N), and
// coordinates whose rounding fits an int (never an out-of-bounds access later).
void check_roi_values(const Tensor& rois, int64_t N, double spatial_scale, const char* op) {
  if (rois.size(0) == 0) return;
  auto r = rois.to(at::kDouble);
  auto b = r.select(1, 0).trunc();
  auto stats = at::stack({at::isfinite(r).all().to(at::kDouble), b.min(), b.max(),
                          r.narrow(1, 1, 4).abs().max() * spatial_scale})
                   .cpu();
  auto s = stats.accessor<double, 1>();
  TORCH_CHECK_VALUE(s[0] == 1.0, op, ": `rois` contains NaN or infinite values");
  TORCH_CHECK_VALUE(s[1] >= 0 && s[2] < static_cast<double>(N), op,
                    ": `rois` batch index (column 0) must lie in [0, ", N, ") for features with N=", N,
                    ", got values truncating to [", s[1], ", ", s[2], "]");
  TORCH_CHECK_VALUE(s[3] < 1e9, op, ": `rois` coordinates times spatial_scale must stay below 1e9 in magnitude, got ",
                    s[3]);
}

int pool_mode(c10::string_view mode, const char* op) {
  if (mode == "max" || mode == "MAX") return 0;
  if (mode == "ave" || mode == "AVE" || mode == "avg") return 1;
  TORCH_CHECK_VALUE(false, op, ": `mode` must be \"max\" or \"ave\", got \"", std::string(mode), "\"");
  return 0;
}

// Caffe's pooling output size: ceil rule, then, when the layer has any padding (either
// axis: Caffe tests pad_h || pad_w), drop a last window that would start in the padding.
int caffe_pooled(int64_t in, int64_t k, int64_t s, int64_t p, bool any_pad) {
  int64_t out = static_cast<int64_t>(std::ceil(static_cast<double>(in + 2 * p - k) / static_cast<double>(s))) + 1;
  if (any_pad && (out - 1) * s >= in + p) --out;
  return static_cast<int>(out);
}

void add_level(PoolArgs& a, int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
               int64_t pw) {
  const bool any_pad = ph > 0 || pw > 0;
  const int oh = caffe_pooled(H, kh, sh, ph, any_pad), ow = caffe_pooled(W, kw, sw, pw, any_pad);
  a.lp.insert(a.lp.end(), {static_cast<int>(kh), static_cast<int>(kw), static_cast<int>(sh), static_cast<int>(sw),
                           static_cast<int>(ph), static_cast<int>(pw), oh, ow, a.S});
  a.S += oh * ow;
}

PoolArgs spp_args(int64_t H, int64_t W, int64_t pyramid_height, c10::string_view mode, const char* op) {
  TORCH_CHECK_VALUE(pyramid_height >= 1 && pyramid_height <= 16, op,
                    ": `pyramid_height` must be in [1, 16], got ", pyramid_height);
  PoolArgs a;
  a.mode = pool_mode(mode, op);
  for (int64_t l = 0; l < pyramid_height; ++l) {
    const int64_t bins = int64_t(1) << l;
    const int64_t kh = (H + bins - 1) / bins, kw = (W + bins - 1) / bins;
    const int64_t ph = (kh * bins - H + 1) / 2, pw = (kw * bins - W + 1) / 2;
    TORCH_CHECK_VALUE(ph < kh && pw < kw, op, ": level ", l, " of the pyramid (", bins, "x", bins,
                      " bins) needs padding (", ph, ", ", pw, ") not smaller than its kernel (", kh, ", ", kw,
                      ") for input ", H, "x", W, "; Caffe's SPP refuses this input (use fewer levels)");
    add_level(a, H, W, kh, kw, kh, kw, ph, pw);
  }
  return a;
}

PoolArgs pool2d_args(int64_t H, int64_t W, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p,
                     c10::string_view mode, const char* op) {
  TORCH_CHECK_VALUE(k.size() == 2 && s.size() == 2 && p.size() == 2, op,
                    ": `kernel_size`, `stride` and `padding` must each have 2 values");
  for (int d = 0; d < 2; ++d) {
    check_positive(k[d], op, "kernel_size");
    check_positive(s[d], op, "stride");
    TORCH_CHECK_VALUE(p[d] >= 0 && p[d] < k[d], op, ": `padding` must be in [0, kernel_size), got ", p[d],
                      " for kernel ", k[d]);
  }
  PoolArgs a;
  a.mode = pool_mode(mode, op);
  add_level(a, H, W, k[0], k[1], s[0], s[1], p[0], p[1]);
  // Caffe accepts an input smaller than the kernel (one clipped window) but not an empty output.
  TORCH_CHECK_VALUE(a.lp[6] >= 1 && a.lp[7] >= 1, op, ": input ", H, "x", W, " with kernel ", k[0], "x", k[1],
                    ", stride ", s[0], "x", s[1], " and padding ", p[0], "x", p[1], " gives an empty output");
  return a;
}

void check_x4(const Tensor& x, const char* op) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": `x` must be 4-D [N, C, H, W], got shape ", shape_str(x));
  check_float(x, op, "x");
  for (int d = 0; d < 4; ++d)
    TORCH_CHECK_VALUE(x.size(d) > 0, op, ": `x` has an empty dimension, shape ", shape_str(x));
}

void check_grad(const Tensor& grad, at::IntArrayRef shape, const char* op) {
  TORCH_CHECK_VALUE(grad.sizes().equals(shape), op, ": `grad` must have shape ", shape, ", got ", shape_str(grad));
}

std::tuple<Tensor, Tensor> roi_forward(const Tensor& features, const Tensor& rois, const RoiArgs& a) {
#ifdef MLIC_WITH_CUDA
  if (features.is_cuda()) return roi_forward_cuda(features, rois, a);
#endif
  if (cuda_emulation()) return roi_forward_emu(features, rois, a);
  return roi_forward_cpu(features, rois, a);
}

std::tuple<Tensor, Tensor> pool_forward(const Tensor& x, const PoolArgs& a) {
#ifdef MLIC_WITH_CUDA
  if (x.is_cuda()) return pool_forward_cuda(x, a);
#endif
  if (cuda_emulation()) return pool_forward_emu(x, a);
  return pool_forward_cpu(x, a);
}

Tensor pool_backward(const Tensor& grad, const Tensor& argmax, const PoolArgs& a, at::IntArrayRef shape,
                     const char* op) {
  check_grad(grad, {shape[0], shape[1] * a.S}, op);
  if (a.mode == 0) {
    TORCH_CHECK_VALUE(argmax.sizes().equals(grad.sizes()) && argmax.scalar_type() == at::kInt, op,
                      ": `argmax` must be int32 with the shape of `grad`");
  }
#ifdef MLIC_WITH_CUDA
  if (grad.is_cuda()) return pool_backward_cuda(grad, argmax, a, shape);
#endif
  if (cuda_emulation()) return pool_backward_emu(grad, argmax, a, shape);
  return pool_backward_cpu(grad, argmax, a, shape);
}

void check_two_stream(const Tensor& cls, const Tensor& det, const char* op) {
  TORCH_CHECK_VALUE(cls.dim() == 3, op, ": `cls_logits` must be 3-D [N, R, C], got shape ", shape_str(cls));
  TORCH_CHECK_VALUE(det.dim() == 3, op, ": `det_logits` must be 3-D [N, R, C], got shape ", shape_str(det));
  TORCH_CHECK_VALUE(cls.sizes().equals(det.sizes()), op, ": `cls_logits` and `det_logits` must have the same shape, got ",
                    shape_str(cls), " and ", shape_str(det));
  check_float(cls, op, "cls_logits");
  check_same(cls, det, op, "cls_logits", "det_logits");
  TORCH_CHECK_VALUE(cls.size(1) > 0, op, ": `cls_logits`/`det_logits` need at least one region (R, dim 1), got shape ",
                    shape_str(cls));
  TORCH_CHECK_VALUE(cls.size(2) > 0, op, ": `cls_logits`/`det_logits` need at least one class (C, dim 2), got shape ",
                    shape_str(cls));
}

}  // namespace

std::tuple<Tensor, Tensor> roi_spp_op(const Tensor& features, const Tensor& rois, at::IntArrayRef levels_h,
                                      at::IntArrayRef levels_w, double spatial_scale, double score_scale,
                                      double score_bias, bool /*deterministic: backward only*/) {
  const char* op = "mlic.roi_spp";
  check_roi_inputs(features, rois, op);
  RoiArgs a = roi_args(levels_h, levels_w, spatial_scale, score_scale, score_bias, op, "levels_h", "levels_w");
  check_roi_values(rois, features.size(0), spatial_scale, op);
  return roi_forward(features, rois, a);
}

std::tuple<Tensor, Tensor> roi_pool_op(const Tensor& features, const Tensor& rois, int64_t pooled_h, int64_t pooled_w,
                                       double spatial_scale, double score_scale, double score_bias,
                                       bool deterministic) {
  const char* op = "mlic.roi_pool";
  check_roi_inputs(features, rois, op);
  check_positive(pooled_h, op, "pooled_h");
  check_positive(pooled_w, op, "pooled_w");
  RoiArgs a = roi_args({pooled_h}, {pooled_w}, spatial_scale, score_scale, score_bias, op, "pooled_h", "pooled_w");
  check_roi_values(rois, features.size(0), spatial_scale, op);
  (void)deterministic;
  auto [out, argmax] = roi_forward(features, rois, a);
  const std::vector<int64_t> shape{rois.size(0), features.size(1), pooled_h, pooled_w};
  return {out.view(shape), argmax.view(shape)};
}

Tensor roi_spp_backward_op(const Tensor& grad, const Tensor& rois, const Tensor& argmax, at::IntArrayRef levels_h,
                           at::IntArrayRef levels_w, int64_t batch, int64_t channels, int64_t height, int64_t width,
                           double spatial_scale, double score_scale, double score_bias, bool deterministic) {
  const char* op = "mlic.roi_spp_backward";
  RoiArgs a = roi_args(levels_h, levels_w, spatial_scale, score_scale, score_bias, op, "levels_h", "levels_w");
  TORCH_CHECK_VALUE(rois.dim() == 2 && (rois.size(1) == 5 || rois.size(1) == 6), op,
                    ": `rois` must be [K, 5] or [K, 6], got ", shape_str(rois));
  const int64_t K = rois.size(0);
  check_grad(grad.dim() == 2 ? grad : grad.reshape({K, -1}), {K, channels * a.S}, op);
  check_same(grad, rois, op, "grad", "rois");
  TORCH_CHECK_VALUE(argmax.numel() == grad.numel() && argmax.scalar_type() == at::kInt, op,
                    ": `argmax` must be int32 with as many elements as `grad`");
  check_roi_values(rois, batch, spatial_scale, op);
  const std::vector<int64_t> shape{batch, channels, height, width};
  const bool det = deterministic || at::globalContext().deterministicAlgorithms();
  Tensor g = grad.reshape({K, channels * a.S});
  Tensor am = argmax.reshape({K, channels * a.S});
#ifdef MLIC_WITH_CUDA
  if (grad.is_cuda()) return roi_backward_cuda(g, rois, am, a, shape, det);
#endif
  if (cuda_emulation()) return roi_backward_emu(g, rois, am, a, shape, det);
  return roi_backward_cpu(g, rois, am, a, shape);
}

std::tuple<Tensor, Tensor> spp_op(const Tensor& x, int64_t pyramid_height, c10::string_view mode) {
  const char* op = "mlic.spp";
  check_x4(x, op);
  return pool_forward(x, spp_args(x.size(2), x.size(3), pyramid_height, mode, op));
}

Tensor spp_backward_op(const Tensor& grad, const Tensor& argmax, int64_t pyramid_height, c10::string_view mode,
                       int64_t batch, int64_t channels, int64_t height, int64_t width) {
  const char* op = "mlic.spp_backward";
  return pool_backward(grad, argmax, spp_args(height, width, pyramid_height, mode, op),
                       {batch, channels, height, width}, op);
}

std::tuple<Tensor, Tensor> caffe_pool2d_op(const Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, c10::string_view mode) {
  const char* op = "mlic.caffe_pool2d";
  check_x4(x, op);
  PoolArgs a = pool2d_args(x.size(2), x.size(3), kernel_size, stride, padding, mode, op);
  Tensor out, argmax;
  std::tie(out, argmax) = pool_forward(x, a);
  const std::vector<int64_t> shape{x.size(0), x.size(1), a.lp[6], a.lp[7]};
  return {out.view(shape), a.mode == 0 ? argmax.view(shape) : argmax};
}

Tensor caffe_pool2d_backward_op(const Tensor& grad, const Tensor& argmax, at::IntArrayRef kernel_size,
                                at::IntArrayRef stride, at::IntArrayRef padding, c10::string_view mode, int64_t batch,
                                int64_t channels, int64_t height, int64_t width) {
  const char* op = "mlic.caffe_pool2d_backward";
  PoolArgs a = pool2d_args(height, width, kernel_size, stride, padding, mode, op);
  TORCH_CHECK_VALUE(grad.dim() == 4, op, ": `grad` must be 4-D, got ", shape_str(grad));
  Tensor g = grad.reshape({batch, -1});
  Tensor am = a.mode == 0 ? argmax.reshape({batch, -1}) : argmax;
  return pool_backward(g, am, a, {batch, channels, height, width}, op);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> two_stream_op(const Tensor& cls, const Tensor& det) {
  check_two_stream(cls, det, "mlic.wsddn_two_stream");
#ifdef MLIC_WITH_CUDA
  if (cls.is_cuda()) return two_stream_forward_cuda(cls, det);
#endif
  if (cuda_emulation()) return two_stream_forward_emu(cls, det);
  return two_stream_forward_cpu(cls, det);
}

std::tuple<Tensor, Tensor> two_stream_backward_op(const std::optional<Tensor>& g_image,
                                                  const std::optional<Tensor>& g_region, const Tensor& pc,
                                                  const Tensor& pd) {
  const char* op = "mlic.wsddn_two_stream_backward";
  check_two_stream(pc, pd, op);
  const int64_t N = pc.size(0), C = pc.size(2);
  Tensor gi, gr;
  if (g_image.has_value() && g_image->defined()) {
    gi = *g_image;
    check_grad(gi, {N, C}, op);
    check_same(gi, pc, op, "grad_image", "cls_prob");
  }
  if (g_region.has_value() && g_region->defined()) {
    gr = *g_region;
    check_grad(gr, pc.sizes(), op);
    check_same(gr, pc, op, "grad_region", "cls_prob");
  }
#ifdef MLIC_WITH_CUDA
  if (pc.is_cuda()) return two_stream_backward_cuda(gi, gr, pc, pd);
#endif
  if (cuda_emulation()) return two_stream_backward_emu(gi, gr, pc, pd);
  return two_stream_backward_cpu(gi, gr, pc, pd);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class TwoStreamFunction : public torch::autograd::Function<TwoStreamFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& cls, const Tensor& det) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("mlic::wsddn_two_stream", "")
                               .typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&)>();
    auto [image, region, pc, pd] = op.call(cls, det);
    ctx->save_for_backward({pc, pd});
    ctx->mark_non_differentiable({pc, pd});
    ctx->set_materialize_grads(false);  // an unused output costs no zero-filled gradient
    return {image, region, pc, pd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined() && !grads[1].defined()) return {Tensor(), Tensor()};
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("mlic::wsddn_two_stream_backward", "")
            .typed<std::tuple<Tensor, Tensor>(const std::optional<Tensor>&, const std::optional<Tensor>&,
                                              const Tensor&, const Tensor&)>();
    const auto saved = ctx->get_saved_variables();
    auto opt = [](const Tensor& g) { return g.defined() ? std::optional<Tensor>(g) : std::nullopt; };
    auto [d_cls, d_det] = op.call(opt(grads[0]), opt(grads[1]), saved[0], saved[1]);
    return {d_cls, d_det};
  }
};

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> two_stream_autograd(const Tensor& cls, const Tensor& det) {
  const auto out = TwoStreamFunction::apply(cls, det);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace mlic

TORCH_LIBRARY(mlic, m) {
  m.def(
      "roi_pool(Tensor features, Tensor rois, int pooled_h, int pooled_w, float spatial_scale=1.0, "
      "float score_scale=1.0, float score_bias=0.0, bool deterministic=False) -> (Tensor, Tensor)");
  m.def(
      "roi_spp(Tensor features, Tensor rois, int[] levels_h, int[] levels_w, float spatial_scale=1.0, "
      "float score_scale=1.0, float score_bias=0.0, bool deterministic=False) -> (Tensor, Tensor)");
  m.def(
      "roi_spp_backward(Tensor grad, Tensor rois, Tensor argmax, int[] levels_h, int[] levels_w, int batch, "
      "int channels, int height, int width, float spatial_scale, float score_scale, float score_bias, "
      "bool deterministic) -> Tensor");
  m.def("spp(Tensor x, int pyramid_height, str mode=\"max\") -> (Tensor, Tensor)");
  m.def(
      "spp_backward(Tensor grad, Tensor argmax, int pyramid_height, str mode, int batch, int channels, int height, "
      "int width) -> Tensor");
  m.def(
      "caffe_pool2d(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, str mode=\"max\") "
      "-> (Tensor, Tensor)");
  m.def(
      "caffe_pool2d_backward(Tensor grad, Tensor argmax, int[2] kernel_size, int[2] stride, int[2] padding, "
      "str mode, int batch, int channels, int height, int width) -> Tensor");
  m.def("wsddn_two_stream(Tensor cls_logits, Tensor det_logits) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "wsddn_two_stream_backward(Tensor? grad_image, Tensor? grad_region, Tensor cls_prob, Tensor det_prob) "
      "-> (Tensor, Tensor)");
}

#define MLIC_REGISTER_IMPLS(m)                                          \
  m.impl("roi_pool", &mlic::roi_pool_op);                               \
  m.impl("roi_spp", &mlic::roi_spp_op);                                 \
  m.impl("roi_spp_backward", &mlic::roi_spp_backward_op);               \
  m.impl("spp", &mlic::spp_op);                                         \
  m.impl("spp_backward", &mlic::spp_backward_op);                       \
  m.impl("caffe_pool2d", &mlic::caffe_pool2d_op);                       \
  m.impl("caffe_pool2d_backward", &mlic::caffe_pool2d_backward_op);     \
  m.impl("wsddn_two_stream", &mlic::two_stream_op);                     \
  m.impl("wsddn_two_stream_backward", &mlic::two_stream_backward_op);

TORCH_LIBRARY_IMPL(mlic, CPU, m) { MLIC_REGISTER_IMPLS(m) }

// The two-stream head is small next to the layers around it, so its autograd lives in
// C++: a Python autograd function would cost more than its kernels at the released size.
// (The RoI and pooling ops register theirs from Python, mlic/ops/_registration.py.)
TORCH_LIBRARY_IMPL(mlic, Autograd, m) { m.impl("wsddn_two_stream", &mlic::two_stream_autograd); }

#ifdef MLIC_WITH_CUDA
TORCH_LIBRARY_IMPL(mlic, CUDA, m) { MLIC_REGISTER_IMPLS(m) }
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mlic compiled kernels (ops are registered under torch.ops.mlic)";
  m.def("cpu_simd_level", &mlic::cpu_simd_level, "x86-64 level of the CPU kernels' hot loops (4, 3 or 1)");
  m.def("set_cpu_simd_level_cap", &mlic::set_cpu_simd_level_cap,
        "cap the level (1, 3 or 4) the CPU kernels run at; returns the level now in force");
  m.def("set_cuda_emulation", &mlic::set_cuda_emulation,
        "run the CUDA back end's host side and kernels on the host for CPU tensors (tests without a GPU); "
        "returns the previous setting");
  m.def("cuda_emulation", &mlic::cuda_emulation, "whether CPU tensors go through the emulated CUDA back end");
  m.def("compiled_with_cuda", []() {
#ifdef MLIC_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
}
