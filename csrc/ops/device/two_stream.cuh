// WSDDN's two-stream head: softmax over classes (cls), softmax over regions (det),
// their product per region, summed over regions. Inputs [N, R, C] contiguous.
// Per image a workspace of 2R + 2C values of type A holds the row/column statistics.
#pragma once
#include "common.cuh"

namespace mlic {

// max and sum of exp(v - max) over `count` values spaced by `stride`, in index order.
template <typename T, typename A>
MLIC_HD void softmax_stats(const T* v, int count, int stride, A& mx, A& sum) {
  A m = static_cast<A>(v[0]);
  for (int i = 1; i < count; ++i) {
    const A x = static_cast<A>(v[i * stride]);
    if (x > m) m = x;
  }
  A s = static_cast<A>(0);
  for (int i = 0; i < count; ++i) s += c_exp(static_cast<A>(v[i * stride]) - m);
  mx = m;
  sum = s;
}

template <typename T, typename A>
MLIC_HD void two_stream_element(const T* cls, const T* det, const A* ws, int R, int C, int e, T* cls_prob,
                                T* det_prob, T* region) {
  const int r = e / C, c = e - r * C;
  const A pc = c_exp(static_cast<A>(cls[e]) - ws[2 * r]) / ws[2 * r + 1];
  const A pd = c_exp(static_cast<A>(det[e]) - ws[2 * R + 2 * c]) / ws[2 * R + 2 * c + 1];
  cls_prob[e] = static_cast<T>(pc);
  det_prob[e] = static_cast<T>(pd);
  region[e] = static_cast<T>(pc * pd);
}

template <typename T, typename A>
MLIC_HD A two_stream_upstream(const T* g_image, const T* g_region, int C, int e) {
  A g = static_cast<A>(0);
  if (g_image) g += static_cast<A>(g_image[e % C]);
  if (g_region) g += static_cast<A>(g_region[e]);
  return g;
}

// ws[r] = sum_c G*pd*pc over row r; ws[R + c] = sum_r G*pc*pd over column c.
template <typename T, typename A>
MLIC_HD A two_stream_dot(const T* g_image, const T* g_region, const T* pc, const T* pd, int first, int count,
                         int stride, int C) {
  A s = static_cast<A>(0);
  for (int i = 0; i < count; ++i) {
    const int e = first + i * stride;
    s += two_stream_upstream<T, A>(g_image, g_region, C, e) * static_cast<A>(pd[e]) * static_cast<A>(pc[e]);
  }
  return s;
}

template <typename T, typename A>
MLIC_HD void two_stream_grad_element(const T* g_image, const T* g_region, const T* pc, const T* pd, const A* ws,
                                     int R, int C, int e, T* d_cls, T* d_det) {
  const int r = e / C, c = e - r * C;
  const A g = two_stream_upstream<T, A>(g_image, g_region, C, e);
  const A a = static_cast<A>(pc[e]), b = static_cast<A>(pd[e]);
  d_cls[e] = static_cast<T>(a * (g * b - ws[r]));
  d_det[e] = static_cast<T>(b * (g * a - ws[R + c]));
}

#ifdef MLIC_DEVICE_CODE

#define MLIC_TS_MAX_THREADS 512

// Per-column reductions over the R rows of one image use the whole block: with
// P = blockDim/C groups (when C <= blockDim/2), thread (g, c) reduces rows g, g+P, ...
// of column c into part[g*C + c]; the P partials are then combined in group order, so
// the result does not depend on scheduling. Otherwise one thread per column.
MLIC_HD int column_groups(int R, int C, int threads) {
  if (threads > MLIC_TS_MAX_THREADS || 2 * C > threads) return 1;
  const int p = threads / C;
  return p < R ? p : R;
}

// out[c * stride] = sum over rows r of f(r, c), the block's threads in column groups as
// above (one thread a column: rows in order). Ends with a barrier.
template <typename A, typename F>
MLIC_D void column_sums(int R, int C, A* part, F f, A* out, int stride) {
  const int P = column_groups(R, C, blockDim.x);
  const int t = threadIdx.x, g = t / C, c = t - g * C;
  if (P == 1) {
    for (int cc = t; cc < C; cc += blockDim.x) {
      A s = static_cast<A>(0);
      for (int r = 0; r < R; ++r) s += f(r, cc);
      out[cc * stride] = s;
    }
    __syncthreads();
    return;
  }
  if (g < P) {
    A s = static_cast<A>(0);
    for (int r = g; r < R; r += P) s += f(r, c);
    part[t] = s;
  }
  __syncthreads();
  if (t < C) {
    A s = part[t];
    for (int q = 1; q < P; ++q) s += part[q * C + t];
    out[t * stride] = s;
  }
  __syncthreads();
}

// Column max and sum of exp(v - max) of det into w[2c], w[2c+1] (as softmax_stats: the
// max by '>' from the first row). Ends with a barrier.
template <typename T, typename A>
MLIC_D void column_softmax_stats(const T* det, int R, int C, A* w, A* part) {
  const int P = column_groups(R, C, blockDim.x);
  const int t = threadIdx.x, g = t / C, c = t - g * C;
  if (P == 1) {
    for (int cc = t; cc < C; cc += blockDim.x) {
      A m = static_cast<A>(det[cc]);
      for (int r = 1; r < R; ++r) {
        const A x = static_cast<A>(det[r * C + cc]);
        if (x > m) m = x;
      }
      w[2 * cc] = m;
    }
  } else {
    if (g < P) {
      A m = static_cast<A>(det[g * C + c]);
      for (int r = g + P; r < R; r += P) {
        const A x = static_cast<A>(det[r * C + c]);
        if (x > m) m = x;
      }
      part[t] = m;
    }
    __syncthreads();
    if (t < C) {
      A m = part[t];
      for (int q = 1; q < P; ++q)
        if (part[q * C + t] > m) m = part[q * C + t];
      w[2 * t] = m;
    }
  }
  __syncthreads();
  column_sums<A>(R, C, part, [det, w, C](int r, int cc) {
    return c_exp(static_cast<A>(det[r * C + cc]) - w[2 * cc]);
  }, w + 1, 2);
}

// One block per image.
template <typename T, typename A>
__global__ void two_stream_forward_kernel(const T* __restrict__ cls, const T* __restrict__ det, int R, int C,
                                          A* __restrict__ ws, T* __restrict__ image, T* __restrict__ region,
                                          T* __restrict__ cls_prob, T* __restrict__ det_prob) {
  __shared__ A part[MLIC_TS_MAX_THREADS];
  const mlic_int64 n = blockIdx.x;
  const mlic_int64 o = n * R * C;
  A* w = ws + n * (2 * R + 2 * C);
  for (int r = threadIdx.x; r < R; r += blockDim.x) softmax_stats<T, A>(cls + o + r * C, C, 1, w[2 * r], w[2 * r + 1]);
  column_softmax_stats<T, A>(det + o, R, C, w + 2 * R, part);  // ends with a barrier
  for (int e = threadIdx.x; e < R * C; e += blockDim.x)
    two_stream_element<T, A>(cls + o, det + o, w, R, C, e, cls_prob + o, det_prob + o, region + o);
  __syncthreads();
  // Image scores go through w[2R..2R+C) (the column stats are no longer needed).
  const T* reg = region + o;
  A* sums = w + 2 * R;
  column_sums<A>(R, C, part, [reg, C](int r, int c) { return static_cast<A>(reg[r * C + c]); }, sums, 1);
  for (int c = threadIdx.x; c < C; c += blockDim.x) image[n * C + c] = static_cast<T>(sums[c]);
}

template <typename T, typename A>
__global__ void two_stream_backward_kernel(const T* __restrict__ g_image, const T* __restrict__ g_region,
                                           const T* __restrict__ pc, const T* __restrict__ pd, int R, int C,
                                           A* __restrict__ ws, T* __restrict__ d_cls, T* __restrict__ d_det) {
  __shared__ A part[MLIC_TS_MAX_THREADS];
  const mlic_int64 n = blockIdx.x;
  const mlic_int64 o = n * R * C;
  A* w = ws + n * (R + C);
  const T* gi = g_image ? g_image + n * C : g_image;
  const T* gr = g_region ? g_region + o : g_region;
  const T* a = pc + o;
  const T* b = pd + o;
  for (int r = threadIdx.x; r < R; r += blockDim.x) w[r] = two_stream_dot<T, A>(gi, gr, a, b, r * C, C, 1, C);
  column_sums<A>(R, C, part, [gi, gr, a, b, C](int r, int c) {
    const int e = r * C + c;
    return two_stream_upstream<T, A>(gi, gr, C, e) * static_cast<A>(b[e]) * static_cast<A>(a[e]);
  }, w + R, 1);
  for (int e = threadIdx.x; e < R * C; e += blockDim.x)
    two_stream_grad_element<T, A>(gi, gr, a, b, w, R, C, e, d_cls + o, d_det + o);
}

#endif  // MLIC_DEVICE_CODE

}  // namespace mlic
