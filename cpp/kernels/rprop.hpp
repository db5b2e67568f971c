#pragma once
#include "common.hpp"

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

// Rprop, resilient backpropagation (torch.optim.Rprop): a step size per element, grown while the
// gradient keeps its sign and shrunk when it flips, and a step of that size against the sign.
// Signs are torch.sign's: NaN counts as 0, so a NaN gradient leaves its param and step size as
// they are (where np.sign, and so Lion's sign, would spread it).
struct Rprop {
  static constexpr const char* name = "rprop";
  struct S { enum { etaminus, etaplus, step_size_min, step_size_max, count }; };
  struct F {
    enum : unsigned { maximize = 1 };
    static constexpr int count = 1;
  };
  enum State { prev, step_size, num_states };

  template <unsigned flags, class V, class X>
  static void update(const Scalars<V, S::count>& s, const X& x, std::size_t i) {
    const V zero = V::broadcast(0), one = V::broadcast(1);
    V g = load<V>(x.grad, i);
    if constexpr (flags & F::maximize) g = -g;
    const V d = g * load<V>(x.state[prev], i);
    const V factor = select(d > zero, s[S::etaplus], select(d < zero, s[S::etaminus], one));
    V size = load<V>(x.state[step_size], i) * factor;
    size = minimum(maximum(size, s[S::step_size_min]), s[S::step_size_max]);  // torch's clamp: NaN stays
    store(x.state[step_size], i, size);
    // torch finds the flipped signs by their factor, so an etaminus that rounds to 1 would zero
    // the unchanged ones too: kept, to be torch's.
    g = select(factor == s[S::etaminus], zero, g);
    store(x.state[prev], i, g);
    const V direction = select(g > zero, one, select(g < zero, -one, zero));
    store(x.param, i, load<V>(x.param, i) - size * direction);
  }
};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
