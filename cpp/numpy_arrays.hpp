// What the extension's Python entry points share about NumPy arrays: recognizing a plain array of a
// storage dtype (bindings.cpp's step, plan.cpp's Plan), and when a step keeps the GIL.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "dispatch.hpp"

namespace py = pybind11;

namespace fusedoptim {

using py::detail::array_descriptor_proxy;
using array_descriptor_proxy_t = py::detail::PyArrayDescr_Proxy;
using py::detail::array_proxy;
using py::detail::npy_api;

// Steps this small finish in about the time that releasing and retaking the GIL costs.
constexpr std::size_t kKeepGilElements = 1 << 14;

// NumPy's type number of ml_dtypes.bfloat16, a user-defined dtype numbered when it is registered
// (fusedoptim._native tells it at import); -1 until then.
inline int bfloat16_type_num = -1;
constexpr int kNpyHalf = 23;  // NPY_HALF

// What NumPy's type `num` is stored as; false for anything else.
inline bool storage_dtype(int num, Dtype& dtype) {
  if (num == npy_api::NPY_FLOAT_) dtype = Dtype::float32;
  else if (num == npy_api::NPY_DOUBLE_) dtype = Dtype::float64;
  else if (num == kNpyHalf) dtype = Dtype::float16;
  else if (num == bfloat16_type_num) dtype = Dtype::bfloat16;
  else return false;
  return true;
}

// What an array of this descriptor is stored as; false for anything else (big-endian included).
inline bool storage_dtype(const array_descriptor_proxy_t* d, Dtype& dtype) {
  return d->byteorder != '>' && storage_dtype(d->type_num, dtype);
}

// A plain ndarray (not a subclass), C-contiguous, of a storage dtype, which it sets in `dtype`
// (or must equal, when `known`), shaped like `like` (when given), writeable if asked.
inline bool plain_array(PyObject* o, Dtype& dtype, bool known, const py::detail::PyArray_Proxy* like, bool writeable) {
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

inline std::size_t num_elements(const py::detail::PyArray_Proxy* a) {
  std::size_t n = 1;
  for (int k = 0; k < a->nd; ++k) n *= static_cast<std::size_t>(a->dimensions[k]);
  return n;
}

// Whether any two of these byte ranges [first, second) share a byte.
inline bool any_overlap(std::vector<std::pair<std::uintptr_t, std::uintptr_t>>& spans) {
  std::sort(spans.begin(), spans.end());
  for (std::size_t k = 1; k < spans.size(); ++k)
    if (spans[k].first < spans[k - 1].second) return true;
  return false;
}

}  // namespace fusedoptim
