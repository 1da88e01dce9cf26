#pragma once
// The Hessian preparation shared by the OBS-style solvers (GPTQ, BiLLM / ARB binarization, methods.md §4.1-4.3):
// validation, dead columns, relative damping with retries and the upper Cholesky factor of the inverse.
#include <Eigen/Core>
#include <string>
#include <vector>

namespace moebius::quant {

struct PreparedHessian {
    Eigen::MatrixXd chol; // (n, n) Ũ in the upper triangle: Hd = Ũ·Ũᵀ (used for Σ wᵀ Hd w = ‖w·Ũ‖²)
    Eigen::MatrixXd U;    // (n, n) upper Cholesky factor of Hd⁻¹ = UᵀU ("Hinv_U", d_j = U_jj)
    double          lambda = 0; // absolute damping on the diagonal: damp · mean(diag H), dead diagonals counted as 1
    double          damp   = 0; // the relative damping that made Hd positive definite
};

// InputError ("<who>: ...") unless H has n² entries, all finite.
void check_hessian(const std::vector<double>& H, int n, const std::string& who);

// Columns that never saw a non-zero input: diag(H) == 0.
std::vector<char> dead_columns(const std::vector<double>& H, int n);

// Hd = H (permuted by perm when given: Hd(i, j) = H[perm[i], perm[j]]) with dead diagonals set to 1 and λ = damp ·
// mean(diag) added, factorised. When Hd is not positive definite the damping grows 10× up to three times; then Error
// "<who>: H + λI is not positive definite ...". threads: for the triangular inverse (1 inside a parallel region).
PreparedHessian prepare_hessian(const std::vector<double>& H, int n, const std::vector<char>& dead, double damp,
                                const std::vector<int>* perm, int threads, const std::string& who);

// Σ_rows e_rᵀ H e_r for E (out, in) row-major, H (in, in): the output error ‖E X‖² when H = Σ x xᵀ.
double hessian_norm(const std::vector<double>& E, int out, int in, const std::vector<double>& H);

} // namespace moebius::quant
