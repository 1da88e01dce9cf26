#include "quantizer/linalg.h"

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#include <Eigen/LU>

namespace moebius::quant {

SymmetricEigen symmetric_eigen(const Eigen::MatrixXd& A, bool roots) {
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(A);
    SymmetricEigen                                 r;
    r.ok = es.info() == Eigen::Success;
    if (!r.ok) return r;
    r.values  = es.eigenvalues();
    r.vectors = es.eigenvectors();
    if (roots) {
        r.sqrt         = es.operatorSqrt();
        r.inverse_sqrt = es.operatorInverseSqrt();
    }
    return r;
}

Eigen::MatrixXd ldlt_solve(const Eigen::MatrixXd& A, const Eigen::MatrixXd& B) { return A.ldlt().solve(B); }

Eigen::MatrixXd spd_solve(const Eigen::MatrixXd& A, const Eigen::MatrixXd& B) {
    Eigen::LLT<Eigen::MatrixXd> llt(A);
    if (llt.info() == Eigen::Success) return llt.solve(B);
    return ldlt_solve(A, B);
}

Eigen::VectorXd ldlt_solve_vector(const Eigen::MatrixXd& A, const Eigen::VectorXd& b) { return A.ldlt().solve(b); }

Eigen::MatrixXd inverse(const Eigen::MatrixXd& A) { return A.inverse(); }

} // namespace moebius::quant
