#include "engine/cpu/nbit_linear.h"

#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "engine/cpu/row_decoded_forward.h"

#include <cmath>
#include <cstring>
#include <string>

namespace moebius {

namespace {

constexpr int kSlack = 8; // bytes after the last row, so 8-byte loads never read past the allocation

// Codes of one row as floats. Eight consecutive B-bit codes starting at a multiple of 8 fill exactly B bytes, so they
// come from one little-endian 8-byte load; the tail (in % 8 codes) is read code by code.
template <int B> void unpack_row(const uint8_t* row, int in, float* dst) {
    constexpr uint64_t mask = (1u << B) - 1;
    int                j    = 0;
    for (; j + 8 <= in; j += 8) {
        uint64_t v;
        std::memcpy(&v, row + (j / 8) * B, 8);
        for (int k = 0; k < 8; ++k)
            dst[j + k] = (float)((v >> (k * B)) & mask);
    }
    for (; j < in; ++j) {
        int64_t  off = (int64_t)j * B;
        uint32_t v   = (uint32_t)row[off >> 3] | ((uint32_t)row[(off >> 3) + 1] << 8);
        dst[j]       = (float)((v >> (off & 7)) & mask);
    }
}

void unpack_row(int bits, const uint8_t* row, int in, float* dst) {
    switch (bits) {
    case 2:
        return unpack_row<2>(row, in, dst);
    case 3:
        return unpack_row<3>(row, in, dst);
    case 4:
        return unpack_row<4>(row, in, dst);
    case 5:
        return unpack_row<5>(row, in, dst);
    case 6:
        return unpack_row<6>(row, in, dst);
    case 7:
        return unpack_row<7>(row, in, dst);
    default:
        return unpack_row<8>(row, in, dst);
    }
}

void check_params(int in, int out, int bits, int group) {
    if (bits < 2 || bits > 8)
        throw FormatError("nbit linear: bits must be in 2..8, got " + std::to_string(bits));
    if (in <= 0 || out <= 0)
        throw FormatError("nbit linear: bad shape (" + std::to_string(out) + ", " + std::to_string(in) + ")");
    if (group <= 0 || in % group != 0)
        throw FormatError("nbit linear: group size " + std::to_string(group) + " does not divide the input dimension " +
                          std::to_string(in));
}

} // namespace

NbitLinear::NbitLinear(int in_features, int out_features, int bits, int group, std::vector<uint8_t> packed,
                       std::vector<uint16_t> scales_f16, std::vector<uint8_t> zeros)
    : Linear(in_features, out_features), bits_(bits), group_(group), row_bytes_(row_bytes(in_features, bits)),
      packed_(std::move(packed)), scales_f16_(std::move(scales_f16)), zeros_(std::move(zeros)) {
    check_params(in_, out_, bits_, group_);
    const size_t ng = (size_t)out_ * (in_ / group_);
    if ((int64_t)packed_.size() != row_bytes_ * out_ || scales_f16_.size() != ng || zeros_.size() != ng)
        throw FormatError("nbit linear: array sizes (codes " + std::to_string(packed_.size()) + ", scales " +
                          std::to_string(scales_f16_.size()) + ", zeros " + std::to_string(zeros_.size()) +
                          ") do not match shape (" + std::to_string(out_) + ", " + std::to_string(in_) + "), " +
                          std::to_string(bits_) + " bits, group " + std::to_string(group_));
    for (uint8_t z : zeros_)
        if (z >= (1 << bits_))
            throw FormatError("nbit linear: zero point " + std::to_string(z) + " outside the " + std::to_string(bits_) +
                              "-bit code range");
    packed_.resize(packed_.size() + kSlack, 0);
    scales_.resize(ng);
    for (size_t i = 0; i < ng; ++i)
        scales_[i] = f16_to_f32(scales_f16_[i]);
}

std::vector<uint8_t> NbitLinear::pack(const uint8_t* codes, int out, int in, int bits) {
    const int64_t        rb = row_bytes(in, bits);
    std::vector<uint8_t> packed((size_t)(rb * out), 0); // (out, row_bytes)
    const unsigned       mask = (1u << bits) - 1;
    for (int o = 0; o < out; ++o) {
        uint8_t* row = packed.data() + o * rb;
        for (int j = 0; j < in; ++j) {
            unsigned code  = codes[(int64_t)o * in + j] & mask;
            int64_t  off   = (int64_t)j * bits;
            int      shift = (int)(off & 7);
            row[off >> 3] |= (uint8_t)(code << shift);
            if (shift + bits > 8)
                row[(off >> 3) + 1] |= (uint8_t)(code >> (8 - shift));
        }
    }
    return packed;
}

std::unique_ptr<NbitLinear> NbitLinear::from_codes(int in, int out, int bits, int group, const uint8_t* codes,
                                                   const float* scales, const float* zeros) {
    check_params(in, out, bits, group);
    const size_t          ng = (size_t)out * (in / group);
    std::vector<uint16_t> s16(ng);
    std::vector<uint8_t>  z8(ng);
    for (size_t i = 0; i < ng; ++i) {
        s16[i] = f32_to_f16(scales[i]);
        if (!(f16_to_f32(s16[i]) == scales[i]))
            throw InputError("nbit linear: scale " + std::to_string(scales[i]) +
                             " is not exactly representable in f16");
        if (!(zeros[i] >= 0 && zeros[i] < (float)(1 << bits) && zeros[i] == std::floor(zeros[i])))
            throw InputError("nbit linear: zero point " + std::to_string(zeros[i]) + " is not an integer code");
        z8[i] = (uint8_t)zeros[i];
    }
    for (int64_t i = 0; i < (int64_t)out * in; ++i)
        if (codes[i] >= (1 << bits))
            throw InputError("nbit linear: code " + std::to_string(codes[i]) + " exceeds " + std::to_string(bits) +
                             " bits");
    return std::make_unique<NbitLinear>(in, out, bits, group, pack(codes, out, in, bits), std::move(s16),
                                        std::move(z8));
}

void NbitLinear::decode_row(int o, float* dst) const {
    unpack_row(bits_, packed_.data() + (int64_t)o * row_bytes_, in_, dst);
    const int ng = in_ / group_;
    for (int g = 0; g < ng; ++g) {
        const float s = scales_[(size_t)o * ng + g];
        const float z = (float)zeros_[(size_t)o * ng + g];
        float*      d = dst + (int64_t)g * group_;
        for (int j = 0; j < group_; ++j)
            d[j] = s * (d[j] - z); // == scale·(float)(code − zero): small ints are exact
    }
}

std::vector<float> NbitLinear::dequantize() const {
    std::vector<float> w((size_t)out_ * in_); // (out, in)
    for (int o = 0; o < out_; ++o)
        decode_row(o, w.data() + (int64_t)o * in_);
    return w;
}

std::vector<PackedTensor> NbitLinear::packed_tensors() const {
    const int64_t ng = n_groups();
    auto bytes = [](auto span) { return std::span<const uint8_t>((const uint8_t*)span.data(), span.size_bytes()); };
    return {{".qweight", DType::U8, {out_, row_bytes_}, bytes(packed_codes())},
            {".scales", DType::F16, {out_, ng}, bytes(scales_f16())},
            {".zeros", DType::U8, {out_, ng}, bytes(zeros())}};
}

nlohmann::ordered_json NbitLinear::packed_config() const {
    return {{"format", "nbit"}, {"bits", bits_}, {"group_size", group_}};
}

size_t NbitLinear::storage_bytes() const {
    const size_t ng = (size_t)out_ * (in_ / group_);
    return (size_t)(row_bytes_ * out_) + ng * sizeof(uint16_t) + ng * sizeof(uint8_t);
}

void NbitLinear::forward(const float* x, int n, float* y) const {
    cpu::row_decoded_forward(x, n, in_, out_, y, [this](int o, float* dst) { decode_row(o, dst); });
}

} // namespace moebius
