#include "quantizer/linalg.h"

#include "engine/core/error.h"

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#include <Eigen/LU>
#include <algorithm>
#include <cmath>
#include <vector>

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

namespace {

// The LU factors of T − σI for the symmetric tridiagonal T (diagonal d (n), off-diagonal e (n − 1)) by Gaussian
// elimination with partial pivoting (LAPACK's dgttrf), and solves with them (dgttrs). A zero pivot is replaced by
// `tiny`, so that inverse iteration at an exact eigenvalue still grows the eigenvector.
class ShiftedTridiagonalLu {
public:
    ShiftedTridiagonalLu(const Eigen::VectorXd& d, const Eigen::VectorXd& e, double sigma, double tiny)
        : n_((int)d.size()), dl_(n_), dd_(n_), du_(n_), du2_(n_, 0.0), swapped_(n_, 0) {
        for (int i = 0; i < n_; ++i) {
            dd_[i] = d[i] - sigma;
            if (i + 1 < n_) dl_[i] = du_[i] = e[i];
        }
        for (int i = 0; i + 1 < n_; ++i) {
            if (std::abs(dd_[i]) >= std::abs(dl_[i])) { // no row interchange
                if (dd_[i] == 0) dd_[i] = tiny;
                const double f = dl_[i] / dd_[i];
                dl_[i]         = f;
                dd_[i + 1] -= f * du_[i];
            } else { // interchange rows i and i + 1
                const double f = dd_[i] / dl_[i];
                dd_[i]         = dl_[i];
                dl_[i]         = f;
                const double t = du_[i];
                du_[i]         = dd_[i + 1];
                dd_[i + 1]     = t - f * dd_[i + 1];
                if (i + 2 < n_) {
                    du2_[i]    = du_[i + 1];
                    du_[i + 1] = -f * du_[i + 1];
                }
                swapped_[i] = 1;
            }
        }
        if (dd_[n_ - 1] == 0) dd_[n_ - 1] = tiny;
    }

    // x ← (T − σI)⁻¹ x
    void solve(Eigen::VectorXd& x) const {
        for (int i = 0; i + 1 < n_; ++i) { // L y = P b
            if (swapped_[i]) std::swap(x[i], x[i + 1]);
            x[i + 1] -= dl_[i] * x[i];
        }
        x[n_ - 1] /= dd_[n_ - 1]; // U x = y
        if (n_ > 1) x[n_ - 2] = (x[n_ - 2] - du_[n_ - 2] * x[n_ - 1]) / dd_[n_ - 2];
        for (int i = n_ - 3; i >= 0; --i) x[i] = (x[i] - du_[i] * x[i + 1] - du2_[i] * x[i + 2]) / dd_[i];
    }

private:
    int                 n_;
    std::vector<double> dl_, dd_, du_, du2_;
    std::vector<char>   swapped_;
};

} // namespace

Eigen::MatrixXd top_eigenvectors(const Eigen::MatrixXd& A, int r, bool* fast) {
    const int n = (int)A.rows();
    if (fast) *fast = false;
    auto      full = [&] {
        Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(A);
        if (es.info() != Eigen::Success) throw Error("symmetric eigendecomposition failed");
        return Eigen::MatrixXd(es.eigenvectors().rightCols(r).rowwise().reverse());
    };
    if (r <= 0 || n < 64 || r > n / 8) return full();
    Eigen::Tridiagonalization<Eigen::MatrixXd> tri(A);
    const Eigen::VectorXd d = tri.diagonal(), e = tri.subDiagonal();
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> ev;
    ev.computeFromTridiagonal(d, e, Eigen::EigenvaluesOnly);
    if (ev.info() != Eigen::Success) return full();
    const Eigen::VectorXd& lam  = ev.eigenvalues(); // ascending
    double                 norm = 0;                // ‖T‖₁ = ‖A‖₁ up to rounding
    for (int i = 0; i < n; ++i)
        norm = std::max(norm, std::abs(d[i]) + (i > 0 ? std::abs(e[i - 1]) : 0.0) + (i + 1 < n ? std::abs(e[i]) : 0.0));
    if (!(norm > 0)) return full();
    const double    eps = std::numeric_limits<double>::epsilon(), cluster = 1e-3 * norm;
    Eigen::MatrixXd Y(n, r);
    for (int k = 0; k < r; ++k) {
        const double l = lam[n - 1 - k];
        // Start: a fixed, non-degenerate vector (deterministic); perturb the shift off the computed eigenvalue.
        Eigen::VectorXd x(n);
        for (int i = 0; i < n; ++i) x[i] = 1.0 + 0.5 * std::sin(1.0 + 0.7 * i + 0.3 * k);
        x.normalize();
        const ShiftedTridiagonalLu lu(d, e, l + 4 * eps * norm, eps * norm); // the same shift for every iteration
        for (int it = 0; it < 5; ++it) {
            lu.solve(x);
            // Orthogonalise against the vectors of the same cluster (those found before, with close eigenvalues).
            for (int j = 0; j < k; ++j)
                if (std::abs(lam[n - 1 - j] - l) <= cluster) x -= Y.col(j).dot(x) * Y.col(j);
            const double xn = x.norm();
            if (!(xn > 0) || !std::isfinite(xn)) return full();
            x /= xn;
        }
        Y.col(k) = x;
    }
    Eigen::MatrixXd V = tri.matrixQ() * Y; // (n, r)
    // The residual of every vector on A itself: the fast path must be as good as the full solver, else it is not used.
    const Eigen::MatrixXd R = A.selfadjointView<Eigen::Lower>() * V;
    for (int k = 0; k < r; ++k)
        if ((R.col(k) - lam[n - 1 - k] * V.col(k)).norm() > 1e-9 * norm) return full();
    if (fast) *fast = true;
    return V;
}

Eigen::MatrixXd cholesky_lower(const Eigen::MatrixXd& A, bool& ok) {
    Eigen::LLT<Eigen::MatrixXd> llt(A);
    ok = llt.info() == Eigen::Success;
    return ok ? Eigen::MatrixXd(llt.matrixL()) : Eigen::MatrixXd();
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
