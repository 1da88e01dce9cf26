#pragma once
// KBVQ-MoE (methods.md §2): for each layer and each routed-expert kind (gate, up, down),
//  - IDRE: a shared left basis B (out, r) from the activation-weighted joint SVD of the layer's experts — the top-r
//    eigenvectors of Σ_e W_e (H_e + δ_e I) W_eᵀ, the Gram matrix of [W_1 U_1 Λ_1^{1/2}, …] (KLT of each expert's input
//    covariance H_e, eigenvalues clamped by δ_e = clamp · mean λ_e); per expert the least-squares coefficients
//    C_e = (BᵀB)⁻¹ Bᵀ W_e, stored at 8 bits. This minimises Σ_e ‖(W_e − B C_e) X_e‖² under a shared basis
//    (the unweighted variant would be a plain projection onto the joint output subspace, methods.md §2.3 note).
//  - the expert-specific residual W_e − B Q(C_e) is GPTVQ-quantized with the expert's Hessian (its error feedback sees
//    the low-rank part as fixed);
//  - BCOS: on the calibration tokens, with inputs from the quantized stream, a channel-wise affine (γ, β) of the
//    routed-expert aggregate Σ_e g_e y_e is fitted by least squares against the FP experts' aggregate,
//    y_fp ≈ γ ⊙ ŷ + β · Σ_e g_e, and folded into the down projections (γ scales their rows, β is their bias, which the
//    MoE block multiplies by g_e like the output). One (γ, β) per layer, shared by its experts.
#include "engine/cpu/kbvq_linear.h"
#include "quantizer/calibration/capture.h"
#include "quantizer/methods/gptvq.h"
#include "quantizer/pipeline.h"

#include <array>
#include <memory>
#include <vector>

namespace moebius::quant {

struct IdreResult {
    int                              rank = 0;
    std::vector<float>               basis; // (out, rank), f16-exact
    std::vector<std::vector<double>> coef;  // [experts] (rank, in) least-squares coefficients for the basis
};

// W: [experts] (out, in) f32; H: [experts] (in, in) Σ x xᵀ on the expert's tokens (null: identity). The rank is
// clamped to out. activation_weighted false gives the plain joint SVD (no KLT weighting).
IdreResult idre_decompose(const std::vector<std::vector<float>>& W, int out, int in,
                          const std::vector<const std::vector<double>*>& H, int rank, bool activation_weighted = true,
                          double clamp = 1e-2);

// The experts' vector dimension: QuantizeOptions::kbvq_dim when set; with shared codebooks by default the widest D
// whose single codebook costs ≤ 1/16 bit per weight of the group with K ≤ 256; without, vq_dim.
int kbvq_expert_dim(const QuantizeOptions& opt, int experts, int out, int in);

// One VQ codebook (K, D) for a group of experts' residuals R: [experts] (out, in), fitted by weighted k-means on
// their D-vectors (at most 512·K of them, strided) with GPTVQ's per-column weights from each expert's H; f16-exact.
std::vector<float> shared_codebooks(const std::vector<std::vector<float>>& R, int out, int in,
                                    const std::vector<const std::vector<double>*>& H, const GptvqOptions& vo,
                                    double damp);

// Least-squares channel affine y ≈ γ ŷ + β s from sufficient statistics, kept separately for two folds of the
// calibration samples so the bias reduction can be measured on samples the fit did not see (2-fold cross-fitting).
class BcosFit {
  public:
    explicit BcosFit(int channels);
    // One token: yq, yfp (channels) the quantized and FP aggregates, s the token's Σ g_e; fold 0 or 1.
    void add(int fold, const float* yq, const float* yfp, double s);
    struct Result {
        std::vector<double> gamma, beta; // (channels)
        // Mean over channels of |E_t[y_fp − ŷ]| before and after the correction; "after" on the held-out fold
        // (the average of the two cross-fits), and the RMS of y_fp for scale.
        double bias_before = 0, bias_after = 0, rms_output = 0;
        int64_t tokens = 0;
    };
    // bias false: γ only (β = 0); gamma false: β only (γ = 1).
    Result solve(bool bias, bool gamma = true) const;

  private:
    struct Stats {
        int64_t             n = 0;
        double              s = 0, ss = 0;
        std::vector<double> q, y, qq, qs, qy, sy, yy; // (channels)
    };
    void  fit(const Stats& a, bool bias, bool gamma, std::vector<double>& g, std::vector<double>& b) const;
    int   c_;
    Stats f_[2];
};

// The method's per-layer driver for quantize_model: holds the FP weights of the layer's routed experts (for BCOS)
// and replaces their linears with KbvqLinear.
class KbvqLayer {
  public:
    KbvqLayer(Model& model, int layer, const QuantizeOptions& opt);
    // Quantizes every routed expert's linear of `kind` jointly. H: [experts] the (possibly regularised) Hessians.
    void quantize(LinearKind kind, const std::vector<const std::vector<double>*>& H,
                  const std::vector<int64_t>& tokens, QuantizeReport& rep);
    // After gate/up/down are quantized: fits BCOS on the runner's calibration states and folds it into the down
    // projections; returns the per-layer bias figures.
    BcosFit::Result fit_bcos(LayerwiseRunner& run, QuantizeReport& rep);

  private:
    Model&                                          model_;
    int                                             layer_;
    const QuantizeOptions&                          opt_;
    std::vector<std::array<std::vector<float>, 3>> fp_; // [experts] gate, up, down (out, in) f32
};

} // namespace moebius::quant
