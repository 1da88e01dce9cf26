// quantizer/linalg: the top-r eigenvector path against Eigen's full solver.
#include <gtest/gtest.h>

#include <Eigen/Eigenvalues>
#include <random>

#include "quant_test_util.h"
#include "quantizer/linalg.h"

using namespace moebius::quant;

namespace {

Eigen::MatrixXd random_matrix(int n, int m, uint32_t seed) {
    std::mt19937                     rng(seed);
    std::normal_distribution<double> nd(0, 1);
    Eigen::MatrixXd                  A(n, m);
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < m; ++j) A(i, j) = nd(rng);
    return A;
}

// The span of V (n, r) against the reference's: ‖V Vᵀ − U Uᵀ‖ (both orthonormal), and V's orthonormality.
void expect_same_subspace(const Eigen::MatrixXd& V, const Eigen::MatrixXd& U, double tol) {
    const int r = (int)U.cols();
    ASSERT_EQ(V.rows(), U.rows());
    ASSERT_EQ(V.cols(), r);
    EXPECT_LT((V.transpose() * V - Eigen::MatrixXd::Identity(r, r)).norm(), tol);
    EXPECT_LT((V * V.transpose() - U * U.transpose()).norm(), tol);
}

} // namespace

TEST(Linalg, TopEigenvectorsMatchTheFullSolver) {
    // A Gram matrix with a decaying spectrum (the CEJD case): each vector matches the reference's up to sign.
    const int             n = 300, r = 16;
    const Eigen::MatrixXd X = random_matrix(n, 2 * n, 1);
    Eigen::MatrixXd       D = Eigen::MatrixXd::Zero(n, n);
    for (int i = 0; i < n; ++i) D(i, i) = std::pow(0.97, i);
    const Eigen::MatrixXd Q = Eigen::HouseholderQR<Eigen::MatrixXd>(random_matrix(n, n, 2)).householderQ();
    const Eigen::MatrixXd A = Q * D * Q.transpose() + 1e-3 * X * X.transpose() / (2.0 * n);
    bool                  fast = false;
    const Eigen::MatrixXd V = top_eigenvectors(A, r, &fast), U = moebius::test::reference_top_eigenvectors(A, r);
    EXPECT_TRUE(fast); // the tridiagonal path, not the fallback
    for (int k = 0; k < r; ++k) EXPECT_GT(std::abs(V.col(k).dot(U.col(k))), 1 - 1e-10) << k;
    expect_same_subspace(V, U, 1e-9);
}

TEST(Linalg, TopEigenvectorsOfClusteredAndRepeatedEigenvalues) {
    // Top eigenvalues repeated (a 3-fold one) and clustered: any orthonormal basis of each cluster is right, so the
    // spans are compared; the orthogonalisation within clusters is what keeps the vectors apart.
    const int       n = 200, r = 10;
    Eigen::VectorXd lam(n);
    for (int i = 0; i < n; ++i) lam[i] = 1.0 / (1 + i);
    lam[0] = lam[1] = lam[2] = 5.0;
    lam[3] = 4.0;
    lam[4] = 4.0 + 1e-9;
    lam[5] = 4.0 - 1e-9;
    // The subspace boundary (r = 10) sits between lam[9] and lam[10], well separated.
    const Eigen::MatrixXd Q = Eigen::HouseholderQR<Eigen::MatrixXd>(random_matrix(n, n, 3)).householderQ();
    const Eigen::MatrixXd A = Q * lam.asDiagonal() * Q.transpose();
    for (int k : {3, 6, r}) {
        bool fast = false;
        expect_same_subspace(top_eigenvectors(A, k, &fast), k == r ? moebius::test::reference_top_eigenvectors(A, r) : Q.leftCols(k), 1e-8);
        EXPECT_TRUE(fast) << k;
    }
}

TEST(Linalg, TopEigenvectorsReadOnlyTheLowerTriangleAndHandleSmallSizes) {
    const Eigen::MatrixXd X = random_matrix(128, 128, 4);
    Eigen::MatrixXd       A = X * X.transpose();
    const Eigen::MatrixXd U = moebius::test::reference_top_eigenvectors(A, 8);
    A.triangularView<Eigen::StrictlyUpper>().setConstant(1e6); // garbage above the diagonal is not read
    bool fast = false;
    expect_same_subspace(top_eigenvectors(A, 8, &fast), U, 1e-9);
    EXPECT_TRUE(fast);
    // Below the fast path's sizes (n < 64 or r > n / 8) the full solver answers.
    const Eigen::MatrixXd S = random_matrix(20, 20, 5), B = S * S.transpose();
    expect_same_subspace(top_eigenvectors(B, 5, &fast), moebius::test::reference_top_eigenvectors(B, 5), 1e-12);
    EXPECT_FALSE(fast);
}

TEST(Linalg, CholeskyLowerFactorsAndRejectsIndefinite) {
    const Eigen::MatrixXd X = random_matrix(30, 60, 6), A = X * X.transpose();
    bool                  ok = false;
    const Eigen::MatrixXd L  = cholesky_lower(A, ok);
    ASSERT_TRUE(ok);
    EXPECT_LT((L * L.transpose() - A).norm(), 1e-10 * A.norm());
    EXPECT_EQ((L.triangularView<Eigen::StrictlyUpper>().toDenseMatrix()).norm(), 0.0);
    Eigen::MatrixXd B = A;
    B(0, 0)           = -1;
    cholesky_lower(B, ok);
    EXPECT_FALSE(ok);
}
