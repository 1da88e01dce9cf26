#include "engine/cpu/linear.h"

#include "engine/core/error.h"
#include "engine/cpu/ops.h"

namespace moebius {

DenseLinear::DenseLinear(int in_features, int out_features, std::vector<float> w)
    : Linear(in_features, out_features), w_(std::move(w)) {
    MOEBIUS_ASSERT((int64_t)w_.size() == (int64_t)in_features * out_features);
}

void DenseLinear::forward(const float* x, int n, float* y) const {
    cpu::matmul_wt(x, n, in_, w_.data(), out_, y);
}

} // namespace moebius
