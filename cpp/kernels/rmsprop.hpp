#pragma once
#include "common.hpp"

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

// RMSProp, optionally centered and with momentum (torch.optim.RMSprop).
struct RMSprop {
  static constexpr const char* name = "rmsprop";
  struct S { enum { lr, alpha, one_minus_alpha, eps, momentum, weight_decay, count }; };
  struct F {
    enum : unsigned { maximize = 1, weight_decay = 2, centered = 4, momentum = 8 };
    static constexpr int count = 4;
  };
  enum State { square_avg, momentum_buffer, grad_avg, num_states };

  template <unsigned flags, class V, class X>
  static void update(const Scalars<V, S::count>& s, const X& x, std::size_t i) {
    V p = load<V>(x.param, i);
    V g = l2_gradient<RMSprop, flags>(s, x, i, p);
    V sq = s[S::alpha] * load<V>(x.state[square_avg], i) + s[S::one_minus_alpha] * (g * g);
    store(x.state[square_avg], i, sq);
    V avg;
    if constexpr (flags & F::centered) {
      V ga = s[S::alpha] * load<V>(x.state[grad_avg], i) + s[S::one_minus_alpha] * g;
      store(x.state[grad_avg], i, ga);
      avg = sqrt(sq - ga * ga) + s[S::eps];
    } else {
      avg = sqrt(sq) + s[S::eps];
    }
    if constexpr (flags & F::momentum) {
      V buf = s[S::momentum] * load<V>(x.state[momentum_buffer], i) + g / avg;
      store(x.state[momentum_buffer], i, buf);
      p = p - s[S::lr] * buf;
    } else {
      p = p - s[S::lr] * (g / avg);
    }
    store(x.param, i, p);
  }
};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
