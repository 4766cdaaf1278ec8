// WSDDN two-stream head on the CPU. Same formulas as device/two_stream.cuh, laid out for
// a CPU: row-major passes only (the softmax over regions keeps per-column running
// statistics), reductions over a row through vec::lane_sum / lane_max, exp through
// vec::exp_f32, and the float loops compiled once per x86-64 level (AVX-512, AVX2 + FMA,
// baseline) and chosen at run time. Images are independent and each is computed by one
// thread, so results do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <vector>

#include "../ops.h"
#include "vec_math.h"

namespace mlic {
namespace {

// Below this many elements per chunk of images the loop stays on the calling thread.
constexpr int64_t kGrainElements = 32768;

int64_t image_grain(int64_t per_image) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, per_image)); }

// One image. p and q receive the class and region probabilities in A; for T == A they are
// the cls_prob / det_prob outputs themselves. ws holds 3C values of A.
template <typename T, typename A, bool kFma>
MLIC_ALWAYS_INLINE void forward_image(const T* __restrict__ x, const T* __restrict__ d, int R, int C,
                                      A* __restrict__ p, A* __restrict__ q, T* __restrict__ region,
                                      T* __restrict__ image, A* __restrict__ ws) {
  A* __restrict__ colmax = ws;
  A* __restrict__ colsum = ws + C;
  A* __restrict__ img = ws + 2 * C;
  for (int c = 0; c < C; ++c) colmax[c] = static_cast<A>(d[c]), colsum[c] = A(0), img[c] = A(0);
  for (int r = 0; r < R; ++r) {  // softmax over classes; column max of det
    const T* __restrict__ xr = x + static_cast<int64_t>(r) * C;
    const T* __restrict__ dr = d + static_cast<int64_t>(r) * C;
    A* __restrict__ pr = p + static_cast<int64_t>(r) * C;
    const A m = vec::lane_max<A>(xr, C);
    for (int c = 0; c < C; ++c) pr[c] = vec::fast_exp<kFma>(static_cast<A>(xr[c]) - m);
    const A inv = A(1) / vec::lane_sum(pr, C);  // a reciprocal, as ATen's softmax
    for (int c = 0; c < C; ++c) pr[c] = pr[c] * inv;
    for (int c = 0; c < C; ++c) {
      const A v = static_cast<A>(dr[c]);
      colmax[c] = v > colmax[c] ? v : colmax[c];
    }
  }
  for (int r = 0; r < R; ++r) {  // exp of det, column sums
    const T* __restrict__ dr = d + static_cast<int64_t>(r) * C;
    A* __restrict__ qr = q + static_cast<int64_t>(r) * C;
    for (int c = 0; c < C; ++c) qr[c] = vec::fast_exp<kFma>(static_cast<A>(dr[c]) - colmax[c]);
    for (int c = 0; c < C; ++c) colsum[c] += qr[c];
  }
  for (int c = 0; c < C; ++c) colsum[c] = A(1) / colsum[c];
  for (int r = 0; r < R; ++r) {
    const A* __restrict__ pr = p + static_cast<int64_t>(r) * C;
    A* __restrict__ qr = q + static_cast<int64_t>(r) * C;
    T* __restrict__ gr = region + static_cast<int64_t>(r) * C;
    for (int c = 0; c < C; ++c) {
      const A b = qr[c] * colsum[c];
      const T pq = static_cast<T>(pr[c] * b);
      qr[c] = b;
      gr[c] = pq;
      img[c] += static_cast<A>(pq);
    }
  }
  for (int c = 0; c < C; ++c) image[c] = static_cast<T>(img[c]);
}

// One image of the backward: with G the upstream gradient of region (plus that of image,
// broadcast over regions) and t = G*q*p, d cls = p*(G*q - sum_c t), d det = q*(G*p - sum_r t).
template <typename T, typename A, bool HI, bool HR>
MLIC_ALWAYS_INLINE void backward_image(const T* __restrict__ gi, const T* __restrict__ gr, const T* __restrict__ p,
                                       const T* __restrict__ q, int R, int C, T* __restrict__ dc,
                                       T* __restrict__ dd, A* __restrict__ ws) {
  A* __restrict__ colws = ws;  // C values
  A* __restrict__ t = ws + C;  // one row
  auto upstream = [&](int64_t o, int c) {
    return (HI ? static_cast<A>(gi[c]) : A(0)) + (HR ? static_cast<A>(gr[o + c]) : A(0));
  };
  for (int c = 0; c < C; ++c) colws[c] = A(0);
  for (int r = 0; r < R; ++r) {  // row sums, d cls while the row is at hand, column sums
    const int64_t o = static_cast<int64_t>(r) * C;
    for (int c = 0; c < C; ++c) {
      t[c] = upstream(o, c) * static_cast<A>(q[o + c]) * static_cast<A>(p[o + c]);
      colws[c] += t[c];
    }
    const A rw = vec::lane_sum(t, C);
    for (int c = 0; c < C; ++c)
      dc[o + c] = static_cast<T>(static_cast<A>(p[o + c]) * (upstream(o, c) * static_cast<A>(q[o + c]) - rw));
  }
  for (int r = 0; r < R; ++r) {
    const int64_t o = static_cast<int64_t>(r) * C;
    for (int c = 0; c < C; ++c)
      dd[o + c] = static_cast<T>(static_cast<A>(q[o + c]) * (upstream(o, c) * static_cast<A>(p[o + c]) - colws[c]));
  }
}

template <typename T, typename A>
MLIC_ALWAYS_INLINE void backward_image_dispatch(const T* gi, const T* gr, const T* p, const T* q, int R, int C, T* dc,
                                                T* dd, A* ws) {
  if (gi && gr) backward_image<T, A, true, true>(gi, gr, p, q, R, C, dc, dd, ws);
  else if (gi) backward_image<T, A, true, false>(gi, gr, p, q, R, C, dc, dd, ws);
  else if (gr) backward_image<T, A, false, true>(gi, gr, p, q, R, C, dc, dd, ws);
  else backward_image<T, A, false, false>(gi, gr, p, q, R, C, dc, dd, ws);
}

// float, the hot case: one copy per x86-64 level.
using ForwardF32 = void (*)(const float*, const float*, int, int, float*, float*, float*, float*, float*);
using BackwardF32 = void (*)(const float*, const float*, const float*, const float*, int, int, float*, float*,
                             float*);

#define MLIC_F32_LOOPS(LEVEL, TARGET, FMA)                                                                    \
  TARGET void forward_f32_##LEVEL(const float* x, const float* d, int R, int C, float* p, float* q, float* region, \
                                  float* image, float* ws) {                                                     \
    forward_image<float, float, FMA>(x, d, R, C, p, q, region, image, ws);                                       \
  }                                                                                                              \
  TARGET void backward_f32_##LEVEL(const float* gi, const float* gr, const float* p, const float* q, int R,       \
                                   int C, float* dc, float* dd, float* ws) {                                     \
    backward_image_dispatch<float, float>(gi, gr, p, q, R, C, dc, dd, ws);                                       \
  }

MLIC_F32_LOOPS(v1, , false)
#ifdef MLIC_X86_LEVELS
MLIC_F32_LOOPS(v3, MLIC_TARGET_V3, true)
MLIC_F32_LOOPS(v4, MLIC_TARGET_V4, true)
#endif
#undef MLIC_F32_LOOPS

struct F32Loops {
  ForwardF32 forward;
  BackwardF32 backward;
};

F32Loops f32_loops() {
#ifdef MLIC_X86_LEVELS
  const int level = vec::cpu_level();
  if (level >= 4) return {forward_f32_v4, backward_f32_v4};
  if (level >= 3) return {forward_f32_v3, backward_f32_v3};
#endif
  return {forward_f32_v1, backward_f32_v1};
}

// Images [n0, n1) on the calling thread.
template <typename T>
void forward_images(const T* x, const T* d, int64_t n0, int64_t n1, int R, int C, T* a, T* b, T* reg, T* im) {
  using A = typename Acc<T>::type;
  constexpr bool same = std::is_same<T, A>::value;
  const int64_t RC = static_cast<int64_t>(R) * C;
  std::vector<A> ws(3 * C + (same ? 0 : 2 * RC));
  const ForwardF32 f32 = f32_loops().forward;
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t o = n * RC;
    if constexpr (std::is_same<T, float>::value) {
      f32(x + o, d + o, R, C, a + o, b + o, reg + o, im + n * C, ws.data());
    } else if constexpr (same) {
      forward_image<T, A, false>(x + o, d + o, R, C, a + o, b + o, reg + o, im + n * C, ws.data());
    } else {
      A* p = ws.data() + 3 * C;
      A* q = p + RC;
      forward_image<T, A, false>(x + o, d + o, R, C, p, q, reg + o, im + n * C, ws.data());
      for (int64_t e = 0; e < RC; ++e) a[o + e] = static_cast<T>(p[e]), b[o + e] = static_cast<T>(q[e]);
    }
  }
}

template <typename T>
void backward_images(const T* g1, const T* g2, const T* a, const T* b, int64_t n0, int64_t n1, int R, int C, T* dc,
                     T* dd) {
  using A = typename Acc<T>::type;
  const int64_t RC = static_cast<int64_t>(R) * C;
  std::vector<A> ws(2 * C);
  const BackwardF32 f32 = f32_loops().backward;
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t o = n * RC;
    const T* gin = g1 ? g1 + n * C : nullptr;
    const T* grn = g2 ? g2 + o : nullptr;
    if constexpr (std::is_same<T, float>::value)
      f32(gin, grn, a + o, b + o, R, C, dc + o, dd + o, ws.data());
    else
      backward_image_dispatch<T, A>(gin, grn, a + o, b + o, R, C, dc + o, dd + o, ws.data());
  }
}

}  // namespace

namespace vec {
namespace {
int detected_level() {
#ifdef MLIC_X86_LEVELS
  static const int level = [] {
    __builtin_cpu_init();
    const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("movbe");
    const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                    __builtin_cpu_supports("avx512cd");
    return v4 ? 4 : v3 ? 3 : 1;
  }();
  return level;
#else
  return 1;
#endif
}
std::atomic<int> level_cap{4};
}  // namespace

int cpu_level() { return std::min(detected_level(), level_cap.load(std::memory_order_relaxed)); }
}  // namespace vec

int cpu_simd_level() { return vec::cpu_level(); }

int set_cpu_simd_level_cap(int64_t cap) {
  TORCH_CHECK_VALUE(cap == 1 || cap == 3 || cap == 4, "set_cpu_simd_level_cap: the cap must be 1, 3 or 4, got ", cap);
  vec::level_cap.store(static_cast<int>(cap), std::memory_order_relaxed);
  return vec::cpu_level();
}

std::tuple<Tensor, Tensor, Tensor, Tensor> two_stream_forward_cpu(const Tensor& cls_, const Tensor& det_) {
  const Tensor cls = cls_.contiguous(), det = det_.contiguous();
  const int64_t N = cls.size(0);
  const int R = cls.size(1), C = cls.size(2);
  const int64_t RC = static_cast<int64_t>(R) * C;
  Tensor image = at::empty({N, C}, cls.options());
  Tensor region = at::empty_like(cls), pc = at::empty_like(cls), pd = at::empty_like(cls);
  if (N == 0) return {image, region, pc, pd};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cls.scalar_type(), "mlic_two_stream_forward_cpu", [&] {
    const scalar_t* x = cls.data_ptr<scalar_t>();
    const scalar_t* d = det.data_ptr<scalar_t>();
    scalar_t* a = pc.data_ptr<scalar_t>();
    scalar_t* b = pd.data_ptr<scalar_t>();
    scalar_t* reg = region.data_ptr<scalar_t>();
    scalar_t* im = image.data_ptr<scalar_t>();
    at::parallel_for(0, N, image_grain(RC), [&](int64_t n0, int64_t n1) {
      forward_images<scalar_t>(x, d, n0, n1, R, C, a, b, reg, im);
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
  const int64_t RC = static_cast<int64_t>(R) * C;
  Tensor d_cls = at::empty_like(pc), d_det = at::empty_like(pc);
  if (N == 0) return {d_cls, d_det};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pc.scalar_type(), "mlic_two_stream_backward_cpu", [&] {
    const scalar_t* g1 = gi.defined() ? gi.data_ptr<scalar_t>() : nullptr;
    const scalar_t* g2 = gr.defined() ? gr.data_ptr<scalar_t>() : nullptr;
    const scalar_t* a = pc.data_ptr<scalar_t>();
    const scalar_t* b = pd.data_ptr<scalar_t>();
    scalar_t* dc = d_cls.data_ptr<scalar_t>();
    scalar_t* dd = d_det.data_ptr<scalar_t>();
    at::parallel_for(0, N, image_grain(RC), [&](int64_t n0, int64_t n1) {
      backward_images<scalar_t>(g1, g2, a, b, n0, n1, R, C, dc, dd);
    });
  });
  return {d_cls, d_det};
}

}  // namespace mlic
