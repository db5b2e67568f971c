// Global-norm gradient clipping, host side: the sum of squares of a list of arrays in the one order
// of reduction.hpp, and their scaling, on the step's threads, at the active ISA level. The caller
// (fusedoptim._norms) has validated the arrays and computes the clipping factor; these only run.
#include "norms.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "chunks.hpp"
#include "dispatch.hpp"
#include "fpenv.hpp"
#include "reduction.hpp"

namespace py = pybind11;

namespace fusedoptim {
namespace scalar { extern const IsaTable table; extern const NormKernels norms; }
#if defined(FUSEDOPTIM_HAVE_X86)
namespace avx2 { extern const IsaTable table; extern const NormKernels norms; }
namespace avx512 { extern const IsaTable table; extern const NormKernels norms; }
#endif

namespace {

const NormKernels& active_norms() {
  [[maybe_unused]] const IsaTable* isa = &active_isa();
#if defined(FUSEDOPTIM_HAVE_X86)
  if (isa == &avx2::table) return avx2::norms;
  if (isa == &avx512::table) return avx512::norms;
#endif
  return scalar::norms;
}

// One array of the list, as the kernels take it.
struct Array {
  void* data;
  std::size_t size;
  int dtype;  // 0 float32, 1 float64
};

// The arrays of a list of C-contiguous float32/float64 ndarrays (writeable ones if asked), and
// references that keep them alive while the GIL is released.
std::vector<Array> arrays_of(const py::list& list, bool writeable, std::vector<py::array>& alive) {
  std::vector<Array> arrays;
  for (py::handle h : list) {
    if (!py::isinstance<py::array>(h)) throw py::type_error("expected numpy arrays");
    auto a = py::reinterpret_borrow<py::array>(h);
    const bool f32 = a.dtype().is(py::dtype::of<float>()), f64 = a.dtype().is(py::dtype::of<double>());
    if (!(f32 || f64) || !(a.flags() & py::array::c_style) || (writeable && !a.writeable()))
      throw py::value_error("expected C-contiguous float32 or float64 arrays, writeable ones to scale");
    arrays.push_back({a.mutable_data(), static_cast<std::size_t>(a.size()), f64 ? 1 : 0});
    alive.push_back(a);
  }
  return arrays;
}

// Chunks of kChunkBytes / sizeof(double) elements: whole blocks for either dtype.
static_assert(kChunkBytes / sizeof(double) % kBlock == 0);

double sum_of_squares(const std::vector<Array>& arrays) {
  const ContractFpEnv contract;  // the pool's workers hold one too
  const NormKernels& kernels = active_norms();
  const std::size_t n = arrays.size();
  std::vector<std::size_t> offset(n + 1, 0);  // where each array's block sums start
  for (std::size_t i = 0; i < n; ++i) offset[i + 1] = offset[i] + num_blocks(arrays[i].size);
  std::vector<double> block_sums(offset[n]);
  for_each_chunk(arrays, sizeof(double), [&](const Array& a, std::size_t begin, std::size_t end) {
    const std::size_t i = static_cast<std::size_t>(&a - arrays.data());
    kernels.block_sums[a.dtype](a.data, a.size, begin / kBlock, (end + kBlock - 1) / kBlock,
                                block_sums.data() + offset[i]);
  });
  std::vector<double> array_sums(n);
  for (std::size_t i = 0; i < n; ++i)
    array_sums[i] = combine_pairwise(block_sums.data() + offset[i], offset[i + 1] - offset[i]);
  return combine_pairwise(array_sums.data(), n);
}

void scale(const std::vector<Array>& arrays, double factor) {
  const ContractFpEnv contract;
  const NormKernels& kernels = active_norms();
  for_each_chunk(arrays, sizeof(double), [&](const Array& a, std::size_t begin, std::size_t end) {
    kernels.scale[a.dtype](a.data, begin, end, factor);
  });
}

}  // namespace

void register_norms(py::module_& m) {
  m.def("sum_of_squares", [](const py::list& arrays) {
    std::vector<py::array> alive;
    const std::vector<Array> checked = arrays_of(arrays, false, alive);
    py::gil_scoped_release nogil;
    return sum_of_squares(checked);
  }, py::arg("arrays"), "The sum of squares of every element of the arrays, in float64, in reduction.hpp's order.");
  m.def("scale_", [](const py::list& arrays, double factor) {
    std::vector<py::array> alive;
    const std::vector<Array> checked = arrays_of(arrays, true, alive);
    py::gil_scoped_release nogil;
    scale(checked, factor);
  }, py::arg("arrays"), py::arg("factor"), "Multiplies every array in place by factor, rounded to its dtype.");
}

}  // namespace fusedoptim
