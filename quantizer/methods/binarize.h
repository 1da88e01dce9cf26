#pragma once
// Structured binary PTQ (methods.md §4.2 BiLLM, §4.3 ARB-LLM): the binarizer core that MoBiE (§1.3 step D) reuses with
// per-row saliency weights. All methods share BiLLM's BRAGPTQ skeleton (bigptq.py): per block of `block` columns,
//  - saliency S = row_weight_i · w_ij² / d_j² (d = diag of U, the upper Cholesky factor of (H + λI)⁻¹);
//  - salient columns: the top k by column score Σ_i S_ij, k ∈ [1, K − 1] minimising the BRA2 errors of S on both
//    parts (K = min(max_salient, block)), order 2;
//  - the bell-shaped split of the other elements at the quantile (0.10 .. 0.90, population |S| with the salient entries
//    as zeros) minimising the BRA1 errors of S on both groups, order 1 each;
//  - with the column-group bitmap (every method but billm, ARB-LLM's order2_group): the salient elements split the
//    same way, at the quantile of their non-zero saliencies minimising the BRA2 errors of both halves;
//  - the block is binarized from its weights at block start, then W[:, ed:] −= Err·U[st:ed, ed:] with
//    Err = (W₁ − Q) / diag(U_block) (no intra-block updates).
// The methods differ in how each group is fitted:
//   billm   BRA: residual binarization with per-row mean μ and α = mean|x − μ| (salient_groups = 1)
//   arb     ARB: BRA, then arb_iters alternating (μ, α, B) refinements
//   arb-x   ARB, then arb_iters sweeps of exact coordinate descent on each row's (x − x̂)ᵀ (H_block + λI) (x − x̂) over
//           all its groups' (μ, α), signs fixed
//   arb-rc  no mean: x̂ = α_r α_c B per group (order 2: two terms), alternating row / column scales, order 2 re-picking
//           the sign pairs; has_col_scale
// Signs are +1 where x equals the threshold (torch.sign gives 0 there; the format has no zero). Every stored mean and
// scale is rounded to f16 before the block's quantized values (and hence the compensation error) are computed, so the
// compensation sees exactly what BinaryWeights::dequantize() produces; arb and arb-rc then re-pick each sign for the
// rounded values. Deterministic: the result does not depend on the number of OpenMP threads.
#include "engine/cpu/binary_linear.h"

#include <cstdint>
#include <string>
#include <vector>

namespace moebius::quant {

struct BinarizeOptions {
    std::string method      = "billm"; // "billm" | "arb" | "arb-x" | "arb-rc"
    int         block       = 128;     // columns per block (must divide in; the caller passes min(128, in))
    double      damp        = 0.01;    // λ = damp · mean(diag H)
    int         arb_iters   = 15;      // T of the ARB / ARB-RC refinement and T2 of ARB-X's weighted refinement
    int         max_salient = 50; // salient-column candidates: k ∈ [1, min(max_salient, block) − 1] (≤ 1: none)
    const std::vector<float>* row_weight = nullptr; // (out) saliency row weights (MoBiE's GLAS), default all 1
    bool compensate = true; // GPTQ inter-block compensation; false binarizes every block as given (ablation)
};

// Layer objective of the result, as GptqReport: error / reference is the relative output error ‖(W − Ŵ) X‖² / ‖W X‖².
struct BinarizeReport {
    double error            = 0; // Σ_rows (w − q)ᵀ H (w − q), undamped H (dead columns contribute nothing)
    double reference        = 0; // Σ_rows wᵀ H w
    double rel_error        = 0; // error / reference (0 for a zero weight)
    double damp_used        = 0; // the relative damping that made H + λI positive definite
    int    dead_columns     = 0; // columns with diag(H) = 0: binarized as zeros, their value is free
    double salient_fraction = 0; // salient (order-2) columns / in
};

// W (out, in) f32 row-major; H (in, in) f64 Σ x xᵀ (any positive scale, symmetric). Throws InputError for bad options
// or shapes, Error when H + λI stays indefinite after 3 10× damping increases. The report costs two more passes of
// (out, in)·(in, in); skipped when report is null.
BinaryWeights binarize(const float* W, int out, int in, const std::vector<double>& H, const BinarizeOptions& o,
                       BinarizeReport* report = nullptr);

namespace binarize_detail {

// binarize()'s fitting stage on one block, exposed for tests: X (rows, B) row-major is binarized with the given masks
// (salient (B) columns, split (rows, B) group bits; split of salient columns is used only by the methods with the
// column-group bitmap) and nothing is compensated. S (B, B) row-major: arb-x's weighting (the block's H + λI).
// trace (optional) receives the objective in double before rounding to f16: for billm the BRA error Σ (x − x̂)²; for
// arb / arb-rc Σ (x − x̂)² after the initialisation and after each of the arb_iters iterations; for arb-x that, then
// Σ_rows (x − x̂)ᵀ S (x − x̂) before and after each of its arb_iters weighted sweeps.
BinaryWeights fit_block(const float* X, int rows, int B, const std::vector<uint8_t>& salient,
                        const std::vector<uint8_t>& split, const BinarizeOptions& o, const std::vector<double>& S,
                        std::vector<double>* trace = nullptr);

// binarize()'s mask search on one block's saliency S (rows, B) row-major (S = row_weight · w² / d²), exposed for tests:
// salient (B) columns and split (rows, B) group bits; cgb: also split the salient columns (the methods other than
// billm).
void search_masks(const std::vector<double>& S, int rows, int B, int max_salient, bool cgb,
                  std::vector<uint8_t>& salient, std::vector<uint8_t>& split);

} // namespace binarize_detail

} // namespace moebius::quant
