// CPU back end: the per-element math comes from the shared device headers; only the
// loops (at::parallel_for over independent outputs, so results never depend on the
// thread count) are written here.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../device/pool.cuh"
#include "../device/roi_pool.cuh"
#include "../device/two_stream.cuh"
#include <type_traits>
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
    at::parallel_for(0, N * C, 4, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n = p / C;
        const int c = p - n * C;
        const scalar_t* plane = xp + p * H * W;
        for (int l = 0; l < nlev; ++l) {
          const int* lp = a.lp.data() + MLIC_LP * l;
          const int oh = lp[6], ow = lp[7];
          const int64_t base = n * C * a.S + static_cast<int64_t>(C) * lp[8] + c * oh * ow;
          for (int oy = 0; oy < oh; ++oy)
            for (int ox = 0; ox < ow; ++ox) {
              A val;
              int idx;
              pool_cell<scalar_t, A>(plane, H, W, lp, oy, ox, a.mode, val, idx);
              o[base + oy * ow + ox] = static_cast<scalar_t>(val);
              if (am) am[base + oy * ow + ox] = idx;
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
        for (int l = 0; l < nlev; ++l) {
          const int* lp = a.lp.data() + MLIC_LP * l;
          const int kh = lp[0], kw = lp[1], sh = lp[2], sw = lp[3], ph = lp[4], pw = lp[5], oh = lp[6], ow = lp[7];
          const int64_t base = n * row + static_cast<int64_t>(C) * lp[8] + static_cast<int64_t>(c) * oh * ow;
          for (int oy = 0; oy < oh; ++oy)
            for (int ox = 0; ox < ow; ++ox) {
              const int64_t i = base + oy * ow + ox;
              if (a.mode == 0) {
                if (am[i] >= 0) buf[am[i]] += static_cast<A>(g[i]);
                continue;
              }
              int hs = oy * sh - ph, ws = ox * sw - pw;
              int he = std::min(hs + kh, H + ph), we = std::min(ws + kw, W + pw);
              const A v = static_cast<A>(g[i]) / static_cast<A>((he - hs) * (we - ws));
              hs = std::max(hs, 0);
              ws = std::max(ws, 0);
              he = std::min(he, H);
              we = std::min(we, W);
              for (int y = hs; y < he; ++y)
                for (int x = ws; x < we; ++x) buf[y * W + x] += v;
            }
        }
        scalar_t* out = o + p * H * W;
        for (int64_t q = 0; q < static_cast<int64_t>(H) * W; ++q) out[q] = static_cast<scalar_t>(buf[q]);
      }
    });
  });
  return gin;
}

// Row-major passes only (the column softmax keeps per-column running statistics) and
// the exponentials through ATen's vectorised exp: memory order matters more on a CPU
// than the GPU kernel's one-thread-per-column layout.
std::tuple<Tensor, Tensor, Tensor, Tensor> two_stream_forward_cpu(const Tensor& cls_, const Tensor& det_) {
  const Tensor cls = cls_.contiguous(), det = det_.contiguous();
  const int64_t N = cls.size(0);
  const int R = cls.size(1), C = cls.size(2);
  Tensor image = at::empty({N, C}, cls.options());
  Tensor region = at::empty_like(cls), pc = at::empty_like(cls), pd = at::empty_like(cls);
  if (N == 0) return {image, region, pc, pd};
  MLIC_DISPATCH(cls.scalar_type(), "mlic_two_stream_forward_cpu", [&] {
    using A = typename Acc<scalar_t>::type;
    // Shifted logits, in A so that exp sees exactly x - max.
    Tensor ec = at::empty(cls.sizes(), cls.options().dtype(acc_dtype<scalar_t>()));
    Tensor ed = at::empty_like(ec);
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      std::vector<A> colmax_v(C);
      A* __restrict__ colmax = colmax_v.data();
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t o = n * R * C;
        const scalar_t* __restrict__ x = cls.data_ptr<scalar_t>() + o;
        const scalar_t* __restrict__ d = det.data_ptr<scalar_t>() + o;
        A* __restrict__ sx = ec.data_ptr<A>() + o;
        A* __restrict__ sd = ed.data_ptr<A>() + o;
        for (int c = 0; c < C; ++c) colmax[c] = static_cast<A>(d[c]);
        for (int r = 0; r < R; ++r) {
          const scalar_t* __restrict__ xr = x + r * C;
          const scalar_t* __restrict__ dr = d + r * C;
          A m = static_cast<A>(xr[0]);
          for (int c = 1; c < C; ++c) m = static_cast<A>(xr[c]) > m ? static_cast<A>(xr[c]) : m;
          for (int c = 0; c < C; ++c) {
            sx[r * C + c] = static_cast<A>(xr[c]) - m;
            colmax[c] = static_cast<A>(dr[c]) > colmax[c] ? static_cast<A>(dr[c]) : colmax[c];
          }
        }
        for (int r = 0; r < R; ++r)
          for (int c = 0; c < C; ++c) sd[r * C + c] = static_cast<A>(d[r * C + c]) - colmax[c];
      }
    });
    ec.exp_();
    ed.exp_();
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      std::vector<A> colsum_v(C), img_v(C);
      A* __restrict__ colsum = colsum_v.data();
      A* __restrict__ img = img_v.data();
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t o = n * R * C;
        const A* __restrict__ ex = ec.data_ptr<A>() + o;
        const A* __restrict__ ey = ed.data_ptr<A>() + o;
        for (int c = 0; c < C; ++c) colsum[c] = 0, img[c] = 0;
        for (int r = 0; r < R; ++r)
          for (int c = 0; c < C; ++c) colsum[c] += ey[r * C + c];
        scalar_t* __restrict__ a = pc.data_ptr<scalar_t>() + o;
        scalar_t* __restrict__ b = pd.data_ptr<scalar_t>() + o;
        scalar_t* __restrict__ reg = region.data_ptr<scalar_t>() + o;
        for (int r = 0; r < R; ++r) {
          A rowsum = 0;
          for (int c = 0; c < C; ++c) rowsum += ex[r * C + c];
          for (int c = 0; c < C; ++c) {
            const A p = ex[r * C + c] / rowsum, q = ey[r * C + c] / colsum[c];
            const scalar_t pq = static_cast<scalar_t>(p * q);
            a[r * C + c] = static_cast<scalar_t>(p);
            b[r * C + c] = static_cast<scalar_t>(q);
            reg[r * C + c] = pq;
            img[c] += static_cast<A>(pq);
          }
        }
        scalar_t* im = image.data_ptr<scalar_t>() + n * C;
        for (int c = 0; c < C; ++c) im[c] = static_cast<scalar_t>(img[c]);
      }
    });
  });
  return {image, region, pc, pd};
}

std::tuple<Tensor, Tensor> two_stream_backward_cpu(const Tensor& g_image_, const Tensor& g_region_, const Tensor& pc_,
                                                   const Tensor& pd_) {
  const Tensor pc = pc_.contiguous(), pd = pd_.contiguous();
  const Tensor gi = g_image_.defined() ? g_image_.contiguous() : g_image_;
  const Tensor gr = g_region_.defined() ? g_region_.contiguous() : g_region_;
  const int64_t N = pc.size(0);
  const int R = pc.size(1), C = pc.size(2);
  Tensor d_cls = at::empty_like(pc), d_det = at::empty_like(pc);
  MLIC_DISPATCH(pc.scalar_type(), "mlic_two_stream_backward_cpu", [&] {
    using A = typename Acc<scalar_t>::type;
    // The arithmetic of two_stream_dot / two_stream_grad_element, in the same order, without
    // their per-element index divisions, and with the choice of upstream gradients made once
    // per call (branch-free inner loops vectorise).
    auto run = [&](auto has_image, auto has_region) {
      constexpr bool HI = decltype(has_image)::value, HR = decltype(has_region)::value;
      at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
        std::vector<A> ws_v(R + C);
        A* __restrict__ ws = ws_v.data();
        for (int64_t n = n0; n < n1; ++n) {
          const int64_t o = n * R * C;
          const scalar_t* __restrict__ a = pc.data_ptr<scalar_t>() + o;
          const scalar_t* __restrict__ b = pd.data_ptr<scalar_t>() + o;
          const scalar_t* __restrict__ g1 = HI ? gi.data_ptr<scalar_t>() + n * C : nullptr;
          const scalar_t* __restrict__ g2 = HR ? gr.data_ptr<scalar_t>() + o : nullptr;
          std::fill(ws_v.begin(), ws_v.end(), static_cast<A>(0));
          scalar_t* __restrict__ dc = d_cls.data_ptr<scalar_t>() + o;
          scalar_t* __restrict__ dd = d_det.data_ptr<scalar_t>() + o;
          A* __restrict__ colws = ws + R;
          for (int r = 0; r < R; ++r) {
            A rowdot = 0;
            for (int c = 0; c < C; ++c) {
              const int e = r * C + c;
              const A g = (HI ? static_cast<A>(g1[c]) : A(0)) + (HR ? static_cast<A>(g2[e]) : A(0));
              const A t = g * static_cast<A>(b[e]) * static_cast<A>(a[e]);
              rowdot += t;
              colws[c] += t;
            }
            ws[r] = rowdot;
          }
          for (int r = 0; r < R; ++r) {
            const A rw = ws[r];
            for (int c = 0; c < C; ++c) {
              const int e = r * C + c;
              const A g = (HI ? static_cast<A>(g1[c]) : A(0)) + (HR ? static_cast<A>(g2[e]) : A(0));
              const A pa = static_cast<A>(a[e]), pb = static_cast<A>(b[e]);
              dc[e] = static_cast<scalar_t>(pa * (g * pb - rw));
              dd[e] = static_cast<scalar_t>(pb * (g * pa - colws[c]));
            }
          }
        }
      });
    };
    using T_ = std::true_type;
    using F_ = std::false_type;
    if (gi.defined() && gr.defined()) run(T_{}, T_{});
    else if (gi.defined()) run(T_{}, F_{});
    else if (gr.defined()) run(F_{}, T_{});
    else run(F_{}, F_{});
  });
  return {d_cls, d_det};
}

}  // namespace mlic
