#pragma once
// A linear layer's weight W (out, in) behind one interface, so quantized formats (packed sign bits, n-bit groups,
// codebooks) slot into the same forward as dense f32 weights. Biases are kept by the model, not here.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "engine/core/dtype.h"

namespace moebius {

// One tensor of a packed linear as stored in a checkpoint: `<module><suffix>` (docs/FORMAT.md).
struct PackedTensor {
    std::string              suffix; // ".qweight", ".scales", ...
    DType                    dtype;
    std::vector<int64_t>     shape;
    std::span<const uint8_t> bytes;  // borrowed from the layer
};

class Linear {
public:
    Linear(int in_features, int out_features) : in_(in_features), out_(out_features) {}
    virtual ~Linear() = default;
    int in_features() const { return in_; }
    int out_features() const { return out_; }
    // y (n, out) = x (n, in) · Wᵀ.
    virtual void forward(const float* x, int n, float* y) const = 0;
    // W (out, in) in f32: exact for dense weights, the dequantized weight for quantized formats.
    virtual std::vector<float> dequantize() const = 0;
    // Bytes this layer occupies in its storage format (for bits-per-weight accounting).
    virtual size_t storage_bytes() const = 0;
    virtual std::string format() const = 0; // "f32", "nbit", "binary", ...
    // Packed storage for checkpoints: the side tensors and the module's quantization_config entry ({"format": ...,
    // parameters}). Dense layers have none (they are written as X.weight).
    virtual std::vector<PackedTensor> packed_tensors() const { return {}; }
    virtual nlohmann::ordered_json    packed_config() const { return nullptr; }

protected:
    int in_, out_;
};

class DenseLinear final : public Linear {
public:
    DenseLinear(int in_features, int out_features, std::vector<float> w); // w (out, in)
    void               forward(const float* x, int n, float* y) const override;
    std::vector<float> dequantize() const override { return w_; }
    size_t             storage_bytes() const override { return w_.size() * sizeof(float); }
    std::string        format() const override { return "f32"; }
    const float*       data() const { return w_.data(); }
    float*             mutable_data() { return w_.data(); }

private:
    std::vector<float> w_; // (out, in)
};

} // namespace moebius
