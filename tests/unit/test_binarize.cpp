// Binary PTQ (BiLLM, ARB, ARB-X, ARB-RC): hand-checked BRA fits, the mask search (planted salient columns, the split
// threshold's quantile range), monotone ARB refinements, method ordering, block independence under H = I, the effect
// of the GPTQ compensation, f16-exact valid output, determinism across runs and threads, and a bundled-model matrix.
#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "engine/cpu/model.h"
#include "quantizer/methods/binarize.h"
#include "test_util.h"

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

const char* kMethods[] = {"billm", "arb", "arb-x", "arb-rc"};

std::vector<double> identity_h(int n) {
    std::vector<double> H((size_t)n * n, 0.0);
    for (int i = 0; i < n; ++i)
        H[(size_t)i * n + i] = 1;
    return H;
}

double plain_error(const std::vector<float>& w, const std::vector<float>& q) {
    double s = 0;
    for (size_t i = 0; i < w.size(); ++i)
        s += ((double)w[i] - q[i]) * ((double)w[i] - q[i]);
    return s;
}

// 1-bit RTN: sign(w) · mean|w| per row.
std::vector<float> sign_binarize(const std::vector<float>& w, int out, int in) {
    std::vector<float> q(w.size());
    for (int r = 0; r < out; ++r) {
        double a = 0;
        for (int j = 0; j < in; ++j)
            a += std::abs(w[(size_t)r * in + j]);
        a /= in;
        for (int j = 0; j < in; ++j)
            q[(size_t)r * in + j] = w[(size_t)r * in + j] >= 0 ? (float)a : (float)-a;
    }
    return q;
}

float f16(double v) {
    return f16_to_f32(f32_to_f16((float)v));
}

struct Order1 {
    double              mean = 0, alpha = 0;
    std::vector<int8_t> sign;
};
// BRA order 1 by hand: μ = mean, α = mean|x − μ|, s = sign(x − μ) with +1 at 0.
Order1 order1(const std::vector<double>& x) {
    Order1 f;
    for (double v : x)
        f.mean += v / x.size();
    for (double v : x) {
        f.alpha += std::abs(v - f.mean) / x.size();
        f.sign.push_back(v >= f.mean ? 1 : -1);
    }
    return f;
}

// BRA on the masked entries of x (rows, B), row by row, as binary.py high_order_residual (with sign(0) = +1):
// the approximation, zero outside the mask.
std::vector<double> bra_masked(const std::vector<double>& x, const std::vector<uint8_t>& mask, int rows, int B,
                               int order) {
    std::vector<double> sum(x.size(), 0.0);
    for (int od = 0; od < order; ++od)
        for (int r = 0; r < rows; ++r) {
            double mu = 0, a = 0;
            int    n = 0;
            for (int j = 0; j < B; ++j)
                if (mask[r * B + j])
                    mu += x[r * B + j] - sum[r * B + j], ++n;
            if (n == 0)
                continue;
            mu /= n;
            for (int j = 0; j < B; ++j)
                if (mask[r * B + j])
                    a += std::abs(x[r * B + j] - sum[r * B + j] - mu) / n;
            for (int j = 0; j < B; ++j)
                if (mask[r * B + j])
                    sum[r * B + j] += mu + (x[r * B + j] - sum[r * B + j] - mu >= 0 ? a : -a);
        }
    return sum;
}

double sq_error(const std::vector<double>& x, const std::vector<double>& a, const std::vector<double>& b,
                const std::vector<double>& c) {
    double e = 0;
    for (size_t i = 0; i < x.size(); ++i)
        e += (x[i] - a[i] - b[i] - c[i]) * (x[i] - a[i] - b[i] - c[i]);
    return e;
}

// numpy.quantile(v, q) (linear) after sorting.
double np_quantile(std::vector<double> v, double q) {
    std::sort(v.begin(), v.end());
    const double pos = q * (v.size() - 1);
    const size_t lo  = (size_t)pos;
    return v[lo] + (v[std::min(lo + 1, v.size() - 1)] - v[lo]) * (pos - lo);
}

// A direct transcription of BiLLM's utils/autosearch.py structural_searching (masks as full matrices, errors as
// plain sums) plus ARB-LLM's order2_group split of the salient columns.
void reference_search(const std::vector<double>& S, int rows, int B, int up_lim, bool cgb,
                      std::vector<uint8_t>& salient, std::vector<uint8_t>& split) {
    std::vector<double> score(B, 0.0);
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < B; ++j)
            score[j] += std::abs(S[r * B + j]);
    std::vector<int> order(B);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score[a] > score[b]; });
    auto column_mask = [&](int k) {
        std::vector<uint8_t> m((size_t)rows * B, 0);
        for (int r = 0; r < rows; ++r)
            for (int i = 0; i < k; ++i)
                m[r * B + order[i]] = 1;
        return m;
    };
    auto negate = [](std::vector<uint8_t> m) {
        for (auto& v : m)
            v = !v;
        return m;
    };
    const std::vector<double> zero(S.size(), 0.0);
    double                    best  = INFINITY;
    int                       kbest = 0;
    for (int i = 1; i < up_lim; ++i) {
        auto         m3 = column_mask(i);
        const double e  = sq_error(S, bra_masked(S, m3, rows, B, 2), bra_masked(S, negate(m3), rows, B, 2), zero);
        if (e < best)
            best = e, kbest = i;
    }
    const auto m3 = column_mask(kbest);
    salient.assign(B, 0);
    for (int i = 0; i < kbest; ++i)
        salient[order[i]] = 1;
    split.assign((size_t)rows * B, 0);
    const auto          g3 = bra_masked(S, m3, rows, B, 2);
    std::vector<double> flat;
    for (size_t i = 0; i < S.size(); ++i)
        flat.push_back(m3[i] ? 0.0 : std::abs(S[i]));
    best = INFINITY;
    std::vector<uint8_t> best2;
    for (int t = 0; t <= 80; ++t) {
        const double         p = np_quantile(flat, 0.10 + 0.01 * t);
        std::vector<uint8_t> m1(S.size()), m2(S.size());
        for (size_t i = 0; i < S.size(); ++i)
            m1[i] = !m3[i] && std::abs(S[i]) < p, m2[i] = !m3[i] && std::abs(S[i]) >= p;
        const double e = sq_error(S, bra_masked(S, m1, rows, B, 1), bra_masked(S, m2, rows, B, 1), g3);
        if (e < best)
            best = e, best2 = m2;
    }
    split = best2;
    if (!cgb)
        return;
    std::vector<double> nz;
    for (size_t i = 0; i < S.size(); ++i)
        if (m3[i] && S[i] != 0)
            nz.push_back(std::abs(S[i]));
    best = INFINITY;
    std::vector<uint8_t> best5;
    for (int t = 0; t <= 80; ++t) {
        const double         p = np_quantile(nz, 0.10 + 0.01 * t);
        std::vector<uint8_t> m4(S.size()), m5(S.size());
        for (size_t i = 0; i < S.size(); ++i)
            m4[i] = m3[i] && std::abs(S[i]) < p, m5[i] = m3[i] && std::abs(S[i]) >= p;
        const double e = sq_error(S, bra_masked(S, m4, rows, B, 2), bra_masked(S, m5, rows, B, 2), zero);
        if (e < best)
            best = e, best5 = m5;
    }
    for (size_t i = 0; i < S.size(); ++i)
        split[i] |= best5[i];
}

void expect_same(const BinaryWeights& a, const BinaryWeights& b, const std::string& what) {
    EXPECT_EQ(a.salient, b.salient) << what;
    EXPECT_EQ(a.split, b.split) << what;
    EXPECT_EQ(a.sign1, b.sign1) << what;
    EXPECT_EQ(a.sign2, b.sign2) << what;
    EXPECT_EQ(a.row_scale, b.row_scale) << what;
    EXPECT_EQ(a.row_mean, b.row_mean) << what;
    EXPECT_EQ(a.col_scale, b.col_scale) << what;
}

} // namespace

TEST(Binarize, BraOrder1HandComputed) {
    // Row 0: μ = 3, |x − μ| = 2 1 0 3 → α = 1.5 (x = μ takes +1). Row 1: two groups by the split bits.
    const int                  B = 6;
    const std::vector<float>   X = {1, 2, 3, 6, 10, 20, -0.5f, 0.25f, 0.25f, 1, 4, 4};
    const std::vector<uint8_t> sal(B, 0);
    const std::vector<uint8_t> split = {0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1};
    BinarizeOptions            o;
    o.method = "billm";
    auto bw  = binarize_detail::fit_block(X.data(), 2, B, sal, split, o, {});
    ASSERT_NO_THROW(bw.validate());
    EXPECT_EQ(bw.salient_groups, 1);
    EXPECT_TRUE(bw.has_mean);
    EXPECT_FALSE(bw.has_col_scale);
    // (row, block, group / slot): 3 groups, 4 slots
    EXPECT_EQ(bw.row_mean[0], 3.0f);
    EXPECT_EQ(bw.row_scale[0], 1.5f);
    EXPECT_EQ(bw.row_mean[1], 15.0f); // group 1 = {10, 20}
    EXPECT_EQ(bw.row_scale[1], 5.0f);
    EXPECT_EQ(bw.row_mean[3 + 0], 0.25f); // row 1: {−0.5, 0.25, 0.25, 1}: |x − μ| = 0.75 0 0 0.75
    EXPECT_EQ(bw.row_scale[4 + 0], 0.375f);
    EXPECT_EQ(bw.row_mean[3 + 1], 4.0f); // {4, 4}: α = 0, signs +1
    EXPECT_EQ(bw.row_scale[4 + 1], 0.0f);
    EXPECT_EQ(bw.sign1, (std::vector<int8_t>{-1, -1, 1, 1, -1, 1, -1, 1, 1, 1, 1, 1}));
    EXPECT_EQ(bw.split, split);
    EXPECT_EQ(bw.dequantize(),
              (std::vector<float>{1.5f, 1.5f, 4.5f, 4.5f, 10, 20, -0.125f, 0.625f, 0.625f, 0.625f, 4, 4}));
    std::vector<double> trace;
    binarize_detail::fit_block(X.data(), 2, B, sal, split, o, {}, &trace);
    ASSERT_EQ(trace.size(), 1u);
    EXPECT_DOUBLE_EQ(trace[0], plain_error(X, bw.dequantize()));
}

TEST(Binarize, BraOrder2IsTwoOrder1Fits) {
    const int          B = 16;
    std::vector<float> X = random_w(3, B, 1);
    BinarizeOptions    o;
    o.method = "billm";
    auto bw  = binarize_detail::fit_block(X.data(), 3, B, std::vector<uint8_t>(B, 1),
                                          std::vector<uint8_t>((size_t)3 * B, 1), o, {});
    ASSERT_NO_THROW(bw.validate());
    for (int r = 0; r < 3; ++r) {
        std::vector<double> x(X.begin() + r * B, X.begin() + (r + 1) * B), res(B);
        const Order1        f1 = order1(x);
        for (int j = 0; j < B; ++j)
            res[j] = x[j] - f1.mean - f1.alpha * f1.sign[j];
        const Order1 f2 = order1(res);
        // 3 groups, 4 slots; the salient group is 2 with slots 2, 3 and its split bits are not used (stored 0).
        EXPECT_EQ(bw.row_mean[r * 3 + 2], f16(f1.mean + f2.mean)) << r;
        EXPECT_EQ(bw.row_scale[r * 4 + 2], f16(f1.alpha)) << r;
        EXPECT_EQ(bw.row_scale[r * 4 + 3], f16(f2.alpha)) << r;
        for (int j = 0; j < B; ++j) {
            EXPECT_EQ(bw.sign1[r * B + j], f1.sign[j]) << r << "," << j;
            EXPECT_EQ(bw.sign2[r * B + j], f2.sign[j]) << r << "," << j;
            EXPECT_EQ(bw.split[r * B + j], 0);
        }
    }
}

TEST(Binarize, PlantedLargeColumnsAreSalient) {
    const int          out = 64, n = 128;
    std::vector<float> W       = random_w(out, n, 2);
    const int          plant[] = {5, 40, 77, 120};
    for (int r = 0; r < out; ++r)
        for (int j : plant)
            W[(size_t)r * n + j] *= 12;
    for (const char* m : kMethods) {
        BinarizeOptions o;
        o.method = m;
        BinarizeReport rep;
        auto           bw = binarize(W.data(), out, n, identity_h(n), o, &rep);
        for (int j : plant)
            EXPECT_EQ(bw.salient[j], 1) << m << " column " << j;
        int n_sal = 0;
        for (int j = 0; j < n; ++j)
            n_sal += bw.salient[j];
        EXPECT_LE(n_sal, 49) << m;
        EXPECT_DOUBLE_EQ(rep.salient_fraction, (double)n_sal / n) << m;
    }
}

TEST(Binarize, MaskSearchMatchesDirectTranscription) {
    // The search's closed forms (sorted prefix sums, two-pass BRA2 errors, partial selection for the quantiles)
    // against the reference code's brute force.
    for (uint32_t seed : {21u, 22u, 23u})
        for (bool cgb : {false, true}) {
            const int           rows = 12, B = 48;
            auto                w = random_w(rows, B, seed);
            std::vector<double> S(w.size());
            for (size_t i = 0; i < w.size(); ++i)
                S[i] = (double)w[i] * w[i] * (i % B == 7 || i % B == 30 ? 9.0 : 1.0);
            std::vector<uint8_t> sal, split, rsal, rsplit;
            binarize_detail::search_masks(S, rows, B, 20, cgb, sal, split);
            reference_search(S, rows, B, 20, cgb, rsal, rsplit);
            EXPECT_EQ(sal, rsal) << seed << " " << cgb;
            EXPECT_EQ(split, rsplit) << seed << " " << cgb;
            EXPECT_GT(std::count(sal.begin(), sal.end(), 1), 0);
        }
}

TEST(Binarize, SplitThresholdWithinQuantileRange) {
    // With H = I the saliency is w² times a constant, so the split is a threshold on w² among the non-salient entries
    // that lies between the 0.10 and 0.90 quantiles of the population (salient entries counted as zeros).
    const int          out = 48, n = 256, B = 128;
    std::vector<float> W = random_w(out, n, 3);
    for (const char* m : {"billm", "arb-rc"}) {
        BinarizeOptions o;
        o.method = m;
        auto bw  = binarize(W.data(), out, n, identity_h(n), o);
        for (int b = 0; b < n / B; ++b) {
            std::vector<double> pop;
            double              max0 = 0, min1 = INFINITY;
            int                 n0 = 0, n1 = 0;
            for (int r = 0; r < out; ++r)
                for (int j = b * B; j < (b + 1) * B; ++j) {
                    const double s = (double)W[(size_t)r * n + j] * W[(size_t)r * n + j];
                    if (bw.salient[j]) {
                        pop.push_back(0);
                        continue;
                    }
                    pop.push_back(s);
                    if (bw.split[(size_t)r * n + j])
                        min1 = std::min(min1, s), ++n1;
                    else
                        max0 = std::max(max0, s), ++n0;
                }
            std::sort(pop.begin(), pop.end());
            auto q = [&](double p) {
                const double pos = p * (pop.size() - 1);
                const size_t lo  = (size_t)pos;
                return pop[lo] + (pop[std::min(lo + 1, pop.size() - 1)] - pop[lo]) * (pos - lo);
            };
            EXPECT_GT(n0, 0) << m << " block " << b;
            EXPECT_GT(n1, 0) << m << " block " << b;
            EXPECT_LT(max0, min1) << m << " block " << b;
            EXPECT_LE(max0, q(0.90) * (1 + 1e-9)) << m << " block " << b;
            EXPECT_GE(min1, q(0.10) * (1 - 1e-9)) << m << " block " << b;
        }
    }
}

TEST(Binarize, RefinementsNeverIncreaseTheObjective) {
    const int            rows = 24, B = 64;
    std::vector<float>   X = random_w(rows, B, 4);
    std::mt19937         rng(5);
    std::vector<uint8_t> sal(B, 0), split((size_t)rows * B);
    for (int j = 0; j < B; j += 7)
        sal[j] = 1;
    for (auto& s : split)
        s = rng() % 3 == 0;
    auto   Hv        = correlated_h(B, 200, 6);
    double mean_diag = 0;
    for (int j = 0; j < B; ++j)
        mean_diag += Hv[(size_t)j * B + j] / B;
    for (int j = 0; j < B; ++j)
        Hv[(size_t)j * B + j] += 0.01 * mean_diag;
    for (const char* m : {"arb", "arb-x", "arb-rc"}) {
        BinarizeOptions o;
        o.method = m;
        std::vector<double> trace;
        auto                bw = binarize_detail::fit_block(X.data(), rows, B, sal, split, o, Hv, &trace);
        ASSERT_NO_THROW(bw.validate()) << m;
        const size_t T = o.arb_iters + 1;
        ASSERT_EQ(trace.size(), std::string(m) == "arb-x" ? 2 * T : T) << m;
        for (size_t part = 0; part < trace.size() / T; ++part) {
            const double* t = trace.data() + part * T;
            for (size_t i = 1; i < T; ++i)
                EXPECT_LE(t[i], t[i - 1] * (1 + 1e-12)) << m << " part " << part << " iteration " << i;
            EXPECT_LT(t[T - 1], t[0]) << m << " part " << part; // and it does improve on random data
        }
        // The rounded result is close to the last unrounded objective.
        auto q = bw.dequantize();
        if (std::string(m) != "arb-x")
            EXPECT_NEAR(plain_error(X, q), trace.back(), 1e-3 * trace.back()) << m;
        else
            EXPECT_NEAR(hessian_objective(X, q, rows, B, Hv), trace.back(), 1e-3 * trace.back()) << m;
    }
}

TEST(Binarize, MethodOrdering) {
    const int          out = 96, n = 256;
    std::vector<float> W   = random_w(out, n, 7);
    auto               H   = correlated_h(n, 600, 8);
    auto               run = [&](const char* m) {
        BinarizeOptions o;
        o.method = m;
        BinarizeReport rep;
        auto           bw = binarize(W.data(), out, n, H, o, &rep);
        return std::pair{bw.dequantize(), rep};
    };
    auto [qb, rb]  = run("billm");
    auto [qx, rx]  = run("arb-x");
    auto [qrc, rr] = run("arb-rc");
    EXPECT_LT(rx.error, rb.error);
    auto sign = sign_binarize(W, out, n);
    EXPECT_LT(plain_error(W, qrc), 0.8 * plain_error(W, sign));
    EXPECT_LT(rr.error, hessian_objective(W, sign, out, n, H));
}

TEST(Binarize, IdentityHessianBlocksAreIndependent) {
    // H = I: U is diagonal, so nothing is compensated and each block is binarized as if it were the whole matrix.
    const int          out = 20, n = 256, B = 128;
    std::vector<float> W = random_w(out, n, 9);
    for (const char* m : kMethods) {
        BinarizeOptions o;
        o.method     = m;
        auto full    = binarize(W.data(), out, n, identity_h(n), o).dequantize();
        o.compensate = false;
        EXPECT_EQ(binarize(W.data(), out, n, identity_h(n), o).dequantize(), full) << m;
        o.compensate = true;
        for (int b = 0; b < n / B; ++b) {
            std::vector<float> half((size_t)out * B);
            for (int r = 0; r < out; ++r)
                for (int j = 0; j < B; ++j)
                    half[(size_t)r * B + j] = W[(size_t)r * n + b * B + j];
            auto q = binarize(half.data(), out, B, identity_h(B), o).dequantize();
            for (int r = 0; r < out; ++r)
                for (int j = 0; j < B; ++j)
                    ASSERT_EQ(q[(size_t)r * B + j], full[(size_t)r * n + b * B + j]) << m << " " << r << "," << j;
        }
    }
}

TEST(Binarize, CompensationLowersOutputError) {
    const int          out = 64, n = 256;
    std::vector<float> W = random_w(out, n, 10);
    auto               H = correlated_h(n, 500, 11);
    for (const char* m : kMethods) {
        BinarizeOptions o;
        o.method = m;
        BinarizeReport with, without;
        binarize(W.data(), out, n, H, o, &with);
        o.compensate = false;
        binarize(W.data(), out, n, H, o, &without);
        EXPECT_LT(with.error, 0.9 * without.error) << m;
    }
}

TEST(Binarize, ValidF16OutputAndReportedObjective) {
    const int          out = 40, n = 128;
    std::vector<float> W = random_w(out, n, 12, 0.02f);
    auto               H = correlated_h(n, 300, 13);
    for (const char* m : kMethods) {
        BinarizeOptions o;
        o.method = m;
        o.block  = 64;
        BinarizeReport rep;
        auto           bw = binarize(W.data(), out, n, H, o, &rep);
        ASSERT_NO_THROW(bw.validate()) << m;
        EXPECT_EQ(bw.block, 64);
        EXPECT_EQ(bw.salient_groups, std::string(m) == "billm" ? 1 : 2) << m;
        EXPECT_EQ(bw.has_mean, std::string(m) != "arb-rc") << m;
        EXPECT_EQ(bw.has_col_scale, std::string(m) == "arb-rc") << m;
        for (const auto* v : {&bw.row_scale, &bw.row_mean, &bw.col_scale})
            for (float x : *v)
                ASSERT_EQ(f16(x), x) << m;
        for (size_t i = 0; i < bw.sign1.size(); ++i) {
            ASSERT_TRUE(bw.sign1[i] == 1 || bw.sign1[i] == -1) << m;
            ASSERT_TRUE(bw.sign2[i] == 1 || bw.sign2[i] == -1) << m;
        }
        const auto   q   = bw.dequantize();
        const double ref = hessian_objective(W, std::vector<float>(W.size(), 0.0f), out, n, H);
        EXPECT_NEAR(rep.error, hessian_objective(W, q, out, n, H), 1e-9 * ref) << m;
        EXPECT_NEAR(rep.reference, ref, 1e-9 * ref) << m;
        EXPECT_NEAR(rep.rel_error, rep.error / rep.reference, 1e-12) << m;
        EXPECT_GT(rep.rel_error, 0) << m;
        EXPECT_LT(rep.rel_error, 1) << m;
        EXPECT_EQ(rep.damp_used, 0.01) << m;
        EXPECT_EQ(rep.dead_columns, 0) << m;
        // Stored values are what BinaryLinear packs: the round trip is exact.
        auto back = BinaryLinear(bw).unpack();
        expect_same(back, bw, m);
    }
}

TEST(Binarize, DeterministicAcrossRunsAndThreads) {
    const int          out = 200, n = 256; // ≥ 128 rows: the row loops and GEMM chunks run in parallel
    std::vector<float> W     = random_w(out, n, 14);
    auto               H     = correlated_h(n, 400, 15);
    const int          saved = omp_get_max_threads();
    for (const char* m : kMethods) {
        BinarizeOptions o;
        o.method = m;
        omp_set_num_threads(1);
        auto one = binarize(W.data(), out, n, H, o);
        expect_same(binarize(W.data(), out, n, H, o), one, std::string(m) + " rerun");
        omp_set_num_threads(2);
        expect_same(binarize(W.data(), out, n, H, o), one, std::string(m) + " threads");
    }
    omp_set_num_threads(saved);
}

TEST(Binarize, RowWeights) {
    const int          out = 32, n = 128;
    std::vector<float> W = random_w(out, n, 16);
    auto               H = correlated_h(n, 300, 17);
    BinarizeOptions    o;
    o.method   = "arb-x";
    auto plain = binarize(W.data(), out, n, H, o);
    // A uniform power-of-two weight scales every saliency exactly: the same masks, the same result.
    std::vector<float> rw(out, 4.0f);
    o.row_weight = &rw;
    expect_same(binarize(W.data(), out, n, H, o), plain, "uniform");
    // A dominant row decides the salient columns: its largest-saliency column becomes salient.
    rw.assign(out, 1.0f);
    rw[3]         = 1e6f;
    auto weighted = binarize(W.data(), out, n, H, o);
    EXPECT_NE(weighted.salient, plain.salient);
    rw.resize(out - 1);
    EXPECT_THROW(binarize(W.data(), out, n, H, o), InputError);
    rw.assign(out, -1.0f);
    EXPECT_THROW(binarize(W.data(), out, n, H, o), InputError);
}

TEST(Binarize, DeadColumnsAndBadInput) {
    const int          out = 8, n = 64;
    std::vector<float> W = random_w(out, n, 18);
    auto               H = correlated_h(n, 200, 19);
    for (int j = 0; j < n; ++j)
        H[(size_t)5 * n + j] = H[(size_t)j * n + 5] = 0;
    BinarizeOptions o;
    o.block = 32;
    for (const char* m : kMethods) {
        o.method = m;
        BinarizeReport rep;
        auto           bw = binarize(W.data(), out, n, H, o, &rep);
        ASSERT_NO_THROW(bw.validate()) << m;
        EXPECT_EQ(rep.dead_columns, 1) << m;
        EXPECT_TRUE(std::isfinite(rep.rel_error)) << m;
        EXPECT_LT(rep.rel_error, 1) << m;
    }
    auto I   = identity_h(n);
    o.method = "nope";
    EXPECT_THROW(binarize(W.data(), out, n, I, o), InputError);
    o.method = "billm";
    o.block  = 48;
    EXPECT_THROW(binarize(W.data(), out, n, I, o), InputError);
    o.block     = 64;
    o.arb_iters = -1;
    EXPECT_THROW(binarize(W.data(), out, n, I, o), InputError);
    o.arb_iters = 15;
    o.damp      = -1;
    EXPECT_THROW(binarize(W.data(), out, n, I, o), InputError);
    o.damp = 0.01;
    EXPECT_THROW(binarize(W.data(), out, n, std::vector<double>(10, 1.0), o), InputError);
    auto bad = I;
    bad[1]   = NAN;
    EXPECT_THROW(binarize(W.data(), out, n, bad, o), InputError);
    // No salient columns when the search range is empty.
    o.max_salient = 1;
    auto bw       = binarize(W.data(), out, n, I, o);
    EXPECT_EQ(std::count(bw.salient.begin(), bw.salient.end(), 1), 0);
}

TEST(Binarize, BundledModelMatrix) {
    auto               model = Model::load(test::bundled_model());
    const Linear&      lin   = *model->layer(1).shared_up; // (512, 256)
    const int          out = lin.out_features(), n = lin.in_features();
    std::vector<float> W = lin.dequantize();
    // H from random Gaussian inputs with a few heavier channels, as activations have.
    std::mt19937                    rng(20);
    std::normal_distribution<float> nd(0, 1);
    Eigen::MatrixXd                 X(1024, n);
    for (int t = 0; t < X.rows(); ++t)
        for (int j = 0; j < n; ++j)
            X(t, j) = nd(rng) * (j % 17 == 0 ? 4.0 : 1.0);
    Eigen::MatrixXd     Hm = X.transpose() * X;
    std::vector<double> H(Hm.data(), Hm.data() + Hm.size());
    const double        ref    = hessian_objective(W, std::vector<float>(W.size(), 0.0f), out, n, H);
    const double        rtn    = hessian_objective(W, sign_binarize(W, out, n), out, n, H) / ref;
    double              rel[4] = {};
    for (int i = 0; i < 4; ++i) {
        BinarizeOptions o;
        o.method = kMethods[i];
        BinarizeReport rep;
        auto           bw = binarize(W.data(), out, n, H, o, &rep);
        ASSERT_NO_THROW(bw.validate());
        rel[i] = rep.rel_error;
        EXPECT_TRUE(std::isfinite(rel[i])) << kMethods[i];
        EXPECT_LT(rel[i], 0.7 * rtn) << kMethods[i];
        EXPECT_GT(rep.salient_fraction, 0) << kMethods[i];
        std::printf("[ bundled  ] %-6s rel_error %.4f (1-bit RTN %.4f), salient %.3f\n", kMethods[i], rel[i], rtn,
                    rep.salient_fraction);
    }
    EXPECT_LE(rel[3], rel[0]); // arb-rc ≤ billm
    EXPECT_LE(rel[2], rel[0]); // arb-x ≤ billm
}
