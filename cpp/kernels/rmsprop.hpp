#pragma once
#include "rule.hpp"

namespace fusedoptim {

// RMSProp, optionally centered and with momentum (torch.optim.RMSprop).
struct RMSprop {
  static constexpr const char* name = "rmsprop";
  struct S { enum { lr, alpha, one_minus_alpha, eps, momentum, weight_decay, count }; };
  struct F {
    enum : unsigned { maximize = 1, weight_decay = 2, centered = 4, momentum = 8 };
    static constexpr int count = 4;
  };
  enum State { square_avg, momentum_buffer, grad_avg };

  template <unsigned flags, class V>
  static void update(const Scalars<V, S::count>& s, const Operands<typename V::value_type>& x, std::size_t i) {
    V p = V::load(x.param + i);
    V g = l2_gradient<RMSprop, flags>(s, x, i, p);
    V sq = s[S::alpha] * V::load(x.state[square_avg] + i) + s[S::one_minus_alpha] * (g * g);
    sq.store(x.state[square_avg] + i);
    V avg;
    if constexpr (flags & F::centered) {
      V ga = s[S::alpha] * V::load(x.state[grad_avg] + i) + s[S::one_minus_alpha] * g;
      ga.store(x.state[grad_avg] + i);
      avg = sqrt(sq - ga * ga) + s[S::eps];
    } else {
      avg = sqrt(sq) + s[S::eps];
    }
    if constexpr (flags & F::momentum) {
      V buf = s[S::momentum] * V::load(x.state[momentum_buffer] + i) + g / avg;
      buf.store(x.state[momentum_buffer] + i);
      p = p - s[S::lr] * buf;
    } else {
      p = p - s[S::lr] * (g / avg);
    }
    p.store(x.param + i);
  }
};

}  // namespace fusedoptim
