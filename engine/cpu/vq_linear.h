#pragma once
// Vector-quantized weights (GPTVQ, methods.md §4.4): each row is cut into D-dimensional sub-vectors along the input
// dimension, each stored as an index into a codebook of K = 2^(bits·D) f16 centroids of dimension D. One codebook
// serves a block of `rows_per_codebook` rows × `group_cols` input columns; codebook c of row o and column j is
// (o / rows_per_codebook) · (in / group_cols) + j / group_cols. Optionally each row carries an f16 scale:
//     w[o, j] = scale[o] · codebook[c][code[o, j / D]][j mod D]   (scale = 1 without scales)
// Indices are packed LSB-first with bits·D bits each (index i of a row occupies bits [i·bits·D, (i+1)·bits·D) of the
// row's bit stream), each row padded to whole bytes. forward() decodes rows on the fly (engine/cpu/row_decoded_forward.h).
// Codebooks are stored in f16 or, with codebook_bits 8 (GPTVQ's codebook quantization), as int8 q with one f16 scale s
// per codebook: centroid = f16(s · q), the product exact in f32 and then rounded to f16, so the decoded centroids are
// f16 values either way and every decoder (CPU, Vulkan) sees the same f16 codebooks.
#include "engine/cpu/linear.h"

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace moebius {

// Unpacked VQ weights: what the quantizer produces and what VqLinear packs.
struct VqWeights {
    int                   out = 0, in = 0;
    int                   dim = 2;                 // D ∈ {1, 2, 4}
    int                   bits = 2;                // bits per weight dimension: K = 2^(bits·D) ≤ 65536
    int                   group_cols = 0;          // G: columns per codebook block (D | G, G | in)
    int                   rows_per_codebook = 0;   // R: rows per codebook block (the last block may be shorter)
    std::vector<float>    codebooks;               // (n_codebooks, K, D), f16-exact
    std::vector<uint16_t> codes;                   // (out, in / D) centroid indices < K
    std::vector<float>    scales;                  // (out) f16-exact, or empty (no row scales)
    int                   codebook_bits = 16;      // 16: f16 centroids; 8: int8 centroids × a per-codebook scale
    std::vector<float>    codebook_scales;         // (n_codebooks) f16-exact, codebook_bits 8 only: every centroid of
                                                   // codebook c is vq_int8_centroid(codebook_scales[c], q), |q| ≤ 127

    int                k() const { return 1 << (bits * dim); }
    int                n_row_blocks() const { return (out + rows_per_codebook - 1) / rows_per_codebook; }
    int                n_col_groups() const { return in / group_cols; }
    int                n_codebooks() const { return n_row_blocks() * n_col_groups(); }
    std::vector<float> dequantize() const; // (out, in), exactly as VqLinear decodes
    // InputError unless shapes and parameters are consistent, codebooks/scales f16-exact and codes < K.
    void validate() const;
};

// The decoded centroid of an 8-bit codebook entry q with the codebook's f16 scale: f16(s · q).
float vq_int8_centroid(uint16_t scale, int8_t q);
// Rounds the n values of one codebook to the 8-bit grid in place: scale = the smallest f16 ≥ max |v| / 127 (so
// |q| ≤ 127), q = round(v / scale), v ← vq_int8_centroid(scale, q). Writes q when given; returns the f16 scale.
uint16_t vq_round_codebook_int8(float* v, size_t n, int8_t* q = nullptr);

// The packed side arrays as stored in a checkpoint.
struct VqPacked {
    int                   dim = 2, bits = 2, group_cols = 0, rows_per_codebook = 0;
    int                   codebook_bits = 16;
    std::vector<uint8_t>  codes;           // (out, row_bytes)
    std::vector<uint16_t> codebooks;       // (n_codebooks, K, D) f16; with codebook_bits 8 derived by the constructor
    std::vector<int8_t>   codebooks_i8;    // (n_codebooks, K, D), codebook_bits 8 only
    std::vector<uint16_t> codebook_scales; // (n_codebooks) f16, codebook_bits 8 only
    std::vector<uint16_t> scales;          // (out) f16, or empty
};

class VqLinear final : public Linear {
  public:
    explicit VqLinear(const VqWeights& w); // validates (InputError), packs
    // From checkpoint arrays; FormatError on inconsistent sizes or parameters.
    VqLinear(int in_features, int out_features, VqPacked p);

    static int64_t row_bytes(int in, int dim, int bits) { return ((int64_t)(in / dim) * bits * dim + 7) / 8; }
    static std::vector<uint8_t> pack(const uint16_t* codes, int out, int in, int dim, int bits);

    void                      forward(const float* x, int n, float* y) const override;
    std::vector<float>        dequantize() const override;
    size_t                    storage_bytes() const override;
    std::string               format() const override { return "vq"; }
    std::vector<PackedTensor> packed_tensors() const override;
    nlohmann::ordered_json    packed_config() const override;

    VqWeights unpack() const;
    int       dim() const { return p_.dim; }
    int       bits() const { return p_.bits; }
    int       k() const { return 1 << (p_.bits * p_.dim); }
    int       group_cols() const { return p_.group_cols; }
    int       rows_per_codebook() const { return p_.rows_per_codebook; }
    int       codebook_bits() const { return p_.codebook_bits; }
    int       n_codebooks() const;
    bool      has_scales() const { return !p_.scales.empty(); }
    const std::vector<float>& codebooks() const { return codebooks_; } // (n_codebooks, K, D), the decoded f16 values
    const std::vector<uint16_t>& codebooks_f16() const { return p_.codebooks; } // the same as f16 bits (GPU upload)
    void      decode_row(int o, float* dst) const; // row o (in), exactly as dequantize(); thread-safe

  private:

    VqPacked           p_;          // codes carry kSlack extra zero bytes at the end
    int64_t            row_bytes_;
    std::vector<float> codebooks_;  // (n_codebooks, K, D) in f32
    std::vector<float> scales_;     // (out) in f32, empty without scales
};

} // namespace moebius
