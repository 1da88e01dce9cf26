#pragma once
// Structured binary weights (BiLLM, ARB-X, ARB-RC; the binarizer core of MoBiE), docs/FORMAT.md "binary".
//
// W (out, in) is cut into column blocks of `block` columns. A column is salient (order-2: two sign planes) or not
// (order-1). Each element has a split bit that, with its column's saliency, names its group:
//   group(o, j) = salient[j] ? 2 + (salient_groups == 2 ? split(o, j) : 0) : split(o, j)
// so groups 0, 1 are the two non-salient groups (BiLLM's bell-shaped split: concentrated / sparse) and 2 (and 3 with
// ARB's column-group bitmap, salient_groups == 2) the salient ones. Group g has `order(g)` coefficient slots:
//   slots(0) = {0}, slots(1) = {1}, slots(2) = {2, 3}, slots(3) = {4, 5};  n_slots = 2 + 2·salient_groups
// and the weight is, computed in f32 in exactly this order:
//   a_k = row_scale[o, b, slot_k] · (col_scale ? col_scale[j, slot_k] : 1)
//   W[o, j] = (mean ? row_mean[o, b, g] : 0) + a_0 · sign1(o, j) [+ a_1 · sign2(o, j) if salient[j]]
// with b = j / block and signs ±1. All scales and means are f16-exact (stored as F16).
#include "engine/cpu/linear.h"

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace moebius {

// The unpacked form the binarizers produce; BinaryLinear packs it.
struct BinaryWeights {
    int  out = 0, in = 0;
    int  block          = 128;   // divides in
    int  salient_groups = 1;     // 1 (BiLLM), 2 (ARB's column-group bitmap), 0: no salient columns (MoBiE's residuals)
    bool has_mean       = true;  // false for ARB-RC
    bool has_col_scale  = false; // true for ARB-RC
    std::vector<uint8_t> salient;   // (in) 1: the column is salient (order 2)
    std::vector<uint8_t> split;     // (out, in) 0/1 group bit (ignored on salient columns when salient_groups == 1)
    std::vector<int8_t>  sign1;     // (out, in) ±1
    std::vector<int8_t>  sign2;     // (out, in) ±1 on salient columns; ignored elsewhere
    std::vector<float>   row_scale; // (out, n_blocks, n_slots)
    std::vector<float>   row_mean;  // (out, n_blocks, n_groups) when has_mean, else empty
    std::vector<float>   col_scale; // (in, n_slots) when has_col_scale, else empty

    int n_blocks() const { return in / block; }
    int n_groups() const { return 2 + salient_groups; }
    int n_slots() const { return 2 + 2 * salient_groups; }
    // Throws InputError when sizes or parameters are inconsistent (salient_groups ∉ {1,2}, block ∤ in, a value not
    // f16-exact or not finite, a split bit or saliency flag not 0/1, a sign not ±1; sign2 is checked on salient
    // columns only).
    void validate() const;
    // (out, in), by the formula above: the same numbers BinaryLinear::dequantize() and its forward use.
    std::vector<float> dequantize() const;
};

// The checkpoint tensors of a BinaryLinear (docs/FORMAT.md "binary"), bit streams LSB-first (bit k is bit k % 8 of
// byte k / 8; a set sign bit is +1), each row padded to whole bytes.
struct BinaryPacked {
    int                   block          = 128;
    int                   salient_groups = 1;
    bool                  has_mean       = true;
    bool                  has_col_scale  = false;
    std::vector<uint8_t>  salient;    // (ceil(in/8)) column bitmap
    std::vector<uint8_t>  split;      // (out, ceil(in/8)) group bits; 0 on salient columns when salient_groups == 1
    std::vector<uint8_t>  signs;      // (out, ceil(in/8)) first sign plane
    std::vector<uint8_t>  signs2;     // (out, ceil(n_sal/8)) second sign plane, salient columns in increasing order
    std::vector<uint16_t> row_scales; // (out, n_blocks, n_slots) f16 bits
    std::vector<uint16_t> row_means;  // (out, n_blocks, n_groups) f16 bits when has_mean, else empty
    std::vector<uint16_t> col_scales; // (in, n_slots) f16 bits when has_col_scale, else empty
};

class BinaryLinear final : public Linear {
  public:
    explicit BinaryLinear(const BinaryWeights& w); // packs; validates (InputError)
    // From checkpoint tensors (docs/FORMAT.md); FormatError on inconsistent sizes or parameters. Padding bits are
    // ignored.
    BinaryLinear(int in_features, int out_features, BinaryPacked packed);

    void                      forward(const float* x, int n, float* y) const override;
    std::vector<float>        dequantize() const override;
    size_t                    storage_bytes() const override;
    std::string               format() const override { return "binary"; }
    std::vector<PackedTensor> packed_tensors() const override;
    nlohmann::ordered_json    packed_config() const override;

    // The unpacked form back; equal to what was packed except for entries the format ignores (split bits of salient
    // columns when salient_groups == 1 come back 0, sign2 off the salient columns comes back +1).
    BinaryWeights unpack() const;

    static int64_t bit_bytes(int64_t bits) { return (bits + 7) / 8; }
    // Number of set bits among the first `in` bits of a salient bitmap (bits past `in` are padding).
    static int count_salient(std::span<const uint8_t> bitmap, int in);

    const BinaryPacked& packed() const { return p_; }
    int                 block() const { return p_.block; }
    int                 salient_groups() const { return p_.salient_groups; }
    int                 n_blocks() const { return in_ / p_.block; }
    int                 n_groups() const { return 2 + p_.salient_groups; }
    int                 n_slots() const { return 2 + 2 * p_.salient_groups; }
    int                 n_salient() const { return (int)sal_cols_.size(); }

  private:
    void init(); // checks sizes (FormatError) and builds the f32 copies below
    // Row o's weights (in) into dst, exactly as BinaryWeights::dequantize() computes them.
    void decode_row(int o, float* dst) const;

    BinaryPacked       p_;
    int64_t            row_bytes_ = 0, row_bytes2_ = 0; // ceil(in/8), ceil(n_sal/8)
    std::vector<int>   sal_cols_;                       // (n_sal) salient columns, increasing
    std::vector<int>   sal_blk_;                        // (n_sal) their blocks
    std::vector<int>   sal_off_;                        // (n_blocks + 1) block b's salient columns: [off[b], off[b+1])
    std::vector<float> row_scales_;                     // (out, n_blocks, n_slots) f32 copy
    std::vector<float> row_means_;                      // (out, n_blocks, n_groups) f32 copy, or empty
    std::vector<float> col_scales_t_;                   // (n_slots, in) f32, transposed: one slot's columns contiguous
    std::vector<float> sal_col_scales_;                 // (n_sal, n_slots − 2) f32: salient columns' own slots
};

} // namespace moebius
