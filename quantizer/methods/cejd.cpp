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

// Symmetric square root and inverse square root of H + λI, λ = 1e-2 · mean diag (dead and weak input directions get
// a floor, so H^-½ stays bounded).
void sqrt_pair(const std::vector<double>& Hv, int d, Mat& Hh, Mat& Hhi) {
    Mat H = Eigen::Map<const Mat>(Hv.data(), d, d);
    H     = 0.5 * (H + H.transpose());
    const double mean = H.diagonal().mean();
    H.diagonal().array() += 1e-2 * (mean > 0 ? mean : 1.0);
    SymmetricEigen es = symmetric_eigen(H, true);
    if (!es.ok) throw Error("cejd: eigendecomposition of the input second moment failed");
    Hh  = std::move(es.sqrt);
    Hhi = std::move(es.inverse_sqrt);
}

// Top-r eigenvectors (descending eigenvalue) of a symmetric G, as columns.
Mat top_eigvecs(const Mat& G, int r) {
    const SymmetricEigen es = symmetric_eigen(0.5 * (G + G.transpose()));
    if (!es.ok) throw Error("cejd: eigendecomposition of the joint Gram matrix failed");
    return es.vectors.rightCols(r).rowwise().reverse();
}

void check_rank(int rank, int out, int in) {
    if (rank <= 0 || rank > std::min(out, in))
        throw InputError("cejd: rank " + std::to_string(rank) + " must be in 1.." + std::to_string(std::min(out, in)));
}

} // namespace

std::vector<float> cejd_input_basis(const std::vector<const float*>& W, int out, int in, const std::vector<double>& H,
                                    const std::vector<std::vector<float>>& row_weight, int rank) {
    check_rank(rank, out, in);
    if (W.empty() || (int64_t)H.size() != (int64_t)in * in) throw InputError("cejd: no experts or a wrong Hessian size");
    Mat Hh, Hhi;
    sqrt_pair(H, in, Hh, Hhi);
    Mat G = Mat::Zero(in, in); // Σ_e Wᵀ D W (in, in)
    for (size_t e = 0; e < W.size(); ++e) {
        RMat w = as_mat(W[e], out, in);
        if (e < row_weight.size() && !row_weight[e].empty())
            w = Eigen::Map<const Eigen::VectorXf>(row_weight[e].data(), out).cast<double>().cwiseSqrt().asDiagonal() * w;
        G.noalias() += w.transpose() * w;
    }
    const Mat u = top_eigvecs(Hh * G * Hh, rank); // (in, r)
    return to_floats(RMat(u.transpose() * Hhi));  // (r, in)
}

std::vector<float> cejd_output_basis(const std::vector<const float*>& W, int out, int in,
                                     const std::vector<const std::vector<double>*>& H, const std::vector<double>& Mv,
                                     int rank) {
    check_rank(rank, out, in);
    if (W.empty() || H.size() != W.size()) throw InputError("cejd: one Hessian per expert is needed");
    Mat G = Mat::Zero(out, out); // Σ_e W H Wᵀ (out, out)
    for (size_t e = 0; e < W.size(); ++e) {
        const RMat w = as_mat(W[e], out, in);
        Mat        h = Eigen::Map<const Mat>(H[e]->data(), in, in);
        G.noalias() += w * h * w.transpose();
    }
    if (Mv.empty()) return to_floats(RMat(top_eigvecs(G, rank)));
    Mat M = Eigen::Map<const Mat>(Mv.data(), out, out);
    const SymmetricEigen es = symmetric_eigen(0.5 * (M + M.transpose()), true);
    if (!es.ok || es.values.minCoeff() <= 0)
        throw InputError("cejd: the output metric must be symmetric positive definite");
    const Mat &Mh = es.sqrt, &Mhi = es.inverse_sqrt;
    return to_floats(RMat(Mhi * top_eigvecs(Mh * G * Mh, rank))); // (out, r)
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
