// What every rule's update sees: the operands of one tensor and the per-step scalars,
// broadcast once per call into the vector type the update is instantiated with.
#pragma once
#include <cstddef>

namespace fusedoptim {

inline constexpr int kMaxStates = 4;

// Type-erased operands of one tensor, as the bindings hand them to the kernels.
struct Tensor {
  void* param;
  const void* grad;
  void* state[kMaxStates];  // in the rule's State order; unused slots are null
  std::size_t size;
};

template <class T>
struct Operands {
  T* param;
  const T* grad;
  T* state[kMaxStates];

  // Always inlined: Operands<T> is the same symbol in every ISA's translation unit, so an
  // out-of-line copy built with one level's -m flags could be linked into another level's path.
  [[gnu::always_inline]] explicit Operands(const Tensor& t)
      : param(static_cast<T*>(t.param)), grad(static_cast<const T*>(t.grad)), state{} {
    for (int k = 0; k < kMaxStates; ++k) state[k] = static_cast<T*>(t.state[k]);
  }
};

// Scalars arrive as doubles already rounded to T on the host, so the cast is exact.
template <class V, int N>
struct Scalars {
  V v[N];
  explicit Scalars(const double* s) {
    for (int k = 0; k < N; ++k) v[k] = V::broadcast(static_cast<typename V::value_type>(s[k]));
  }
  const V& operator[](int k) const { return v[k]; }
};

}  // namespace fusedoptim
