// pybind11 glue: unpack the arrays Python has validated, release the GIL, run the kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <tuple>
#include <string>
#include <utility>
#include <vector>

#include "dispatch.hpp"
#include "two_pass.hpp"

namespace py = pybind11;
using namespace fusedoptim;

namespace {

py::array as_array(py::handle h, const char* what) {
  if (!py::isinstance<py::array>(h)) throw py::type_error(std::string(what) + " must be a numpy array");
  return py::reinterpret_borrow<py::array>(h);
}

// Python's validate() has checked shapes, dtypes, contiguity and overlap; the checks here
// only keep a wrong call from this private module from reading out of bounds.
template <class Rule, int R>
void step(const py::list& params, const py::list& grads, const py::list& states, const std::vector<double>& scalars,
          unsigned flags) {
  if (scalars.size() != static_cast<std::size_t>(planned_scalars<Rule>()))
    throw std::invalid_argument(std::string(Rule::name) + ": expected " + std::to_string(planned_scalars<Rule>()) +
                                " scalars");
  if (flags >= (1u << Rule::F::count)) throw std::invalid_argument(std::string(Rule::name) + ": bad flags");
  const std::size_t n = params.size();
  if (grads.size() != n || states.size() > static_cast<std::size_t>(kMaxStates))
    throw std::invalid_argument(std::string(Rule::name) + ": operand lists do not match");
  if (n == 0) return;

  std::vector<Tensor> tensors(n);
  const py::ssize_t itemsize = as_array(params[0], "param").itemsize();
  for (std::size_t i = 0; i < n; ++i) {
    Tensor& t = tensors[i];
    py::array p = as_array(params[i], "param"), g = as_array(grads[i], "grad");
    if (p.itemsize() != itemsize || g.itemsize() != itemsize || g.size() != p.size())
      throw std::invalid_argument("grad does not match its param");
    t = Tensor{p.mutable_data(), g.data(), {}, static_cast<std::size_t>(p.size())};
    for (std::size_t k = 0; k < states.size(); ++k) {
      if (states[k].is_none()) continue;
      py::list slot = states[k].cast<py::list>();
      py::array s = as_array(slot[i], "state");
      if (s.itemsize() != itemsize || s.size() != p.size()) throw std::invalid_argument("state does not match its param");
      t.state[k] = s.mutable_data();
    }
  }
  const int dtype = itemsize == 8 ? 1 : 0;
  const KernelFn kernel = active_isa().kernels[R][dtype];
  const ReduceFn first_pass = active_isa().reducers[R][dtype];  // null for one-pass rules
  py::gil_scoped_release nogil;
  if constexpr (TwoPass<Rule>) {
    for (const Tensor& t : tensors) step_two_pass<Rule>(first_pass, kernel, t, scalars.data(), flags);
  } else {
    for (const Tensor& t : tensors) kernel(t, 0, t.size, scalars.data(), flags);
  }
}

// [first byte, one past the last byte) that an array's elements occupy, for any strides.
std::pair<std::uintptr_t, std::uintptr_t> byte_span(const py::array& a) {
  auto low = reinterpret_cast<std::uintptr_t>(a.data()), high = low;
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    const py::ssize_t extent = (a.shape(d) - 1) * a.strides(d);
    (extent < 0 ? low : high) += extent;
  }
  return {low, high + a.itemsize()};
}

// The indices of two arrays that share a byte, or None: a sort and one sweep, so a step of
// hundreds of tensors checks in microseconds (the Python fallback computes the same).
py::object find_overlap(const py::list& arrays) {
  std::vector<std::tuple<std::uintptr_t, std::uintptr_t, std::size_t>> spans;
  spans.reserve(arrays.size());
  for (std::size_t i = 0; i < arrays.size(); ++i) {
    py::array a = as_array(arrays[i], "operand");
    if (a.size() == 0) continue;
    auto [low, high] = byte_span(a);
    spans.emplace_back(low, high, i);
  }
  std::sort(spans.begin(), spans.end());
  std::uintptr_t reach = 0;
  std::size_t owner = 0;
  bool any = false;
  for (const auto& [low, high, i] : spans) {
    if (any && low < reach) return py::make_tuple(owner, i);
    if (high > reach) reach = high, owner = i, any = true;
  }
  return py::none();
}

template <class... R, int... I>
void def_rules(py::module_& m, std::tuple<R...>*, std::integer_sequence<int, I...>) {
  (m.def(R::name, &step<R, I>, py::arg("params"), py::arg("grads"), py::arg("states"), py::arg("scalars"),
         py::arg("flags")),
   ...);
}

}  // namespace

PYBIND11_MODULE(_kernels, m) {
  m.doc() = "fusedoptim's fused in-place optimizer kernels (private: call through fusedoptim).";
  def_rules(m, static_cast<Rules*>(nullptr), std::make_integer_sequence<int, kNumRules>{});
  m.def("find_overlap", &find_overlap, py::arg("arrays"));
  m.def("isa", [] { return std::string(active_isa().name); }, "The ISA level in use.");
  m.def("set_isa", [](const std::string& name) {
    try {
      set_isa(name);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  });
  m.def("isa_levels", [] {
    std::vector<std::pair<std::string, bool>> levels;
    for (const IsaTable* isa : compiled_isas()) levels.emplace_back(isa->name, cpu_supports(*isa));
    return levels;
  }, "(name, supported by this CPU) for every compiled level, lowest first.");
}
