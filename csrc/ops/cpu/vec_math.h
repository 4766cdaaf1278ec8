// Loop bodies for the CPU kernels that the compiler can vectorise without -ffast-math:
// reductions keep a fixed number of partial results (the order is written in the source,
// so every instruction set and every thread count gives the same bits), and exp is a
// branch-free polynomial instead of a libm call.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// Hot loops are compiled once per x86-64 level and picked at run time (cpu_level()).
#define MLIC_X86_LEVELS 1
#define MLIC_TARGET_V3 __attribute__((target("arch=x86-64-v3")))
#define MLIC_TARGET_V4 __attribute__((target("arch=x86-64-v4")))
#endif

#if defined(__GNUC__) && !defined(__clang__)
// The vector-typed helpers below are always inlined: no call passes a vector by value.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#if defined(__GNUC__)
#define MLIC_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define MLIC_ALWAYS_INLINE inline
#endif

namespace mlic {
namespace vec {

constexpr int kLanes = 16;

// kLanes values as one vector: every instruction set gets whole-vector operations (the
// generic build splits them into SSE2 halves) where the loop vectoriser gives up on
// reductions.
template <typename A, int L>
struct VecN {
  typedef A type __attribute__((vector_size(L * sizeof(A))));
};
template <typename A>
using Lanes = VecN<A, kLanes>;

template <typename A, typename T>
MLIC_ALWAYS_INLINE typename Lanes<A>::type load_lanes(const T* v) {
  typename Lanes<A>::type x;
  if constexpr (std::is_same<T, A>::value) {
    std::memcpy(&x, v, sizeof x);
  } else {
    for (int j = 0; j < kLanes; ++j) x[j] = static_cast<A>(v[j]);
  }
  return x;
}

// Folds L lanes in halves (lane j with lane j + L/2, ...) with op, down to lane 0.
template <typename A, int L, typename Op>
MLIC_ALWAYS_INLINE A fold(typename VecN<A, L>::type v, Op op) {
  if constexpr (L == 1) {
    return v[0];
  } else {
    typename VecN<A, L / 2>::type lo, hi;
    std::memcpy(&lo, &v, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
    return fold<A, L / 2>(op(lo, hi), op);
  }
}

// Sum of v[0..n): kLanes strided partial sums, folded in halves, then the tail in order.
template <typename A>
MLIC_ALWAYS_INLINE A lane_sum(const A* v, int n) {
  typename Lanes<A>::type acc = {};
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) acc += load_lanes<A>(v + i);
  A s = fold<A, kLanes>(acc, [](auto a, auto b) { return a + b; });
  for (; i < n; ++i) s += v[i];
  return s;
}

// Largest of v[0..n) by '>' (a NaN never wins, as in a sequential scan); -inf if none.
template <typename A, typename T>
MLIC_ALWAYS_INLINE A lane_max(const T* v, int n) {
  typename Lanes<A>::type acc;
  for (int j = 0; j < kLanes; ++j) acc[j] = -INFINITY;
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const typename Lanes<A>::type x = load_lanes<A>(v + i);
    acc = x > acc ? x : acc;
  }
  A m = fold<A, kLanes>(acc, [](auto a, auto b) { return b > a ? b : a; });
  for (; i < n; ++i) {
    const A x = static_cast<A>(v[i]);
    m = x > m ? x : m;
  }
  return m;
}

MLIC_ALWAYS_INLINE uint32_t float_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

MLIC_ALWAYS_INLINE float bits_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// a*b + c, fused (one rounding) where the instruction set has FMA.
template <bool kFma>
MLIC_ALWAYS_INLINE float mul_add(float a, float b, float c) {
  if constexpr (kFma) return __builtin_fmaf(a, b, c);
  else return a * b + c;
}

// expf for the shifted logits of a softmax (x <= 0; any x <= 88 is valid), within 2 ulp:
// Cody-Waite reduction by ln 2 and the Cephes minimax polynomial. exp(-inf) = 0 and NaN
// stays NaN; results below 1.7e-38 (x < -87) are flushed to 0 instead of going subnormal,
// an absolute difference under 2e-38. Branch-free so that loops over it vectorise; with
// kFma the last bit can differ from the plain form.
template <bool kFma>
MLIC_ALWAYS_INLINE float exp_f32(float x) {
  const float xc = -87.0f > x ? -87.0f : x;  // NaN fails the test and passes through
  const float magic = 12582912.0f;           // 1.5 * 2^23: adding it rounds to an integer n
  const float t = mul_add<kFma>(xc, 1.44269504088896341f, magic);
  const float n = t - magic;
  const float r = mul_add<kFma>(n, 2.12194440e-4f, mul_add<kFma>(n, -0.693359375f, xc));
  float p = 1.9875691500e-4f;
  p = mul_add<kFma>(p, r, 1.3981999507e-3f);
  p = mul_add<kFma>(p, r, 8.3334519073e-3f);
  p = mul_add<kFma>(p, r, 4.1665795894e-2f);
  p = mul_add<kFma>(p, r, 1.6666665459e-1f);
  p = mul_add<kFma>(p, r, 5.0000001201e-1f);
  const float y = mul_add<kFma>(p * r, r, r) + 1.0f;
  // n also sits in the low mantissa bits of t (the bits of the magic number shift out),
  // which gives 2^n without a float-to-int conversion (undefined for NaN).
  const float scale = bits_float((float_bits(t) + 127u) << 23);
  return x < -87.0f ? 0.0f : y * scale;
}

template <bool kFma>
MLIC_ALWAYS_INLINE float fast_exp(float x) { return exp_f32<kFma>(x); }
template <bool kFma>
MLIC_ALWAYS_INLINE double fast_exp(double x) { return std::exp(x); }

// Highest x86-64 level this CPU runs: 4 (AVX-512), 3 (AVX2 + FMA) or 1.
int cpu_level();

}  // namespace vec
}  // namespace mlic
