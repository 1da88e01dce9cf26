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

// Solves (T − σI) x = b in place for the symmetric tridiagonal T (diagonal d (n), off-diagonal e (n − 1)) by Gaussian
// elimination with partial pivoting (LAPACK's dgttrf / dgttrs); a zero pivot is replaced by `tiny`, so that inverse
// iteration at an exact eigenvalue still grows the eigenvector.
void shifted_tridiagonal_solve(const Eigen::VectorXd& d, const Eigen::VectorXd& e, double sigma, double tiny,
                               Eigen::VectorXd& x) {
    const int           n = (int)d.size();
    std::vector<double> dl(n), dd(n), du(n), du2(n, 0.0);
    std::vector<char>   swapped(n, 0);
    for (int i = 0; i < n; ++i) {
        dd[i] = d[i] - sigma;
        if (i + 1 < n) dl[i] = du[i] = e[i];
    }
    for (int i = 0; i + 1 < n; ++i) {
        if (std::abs(dd[i]) >= std::abs(dl[i])) { // no row interchange
            if (dd[i] == 0) dd[i] = tiny;
            const double f = dl[i] / dd[i];
            dl[i]          = f;
            dd[i + 1] -= f * du[i];
        } else { // interchange rows i and i + 1
            const double f = dd[i] / dl[i];
            dd[i]          = dl[i];
            dl[i]          = f;
            const double t = du[i];
            du[i]          = dd[i + 1];
            dd[i + 1]      = t - f * dd[i + 1];
            if (i + 2 < n) {
                du2[i]    = du[i + 1];
                du[i + 1] = -f * du[i + 1];
            }
            swapped[i] = 1;
        }
    }
    if (dd[n - 1] == 0) dd[n - 1] = tiny;
    for (int i = 0; i + 1 < n; ++i) { // L y = P b
        if (swapped[i]) std::swap(x[i], x[i + 1]);
        x[i + 1] -= dl[i] * x[i];
    }
    x[n - 1] /= dd[n - 1]; // U x = y
    if (n > 1) x[n - 2] = (x[n - 2] - du[n - 2] * x[n - 1]) / dd[n - 2];
    for (int i = n - 3; i >= 0; --i) x[i] = (x[i] - du[i] * x[i + 1] - du2[i] * x[i + 2]) / dd[i];
}

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
        for (int it = 0; it < 5; ++it) {
            shifted_tridiagonal_solve(d, e, l + 4 * eps * norm, eps * norm, x);
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
