#pragma once
// Importance maps of a linear's weights, and the loss-gradient statistics the GLAS saliency needs.
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "engine/core/model_config.h"
#include "engine/core/progress.h"
#include "engine/cpu/hooks.h"
#include "quantizer/calibration/calibration_data.h"
#include "quantizer/calibration/input_stats.h"

namespace moebius {
class Model;
}

namespace moebius::quant {

enum class ImportanceMetric {
    Obs,         // w_ij² / [H⁻¹]_jj²  (OBS / BiLLM saliency)
    HessianDiag, // H_jj · w_ij²
    Glas,        // ḡ_i · w_ij² / [H⁻¹]_jj², ḡ_i = mean over tokens of (∂ℓ/∂z_i)² (global-loss-aligned saliency)
};
ImportanceMetric importance_metric_from_name(const std::string& name); // "obs", "hdiag", "glas"; InputError otherwise
const char*      importance_metric_name(ImportanceMetric m);

struct ImportanceMap {
    int                rows = 0, cols = 0;
    std::vector<float> values; // (rows, cols)
    std::vector<double> row_sum() const; // (rows)
    std::vector<double> col_sum() const; // (cols)
    // Mean-pooled to at most max_rows x max_cols (for display of large matrices).
    ImportanceMap downsample(int max_rows, int max_cols) const;
};

// W (out, in); H from the stats normalised per token; damping λ = damp · mean(diag H) before inversion.
// grad_sq_mean (out) is required for Glas. Throws InputError if the stats saw no token.
ImportanceMap compute_importance(const std::vector<float>& W, int out, int in, const InputStats& stats,
                                 ImportanceMetric metric, const std::vector<double>* grad_sq_mean = nullptr,
                                 double damp = 0.01);

// Per decoder linear (layer, kind, expert): mean over the tokens it saw of (∂ℓ/∂z_i)² for each output channel i,
// from the backward pass of the full-precision model on the calibration set (next-token loss of each sample).
struct GradientStats {
    struct Entry {
        int64_t             tokens = 0;
        std::vector<double> sum_sq; // (out)
        std::vector<double> mean_sq() const;
    };
    std::map<std::tuple<int, int, int>, Entry> entries; // key (layer, (int)kind, expert)
    const Entry* find(int layer, LinearKind kind, int expert = -1) const;
};
// Samples run concurrently, one per thread; each sample's sums are added in sample order, so the result does not
// depend on the thread count. routed_experts_only: entries for the routed experts only (cheaper backward).
// forward_hooks (optional): forward_hooks(s) gives the hooks that observe sample s's FP forward (GradientOptions::
// forward_hooks); they run on the sample's thread, concurrently with other samples'.
// Memory: the backward needs the decoder's weights in f32. If every layer is resident (an eagerly loaded model), or the
// lazily loaded ones all fit in max_resident_bytes, they are loaded and each sample runs forward and backward in turn
// (keeping its activations while all threads' together fit in 2 GiB, else recomputing them per layer). Otherwise the
// samples go layer by layer (layerwise_losses_and_events): one decoder layer resident at a time, each layer's input
// kept per sample, activations recomputed in the backward (one more forward). The statistics are the same bit for
// bit either way.
constexpr int64_t k_gradient_resident_bytes = int64_t(4) << 30;
GradientStats collect_gradient_stats(Model& model, const CalibrationSet& calib, const ProgressFn& progress = {},
                                     bool routed_experts_only = false,
                                     const std::function<Hooks(int sample)>& forward_hooks = {},
                                     int64_t max_resident_bytes = k_gradient_resident_bytes);

} // namespace moebius::quant
