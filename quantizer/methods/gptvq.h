#pragma once
// GPTVQ (methods.md §4.4): vector quantization inside GPTQ's column sweep. Per block of R rows × G columns one codebook
// of K = 2^(bits·D) D-dimensional centroids (docs/FORMAT.md "vq"):
//  - at the first column of each column group the codebooks of that group are fitted on the *current* (error-updated)
//    weights: points are the rows' D-vectors, coordinate j weighted by 1/U_jj² (U = upper Cholesky of (H + λI)⁻¹, so
//    1/U_jj² is the OBS cost of an error in column j); init Mahalanobis (points sorted by (x−μ)ᵀΣ⁻¹(x−μ), K evenly
//    spaced ranks) or weighted k-means++ (fixed seed); then weighted Lloyd iterations. Centroids are rounded to f16
//    before any code is chosen, so the compensation sees exactly what decode produces.
//  - then D columns at a time: each row's D-vector takes the centroid minimising the exact OBS cost of the D columns,
//    ‖U_DD⁻ᵀ (w − c)‖² (U_DD the D×D diagonal block of U; GPTVQ uses the diagonal weights only — for D = 1 the two
//    agree), and the error is propagated column by column, err_j = (w_j − q_j)/U_jj, to the rest of the lazy block
//    and, per block of 128 columns, to the later columns (GPTQ's lazy batch update).
//  - optional (refine_iters > 0): GPTVQ's final codebook update with the codes fixed, done here as damped
//    block-Newton least-squares steps on tr((W − Ŵ) H (W − Ŵ)ᵀ) per codebook (instead of Adam), each step rounded
//    to f16 and kept only when the objective drops.
// Optional per-row f16 scales (max |w| of the row): the sweep then runs on W / s (rows are independent, so this is
// the same OBS problem with row weights s²) and w = s · centroid.
// Deterministic for a seed; independent of the number of OpenMP threads (threads work on disjoint row blocks).
#include "engine/cpu/vq_linear.h"

#include <cstdint>
#include <string>
#include <vector>

namespace moebius::quant {

struct KmeansOptions {
    int         iters = 100;           // Lloyd iterations (stops early when no assignment changes)
    std::string init  = "mahalanobis"; // "mahalanobis" | "kmeans++"
    uint64_t    seed  = 0;             // k-means++ sampling
};

struct KmeansResult {
    std::vector<double> centroids; // (k, dim)
    std::vector<int>    assign;    // (n)
    // Weighted objective Σ_p Σ_d ω_pd (x_pd − c_{a_p,d})² after the initial assignment and after every iteration
    // (M-step + re-assignment): non-increasing.
    std::vector<double> objective;
};

// Weighted k-means of n points (n, dim) with per-coordinate weights (n, dim) ≥ 0 into k centroids. Assignment by the
// weighted distance, M-step the per-coordinate weighted mean (an empty cluster or zero weight keeps its centroid).
KmeansResult weighted_kmeans(const double* points, const double* weights, int n, int dim, int k,
                             const KmeansOptions& o);

struct GptvqOptions {
    int           dim          = 2;    // D ∈ {1, 2, 4}
    int           bits         = 2;    // bits per weight: K = 2^(bits·D) centroids
    int           group_cols   = 256;  // G: columns per codebook (GPTVQ's columns_per_group); the widest multiple
                                       // of D that divides `in` and is ≤ min(G, in) is used (176 for in = 1408)
    int           group_size   = 4096; // weights per codebook: rows_per_codebook = max(1, group_size / G)
    double        damp         = 0.01; // λ = damp · mean(diag H)
    int           block        = 128;  // columns per lazy batch update (a multiple of D)
    KmeansOptions kmeans;              // codebook fitting (iters 100, Mahalanobis init)
    bool          row_scales     = false; // per-row f16 scale max|w_row|
    bool          error_feedback = true;  // false: no GPTQ compensation (ablation; codebooks still Hessian-weighted)
    int           refine_iters   = 0;     // least-squares codebook refinement steps after the sweep (K·D ≤ 256)
    // 16: f16 centroids; 8: GPTVQ's codebook quantization, int8 centroids with one f16 scale per codebook, rounded
    // (vq_round_codebook_int8) before any code is chosen, like the f16 rounding.
    int           codebook_bits  = 16;
    // Given codebooks (n_codebooks, K, D), f16-exact, in the layout the options imply: the sweep only assigns codes
    // (codebooks shared with other matrices, e.g. KBVQ's across a layer's experts). Empty: fitted per group.
    std::vector<float> codebooks;
};

struct GptvqReport {
    double error        = 0; // Σ_rows (w − ŵ)ᵀ H (w − ŵ), undamped H
    double reference    = 0; // Σ_rows wᵀ H w (dead columns zeroed)
    double rel_error    = 0; // error / reference (0 for a zero weight)
    double damp_used    = 0; // the relative damping that made H + λI positive definite
    int    dead_columns = 0; // columns with diag(H) = 0: their weights are treated as 0
    double bits_per_weight = 0; // storage-exact: VqLinear::storage_bytes() · 8 / (out · in)
};

// W (out, in) f32 row-major; H (in, in) f64 Σ x xᵀ (any positive scale). Throws InputError for bad options or shapes,
// Error when H + λI stays indefinite after 3 10× damping increases.
VqWeights gptvq_quantize(const float* W, int out, int in, const std::vector<double>& H, const GptvqOptions& o,
                         GptvqReport* report = nullptr);

} // namespace moebius::quant
