// 512-bit vectors (AVX-512F; DQ for the float bitwise ops; AVX512_BF16, where the level has it, for
// bfloat16 stores).
#pragma once
#include <immintrin.h>

#include <cstddef>

#include "../dispatch.hpp"
#include "scalar.hpp"  // kWeyl

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

template <class T>
struct Vec;

template <>
struct Vec<float> {
  using value_type = float;
  static constexpr std::size_t width = 16;
  __m512 v;

  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  static Vec broadcast(float x) { return {_mm512_set1_ps(x)}; }

  // The storage conversions of scalar.hpp, 16 at a time, as avx2.hpp's.
  FUSEDOPTIM_INLINE static Vec load(const bf16* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(wide, 16))};
  }
  FUSEDOPTIM_INLINE void store(bf16* p) const {
#if defined(FUSEDOPTIM_AVX512_BF16)
    // AVX512_BF16's convert rounds to nearest even (whatever MXCSR says) and quiets a NaN as
    // store_rounded does, (bits >> 16) | 0x40, but treats subnormal inputs as zero: a vector with a
    // subnormal lane takes the integer path. The convert is 2 uops against 10 (the integer path
    // made all-bfloat16 Adam compute-bound).
    if (_mm512_fpclass_ps_mask(v, 0x20) == 0) [[likely]] {  // 0x20: denormal
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
      return;
    }
#endif
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    store_rounded(p, _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd));
  }
  // As avx2.hpp's, 16 lanes.
  FUSEDOPTIM_INLINE void store_stochastic(bf16* p, std::uint32_t key, std::uint64_t index) const {
    const __m512i lanes = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(index)),
                                           _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    __m512i h = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(key)),
                                 _mm512_mullo_epi32(lanes, _mm512_set1_epi32(static_cast<int>(kWeyl))));
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
    h = _mm512_mullo_epi32(h, _mm512_set1_epi32(static_cast<int>(0x85ebca6bu)));
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 13));
    h = _mm512_mullo_epi32(h, _mm512_set1_epi32(static_cast<int>(0xc2b2ae35u)));
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
    store_rounded(p, _mm512_add_epi32(_mm512_castps_si512(v), _mm512_srli_epi32(h, 16)));
  }
  FUSEDOPTIM_INLINE void store_rounded(bf16* p, __m512i added) const {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i rounded = _mm512_srli_epi32(added, 16);
    const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    const __m512i bits = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), quiet);
    // Every lane holds 0..0xffff, so the truncating narrow keeps it whole.
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bits));
  }
  FUSEDOPTIM_INLINE static Vec load(const f16* p) { return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))}; }
  FUSEDOPTIM_INLINE void store(f16* p) const {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }

  friend Vec operator+(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm512_div_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a) { return {_mm512_xor_ps(a.v, _mm512_set1_ps(-0.0f))}; }
  friend Vec sqrt(Vec a) { return {_mm512_sqrt_ps(a.v)}; }
  friend Vec abs(Vec a) { return {_mm512_andnot_ps(_mm512_set1_ps(-0.0f), a.v)}; }
  friend Vec maximum(Vec a, Vec b) {
    __mmask16 take_a = _mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ) | _mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q);
    return {_mm512_mask_blend_ps(take_a, b.v, a.v)};
  }
  friend Vec minimum(Vec a, Vec b) {
    __mmask16 take_a = _mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ) | _mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q);
    return {_mm512_mask_blend_ps(take_a, b.v, a.v)};
  }
  // A bit per lane, set where true; ordered compares, so clear where either side is NaN (see Scalar).
  using Mask = __mmask16;
  friend Mask operator>(Vec a, Vec b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ); }
  friend Mask operator<(Vec a, Vec b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ); }
  friend Mask operator==(Vec a, Vec b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_EQ_OQ); }
  friend Vec select(Mask m, Vec a, Vec b) { return {_mm512_mask_blend_ps(m, b.v, a.v)}; }
  // Exactly np.sign (see Scalar::sign): 1, -1, itself (NaN) under disjoint masks; +0 where none holds.
  friend Vec sign(Vec a) {
    const __m512 zero = _mm512_setzero_ps();
    __m512 s = _mm512_mask_mov_ps(zero, _mm512_cmp_ps_mask(a.v, zero, _CMP_GT_OQ), _mm512_set1_ps(1.0f));
    s = _mm512_mask_mov_ps(s, _mm512_cmp_ps_mask(a.v, zero, _CMP_LT_OQ), _mm512_set1_ps(-1.0f));
    return {_mm512_mask_mov_ps(s, _mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q), a.v)};
  }

  // Squares summed in double: lanes 0-7 in lo, 8-15 in hi.
  struct SquareSum {
    __m512d lo, hi;
    static SquareSum zero() { return {_mm512_setzero_pd(), _mm512_setzero_pd()}; }
    void add(Vec x) {
      __m512d l = _mm512_cvtps_pd(_mm512_castps512_ps256(x.v)), h = _mm512_cvtps_pd(_mm512_extractf32x8_ps(x.v, 1));
      lo = _mm512_add_pd(lo, _mm512_mul_pd(l, l));
      hi = _mm512_add_pd(hi, _mm512_mul_pd(h, h));
    }
    void store(double* p) const {
      _mm512_storeu_pd(p, lo);
      _mm512_storeu_pd(p + 8, hi);
    }
  };
};

template <>
struct Vec<double> {
  using value_type = double;
  static constexpr std::size_t width = 8;
  __m512d v;

  static Vec load(const double* p) { return {_mm512_loadu_pd(p)}; }
  void store(double* p) const { _mm512_storeu_pd(p, v); }
  static Vec broadcast(double x) { return {_mm512_set1_pd(x)}; }
  // float32 storage (states of float64 params): exact, and nearest even under the contract's MXCSR.
  static Vec load(const float* p) { return {_mm512_cvtps_pd(_mm256_loadu_ps(p))}; }
  void store(float* p) const { _mm256_storeu_ps(p, _mm512_cvtpd_ps(v)); }

  friend Vec operator+(Vec a, Vec b) { return {_mm512_add_pd(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm512_sub_pd(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm512_mul_pd(a.v, b.v)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm512_div_pd(a.v, b.v)}; }
  friend Vec operator-(Vec a) { return {_mm512_xor_pd(a.v, _mm512_set1_pd(-0.0))}; }
  friend Vec sqrt(Vec a) { return {_mm512_sqrt_pd(a.v)}; }
  friend Vec abs(Vec a) { return {_mm512_andnot_pd(_mm512_set1_pd(-0.0), a.v)}; }
  friend Vec maximum(Vec a, Vec b) {
    __mmask8 take_a = _mm512_cmp_pd_mask(a.v, b.v, _CMP_GT_OQ) | _mm512_cmp_pd_mask(a.v, a.v, _CMP_UNORD_Q);
    return {_mm512_mask_blend_pd(take_a, b.v, a.v)};
  }
  friend Vec minimum(Vec a, Vec b) {
    __mmask8 take_a = _mm512_cmp_pd_mask(a.v, b.v, _CMP_LT_OQ) | _mm512_cmp_pd_mask(a.v, a.v, _CMP_UNORD_Q);
    return {_mm512_mask_blend_pd(take_a, b.v, a.v)};
  }
  // A bit per lane, set where true; ordered compares, so clear where either side is NaN (see Scalar).
  using Mask = __mmask8;
  friend Mask operator>(Vec a, Vec b) { return _mm512_cmp_pd_mask(a.v, b.v, _CMP_GT_OQ); }
  friend Mask operator<(Vec a, Vec b) { return _mm512_cmp_pd_mask(a.v, b.v, _CMP_LT_OQ); }
  friend Mask operator==(Vec a, Vec b) { return _mm512_cmp_pd_mask(a.v, b.v, _CMP_EQ_OQ); }
  friend Vec select(Mask m, Vec a, Vec b) { return {_mm512_mask_blend_pd(m, b.v, a.v)}; }
  friend Vec sign(Vec a) {
    const __m512d zero = _mm512_setzero_pd();
    __m512d s = _mm512_mask_mov_pd(zero, _mm512_cmp_pd_mask(a.v, zero, _CMP_GT_OQ), _mm512_set1_pd(1.0));
    s = _mm512_mask_mov_pd(s, _mm512_cmp_pd_mask(a.v, zero, _CMP_LT_OQ), _mm512_set1_pd(-1.0));
    return {_mm512_mask_mov_pd(s, _mm512_cmp_pd_mask(a.v, a.v, _CMP_UNORD_Q), a.v)};
  }

  struct SquareSum {
    __m512d v;
    static SquareSum zero() { return {_mm512_setzero_pd()}; }
    void add(Vec x) { v = _mm512_add_pd(v, _mm512_mul_pd(x.v, x.v)); }
    void store(double* p) const { _mm512_storeu_pd(p, v); }
  };
};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
