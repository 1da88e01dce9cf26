#pragma once
// KBVQ-MoE weights (methods.md §2, docs/FORMAT.md "kbvq"): a routed expert's linear as
//     W[o, :] = γ[o] · ( VQ[o, :] + Σ_k basis[o, k] · coef[k, :] )        y = x Wᵀ + β
// VQ the vector-quantized expert-specific residual (the "vq" format), basis (out, r) the layer's shared IDRE factor,
// coef (r, in) this expert's 8-bit coefficients (symmetric, one f16 scale per coefficient row), γ and β the layer's
// BCOS channel affine (shared by the layer's experts of one kind; β is scaled by the router weight like the output).
// The shared arrays (and, optionally, the residuals' VQ codebooks) are held by every expert of the group but stored
// once, in the checkpoint tensors of the group's owner module (expert 0), which is the only one that counts them in
// storage_bytes().
#include "engine/cpu/vq_linear.h"

#include <memory>
#include <string>
#include <vector>

namespace moebius {

// What a group of experts of one kind in one layer share. All values f16-exact.
struct KbvqShared {
    int                rank = 0;
    std::vector<float> basis; // (out, rank)
    std::vector<float> gamma; // (out); all ones is not stored (format key "gamma" false)
    std::vector<float> beta;  // (out), or empty (no bias)
    // VQ codebooks shared by the group's residuals, (n_codebooks, K, D) in the residuals' common layout; empty: each
    // residual stores its own. Sharing is what makes D = 4 affordable on small experts: one codebook for all of them.
    std::vector<float> codebooks;
};

struct KbvqPacked {
    VqPacked              vq;
    int                   rank = 0;
    std::vector<int8_t>   coef;        // (rank, in)
    std::vector<uint16_t> coef_scales; // (rank) f16
    std::string           owner;       // module name holding the shared tensors
    bool                  is_owner = false;
};

class KbvqLinear final : public Linear {
  public:
    // shared: the group's arrays (out × rank basis, out gammas, optional betas). FormatError on inconsistent sizes.
    KbvqLinear(int in_features, int out_features, KbvqPacked p, std::shared_ptr<const KbvqShared> shared);
    // From the quantizer's residual (validated, InputError); p.vq is ignored.
    KbvqLinear(const VqWeights& residual, KbvqPacked p, std::shared_ptr<const KbvqShared> shared);

    // Symmetric 8-bit rows of C (rank, in): scale = f16(max |row| / 127); zero rows get scale 0.
    static void quantize_coef(const std::vector<double>& C, int rank, int in, std::vector<int8_t>& q,
                              std::vector<uint16_t>& scales);

    void                      forward(const float* x, int n, float* y) const override;
    std::vector<float>        dequantize() const override; // γ ⊙ (VQ + basis·coef), without β
    size_t                    storage_bytes() const override;
    std::string               format() const override { return "kbvq"; }
    std::vector<PackedTensor> packed_tensors() const override;
    nlohmann::ordered_json    packed_config() const override;

    const VqLinear&                    residual() const { return vq_; }
    const std::shared_ptr<const KbvqShared>& shared() const { return shared_; }
    int                                rank() const { return p_.rank; }
    // The stored arrays: 8-bit coefficients, their f16 scales, the owner module's name (the Vulkan upload reads them).
    const KbvqPacked&                  packed() const { return p_; }
    // Replaces the shared arrays (BCOS sets γ and β after every expert of the group is quantized). Shared codebooks
    // must equal the residual's (FormatError otherwise).
    void set_shared(std::shared_ptr<const KbvqShared> s);
    bool shared_codebooks() const { return shared_ && !shared_->codebooks.empty(); }

  private:
    void decode_row(int o, float* dst) const; // row o (in), exactly as dequantize()
    void init(std::shared_ptr<const KbvqShared> shared);

    KbvqPacked                        p_;
    VqLinear                          vq_;
    std::vector<float>                coef_; // (rank, in) dequantized f32
    std::shared_ptr<const KbvqShared> shared_;
    std::vector<uint16_t>             basis16_, gamma16_, beta16_; // owner's tensors as stored (shared codebooks: vq_'s)
};

} // namespace moebius
