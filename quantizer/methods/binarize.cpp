#include "quantizer/methods/binarize.h"

#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "quantizer/methods/hessian.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <numeric>
#include <omp.h>

namespace moebius::quant {

namespace {

using Mat    = Eigen::MatrixXd;
using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

enum class Method { billm, arb, arb_x, arb_rc };

// Groups 0, 1: non-salient (concentrated, sparse); 2, 3: salient (3 only with the column-group bitmap).
constexpr int kGroups    = 4;
constexpr int kQuantiles = 81; // split candidates: the quantiles 0.10, 0.11, ..., 0.90
constexpr int kChunk     = 64; // rows per GEMM chunk: fixed, so that results do not depend on the thread count

Method parse_method(const std::string& s) {
    if (s == "billm")
        return Method::billm;
    if (s == "arb")
        return Method::arb;
    if (s == "arb-x")
        return Method::arb_x;
    if (s == "arb-rc")
        return Method::arb_rc;
    throw InputError("binarize: unknown method '" + s + "' (expected billm, arb, arb-x or arb-rc)");
}

// The nearest f16 value, saturating (a scale past the f16 range could not be stored).
float round_f16(double v) {
    if (std::isnan(v))
        v = 0;
    v = std::clamp(v, -65504.0, 65504.0);
    return f16_to_f32(f32_to_f16((float)v));
}

// Residual order of group g, and its first coefficient slot (binary_linear.h).
int order_of(int g) {
    return g < 2 ? 1 : 2;
}
int slot0(int g) {
    return g < 2 ? g : 2 + 2 * (g - 2);
}

template <class F> void for_rows(int rows, int threads, F&& f) {
    // Rows are independent; each writes only its own outputs.
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && rows >= 2 * kChunk)
    for (int r = 0; r < rows; ++r)
        f(r);
}

// f(r0, r1) over the fixed chunks [r0, r1) of kChunk rows.
template <class F> void for_chunks(int rows, int threads, F&& f) {
    const int nc = (rows + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && nc > 1)
    for (int c = 0; c < nc; ++c)
        f(c * kChunk, std::min(rows, (c + 1) * kChunk));
}

// ---- mask search (on the saliency S, as BiLLM's code) -------------------------------------------------------------

// Σ (x − x̂)² of BRA order 2 on x[0..n): order 1 is x̂₁ = μ₁ + α₁·s₁ (μ₁ = mean, α₁ = mean|x − μ₁|, s₁ = ±1 with
// +1 at x ≥ μ₁), then order 1 again on r = x − x̂₁. With ±1 signs Σ r² = Σ (x − μ₁)² − n·α₁², Σ r = −α₁·Σ s₁ and the
// error is Σ (r − μ₂)² − n·α₂²: two passes.
double bra2_error(const double* x, int n) {
    if (n == 0)
        return 0;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; ++i)
        s += x[i];
    const double mu1 = s / n;
    double       a = 0, q = 0, np = 0;
#pragma omp simd reduction(+ : a, q, np)
    for (int i = 0; i < n; ++i) {
        const double d = x[i] - mu1;
        a += std::abs(d);
        q += d * d;
        np += d >= 0 ? 1.0 : 0.0;
    }
    const double a1  = a / n;
    const double mu2 = -a1 * (2 * np - n) / n;
    double       b   = 0;
#pragma omp simd reduction(+ : b)
    for (int i = 0; i < n; ++i) {
        const double d = x[i] - mu1;
        b += std::abs(d - (d >= 0 ? a1 : -a1) - mu2);
    }
    const double a2 = b / n;
    return std::max(0.0, q - n * (a1 * a1 + mu2 * mu2 + a2 * a2));
}

// Σ (x − x̂)² of BRA order 1 on the sorted run v[a, b), from prefix sums p1 = Σ v, p2 = Σ v² (p[0] = 0):
// Σ (x − μ)² − n·α², with Σ |x − μ| split at the first element ≥ μ. O(log n).
double bra1_error_sorted(const double* v, const double* p1, const double* p2, int a, int b) {
    const int n = b - a;
    if (n <= 0)
        return 0;
    const double sum = p1[b] - p1[a], mu = sum / n;
    const int    e     = (int)(std::lower_bound(v + a, v + b, mu) - v);
    const double alpha = (mu * (e - a) - (p1[e] - p1[a]) + (p1[b] - p1[e]) - mu * (b - e)) / n;
    return std::max(0.0, (p2[b] - p2[a]) - sum * mu - n * alpha * alpha);
}

// Places the elements of v at the (ascending, unique) positions idx[a, b) where a full sort would, by recursive
// nth_element on [lo, hi): O(N log |idx|) instead of a full sort's O(N log N).
void select_positions(std::vector<double>& v, const std::vector<size_t>& idx, size_t a, size_t b, size_t lo,
                      size_t hi) {
    if (a >= b)
        return;
    const size_t m = (a + b) / 2, k = idx[m];
    std::nth_element(v.begin() + lo, v.begin() + k, v.begin() + hi);
    select_positions(v, idx, a, m, lo, k);
    select_positions(v, idx, m + 1, b, k + 1, hi);
}

// numpy.quantile (linear interpolation) at q_t = 0.10 + 0.01·t of the population `zeros` × 0 plus v (reordered).
void split_quantiles(std::vector<double>& v, size_t zeros, double* p) {
    const size_t        N = zeros + v.size();
    std::vector<size_t> idx;
    auto                bounds = [&](int t, size_t& lo, size_t& hi, double& frac) {
        const double pos = (10 + t) / 100.0 * (double)(N - 1);
        lo = std::min((size_t)pos, N - 1), hi = std::min(lo + 1, N - 1), frac = pos - (double)lo;
    };
    for (int t = 0; t < kQuantiles; ++t) {
        size_t lo, hi;
        double frac;
        bounds(t, lo, hi, frac);
        for (size_t i : {lo, hi})
            if (i >= zeros)
                idx.push_back(i - zeros);
    }
    std::sort(idx.begin(), idx.end());
    idx.erase(std::unique(idx.begin(), idx.end()), idx.end());
    select_positions(v, idx, 0, idx.size(), 0, v.size());
    auto at = [&](size_t i) { return i < zeros ? 0.0 : v[i - zeros]; };
    for (int t = 0; t < kQuantiles; ++t) {
        size_t lo, hi;
        double frac;
        bounds(t, lo, hi, frac);
        p[t] = at(lo) + (at(hi) - at(lo)) * frac;
    }
}

// Index of the first minimum of Σ_rows e(r, ·), summed in row order (deterministic). e (rows, m).
int argmin_of_sums(const std::vector<double>& e, int rows, int m) {
    std::vector<double> tot(m, 0.0);
    for (int r = 0; r < rows; ++r)
        for (int k = 0; k < m; ++k)
            tot[k] += e[(size_t)r * m + k];
    int best = 0;
    for (int k = 1; k < m; ++k)
        if (tot[k] < tot[best])
            best = k;
    return best;
}

struct Masks {
    std::vector<uint8_t> salient; // (B) 1: an order-2 column
    std::vector<uint8_t> split;   // (rows, B) 1: the large-saliency group (sparse; salient: CGB's second group)
};

// Rows sorted ascending with prefix sums, for the split searches.
struct SortedRows {
    int                 m = 0;
    std::vector<double> v, p1, p2; // (rows, m), (rows, m + 1), (rows, m + 1)
};

// The saliency of block [st, st + B): S = rw_i · w_ij² / d_j² (rows, B).
RowMat saliency(const RowMat& w, int st, int B, const Mat& U, const std::vector<float>* rw, int threads) {
    const int           rows = (int)w.rows();
    RowMat              S(rows, B);
    std::vector<double> inv_d2(B);
    for (int j = 0; j < B; ++j)
        inv_d2[j] = 1.0 / (U(st + j, st + j) * U(st + j, st + j));
    for_rows(rows, threads, [&](int r) {
        const double  g = rw ? (double)(*rw)[r] : 1.0;
        const double* x = &w(r, st);
        for (int j = 0; j < B; ++j)
            S(r, j) = g * x[j] * x[j] * inv_d2[j];
    });
    return S;
}

// BiLLM's structural search on one block's saliency S (rows, B) (bigptq.py / utils/autosearch.py): salient columns,
// the bell-shaped split, and with the column-group bitmap (ARB-LLM's order2_group) the split of the salient columns.
Masks search_masks(const RowMat& S, int max_salient, bool cgb, int threads) {
    const int rows = (int)S.rows(), B = (int)S.cols();
    Masks     mk;
    mk.salient.assign(B, 0);
    mk.split.assign((size_t)rows * B, 0);

    // Salient columns: the top k of the candidates by column score, k minimising the BRA2 error of both parts.
    std::vector<double> score(B, 0.0);
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < B; ++j)
            score[j] += S(r, j);
    std::vector<int> order(B);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score[a] > score[b]; });
    const int K     = std::min(max_salient, B);
    int       n_sal = 0;
    if (K >= 2) {
        const int           m = K - 1; // k = 1 .. K − 1
        std::vector<double> e((size_t)rows * m);
        for_rows(rows, threads, [&](int r) {
            std::vector<double> xs(B); // the row in candidate order: salient = a prefix
            for (int k = 0; k < B; ++k)
                xs[k] = S(r, order[k]);
            for (int k = 1; k <= m; ++k)
                e[(size_t)r * m + k - 1] = bra2_error(xs.data(), k) + bra2_error(xs.data() + k, B - k);
        });
        n_sal = 1 + argmin_of_sums(e, rows, m);
    }
    for (int k = 0; k < n_sal; ++k)
        mk.salient[order[k]] = 1;

    // Per row: the values of the columns with (want = 1) or without (0) saliency, sorted, with prefix sums.
    auto sorted_rows = [&](uint8_t want, int m) {
        SortedRows sr;
        sr.m = m;
        sr.v.resize((size_t)rows * m);
        sr.p1.resize((size_t)rows * (m + 1));
        sr.p2.resize((size_t)rows * (m + 1));
        for_rows(rows, threads, [&](int r) {
            double* v = sr.v.data() + (size_t)r * m;
            int     c = 0;
            for (int j = 0; j < B; ++j)
                if (mk.salient[j] == want)
                    v[c++] = S(r, j);
            std::sort(v, v + m);
            double* p1 = sr.p1.data() + (size_t)r * (m + 1);
            double* p2 = sr.p2.data() + (size_t)r * (m + 1);
            p1[0] = p2[0] = 0;
            for (int k = 0; k < m; ++k) {
                p1[k + 1] = p1[k] + v[k];
                p2[k + 1] = p2[k] + v[k] * v[k];
            }
        });
        return sr;
    };
    // The candidate thresholds are non-decreasing, so each row's split point only moves right.
    auto best_threshold = [&](const SortedRows& sr, const double* p, bool order2) {
        const int           m = sr.m;
        std::vector<double> e((size_t)rows * kQuantiles);
        for_rows(rows, threads, [&](int r) {
            const double* v  = sr.v.data() + (size_t)r * m;
            const double* p1 = sr.p1.data() + (size_t)r * (m + 1);
            const double* p2 = sr.p2.data() + (size_t)r * (m + 1);
            int           c  = 0;
            for (int t = 0; t < kQuantiles; ++t) {
                while (c < m && v[c] < p[t])
                    ++c;
                e[(size_t)r * kQuantiles + t] =
                    order2 ? bra2_error(v, c) + bra2_error(v + c, m - c)
                           : bra1_error_sorted(v, p1, p2, 0, c) + bra1_error_sorted(v, p1, p2, c, m);
            }
        });
        return p[argmin_of_sums(e, rows, kQuantiles)];
    };

    // Bell-shaped split of the non-salient elements: threshold among the quantiles of |S ⊙ ¬M_salient| (the zeroed
    // salient entries count, as in the reference code), minimising the BRA1 errors of both groups.
    if (const int m = B - n_sal; m > 0) {
        SortedRows          sr = sorted_rows(0, m);
        std::vector<double> pop(sr.v);
        double              p[kQuantiles];
        split_quantiles(pop, (size_t)rows * n_sal, p);
        const double thr = best_threshold(sr, p, false);
        for_rows(rows, threads, [&](int r) {
            for (int j = 0; j < B; ++j)
                mk.split[(size_t)r * B + j] = !mk.salient[j] && S(r, j) >= thr;
        });
    }
    // Column-group bitmap: the salient elements split the same way, among the quantiles of their non-zero saliencies,
    // minimising the BRA2 errors of both halves (ARB-LLM utils/autosearch_arb.py, order2_group).
    if (cgb && n_sal > 0) {
        SortedRows          sr = sorted_rows(1, n_sal);
        std::vector<double> pop;
        for (double v : sr.v)
            if (v != 0)
                pop.push_back(v);
        if (!pop.empty()) {
            double p[kQuantiles];
            split_quantiles(pop, 0, p);
            const double thr = best_threshold(sr, p, true);
            for_rows(rows, threads, [&](int r) {
                for (int j = 0; j < B; ++j)
                    if (mk.salient[j])
                        mk.split[(size_t)r * B + j] = S(r, j) >= thr;
            });
        }
    }
    return mk;
}

// ---- group fitting ------------------------------------------------------------------------------------------------

// A block with each row's elements ordered by group, so that a group's elements are contiguous.
struct Grouped {
    int                 rows = 0, B = 0;
    std::vector<int>    col; // (rows, B) group order: the element's column
    std::vector<int>    off; // (rows, kGroups + 1) group g of row r: [off(r, g), off(r, g + 1)) in group order
    std::vector<double> x;   // (rows, B) group order: the values
    int                 begin(int r, int g) const { return off[(size_t)r * (kGroups + 1) + g]; }
    int                 end(int r, int g) const { return off[(size_t)r * (kGroups + 1) + g + 1]; }
};

Grouped group_block(const double* X, int64_t ldx, int rows, int B, const Masks& mk, bool cgb, int threads) {
    Grouped gb;
    gb.rows = rows, gb.B = B;
    gb.col.resize((size_t)rows * B);
    gb.off.resize((size_t)rows * (kGroups + 1));
    gb.x.resize((size_t)rows * B);
    for_rows(rows, threads, [&](int r) {
        const uint8_t* sp           = mk.split.data() + (size_t)r * B;
        auto           group        = [&](int j) { return mk.salient[j] ? 2 + (cgb ? sp[j] : 0) : sp[j]; };
        int            cnt[kGroups] = {};
        for (int j = 0; j < B; ++j)
            ++cnt[group(j)];
        int* off = gb.off.data() + (size_t)r * (kGroups + 1);
        int  pos[kGroups];
        off[0] = 0;
        for (int g = 0; g < kGroups; ++g)
            pos[g] = off[g], off[g + 1] = off[g] + cnt[g];
        for (int j = 0; j < B; ++j) {
            const int k               = pos[group(j)]++;
            gb.col[(size_t)r * B + k] = j;
            gb.x[(size_t)r * B + k]   = X[(int64_t)r * ldx + j];
        }
    });
    return gb;
}

struct Fitted {
    std::vector<double> mean;   // (rows, kGroups)
    std::vector<double> alpha;  // (rows, kGroups, 2) row scales
    std::vector<double> colsc;  // (B, kGroups, 2) column scales (arb-rc)
    std::vector<int8_t> s1, s2; // (rows, B) group order
};

struct MeanFit {
    double mean = 0, a1 = 0, a2 = 0;
};

// BRA (binary.py high_order_residual): order 1 fits μ = mean, α = mean|x − μ|, s = sign(x − μ) (+1 at 0); order 2
// repeats it on the residual, the means adding up.
MeanFit bra_fit(const double* x, int n, int order, int8_t* s1, int8_t* s2) {
    MeanFit f;
    double  s = 0;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; ++i)
        s += x[i];
    const double mu1 = s / n;
    double       a   = 0;
#pragma omp simd reduction(+ : a)
    for (int i = 0; i < n; ++i)
        a += std::abs(x[i] - mu1);
    f.mean = mu1, f.a1 = a / n;
    for (int i = 0; i < n; ++i)
        s1[i] = x[i] >= mu1 ? 1 : -1;
    if (order == 1)
        return f;
    double sr = 0;
    for (int i = 0; i < n; ++i)
        sr += x[i] - mu1 - f.a1 * s1[i];
    const double mu2 = sr / n;
    double       b   = 0;
    for (int i = 0; i < n; ++i) {
        const double r = x[i] - mu1 - f.a1 * s1[i];
        b += std::abs(r - mu2);
        s2[i] = r >= mu2 ? 1 : -1;
    }
    f.mean = mu1 + mu2, f.a2 = b / n;
    return f;
}

double mean_objective(const double* x, int n, int order, const MeanFit& f, const int8_t* s1, const int8_t* s2) {
    double e = 0;
    for (int i = 0; i < n; ++i) {
        const double d = x[i] - f.mean - f.a1 * s1[i] - (order == 2 ? f.a2 * s2[i] : 0.0);
        e += d * d;
    }
    return e;
}

// The (s1, s2) of the nearest of μ ± a1 ± a2 to x, in torch.argmin's order (first on ties).
inline void nearest_pair(double d, double a1, double a2, int8_t& s1, int8_t& s2) {
    const double lv[4] = {-a1 - a2, -a1 + a2, a1 - a2, a1 + a2};
    int          best  = 0;
    for (int k = 1; k < 4; ++k)
        if (std::abs(d - lv[k]) < std::abs(d - lv[best]))
            best = k;
    s1 = best >= 2 ? 1 : -1;
    s2 = best & 1 ? 1 : -1;
}

// ARB (binary_arb.py high_order_residual_alternating_order1 / _mean): from BRA, `iters` rounds of μ ← mean(x − αB),
// α ← ⟨B, x − μ − (other term)⟩/n (α₁ then α₂), B ← the nearest level. Each step minimises the objective exactly in
// its variables, so Σ (x − x̂)² never increases; obj[t] += its value after round t.
void arb_iterate(const double* x, int n, int order, int iters, MeanFit& f, int8_t* s1, int8_t* s2, double* obj) {
    for (int t = 0; t < iters; ++t) {
        if (order == 1) {
            double sm = 0;
            for (int i = 0; i < n; ++i)
                sm += x[i] - f.a1 * s1[i];
            f.mean    = sm / n;
            double sa = 0;
            for (int i = 0; i < n; ++i)
                sa += s1[i] * (x[i] - f.mean);
            f.a1 = sa / n;
            // sign(x − μ) as the reference, but as the minimiser also for a (degenerate) negative α
            for (int i = 0; i < n; ++i)
                s1[i] = (x[i] - f.mean) * f.a1 >= 0 ? 1 : -1;
        } else {
            double sm = 0;
            for (int i = 0; i < n; ++i)
                sm += x[i] - f.a1 * s1[i] - f.a2 * s2[i];
            f.mean    = sm / n;
            double sa = 0;
            for (int i = 0; i < n; ++i)
                sa += s1[i] * (x[i] - f.mean - f.a2 * s2[i]);
            f.a1 = sa / n;
            sa   = 0;
            for (int i = 0; i < n; ++i)
                sa += s2[i] * (x[i] - f.mean - f.a1 * s1[i]);
            f.a2 = sa / n;
            for (int i = 0; i < n; ++i)
                nearest_pair(x[i] - f.mean, f.a1, f.a2, s1[i], s2[i]);
        }
        if (obj)
            obj[t] += mean_objective(x, n, order, f, s1, s2);
    }
}

// ARB-X's calibration-aware refinement (binary_arb.py *_x): with the signs fixed, coordinate descent on the row's block
// objective (x − x̂)ᵀ S (x − x̂) over every group's (μ, α₁, α₂), μ before α as the reference. The reference fits each
// group on its own (ignoring the S-coupling between groups); here every coordinate step is the exact minimiser of the
// whole row's objective, so it never increases. x̂ = Σ_a θ_a v_a with v the group indicators and masked sign planes:
// G = V S Vᵀ and c = V S x per row (one GEMM per chunk), then sweeps are O(10²). obj[t] += objective after sweep t − 1.
void xrefine(const Grouped& gb, Fitted& f, const Mat& S, int iters, int threads, double* obj) {
    constexpr int       P             = 10; // θ: (μ, α₁) of groups 0, 1 and (μ, α₁, α₂) of groups 2, 3
    constexpr int       base[kGroups] = {0, 2, 4, 7}; // group g's μ in θ, followed by its α
    const int           rows = gb.rows, B = gb.B;
    std::vector<double> objs(obj ? (size_t)rows * (iters + 1) : 0);
    for_chunks(rows, threads, [&](int r0, int r1) {
        const int nr = r1 - r0;
        RowMat    V  = RowMat::Zero((Eigen::Index)nr * P, B); // (nr·P, B) basis vectors, column order
        RowMat    X(nr, B);                                   // (nr, B) values, column order
        for (int i = 0; i < nr; ++i) {
            const int r = r0 + i;
            for (int g = 0; g < kGroups; ++g)
                for (int k = gb.begin(r, g); k < gb.end(r, g); ++k) {
                    const size_t e            = (size_t)r * B + k;
                    const int    j            = gb.col[e];
                    X(i, j)                   = gb.x[e];
                    V(P * i + base[g], j)     = 1;
                    V(P * i + base[g] + 1, j) = f.s1[e];
                    if (order_of(g) == 2)
                        V(P * i + base[g] + 2, j) = f.s2[e];
                }
        }
        const RowMat                VS = V * S; // (nr·P, B)
        Eigen::Matrix<double, P, P> G;
        Eigen::Matrix<double, P, 1> c, th;
        for (int i = 0; i < nr; ++i) {
            const int r = r0 + i;
            G.noalias() = VS.middleRows(P * i, P) * V.middleRows(P * i, P).transpose();
            c.noalias() = VS.middleRows(P * i, P) * X.row(i).transpose();
            for (int g = 0; g < kGroups; ++g)
                for (int k = 0; k <= order_of(g); ++k)
                    th(base[g] + k) =
                        k ? f.alpha[((size_t)r * kGroups + g) * 2 + k - 1] : f.mean[(size_t)r * kGroups + g];
            const double xsx       = obj ? (X.row(i) * S * X.row(i).transpose()).value() : 0.0;
            auto         objective = [&] { return xsx - 2 * c.dot(th) + th.dot(G * th); };
            if (obj)
                objs[(size_t)r * (iters + 1)] = objective();
            for (int t = 0; t < iters; ++t) {
                for (int a = 0; a < P; ++a)
                    if (G(a, a) > 0)
                        th(a) += (c(a) - G.row(a).dot(th)) / G(a, a);
                if (obj)
                    objs[(size_t)r * (iters + 1) + t + 1] = objective();
            }
            for (int g = 0; g < kGroups; ++g)
                for (int k = 0; k <= order_of(g); ++k)
                    (k ? f.alpha[((size_t)r * kGroups + g) * 2 + k - 1] : f.mean[(size_t)r * kGroups + g]) =
                        th(base[g] + k);
        }
    });
    if (obj)
        for (int r = 0; r < rows; ++r)
            for (int t = 0; t <= iters; ++t)
                obj[t] += objs[(size_t)r * (iters + 1) + t];
}

// ARB-RC on group g (binary_arb.py *_rc_nomean): x̂ = α_r,1 α_c,1 B₁ (+ α_r,2 α_c,2 B₂ at order 2) over the group's
// elements, row scales per row and column scales per column of the block. Init: α_r = mean|v|, α_c = column mean of
// |v|/α_r, B = sign(v) (order 2: again on the residual); then `iters` rounds of exact alternating least squares for
// α_r and α_c of each term (the other term fixed), order 2 re-picking (B₁, B₂) among the four sign pairs. Column sums
// run serially in row order (deterministic). obj[t] += objective after round t − 1 (obj[0]: after the init).
void rc_fit(const Grouped& gb, int g, int iters, Fitted& f, int threads, double* obj) {
    const int           rows = gb.rows, B = gb.B, order = order_of(g);
    std::vector<double> ar[2] = {std::vector<double>(rows, 0.0), std::vector<double>(rows, 0.0)};
    std::vector<double> ac[2] = {std::vector<double>(B, 0.0), std::vector<double>(B, 0.0)};
    std::vector<double> tgt(gb.x.size()); // (rows, B) group order: what the term being fitted should reproduce
    int8_t*             sg[2] = {f.s1.data(), f.s2.data()};
    auto                term  = [&](int k, int r, size_t e) { return ar[k][r] * ac[k][gb.col[e]] * sg[k][e]; };

    auto init = [&](const std::vector<double>& v, int k) {
        for_rows(rows, threads, [&](int r) {
            const size_t e0 = (size_t)r * B + gb.begin(r, g), e1 = (size_t)r * B + gb.end(r, g);
            double       a = 0;
            for (size_t e = e0; e < e1; ++e) {
                a += std::abs(v[e]);
                sg[k][e] = v[e] >= 0 ? 1 : -1;
            }
            ar[k][r] = e1 > e0 ? a / (double)(e1 - e0) : 0.0;
        });
        std::vector<double> num(B, 0.0), cnt(B, 0.0);
        for (int r = 0; r < rows; ++r)
            if (ar[k][r] > 0) // rows with α_r = 0 give 0/0, which the reference's nanmean skips
                for (size_t e = (size_t)r * B + gb.begin(r, g); e < (size_t)r * B + gb.end(r, g); ++e) {
                    num[gb.col[e]] += std::abs(v[e]) / ar[k][r];
                    cnt[gb.col[e]] += 1;
                }
        for (int j = 0; j < B; ++j)
            ac[k][j] = cnt[j] > 0 ? num[j] / cnt[j] : 0.0;
    };
    auto set_target = [&](int other) { // tgt = x minus the other term (order 2)
        for_rows(rows, threads, [&](int r) {
            for (size_t e = (size_t)r * B + gb.begin(r, g); e < (size_t)r * B + gb.end(r, g); ++e)
                tgt[e] = gb.x[e] - (other >= 0 ? term(other, r, e) : 0.0);
        });
    };
    auto update_rows = [&](int k) {
        for_rows(rows, threads, [&](int r) {
            double num = 0, den = 0;
            for (size_t e = (size_t)r * B + gb.begin(r, g); e < (size_t)r * B + gb.end(r, g); ++e) {
                const double c = ac[k][gb.col[e]];
                num += c * sg[k][e] * tgt[e];
                den += c * c;
            }
            ar[k][r] = den > 0 ? num / den : 0.0;
        });
    };
    auto update_cols = [&](int k) {
        std::vector<double> num(B, 0.0), den(B, 0.0);
        for (int r = 0; r < rows; ++r) {
            const double a = ar[k][r];
            for (size_t e = (size_t)r * B + gb.begin(r, g); e < (size_t)r * B + gb.end(r, g); ++e) {
                num[gb.col[e]] += a * sg[k][e] * tgt[e];
                den[gb.col[e]] += a * a;
            }
        }
        for (int j = 0; j < B; ++j)
            ac[k][j] = den[j] > 0 ? num[j] / den[j] : 0.0;
    };
    auto objective = [&] {
        double s = 0;
        for (int r = 0; r < rows; ++r)
            for (size_t e = (size_t)r * B + gb.begin(r, g); e < (size_t)r * B + gb.end(r, g); ++e) {
                const double d = gb.x[e] - term(0, r, e) - (order == 2 ? term(1, r, e) : 0.0);
                s += d * d;
            }
        return s;
    };

    init(gb.x, 0);
    if (order == 2) {
        set_target(0);
        init(tgt, 1);
    }
    if (obj)
        obj[0] += objective();
    if (order == 1)
        set_target(-1);
    for (int t = 0; t < iters; ++t) {
        if (order == 1) {
            update_rows(0);
            update_cols(0);
        } else {
            set_target(1);
            update_rows(0);
            update_cols(0);
            set_target(0);
            update_rows(1);
            update_cols(1);
            for_rows(rows, threads, [&](int r) {
                for (size_t e = (size_t)r * B + gb.begin(r, g); e < (size_t)r * B + gb.end(r, g); ++e) {
                    const int j = gb.col[e];
                    nearest_pair(gb.x[e], ar[0][r] * ac[0][j], ar[1][r] * ac[1][j], sg[0][e], sg[1][e]);
                }
            });
        }
        if (obj)
            obj[t + 1] += objective();
    }
    for (int k = 0; k < order; ++k) {
        for (int r = 0; r < rows; ++r)
            f.alpha[((size_t)r * kGroups + g) * 2 + k] = ar[k][r];
        for (int j = 0; j < B; ++j)
            f.colsc[((size_t)j * kGroups + g) * 2 + k] = ac[k][j];
    }
}

BinaryWeights empty_weights(int out, int in, int block, Method m, bool salient = true) {
    BinaryWeights bw;
    bw.out = out, bw.in = in, bw.block = block;
    // Without salient columns the format drops their slots (salient_groups 0).
    bw.salient_groups = !salient ? 0 : m == Method::billm ? 1 : 2;
    bw.has_mean       = m != Method::arb_rc;
    bw.has_col_scale  = m == Method::arb_rc;
    bw.salient.assign(in, 0);
    bw.split.assign((size_t)out * in, 0);
    bw.sign1.assign((size_t)out * in, 1);
    bw.sign2.assign((size_t)out * in, 1);
    bw.row_scale.assign((size_t)out * bw.n_blocks() * bw.n_slots(), 0.0f);
    bw.row_mean.assign(bw.has_mean ? (size_t)out * bw.n_blocks() * bw.n_groups() : 0, 0.0f);
    bw.col_scale.assign(bw.has_col_scale ? (size_t)in * bw.n_slots() : 0, 0.0f);
    return bw;
}

// Rounds the fitted parameters to f16, writes block b of bw and returns the block's dequantized values (rows, B),
// computed from the stored values exactly as BinaryWeights::dequantize() does. ARB and ARB-RC re-pick each element's
// signs for the rounded parameters (their last refinement step is a sign update); BiLLM keeps BRA's signs and ARB-X
// its fixed signs (its last step fits the parameters to them).
std::vector<float> store_block(const Grouped& gb, Fitted& f, const Masks& mk, Method m, BinaryWeights& bw, int b,
                               int threads) {
    const int  rows = gb.rows, B = gb.B, st = b * B, n = bw.in, nb = bw.n_blocks();
    const int  ns = bw.n_slots(), ng = bw.n_groups();
    const bool col = bw.has_col_scale, repick = m == Method::arb || m == Method::arb_rc;
    for (int j = 0; j < B; ++j)
        bw.salient[st + j] = mk.salient[j];
    if (col)
        for (int j = 0; j < B; ++j)
            for (int g = 0; g < ng; ++g)
                for (int k = 0; k < order_of(g); ++k)
                    bw.col_scale[(size_t)(st + j) * ns + slot0(g) + k] =
                        round_f16(f.colsc[((size_t)j * kGroups + g) * 2 + k]);
    std::vector<float> q((size_t)rows * B);
    for_rows(rows, threads, [&](int r) {
        float  mean[kGroups] = {}, a[kGroups][2] = {};
        float* rs = bw.row_scale.data() + ((size_t)r * nb + b) * ns;
        for (int g = 0; g < ng; ++g) {
            if (bw.has_mean)
                bw.row_mean[((size_t)r * nb + b) * ng + g] = mean[g] = round_f16(f.mean[(size_t)r * kGroups + g]);
            for (int k = 0; k < order_of(g); ++k)
                rs[slot0(g) + k] = a[g][k] = round_f16(f.alpha[((size_t)r * kGroups + g) * 2 + k]);
        }
        for (int g = 0; g < ng; ++g) {
            const bool o2 = order_of(g) == 2;
            for (int k = gb.begin(r, g); k < gb.end(r, g); ++k) {
                const size_t e     = (size_t)r * B + k;
                const int    j     = gb.col[e];
                const float* cs    = col ? bw.col_scale.data() + (size_t)(st + j) * ns + slot0(g) : nullptr;
                const float  a0    = a[g][0] * (col ? cs[0] : 1.0f);
                const float  a1    = o2 ? a[g][1] * (col ? cs[1] : 1.0f) : 0.0f;
                auto         value = [&](int t1, int t2) {
                    return o2 ? (mean[g] + a0 * (float)t1) + a1 * (float)t2 : mean[g] + a0 * (float)t1;
                };
                int8_t& s1 = f.s1[e];
                int8_t& s2 = f.s2[e];
                if (repick) { // switch only to a strictly nearer level
                    const double x    = gb.x[e];
                    double       best = std::abs(x - value(s1, s2));
                    for (int c = 0; c < (o2 ? 4 : 2); ++c) {
                        const int    t1 = o2 ? (c >= 2 ? 1 : -1) : (c ? 1 : -1), t2 = o2 ? (c & 1 ? 1 : -1) : 1;
                        const double d = std::abs(x - value(t1, t2));
                        if (d < best)
                            best = d, s1 = (int8_t)t1, s2 = (int8_t)t2;
                    }
                }
                q[(size_t)r * B + j] = value(s1, o2 ? s2 : 1);
                const size_t i       = (size_t)r * n + st + j;
                bw.sign1[i]          = s1;
                bw.sign2[i]          = o2 ? s2 : 1;
                bw.split[i]          = g == 1 || g == 3;
            }
        }
    });
    return q;
}

// The fitting stage of one block (X (rows, B) with row stride ldx, masks given): writes block b of bw and returns the
// block's dequantized values (rows, B). S (B, B): arb-x's weighting.
std::vector<float> fit_into(const double* X, int64_t ldx, int rows, int B, int b, const Masks& mk, Method m, int iters,
                            const Mat& S, BinaryWeights& bw, int threads, std::vector<double>* trace) {
    const Grouped gb = group_block(X, ldx, rows, B, mk, bw.salient_groups == 2, threads);
    Fitted        f;
    f.mean.assign((size_t)rows * kGroups, 0.0);
    f.alpha.assign((size_t)rows * kGroups * 2, 0.0);
    f.colsc.assign((size_t)B * kGroups * 2, 0.0);
    f.s1.assign((size_t)rows * B, 1);
    f.s2.assign((size_t)rows * B, 1);
    const int T = m == Method::billm ? 0 : iters;
    if (trace)
        trace->assign(T + 1, 0.0);
    if (m == Method::arb_rc) {
        for (int g = 0; g < kGroups; ++g)
            rc_fit(gb, g, T, f, threads, trace ? trace->data() : nullptr);
    } else {
        std::vector<double> objs(trace ? (size_t)rows * (T + 1) : 0); // (rows, T + 1), summed in row order below
        for_rows(rows, threads, [&](int r) {
            for (int g = 0; g < kGroups; ++g) {
                const int a = gb.begin(r, g), n = gb.end(r, g) - a;
                if (n == 0)
                    continue;
                const size_t  e  = (size_t)r * B + a;
                const double* x  = gb.x.data() + e;
                int8_t *      s1 = f.s1.data() + e, *s2 = f.s2.data() + e;
                double*       ob  = trace ? objs.data() + (size_t)r * (T + 1) : nullptr;
                MeanFit       fit = bra_fit(x, n, order_of(g), s1, s2);
                if (ob)
                    ob[0] += mean_objective(x, n, order_of(g), fit, s1, s2);
                arb_iterate(x, n, order_of(g), T, fit, s1, s2, ob ? ob + 1 : nullptr);
                f.mean[(size_t)r * kGroups + g]            = fit.mean;
                f.alpha[((size_t)r * kGroups + g) * 2]     = fit.a1;
                f.alpha[((size_t)r * kGroups + g) * 2 + 1] = fit.a2;
            }
        });
        if (trace)
            for (int r = 0; r < rows; ++r)
                for (int t = 0; t <= T; ++t)
                    (*trace)[t] += objs[(size_t)r * (T + 1) + t];
        if (m == Method::arb_x) {
            std::vector<double> tx(iters + 1, 0.0);
            xrefine(gb, f, S, iters, threads, trace ? tx.data() : nullptr);
            if (trace)
                trace->insert(trace->end(), tx.begin(), tx.end());
        }
    }
    return store_block(gb, f, mk, m, bw, b, threads);
}

int n_threads() {
    return omp_in_parallel() ? 1 : omp_get_max_threads();
}

} // namespace

BinaryWeights binarize(const float* W, int out, int in, const std::vector<double>& H, const BinarizeOptions& o,
                       BinarizeReport* report) {
    const Method m = parse_method(o.method);
    if (out <= 0 || in <= 0)
        throw InputError("binarize: bad weight shape (" + std::to_string(out) + ", " + std::to_string(in) + ")");
    if (o.block <= 0 || in % o.block != 0)
        throw InputError("binarize: block " + std::to_string(o.block) + " must be positive and divide the input " +
                         "dimension " + std::to_string(in));
    if (!(o.damp >= 0 && std::isfinite(o.damp)))
        throw InputError("binarize: damping must be a non-negative number, got " + std::to_string(o.damp));
    if (o.arb_iters < 0)
        throw InputError("binarize: arb_iters must be ≥ 0, got " + std::to_string(o.arb_iters));
    if (o.max_salient < 0)
        throw InputError("binarize: max_salient must be ≥ 0, got " + std::to_string(o.max_salient));
    if (o.row_weight) {
        if ((int)o.row_weight->size() != out)
            throw InputError("binarize: row_weight has " + std::to_string(o.row_weight->size()) +
                             " entries, expected " + std::to_string(out));
        for (float v : *o.row_weight)
            if (!(v >= 0 && std::isfinite(v)))
                throw InputError("binarize: row weights must be finite and non-negative");
    }
    check_hessian(H, in, "binarize");

    const int               n = in, B = o.block, nb = n / B, threads = n_threads();
    const std::vector<char> dead = dead_columns(H, n);
    const PreparedHessian   ph   = prepare_hessian(H, n, dead, o.damp, nullptr, threads, "binarize");
    BinaryWeights           bw   = empty_weights(out, n, B, m, std::min(o.max_salient, B) >= 2);

    RowMat w(out, n); // (out, n) error-updated weights; dead columns are zero (their input is)
    for (int r = 0; r < out; ++r)
        for (int j = 0; j < n; ++j)
            w(r, j) = dead[j] ? 0.0 : (double)W[(int64_t)r * in + j];
    RowMat q; // (out, n) the result, for the report
    if (report)
        q.resize(out, n);
    Mat S; // (B, B) arb-x's weighting: the block's H, damped like U so nearly dead columns cannot pull the fit
    for (int b = 0; b < nb; ++b) {
        const int   st = b * B;
        const Masks mk =
            search_masks(saliency(w, st, B, ph.U, o.row_weight, threads), o.max_salient, m != Method::billm, threads);
        if (m == Method::arb_x) {
            S.resize(B, B);
            for (int j = 0; j < B; ++j)
                for (int i = 0; i < B; ++i)
                    S(i, j) = H[(size_t)(st + j) * n + st + i] + (i == j ? ph.lambda : 0.0);
        }
        // The block is quantized from its weights at block start: BiLLM has no intra-block updates.
        const std::vector<float> qb =
            fit_into(w.data() + st, n, out, B, b, mk, m, o.arb_iters, S, bw, threads, nullptr);
        if (report)
            for (int r = 0; r < out; ++r)
                for (int j = 0; j < B; ++j)
                    q(r, st + j) = qb[(size_t)r * B + j];
        // W[:, ed:] −= Err · U[st:ed, ed:] with Err = (W₁ − Q) / diag(U_block).
        if (o.compensate && st + B < n) {
            const int rest = n - st - B;
            for_chunks(out, threads, [&](int r0, int r1) {
                RowMat err(r1 - r0, B);
                for (int i = 0; i < r1 - r0; ++i)
                    for (int j = 0; j < B; ++j)
                        err(i, j) = (w(r0 + i, st + j) - qb[(size_t)(r0 + i) * B + j]) / ph.U(st + j, st + j);
                w.block(r0, st + B, r1 - r0, rest).noalias() -= err * ph.U.block(st, st + B, B, rest);
            });
        }
    }

    if (report) {
        // Σ vᵀ H v = ‖v·Ũ‖² − λ‖v‖² (H + λI = Ũ·Ũᵀ; dead columns of v are zero, so their modified diagonal is moot).
        const int           nc = (out + kChunk - 1) / kChunk;
        std::vector<double> err_c(nc, 0.0), ref_c(nc, 0.0);
        for_chunks(out, threads, [&](int r0, int r1) {
            RowMat w0(r1 - r0, n), d(r1 - r0, n);
            for (int i = 0; i < r1 - r0; ++i)
                for (int j = 0; j < n; ++j) {
                    w0(i, j) = dead[j] ? 0.0 : (double)W[(int64_t)(r0 + i) * in + j];
                    d(i, j)  = dead[j] ? 0.0 : w0(i, j) - q(r0 + i, j);
                }
            const auto U       = ph.chol.triangularView<Eigen::Upper>();
            err_c[r0 / kChunk] = (d * U).squaredNorm() - ph.lambda * d.squaredNorm();
            ref_c[r0 / kChunk] = (w0 * U).squaredNorm() - ph.lambda * w0.squaredNorm();
        });
        double e = 0, ref = 0;
        for (int c = 0; c < nc; ++c)
            e += err_c[c], ref += ref_c[c];
        report->error            = std::max(0.0, e);
        report->reference        = std::max(0.0, ref);
        report->rel_error        = report->reference > 0 ? report->error / report->reference : 0;
        report->damp_used        = ph.damp;
        report->dead_columns     = (int)std::count(dead.begin(), dead.end(), 1);
        report->salient_fraction = (double)std::count(bw.salient.begin(), bw.salient.end(), 1) / n;
    }
    return bw;
}

namespace binarize_detail {

BinaryWeights fit_block(const float* X, int rows, int B, const std::vector<uint8_t>& salient,
                        const std::vector<uint8_t>& split, const BinarizeOptions& o, const std::vector<double>& S,
                        std::vector<double>* trace) {
    const Method m = parse_method(o.method);
    if (rows <= 0 || B <= 0 || (int)salient.size() != B || split.size() != (size_t)rows * B)
        throw InputError("binarize: fit_block with inconsistent shapes");
    if (m == Method::arb_x && S.size() != (size_t)B * B)
        throw InputError("binarize: fit_block needs S (B, B) for arb-x");
    if (o.arb_iters < 0)
        throw InputError("binarize: arb_iters must be ≥ 0");
    Masks mk;
    mk.salient.resize(B);
    mk.split.resize(split.size());
    for (int j = 0; j < B; ++j)
        mk.salient[j] = salient[j] != 0;
    for (size_t i = 0; i < split.size(); ++i)
        mk.split[i] = split[i] != 0;
    RowMat x(rows, B);
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < B; ++j)
            x(r, j) = X[(size_t)r * B + j];
    Mat Sm;
    if (m == Method::arb_x)
        Sm = Eigen::Map<const RowMat>(S.data(), B, B);
    BinaryWeights bw = empty_weights(rows, B, B, m);
    fit_into(x.data(), B, rows, B, 0, mk, m, o.arb_iters, Sm, bw, n_threads(), trace);
    return bw;
}

void search_masks(const std::vector<double>& S, int rows, int B, int max_salient, bool cgb,
                  std::vector<uint8_t>& salient, std::vector<uint8_t>& split) {
    if (rows <= 0 || B <= 0 || S.size() != (size_t)rows * B)
        throw InputError("binarize: search_masks with inconsistent shapes");
    Masks mk = quant::search_masks(Eigen::Map<const RowMat>(S.data(), rows, B), max_salient, cgb, n_threads());
    salient  = std::move(mk.salient);
    split    = std::move(mk.split);
}

} // namespace binarize_detail

} // namespace moebius::quant
