// pybind11 glue: recognize a step's arrays, release the GIL, run the kernel on the step's threads.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <tuple>
#include <string>
#include <utility>
#include <vector>

#include "chunks.hpp"
#include "dispatch.hpp"
#include "numpy_arrays.hpp"
#include "reduction.hpp"
#include "step.hpp"

namespace py = pybind11;
using namespace fusedoptim;

namespace fusedoptim {
void register_norms(py::module_& m);  // norms.cpp: clip_grad_norm_'s kernels
void register_plan(py::module_& m);   // plan.cpp: fusedoptim.torch's DLPack reader and Plan
}

namespace {

py::array as_array(py::handle h, const char* what) {
  if (!py::isinstance<py::array>(h)) throw py::type_error(std::string(what) + " must be a numpy array");
  return py::reinterpret_borrow<py::array>(h);
}

// The items of a list or tuple of n operands, or the one array of a single-tensor step;
// null when the shape of the call is not that.
PyObject* const* operand_items(py::handle h, bool single, std::size_t n, PyObject*& one) {
  if (single) return one = h.ptr(), &one;
  if (!PyList_Check(h.ptr()) && !PyTuple_Check(h.ptr())) return nullptr;
  if (static_cast<std::size_t>(PySequence_Fast_GET_SIZE(h.ptr())) != n) return nullptr;
  return PySequence_Fast_ITEMS(h.ptr());
}

// Sets the modes of a validated step's tensors (see step): a bad operand here is a bug of the
// caller's, not the user's input, so it throws.
void set_modes(const py::tuple& modes, bool single, std::vector<Tensor>& tensors) {
  if (modes.size() != 5) throw std::invalid_argument("modes: (masters, compensations, keys, rounding, grad_scale)");
  const std::size_t n = tensors.size();
  PyObject* ones[3];
  PyObject* const* lists[3] = {};
  for (int k = 0; k < 3; ++k)
    if (!modes[k].is_none() && !(lists[k] = operand_items(modes[k], single, n, ones[k])))
      throw std::invalid_argument("modes: a list per param");
  const int rounding = modes[3].cast<int>();
  if (rounding < 0 || rounding > static_cast<int>(Rounding::kahan)) throw std::invalid_argument("modes: rounding");
  const double grad_scale = modes[4].cast<double>();
  for (std::size_t i = 0; i < n; ++i) {
    Tensor& t = tensors[i];
    t.rounding = static_cast<Rounding>(rounding);
    t.grad_scale = grad_scale;
    Dtype dtype = Dtype::float32;
    if (lists[0]) {
      if (!plain_array(lists[0][i], dtype, true, nullptr, true) || num_elements(array_proxy(lists[0][i])) != t.size)
        throw std::invalid_argument("modes: masters must be float32 arrays like their params");
      t.master = array_proxy(lists[0][i])->data;
    }
    dtype = t.param_dtype;
    if (lists[1]) {
      if (!plain_array(lists[1][i], dtype, true, nullptr, true) || num_elements(array_proxy(lists[1][i])) != t.size)
        throw std::invalid_argument("modes: compensations must be arrays like their params");
      t.compensation = array_proxy(lists[1][i])->data;
    }
    if (lists[2]) t.key = py::reinterpret_borrow<py::object>(lists[2][i]).cast<std::uint32_t>();
  }
}

// One step of rule `r` (its index in every ISA table) over a list of tensors (or one tensor), in place.
//
// Python's validator (_validate.operands) is the one judge of a step's input and the one
// author of its error messages. This function only recognizes the common case, checked in
// microseconds for hundreds of tensors: plain C-contiguous ndarrays, each argument of one
// storage dtype and the whole step of a natively compiled layout (dispatch.hpp: every dtype on
// its own, bf16 with float32 states), grads and states shaped like their params, params and
// states writeable, no two operands sharing a byte, every scalar finite once rounded to the
// compute dtype. It steps that case and returns True; for anything else it returns False having
// touched nothing, and the caller hands the step to the validator. Everything accepted here, the
// validator accepts too (tests/test_fast_path.py checks it). With `check_only`, it returns whether
// it would step and steps nothing: a step of several calls (param groups) checks them all before
// running any. With `validated`, the caller has validated the step (_backends.run): any storage
// the validator accepts is stepped, by its compute dtype's catch-all layout where none is native.
//
// `states` holds one entry per state slot (the rule's State order); bit k of `used` says the
// step updates slot k, whose entry then must be operands like `grads`.
//
// `reduce_sums` (None, or a callable; two-pass rules only) is called between the passes with a
// float64 array of each tensor's sums (num_tensors x num_sums), which it may change in place:
// a tensor sharded across processes gets its whole norm that way (fusedoptim.torch, DTensors).
//
// `modes` (validated steps only: _backends.run, after _validate.operands checked them) sets what
// a param is beyond its storage (dispatch.hpp's Tensor, _storage.Precision): None, or a tuple
// (masters, compensations, keys, rounding, grad_scale), the lists None where unused.
//
// `record` (None, or a tuple (dicts, key, value)) is set in each dict, as dict.update sets it, once
// the step is taken and before any Python code runs: a caller's record of the step (the NumPy
// layer's step counts) that no Ctrl-C can separate from it.
bool step(int r, py::handle params, py::handle grads, const py::tuple& states, unsigned used, const py::tuple& scalars,
          unsigned flags, bool check_only, bool validated, const py::object& reduce_sums, const py::object& modes,
          const py::object& record) {
  const RuleKernels& rule = active_isa().rules[r];
  std::vector<PyObject*> records;  // the dicts, held by `record`
  py::object key, value;
  if (!record.is_none()) {
    const auto entries = record.cast<py::tuple>();
    if (entries.size() != 3 || !PyList_Check(entries[0].ptr()) || !PyUnicode_Check(entries[1].ptr()))
      throw std::invalid_argument("record: (a list of dicts, a key, a value)");
    for (py::handle d : entries[0]) {
      if (!PyDict_Check(d.ptr())) throw std::invalid_argument("record: (a list of dicts, a key, a value)");
      records.push_back(d.ptr());
    }
    key = entries[1], value = entries[2];
  }
  auto recorded = [&] {
    for (PyObject* d : records)
      if (PyDict_SetItem(d, key.ptr(), value.ptr()) != 0) throw py::error_already_set();
    return true;
  };
  SumsHook hook;
  if (!reduce_sums.is_none()) {
    if (!rule.num_sums) throw std::invalid_argument(std::string(rule.name) + ": reduce_sums is for two-pass rules");
    hook = [&reduce_sums](double* sums, std::size_t n, std::size_t k) {
      py::gil_scoped_acquire gil;
      py::array_t<double> rows({n, k});  // owned, so the callable cannot keep a view of this step's buffer
      std::copy(sums, sums + n * k, rows.mutable_data());
      reduce_sums(rows);
      if (rows.ndim() != 2 || static_cast<std::size_t>(rows.shape(0)) != n || static_cast<std::size_t>(rows.shape(1)) != k)
        throw std::invalid_argument("reduce_sums must change the sums in place");
      std::copy(rows.data(), rows.data() + n * k, sums);
    };
  }
  if (scalars.size() != static_cast<std::size_t>(rule.num_planned))
    throw std::invalid_argument(std::string(rule.name) + ": expected " + std::to_string(rule.num_planned) + " scalars");
  if (flags >= (1u << rule.num_flags)) throw std::invalid_argument(std::string(rule.name) + ": bad flags");
  if (states.size() != static_cast<std::size_t>(rule.num_states) || used >= (1u << states.size()))
    throw std::invalid_argument(std::string(rule.name) + ": bad states");
  double s[kMaxScalars];
  for (int k = 0; k < rule.num_planned; ++k) {
    s[k] = PyFloat_AsDouble(PyTuple_GET_ITEM(scalars.ptr(), k));
    if (s[k] == -1.0 && PyErr_Occurred()) throw py::error_already_set();
  }

  const bool single = !PyList_Check(params.ptr()) && !PyTuple_Check(params.ptr());
  const std::size_t n = single ? 1 : static_cast<std::size_t>(PySequence_Fast_GET_SIZE(params.ptr()));
  PyObject* ones[2 + kMaxStates];
  PyObject* const* operand[2 + kMaxStates] = {};  // params, grads, then each used state slot
  if (!(operand[0] = operand_items(params, single, n, ones[0]))) return false;
  if (!(operand[1] = operand_items(grads, single, n, ones[1]))) return false;
  for (std::size_t k = 0; k < states.size(); ++k)
    if ((used >> k & 1) && !(operand[2 + k] = operand_items(states[k], single, n, ones[2 + k]))) return false;

  std::vector<Tensor> tensors(n);
  Dtype dtypes[2 + kMaxStates] = {};  // each argument's, from its first operand
  for (std::size_t i = 0; i < n; ++i) {
    if (!plain_array(operand[0][i], dtypes[0], i > 0, nullptr, true)) return false;
    const auto* p = array_proxy(operand[0][i]);
    for (int k = 1; k < 2 + kMaxStates; ++k)
      if (operand[k] && !plain_array(operand[k][i], dtypes[k], i > 0, p, k != 1)) return false;
    Tensor& t = tensors[i];
    t = Tensor{p->data, nullptr, {}, num_elements(p), dtypes[0], dtypes[1], {}};
    for (int k = 2; k < 2 + kMaxStates; ++k) {
      t.state_dtype[k - 2] = dtypes[k];
      if (operand[k]) t.state[k - 2] = array_proxy(operand[k][i])->data;
    }
    t.grad = array_proxy(operand[1][i])->data;
  }
  if (!modes.is_none()) {
    if (!validated) return false;
    set_modes(py::reinterpret_borrow<py::tuple>(modes), single, tensors);
  }
  if (n == 0) dtypes[0] = dtypes[1] = Dtype::float32;  // nothing to step: any layout does
  Tensor first = n ? tensors[0] : Tensor{nullptr, nullptr, {}, 0, dtypes[0], dtypes[1], {}};
  for (int k = 0; k < kMaxStates; ++k) first.state_dtype[k] = dtypes[2 + k];
  const int layout = layout_of(first, used, !validated);
  if (layout < 0) return false;

  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> spans;
  spans.reserve(n * (2 + states.size()));
  auto span = [&](const void* data, std::size_t bytes) {
    spans.emplace_back(reinterpret_cast<std::uintptr_t>(data), reinterpret_cast<std::uintptr_t>(data) + bytes);
  };
  std::size_t total = 0;
  for (const Tensor& t : tensors) {
    total += t.size;
    if (t.size == 0) continue;
    span(t.param, t.size * itemsize(t.param_dtype));
    span(t.grad, t.size * itemsize(t.grad_dtype));
    for (int k = 0; k < kMaxStates; ++k)
      if (t.state[k]) span(t.state[k], t.size * itemsize(t.state_dtype[k]));
    if (t.master) span(t.master, t.size * itemsize(Dtype::float32));
    if (t.compensation) span(t.compensation, t.size * itemsize(t.param_dtype));
  }
  if (any_overlap(spans)) return false;
  // A scalar finite in double but not in the compute dtype (lr=1e300 on float32): decline, so
  // that Python names the hyperparameter. The kernels round each scalar exactly like this.
  const bool wide = dtypes[0] == Dtype::float64;
  for (int k = 0; k < rule.num_planned; ++k)
    if (!std::isfinite(wide ? s[k] : static_cast<double>(static_cast<float>(s[k])))) return false;
  if (check_only) return true;

  const std::size_t param_itemsize = itemsize(dtypes[0]);
  if (total < kKeepGilElements) {
    run_step(rule, layout, param_itemsize, tensors, s, flags, hook);
    return recorded();
  }
  std::vector<py::object> alive;  // the arrays, even if another thread empties the caller's lists
  alive.reserve(n * (2 + states.size()));
  for (const auto* items : operand)
    if (items)
      for (std::size_t i = 0; i < n; ++i) alive.push_back(py::reinterpret_borrow<py::object>(items[i]));
  {
    py::gil_scoped_release nogil;
    run_step(rule, layout, param_itemsize, tensors, s, flags, hook);
  }
  return recorded();
}

// The roof kernel over fp32 arrays of one size: reads each of `reads`, writes each of `writes`
// (which may be among the reads, as a rule's params and states are), on the step's threads.
void roof(const py::list& reads, const py::list& writes) {
  if (reads.empty() || writes.empty() || reads.size() > kMaxStreams || writes.size() > kMaxStreams)
    throw py::value_error("roof: 1 to " + std::to_string(kMaxStreams) + " reads and writes");
  std::vector<py::array_t<float, py::array::c_style>> keep;
  auto pointer = [&](py::handle h, bool writeable) {
    auto a = as_array(h, "roof operand");
    if (a.dtype().num() != npy_api::NPY_FLOAT_ || !(a.flags() & py::array::c_style) || (writeable && !a.writeable()))
      throw py::value_error("roof operands must be C-contiguous float32 arrays, the written ones writeable");
    keep.emplace_back(py::reinterpret_borrow<py::array_t<float, py::array::c_style>>(a));
    return static_cast<float*>(a.mutable_data());
  };
  Streams streams{{}, {}, static_cast<int>(reads.size()), static_cast<int>(writes.size()), 0};
  for (std::size_t k = 0; k < reads.size(); ++k) streams.read[k] = pointer(reads[k], false);
  for (std::size_t k = 0; k < writes.size(); ++k) streams.write[k] = pointer(writes[k], true);
  streams.size = static_cast<std::size_t>(keep[0].size());
  for (const auto& a : keep)
    if (static_cast<std::size_t>(a.size()) != streams.size) throw py::value_error("roof operands must have one size");
  const RoofFn kernel = active_roof();
  py::gil_scoped_release nogil;
  for_each_chunk(std::vector<Streams>{streams}, sizeof(float),
                 [&](const Streams& x, std::size_t begin, std::size_t end) { kernel(x, begin, end); });
}

// unscale_and_check_ on validated grads (_backends.unscale_and_check): plain, C-contiguous,
// writeable arrays of storage dtypes, distinct.
bool unscale_and_check(const py::list& arrays, double inv_scale) {
  std::vector<Grad> grads;
  std::size_t total = 0;
  for (py::handle h : arrays) {
    Dtype dtype;
    if (!plain_array(h.ptr(), dtype, false, nullptr, true)) throw py::value_error("unscale_and_check: bad grad");
    const auto* a = array_proxy(h.ptr());
    grads.push_back({a->data, num_elements(a), dtype});
    total += grads.back().size;
  }
  if (total < kKeepGilElements) return run_unscale(grads, inv_scale);
  py::gil_scoped_release nogil;  // `arrays` (the caller's own list) keeps them alive
  return run_unscale(grads, inv_scale);
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

}  // namespace

PYBIND11_MODULE(_kernels, m) {
  m.doc() = "fusedoptim's fused in-place optimizer kernels (private: call through fusedoptim).";
  // Every level's table has the same layout (each is built from the same rule headers).
  py::list rules;
  for (int r = 0; r < kNumRules; ++r) {
    const RuleKernels& rule = compiled_isas().front()->rules[r];
    m.def(rule.name,
          [r](py::handle params, py::handle grads, const py::tuple& states, unsigned used, const py::tuple& scalars,
              unsigned flags, bool check_only, bool validated, const py::object& reduce_sums,
              const py::object& modes, const py::object& record) {
            return step(r, params, grads, states, used, scalars, flags, check_only, validated, reduce_sums, modes,
                        record);
          },
          py::arg("params"), py::arg("grads"), py::arg("states"), py::arg("used"), py::arg("scalars"), py::arg("flags"),
          py::arg("check_only") = false, py::arg("validated") = false, py::arg("reduce_sums") = py::none(),
          py::arg("modes") = py::none(), py::arg("record") = py::none());
    rules.append(py::dict(py::arg("name") = rule.name, py::arg("num_planned") = rule.num_planned,
                          py::arg("num_flags") = rule.num_flags, py::arg("num_states") = rule.num_states,
                          py::arg("num_sums") = rule.num_sums));
  }
  // The layout the Python registry must follow, checked at import (fusedoptim._native).
  m.attr("RULES") = rules;
  m.attr("REDUCTION_BLOCK") = kBlock;
  m.attr("REDUCTION_LANES") = kLanes;
  m.attr("COMPILER") = FUSEDOPTIM_COMPILER;
  m.def("find_overlap", &find_overlap, py::arg("arrays"));
  register_plan(m);
  m.def("unscale_and_check", &unscale_and_check, py::arg("grads"), py::arg("inv_scale"));
  m.def("_register_bfloat16", [](const py::dtype& bfloat16) { bfloat16_type_num = bfloat16.num(); },
        "Tells the extension NumPy's type number of ml_dtypes.bfloat16 (fusedoptim._native, at import).");
  m.def("isa", [] { return std::string(active_isa().name); }, "The ISA level in use.");
  m.def("set_isa", [](const std::string& name) {
    try {
      set_isa(name);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  });
  m.def("roof", &roof, py::arg("reads"), py::arg("writes"));
  register_norms(m);
  m.def("num_threads", &num_threads, "Threads a step may use.");
  m.attr("THREAD_BYTES") = kThreadBytes;  // a step uses one thread per this many bytes of each operand
  // fusedoptim._config validates the count (an int within its limit) before it gets here.
  m.def("set_num_threads", [](int threads) {
    if (threads < 1) throw py::value_error("Invalid num_threads: " + std::to_string(threads) + " (must be >= 1)");
    py::gil_scoped_release nogil;  // it may wait for a step in another thread to end
    set_num_threads(threads);
  });
  m.def("_pool_stats", [] {
    const PoolStats stats = pool_stats();
    return std::make_pair(stats.workers, stats.offers);
  }, "(workers alive, jobs offered to workers so far), for tests.");
  m.def("_hold_pool_locks", [](double seconds) {
    py::gil_scoped_release nogil;
    hold_pool_locks(std::chrono::milliseconds(static_cast<long long>(seconds * 1000)));
  }, "Holds the pool's locks for `seconds` (GIL released), for tests of fork safety.");
  m.def("_is_native", [](const std::string& param, const std::string& grad, const std::string& state, bool master,
                         double grad_scale) {
    auto dtype = [](const std::string& name) {
      for (auto [known, d] : {std::pair{"float32", Dtype::float32}, {"float64", Dtype::float64},
                              {"bfloat16", Dtype::bfloat16}, {"float16", Dtype::float16}})
        if (name == known) return d;
      throw py::value_error("unknown dtype " + name);
    };
    char somewhere;
    Tensor t{nullptr, nullptr, {}, 0, dtype(param), dtype(grad), {dtype(state)}};
    t.master = master ? &somewhere : nullptr;
    t.grad_scale = grad_scale;
    return layout_of(t, 1, false) < kAnyFloat;
  }, "Whether a step of this storage (one state) and these modes runs a native layout, not the catch-all, for tests.");
  m.def("isa_levels", [] {
    std::vector<std::pair<std::string, bool>> levels;
    for (const IsaTable* isa : compiled_isas()) levels.emplace_back(isa->name, cpu_supports(*isa));
    return levels;
  }, "(name, supported by this CPU) for every compiled level, lowest first.");
}
