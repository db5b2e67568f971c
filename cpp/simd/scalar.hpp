// One element at a time: the baseline ISA level and the tail of every vector loop.
// Lives in the per-ISA namespace so that copies compiled with different -m flags never merge.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstring>

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
