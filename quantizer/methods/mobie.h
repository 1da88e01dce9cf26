#pragma once
// MoBiE (methods.md §1): binarized MoE experts, built from four switchable parts on the shared binarizer core
// (binarize.h):
//  - CEJD: per layer and routed-expert kind a rank-r basis shared by the experts (cejd.h; input side for gate/up,
//    output side for down), 8-bit coefficients per expert, the residual binarized with the expert's Hessian and the
//    coefficients refit to what the binarized residual missed.
//  - GLAS: per output channel the mean squared gradient of the end-to-end loss, ḡ_i = E[(∂ℓ/∂z_i)²], from one
//    backward pass of the FP model on the calibration set (importance.h). It weights the rows of the binarizer's
//    saliency (salient-column choice and split) for the routed experts (the other linears measured better without),
//    and the rows of CEJD's basis objective.
//  - FP-stream targets (FpStream below) for the linears outside the routed experts.
//  - NGES: the down projections' error is kept out of the directions the next layer's router reads. The output
//    metric M = D + ν · (out / ‖R̃‖²_F) · R̃ᵀR̃, R̃ = W_router(l+1) · diag(ffn_norm(l+1)), shapes the shared output
//    basis of down, so the basis spans the router's directions and the refit coefficients absorb the binarization
//    error there: what is left lies (to 8-bit rounding) in the router's null space.
#include "engine/cpu/model.h"
#include "quantizer/calibration/capture.h"
#include "quantizer/calibration/importance.h"
#include "quantizer/pipeline.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace moebius::quant {

// GLAS row weights of one linear: ḡ normalised to mean 1 (empty when the statistics have no entry or saw no token).
std::vector<float> glas_row_weight(const GradientStats* grads, int layer, LinearKind kind, int expert, int out);

// NGES's output metric M (n_embd, n_embd) for the layer whose down projections write into the residual stream read
// by `next`'s router; D (n_embd): diagonal part (empty: identity). Empty when `next` has no router.
std::vector<double> nges_metric(const LayerWeights& next, const std::vector<float>& D, double weight);

// One linear as a CEJD linear: W ≈ binarized residual + 8-bit low rank through `basis` (input side: B (r, in),
// output side: B (out, r)), coefficients refit after binarization when opt.cejd_refit. H (in, in) Σ x xᵀ; M (out, out)
// output metric or empty. Fills mr's rel_error, weights, bytes and nominal_bits.
std::unique_ptr<Linear> decompose(const std::vector<float>& W, int out, int in, const std::vector<double>& H,
                                  const std::shared_ptr<const Linear>& basis, bool input, const std::vector<double>& M,
                                  const QuantizeOptions& opt, const std::vector<float>* row_weight,
                                  const std::string& owner, bool is_owner, ModuleReport& mr);

// A linear outside the routed experts (attention, shared expert) as a group of one: its own rank-r basis from the
// same objective (input side; output side with the metric M for linears writing into the residual stream).
std::unique_ptr<Linear> mobie_single(const std::vector<float>& W, int out, int in, const std::vector<double>& H,
                                     int64_t tokens, bool input, const std::vector<double>& M,
                                     const QuantizeOptions& opt, const std::string& name, ModuleReport& mr);

// FP-stream targets (MoBiE's calibration, `--no-fp-target` turns it off): a linear is fitted to the FP model's output
// on the FP stream, W x_fp, from its inputs on the quantized stream x̂, i.e. min Σ_t ‖W x_fp(t) − Ŵ x̂(t)‖² instead of
// the usual Σ_t ‖W x̂(t) − Ŵ x̂(t)‖². With H = Σ x̂ x̂ᵀ and C = Σ x_fp x̂ᵀ this equals ‖(W̃ − Ŵ) X̂‖² + const for
// W̃ = W + W (C − H)(H + λI)⁻¹ (λ = ridge · mean diag H; λ → ∞ gives W back), so any quantizer of W with H runs
// unchanged on W̃, and each linear undoes part of the error already in its inputs instead of passing it on. Why: on
// the bundled model the binarized attention / shared expert dominate the model's error, and CEJD's better experts
// only pay off once that context error shrinks (docs/RESULTS.md, MoBiE). Routed experts are left out by default:
// retargeting them measured worse.
std::vector<float> fp_target_weight(const std::vector<float>& W, int out, int in, const std::vector<double>& H,
                                    const std::vector<double>& C, double ridge);

// The FP model's stream beside the quantizer's: a second, lazily loaded copy of the model run layer by layer on the
// same calibration set, and the cross moments C = Σ x_fp x̂ᵀ of the current layer's linears. Routed experts pair each
// token the quantized router sends to expert e with the FP inputs of e on that token (gate/up: the FP FFN input; down:
// the FP expert's silu(g) ⊙ u on it), whether or not the FP router picks e.
class FpStream {
public:
    using Moments = std::map<std::pair<LinearKind, int>, std::vector<double>>; // (kind, expert or -1) → (in, in)
    // The FP inputs the stream needs, recorded from a forward of the whole FP model that runs anyway (GLAS's):
    // [sample] [layer] kind → (seqlen, in).
    using Recorded = std::vector<std::vector<std::map<LinearKind, std::vector<float>>>>;
    // Upper bound of a Recorded's bytes for every layer and sample of `calib`.
    static size_t recorded_bytes(const ModelSpec& spec, const CalibrationSet& calib);
    // Hooks that record one sample's FP inputs into rec[sample] (rec sized to the sample count beforehand; samples may
    // be recorded concurrently).
    static Hooks recorder(Recorded& rec, int sample);
    // Runs the FP model itself, one layer per capture().
    FpStream(const ModelSpec& spec, const CalibrationSet& calib);
    // Serves the recorded inputs instead (the same values, without a second forward).
    FpStream(const ModelSpec& spec, Recorded recorded);
    // Runs the FP model's next layer on its stream, recording the inputs of its linears: once per quantized layer,
    // before that layer's cross_hooks.
    void capture();
    // Moves the FP stream past a layer without recording (layers restored by a resumed run).
    void skip();
    // Hooks for the quantizer's pass over the same layer (LayerwiseRunner::capture's `also`): they accumulate
    // Σ x_fp x̂ᵀ for the linears of `kinds`; take() hands the sums over.
    Hooks   cross_hooks(const std::vector<LinearKind>& kinds);
    Moments take();

private:
    std::unique_ptr<Model>           model_;
    std::unique_ptr<LayerwiseRunner> run_;      // own forward; null when serving recorded_
    Recorded                         recorded_;
    int                              next_  = 0;  // the layer the next capture() or skip() moves past
    int                              layer_ = -1; // the FP layer in_ belongs to (loaded for the experts' down)
    // [kind] [sample] (seqlen, in): FP inputs of the non-expert linears (Router: the FFN input, also the experts').
    std::map<LinearKind, std::vector<std::vector<float>>> in_;
    std::vector<LinearKind> kinds_;
    Moments                 C_;
    int                     sample_ = 0;
};

// The per-layer driver for quantize_model's routed experts (CEJD on): replaces every expert's linear of a kind with
// a CejdLinear (shared 8-bit basis, 8-bit coefficients, binarized residual).
class MobieLayer {
public:
    MobieLayer(Model& model, int layer, const QuantizeOptions& opt, const GradientStats* grads);
    // H: [experts] Σ x xᵀ of the expert's inputs (possibly regularised); tokens: [experts]; pooled: Σ x xᵀ and token
    // count of the layer's FFN input (gate/up's shared input), unused for down.
    void quantize(LinearKind kind, const std::vector<const std::vector<double>*>& H, const std::vector<int64_t>& tokens,
                  const std::vector<double>& pooled_H, int64_t pooled_tokens, QuantizeReport& rep);

private:
    Model&                 model_;
    int                    layer_;
    const QuantizeOptions& opt_;
    const GradientStats*   grads_;
};

} // namespace moebius::quant
