#pragma once
// MoBiE's cross-expert joint decomposition (CEJD, docs/FORMAT.md "cejd"): a routed expert's linear as a packed residual
// (binary in practice, any format works) plus a low-rank part through a basis shared by the layer's experts of one
// kind:
//     input side  (gate/up):  W = R + C·B     B (r, in) shared, C (out, r) this expert's    y = R x + C (B x)
//     output side (down):     W = R + B·C     B (out, r) shared, C (r, in) this expert's    y = R x + B (C x)
// All routed experts see the same input, so the MoE block computes B x once per token for gate/up; and since down's
// outputs are summed with the router weights, B (Σ_e g_e C_e h_e) is applied once after the sum (Model::moe_ffn).
// Every expert holds the basis, but the checkpoint stores it once, with the group's owner module (expert 0), which
// alone counts it in storage_bytes().
#include <array>
#include <memory>
#include <string>
#include <vector>

#include "engine/cpu/linear.h"

namespace moebius {

class CejdLinear final : public Linear {
public:
    // Shapes must match the side (InputError otherwise). owner: the module storing the basis; is_owner: this one.
    CejdLinear(std::unique_ptr<Linear> residual, std::unique_ptr<Linear> coef, std::shared_ptr<const Linear> basis,
               bool input_side, std::string owner, bool is_owner);

    void                      forward(const float* x, int n, float* y) const override;
    std::vector<float>        dequantize() const override; // R̂ + Ĉ B̂ or R̂ + B̂ Ĉ
    size_t                    storage_bytes() const override;
    std::string               format() const override { return "cejd"; }
    std::vector<PackedTensor> packed_tensors() const override;
    nlohmann::ordered_json    packed_config() const override;

    bool                                 input_side() const { return input_side_; }
    int                                  rank() const { return rank_; }
    const Linear&                        residual() const { return *residual_; }
    const Linear&                        coef() const { return *coef_; }
    const std::shared_ptr<const Linear>& basis() const { return basis_; }
    const std::string&                   owner() const { return owner_; }

private:
    std::unique_ptr<Linear>       residual_, coef_;
    std::shared_ptr<const Linear> basis_;
    bool                          input_side_ = true, is_owner_ = false;
    int                           rank_       = 0;
    std::string                   owner_;
};

// The first expert's CejdLinear when every expert's `kind` (0 gate, 1 up, 2 down) is CEJD on `input_side` with one
// basis (the same owner module; a loaded checkpoint's members share one copy of it, see SharedParts), else null.
const CejdLinear* shared_basis_group(const std::vector<std::array<std::unique_ptr<Linear>, 3>>& experts, int kind,
                                     bool input_side);

} // namespace moebius
