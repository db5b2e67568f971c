// Prototype (not part of the package): Adam with master weights in two forms, same loop, same AVX2 code.
//  full:  a float32 master (read + written) and the bf16 param (written: the master rounded to nearest)
//         = 4 + 4 + 2 + grad 2 + states 16 = 28 bytes per element;
//  split: the bf16 param is the top half of the float32 master, a uint16 state holds the low half
//         (IPEX's form): both read and written = 2 + 2 + 2 + 2 + grad 2 + states 16 = 26 bytes per element;
//         the param is then the master truncated (rounded toward zero), not rounded to nearest.
// Build and run:  g++ -O3 -mavx2 -mf16c -ffp-contract=off -std=c++20 benchmarks/split_master.cpp -o /tmp/split && /tmp/split
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

constexpr std::size_t kN = std::size_t{1} << 24;

struct Scalars {
  __m256 b1, omb1, b2, omb2, step_size, bc2, eps;
};

inline __m256 load_bf16(const std::uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
inline void store_u16(std::uint16_t* p, __m256i bits) {  // every lane 0..0xffff
  _mm_storeu_si128((__m128i*)p, _mm_packus_epi32(_mm256_castsi256_si128(bits), _mm256_extracti128_si256(bits, 1)));
}
inline __m256 adam(const Scalars& s, __m256 p, __m256 g, float* m, float* v) {
  __m256 mm = _mm256_add_ps(_mm256_mul_ps(s.b1, _mm256_loadu_ps(m)), _mm256_mul_ps(s.omb1, g));
  __m256 vv = _mm256_add_ps(_mm256_mul_ps(s.b2, _mm256_loadu_ps(v)), _mm256_mul_ps(s.omb2, _mm256_mul_ps(g, g)));
  _mm256_storeu_ps(m, mm);
  _mm256_storeu_ps(v, vv);
  __m256 denom = _mm256_add_ps(_mm256_mul_ps(_mm256_sqrt_ps(vv), s.bc2), s.eps);
  return _mm256_sub_ps(p, _mm256_mul_ps(s.step_size, _mm256_div_ps(mm, denom)));
}

void full(const Scalars& s, float* master, std::uint16_t* param, const std::uint16_t* grad, float* m, float* v) {
  for (std::size_t i = 0; i < kN; i += 8) {
    __m256 p = adam(s, _mm256_loadu_ps(master + i), load_bf16(grad + i), m + i, v + i);
    _mm256_storeu_ps(master + i, p);
    __m256i u = _mm256_castps_si256(p);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    store_u16(param + i, _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd), 16));
  }
}

void split(const Scalars& s, std::uint16_t* param, std::uint16_t* low, const std::uint16_t* grad, float* m, float* v) {
  for (std::size_t i = 0; i < kN; i += 8) {
    __m256i hi = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(param + i)));
    __m256i lo = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(low + i)));
    __m256 p = _mm256_castsi256_ps(_mm256_or_si256(_mm256_slli_epi32(hi, 16), lo));
    __m256i u = _mm256_castps_si256(adam(s, p, load_bf16(grad + i), m + i, v + i));
    store_u16(param + i, _mm256_srli_epi32(u, 16));
    store_u16(low + i, _mm256_and_si256(u, _mm256_set1_epi32(0xffff)));
  }
}

template <class T>
T* buffer(std::size_t offset_bytes) {  // staggered: 2 MiB aligned plus a different multiple of 256 B each
  char* raw = static_cast<char*>(std::aligned_alloc(1 << 21, kN * sizeof(T) + (1 << 21)));
  T* p = reinterpret_cast<T*>(raw + offset_bytes);
  std::fill(p, p + kN, T{});
  return p;
}

template <class F>
double best_ms(F f) {
  std::vector<double> times;
  for (int r = 0; r < 15; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main() {
  const Scalars s{_mm256_set1_ps(0.9f), _mm256_set1_ps(0.1f), _mm256_set1_ps(0.999f), _mm256_set1_ps(0.001f),
                  _mm256_set1_ps(1e-3f), _mm256_set1_ps(1.0f), _mm256_set1_ps(1e-8f)};
  float* master = buffer<float>(0);
  float* m = buffer<float>(256);
  float* v = buffer<float>(512);
  std::uint16_t* param = buffer<std::uint16_t>(768);
  std::uint16_t* low = buffer<std::uint16_t>(1024);
  std::uint16_t* grad = buffer<std::uint16_t>(1280);
  for (std::size_t i = 0; i < kN; ++i) grad[i] = 0x3c00 + (i & 0xff), master[i] = 1.0f + i * 1e-9f;
  // Interleaved rounds, so that both forms see the same share of the machine's noise.
  double tf = 0, ts = 0;
  for (int round = 0; round < 3; ++round) {
    tf += best_ms([&] { full(s, master, param, grad, m, v); });
    ts += best_ms([&] { split(s, param, low, grad, m, v); });
  }
  tf /= 3, ts /= 3;
  std::printf("16M elements, 1 thread, median of 15, mean of 3 interleaved rounds\n");
  std::printf("full  (28 B/element): %.2f ms  %.1f GB/s\n", tf, 28.0 * kN / tf / 1e6);
  std::printf("split (26 B/element): %.2f ms  %.1f GB/s\n", ts, 26.0 * kN / ts / 1e6);
  std::printf("split / full time: %.3f (bytes: %.3f)\n", ts / tf, 26.0 / 28.0);
}
