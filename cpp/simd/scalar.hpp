// One element at a time: the baseline ISA level and the tail of every vector loop.
// Lives in the per-ISA namespace so that copies compiled with different -m flags never merge.
#pragma once
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../dispatch.hpp"

// The small functions a rule's loop calls (load, store, the conversions, the shared update steps)
// are inlined whatever GCC's inliner estimates: once a loop body holds the 16-bit conversions it
// stopped inlining them (Adam in bf16 called adam_moments, every vector spilled around the call,
// and ran at half speed). Only for per-ISA code, which never leaves its level's namespace.
#define FUSEDOPTIM_INLINE [[gnu::always_inline]] inline

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

// The storage conversions, one element at a time, in integer arithmetic: the scalar level runs on
// any CPU, and every level's tails come through here. Widening is exact (subnormals included);
// narrowing rounds to nearest even, keeps subnormals, rounds values past the largest finite one
// to Inf (ties to even too) and keeps NaN NaN (quiet), as ml_dtypes and NumPy's astype do.
inline float widen(bf16 x) { return std::bit_cast<float>(std::uint32_t{x.bits} << 16); }

inline bf16 to_bf16(float x) {
  const auto u = std::bit_cast<std::uint32_t>(x);
  // The rounding add could carry a NaN with a small payload into Inf.
  if (x != x) return {static_cast<std::uint16_t>(u >> 16 | 0x40)};
  return {static_cast<std::uint16_t>((u + 0x7fff + (u >> 16 & 1)) >> 16)};
}

inline float widen(f16 x) {
  const std::uint32_t sign = std::uint32_t{x.bits & 0x8000u} << 16, exponent = x.bits >> 10 & 0x1f,
                      mantissa = x.bits & 0x3ffu;
  if (exponent == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | mantissa << 13);
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float m = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -m : m;
  }
  return std::bit_cast<float>(sign | (exponent + 112) << 23 | mantissa << 13);
}

inline f16 to_f16(float x) {
  const auto u = std::bit_cast<std::uint32_t>(x);
  const auto sign = static_cast<std::uint16_t>(u >> 16 & 0x8000);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return {static_cast<std::uint16_t>(sign | 0x7e00 | (a >> 13 & 0x3ff))};
  if (a >= 0x477ff000u) return {static_cast<std::uint16_t>(sign | 0x7c00)};  // from 65520 (a tie, to even) up
  if (a >= 0x38800000u) {  // normal in float16 (from 2^-14): rebias the exponent, round off 13 bits
    const std::uint32_t b = a - 0x38000000u;
    return {static_cast<std::uint16_t>(sign | (b + 0xfff + (b >> 13 & 1)) >> 13)};
  }
  const std::uint32_t exponent = a >> 23;  // a float16 subnormal: a count of 2^-24, rounded
  if (exponent < 102) return {sign};       // below 2^-25, the tie between 0 and 2^-24
  const std::uint32_t mantissa = (a & 0x7fffffu) | 0x800000u, shift = 126 - exponent;  // 14..24
  const std::uint32_t q = mantissa >> shift, rest = mantissa & ((1u << shift) - 1), half = 1u << (shift - 1);
  return {static_cast<std::uint16_t>(sign | (q + (rest > half || (rest == half && (q & 1)))))};
}

// One element from storage type From to To (compute to storage or back).
template <class To, class From>
To convert(From x) {
  if constexpr (std::is_same_v<To, From>) return x;
  else if constexpr (std::is_same_v<From, bf16> || std::is_same_v<From, f16>) return widen(x);
  else if constexpr (std::is_same_v<To, bf16>) return to_bf16(x);
  else if constexpr (std::is_same_v<To, f16>) return to_f16(x);
  else return static_cast<To>(x);  // float <-> double: exact, or nearest even (the contract's rounding mode)
}

template <class T>
struct Scalar {
  using value_type = T;
  static constexpr std::size_t width = 1;
  T v;

  // From and to any storage type S of a T compute (see convert). memcpy: element pointers may be
  // misaligned (views at odd byte offsets).
  template <class S>
  static Scalar load(const S* p) {
    S x;
    std::memcpy(&x, p, sizeof(S));
    return {convert<T>(x)};
  }
  template <class S>
  void store(S* p) const {
    const S x = convert<S>(v);
    std::memcpy(p, &x, sizeof(S));
  }
  static Scalar broadcast(T x) { return {x}; }

  friend Scalar operator+(Scalar a, Scalar b) { return {a.v + b.v}; }
  friend Scalar operator-(Scalar a, Scalar b) { return {a.v - b.v}; }
  friend Scalar operator*(Scalar a, Scalar b) { return {a.v * b.v}; }
  friend Scalar operator/(Scalar a, Scalar b) { return {a.v / b.v}; }
  friend Scalar operator-(Scalar a) { return {-a.v}; }
  friend Scalar sqrt(Scalar a) { return {std::sqrt(a.v)}; }
  friend Scalar abs(Scalar a) { return {std::fabs(a.v)}; }
  // Exactly np.maximum: a wins if greater or NaN, else b (so ties, like max(-0, +0), give b).
  friend Scalar maximum(Scalar a, Scalar b) { return {(a.v > b.v || a.v != a.v) ? a.v : b.v}; }
  // Exactly np.minimum: a wins if smaller or NaN, else b.
  friend Scalar minimum(Scalar a, Scalar b) { return {(a.v < b.v || a.v != a.v) ? a.v : b.v}; }
  // Comparisons give a mask for select; like C++'s own, they are false where either side is NaN.
  using Mask = bool;
  friend Mask operator>(Scalar a, Scalar b) { return a.v > b.v; }
  friend Mask operator<(Scalar a, Scalar b) { return a.v < b.v; }
  friend Mask operator==(Scalar a, Scalar b) { return a.v == b.v; }
  // a where m holds, else b. Through the bits, as sign is, so that GCC emits no branch: with ?:
  // it branched, and Rprop's selects on random signs ran 15x slower than at the avx2 level.
  friend Scalar select(Mask m, Scalar a, Scalar b) {
    using Bits = std::conditional_t<sizeof(T) == 8, std::uint64_t, std::uint32_t>;
    Bits x, y;
    std::memcpy(&x, &a.v, sizeof x);
    std::memcpy(&y, &b.v, sizeof y);
    const Bits keep = Bits(0) - Bits(m);  // all ones where m holds
    const Bits bits = (x & keep) | (y & ~keep);
    T r;
    std::memcpy(&r, &bits, sizeof r);
    return {r};
  }
  // Exactly np.sign: +1 above zero, -1 below, +0 for either zero (np.sign(-0.0) is +0.0), NaN stays NaN.
  // Written without branches: on random data a chain of ?: mispredicts and ran Lion 15x slower.
  friend Scalar sign(Scalar a) {
    const T s = T(a.v > 0) - T(a.v < 0);
    return {a.v == a.v ? s : a.v};
  }

  // A running sum of squares in double, whatever T is (a float's square is exact in double).
  struct SquareSum {
    double v;
    static SquareSum zero() { return {0.0}; }
    void add(Scalar x) {
      const double d = x.v;
      v = v + d * d;
    }
    void store(double* p) const { *p = v; }
  };
};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
