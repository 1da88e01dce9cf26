#pragma once
// Random weights and Hessians for the quantization-method unit tests (GPTQ, binarization, VQ).
#include <Eigen/Dense>
#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

namespace moebius::test {

// (out, in) i.i.d. N(0, scale²).
inline std::vector<float> random_w(int out, int in, uint32_t seed, float scale = 1.0f) {
    std::mt19937                    rng(seed);
    std::normal_distribution<float> nd(0, scale);
    std::vector<float>              w((size_t)out * in);
    for (auto& v : w) v = nd(rng);
    return w;
}

// The top-r eigenvectors (descending) of a symmetric A by Eigen's full solver: the reference for
// quant::top_eigenvectors and the CEJD bases.
inline Eigen::MatrixXd reference_top_eigenvectors(const Eigen::MatrixXd& A, int r) {
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(0.5 * (A + A.transpose()));
    return es.eigenvectors().rightCols(r).rowwise().reverse();
}

// H = XᵀX (n, n) for `tokens` tokens whose features are strongly correlated (a random mixing of a few latent factors
// plus noise): the regime where Hessian-aware methods differ from round-to-nearest.
inline std::vector<double> correlated_h(int n, int tokens, uint32_t seed) {
    std::mt19937                     rng(seed);
    std::normal_distribution<double> nd(0, 1);
    const int                        k = std::max(2, n / 4);
    Eigen::MatrixXd                  A(k, n), Z(tokens, k), E(tokens, n);
    for (int i = 0; i < A.size(); ++i) A.data()[i] = nd(rng);
    for (int i = 0; i < Z.size(); ++i) Z.data()[i] = nd(rng);
    for (int i = 0; i < E.size(); ++i) E.data()[i] = 0.1 * nd(rng);
    Eigen::MatrixXd X = Z * A + E;
    Eigen::MatrixXd H = X.transpose() * X;
    return std::vector<double>(H.data(), H.data() + H.size());
}

// Σ_rows (w − q)ᵀ H (w − q) for w, q (out, n) and H (n, n), in double.
inline double hessian_objective(const std::vector<float>& w, const std::vector<float>& q, int out, int n,
                                const std::vector<double>& H) {
    Eigen::MatrixXd D(out, n);
    for (int r = 0; r < out; ++r)
        for (int j = 0; j < n; ++j) D(r, j) = (double)w[(size_t)r * n + j] - q[(size_t)r * n + j];
    Eigen::Map<const Eigen::MatrixXd> Hm(H.data(), n, n);
    return (D * Hm).cwiseProduct(D).sum();
}

} // namespace moebius::test
