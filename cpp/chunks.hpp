// How a step's elements are split across threads.
#pragma once
#include <algorithm>
#include <cstddef>
#include <vector>

#include "parallel.hpp"

namespace fusedoptim {

// 64 KiB of every operand per chunk: a whole number of cache lines (threads never share a
// line of an aligned tensor), big enough that handing a chunk out is free, small enough
// that two threads still balance a step of 1M elements.
inline constexpr std::size_t kChunkBytes = 64 * 1024;
// Below this many elements in a step, waking a second thread costs more than it saves
// (measured with Adam, fp32, on 2 cores).
inline constexpr std::size_t kMinParallelElements = 1 << 17;

// Calls fn(item, begin, end) so that together the calls cover [0, item.size) of every item
// once; big steps are cut into chunks spread over num_threads() threads. Chunk bounds never
// change a result: every element goes through the same sequence of rounded operations.
template <class Item, class Fn>
void for_each_chunk(const std::vector<Item>& items, std::size_t itemsize, const Fn& fn) {
  std::size_t total = 0;
  for (const Item& item : items) total += item.size;
  if (num_threads() == 1 || total < kMinParallelElements) {
    for (const Item& item : items) fn(item, 0, item.size);
    return;
  }
  struct Span {
    const Item* item;
    std::size_t begin, end;
  };
  const std::size_t chunk = kChunkBytes / itemsize;
  std::vector<Span> spans;
  spans.reserve(total / chunk + items.size());
  for (const Item& item : items)
    for (std::size_t begin = 0; begin < item.size; begin += chunk)
      spans.push_back({&item, begin, std::min(begin + chunk, item.size)});
  auto body = [&](std::size_t c) { fn(*spans[c].item, spans[c].begin, spans[c].end); };
  parallel_for(spans.size(), body);
}

}  // namespace fusedoptim
