#pragma once
#include "rule.hpp"

namespace fusedoptim {

// AdaGrad (torch.optim.Adagrad); `clr` is the lr decayed for this step.
struct Adagrad {
  static constexpr const char* name = "adagrad";
  struct S { enum { clr, eps, weight_decay, count }; };
  struct F {
    enum : unsigned { maximize = 1, weight_decay = 2 };
    static constexpr int count = 2;
  };
  enum State { sum };

  template <unsigned flags, class V>
  static void update(const Scalars<V, S::count>& s, const Operands<typename V::value_type>& x, std::size_t i) {
    V p = V::load(x.param + i);
    V g = l2_gradient<Adagrad, flags>(s, x, i, p);
    V acc = V::load(x.state[sum] + i) + g * g;
    acc.store(x.state[sum] + i);
    V std = sqrt(acc) + s[S::eps];
    p = p - s[S::clr] * (g / std);
    p.store(x.param + i);
  }
};

}  // namespace fusedoptim
