#pragma once
#include "common.hpp"

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

// SGD with momentum, dampening, Nesterov, L2 weight decay (torch.optim.SGD).
struct Sgd {
  static constexpr const char* name = "sgd";
  struct S { enum { lr, momentum, one_minus_dampening, weight_decay, count }; };
  struct F {
    enum : unsigned { maximize = 1, weight_decay = 2, momentum = 4, nesterov = 8, first_step = 16 };
    static constexpr int count = 5;
  };
  enum State { momentum_buffer, num_states };

  template <unsigned flags, class V, class X>
  static void update(const Scalars<V, S::count>& s, const X& x, std::size_t i) {
    V p = load<V>(x.param, i);
    V g = l2_gradient<Sgd, flags>(s, x, i, p);
    if constexpr (flags & F::momentum) {
      // torch starts the buffer as a copy of the first gradient, undamped.
      V buf = g;
      if constexpr (!(flags & F::first_step))
        buf = s[S::momentum] * load<V>(x.state[momentum_buffer], i) + s[S::one_minus_dampening] * g;
      store(x.state[momentum_buffer], i, buf);
      if constexpr (flags & F::nesterov) g = g + s[S::momentum] * buf;
      else g = buf;
    }
    p = p - s[S::lr] * g;
    store(x.param, i, p);
  }
};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
