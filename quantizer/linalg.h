#pragma once
// Dense decompositions the methods share (CEJD, KBVQ's IDRE, GPTVQ, MoBiE's FP-stream targets), compiled once:
// Eigen's solvers are template code that costs ~25–50 s to instantiate in every translation unit under the
// sanitizers. Each function runs exactly the Eigen call it names, so moving a call here changes no result (except
// top_eigenvectors, which has its own algorithm, parity-tested against the full solver).
#include <Eigen/Core>

namespace moebius::quant {

// Eigen::SelfAdjointEigenSolver of a symmetric A (only its lower triangle is read, as Eigen does).
struct SymmetricEigen {
    bool            ok = false;  // Eigen reported success
    Eigen::VectorXd values;      // (n) ascending
    Eigen::MatrixXd vectors;     // (n, n) the eigenvectors as columns, in the order of values
    Eigen::MatrixXd sqrt;        // (n, n) V diag(√λ) Vᵀ, only with roots = true
    Eigen::MatrixXd inverse_sqrt; // (n, n) V diag(1/√λ) Vᵀ, only with roots = true
};
SymmetricEigen symmetric_eigen(const Eigen::MatrixXd& A, bool roots = false);

// The top-r eigenvectors of a symmetric A (lower triangle read) as columns (n, r), by descending eigenvalue; signs are
// arbitrary. Eigen's solver accumulates all n eigenvectors (~11 s at n = 2048, 5.5x its eigenvalues-only run); for
// r ≤ n / 8 this tridiagonalises, takes the eigenvalues from Eigen and only r eigenvectors of the tridiagonal matrix by
// inverse iteration (re-orthogonalised within clusters, as LAPACK's dstein), and maps them back. Each vector's residual
// is checked; if any misses (‖A v − λ v‖ > 1e-9 ‖A‖), the full solver's vectors are returned instead. Throws Error
// if the full solver fails. fast (optional): whether the tridiagonal path's vectors were returned.
Eigen::MatrixXd top_eigenvectors(const Eigen::MatrixXd& A, int r, bool* fast = nullptr);

// The lower Cholesky factor L of a symmetric positive definite A (L Lᵀ = A, Eigen's blocked LLT); ok = false if
// A is not positive definite.
Eigen::MatrixXd cholesky_lower(const Eigen::MatrixXd& A, bool& ok);

// A⁻¹ B by A.ldlt() for a symmetric positive (semi)definite A.
Eigen::MatrixXd ldlt_solve(const Eigen::MatrixXd& A, const Eigen::MatrixXd& B);
Eigen::VectorXd ldlt_solve_vector(const Eigen::MatrixXd& A, const Eigen::VectorXd& b); // the vector path of the solve
// A⁻¹ B by A.llt() for a symmetric positive definite A, falling back to ldlt_solve when the Cholesky factorisation
// fails. Eigen's LLT is blocked (its updates are parallel GEMMs); its LDLT is not: on a 5632² system ~10× slower.
Eigen::MatrixXd spd_solve(const Eigen::MatrixXd& A, const Eigen::MatrixXd& B);

// A⁻¹ of a square A (Eigen's inverse(): partial-pivoting LU for dynamic sizes).
Eigen::MatrixXd inverse(const Eigen::MatrixXd& A);

} // namespace moebius::quant
