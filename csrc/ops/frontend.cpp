// The ops' front end (declared in frontend.h): argument validation, the overflow checks
// of every size and index product the kernels form in int, and Caffe's pooling geometry
// on the host (output sizes, the SPP pyramid's levels), which fills the RoiArgs / PoolArgs
// the kernels receive. The per-cell rules (windows, RoI bins) are in device/*.cuh.
#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <string>

#include "frontend.h"

namespace mlic {

namespace {

constexpr int64_t kIntMax = std::numeric_limits<int>::max();

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << s;
  return o.str();
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

// The kernels index with int: every size, and every product of sizes they form, must fit.
void check_fits_int(int64_t v, const char* op, const char* what) {
  TORCH_CHECK_VALUE(v <= kIntMax, op, ": ", what, " is ", v, ", more than the kernels' limit of ", kIntMax,
                    " (2^31 - 1)");
}

// Features / pooling input [N, C, H, W]: H*W indexes a plane in int32 (the argmax).
void check_plane(int64_t H, int64_t W, const char* op) {
  check_fits_int(H * W, op, "the input plane's H*W");
}

// Read once, when the extension is loaded: the check is decided per process, not per call.
const bool kRoiValueDebugChecks = [] {
  const char* v = std::getenv("MLIC_CHECK_ROI_VALUES");
  return v != nullptr && v[0] != '\0' && std::string(v) != "0";
}();

}  // namespace

bool roi_value_debug_checks() { return kRoiValueDebugChecks; }

void check_roi_values(const Tensor& rois, int64_t N, double spatial_scale, const char* op) {
  if (rois.size(0) == 0) return;
  const Tensor r = rois.detach().to(at::kCPU, at::kDouble).contiguous();
  const auto a = r.accessor<double, 2>();
  for (int64_t k = 0; k < r.size(0); ++k) {
    for (int64_t j = 0; j < r.size(1); ++j)
      TORCH_CHECK_VALUE(std::isfinite(a[k][j]), op, ": `rois` row ", k, " contains NaN or infinite values");
    TORCH_CHECK_VALUE(a[k][0] > -1 && a[k][0] < static_cast<double>(N), op, ": `rois` row ", k,
                      " has batch index (column 0) ", a[k][0], ", out of range for features with N=", N);
    for (int j = 1; j < 5; ++j)
      TORCH_CHECK_VALUE(std::abs(a[k][j]) * std::abs(spatial_scale) < MLIC_ROI_COORD_LIMIT, op, ": `rois` row ", k,
                        " has coordinate ", a[k][j], "; times spatial_scale ", spatial_scale,
                        " the coordinates must stay below 2^29 in magnitude");
  }
}

namespace {

RoiArgs roi_levels(at::IntArrayRef hs, at::IntArrayRef ws, int64_t C, double spatial_scale, double score_scale,
                   double score_bias, const char* op, const char* hname, const char* wname) {
  TORCH_CHECK_VALUE(!hs.empty() && hs.size() == ws.size(), op, ": `", hname, "` and `", wname,
                    "` must be non-empty and of equal length, got ", hs.size(), " and ", ws.size());
  TORCH_CHECK_VALUE(hs.size() <= MLIC_MAX_LEVELS, op, ": at most ", MLIC_MAX_LEVELS, " levels, got ", hs.size());
  TORCH_CHECK_VALUE(std::isfinite(spatial_scale) && spatial_scale > 0, op,
                    ": `spatial_scale` must be a positive finite number, got ", spatial_scale);
  TORCH_CHECK_VALUE(std::isfinite(score_scale) && std::isfinite(score_bias), op,
                    ": `score_scale` and `score_bias` must be finite");
  RoiArgs a;
  a.spatial_scale = spatial_scale;
  a.score_scale = score_scale;
  a.score_bias = score_bias;
  a.levels.count = static_cast<int>(hs.size());
  int64_t cells = 0;
  for (size_t l = 0; l < hs.size(); ++l) {
    check_positive(hs[l], op, hname);
    check_positive(ws[l], op, wname);
    check_fits_int(hs[l] * ws[l], op, "a level's bins h*w");  // also bounds h and w
    a.levels.level[l] = RoiLevel{static_cast<int>(hs[l]), static_cast<int>(ws[l]), static_cast<int>(cells)};
    cells += hs[l] * ws[l];
    check_fits_int(C * cells, op, "the output cells per RoI (channels times the levels' bins)");
  }
  a.levels.cells = static_cast<int>(cells);
  return a;
}

void check_rois_shape(const Tensor& rois, const char* op) {
  TORCH_CHECK_VALUE(rois.dim() == 2 && (rois.size(1) == 5 || rois.size(1) == 6), op,
                    ": `rois` must be 2-D [K, 6] (batch, x1, y1, x2, y2, score) or [K, 5], got shape ",
                    shape_str(rois.sizes()));
}

}  // namespace

RoiArgs roi_forward_args(const Tensor& features, const Tensor& rois, at::IntArrayRef levels_h,
                         at::IntArrayRef levels_w, double spatial_scale, double score_scale, double score_bias,
                         const char* op, const char* hname, const char* wname) {
  TORCH_CHECK_VALUE(features.dim() == 4, op, ": `features` must be 4-D [N, C, H, W], got shape ",
                    shape_str(features.sizes()));
  check_rois_shape(rois, op);
  check_float(features, op, "features");
  check_same(features, rois, op, "features", "rois");
  for (int d = 0; d < 4; ++d)
    TORCH_CHECK_VALUE(features.size(d) > 0, op, ": `features` has an empty dimension, shape ",
                      shape_str(features.sizes()));
  check_fits_int(features.size(0), op, "the batch size N");
  check_plane(features.size(2), features.size(3), op);
  return roi_levels(levels_h, levels_w, features.size(1), spatial_scale, score_scale, score_bias, op, hname, wname);
}

RoiArgs roi_backward_args(const Tensor& grad, const Tensor& rois, const Tensor& argmax, at::IntArrayRef levels_h,
                          at::IntArrayRef levels_w, at::IntArrayRef in_shape, double spatial_scale,
                          double score_scale, double score_bias, const char* op) {
  for (int d = 0; d < 4; ++d) check_positive(in_shape[d], op, "batch, channels, height and width");
  check_fits_int(in_shape[0], op, "the batch size N");
  check_plane(in_shape[2], in_shape[3], op);
  check_rois_shape(rois, op);
  check_float(grad, op, "grad");
  check_same(grad, rois, op, "grad", "rois");
  RoiArgs a = roi_levels(levels_h, levels_w, in_shape[1], spatial_scale, score_scale, score_bias, op, "levels_h",
                         "levels_w");
  const int64_t want = rois.size(0) * in_shape[1] * a.levels.cells;
  TORCH_CHECK_VALUE(grad.numel() == want, op, ": `grad` must have K*C*S = ", want, " elements, got shape ",
                    shape_str(grad.sizes()));
  TORCH_CHECK_VALUE(argmax.scalar_type() == at::kInt && argmax.numel() == want && argmax.device() == grad.device(),
                    op, ": `argmax` must be the int32 argmax the forward returned (", want, " elements on ",
                    grad.device(), "), got ", argmax.scalar_type(), " of shape ", shape_str(argmax.sizes()), " on ",
                    argmax.device());
  return a;
}

// ---------------------------------------------------------------------------- Caffe's pooling geometry

namespace {

int pool_mode(c10::string_view mode, const char* op) {
  if (mode == "max" || mode == "MAX") return MLIC_POOL_MAX;
  if (mode == "ave" || mode == "AVE" || mode == "avg") return MLIC_POOL_AVE;
  TORCH_CHECK_VALUE(false, op, ": `mode` must be \"max\" or \"ave\", got \"", std::string(mode), "\"");
  return 0;
}

// Caffe's pooled size: ceil((in + 2p - k) / s) + 1, then, when the layer has any padding
// (either axis: Caffe tests pad_h || pad_w), drop a last window that starts in the padding.
int64_t caffe_pooled(int64_t in, int64_t k, int64_t s, int64_t p, bool any_pad) {
  const int64_t num = in + 2 * p - k;
  int64_t out = (num >= 0 ? (num + s - 1) / s : -((-num) / s)) + 1;  // integer ceil
  if (any_pad && (out - 1) * s >= in + p) --out;
  return out;
}

void add_level(PoolArgs& a, int64_t C, int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
               int64_t ph, int64_t pw, const char* op) {
  // The kernels form window bounds like oy * sh - ph + kh in int.
  constexpr int64_t kGeomMax = int64_t(1) << 29;
  TORCH_CHECK_VALUE(kh <= kGeomMax && kw <= kGeomMax && sh <= kGeomMax && sw <= kGeomMax && H <= kGeomMax &&
                        W <= kGeomMax,
                    op, ": kernel, stride and input sizes must stay below 2^29");
  check_fits_int(kh * kw, op, "the pooling window kh*kw");
  const bool any_pad = ph > 0 || pw > 0;
  const int64_t oh = caffe_pooled(H, kh, sh, ph, any_pad), ow = caffe_pooled(W, kw, sw, pw, any_pad);
  const int l = a.levels.count;
  a.levels.level[l] = PoolLevel{static_cast<int>(kh), static_cast<int>(kw), static_cast<int>(sh),
                                static_cast<int>(sw), static_cast<int>(ph), static_cast<int>(pw),
                                static_cast<int>(oh), static_cast<int>(ow), a.levels.cells};
  a.levels.count = l + 1;
  const int64_t cells = a.levels.cells + (oh > 0 && ow > 0 ? oh * ow : 0);
  check_fits_int(C * cells, op, "the output cells per image (channels times the levels' cells)");
  a.levels.cells = static_cast<int>(cells);
}

}  // namespace

PoolArgs spp_args(int64_t C, int64_t H, int64_t W, int64_t pyramid_height, c10::string_view mode, const char* op) {
  TORCH_CHECK_VALUE(pyramid_height >= 1 && pyramid_height <= MLIC_MAX_LEVELS, op, ": `pyramid_height` must be in [1, ",
                    MLIC_MAX_LEVELS, "], got ", pyramid_height);
  check_positive(H, op, "height");
  check_positive(W, op, "width");
  check_plane(H, W, op);
  PoolArgs a;
  a.levels.mode = pool_mode(mode, op);
  for (int64_t l = 0; l < pyramid_height; ++l) {
    const int64_t bins = int64_t(1) << l;
    const int64_t kh = (H + bins - 1) / bins, kw = (W + bins - 1) / bins;
    const int64_t ph = (kh * bins - H + 1) / 2, pw = (kw * bins - W + 1) / 2;
    TORCH_CHECK_VALUE(ph < kh && pw < kw, op, ": level ", l, " of the pyramid (", bins, "x", bins,
                      " bins) needs padding (", ph, ", ", pw, ") not smaller than its kernel (", kh, ", ", kw,
                      ") for input ", H, "x", W, "; Caffe's SPP refuses this input (use fewer levels)");
    add_level(a, C, H, W, kh, kw, kh, kw, ph, pw, op);
  }
  return a;
}

PoolArgs pool2d_args(int64_t C, int64_t H, int64_t W, at::IntArrayRef k, at::IntArrayRef s, at::IntArrayRef p,
                     c10::string_view mode, const char* op) {
  TORCH_CHECK_VALUE(k.size() == 2 && s.size() == 2 && p.size() == 2, op,
                    ": `kernel_size`, `stride` and `padding` must each have 2 values");
  for (int d = 0; d < 2; ++d) {
    check_positive(k[d], op, "kernel_size");
    check_positive(s[d], op, "stride");
    TORCH_CHECK_VALUE(p[d] >= 0 && p[d] < k[d], op, ": `padding` must be in [0, kernel_size), got ", p[d],
                      " for kernel ", k[d]);
  }
  check_positive(H, op, "height");
  check_positive(W, op, "width");
  check_plane(H, W, op);
  PoolArgs a;
  a.levels.mode = pool_mode(mode, op);
  add_level(a, C, H, W, k[0], k[1], s[0], s[1], p[0], p[1], op);
  // Caffe accepts an input smaller than the kernel (one clipped window) but not an empty output.
  const PoolLevel& lv = a.levels.level[0];
  TORCH_CHECK_VALUE(lv.oh >= 1 && lv.ow >= 1, op, ": input ", H, "x", W, " with kernel ", k[0], "x", k[1],
                    ", stride ", s[0], "x", s[1], " and padding ", p[0], "x", p[1], " gives an empty output");
  return a;
}

// ---------------------------------------------------------------------------- pooling and two-stream checks

void check_pool_input(const Tensor& x, const char* op) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": `x` must be 4-D [N, C, H, W], got shape ", shape_str(x.sizes()));
  check_float(x, op, "x");
  for (int d = 0; d < 4; ++d)
    TORCH_CHECK_VALUE(x.size(d) > 0, op, ": `x` has an empty dimension, shape ", shape_str(x.sizes()));
}

void check_pool_backward(const Tensor& grad, const Tensor& argmax, const PoolArgs& a, at::IntArrayRef in_shape,
                         const char* op) {
  for (int d = 0; d < 4; ++d) check_positive(in_shape[d], op, "batch, channels, height and width");
  check_float(grad, op, "grad");
  const int64_t row = in_shape[1] * a.levels.cells;
  check_fits_int(row, op, "the output cells per image (channels times the levels' cells)");
  const int64_t want = in_shape[0] * row;
  TORCH_CHECK_VALUE(grad.numel() == want, op, ": `grad` must have N*C*S = ", want, " elements, got shape ",
                    shape_str(grad.sizes()));
  if (a.levels.mode == MLIC_POOL_MAX) {
    TORCH_CHECK_VALUE(argmax.scalar_type() == at::kInt && argmax.numel() == want && argmax.device() == grad.device(),
                      op, ": `argmax` must be the int32 argmax the forward returned (", want, " elements on ",
                      grad.device(), "), got ", argmax.scalar_type(), " of shape ", shape_str(argmax.sizes()));
  }
}

void check_two_stream(const Tensor& cls, const Tensor& det, const char* op) {
  TORCH_CHECK_VALUE(cls.dim() == 3, op, ": `cls_logits` must be 3-D [N, R, C], got shape ", shape_str(cls.sizes()));
  TORCH_CHECK_VALUE(det.dim() == 3, op, ": `det_logits` must be 3-D [N, R, C], got shape ", shape_str(det.sizes()));
  TORCH_CHECK_VALUE(cls.sizes().equals(det.sizes()), op,
                    ": `cls_logits` and `det_logits` must have the same shape, got ", shape_str(cls.sizes()),
                    " and ", shape_str(det.sizes()));
  check_float(cls, op, "cls_logits");
  check_same(cls, det, op, "cls_logits", "det_logits");
  TORCH_CHECK_VALUE(cls.size(1) > 0, op,
                    ": `cls_logits`/`det_logits` need at least one region (R, dim 1), got shape ",
                    shape_str(cls.sizes()));
  TORCH_CHECK_VALUE(cls.size(2) > 0, op, ": `cls_logits`/`det_logits` need at least one class (C, dim 2), got shape ",
                    shape_str(cls.sizes()));
  check_fits_int(cls.size(1) * cls.size(2), op, "an image's R*C");
}

void check_two_stream_backward(const Tensor& g_image, const Tensor& g_region, const Tensor& pc, const Tensor& pd,
                               const char* op) {
  check_two_stream(pc, pd, op);
  const int64_t N = pc.size(0), C = pc.size(2);
  if (g_image.defined()) {
    TORCH_CHECK_VALUE(g_image.sizes().equals({N, C}), op, ": `grad_image` must have shape [", N, ", ", C, "], got ",
                      shape_str(g_image.sizes()));
    check_same(g_image, pc, op, "grad_image", "cls_prob");
  }
  if (g_region.defined()) {
    TORCH_CHECK_VALUE(g_region.sizes().equals(pc.sizes()), op, ": `grad_region` must have shape ",
                      shape_str(pc.sizes()), ", got ", shape_str(g_region.sizes()));
    check_same(g_region, pc, op, "grad_region", "cls_prob");
  }
}

}  // namespace mlic
