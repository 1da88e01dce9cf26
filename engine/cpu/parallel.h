#pragma once
// Thread count for the CPU engine (OpenMP underneath). Engine functions parallelise internally; callers only choose
// how many threads to use.
#include <functional>

namespace moebius {
void set_num_threads(int n); // n <= 0: all hardware threads
int  num_threads();
// fn(0..n-1), one index at a time per thread, `threads` threads (statically interleaved; with more than one, the
// kernels inside run single-threaded as nested regions are inactive). An exception must not cross an OpenMP region:
// the first one thrown is rethrown here after every index has run.
void parallel_for_each(int n, int threads, const std::function<void(int)>& fn);
} // namespace moebius
