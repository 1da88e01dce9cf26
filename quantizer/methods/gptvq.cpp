#include "quantizer/methods/gptvq.h"

#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "quantizer/linalg.h"
#include "quantizer/methods/hessian.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <numeric>
#include <omp.h>
#include <random>
#include <string>

namespace moebius::quant {

namespace {

using Mat = Eigen::MatrixXd; // column-major: a column of W is contiguous, as the column sweep wants

double f16_round(double v) { return (double)f16_to_f32(f32_to_f16((float)v)); }

// Weighted distance of point p to centroid c.
inline double wdist(const double* p, const double* w, const double* c, int dim) {
    double s = 0;
    for (int d = 0; d < dim; ++d) s += w[d] * (p[d] - c[d]) * (p[d] - c[d]);
    return s;
}

// Yinyang-style bounds for exact Lloyd iterations with many centroids (Ding et al., 2015): the centroids are cut into
// groups of consecutive indices, and per point and group a lower bound on the distance to the group's centroids other
// than the point's own (square roots of the weighted distances). Point p's distance is a norm with diagonal weights
// w_p, so when centroid t moves by δ_t (Euclidean) it moves by at most sw_p · δ_t, sw_p = √max_d w_pd. The distance to
// the point's own centroid is computed exactly every iteration anyway (the objective needs it), so it serves as the
// upper bound; groups whose bound stays above it are not looked at. A relative margin covers rounding, so the
// assignments (ties included) are exactly those of plain Lloyd.
struct Bounds {
    int                 group = 1, groups = 1; // centroids per group, number of groups
    std::vector<double> sw;                    // (n)
    std::vector<double> lb;                    // (n, groups)
    std::vector<double> gmove;                 // (groups) the largest move of a centroid in each group
    bool                valid = false;         // lb holds the bounds of the previous assignment
};

// Assigns every point to its nearest centroid; returns the objective and whether any assignment changed. DIM > 0 is
// the dimension known at compile time (the hot loop of GPTVQ's codebook fitting), 0 the generic case.
template <int DIM>
double assign_points(const double* x, const double* w, int n, int dim_rt, int k, const std::vector<double>& c,
                     std::vector<int>& a, bool* changed, Bounds& bo) {
    const int dim = DIM > 0 ? DIM : dim_rt;
    const int ng = bo.groups, gs = bo.group;
    // Centroids transposed (dim, k): a point's distances are then built coordinate by coordinate over contiguous
    // memory, which vectorises across centroids (the same arithmetic per pair as a centroid-outer loop).
    std::vector<double> ct((size_t)dim * k);
    for (int t = 0; t < k; ++t)
        for (int d = 0; d < dim; ++d) ct[(size_t)d * k + t] = c[(size_t)t * dim + d];
    constexpr double margin = 1 - 1e-9;
    // Points are independent: threads take disjoint ranges (large problems only, e.g. KBVQ's codebooks shared by
    // a layer's experts); the objective is summed afterwards in point order, so the result does not depend on them.
    std::vector<double> best_d(n);
    bool                any = false;
#pragma omp parallel reduction(|| : any) if (!omp_in_parallel() && (int64_t)n * k >= (1 << 20))
    {
        std::vector<double> dist(k);
        std::vector<char>   open(ng);
#pragma omp for schedule(static)
        for (int p = 0; p < n; ++p) {
            const double* xp = x + (size_t)p * dim;
            const double* wp = w + (size_t)p * dim;
            double*       lb = bo.lb.data() + (size_t)p * ng;
            const int     ap = a[p];
            if (bo.valid) {
                double lmin = std::numeric_limits<double>::infinity();
                for (int g = 0; g < ng; ++g) lmin = std::min(lmin, lb[g] -= bo.sw[p] * bo.gmove[g]);
                best_d[p]       = wdist(xp, wp, c.data() + (size_t)ap * dim, dim); // same arithmetic as below
                const double ub = std::sqrt(best_d[p]);
                if (ub < lmin * margin) continue;
                for (int g = 0; g < ng; ++g) open[g] = !(ub < lb[g] * margin);
            } else {
                std::fill(open.begin(), open.end(), 1);
            }
            // Distances to the centroids of the open groups; the others are all farther than the current centroid.
            for (int g = 0; g < ng; ++g) {
                if (!open[g]) continue;
                const int t0 = g * gs, t1 = std::min(k, t0 + gs);
                std::fill(dist.begin() + t0, dist.begin() + t1, 0.0);
                for (int d = 0; d < dim; ++d) {
                    const double  xd = xp[d], wd = wp[d];
                    const double* cd = ct.data() + (size_t)d * k;
                    double*       ds = dist.data();
                    for (int t = t0; t < t1; ++t) {
                        const double diff = xd - cd[t];
                        ds[t] += wd * diff * diff;
                    }
                }
            }
            // The nearest in index order (strict: ties go to the lowest index), the kept centroid included.
            int    best = -1;
            double bd   = std::numeric_limits<double>::infinity();
            for (int g = 0; g < ng; ++g) {
                const int t0 = g * gs, t1 = std::min(k, t0 + gs);
                if (open[g]) {
                    for (int t = t0; t < t1; ++t)
                        if (dist[t] < bd) bd = dist[t], best = t;
                } else if (ap >= t0 && ap < t1 && best_d[p] < bd) {
                    bd = best_d[p], best = ap;
                }
            }
            // New bounds: an open group's nearest other centroid; a closed group keeps its bound, lowered to the old
            // centroid's distance when that one is now just another member.
            for (int g = 0; g < ng; ++g) {
                const int t0 = g * gs, t1 = std::min(k, t0 + gs);
                if (open[g]) {
                    double m = std::numeric_limits<double>::infinity();
                    for (int t = t0; t < t1; ++t)
                        if (t != best) m = std::min(m, dist[t]);
                    lb[g] = std::sqrt(m);
                } else if (ap >= t0 && ap < t1 && ap != best) {
                    lb[g] = std::min(lb[g], std::sqrt(best_d[p]));
                }
            }
            if (ap != best) any = true, a[p] = best;
            best_d[p] = bd;
        }
    }
    bo.valid   = true;
    *changed   = any;
    double obj = 0;
    for (int p = 0; p < n; ++p) obj += best_d[p];
    return obj;
}

double assign_points(const double* x, const double* w, int n, int dim, int k, const std::vector<double>& c,
                     std::vector<int>& a, bool* changed, Bounds& bo) {
    switch (dim) {
    case 1:
        return assign_points<1>(x, w, n, dim, k, c, a, changed, bo);
    case 2:
        return assign_points<2>(x, w, n, dim, k, c, a, changed, bo);
    case 4:
        return assign_points<4>(x, w, n, dim, k, c, a, changed, bo);
    default:
        return assign_points<0>(x, w, n, dim, k, c, a, changed, bo);
    }
}

void init_mahalanobis(const double* x, int n, int dim, int k, std::vector<double>& c) {
    Eigen::VectorXd mu = Eigen::VectorXd::Zero(dim);
    for (int p = 0; p < n; ++p)
        for (int d = 0; d < dim; ++d) mu(d) += x[(size_t)p * dim + d];
    mu /= n;
    Mat cov = Mat::Zero(dim, dim);
    for (int p = 0; p < n; ++p) {
        Eigen::VectorXd v = Eigen::Map<const Eigen::VectorXd>(x + (size_t)p * dim, dim) - mu;
        cov += v * v.transpose();
    }
    cov /= n;
    // A small ridge keeps Σ invertible for degenerate groups (all-equal columns, tiny groups).
    cov.diagonal().array() += 1e-12 + 1e-9 * cov.trace() / dim;
    const Mat           inv = inverse(cov);
    std::vector<double> m(n);
    for (int p = 0; p < n; ++p) {
        Eigen::VectorXd v = Eigen::Map<const Eigen::VectorXd>(x + (size_t)p * dim, dim) - mu;
        m[p]              = v.dot(inv * v);
    }
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return m[a] < m[b]; });
    for (int t = 0; t < k; ++t) {
        const int p = order[std::min<int64_t>(n - 1, (int64_t)(2 * t + 1) * n / (2 * k))];
        for (int d = 0; d < dim; ++d) c[(size_t)t * dim + d] = x[(size_t)p * dim + d];
    }
}

void init_kmeanspp(const double* x, const double* w, int n, int dim, int k, uint64_t seed, std::vector<double>& c) {
    std::mt19937_64 rng(seed);
    // Our own uniform in [0, 1): std:: distributions are implementation-defined, this is not.
    auto uniform = [&] { return (double)(rng() >> 11) * (1.0 / 9007199254740992.0); };
    auto copy_to = [&](int t, int p) {
        for (int d = 0; d < dim; ++d) c[(size_t)t * dim + d] = x[(size_t)p * dim + d];
    };
    copy_to(0, std::min(n - 1, (int)(uniform() * n)));
    std::vector<double> best(n, std::numeric_limits<double>::infinity());
    for (int t = 1; t < k; ++t) {
        double total = 0;
        for (int p = 0; p < n; ++p) {
            best[p] = std::min(best[p], wdist(x + (size_t)p * dim, w + (size_t)p * dim, c.data() + (size_t)(t - 1) * dim, dim));
            total += best[p];
        }
        int pick = 0;
        if (total > 0) {
            double r = uniform() * total;
            for (pick = 0; pick < n - 1 && (r -= best[pick]) >= 0; ++pick) {}
        } else {
            pick = std::min(n - 1, (int)(uniform() * n)); // every point already coincides with a centroid
        }
        copy_to(t, pick);
    }
}

} // namespace

KmeansResult weighted_kmeans(const double* x, const double* w, int n, int dim, int k, const KmeansOptions& o) {
    if (n <= 0 || dim <= 0 || k <= 0) throw InputError("kmeans: need points, a dimension and centroids");
    if (o.init != "mahalanobis" && o.init != "kmeans++")
        throw InputError("kmeans: init must be \"mahalanobis\" or \"kmeans++\", got \"" + o.init + "\"");
    KmeansResult r;
    r.centroids.assign((size_t)k * dim, 0.0);
    r.assign.assign(n, -1);
    if (o.init == "mahalanobis")
        init_mahalanobis(x, n, dim, k, r.centroids);
    else
        init_kmeanspp(x, w, n, dim, k, o.seed, r.centroids);
    bool   changed = false;
    Bounds bo;
    bo.groups = std::clamp(k / 16, 1, 64);
    bo.group  = (k + bo.groups - 1) / bo.groups;
    bo.groups = (k + bo.group - 1) / bo.group;
    bo.lb.resize((size_t)n * bo.groups), bo.sw.resize(n), bo.gmove.resize(bo.groups);
    for (int p = 0; p < n; ++p) {
        double m = 0;
        for (int d = 0; d < dim; ++d) m = std::max(m, w[(size_t)p * dim + d]);
        bo.sw[p] = std::sqrt(m);
    }
    r.objective.push_back(assign_points(x, w, n, dim, k, r.centroids, r.assign, &changed, bo));
    std::vector<double> num((size_t)k * dim), den((size_t)k * dim), old;
    for (int it = 0; it < o.iters; ++it) {
        old = r.centroids;
        std::fill(num.begin(), num.end(), 0.0);
        std::fill(den.begin(), den.end(), 0.0);
        for (int p = 0; p < n; ++p)
            for (int d = 0; d < dim; ++d) {
                const size_t i = (size_t)p * dim + d, ci = (size_t)r.assign[p] * dim + d;
                num[ci] += w[i] * x[i];
                den[ci] += w[i];
            }
        for (size_t ci = 0; ci < num.size(); ++ci)
            if (den[ci] > 0) r.centroids[ci] = num[ci] / den[ci];
        std::fill(bo.gmove.begin(), bo.gmove.end(), 0.0);
        for (int t = 0; t < k; ++t) {
            double m = 0;
            for (int d = 0; d < dim; ++d) m += (r.centroids[(size_t)t * dim + d] - old[(size_t)t * dim + d]) *
                                               (r.centroids[(size_t)t * dim + d] - old[(size_t)t * dim + d]);
            // Rounded up a little: the bound must not be smaller than the true move.
            bo.gmove[t / bo.group] = std::max(bo.gmove[t / bo.group], std::sqrt(m) * (1 + 1e-12));
        }
        r.objective.push_back(assign_points(x, w, n, dim, k, r.centroids, r.assign, &changed, bo));
        if (!changed) break;
    }
    return r;
}

namespace {

// Least-squares codebook refinement with fixed codes (see gptvq.h). Wt (out, in) the dead-zeroed target.
void refine_codebooks(VqWeights& q, const std::vector<double>& Wt, const std::vector<double>& H, int iters) {
    const int out = q.out, in = q.in, D = q.dim, K = q.k(), G = q.group_cols, R = q.rows_per_codebook;
    const int ncg = q.n_col_groups(), ncb = q.n_codebooks(), KD = K * D;
    auto      residual = [&](const VqWeights& v) {
        std::vector<float>  deq = v.dequantize();
        std::vector<double> E((size_t)out * in);
        for (size_t i = 0; i < E.size(); ++i) E[i] = (double)deq[i] - Wt[i];
        return E;
    };
    auto slot = [&](int o, int j) { return (int)q.codes[(size_t)o * (in / D) + j / D] * D + j % D; };
    auto sc   = [&](int o) { return q.scales.empty() ? 1.0 : (double)q.scales[o]; };
    // Gauss-Newton matrix of one codebook, A = Σ_rows s² Pᵀ H_gg P (P: the group's columns → centroid slots). Rebuilt
    // in every step rather than kept: ncb · (K·D)² doubles could be gigabytes.
    auto gauss_newton = [&](int cb) {
        const int rb = cb / ncg, g = cb % ncg, j0 = g * G;
        Mat       A = Mat::Zero(KD, KD);
        for (int o = rb * R; o < std::min(out, (rb + 1) * R); ++o) {
            const double s2 = sc(o) * sc(o);
            for (int a = 0; a < G; ++a)
                for (int b = 0; b < G; ++b) A(slot(o, j0 + a), slot(o, j0 + b)) += s2 * H[(size_t)(j0 + a) * in + j0 + b];
        }
        A.diagonal().array() += 1e-12 * (1 + A.diagonal().maxCoeff()); // unused centroids: no-op rows
        return A;
    };
    std::vector<double> E    = residual(q);
    double              best = hessian_norm(E, out, in, H);
    using RowMat             = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    for (int it = 0; it < iters; ++it) {
        RowMat grad = Eigen::Map<const RowMat>(E.data(), out, in) * Eigen::Map<const RowMat>(H.data(), in, in);
        std::vector<double> step((size_t)ncb * KD);
#pragma omp parallel for schedule(dynamic) if (!omp_in_parallel())
        for (int cb = 0; cb < ncb; ++cb) {
            const int       rb = cb / ncg, g = cb % ncg, j0 = g * G;
            Eigen::VectorXd gv = Eigen::VectorXd::Zero(KD);
            for (int o = rb * R; o < std::min(out, (rb + 1) * R); ++o)
                for (int a = 0; a < G; ++a) gv(slot(o, j0 + a)) += sc(o) * grad(o, j0 + a);
            Eigen::VectorXd dv = ldlt_solve_vector(gauss_newton(cb), -gv);
            for (int i = 0; i < KD; ++i) step[(size_t)cb * KD + i] = std::isfinite(dv(i)) ? dv(i) : 0.0;
        }
        // Codebooks are coupled through H's off-diagonal blocks, so the joint step may overshoot: halve until it helps.
        bool improved = false;
        for (double alpha = 1.0; alpha > 1.0 / 32 && !improved; alpha *= 0.5) {
            VqWeights t = q;
            for (size_t i = 0; i < t.codebooks.size(); ++i)
                t.codebooks[i] = (float)f16_round(t.codebooks[i] + alpha * step[i]);
            for (size_t c = 0; c < t.codebook_scales.size(); ++c) // 8-bit codebooks: back onto a (new) grid
                t.codebook_scales[c] = f16_to_f32(vq_round_codebook_int8(t.codebooks.data() + c * KD, KD));
            std::vector<double> Et = residual(t);
            const double        e  = hessian_norm(Et, out, in, H);
            if (e < best) best = e, q = std::move(t), E = std::move(Et), improved = true;
        }
        if (!improved) break;
    }
}

} // namespace

VqWeights gptvq_quantize(const float* W, int out, int in, const std::vector<double>& H, const GptvqOptions& o,
                         GptvqReport* report) {
    if (out <= 0 || in <= 0) throw InputError("gptvq: bad weight shape");
    if (o.dim != 1 && o.dim != 2 && o.dim != 4) throw InputError("gptvq: dim must be 1, 2 or 4, got " + std::to_string(o.dim));
    if (o.bits < 1 || o.bits * o.dim > 16)
        throw InputError("gptvq: bits·dim must be in 1..16 (at most 65536 centroids), got " + std::to_string(o.bits) +
                         "·" + std::to_string(o.dim));
    if (o.group_cols <= 0 || in % o.dim)
        throw InputError("gptvq: group_cols must be positive and dim " + std::to_string(o.dim) +
                         " must divide the input size " + std::to_string(in));
    // The widest column group ≤ group_cols that tiles the row: e.g. 176 for in = 1408 (A2.7B down_proj), G = 256.
    int G = std::min(o.group_cols, in);
    while (in % G || G % o.dim) --G;
    if (o.group_size <= 0) throw InputError("gptvq: group_size must be positive");
    if (o.block <= 0 || o.block % o.dim)
        throw InputError("gptvq: block " + std::to_string(o.block) + " must be a positive multiple of dim");
    if (!(o.damp >= 0 && std::isfinite(o.damp))) throw InputError("gptvq: damping must be a non-negative number");
    if (o.refine_iters < 0 || o.kmeans.iters < 0) throw InputError("gptvq: iteration counts must be non-negative");
    if (o.refine_iters > 0 && (1 << (o.bits * o.dim)) * o.dim > 256)
        throw InputError("gptvq: codebook refinement solves a (K·D)² system per codebook; K·D must be at most 256");
    check_hessian(H, in, "gptvq");

    const int  n = in, D = o.dim;
    const bool nested  = omp_in_parallel();
    const int  threads = nested ? 1 : omp_get_max_threads();

    const std::vector<char> dead   = dead_columns(H, n);
    const int               n_dead = (int)std::count(dead.begin(), dead.end(), 1);
    const PreparedHessian   ph     = prepare_hessian(H, n, dead, o.damp, nullptr, threads, "gptvq");
    const Mat&              U      = ph.U;

    VqWeights q;
    q.out = out, q.in = in, q.dim = D, q.bits = o.bits, q.group_cols = G;
    q.rows_per_codebook = std::max(1, o.group_size / G);
    const int K = q.k(), R = q.rows_per_codebook, ncg = q.n_col_groups(), nrb = q.n_row_blocks();
    q.codebooks.assign((size_t)q.n_codebooks() * K * D, 0.0f);
    const bool fixed = !o.codebooks.empty();
    if (fixed) {
        if (o.codebooks.size() != q.codebooks.size())
            throw InputError("gptvq: " + std::to_string(o.codebooks.size()) + " given codebook values, the layout needs " +
                             std::to_string(q.codebooks.size()));
        q.codebooks = o.codebooks;
    }
    if (o.codebook_bits != 8 && o.codebook_bits != 16)
        throw InputError("gptvq: codebook bits must be 8 or 16, got " + std::to_string(o.codebook_bits));
    if (o.codebook_bits == 8 && fixed) throw InputError("gptvq: given codebooks are f16; codebook bits must be 16");
    if (o.refine_iters > 0 && fixed) throw InputError("gptvq: given codebooks are fixed; refinement would change them");
    q.codebook_bits = o.codebook_bits;
    if (o.codebook_bits == 8) q.codebook_scales.assign(q.n_codebooks(), 0.0f);
    q.codes.assign((size_t)out * (n / D), 0);

    // The dead-zeroed target; row scales (f16 max |w|, 1 for a zero row) divide it for the sweep.
    std::vector<double> Wt((size_t)out * n);
    for (int r = 0; r < out; ++r)
        for (int j = 0; j < n; ++j) Wt[(size_t)r * n + j] = dead[j] ? 0.0 : (double)W[(int64_t)r * in + j];
    std::vector<double> s(out, 1.0);
    if (o.row_scales) {
        q.scales.resize(out);
        for (int r = 0; r < out; ++r) {
            double m = 0;
            for (int j = 0; j < n; ++j) m = std::max(m, std::abs(Wt[(size_t)r * n + j]));
            const double f = f16_round(m);
            s[r] = f > 0 && std::isfinite(f) ? f : 1.0;
            q.scales[r] = (float)s[r];
        }
    }

    // Per-column fitting weights 1/U_jj² and, per D-column step, L = U_DD⁻ᵀ for the exact assignment metric.
    std::vector<double> hw(n);
    for (int j = 0; j < n; ++j) hw[j] = 1.0 / (U(j, j) * U(j, j));
    std::vector<Mat> Linv(n / D);
    for (int t = 0; t < n / D; ++t)
        Linv[t] = U.block(t * D, t * D, D, D).triangularView<Eigen::Upper>().transpose().solve(Mat::Identity(D, D));

    // Row blocks share a codebook, rows are otherwise independent given U: threads take disjoint ranges of row blocks.
    const int          chunks = std::max(1, std::min(threads, nrb));
    const int          B      = std::min(o.block, n);
    std::exception_ptr failure;
#pragma omp parallel for schedule(static) num_threads(threads) if (chunks > 1)
    for (int c = 0; c < chunks; ++c) {
        try {
            const int rb0 = (int)((int64_t)nrb * c / chunks), rb1 = (int)((int64_t)nrb * (c + 1) / chunks);
            const int r0 = rb0 * R, r1 = std::min(out, rb1 * R), rows = r1 - r0;
            Mat       w(rows, n); // (rows, n) normalized, error-updated in place
            for (int r = 0; r < rows; ++r)
                for (int j = 0; j < n; ++j) w(r, j) = Wt[(size_t)(r0 + r) * n + j] / s[r0 + r];
            Mat                 err(rows, B); // (rows, block) scaled errors of the current block
            Mat                 grp;          // (rows, G) up-to-date values of a group being fitted
            std::vector<double> pts, pw, tc((size_t)K * D);
            for (int i1 = 0; i1 < n; i1 += B) {
                const int i2 = std::min(i1 + B, n), nb = i2 - i1;
                for (int i = i1; i < i2; i += D) {
                    if (i % G == 0 && !fixed) {
                        // As in gptq.cpp: columns past the block still lack this block's pending lazy update.
                        grp = w.middleCols(i, G);
                        if (o.error_feedback && i + G > i2 && i > i1)
                            grp.rightCols(i + G - i2).noalias() -= err.leftCols(i - i1) * U.block(i1, i2, i - i1, i + G - i2);
                        for (int rb = rb0; rb < rb1; ++rb) {
                            const int lo = rb * R - r0, hi = std::min(out, (rb + 1) * R) - r0, np = (hi - lo) * (G / D);
                            pts.resize((size_t)np * D);
                            pw.resize((size_t)np * D);
                            for (int r = lo, p = 0; r < hi; ++r)
                                for (int k = 0; k < G / D; ++k, ++p)
                                    for (int d = 0; d < D; ++d) {
                                        pts[(size_t)p * D + d] = grp(r, k * D + d);
                                        pw[(size_t)p * D + d]  = hw[i + k * D + d] * s[r0 + r] * s[r0 + r];
                                    }
                            KmeansOptions ko = o.kmeans;
                            ko.seed          = o.kmeans.seed * 0x9E3779B97F4A7C15ull + (uint64_t)rb * ncg + i / G;
                            KmeansResult km  = weighted_kmeans(pts.data(), pw.data(), np, D, K, ko);
                            const size_t ci  = (size_t)rb * ncg + i / G;
                            float*       cb  = q.codebooks.data() + ci * K * D;
                            for (int t = 0; t < K * D; ++t) cb[t] = (float)f16_round(km.centroids[t]);
                            if (o.codebook_bits == 8) q.codebook_scales[ci] = f16_to_f32(vq_round_codebook_int8(cb, K * D));
                        }
                    }
                    // D columns jointly: nearest centroid under ‖L (w − c)‖², L = U_DD⁻ᵀ (lower triangular).
                    const Mat& L = Linv[i / D];
                    for (int rb = rb0; rb < rb1; ++rb) {
                        const float* cb = q.codebooks.data() + ((size_t)rb * ncg + i / G) * K * D;
                        for (int t = 0; t < K; ++t)
                            for (int a = 0; a < D; ++a) {
                                double v = 0;
                                for (int b = 0; b <= a; ++b) v += L(a, b) * cb[t * D + b];
                                tc[(size_t)t * D + a] = v;
                            }
                        const int lo = rb * R - r0, hi = std::min(out, (rb + 1) * R) - r0;
                        for (int r = lo; r < hi; ++r) {
                            double z[4];
                            for (int a = 0; a < D; ++a) {
                                z[a] = 0;
                                for (int b = 0; b <= a; ++b) z[a] += L(a, b) * w(r, i + b);
                            }
                            int    best = 0;
                            double bd   = std::numeric_limits<double>::infinity();
                            for (int t = 0; t < K; ++t) {
                                double dd = 0;
                                for (int a = 0; a < D; ++a) dd += (z[a] - tc[(size_t)t * D + a]) * (z[a] - tc[(size_t)t * D + a]);
                                if (dd < bd) bd = dd, best = t;
                            }
                            q.codes[(size_t)(r0 + r) * (n / D) + i / D] = (uint16_t)best;
                            for (int a = 0; a < D; ++a) err(r, i + a - i1) = cb[best * D + a]; // q, for now
                        }
                    }
                    // Column by column: err_j = (w_j − q_j)/U_jj, then the rest of the block (the other columns of
                    // this D-vector included, which keeps Σ err² equal to the exact D-column OBS cost).
                    for (int a = 0; a < D; ++a) {
                        const int j = i + a;
                        err.col(j - i1) = (w.col(j) - err.col(j - i1)) / U(j, j);
                        if (o.error_feedback && j + 1 < i2)
                            w.middleCols(j + 1, i2 - j - 1).noalias() -= err.col(j - i1) * U.row(j).segment(j + 1, i2 - j - 1);
                    }
                }
                if (o.error_feedback && i2 < n)
                    w.rightCols(n - i2).noalias() -= err.leftCols(nb) * U.block(i1, i2, nb, n - i2);
            }
        } catch (...) {
#pragma omp critical(moebius_gptvq_failure)
            if (!failure) failure = std::current_exception();
        }
    }
    if (failure) std::rethrow_exception(failure);

    if (o.refine_iters > 0) refine_codebooks(q, Wt, H, o.refine_iters);

    if (report) {
        std::vector<float>  deq = q.dequantize();
        std::vector<double> E((size_t)out * n);
        for (size_t i = 0; i < E.size(); ++i) E[i] = Wt[i] - (double)deq[i];
        report->error           = std::max(0.0, hessian_norm(E, out, n, H));
        report->reference       = std::max(0.0, hessian_norm(Wt, out, n, H));
        report->rel_error       = report->reference > 0 ? report->error / report->reference : 0;
        report->damp_used       = ph.damp;
        report->dead_columns    = n_dead;
        report->bits_per_weight = (double)VqLinear(q).storage_bytes() * 8.0 / ((double)out * in);
    }
    return q;
}

} // namespace moebius::quant
