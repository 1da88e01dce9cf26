#include "engine/cpu/gemm.h"

#include <Eigen/Core>

namespace moebius::cpu {

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MapC   = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;
using MapM   = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>;

template <class OpA, class OpB> void run(MapM& C, const OpA& a, const OpB& b, bool accumulate) {
    if (accumulate) C.noalias() += a * b;
    else C.noalias() = a * b;
}

} // namespace

void gemm_kernel(int m, int n, int k, const float* A, int lda, bool trans_a, const float* B, int ldb, bool trans_b,
                 float* C, int ldc, bool accumulate) {
    if (m <= 0 || n <= 0 || k <= 0) return;
    MapM       Cm(C, m, n, Eigen::OuterStride<>(ldc));
    const MapC Am(A, trans_a ? k : m, trans_a ? m : k, Eigen::OuterStride<>(lda));
    const MapC Bm(B, trans_b ? n : k, trans_b ? k : n, Eigen::OuterStride<>(ldb));
    if (!trans_a && !trans_b) run(Cm, Am, Bm, accumulate);
    else if (!trans_a) run(Cm, Am, Bm.transpose(), accumulate);
    else if (!trans_b) run(Cm, Am.transpose(), Bm, accumulate);
    else run(Cm, Am.transpose(), Bm.transpose(), accumulate);
}

} // namespace moebius::cpu
