#include "quantizer/methods/hessian.h"

#include "engine/core/error.h"

#include <Eigen/Cholesky>
#include <algorithm>
#include <cmath>

namespace moebius::quant {

namespace {

using Mat = Eigen::MatrixXd;

// Upper Cholesky factor U of Hd⁻¹ (Hd⁻¹ = UᵀU) without forming Hd⁻¹: with J the index reversal, J·Hd·J = L·Lᵀ gives
// Hd = Ũ·Ũᵀ with Ũ = J·L·J upper, so Hd⁻¹ = (Ũ⁻¹)ᵀ·Ũ⁻¹ and U = Ũ⁻¹ = J·L⁻¹·J (Cholesky factors are unique).
// One factorisation and one triangular inverse instead of chol → inverse → chol. Reversing both indices of a square
// matrix reverses its flat storage. On success `hd` holds Ũ in its upper triangle (used for Σ wᵀ Hd w).
bool inverse_cholesky_upper(Mat& hd, Mat& U, int threads) {
    const int n = (int)hd.rows();
    std::reverse(hd.data(), hd.data() + hd.size());
    Eigen::LLT<Eigen::Ref<Mat>> llt(hd); // L in the lower triangle of hd
    if (llt.info() != Eigen::Success)
        return false;
    U.setZero(n, n);
    // L⁻¹ column block by column block: columns [c0, c1) only need the trailing block L[c0:, c0:].
    constexpr int bw = 64;
    const int     nb = (n + bw - 1) / bw;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && n >= 256)
    for (int b = 0; b < nb; ++b) {
        const int c0 = b * bw, w = std::min(bw, n - c0), m = n - c0;
        U.block(c0, c0, m, w) = hd.block(c0, c0, m, m).triangularView<Eigen::Lower>().solve(Mat::Identity(m, w));
    }
    std::reverse(U.data(), U.data() + U.size());
    std::reverse(hd.data(), hd.data() + hd.size());
    return U.allFinite();
}

} // namespace

void check_hessian(const std::vector<double>& H, int n, const std::string& who) {
    if ((int64_t)H.size() != (int64_t)n * n)
        throw InputError(who + ": H has " + std::to_string(H.size()) + " entries, expected " + std::to_string(n) + "²");
    for (double h : H)
        if (!std::isfinite(h))
            throw InputError(who + ": H contains a non-finite value");
}

std::vector<char> dead_columns(const std::vector<double>& H, int n) {
    std::vector<char> dead(n);
    for (int j = 0; j < n; ++j)
        dead[j] = H[(size_t)j * n + j] == 0;
    return dead;
}

PreparedHessian prepare_hessian(const std::vector<double>& H, int n, const std::vector<char>& dead, double damp,
                                const std::vector<int>* perm, int threads, const std::string& who) {
    auto col = [&](int j) { return perm ? (*perm)[j] : j; };
    // Dead columns never saw a non-zero input: any value is free, so H_jj = 1 keeps H invertible.
    double mean_diag = 0;
    for (int j = 0; j < n; ++j)
        mean_diag += dead[j] ? 1.0 : H[(size_t)j * n + j];
    mean_diag /= n;
    PreparedHessian p;
    p.chol.resize(n, n);
    for (int attempt = 0;; ++attempt) {
        p.lambda = damp * mean_diag;
        for (int j = 0; j < n; ++j) { // H is symmetric: column j of Hd is row col(j) of H, read contiguously
            const double* h = H.data() + (size_t)col(j) * n;
            for (int i = 0; i < n; ++i)
                p.chol(i, j) = h[col(i)];
        }
        for (int j = 0; j < n; ++j)
            p.chol(j, j) = (dead[col(j)] ? 1.0 : p.chol(j, j)) + p.lambda;
        if (inverse_cholesky_upper(p.chol, p.U, threads))
            break;
        if (attempt == 3)
            throw Error(who + ": H + λI is not positive definite even with damping " + std::to_string(damp) +
                        " (H is indefinite or has non-finite statistics)");
        damp = (damp > 0 ? damp : 0.01) * 10;
    }
    p.damp = damp;
    return p;
}

double hessian_norm(const std::vector<double>& E, int out, int in, const std::vector<double>& H) {
    using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    Eigen::Map<const RowMat> e(E.data(), out, in), h(H.data(), in, in);
    return ((e * h).cwiseProduct(e)).sum();
}

} // namespace moebius::quant
