#include "quantizer/methods/gptq.h"

#include "engine/core/error.h"
#include "quantizer/methods/hessian.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <exception>
#include <numeric>
#include <omp.h>
#include <string>

namespace moebius::quant {

namespace {

using Mat = Eigen::MatrixXd; // column-major: a column of W is contiguous, as the column sweep wants

} // namespace

UniformQuantized gptq_quantize(const float* W, int out, int in, const std::vector<double>& H, const GptqOptions& o,
                               GptqReport* report) {
    const int gs = check_uniform_config(o.grid, in);
    if (out <= 0)
        throw InputError("gptq: the weight has no rows");
    if (o.block <= 0)
        throw InputError("gptq: block size must be positive, got " + std::to_string(o.block));
    if (!(o.damp >= 0 && std::isfinite(o.damp)))
        throw InputError("gptq: damping must be a non-negative number, got " + std::to_string(o.damp));
    if (o.act_order && !o.static_groups)
        throw InputError("gptq: act_order requires static_groups (groups are defined on the original column order)");
    check_hessian(H, in, "gptq");

    const int  n       = in;
    const int  ng      = n / gs;
    const bool fixed   = o.static_groups || gs == n; // per-channel grids are always fitted once, on the original W
    const bool nested  = omp_in_parallel();
    const int  threads = nested ? 1 : omp_get_max_threads();

    // Dead columns never saw a non-zero input: any value is free, so W_j = 0 (prepare_hessian sets H_jj = 1).
    const std::vector<char> dead   = dead_columns(H, n);
    const int               n_dead = (int)std::count(dead.begin(), dead.end(), 1);

    // Column order: descending diag(H) with act_order (stable, so ties keep the original order).
    std::vector<int> perm(n);
    std::iota(perm.begin(), perm.end(), 0);
    if (o.act_order)
        std::stable_sort(perm.begin(), perm.end(), [&](int a, int b) {
            double da = dead[a] ? 1.0 : H[(size_t)a * n + a], db = dead[b] ? 1.0 : H[(size_t)b * n + b];
            return da > db;
        });

    const PreparedHessian ph     = prepare_hessian(H, n, dead, o.damp, &perm, threads, "gptq");
    const Mat&            hd     = ph.chol; // Ũ in the upper triangle
    const Mat&            U      = ph.U;
    const double          lambda = ph.lambda, damp = ph.damp;

    UniformQuantized q;
    q.out = out, q.in = in, q.bits = o.grid.bits, q.group = gs, q.sym = o.grid.sym;
    q.codes.assign((size_t)out * in, 0);
    q.scales.assign((size_t)out * ng, 0.0f);
    q.zeros.assign((size_t)out * ng, 0.0f);

    // Rows are independent given U: each thread runs the whole column sweep on its own range of rows, so the
    // lazy batch updates are GEMMs of (rows, block) × (block, n − i2).
    const int          chunks  = std::max(1, std::min(threads, out / 32));
    const int          B       = std::min(o.block, n);
    double             err_sum = 0, ref_sum = 0;
    std::exception_ptr failure;
#pragma omp parallel for schedule(static) num_threads(threads) if (chunks > 1) reduction(+ : err_sum, ref_sum)
    for (int c = 0; c < chunks; ++c) {
        try {
            const int r0 = (int)((int64_t)out * c / chunks), r1 = (int)((int64_t)out * (c + 1) / chunks);
            const int rows = r1 - r0;
            Mat       w(rows, n); // (rows, n) in quantization order, error-updated in place
            for (int r = 0; r < rows; ++r)
                for (int j = 0; j < n; ++j) {
                    int src = perm[j];
                    w(r, j) = dead[src] ? 0.0 : (double)W[(int64_t)(r0 + r) * in + src];
                }
            auto grid_at = [&](int r, int g) -> GridParams {
                size_t k = (size_t)(r0 + r) * ng + g;
                return {q.scales[k], q.zeros[k]};
            };
            auto set_grid = [&](int r, int g, GridParams p) {
                size_t k    = (size_t)(r0 + r) * ng + g;
                q.scales[k] = p.scale;
                q.zeros[k]  = p.zero;
            };
            if (fixed) {
                // Groups on the original column order and the original (dead-zeroed) W.
                Mat              orig(rows, gs); // (rows, group)
                std::vector<int> inv(n);
                for (int j = 0; j < n; ++j)
                    inv[perm[j]] = j;
                for (int g = 0; g < ng; ++g) {
                    for (int k = 0; k < gs; ++k)
                        orig.col(k) = w.col(inv[g * gs + k]);
                    for (int r = 0; r < rows; ++r)
                        set_grid(r, g, fit_grid(orig.data() + r, gs, rows, o.grid));
                }
            }
            if (report)
                ref_sum += (w * hd.triangularView<Eigen::Upper>()).squaredNorm() - lambda * w.squaredNorm();

            Mat err(rows, B); // (rows, block) scaled errors of the current block
            Mat grp;          // (rows, group) up-to-date values of a group being fitted
            for (int i1 = 0; i1 < n; i1 += B) {
                const int i2 = std::min(i1 + B, n), nb = i2 - i1;
                for (int i = i1; i < i2; ++i) {
                    if (!fixed && i % gs == 0) {
                        // Columns of this block already carry this block's updates; columns past the block still
                        // lack the pending lazy update of the block's finished columns, applied here on a copy.
                        grp = w.middleCols(i, gs);
                        if (i + gs > i2 && i > i1)
                            grp.rightCols(i + gs - i2).noalias() -=
                                err.leftCols(i - i1) * U.block(i1, i2, i - i1, i + gs - i2);
                        for (int r = 0; r < rows; ++r)
                            set_grid(r, i / gs, fit_grid(grp.data() + r, gs, rows, o.grid));
                    }
                    const int    g   = perm[i] / gs;
                    const double d   = U(i, i);
                    double*      col = w.col(i).data();
                    double*      e   = err.col(i - i1).data();
                    for (int r = 0; r < rows; ++r) {
                        GridParams p                             = grid_at(r, g);
                        int        code                          = quantize_code(col[r], p, o.grid.bits);
                        q.codes[(size_t)(r0 + r) * in + perm[i]] = (uint8_t)code;
                        e[r]                                     = (col[r] - (double)dequantize_code(code, p)) / d;
                        err_sum += e[r] * e[r];
                    }
                    if (i + 1 < i2)
                        w.middleCols(i + 1, i2 - i - 1).noalias() -=
                            err.col(i - i1) * U.row(i).segment(i + 1, i2 - i - 1);
                }
                if (i2 < n)
                    w.rightCols(n - i2).noalias() -= err.leftCols(nb) * U.block(i1, i2, nb, n - i2);
            }
        } catch (...) {
#pragma omp critical(moebius_gptq_failure)
            if (!failure)
                failure = std::current_exception();
        }
    }
    if (failure)
        std::rethrow_exception(failure);

    if (report) {
        // Σ err² = Σ (w − q)ᵀ (H + λI) (w − q) exactly (the OBS telescoping sum); remove the damping term.
        std::vector<float> deq = q.dequantize();
        double             dq2 = 0;
        for (int r = 0; r < out; ++r)
            for (int j = 0; j < n; ++j) {
                double dv = (dead[j] ? 0.0 : (double)W[(int64_t)r * in + j]) - deq[(size_t)r * in + j];
                dq2 += dv * dv;
            }
        report->error        = std::max(0.0, err_sum - lambda * dq2);
        report->reference    = std::max(0.0, ref_sum);
        report->rel_error    = report->reference > 0 ? report->error / report->reference : 0;
        report->damp_used    = damp;
        report->dead_columns = n_dead;
    }
    return q;
}

} // namespace moebius::quant
