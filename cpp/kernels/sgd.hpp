#pragma once
#include "rule.hpp"

namespace fusedoptim {

// SGD with momentum, dampening, Nesterov, L2 weight decay (torch.optim.SGD).
struct Sgd {
  static constexpr const char* name = "sgd";
  struct S { enum { lr, momentum, one_minus_dampening, weight_decay, count }; };
  struct F {
    enum : unsigned { maximize = 1, weight_decay = 2, momentum = 4, nesterov = 8, first_step = 16 };
    static constexpr int count = 5;
  };
  enum State { momentum_buffer };

  template <unsigned flags, class V>
  static void update(const Scalars<V, S::count>& s, const Operands<typename V::value_type>& x, std::size_t i) {
    V p = V::load(x.param + i);
    V g = l2_gradient<Sgd, flags>(s, x, i, p);
    if constexpr (flags & F::momentum) {
      // torch starts the buffer as a copy of the first gradient, undamped.
      V buf = g;
      if constexpr (!(flags & F::first_step))
        buf = s[S::momentum] * V::load(x.state[momentum_buffer] + i) + s[S::one_minus_dampening] * g;
      buf.store(x.state[momentum_buffer] + i);
      if constexpr (flags & F::nesterov) g = g + s[S::momentum] * buf;
      else g = buf;
    }
    p = p - s[S::lr] * g;
    p.store(x.param + i);
  }
};

}  // namespace fusedoptim
