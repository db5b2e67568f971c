// One element at a time: the baseline ISA level and the tail of every vector loop.
// Lives in the per-ISA namespace so that copies compiled with different -m flags never merge.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

template <class T>
struct Scalar {
  using value_type = T;
  static constexpr std::size_t width = 1;
  T v;

  // memcpy: element pointers may be misaligned (views at odd byte offsets).
  static Scalar load(const T* p) { T x; std::memcpy(&x, p, sizeof(T)); return {x}; }
  void store(T* p) const { std::memcpy(p, &v, sizeof(T)); }
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
