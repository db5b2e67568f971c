// How a step's elements are split across threads: by total work, across tensor boundaries, so
// that a list of small tensors spreads over the threads as well as one big tensor does.
#pragma once
#include <algorithm>
#include <cstddef>
#include <vector>

#include "dispatch.hpp"  // Piece
#include "parallel.hpp"

namespace fusedoptim {

// A thread joins a step only for this much of every operand: one thread steps fp32 Adam over it
// in ~20 us on Zen 3, about what waking a sleeping worker takes on a VM (15-25 us, parallel.cpp),
// so a second thread pays once a step is about twice this.
inline constexpr std::size_t kThreadBytes = 128 * 1024;
// At most this much of every operand per chunk: big enough that handing a chunk out is free.
inline constexpr std::size_t kChunkBytes = 64 * 1024;
// Smaller steps are cut into this many chunks per thread: the caller starts at once and a worker
// only after its wake-up, so the caller takes over what a late worker has not begun.
inline constexpr std::size_t kChunksPerThread = 8;
// Cuts inside an item fall on multiples of this many bytes from its start, so threads share no
// cache line of an aligned item.
inline constexpr std::size_t kCutBytes = 64;

// Splits the items' elements, taken in order as one sequence, into chunks of about `work`
// elements, cutting inside an item only at multiples of `grain` from its start. Chunk c is
// pieces[first[c]] .. pieces[first[c + 1] - 1]. Empty items give no piece.
template <class Item>
void split(const std::vector<Item>& items, std::size_t work, std::size_t grain, std::vector<Piece<Item>>& pieces,
           std::vector<std::size_t>& first) {
  first.assign(1, 0);
  std::size_t start = 0;      // where the current item starts in the sequence
  std::size_t target = work;  // where the open chunk should end; always past the current position
  for (const Item& item : items) {
    for (std::size_t begin = 0; begin < item.size;) {
      std::size_t end = item.size;
      if (start + end > target) end = std::min(end, (target - start + grain - 1) / grain * grain);
      pieces.push_back({&item, begin, end});
      if (start + end >= target) {
        first.push_back(pieces.size());
        while (target <= start + end) target += work;
      }
      begin = end;
    }
    start += item.size;
  }
  if (first.back() != pieces.size()) first.push_back(pieces.size());
}

// Calls fn(piece, next) so that together the pieces cover [0, item.size) of every item once, on
// as many threads as the step's size pays for (at most num_threads()). `next` is the piece the
// same thread steps right after (null at the end of its chunk), for a kernel to prefetch. Cuts
// inside an item fall on multiples of `grain` elements (by default kCutBytes). Where the cuts fall
// never changes a result: every element goes through the same sequence of rounded operations.
template <class Item, class Fn>
void for_each_piece(const std::vector<Item>& items, std::size_t itemsize, const Fn& fn, std::size_t grain = 0) {
  std::size_t total = 0;
  for (const Item& item : items) total += item.size;
  const std::size_t threads = std::min<std::size_t>(num_threads(), total * itemsize / kThreadBytes);
  if (threads <= 1) {
    const Item* current = nullptr;  // every non-empty item whole, in order
    for (const Item& item : items) {
      if (!item.size) continue;
      const Piece<Item> next{&item, 0, item.size};
      if (current) fn(Piece<Item>{current, 0, current->size}, &next);
      current = &item;
    }
    if (current) fn(Piece<Item>{current, 0, current->size}, nullptr);
    return;
  }
  const std::size_t chunks = threads * kChunksPerThread;
  const std::size_t work = std::min(kChunkBytes / itemsize, (total + chunks - 1) / chunks);
  std::vector<Piece<Item>> pieces;
  std::vector<std::size_t> first;
  split(items, work, grain ? grain : kCutBytes / itemsize, pieces, first);
  auto body = [&](std::size_t c) {
    for (std::size_t k = first[c]; k < first[c + 1]; ++k) fn(pieces[k], k + 1 < first[c + 1] ? &pieces[k + 1] : nullptr);
  };
  parallel_for(first.size() - 1, static_cast<int>(threads), body);
}

// for_each_piece for a kernel that needs no look ahead: fn(item, begin, end).
template <class Item, class Fn>
void for_each_chunk(const std::vector<Item>& items, std::size_t itemsize, const Fn& fn, std::size_t grain = 0) {
  for_each_piece(items, itemsize, [&](const Piece<Item>& p, const Piece<Item>*) { fn(*p.item, p.begin, p.end); }, grain);
}

}  // namespace fusedoptim
