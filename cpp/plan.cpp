// fusedoptim.torch's fast path in the extension: the DLPack reader of a framework's tensors
// (`arrays_of`, `Exported`) and the `Plan` of a layer's prepared step.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "dispatch.hpp"
#include "numpy_arrays.hpp"
#include "step.hpp"

namespace fusedoptim {

namespace {

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

// A step over param groups whose operands a layer prepared at earlier steps (fusedoptim.torch's
// usual step): it holds the kernels' arrays of the params and states, and what must still be true
// of the objects they came from, and reads only the grads, each step, from the params' `.grad`.
// The layer checks that its state entries still hold the same tensors (one count of edits); each
// step checks here, in microseconds for hundreds of tensors: each group's param list holds the
// same params in the same order; each (tensor, address) of `storages` still has that data_ptr()
// (`p.data = x` changes it); every param has a grad of the grad type, dense, readable (Exported),
// C-contiguous and shaped like its param, a group's grads of one dtype that makes a native layout
// with its params and states; no grad shares a byte with a param or state; the scalars are finite
// in the compute dtype. Then it steps every group and advances its step counts; otherwise it
// changes nothing and says why (Outcome), and the layer takes its general path, which words any
// error. A group's params may have taken different numbers of steps (one skipped while its grad was
// None): each part of the group, the params of one count, steps with its own scalars, as the
// general path steps each count's bucket in a call of its own (the kernels are elementwise, so the
// bits do not depend on which tensors share a call).
class Plan {
 public:
  // What a step did: stepped; changed nothing, for the plan no longer holds (drop it: a param,
  // entry or storage it holds changed); changed nothing, for this step's grads or scalars.
  enum class Outcome { stepped, stale, declined };

  // `groups`: per group, (params, their arrays, per state slot the states' arrays or None, the
  // params' step counts or None); the arrays plain, C-contiguous and writeable, shaped like their
  // params' arrays; the counts a float32 or float64 array of one count per param, advanced by the
  // step itself (under the GIL, so that no Python code, a Ctrl-C's handler, runs between the
  // kernels and the counts).
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
      if (group.size() != 4 || arrays.size() != params.size() || states.size() != static_cast<std::size_t>(rule.num_states))
        throw py::value_error("Plan: a group is (params, their arrays, an entry per state slot, counts)");
      Group& mine = groups_.emplace_back();
      if (!group[3].is_none()) {
        PyObject* counts = group[3].ptr();
        if (!plain_array(counts, mine.counts_dtype, false, nullptr, true) || num_elements(array_proxy(counts)) != params.size() ||
            (mine.counts_dtype != Dtype::float32 && mine.counts_dtype != Dtype::float64))
          throw py::value_error("Plan: counts must be a float32 or float64 array of one count per param");
        mine.counts = array_proxy(counts)->data;
      }
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

  // One step: `params` (each group's current param list) and, per group, its parts: a list of
  // (count, scalars, flags), the plan of the params that have taken `count` steps (a group without
  // counts has one part, whose count is not read). A param whose count no part has: declined.
  Outcome step(const py::list& params, const py::list& parts) {
    const RuleKernels& rule = active_isa().rules[r_];
    if (params.size() != groups_.size() || parts.size() != groups_.size())
      throw py::value_error("Plan.step: one entry per group");
    for (auto [tensor, address] : storages_)
      if (address_of(tensor) != address) return PyErr_Clear(), Outcome::stale;
    static const py::str grad_name("grad");
    std::vector<py::object> grads;  // alive while the kernels read them, whatever another thread does
    std::vector<std::pair<std::uintptr_t, std::uintptr_t>> read;
    std::vector<Part> steps;  // this step's: another thread may step the plan meanwhile
    std::size_t total = 0;
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      const Group& group = groups_[g];
      PyObject* list = PyList_GET_ITEM(params.ptr(), g);
      if (!PyList_Check(list) || static_cast<std::size_t>(PyList_GET_SIZE(list)) != group.params.size()) return Outcome::stale;
      const std::size_t first = steps.size();
      parts_of(rule, group, parts[g], steps);
      Dtype grad_dtype = Dtype::float32;
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
        if (i > 0 && dtype != grad_dtype) return Outcome::declined;
        grad_dtype = dtype;
        Part* part = &steps[first];
        if (group.counts) {
          const double count = count_of(group, i);
          while (part != steps.data() + steps.size() && part->count != count) ++part;
          if (part == steps.data() + steps.size()) return Outcome::declined;
        }
        Tensor& t = part->tensors.emplace_back(group.tensors[i]);
        t.grad_dtype = dtype;
        t.grad = e.data();
        if (t.size) read.emplace_back(span_of(t.grad, t.size * itemsize(dtype)));
        grads.push_back(std::move(grad));
        total += t.size;
      }
      for (std::size_t k = first; k < steps.size(); ++k) {
        Part& part = steps[k];
        if (part.tensors.empty()) continue;
        if ((part.layout = layout_of(part.tensors[0], group.used, true)) < 0) return Outcome::declined;
        if (!scalars_of(rule, part.scalars, part.tensors[0].param_dtype == Dtype::float64, part.planned.data()))
          return Outcome::declined;
      }
    }
    if (touches(read)) return Outcome::declined;
    auto run = [&] {
      for (const Part& part : steps)
        if (!part.tensors.empty())
          run_step(rule, part.layout, itemsize(part.tensors[0].param_dtype), part.tensors, part.planned.data(), part.flags);
    };
    if (total < kKeepGilElements) {
      run();
    } else {
      py::gil_scoped_release nogil;
      run();
    }
    for (const Group& group : groups_)
      if (group.counts)
        for (std::size_t i = 0; i < group.params.size(); ++i) advance_count(group, i);
    return Outcome::stepped;
  }

 private:
  struct Group {
    std::vector<PyObject*> params;  // held by keep_
    std::vector<Tensor> tensors;    // the kernels' operands but the grads
    std::vector<std::vector<Py_intptr_t>> shapes;
    unsigned used = 0;  // bit k: the step updates state slot k
    void* counts = nullptr;  // each param's step count (held by keep_), or null: the rule keeps none
    Dtype counts_dtype = Dtype::float32;
  };

  // The params of a group that have taken `count` steps, and their plan: one kernel call.
  struct Part {
    double count;
    py::handle scalars;  // held by the caller's parts
    std::array<double, kMaxScalars> planned;
    unsigned flags;
    int layout = -1;
    std::vector<Tensor> tensors;
  };

  // Appends a group's parts (Plan.step's `parts`), as yet without their tensors, to `steps`.
  static void parts_of(const RuleKernels& rule, const Group& group, py::handle parts, std::vector<Part>& steps) {
    if (!PyList_Check(parts.ptr()) || PyList_GET_SIZE(parts.ptr()) < 1 || (!group.counts && PyList_GET_SIZE(parts.ptr()) != 1))
      throw py::value_error("Plan.step: a list of parts per group, one for a group without counts");
    for (py::handle item : parts) {
      const auto part = item.cast<py::tuple>();
      if (part.size() != 3) throw py::value_error("Plan.step: a part is (count, scalars, flags)");
      const unsigned flags = part[2].cast<unsigned>();
      if (flags >= (1u << rule.num_flags)) throw py::value_error("Plan.step: bad flags");
      steps.push_back(Part{part[0].cast<double>(), part[1], {}, flags});
    }
  }

  static double count_of(const Group& group, std::size_t i) {
    return group.counts_dtype == Dtype::float32 ? static_cast<const float*>(group.counts)[i]
                                                : static_cast<const double*>(group.counts)[i];
  }

  // One more step, rounded once to the count's dtype (as torch's `step += 1` and `fill_(count + 1)` round).
  static void advance_count(const Group& group, std::size_t i) {
    if (group.counts_dtype == Dtype::float32) static_cast<float*>(group.counts)[i] += 1.0f;
    else static_cast<double*>(group.counts)[i] += 1.0;
  }

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

}  // namespace

void register_plan(py::module_& m) {
  m.def("arrays_of", &arrays_of, py::arg("tensors"), py::arg("export"));
  py::class_<Plan> plan(m, "Plan", "A layer's prepared step (fusedoptim.torch): see cpp/plan.cpp.");
  plan.def(py::init<int, const py::list&, const py::list&, const py::type&, py::object, py::object>(),
           py::arg("rule"), py::arg("groups"), py::arg("storages"), py::arg("grad_type"), py::arg("export"),
           py::arg("dense"))
      .def("step", [](Plan& self, const py::list& params, const py::list& parts) {
        return static_cast<int>(self.step(params, parts));
      }, py::arg("params"), py::arg("parts"), "One step: a Plan.Outcome as an int.");
  plan.attr("STEPPED") = static_cast<int>(Plan::Outcome::stepped);
  plan.attr("STALE") = static_cast<int>(Plan::Outcome::stale);
  plan.attr("DECLINED") = static_cast<int>(Plan::Outcome::declined);
}

}  // namespace fusedoptim
