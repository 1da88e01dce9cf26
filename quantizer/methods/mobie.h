#pragma once
// MoBiE (methods.md §1): binarized MoE experts, built from three switchable parts on the shared binarizer core
// (binarize.h):
//  - CEJD: per layer and routed-expert kind a rank-r basis shared by the experts (cejd.h; input side for gate/up,
//    output side for down), 8-bit coefficients per expert, the residual binarized with the expert's Hessian and the
//    coefficients refit to what the binarized residual missed.
//  - GLAS: per output channel the mean squared gradient of the end-to-end loss, ḡ_i = E[(∂ℓ/∂z_i)²], from one
//    backward pass of the FP model on the calibration set (importance.h). It weights the rows of the binarizer's
//    saliency (salient-column choice and split) for every linear, and the rows of CEJD's basis objective.
//  - NGES: the down projections' error is kept out of the directions the next layer's router reads. The output
//    metric M = D + ν · (out / ‖R̃‖²_F) · R̃ᵀR̃, R̃ = W_router(l+1) · diag(ffn_norm(l+1)), shapes the shared output
//    basis of down, so the basis spans the router's directions and the refit coefficients absorb the binarization
//    error there: what is left lies (to 8-bit rounding) in the router's null space.
#include "engine/cpu/model.h"
#include "quantizer/calibration/importance.h"
#include "quantizer/pipeline.h"

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
