#pragma once
#include "rule.hpp"

namespace fusedoptim {

// Lion (Chen et al., 2023) with decoupled weight decay in the published reference's op order:
// param is scaled by decay_factor = 1 - lr * weight_decay before the signed step.
struct Lion {
  static constexpr const char* name = "lion";
  struct S { enum { lr, beta1, one_minus_beta1, beta2, one_minus_beta2, decay_factor, count }; };
  struct F {
    enum : unsigned { maximize = 1, weight_decay = 2 };
    static constexpr int count = 2;
  };
  enum State { exp_avg };

  template <unsigned flags, class V>
  static void update(const Scalars<V, S::count>& s, const Operands<typename V::value_type>& x, std::size_t i) {
    V p = V::load(x.param + i);
    V g = V::load(x.grad + i);
    if constexpr (flags & F::maximize) g = -g;
    V m = V::load(x.state[exp_avg] + i);
    V c = s[S::beta1] * m + s[S::one_minus_beta1] * g;
    if constexpr (flags & F::weight_decay) p = p * s[S::decay_factor];
    p = p - s[S::lr] * sign(c);
    p.store(x.param + i);
    m = s[S::beta2] * m + s[S::one_minus_beta2] * g;
    m.store(x.state[exp_avg] + i);
  }
};

}  // namespace fusedoptim
