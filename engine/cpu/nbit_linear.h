#pragma once
// Uniform n-bit weights (RTN / GPTQ / AGQ grids): w = scale·(code − zero) per (row, group of `group` input columns).
// Codes are packed LSB-first along the input dimension: element j of a row occupies bits [j·b, (j+1)·b) of the row's
// bit stream (so a 3-bit code may straddle two bytes), each row padded to whole bytes. Scales are f16, zeros u8,
// both (out, n_groups). forward() decodes on the fly; the weight is never held dequantized in full.
#include "engine/cpu/linear.h"

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace moebius {

class NbitLinear final : public Linear {
  public:
    // packed (out, row_bytes(in, bits)); scales_f16, zeros (out, in / group). Throws FormatError on inconsistent sizes
    // or parameters (these arrays normally come from a checkpoint).
    NbitLinear(int in_features, int out_features, int bits, int group, std::vector<uint8_t> packed,
               std::vector<uint16_t> scales_f16, std::vector<uint8_t> zeros);
    // From unpacked codes (out, in) and f32 scales / zeros (out, in / group); scales must be exactly representable in
    // f16 and zeros integers in [0, 255] (InputError otherwise), so nothing is rounded here.
    static std::unique_ptr<NbitLinear> from_codes(int in_features, int out_features, int bits, int group,
                                                  const uint8_t* codes, const float* scales, const float* zeros);
    // Packs codes (out, in) into the row bit streams described above.
    static std::vector<uint8_t> pack(const uint8_t* codes, int out, int in, int bits);
    static int64_t              row_bytes(int in, int bits) { return ((int64_t)in * bits + 7) / 8; }

    void               forward(const float* x, int n, float* y) const override;
    std::vector<float> dequantize() const override;
    size_t             storage_bytes() const override;
    std::string        format() const override { return "nbit"; }
    std::vector<PackedTensor> packed_tensors() const override;
    nlohmann::ordered_json    packed_config() const override;

    int                       bits() const { return bits_; }
    int                       group() const { return group_; }
    int                       n_groups() const { return in_ / group_; }
    std::span<const uint8_t>  packed_codes() const { return {packed_.data(), (size_t)(row_bytes_ * out_)}; }
    std::span<const uint16_t> scales_f16() const { return scales_f16_; }
    std::span<const uint8_t>  zeros() const { return zeros_; }

  private:
    // Row o's weights (in) into dst, exactly as dequantize() computes them.
    void decode_row(int o, float* dst) const;

    int                   bits_, group_;
    int64_t               row_bytes_;
    std::vector<uint8_t>  packed_;     // (out, row_bytes) + 8 bytes of slack so decoders can load 8 bytes at a time
    std::vector<uint16_t> scales_f16_; // (out, n_groups)
    std::vector<float>    scales_;     // (out, n_groups) the same scales in f32
    std::vector<uint8_t>  zeros_;      // (out, n_groups)
};

} // namespace moebius
