#pragma once
// Thread count for the CPU engine (OpenMP underneath). Engine functions parallelise internally; callers only choose
// how many threads to use.
namespace moebius {
void set_num_threads(int n); // n <= 0: all hardware threads
int  num_threads();
} // namespace moebius
