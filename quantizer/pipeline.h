#pragma once
// The layer-sequential quantization driver: for each decoder layer, capture the inputs of its linears on the
// calibration set, quantize them group by group in dependency order (attention q/k/v → o → [router] → gate/up of
// experts, shared and dense FFN → down), each group seeing the outputs of the already-quantized groups, then push the
// calibration hidden states through the quantized layer into the next one.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/progress.h"
#include "engine/cpu/model.h"
#include "quantizer/calibration/calibration_data.h"

namespace moebius::quant {

struct GptvqOptions; // quantizer/methods/gptvq.h

struct QuantizeOptions {
    std::string method = "gptq"; // rtn | gptq | agq | gptvq | billm | arb-x | arb-rc
    int         bits   = 4;      // uniform methods: 2..8 (rtn also 1: sign binarization); binary methods: ignored
    int         group  = 128;    // -1: per output channel (binary methods use blocks of min(128, in) columns)
    int         vq_dim = 2;      // gptvq: vector dimension D ∈ {1, 2, 4}; --bits is bits per weight (2^(bits·D) centroids)
    // gptvq: weights per codebook; 0 = 128·K·D (f16 codebooks) or 64·K·D (8-bit), so the codebooks cost 1/8 bit per
    // weight at any (bits, D) — the rule behind GPTVQ's released settings (D=1 b=2: 512, D=2 b=2: 4096, D=2 b=3:
    // 16384); vq_codebook_bits 8 stores int8 centroids with an f16 scale per codebook (GPTVQ's codebook quantization)
    // in every per-matrix codebook (kbvq's shared codebooks, one per layer and kind, stay f16).
    int         vq_group_size    = 0;
    int         vq_codebook_bits = 16;
    // gptvq, kbvq: GPTVQ's codebook refinement, least-squares steps on the per-matrix codebooks with the codes fixed
    // (K·D ≤ 256; kbvq's shared codebooks are not refined). 0: off.
    int         vq_refine_iters  = 0;
    // kbvq (methods.md §2): routed experts get IDRE (a shared rank-kbvq_rank basis, 8-bit per-expert coefficients)
    // + GPTVQ of the residual + BCOS (per-layer channel affine of the experts' aggregate; bcos_bias adds β);
    // every other linear is GPTVQ-quantized with the same vq_dim / bits / vq_group_size.
    int         kbvq_rank = 4;
    // kbvq: one VQ codebook per layer and kind shared by the routed experts' residuals (docs/FORMAT.md "kbvq"), which
    // pays for a wider vector dimension; kbvq_dim the experts' D (0: automatic, kbvq.h kbvq_expert_dim).
    bool        kbvq_shared_codebooks = true;
    int         kbvq_dim              = 0;
    bool        idre      = true;
    bool        bcos      = true;
    bool        bcos_bias = true;
    bool        bcos_gamma = true; // false: β only (γ = 1)
    // mobie (methods.md §1, quantizer/methods/mobie.h): the binarizer core for every linear (billm | arb | arb-x |
    // arb-rc), GLAS row weights, and for routed experts CEJD (rank-mobie_rank shared bases, 8-bit coefficients refit
    // after binarizing the residual) with NGES's router-aware output metric for down (weight nges_weight), and
    // FP-stream targets (below).
    std::string mobie_core  = "arb-rc";
    int         mobie_rank  = 16;
    bool        cejd        = true;
    bool        cejd_refit  = true;
    bool        cejd_all    = false; // also attention and shared experts, each its own group (measured worse)
    bool        glas        = true;
    // GLAS's backward pass on this many calibration sequences, evenly spaced over the set (0 or ≥ the set: all). It
    // costs ~2.75 forward passes per sequence (bench_gradients); row weights are per-channel means, which a subset
    // estimates (noisily: 4 or 8 of 32 sequences measured worse than no GLAS, docs/RESULTS.md "Quantization time").
    int         glas_samples = 0;
    bool        nges        = true;
    double      nges_weight = 1.0;
    // FP-stream targets (mobie.h FpStream): the linears outside the routed experts (fp_target) and optionally the
    // routed experts (fp_target_experts; measured worse) are fitted to the FP model's outputs on the FP stream from
    // their quantized-stream inputs, with ridge fp_ridge · mean diag H.
    bool        fp_target         = true;
    bool        fp_target_experts = false;
    double      fp_ridge          = 0.1;
    // The same FP-stream targets (fp_target, fp_target_experts, fp_ridge) with any other calibrated method: they are
    // not specific to MoBiE, so its baselines can be measured with them too (off by default: the methods as published).
    bool        fp_target_any     = false;
    bool        sym    = false;
    bool        act_order = false;
    double      damp   = 0.01;
    int         block  = 128;
    bool        quantize_router = false; // routers and shared_expert_gate stay in source precision unless asked
    bool        quantize_attention = true;
    int         min_expert_tokens = 16;  // below this an expert's Hessian is regularised (see pipeline.cpp)
    // Resume support (quantizer/format/layer_checkpoint.h): when set, every finished layer is saved here; with
    // resume, layers saved by an interrupted run with the same options and calibration are restored, not redone.
    std::filesystem::path work_dir;
    bool                  resume = false;
};

struct ModuleReport {
    std::string name;
    int         layer  = 0;
    int         expert = -1;
    int64_t     tokens = 0;
    double      rel_error = 0; // ‖(W − Ŵ) X‖² / ‖W X‖² on the calibration inputs (the method's objective)
    int64_t     weights = 0;
    int64_t     bytes   = 0;
    // The papers' figure: code bits per weight without side data (n for n-bit grids; 1 + the salient-column fraction
    // for binary methods, whose salient columns carry a second sign plane). bytes gives the storage-exact figure.
    double      nominal_bits = 0;
};

struct QuantizeReport {
    std::vector<ModuleReport> modules;
    struct Undercalibrated {
        int     layer, expert;
        int64_t tokens;
    };
    std::vector<Undercalibrated> undercalibrated; // experts quantized with a regularised Hessian
    struct MoeOutputBias {
        int     layer;
        int64_t tokens;
        // Mean over channels of |E_t[y_fp − ŷ]| of the routed experts' aggregate before / after BCOS (after: on the
        // calibration fold the fit did not see), and the aggregate's RMS for scale.
        double before, after, rms;
    };
    std::vector<MoeOutputBias> moe_output_bias; // kbvq with BCOS: one per MoE layer
    double seconds = 0;
    // Wall time of quantize_model's stages, summed over layers, in first-seen order (`--json`'s stage_seconds):
    // glas (MoBiE's backward pass), fp_stream (the FP model's layers beside the quantizer), capture (the statistics
    // passes, incl. FP-stream cross moments), fp_target (W̃), quantize (the method itself), propagate (pushing the
    // calibration states through the quantized layer), checkpoint (saving each layer for --resume). cpu (`--json`'s
    // stage_cpu_seconds): the process's CPU time over the same spans (all threads; on a loaded machine less noisy).
    struct StageTime {
        std::string name;
        double      wall = 0, cpu = 0;
    };
    std::vector<StageTime> stages;
    void                   add_stage_seconds(const std::string& stage, double wall, double cpu);
    nlohmann::ordered_json to_json() const;
};

// Adds the wall and process CPU time from construction to destruction to the report's stage.
class StageTimer {
public:
    StageTimer(QuantizeReport& rep, std::string stage);
    ~StageTimer();
    StageTimer(const StageTimer&)            = delete;
    StageTimer& operator=(const StageTimer&) = delete;

private:
    QuantizeReport&                       rep_;
    std::string                           stage_;
    std::chrono::steady_clock::time_point t0_;
    double                                cpu0_;
};

// GPTVQ's options for a linear quantized per matrix (gptvq, and kbvq outside the routed experts' shared codebooks):
// D, bits, damping, codebook width and refinement from o; weights per codebook vq_group_size, or by default
// 8·codebook_bits·K·D (the codebooks cost 1/8 bit per weight).
GptvqOptions gptvq_options(const QuantizeOptions& o);

// Known methods, for the CLI's validation and help.
std::vector<std::string> quantize_methods();
bool                     is_binary_method(const std::string& method); // billm, arb-x, arb-rc (calibrated, ~1 bit)
// Throws InputError for an unknown method, bits out of range or a group that does not divide the input sizes.
void validate_options(const QuantizeOptions& opt, const ModelSpec& spec);

// The method-level fields a quantized checkpoint's quantization_config records (method, grid, calibration).
nlohmann::ordered_json quantization_metadata(const QuantizeOptions& opt, const CalibrationSet& calib);

// The calibration sequences MoBiE's GLAS backward pass runs on: n evenly spaced ones (samples i·N/n), or all of them
// when n is 0 or at least N.
CalibrationSet glas_subset(const CalibrationSet& calib, int n);

// Quantizes `model` in place (its linears are replaced by packed ones). The calibration set may be ignored (RTN).
QuantizeReport quantize_model(Model& model, const CalibrationSet& calib, const QuantizeOptions& opt,
                              const ProgressFn& progress = {});

} // namespace moebius::quant
