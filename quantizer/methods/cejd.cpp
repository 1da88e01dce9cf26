#include "quantizer/methods/cejd.h"

#include "engine/core/error.h"
#include "quantizer/linalg.h"

#include <Eigen/Core>
#include <string>

namespace moebius::quant {

namespace {

using Mat  = Eigen::MatrixXd;
using RMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

RMat as_mat(const float* w, int out, int in) {
    return Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(w, out, in)
        .cast<double>();
}

std::vector<float> to_floats(const RMat& m) {
    std::vector<float> v((size_t)m.size());
    for (Eigen::Index i = 0; i < m.size(); ++i) v[i] = (float)m.data()[i];
    return v;
}

// The Cholesky factor L (lower, L Lᵀ = A) of A + λI with λ = 1e-2 · mean diag (dead and weak directions get a floor).
// It stands in for A^½: for any symmetric G the top-r eigenvectors v of Lᵀ G L and u of A^½ G A^½ give the same
// basis, L⁻ᵀ v = A^-½ u (Q = A^-½ L is orthogonal and Lᵀ G L = Qᵀ (A^½ G A^½) Q). One LLT (0.16 s at 2048²) instead
// of the square-root pair's full eigendecomposition with all eigenvectors (~11 s).
Mat floored_cholesky(const std::vector<double>& Av, int d, bool floor, const char* what) {
    Mat A = Eigen::Map<const Mat>(Av.data(), d, d);
    A     = 0.5 * (A + A.transpose());
    if (floor) {
        const double mean = A.diagonal().mean();
        A.diagonal().array() += 1e-2 * (mean > 0 ? mean : 1.0);
    }
    bool ok = false;
    Mat  L  = cholesky_lower(A, ok);
    if (!ok) throw InputError(std::string("cejd: the ") + what + " must be symmetric positive definite");
    return L;
}

// Top-r eigenvectors (descending eigenvalue) of Lᵀ G L mapped back through L⁻ᵀ, as columns (d, r). G: only its lower
// triangle is read.
Mat whitened_top(const Mat& G_lower, const Mat& L, int r) {
    Mat G = G_lower.selfadjointView<Eigen::Lower>();
    Mat T = G * L.triangularView<Eigen::Lower>();                        // G L
    Mat W = L.transpose().triangularView<Eigen::Upper>() * T;            // Lᵀ G L
    const Mat v = top_eigenvectors(0.5 * (W + W.transpose()), r);
    return L.transpose().triangularView<Eigen::Upper>().solve(v);
}

void check_rank(int rank, int out, int in) {
    if (rank <= 0 || rank > std::min(out, in))
        throw InputError("cejd: rank " + std::to_string(rank) + " must be in 1.." + std::to_string(std::min(out, in)));
}

using MatF  = Eigen::MatrixXf;
using RMatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

} // namespace

// The per-expert Gram products are the bases' cost at real sizes (out · in² each, 60 experts at Qwen1.5-MoE's
// 1408 × 2048): each runs in f32 on one triangle (symmetric results) and is summed over the experts in f64.
std::vector<float> cejd_input_basis(const std::vector<const float*>& W, int out, int in, const std::vector<double>& H,
                                    const std::vector<std::vector<float>>& row_weight, int rank) {
    check_rank(rank, out, in);
    if (W.empty() || (int64_t)H.size() != (int64_t)in * in) throw InputError("cejd: no experts or a wrong Hessian size");
    const Mat L = floored_cholesky(H, in, true, "input second moment");
    Mat       G = Mat::Zero(in, in); // Σ_e Wᵀ D W (in, in), lower triangle
    MatF      g(in, in);
    RMatF     w;
    for (size_t e = 0; e < W.size(); ++e) {
        w = Eigen::Map<const RMatF>(W[e], out, in);
        if (e < row_weight.size() && !row_weight[e].empty())
            w = Eigen::Map<const Eigen::VectorXf>(row_weight[e].data(), out).cwiseSqrt().asDiagonal() * w;
        g.setZero();
        g.selfadjointView<Eigen::Lower>().rankUpdate(w.transpose());
        G.triangularView<Eigen::Lower>() += g.cast<double>();
    }
    return to_floats(RMat(whitened_top(G, L, rank).transpose())); // (r, in)
}

std::vector<float> cejd_output_basis(const std::vector<const float*>& W, int out, int in,
                                     const std::vector<const std::vector<double>*>& H, const std::vector<double>& Mv,
                                     int rank) {
    check_rank(rank, out, in);
    if (W.empty() || H.size() != W.size()) throw InputError("cejd: one Hessian per expert is needed");
    Mat   G = Mat::Zero(out, out); // Σ_e W H Wᵀ (out, out), lower triangle
    MatF  g(out, out), h(in, in);
    RMatF P(out, in);
    for (size_t e = 0; e < W.size(); ++e) {
        const Eigen::Map<const RMatF> w(W[e], out, in);
        h = Eigen::Map<const Mat>(H[e]->data(), in, in).cast<float>();
        P.noalias() = w * h;
        g.setZero();
        g.triangularView<Eigen::Lower>() += P * w.transpose();
        G.triangularView<Eigen::Lower>() += g.cast<double>();
    }
    if (Mv.empty()) return to_floats(RMat(top_eigenvectors(G, rank))); // the plain top eigenvectors (L = I)
    return to_floats(RMat(whitened_top(G, floored_cholesky(Mv, out, false, "output metric"), rank))); // (out, r)
}

std::vector<float> cejd_input_coef(const float* A, int out, int in, const std::vector<float>& Bv, int rank,
                                   const std::vector<double>& Hv) {
    const RMat B = as_mat(Bv.data(), rank, in);
    const Mat  H = Eigen::Map<const Mat>(Hv.data(), in, in);
    const Mat  BH = B * H;                 // (r, in)
    Mat        G  = BH * B.transpose();    // (r, r)
    G.diagonal().array() += 1e-8 * std::max(G.diagonal().mean(), 1e-30);
    const RMat rhs = as_mat(A, out, in) * BH.transpose(); // (out, r)
    return to_floats(RMat(ldlt_solve(G, rhs.transpose()).transpose()));
}

std::vector<float> cejd_output_coef(const float* A, int out, int in, const std::vector<float>& Bv, int rank,
                                    const std::vector<double>& Mv) {
    const RMat B  = as_mat(Bv.data(), out, rank);
    const Mat  MB = Mv.empty() ? Mat(B) : Mat(Eigen::Map<const Mat>(Mv.data(), out, out) * B); // (out, r)
    Mat        G  = B.transpose() * MB;                                                     // (r, r)
    G.diagonal().array() += 1e-8 * std::max(G.diagonal().mean(), 1e-30);
    return to_floats(RMat(ldlt_solve(G, MB.transpose() * as_mat(A, out, in)))); // (r, in)
}

} // namespace moebius::quant
