#pragma once
#include "common.hpp"

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

// ASGD, averaged SGD (torch.optim.ASGD). The step size eta and the averaging weight mu are
// per-param host state, computed after the param's previous step; `averaging` is mu != 1
// (before that, torch copies the param into ax rather than computing ax + (param - ax) * 1).
struct Asgd {
  static constexpr const char* name = "asgd";
  struct S { enum { eta, one_minus_lambd_eta, mu, weight_decay, count }; };
  struct F {
    enum : unsigned { maximize = 1, weight_decay = 2, averaging = 4 };
    static constexpr int count = 3;
  };
  enum State { ax, num_states };

  template <unsigned flags, class V, class X>
  static void update(const Scalars<V, S::count>& s, const X& x, std::size_t i) {
    V p = load<V>(x.param, i);
    V g = l2_gradient<Asgd, flags>(s, x, i, p);
    // The decay and the gradient step, each rounded, as torch takes them.
    p = p * s[S::one_minus_lambd_eta];
    p = p - s[S::eta] * g;
    store(x.param, i, p);
    V a = p;
    if constexpr (flags & F::averaging) {
      a = load<V>(x.state[ax], i);
      a = a + (p - a) * s[S::mu];
    }
    store(x.state[ax], i, a);
  }
};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
