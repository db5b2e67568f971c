// The memory-bandwidth roof that `fusedoptim bench` measures steps against: a rule's traffic with
// one add per read and no other work, so "% of roof" is how much of a step is more than moving
// its bytes. Compiled once per ISA level like isa_kernels.cpp, but kept out of the rules' table.
#include "dispatch.hpp"
#include "simd/level.hpp"

#include <algorithm>
#include <utility>

namespace fusedoptim::FUSEDOPTIM_ISA_NS {
namespace {

template <int reads, int writes, class V>
void roof_at(const Streams& s, std::size_t i) {
  V x = V::load(s.read[0] + i);
  for (int k = 1; k < reads; ++k) x = x + V::load(s.read[k] + i);
  for (int k = 0; k < writes; ++k) x.store(s.write[k] + i);
}

template <int reads, int writes>
void roof_range(const Streams& streams, std::size_t begin, std::size_t end) {
  const Streams s = streams;  // a local copy: the stores cannot alias its pointers, which stay in registers
  std::size_t i = begin;
  for (; i + Wide<float>::width <= end; i += Wide<float>::width) {
    const std::size_t ahead = std::min(i + kPrefetchAhead, end - 1);  // as the rules' loops (isa_kernels.cpp)
    for (int k = 0; k < reads; ++k) __builtin_prefetch(s.read[k] + ahead);
    roof_at<reads, writes, Wide<float>>(s, i);
  }
  for (; i < end; ++i) roof_at<reads, writes, Scalar<float>>(s, i);
}

template <int... k>
void roof_by_streams(const Streams& s, std::size_t begin, std::size_t end, std::integer_sequence<int, k...>) {
  static constexpr RoofFn table[] = {&roof_range<k / kMaxStreams + 1, k % kMaxStreams + 1>...};
  table[(s.reads - 1) * kMaxStreams + s.writes - 1](s, begin, end);
}

void roof_kernel(const Streams& s, std::size_t begin, std::size_t end) {
  roof_by_streams(s, begin, end, std::make_integer_sequence<int, kMaxStreams * kMaxStreams>{});
}

}  // namespace

extern const RoofFn roof;
const RoofFn roof = &roof_kernel;

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
