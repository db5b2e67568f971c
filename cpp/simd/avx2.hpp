// 256-bit vectors (AVX2, and F16C for float16). Only the intrinsics live here; the kernels never see them.
#pragma once
#include <immintrin.h>

#include <cstddef>

#include "../dispatch.hpp"

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

template <class T>
struct Vec;

template <>
struct Vec<float> {
  using value_type = float;
  static constexpr std::size_t width = 8;
  __m256 v;

  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  static Vec broadcast(float x) { return {_mm256_set1_ps(x)}; }

  // The storage conversions of scalar.hpp, 8 at a time. Not AVX512_BF16's convert: it treats
  // subnormal inputs as zero.
  FUSEDOPTIM_INLINE static Vec load(const bf16* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))};
  }
  FUSEDOPTIM_INLINE void store(bf16* p) const {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd), 16);
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    const __m256i bits = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(rounded), _mm256_castsi256_ps(quiet),
                                                              _mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    // Every lane holds 0..0xffff, so the saturating pack only narrows.
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm_packus_epi32(_mm256_castsi256_si128(bits), _mm256_extracti128_si256(bits, 1)));
  }
  FUSEDOPTIM_INLINE static Vec load(const f16* p) { return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))}; }
  FUSEDOPTIM_INLINE void store(f16* p) const {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }

  friend Vec operator+(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm256_div_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a) { return {_mm256_xor_ps(a.v, _mm256_set1_ps(-0.0f))}; }
  friend Vec sqrt(Vec a) { return {_mm256_sqrt_ps(a.v)}; }
  friend Vec abs(Vec a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v)}; }
  friend Vec maximum(Vec a, Vec b) {
    __m256 take_a = _mm256_or_ps(_mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ), _mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q));
    return {_mm256_blendv_ps(b.v, a.v, take_a)};
  }
  friend Vec minimum(Vec a, Vec b) {
    __m256 take_a = _mm256_or_ps(_mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ), _mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q));
    return {_mm256_blendv_ps(b.v, a.v, take_a)};
  }
  // All ones where true; ordered compares, so false where either side is NaN (see Scalar).
  struct Mask {
    __m256 m;
  };
  friend Mask operator>(Vec a, Vec b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ)}; }
  friend Mask operator<(Vec a, Vec b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ)}; }
  friend Mask operator==(Vec a, Vec b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_EQ_OQ)}; }
  friend Vec select(Mask m, Vec a, Vec b) { return {_mm256_blendv_ps(b.v, a.v, m.m)}; }
  // Exactly np.sign (see Scalar::sign): 1, -1, itself (NaN) under disjoint masks; +0 where none holds.
  friend Vec sign(Vec a) {
    const __m256 zero = _mm256_setzero_ps();
    __m256 pos = _mm256_and_ps(_mm256_cmp_ps(a.v, zero, _CMP_GT_OQ), _mm256_set1_ps(1.0f));
    __m256 neg = _mm256_and_ps(_mm256_cmp_ps(a.v, zero, _CMP_LT_OQ), _mm256_set1_ps(-1.0f));
    __m256 nan = _mm256_and_ps(_mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q), a.v);
    return {_mm256_or_ps(_mm256_or_ps(pos, neg), nan)};
  }

  // Squares summed in double: lanes 0-3 in lo, 4-7 in hi.
  struct SquareSum {
    __m256d lo, hi;
    static SquareSum zero() { return {_mm256_setzero_pd(), _mm256_setzero_pd()}; }
    void add(Vec x) {
      __m256d l = _mm256_cvtps_pd(_mm256_castps256_ps128(x.v)), h = _mm256_cvtps_pd(_mm256_extractf128_ps(x.v, 1));
      lo = _mm256_add_pd(lo, _mm256_mul_pd(l, l));
      hi = _mm256_add_pd(hi, _mm256_mul_pd(h, h));
    }
    void store(double* p) const {
      _mm256_storeu_pd(p, lo);
      _mm256_storeu_pd(p + 4, hi);
    }
  };
};

template <>
struct Vec<double> {
  using value_type = double;
  static constexpr std::size_t width = 4;
  __m256d v;

  static Vec load(const double* p) { return {_mm256_loadu_pd(p)}; }
  void store(double* p) const { _mm256_storeu_pd(p, v); }
  static Vec broadcast(double x) { return {_mm256_set1_pd(x)}; }
  // float32 storage (states of float64 params): exact, and nearest even under the contract's MXCSR.
  static Vec load(const float* p) { return {_mm256_cvtps_pd(_mm_loadu_ps(p))}; }
  void store(float* p) const { _mm_storeu_ps(p, _mm256_cvtpd_ps(v)); }

  friend Vec operator+(Vec a, Vec b) { return {_mm256_add_pd(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm256_sub_pd(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm256_mul_pd(a.v, b.v)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm256_div_pd(a.v, b.v)}; }
  friend Vec operator-(Vec a) { return {_mm256_xor_pd(a.v, _mm256_set1_pd(-0.0))}; }
  friend Vec sqrt(Vec a) { return {_mm256_sqrt_pd(a.v)}; }
  friend Vec abs(Vec a) { return {_mm256_andnot_pd(_mm256_set1_pd(-0.0), a.v)}; }
  friend Vec maximum(Vec a, Vec b) {
    __m256d take_a = _mm256_or_pd(_mm256_cmp_pd(a.v, b.v, _CMP_GT_OQ), _mm256_cmp_pd(a.v, a.v, _CMP_UNORD_Q));
    return {_mm256_blendv_pd(b.v, a.v, take_a)};
  }
  friend Vec minimum(Vec a, Vec b) {
    __m256d take_a = _mm256_or_pd(_mm256_cmp_pd(a.v, b.v, _CMP_LT_OQ), _mm256_cmp_pd(a.v, a.v, _CMP_UNORD_Q));
    return {_mm256_blendv_pd(b.v, a.v, take_a)};
  }
  // All ones where true; ordered compares, so false where either side is NaN (see Scalar).
  struct Mask {
    __m256d m;
  };
  friend Mask operator>(Vec a, Vec b) { return {_mm256_cmp_pd(a.v, b.v, _CMP_GT_OQ)}; }
  friend Mask operator<(Vec a, Vec b) { return {_mm256_cmp_pd(a.v, b.v, _CMP_LT_OQ)}; }
  friend Mask operator==(Vec a, Vec b) { return {_mm256_cmp_pd(a.v, b.v, _CMP_EQ_OQ)}; }
  friend Vec select(Mask m, Vec a, Vec b) { return {_mm256_blendv_pd(b.v, a.v, m.m)}; }
  friend Vec sign(Vec a) {
    const __m256d zero = _mm256_setzero_pd();
    __m256d pos = _mm256_and_pd(_mm256_cmp_pd(a.v, zero, _CMP_GT_OQ), _mm256_set1_pd(1.0));
    __m256d neg = _mm256_and_pd(_mm256_cmp_pd(a.v, zero, _CMP_LT_OQ), _mm256_set1_pd(-1.0));
    __m256d nan = _mm256_and_pd(_mm256_cmp_pd(a.v, a.v, _CMP_UNORD_Q), a.v);
    return {_mm256_or_pd(_mm256_or_pd(pos, neg), nan)};
  }

  struct SquareSum {
    __m256d v;
    static SquareSum zero() { return {_mm256_setzero_pd()}; }
    void add(Vec x) { v = _mm256_add_pd(v, _mm256_mul_pd(x.v, x.v)); }
    void store(double* p) const { _mm256_storeu_pd(p, v); }
  };
};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
