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
#include "reduction.hpp"
#include "step.hpp"

namespace py = pybind11;
using namespace fusedoptim;

namespace fusedoptim {
void register_norms(py::module_& m);  // norms.cpp: clip_grad_norm_'s kernels
}

namespace {

using py::detail::array_descriptor_proxy;
using array_descriptor_proxy_t = py::detail::PyArrayDescr_Proxy;
using py::detail::array_proxy;
using py::detail::npy_api;

py::array as_array(py::handle h, const char* what) {
  if (!py::isinstance<py::array>(h)) throw py::type_error(std::string(what) + " must be a numpy array");
  return py::reinterpret_borrow<py::array>(h);
}

// Steps this small finish in about the time that releasing and retaking the GIL costs.
constexpr std::size_t kKeepGilElements = 1 << 14;

// The items of a list or tuple of n operands, or the one array of a single-tensor step;
// null when the shape of the call is not that.
PyObject* const* operand_items(py::handle h, bool single, std::size_t n, PyObject*& one) {
  if (single) return one = h.ptr(), &one;
  if (!PyList_Check(h.ptr()) && !PyTuple_Check(h.ptr())) return nullptr;
  if (static_cast<std::size_t>(PySequence_Fast_GET_SIZE(h.ptr())) != n) return nullptr;
  return PySequence_Fast_ITEMS(h.ptr());
}

// NumPy's type number of ml_dtypes.bfloat16, a user-defined dtype numbered when it is registered
// (fusedoptim._native tells it at import); -1 until then.
int bfloat16_type_num = -1;
constexpr int kNpyHalf = 23;  // NPY_HALF

// What NumPy's type `num` is stored as; false for anything else.
bool storage_dtype(int num, Dtype& dtype) {
  if (num == npy_api::NPY_FLOAT_) dtype = Dtype::float32;
  else if (num == npy_api::NPY_DOUBLE_) dtype = Dtype::float64;
  else if (num == kNpyHalf) dtype = Dtype::float16;
  else if (num == bfloat16_type_num) dtype = Dtype::bfloat16;
  else return false;
  return true;
}

// What an array of this descriptor is stored as; false for anything else (big-endian included).
bool storage_dtype(const array_descriptor_proxy_t* d, Dtype& dtype) {
  return d->byteorder != '>' && storage_dtype(d->type_num, dtype);
}

// A plain ndarray (not a subclass), C-contiguous, of a storage dtype, which it sets in `dtype`
// (or must equal, when `known`), shaped like `like` (when given), writeable if asked.
bool plain_array(PyObject* o, Dtype& dtype, bool known, const py::detail::PyArray_Proxy* like, bool writeable) {
  if (Py_TYPE(o) != npy_api::get().PyArray_Type_) return false;
  const auto* a = array_proxy(o);
  const int need = npy_api::NPY_ARRAY_C_CONTIGUOUS_ | (writeable ? npy_api::NPY_ARRAY_WRITEABLE_ : 0);
  if ((a->flags & need) != need) return false;
  Dtype mine;
  if (!storage_dtype(array_descriptor_proxy(a->descr), mine) || (known && mine != dtype)) return false;
  dtype = mine;
  if (like) {
    if (a->nd != like->nd) return false;
    for (int k = 0; k < a->nd; ++k)
      if (a->dimensions[k] != like->dimensions[k]) return false;
  }
  return true;
}

std::size_t num_elements(const py::detail::PyArray_Proxy* a) {
  std::size_t n = 1;
  for (int k = 0; k < a->nd; ++k) n *= static_cast<std::size_t>(a->dimensions[k]);
  return n;
}

// Whether any two of these byte ranges [first, second) share a byte.
bool any_overlap(std::vector<std::pair<std::uintptr_t, std::uintptr_t>>& spans) {
  std::sort(spans.begin(), spans.end());
  for (std::size_t k = 1; k < spans.size(); ++k)
    if (spans[k].first < spans[k - 1].second) return true;
  return false;
}

// The DLPack ABI (the "dltensor" capsule's DLManagedTensor), as much of it as `arrays_of` reads.
namespace dlpack {
struct Device {
  std::int32_t type, id;
};
struct DataType {
  std::uint8_t code, bits;
  std::uint16_t lanes;
};
struct Tensor {
  void* data;
  Device device;
  std::int32_t ndim;
  DataType dtype;
  std::int64_t* shape;
  std::int64_t* strides;  // in elements; null: C-contiguous
  std::uint64_t byte_offset;
};
struct Managed {
  Tensor tensor;
  void* context;
  void (*deleter)(Managed*);
};
constexpr std::int32_t kCpu = 1;
constexpr std::uint8_t kFloat = 2, kBfloat = 4;
// A framework's table of C functions (DLPack 1.2 and later: the capsule "dlpack_exchange_api" in its
// tensor type's __dlpack_c_exchange_api__), of which only the one below is called.
struct ExchangeApi {
  std::uint32_t major, minor;
  void* previous;
  void* allocate;
  void* managed_from_object;
  void* managed_to_object;
  // Describes a tensor of the framework in `out`, valid while the tensor is unchanged; 0 on
  // success, else -1 with a Python error set. torch's crashes on a tensor without memory of its
  // own (meta, sparse, ...): it is called only on tensors known to be dense CPU tensors, which
  // torch keeps so (neither `t.data = x` nor `t.set_(x)` changes what kind of tensor `t` is).
  int (*describe)(void* object, Tensor* out);
  void* current_stream;
};
}  // namespace dlpack

// The NumPy type number of what a DLPack tensor holds, or -1 for anything a step cannot read.
int numpy_type(const dlpack::DataType& t) {
  if (t.lanes != 1) return -1;
  if (t.code == dlpack::kBfloat) return t.bits == 16 ? bfloat16_type_num : -1;
  if (t.code != dlpack::kFloat) return -1;
  return t.bits == 32 ? npy_api::NPY_FLOAT_ : t.bits == 64 ? npy_api::NPY_DOUBLE_ : t.bits == 16 ? kNpyHalf : -1;
}

constexpr int kMaxDims = 32;  // NumPy 1's limit

// A CPU tensor of a float storage dtype, read through its framework's DLPack export (`export_`
// makes a "dltensor" capsule of it: fusedoptim.torch registers torch._C._to_dlpack, which raises
// for what it cannot describe: meta, sparse, ...), or through its exchange table (ExchangeApi).
// Its fields live as long as this object and the tensor.
struct Exported {
  py::object capsule;
  dlpack::Tensor described;
  const dlpack::Tensor* t = nullptr;
  int type_num = -1;

  // Whether `tensor` could be read; false, with no Python error left, for anything else, and for
  // a tensor whose `is_neg()` is true (DLPack has no negative bit: the export would drop it).
  bool read(PyObject* tensor, PyObject* export_) {
    if (positive(tensor)) capsule = py::reinterpret_steal<py::object>(PyObject_CallOneArg(export_, tensor));
    const auto* managed = capsule ? static_cast<dlpack::Managed*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor")) : nullptr;
    PyErr_Clear();
    return managed && readable(&managed->tensor);
  }

  // `read`, through the exchange table's `describe`, of a tensor that can only be dense or sparse
  // (the grad of a dense CPU param: torch's grad setter and autograd refuse any other kind or
  // device): whose `layout` attribute is `dense` is then a dense CPU tensor.
  bool read(PyObject* tensor, int (*describe)(void*, dlpack::Tensor*), PyObject* dense) {
    static const py::str layout("layout");
    const py::object kind = py::reinterpret_steal<py::object>(PyObject_GetAttr(tensor, layout.ptr()));
    const bool ok = kind.ptr() == dense && positive(tensor) && describe(tensor, &described) == 0;
    PyErr_Clear();
    return ok && readable(&described);
  }

  void* data() const { return static_cast<char*>(t->data) + t->byte_offset; }
  // Whether its elements lie in C order, one after another (as the kernels read a grad); an empty
  // one has none to place.
  bool c_contiguous() const {
    if (!t->strides || std::find(t->shape, t->shape + t->ndim, 0) != t->shape + t->ndim) return true;
    std::int64_t expected = 1;
    for (int d = t->ndim - 1; d >= 0; --d) {
      if (t->shape[d] != 1 && t->strides[d] != expected) return false;
      expected *= t->shape[d];
    }
    return true;
  }

 private:
  static bool positive(PyObject* tensor) {
    static const py::str is_neg("is_neg");
    const py::object neg = py::reinterpret_steal<py::object>(PyObject_VectorcallMethod(is_neg.ptr(), &tensor, 1, nullptr));
    return neg.ptr() == Py_False;
  }
  bool readable(const dlpack::Tensor* tensor) {
    if (tensor->device.type != dlpack::kCpu || tensor->ndim > kMaxDims) return false;
    t = tensor;
    return (type_num = numpy_type(t->dtype)) >= 0;
  }
};

// Read-only NumPy arrays of the memory of tensors `export_` can export (see Exported), each holding
// its tensor as base; None in place of one it cannot. A third of torch's Tensor.numpy() time,
// which is most of a small tensor's step.
py::list arrays_of(const py::list& tensors, const py::object& export_) {
  auto& api = npy_api::get();
  py::list arrays(tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    PyObject* tensor = PyList_GET_ITEM(tensors.ptr(), i);
    PyObject* array = nullptr;
    Exported e;
    if (e.read(tensor, export_.ptr())) {
      const Py_intptr_t itemsize = e.t->dtype.bits / 8;
      Py_intptr_t dims[kMaxDims], strides[kMaxDims];
      for (int d = e.t->ndim - 1; d >= 0; --d) {
        dims[d] = e.t->shape[d];
        strides[d] = e.t->strides ? e.t->strides[d] * itemsize : d + 1 < e.t->ndim ? strides[d + 1] * dims[d + 1] : itemsize;
      }
      array = api.PyArray_NewFromDescr_(api.PyArray_Type_, api.PyArray_DescrFromType_(e.type_num), e.t->ndim, dims,
                                        strides, e.data(), 0, nullptr);
      Py_XINCREF(array ? tensor : nullptr);  // the base's reference, which SetBaseObject steals
      if (array && api.PyArray_SetBaseObject_(array, tensor) != 0) Py_CLEAR(array);
      if (!array) throw py::error_already_set();
    }
    if (!array) Py_INCREF(array = Py_None);
    PyList_SET_ITEM(arrays.ptr(), i, array);
  }
  return arrays;
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
bool step(int r, py::handle params, py::handle grads, const py::tuple& states, unsigned used, const py::tuple& scalars,
          unsigned flags, bool check_only, bool validated, const py::object& reduce_sums, const py::object& modes) {
  const RuleKernels& rule = active_isa().rules[r];
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
    return true;
  }
  std::vector<py::object> alive;  // the arrays, even if another thread empties the caller's lists
  alive.reserve(n * (2 + states.size()));
  for (const auto* items : operand)
    if (items)
      for (std::size_t i = 0; i < n; ++i) alive.push_back(py::reinterpret_borrow<py::object>(items[i]));
  py::gil_scoped_release nogil;
  run_step(rule, layout, param_itemsize, tensors, s, flags, hook);
  return true;
}

// A step over param groups whose operands a layer prepared at earlier steps (fusedoptim.torch's
// usual step): it holds the kernels' arrays of the params and states, and what must still be true
// of the objects they came from, and reads only the grads, each step, from the params' `.grad`.
// The layer checks that its state entries still hold the same tensors (one count of edits); each
// step checks here, in microseconds for hundreds of tensors: each group's param list holds the
// same params in the same order; each (tensor, address) of `storages` still has that data_ptr()
// (`p.data = x` changes it); every param has a grad of the grad type, dense, readable (Exported),
// C-contiguous and shaped like its param, a group's grads of one dtype that makes a native layout
// with its params and states; no grad shares a byte with a param or state; the scalars are finite
// in the compute dtype. Then it steps every group; otherwise it changes nothing and says why
// (Outcome), and the layer takes its general path, which words any error.
class Plan {
 public:
  // What a step did: stepped; changed nothing, for the plan no longer holds (drop it: a param,
  // entry or storage it holds changed); changed nothing, for this step's grads or scalars.
  enum class Outcome { stepped, stale, declined };

  // `groups`: per group, (params, their arrays, per state slot the states' arrays or None); the
  // arrays plain, C-contiguous and writeable, shaped like their params' arrays.
  Plan(int r, const py::list& groups, const py::list& storages, const py::type& grad_type, py::object export_,
       py::object dense)
      : r_(r), grad_type_(reinterpret_cast<PyTypeObject*>(grad_type.ptr())), export_(std::move(export_)),
        dense_(std::move(dense)) {
    if (r < 0 || r >= kNumRules) throw py::value_error("Plan: no rule " + std::to_string(r));
    const RuleKernels& rule = active_isa().rules[r];
    keep_.append(groups), keep_.append(storages), keep_.append(grad_type);
    for (py::handle g : groups) {
      const auto group = g.cast<py::tuple>();
      const auto params = group[0].cast<py::list>(), arrays = group[1].cast<py::list>();
      const auto states = group[2].cast<py::tuple>();
      if (arrays.size() != params.size() || states.size() != static_cast<std::size_t>(rule.num_states))
        throw py::value_error("Plan: a group is (params, their arrays, an entry per state slot)");
      Group& mine = groups_.emplace_back();
      for (std::size_t k = 0; k < states.size(); ++k) mine.used |= states[k].is_none() ? 0u : 1u << k;
      for (std::size_t i = 0; i < params.size(); ++i) {
        Dtype dtype;
        if (!plain_array(arrays[i].ptr(), dtype, false, nullptr, true)) throw py::value_error("Plan: bad param array");
        const auto* a = array_proxy(arrays[i].ptr());
        Tensor t{a->data, nullptr, {}, num_elements(a), dtype, dtype, {}};
        for (std::size_t k = 0; k < states.size(); ++k) {
          if (states[k].is_none()) continue;
          PyObject* state = PyList_GetItem(states[k].ptr(), static_cast<Py_ssize_t>(i));
          if (!state || !plain_array(state, t.state_dtype[k], false, a, true)) throw py::value_error("Plan: bad state array");
          t.state[k] = array_proxy(state)->data;
        }
        mine.params.push_back(params[i].ptr());
        mine.tensors.push_back(t);
        mine.shapes.emplace_back(a->dimensions, a->dimensions + a->nd);
        written_.emplace_back(span_of(t.param, t.size * itemsize(t.param_dtype)));
        for (int k = 0; k < kMaxStates; ++k)
          if (t.state[k]) written_.emplace_back(span_of(t.state[k], t.size * itemsize(t.state_dtype[k])));
      }
    }
    std::erase_if(written_, [](const auto& s) { return s.first == s.second; });
    if (any_overlap(written_)) throw py::value_error("Plan: params and states must not share memory");
    for (py::handle s : storages) {
      const auto storage = s.cast<py::tuple>();
      storages_.emplace_back(storage[0].ptr(), storage[1].cast<std::uintptr_t>());
    }
    if (py::hasattr(grad_type, "__dlpack_c_exchange_api__")) {
      py::object api = grad_type.attr("__dlpack_c_exchange_api__");
      const auto* table = static_cast<const dlpack::ExchangeApi*>(PyCapsule_GetPointer(api.ptr(), "dlpack_exchange_api"));
      PyErr_Clear();
      if (table && table->major == 1) describe_ = table->describe;
    }
  }

  // One step: `params` (each group's current param list), per group its plan's scalars and flags.
  Outcome step(const py::list& params, const py::list& scalars, const py::list& flags) {
    const RuleKernels& rule = active_isa().rules[r_];
    if (params.size() != groups_.size() || scalars.size() != groups_.size() || flags.size() != groups_.size())
      throw py::value_error("Plan.step: one entry per group");
    for (auto [tensor, address] : storages_)
      if (address_of(tensor) != address) return PyErr_Clear(), Outcome::stale;
    static const py::str grad_name("grad");
    std::vector<py::object> grads;  // alive while the kernels read them, whatever another thread does
    std::vector<std::pair<std::uintptr_t, std::uintptr_t>> read;
    std::vector<std::vector<Tensor>> tensors;  // this step's: another thread may step the plan meanwhile
    std::vector<int> layouts(groups_.size());
    std::vector<std::array<double, kMaxScalars>> planned(groups_.size());
    std::vector<unsigned> bits(groups_.size());
    std::size_t total = 0;
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      const Group& group = groups_[g];
      std::vector<Tensor>& mine = tensors.emplace_back(group.tensors);
      PyObject* list = PyList_GET_ITEM(params.ptr(), g);
      if (!PyList_Check(list) || static_cast<std::size_t>(PyList_GET_SIZE(list)) != group.params.size()) return Outcome::stale;
      for (std::size_t i = 0; i < group.params.size(); ++i) {
        if (PyList_GET_ITEM(list, i) != group.params[i]) return Outcome::stale;
        py::object grad = py::reinterpret_steal<py::object>(PyObject_GetAttr(group.params[i], grad_name.ptr()));
        if (!grad || Py_TYPE(grad.ptr()) != grad_type_) return PyErr_Clear(), Outcome::declined;
        Exported e;
        Dtype dtype;
        if (!(describe_ ? e.read(grad.ptr(), describe_, dense_.ptr()) : e.read(grad.ptr(), export_.ptr())) ||
            !storage_dtype(e.type_num, dtype) || !e.c_contiguous())
          return Outcome::declined;
        const auto& shape = group.shapes[i];
        if (static_cast<std::size_t>(e.t->ndim) != shape.size() || !std::equal(shape.begin(), shape.end(), e.t->shape))
          return Outcome::declined;
        Tensor& t = mine[i];
        if (i > 0 && dtype != mine[0].grad_dtype) return Outcome::declined;
        t.grad_dtype = dtype;
        t.grad = e.data();
        if (t.size) read.emplace_back(span_of(t.grad, t.size * itemsize(dtype)));
        grads.push_back(std::move(grad));
        total += t.size;
      }
      if (mine.empty()) continue;
      if ((layouts[g] = layout_of(mine[0], group.used, true)) < 0) return Outcome::declined;
      if (!scalars_of(rule, scalars[g], mine[0].param_dtype == Dtype::float64, planned[g].data())) return Outcome::declined;
      bits[g] = flags[g].cast<unsigned>();
      if (bits[g] >= (1u << rule.num_flags)) throw py::value_error("Plan.step: bad flags");
    }
    if (touches(read)) return Outcome::declined;
    auto run = [&] {
      for (std::size_t g = 0; g < tensors.size(); ++g)
        if (!tensors[g].empty())
          run_step(rule, layouts[g], itemsize(tensors[g][0].param_dtype), tensors[g], planned[g].data(), bits[g]);
    };
    if (total < kKeepGilElements) {
      run();
    } else {
      py::gil_scoped_release nogil;
      run();
    }
    return Outcome::stepped;
  }

 private:
  struct Group {
    std::vector<PyObject*> params;  // held by keep_
    std::vector<Tensor> tensors;    // the kernels' operands but the grads
    std::vector<std::vector<Py_intptr_t>> shapes;
    unsigned used = 0;  // bit k: the step updates state slot k
  };

  // A held tensor's data_ptr(), through the framework's exchange table when it has one (a tenth of
  // the time of a call of its method); 0 with a Python error set when it fails.
  std::uintptr_t address_of(PyObject* tensor) const {
    if (describe_) {
      dlpack::Tensor t;
      return describe_(tensor, &t) == 0 ? reinterpret_cast<std::uintptr_t>(t.data) + t.byte_offset : 0;
    }
    static const py::str data_ptr("data_ptr");
    py::object now = py::reinterpret_steal<py::object>(PyObject_VectorcallMethod(data_ptr.ptr(), &tensor, 1, nullptr));
    return now ? reinterpret_cast<std::uintptr_t>(PyLong_AsVoidPtr(now.ptr())) : 0;
  }

  static std::pair<std::uintptr_t, std::uintptr_t> span_of(const void* data, std::size_t bytes) {
    const auto first = reinterpret_cast<std::uintptr_t>(data);
    return {first, first + bytes};
  }

  // Whether any of the spans `read` (any order) shares a byte with a written one (sorted, disjoint).
  bool touches(std::vector<std::pair<std::uintptr_t, std::uintptr_t>>& read) const {
    std::sort(read.begin(), read.end());
    std::size_t w = 0;
    for (const auto& [first, end] : read) {
      while (w < written_.size() && written_[w].second <= first) ++w;
      if (w < written_.size() && written_[w].first < end) return true;
    }
    return false;
  }

  // A plan's scalars as doubles, each finite once rounded to the compute dtype (the kernels round
  // each exactly so); false for one that is not (Python names it).
  static bool scalars_of(const RuleKernels& rule, py::handle scalars, bool wide, double* out) {
    if (!PyTuple_Check(scalars.ptr()) || PyTuple_GET_SIZE(scalars.ptr()) != rule.num_planned)
      throw py::value_error("Plan.step: bad scalars");
    for (int k = 0; k < rule.num_planned; ++k) {
      out[k] = PyFloat_AsDouble(PyTuple_GET_ITEM(scalars.ptr(), k));
      if (out[k] == -1.0 && PyErr_Occurred()) throw py::error_already_set();
      if (!std::isfinite(wide ? out[k] : static_cast<double>(static_cast<float>(out[k])))) return false;
    }
    return true;
  }

  int r_;
  PyTypeObject* grad_type_;  // held by keep_
  py::object export_;
  py::object dense_;  // the grad type's `layout` of a dense tensor
  int (*describe_)(void*, dlpack::Tensor*) = nullptr;  // the exchange table's, when the grad type has one
  py::list keep_;
  std::vector<Group> groups_;
  std::vector<std::pair<PyObject*, std::uintptr_t>> storages_;          // held by keep_
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> written_;      // sorted: the params' and states' bytes
};

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
              const py::object& modes) {
            return step(r, params, grads, states, used, scalars, flags, check_only, validated, reduce_sums, modes);
          },
          py::arg("params"), py::arg("grads"), py::arg("states"), py::arg("used"), py::arg("scalars"), py::arg("flags"),
          py::arg("check_only") = false, py::arg("validated") = false, py::arg("reduce_sums") = py::none(),
          py::arg("modes") = py::none());
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
  m.def("arrays_of", &arrays_of, py::arg("tensors"), py::arg("export"));
  py::class_<Plan> plan(m, "Plan", "A layer's prepared step (fusedoptim.torch): see cpp/bindings.cpp.");
  plan.def(py::init<int, const py::list&, const py::list&, const py::type&, py::object, py::object>(),
           py::arg("rule"), py::arg("groups"), py::arg("storages"), py::arg("grad_type"), py::arg("export"),
           py::arg("dense"))
      .def("step", [](Plan& self, const py::list& params, const py::list& scalars, const py::list& flags) {
        return static_cast<int>(self.step(params, scalars, flags));
      }, py::arg("params"), py::arg("scalars"), py::arg("flags"), "One step: a Plan.Outcome as an int.");
  plan.attr("STEPPED") = static_cast<int>(Plan::Outcome::stepped);
  plan.attr("STALE") = static_cast<int>(Plan::Outcome::stale);
  plan.attr("DECLINED") = static_cast<int>(Plan::Outcome::declined);
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
