#include "engine/cpu/parallel.h"

#include <exception>
#include <omp.h>
#include <thread>

namespace moebius {

void set_num_threads(int n) {
    if (n <= 0) n = (int)std::max(1u, std::thread::hardware_concurrency());
    omp_set_num_threads(n);
}

int num_threads() { return omp_get_max_threads(); }

void parallel_for_each(int n, int threads, const std::function<void(int)>& fn) {
    std::exception_ptr failure;
#pragma omp parallel for schedule(static, 1) num_threads(threads)
    for (int i = 0; i < n; ++i) {
        try {
            fn(i);
        } catch (...) {
#pragma omp critical(moebius_parallel_for_each_failure)
            if (!failure) failure = std::current_exception();
        }
    }
    if (failure) std::rethrow_exception(failure);
}

} // namespace moebius
