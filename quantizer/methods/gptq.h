#pragma once
// GPTQ (methods.md §4.1) on a uniform n-bit grid. The same routine is AGQ (§3.2) when the caller passes the
// affinity-weighted H_aff instead of H.
#include "quantizer/methods/uniform_quant.h"

#include <vector>

namespace moebius::quant {

struct GptqOptions {
    UniformConfig grid;
    double        damp          = 0.01;  // λ = damp · mean(diag H)
    int           block         = 128;   // columns per lazy batch update
    bool          act_order     = false; // quantize columns by descending diag(H)
    bool          static_groups = true;  // fit every group on the original W (required with act_order)
};

// Layer objective of the result. error / reference is the relative output error ‖(W − Ŵ) X‖² / ‖W X‖².
struct GptqReport {
    double error        = 0; // Σ_rows (w − q)ᵀ H (w − q), undamped H
    double reference    = 0; // Σ_rows wᵀ H w (dead columns zeroed)
    double rel_error    = 0; // error / reference (0 for a zero weight)
    double damp_used    = 0; // the relative damping that made H + λI positive definite
    int    dead_columns = 0; // columns with diag(H) = 0 (never seen a non-zero input): quantized as 0
};

// W (out, in) f32 row-major; H (in, in) f64 Σ x xᵀ (any positive scale). Group parameters are fitted at the start of
// each group on the fully error-updated W (block-size independent), or once on the original W with static_groups.
// Throws InputError for bad options or shapes, Error when H + λI stays indefinite after 3 10× damping increases.
// Computing the report costs one more pass over W·H; it is skipped when report is null.
UniformQuantized gptq_quantize(const float* W, int out, int in, const std::vector<double>& H, const GptqOptions& o,
                               GptqReport* report = nullptr);

} // namespace moebius::quant
