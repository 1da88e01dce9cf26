// GPTQ / AGQ: equality with RTN for H = I, with a textbook sequential OBS reference (independent of the blocked,
// Cholesky-based implementation), error ≤ RTN, act_order, dead columns, the reported objective, bad input.
#include "engine/core/error.h"
#include "quantizer/methods/gptq.h"

#include <Eigen/Dense>
#include <cmath>
#include <gtest/gtest.h>

#include "quant_test_util.h"
#include <numeric>
#include <omp.h>
#include <random>

using namespace moebius;
using namespace moebius::quant;
using moebius::test::correlated_h;
using moebius::test::hessian_objective;
using moebius::test::random_w;

namespace {


// Textbook OBS, one column at a time in double: quantize column j (in the given order), spread its error over the
// remaining columns with the inverse of H restricted to them, recomputed from scratch for every column.
UniformQuantized obs_reference(const std::vector<float>& W, int out, int n, const std::vector<double>& H,
                               const UniformConfig& c, double damp, const std::vector<int>& perm, bool fixed) {
    const int       gs = c.group < 0 ? n : c.group, ng = n / gs;
    Eigen::MatrixXd Hp(n, n);
    double          mean = 0;
    for (int i = 0; i < n; ++i)
        mean += H[(size_t)i * n + i] / n;
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j)
            Hp(i, j) = H[(size_t)perm[i] * n + perm[j]] + (i == j ? damp * mean : 0.0);
    UniformQuantized q;
    q.out = out, q.in = n, q.bits = c.bits, q.group = gs, q.sym = c.sym;
    q.codes.assign((size_t)out * n, 0);
    q.scales.assign((size_t)out * ng, 0);
    q.zeros.assign((size_t)out * ng, 0);
    for (int r = 0; r < out; ++r) {
        std::vector<GridParams> grids(ng);
        if (fixed)
            for (int g = 0; g < ng; ++g)
                grids[g] = fit_grid(&W[(size_t)r * n + g * gs], gs, 1, c);
        std::vector<double> w(n);
        for (int j = 0; j < n; ++j)
            w[j] = W[(size_t)r * n + perm[j]];
        for (int j = 0; j < n; ++j) {
            if (!fixed && j % gs == 0)
                grids[j / gs] = fit_grid(&w[j], gs, 1, c);
            const int       g    = perm[j] / gs;
            const int       m    = n - j;
            Eigen::MatrixXd Hinv = Hp.block(j, j, m, m).inverse();
            int             code = quantize_code(w[j], grids[g], c.bits);
            double          e    = (w[j] - dequantize_code(code, grids[g])) / Hinv(0, 0);
            for (int k = 1; k < m; ++k)
                w[j + k] -= e * Hinv(0, k);
            q.codes[(size_t)r * n + perm[j]] = (uint8_t)code;
        }
        for (int g = 0; g < ng; ++g) {
            q.scales[(size_t)r * ng + g] = grids[g].scale;
            q.zeros[(size_t)r * ng + g]  = grids[g].zero;
        }
    }
    return q;
}

std::vector<int> identity_perm(int n) {
    std::vector<int> p(n);
    std::iota(p.begin(), p.end(), 0);
    return p;
}

void expect_same(const UniformQuantized& a, const UniformQuantized& b, const std::string& what) {
    EXPECT_EQ(a.group, b.group) << what;
    EXPECT_EQ(a.codes, b.codes) << what;
    EXPECT_EQ(a.scales, b.scales) << what;
    EXPECT_EQ(a.zeros, b.zeros) << what;
}

} // namespace

TEST(Gptq, IdentityHessianEqualsRtn) {
    const int           out = 6, n = 32;
    auto                W = random_w(out, n, 3);
    std::vector<double> H((size_t)n * n, 0.0);
    for (int i = 0; i < n; ++i)
        H[(size_t)i * n + i] = 1;
    for (int bits : {2, 3, 4, 8})
        for (bool sym : {false, true})
            for (int group : {-1, 8})
                for (bool fixed : {false, true}) {
                    GptqOptions o;
                    o.grid          = UniformConfig{bits, group, sym, false};
                    o.block         = 5;
                    o.static_groups = fixed;
                    expect_same(gptq_quantize(W.data(), out, n, H, o), rtn_quantize(W.data(), out, n, o.grid),
                                "bits " + std::to_string(bits));
                }
}

TEST(Gptq, MatchesSequentialObsReference) {
    const int out = 3, n = 8;
    auto      W = random_w(out, n, 4);
    auto      H = correlated_h(n, 40, 5);
    for (int group : {-1, 4, 2})
        for (bool sym : {false, true})
            for (bool fixed : {false, true})
                for (int block : {1, 3, 8}) {
                    GptqOptions o;
                    o.grid          = UniformConfig{3, group, sym, false};
                    o.block         = block;
                    o.static_groups = fixed;
                    auto ref        = obs_reference(W, out, n, H, o.grid, o.damp, identity_perm(n), fixed || group < 0);
                    expect_same(gptq_quantize(W.data(), out, n, H, o), ref,
                                "group " + std::to_string(group) + " block " + std::to_string(block) + " static " +
                                    std::to_string(fixed) + " sym " + std::to_string(sym));
                }
}

TEST(Gptq, BlockSizeIndependentOnLargerMatrix) {
    // Groups straddling block boundaries exercise the pending lazy update applied before a group is fitted.
    const int   out = 40, n = 48; // 40 rows: two row chunks when two threads run
    auto        W = random_w(out, n, 6);
    auto        H = correlated_h(n, 200, 7);
    GptqOptions o;
    o.grid          = UniformConfig{2, 12, false, false};
    o.static_groups = false;
    o.block         = n;
    auto ref        = obs_reference(W, out, n, H, o.grid, o.damp, identity_perm(n), false);
    expect_same(gptq_quantize(W.data(), out, n, H, o), ref, "block 48");
    for (int block : {5, 16, 128}) {
        o.block = block;
        expect_same(gptq_quantize(W.data(), out, n, H, o), ref, "block " + std::to_string(block));
    }
}

TEST(Gptq, ErrorBelowRtnAndReportedObjective) {
    const int out = 24, n = 64;
    auto      W = random_w(out, n, 8);
    auto      H = correlated_h(n, 300, 9);
    for (bool sym : {false, true})
        for (int group : {-1, 16}) {
            GptqOptions o;
            o.grid  = UniformConfig{3, group, sym, false};
            o.block = 16;
            GptqReport rep;
            auto       g   = gptq_quantize(W.data(), out, n, H, o, &rep);
            auto       r   = rtn_quantize(W.data(), out, n, o.grid);
            double     eg  = hessian_objective(W, g.dequantize(), out, n, H);
            double     er  = hessian_objective(W, r.dequantize(), out, n, H);
            double     ref = hessian_objective(W, std::vector<float>(W.size(), 0.0f), out, n, H);
            EXPECT_LT(eg, 0.8 * er) << "sym " << sym << " group " << group;
            EXPECT_NEAR(rep.error, eg, 1e-9 * ref);
            EXPECT_NEAR(rep.reference, ref, 1e-9 * ref);
            EXPECT_NEAR(rep.rel_error, eg / ref, 1e-9);
            EXPECT_EQ(rep.damp_used, 0.01);
            EXPECT_EQ(rep.dead_columns, 0);
        }
}

TEST(Gptq, ActOrderStaticGroupsUnpermutes) {
    const int out = 3, n = 8;
    auto      W = random_w(out, n, 10);
    auto      H = correlated_h(n, 40, 11);
    // Make the diagonal order far from the identity.
    for (int i = 0; i < n; ++i)
        H[(size_t)i * n + i] *= 1.0 + 0.5 * ((i * 5) % n);
    std::vector<int> perm = identity_perm(n);
    std::stable_sort(perm.begin(), perm.end(),
                     [&](int a, int b) { return H[(size_t)a * n + a] > H[(size_t)b * n + b]; });
    ASSERT_NE(perm, identity_perm(n));
    for (int group : {-1, 4})
        for (int block : {1, 3, 8}) {
            GptqOptions o;
            o.grid      = UniformConfig{3, group, false, false};
            o.block     = block;
            o.act_order = true;
            auto q      = gptq_quantize(W.data(), out, n, H, o);
            expect_same(q, obs_reference(W, out, n, H, o.grid, o.damp, perm, true), "act_order");
            // Groups live on the original columns: the parameters are RTN's, fitted on the original W.
            auto r = rtn_quantize(W.data(), out, n, o.grid);
            EXPECT_EQ(q.scales, r.scales);
            EXPECT_EQ(q.zeros, r.zeros);
        }
}

TEST(Gptq, DeadColumnsAreZero) {
    const int out = 4, n = 8;
    auto      W = random_w(out, n, 12);
    auto      H = correlated_h(n, 40, 13);
    for (int j = 0; j < n; ++j)
        H[(size_t)2 * n + j] = H[(size_t)j * n + 2] = 0;
    GptqOptions o;
    o.grid = UniformConfig{4, 4, false, false};
    GptqReport rep;
    auto       q = gptq_quantize(W.data(), out, n, H, o, &rep);
    auto       d = q.dequantize();
    for (int r = 0; r < out; ++r)
        EXPECT_EQ(d[r * n + 2], 0.0f);
    EXPECT_EQ(rep.dead_columns, 1);
    EXPECT_GT(rep.rel_error, 0);
    EXPECT_LT(rep.rel_error, 0.1);
}

TEST(Gptq, BadInputAndIndefiniteH) {
    const int           out = 2, n = 8;
    auto                W = random_w(out, n, 14);
    std::vector<double> I((size_t)n * n, 0.0);
    for (int i = 0; i < n; ++i)
        I[(size_t)i * n + i] = 1;
    GptqOptions o;
    o.grid.group = 3;
    EXPECT_THROW(gptq_quantize(W.data(), out, n, I, o), InputError);
    o.grid.group = 4;
    o.grid.bits  = 9;
    EXPECT_THROW(gptq_quantize(W.data(), out, n, I, o), InputError);
    o.grid.bits = 1;
    EXPECT_THROW(gptq_quantize(W.data(), out, n, I, o), InputError);
    o.grid.bits     = 4;
    o.act_order     = true;
    o.static_groups = false;
    EXPECT_THROW(gptq_quantize(W.data(), out, n, I, o), InputError);
    o.act_order = false;
    EXPECT_THROW(gptq_quantize(W.data(), out, n, std::vector<double>(10, 1.0), o), InputError);
    // Strongly indefinite: 10×, 100×, 1000× damping cannot fix it.
    auto bad = I;
    bad[0]   = -1e6;
    try {
        gptq_quantize(W.data(), out, n, bad, o);
        FAIL();
    } catch (const InputError&) {
        FAIL() << "expected moebius::Error, not InputError";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("positive definite"), std::string::npos) << e.what();
    }
    // Mildly indefinite: the retry with more damping succeeds.
    auto mild = I;
    mild[0]   = -0.05;
    GptqReport rep;
    gptq_quantize(W.data(), out, n, mild, o, &rep);
    EXPECT_DOUBLE_EQ(rep.damp_used, 0.1);
}

TEST(Gptq, ThreadedRowChunksMatchSingleThread) {
    const int   out = 70, n = 48; // ≥ 64 rows: two row chunks with two threads
    auto        W = random_w(out, n, 15);
    auto        H = correlated_h(n, 200, 16);
    GptqOptions o;
    o.grid          = UniformConfig{3, 16, false, false};
    o.static_groups = false;
    o.block         = 20;
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    auto one = gptq_quantize(W.data(), out, n, H, o);
    omp_set_num_threads(2);
    auto two = gptq_quantize(W.data(), out, n, H, o);
    omp_set_num_threads(saved);
    expect_same(one, two, "threads");
    expect_same(one, obs_reference(W, out, n, H, o.grid, o.damp, identity_perm(n), false), "reference");
}
