#include "engine/cpu/parallel.h"

#include <omp.h>
#include <thread>

namespace moebius {

void set_num_threads(int n) {
    if (n <= 0) n = (int)std::max(1u, std::thread::hardware_concurrency());
    omp_set_num_threads(n);
}

int num_threads() { return omp_get_max_threads(); }

} // namespace moebius
