#pragma once
#include "common.hpp"

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

// AdaGrad (torch.optim.Adagrad); `clr` is the lr decayed for this step.
struct Adagrad {
  static constexpr const char* name = "adagrad";
  struct S { enum { clr, eps, weight_decay, count }; };
  struct F {
    enum : unsigned { maximize = 1, weight_decay = 2 };
    static constexpr int count = 2;
  };
  enum State { sum, num_states };

  template <unsigned flags, class V, class X>
  static void update(const Scalars<V, S::count>& s, const X& x, std::size_t i) {
    V p = load<V>(x.param, i);
    V g = l2_gradient<Adagrad, flags>(s, x, i, p);
    V acc = load<V>(x.state[sum], i) + g * g;
    store(x.state[sum], i, acc);
    V std = sqrt(acc) + s[S::eps];
    p = p - s[S::clr] * (g / std);
    store(x.param, i, p);
  }
};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
