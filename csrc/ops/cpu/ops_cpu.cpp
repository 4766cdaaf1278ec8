// CPU back end: the per-element math comes from the shared device headers; only the
// loops (at::parallel_for over independent outputs, so results never depend on the
// thread count) are written here.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../device/pool.cuh"
#include "../device/roi_pool.cuh"
#include "../ops.h"

namespace mlic {

#define MLIC_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

namespace {
template <typename T> at::ScalarType acc_dtype() { return c10::CppTypeToScalarType<typename Acc<T>::type>::value; }
}  // namespace

std::tuple<Tensor, Tensor> roi_forward_cpu(const Tensor& feat_, const Tensor& rois_, const RoiArgs& a) {
  const Tensor feat = feat_.contiguous(), rois = rois_.contiguous();
  const int64_t K = rois.size(0);
  const int C = feat.size(1), H = feat.size(2), W = feat.size(3);
  Tensor out = at::empty({K, C * a.S}, feat.options());
  Tensor argmax = at::empty({K, C * a.S}, feat.options().dtype(at::kInt));
  if (K == 0) return {out, argmax};
  const int cols = rois.size(1), nlev = a.lv.size() / 3;
  const int* lv = a.lv.data();
  MLIC_DISPATCH(feat.scalar_type(), "mlic_roi_forward_cpu", [&] {
    using A = typename Acc<scalar_t>::type;
    const scalar_t* f = feat.data_ptr<scalar_t>();
    const scalar_t* r = rois.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    int* am = argmax.data_ptr<int>();
    const A ss = a.spatial_scale, sc = a.score_scale, sb = a.score_bias;
    at::parallel_for(0, K, 8, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const RoiBox<A> box = roi_box<scalar_t, A>(r + k * cols, cols, ss, sc, sb);
        const int64_t row = k * C * a.S;
        for (int l = 0; l < nlev; ++l) {
          const int hl = lv[3 * l], wl = lv[3 * l + 1], off = lv[3 * l + 2];
          for (int ph = 0; ph < hl; ++ph) {
            int hs, he;
            roi_bin<A>(ph, hl, box.h, box.y1, H, hs, he);
            for (int pw = 0; pw < wl; ++pw) {
              int ws, we;
              roi_bin<A>(pw, wl, box.w, box.x1, W, ws, we);
              for (int c = 0; c < C; ++c) {
                A val;
                int idx;
                bin_max<scalar_t, A>(f + (static_cast<int64_t>(box.b) * C + c) * H * W, W, hs, he, ws, we, val, idx);
                const int64_t i = row + static_cast<int64_t>(C) * off + c * hl * wl + ph * wl + pw;
                o[i] = static_cast<scalar_t>(val * box.factor);
                am[i] = idx;
              }
            }
          }
        }
      }
    });
  });
  return {out, argmax};
}

// Parallel over channels: each thread owns whole planes, and within a plane the
// contributions are summed in RoI, level, cell order (deterministic).
Tensor roi_backward_cpu(const Tensor& grad_, const Tensor& rois_, const Tensor& argmax_, const RoiArgs& a,
                        at::IntArrayRef in_shape) {
  const Tensor grad = grad_.contiguous(), rois = rois_.contiguous(), argmax = argmax_.contiguous();
  const int64_t K = rois.size(0);
  const int N = in_shape[0], C = in_shape[1], H = in_shape[2], W = in_shape[3];
  Tensor result;
  MLIC_DISPATCH(grad.scalar_type(), "mlic_roi_backward_cpu", [&] {
    using A = typename Acc<scalar_t>::type;
    Tensor acc = at::zeros(in_shape, grad.options().dtype(acc_dtype<scalar_t>()));
    if (K > 0) {
      const scalar_t* g = grad.data_ptr<scalar_t>();
      const scalar_t* r = rois.data_ptr<scalar_t>();
      const int* am = argmax.data_ptr<int>();
      A* gi = acc.data_ptr<A>();
      const int cols = rois.size(1), nlev = a.lv.size() / 3;
      const int* lv = a.lv.data();
      const A sc = a.score_scale, sb = a.score_bias;
      at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t k = 0; k < K; ++k) {
            const scalar_t* roi = r + k * cols;
            const int b = static_cast<int>(static_cast<A>(roi[0]));
            if (b < 0 || b >= N) continue;  // validated by the caller; never write outside
            const A factor = sc * (cols >= 6 ? static_cast<A>(roi[5]) : static_cast<A>(1)) + sb;
            A* plane = gi + (static_cast<int64_t>(b) * C + c) * H * W;
            for (int l = 0; l < nlev; ++l) {
              const int cells = lv[3 * l] * lv[3 * l + 1];
              const int64_t base = k * C * a.S + static_cast<int64_t>(C) * lv[3 * l + 2] + c * cells;
              for (int q = 0; q < cells; ++q) {
                const int idx = am[base + q];
                if (idx >= 0) plane[idx] += static_cast<A>(g[base + q]) * factor;
              }
            }
          }
      });
    }
    result = acc.scalar_type() == grad.scalar_type() ? acc : acc.to(grad.scalar_type());
  });
  return result;
}

namespace {

// kGroup planes of one level at a time: each plane's window is reduced in pool_cell's
// order (so the results are the same bits), the planes interleaved so that their
// independent chains of adds or compares overlap instead of waiting on each other.
constexpr int kGroup = 4;

template <typename T, typename A>
void pool_level_group(const T* const* planes, int H, int W, const int* lp, int mode, T* const* outs,
                      int* const* ams) {
  const int oh = lp[6], ow = lp[7];
  for (int oy = 0; oy < oh; ++oy)
    for (int ox = 0; ox < ow; ++ox) {
      int hs, he, ws, we;
      const int pool_size = pool_window(H, W, lp, oy, ox, hs, he, ws, we);
      const int cell = oy * ow + ox;
      if (mode == MLIC_POOL_MAX) {
        A m[kGroup];
        int mi[kGroup];
        for (int k = 0; k < kGroup; ++k) m[k] = lowest<A>(), mi[k] = -1;
        for (int h = hs; h < he; ++h)
          for (int w = ws; w < we; ++w)
            for (int k = 0; k < kGroup; ++k) {
              const A v = static_cast<A>(planes[k][h * W + w]);
              if (v > m[k]) m[k] = v, mi[k] = h * W + w;
            }
        for (int k = 0; k < kGroup; ++k) outs[k][cell] = static_cast<T>(m[k]), ams[k][cell] = mi[k];
      } else {
        A s[kGroup] = {};
        for (int h = hs; h < he; ++h)
          for (int w = ws; w < we; ++w)
            for (int k = 0; k < kGroup; ++k) s[k] += static_cast<A>(planes[k][h * W + w]);
        for (int k = 0; k < kGroup; ++k) outs[k][cell] = static_cast<T>(s[k] / static_cast<A>(pool_size));
      }
    }
}

}  // namespace

std::tuple<Tensor, Tensor> pool_forward_cpu(const Tensor& x_, const PoolArgs& a) {
  const Tensor x = x_.contiguous();
  const int64_t N = x.size(0);
  const int C = x.size(1), H = x.size(2), W = x.size(3);
  Tensor out = at::empty({N, C * a.S}, x.options());
  Tensor argmax = at::empty({a.mode == 0 ? N : 0, a.mode == 0 ? C * a.S : 0}, x.options().dtype(at::kInt));
  const int nlev = a.lp.size() / MLIC_LP;
  MLIC_DISPATCH(x.scalar_type(), "mlic_pool_forward_cpu", [&] {
    using A = typename Acc<scalar_t>::type;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    int* am = a.mode == 0 ? argmax.data_ptr<int>() : nullptr;
    // Offset of plane p's cells of level l in `out` (and `argmax`).
    auto cells_at = [&](int64_t p, const int* lp) {
      const int64_t n = p / C;
      const int c = static_cast<int>(p - n * C);
      return n * C * a.S + static_cast<int64_t>(C) * lp[8] + static_cast<int64_t>(c) * lp[6] * lp[7];
    };
    at::parallel_for(0, N * C, kGroup, [&](int64_t p0, int64_t p1) {
      int dummy[1];
      int64_t p = p0;
      for (; p + kGroup <= p1; p += kGroup) {
        const scalar_t* planes[kGroup];
        for (int k = 0; k < kGroup; ++k) planes[k] = xp + (p + k) * H * W;
        for (int l = 0; l < nlev; ++l) {
          const int* lp = a.lp.data() + MLIC_LP * l;
          scalar_t* outs[kGroup];
          int* ams[kGroup];
          for (int k = 0; k < kGroup; ++k) {
            const int64_t off = cells_at(p + k, lp);
            outs[k] = o + off;
            ams[k] = am ? am + off : dummy;
          }
          pool_level_group<scalar_t, A>(planes, H, W, lp, a.mode, outs, ams);
        }
      }
      for (; p < p1; ++p) {  // the last planes of the chunk, one at a time
        const scalar_t* plane = xp + p * H * W;
        for (int l = 0; l < nlev; ++l) {
          const int* lp = a.lp.data() + MLIC_LP * l;
          const int64_t base = cells_at(p, lp);
          for (int oy = 0; oy < lp[6]; ++oy)
            for (int ox = 0; ox < lp[7]; ++ox) {
              A val;
              int idx;
              pool_cell<scalar_t, A>(plane, H, W, lp, oy, ox, a.mode, val, idx);
              o[base + oy * lp[7] + ox] = static_cast<scalar_t>(val);
              if (am) am[base + oy * lp[7] + ox] = idx;
            }
        }
      }
    });
  });
  return {out, argmax};
}

// Scatter per plane (each thread owns whole planes): every pixel receives its terms in
// level order and row-major cell order, the order of the GPU's gather (pool_pixel_grad).
Tensor pool_backward_cpu(const Tensor& grad_, const Tensor& argmax_, const PoolArgs& a, at::IntArrayRef in_shape) {
  const Tensor grad = grad_.contiguous(), argmax = argmax_.contiguous();
  const int C = in_shape[1], H = in_shape[2], W = in_shape[3];
  Tensor gin = at::empty(in_shape, grad.options());
  const int nlev = a.lp.size() / MLIC_LP;
  const int64_t row = static_cast<int64_t>(C) * a.S;
  MLIC_DISPATCH(grad.scalar_type(), "mlic_pool_backward_cpu", [&] {
    using A = typename Acc<scalar_t>::type;
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const int* am = a.mode == 0 ? argmax.data_ptr<int>() : nullptr;
    scalar_t* o = gin.data_ptr<scalar_t>();
    at::parallel_for(0, gin.size(0) * C, 4, [&](int64_t p0, int64_t p1) {
      std::vector<A> buf(static_cast<size_t>(H) * W);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n = p / C;
        const int c = p - n * C;
        std::fill(buf.begin(), buf.end(), static_cast<A>(0));
        A* __restrict__ b = buf.data();
        for (int l = 0; l < nlev; ++l) {
          const int* lp = a.lp.data() + MLIC_LP * l;
          const int oh = lp[6], ow = lp[7];
          const int64_t base = n * row + static_cast<int64_t>(C) * lp[8] + static_cast<int64_t>(c) * oh * ow;
          if (a.mode == 0) {
            for (int q = 0; q < oh * ow; ++q)
              if (am[base + q] >= 0) b[am[base + q]] += static_cast<A>(g[base + q]);
            continue;
          }
          for (int oy = 0; oy < oh; ++oy)
            for (int ox = 0; ox < ow; ++ox) {
              int hs, he, ws, we;
              const int pool_size = pool_window(H, W, lp, oy, ox, hs, he, ws, we);
              const A v = static_cast<A>(g[base + oy * ow + ox]) / static_cast<A>(pool_size);
              for (int y = hs; y < he; ++y) {
                A* __restrict__ r = b + static_cast<int64_t>(y) * W;
                for (int x = ws; x < we; ++x) r[x] += v;
              }
            }
        }
        scalar_t* out = o + p * H * W;
        for (int64_t q = 0; q < static_cast<int64_t>(H) * W; ++q) out[q] = static_cast<scalar_t>(buf[q]);
      }
    });
  });
  return gin;
}

}  // namespace mlic
