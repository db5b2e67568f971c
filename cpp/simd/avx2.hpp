// 256-bit vectors. Only the intrinsics live here; the kernels never see them.
#pragma once
#include <immintrin.h>

#include <cstddef>

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
};

template <>
struct Vec<double> {
  using value_type = double;
  static constexpr std::size_t width = 4;
  __m256d v;

  static Vec load(const double* p) { return {_mm256_loadu_pd(p)}; }
  void store(double* p) const { _mm256_storeu_pd(p, v); }
  static Vec broadcast(double x) { return {_mm256_set1_pd(x)}; }

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
};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
