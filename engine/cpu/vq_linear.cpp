#include "engine/cpu/vq_linear.h"

#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "engine/cpu/row_decoded_forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace moebius {

namespace {

constexpr int kSlack = 16; // bytes after the last row, so 16-byte index loads never read past the allocation

bool f16_exact(float v) { return f16_to_f32(f32_to_f16(v)) == v; }

// The 8-bit code q of centroid v under an f16-exact scale s, or -128 when v is no vq_int8_centroid(s, q). v = f16(s·q)
// is within 2⁻¹¹ relative of s·q and |q| ≤ 127, so q = round(v / s) (off by at most 0.07 before rounding).
int codebook_int8(float v, float s) {
    if (s == 0) return v == 0 ? 0 : -128;
    const long q = std::lrint(v / s);
    if (q < -127 || q > 127 || vq_int8_centroid(f32_to_f16(s), (int8_t)q) != v) return -128;
    return (int)q;
}

// Parameter checks shared by both constructors; returns an empty string when fine.
std::string param_error(int in, int out, int dim, int bits, int group_cols, int rows_per_codebook) {
    if (in <= 0 || out <= 0) return "bad shape (" + std::to_string(out) + ", " + std::to_string(in) + ")";
    if (dim != 1 && dim != 2 && dim != 4) return "dim must be 1, 2 or 4, got " + std::to_string(dim);
    if (bits < 1 || bits * dim > 16)
        return "bits " + std::to_string(bits) + " with dim " + std::to_string(dim) + " gives more than 2^16 centroids";
    if (group_cols <= 0 || group_cols % dim != 0 || in % group_cols != 0)
        return "group_cols " + std::to_string(group_cols) + " must be a multiple of dim " + std::to_string(dim) +
               " dividing the input size " + std::to_string(in);
    if (rows_per_codebook <= 0) return "rows_per_codebook must be positive, got " + std::to_string(rows_per_codebook);
    return {};
}

// Indices of one row: index i occupies bits [i·B, (i+1)·B); B ≤ 16 so a 4-byte window from its first byte holds it.
inline uint32_t read_index(const uint8_t* row, int64_t i, int B, uint32_t mask) {
    const int64_t off = i * B;
    uint32_t      v;
    std::memcpy(&v, row + (off >> 3), 4);
    return (v >> (off & 7)) & mask;
}

// All indices of a row into idx (in / D of them). Eight consecutive B-bit indices starting at a multiple of 8 fill
// exactly B bytes, so they come from one 8-byte (B ≤ 8) or 16-byte little-endian load; the tail is read one by one.
template <int B> void unpack_indices(const uint8_t* row, int n_idx, uint16_t* idx) {
    constexpr uint32_t mask = (1u << B) - 1;
    int                i    = 0;
    for (; i + 8 <= n_idx; i += 8) {
        if constexpr (B <= 8) {
            uint64_t v;
            std::memcpy(&v, row + (i / 8) * B, 8);
            for (int k = 0; k < 8; ++k) idx[i + k] = (uint16_t)((v >> (k * B)) & mask);
        } else {
            unsigned __int128 v;
            std::memcpy(&v, row + (i / 8) * B, 16);
            for (int k = 0; k < 8; ++k) idx[i + k] = (uint16_t)((uint64_t)(v >> (k * B)) & mask);
        }
    }
    for (; i < n_idx; ++i) idx[i] = (uint16_t)read_index(row, i, B, mask);
}

void unpack_indices(int B, const uint8_t* row, int n_idx, uint16_t* idx) {
    switch (B) {
#define MOEBIUS_VQ_CASE(b)                                                                                             \
    case b:                                                                                                            \
        return unpack_indices<b>(row, n_idx, idx);
        MOEBIUS_VQ_CASE(1) MOEBIUS_VQ_CASE(2) MOEBIUS_VQ_CASE(3) MOEBIUS_VQ_CASE(4) MOEBIUS_VQ_CASE(5)
        MOEBIUS_VQ_CASE(6) MOEBIUS_VQ_CASE(7) MOEBIUS_VQ_CASE(8) MOEBIUS_VQ_CASE(9) MOEBIUS_VQ_CASE(10)
        MOEBIUS_VQ_CASE(11) MOEBIUS_VQ_CASE(12) MOEBIUS_VQ_CASE(13) MOEBIUS_VQ_CASE(14) MOEBIUS_VQ_CASE(15)
#undef MOEBIUS_VQ_CASE
    default:
        return unpack_indices<16>(row, n_idx, idx);
    }
}

#if defined(__AVX2__)
// 8 lanes from a 32-float table held in 4 registers, lane offsets f in [0, 32): a vpermps in each register, then
// blends on bits 3 and 4 of the offset. (No vgatherdps: on this Cascade Lake class machine gathers are microcoded
// and several times slower.)
inline __m256 table32(const __m256 t[4], __m256i f) {
    const __m256 b3 = _mm256_castsi256_ps(_mm256_slli_epi32(f, 28)), b4 = _mm256_castsi256_ps(_mm256_slli_epi32(f, 27));
    const __m256 lo = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t[0], f), _mm256_permutevar8x32_ps(t[1], f), b3);
    const __m256 hi = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t[2], f), _mm256_permutevar8x32_ps(t[3], f), b3);
    return _mm256_blendv_ps(lo, hi, b4);
}
#endif

// Centroid lookup for a compile-time dim: per column group, copy the D floats of each indexed centroid (times s;
// s = 1 without row scales, and 1·c == c exactly). With AVX2, codebooks of at most 32 floats (D = 1 up to 5 bits,
// D = 2 at 1–2 bits) are looked up from registers (table32), D = 4 with one 16-byte load per centroid; larger
// codebooks take the scalar loop.
template <int D>
void lookup_row(const uint16_t* idx, int in, int G, const float* cbs, int K, float s, float* dst) {
    for (int g = 0; g < in / G; ++g) {
        const float*    cb = cbs + (int64_t)g * K * D;
        const uint16_t* ix = idx + (int64_t)g * (G / D);
        float*          d  = dst + (int64_t)g * G;
        int             k  = 0;
#if defined(__AVX2__)
        const __m256 vs = _mm256_set1_ps(s);
        if constexpr (D == 4) {
            for (; k < G / 4; ++k)
                _mm_storeu_ps(d + 4 * k, _mm_mul_ps(_mm256_castps256_ps128(vs), _mm_loadu_ps(cb + 4 * (int64_t)ix[k])));
        } else if (K * D <= 32) {
            alignas(32) float tbl[32] = {};
            std::memcpy(tbl, cb, sizeof(float) * K * D);
            const __m256 t[4] = {_mm256_load_ps(tbl), _mm256_load_ps(tbl + 8), _mm256_load_ps(tbl + 16),
                                 _mm256_load_ps(tbl + 24)};
            if constexpr (D == 1) {
                for (; k + 8 <= G; k += 8) {
                    const __m256i f = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(ix + k)));
                    const __m256  v = K <= 8 ? _mm256_permutevar8x32_ps(t[0], f) : table32(t, f);
                    _mm256_storeu_ps(d + k, _mm256_mul_ps(vs, v));
                }
            } else {
                // Float offsets 2·i₀, 2·i₀ + 1, 2·i₁, ... of 4 centroids.
                const __m256i dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3), odd = _mm256_setr_epi32(0, 1, 0, 1, 0, 1, 0, 1);
                for (; k + 4 <= G / 2; k += 4) {
                    const __m128i i4 = _mm_cvtepu16_epi32(_mm_loadl_epi64((const __m128i*)(ix + k)));
                    const __m256i i8 = _mm256_permutevar8x32_epi32(_mm256_castsi128_si256(i4), dup);
                    const __m256i f  = _mm256_add_epi32(_mm256_add_epi32(i8, i8), odd);
                    _mm256_storeu_ps(d + 2 * k, _mm256_mul_ps(vs, table32(t, f)));
                }
            }
        }
#endif
        for (; k < G / D; ++k) {
            const float* c = cb + (int64_t)ix[k] * D;
            for (int t = 0; t < D; ++t) d[k * D + t] = s * c[t];
        }
    }
}

} // namespace

float vq_int8_centroid(uint16_t scale, int8_t q) { return f16_to_f32(f32_to_f16(f16_to_f32(scale) * (float)q)); }

uint16_t vq_round_codebook_int8(float* v, size_t n, int8_t* q) {
    float mx = 0;
    for (size_t i = 0; i < n; ++i) mx = std::max(mx, std::fabs(v[i]));
    uint16_t s = f32_to_f16(mx / 127.0f);
    while (f16_to_f32(s) * 127.0f < mx) ++s; // the next f16 up (positive f16 bit patterns are ordered)
    const float sf = f16_to_f32(s);
    for (size_t i = 0; i < n; ++i) {
        const int8_t qi = sf > 0 ? (int8_t)std::clamp(std::lrint(v[i] / sf), -127L, 127L) : 0;
        if (q) q[i] = qi;
        v[i] = vq_int8_centroid(s, qi);
    }
    return s;
}

// ---- VqWeights ------------------------------------------------------------------------------------------------------

void VqWeights::validate() const {
    if (auto e = param_error(in, out, dim, bits, group_cols, rows_per_codebook); !e.empty()) throw InputError("vq: " + e);
    const size_t ncb = (size_t)n_codebooks() * k() * dim;
    if (codebooks.size() != ncb || codes.size() != (size_t)out * (in / dim) || (!scales.empty() && scales.size() != (size_t)out))
        throw InputError("vq: array sizes (codebooks " + std::to_string(codebooks.size()) + ", codes " +
                         std::to_string(codes.size()) + ", scales " + std::to_string(scales.size()) +
                         ") do not match shape (" + std::to_string(out) + ", " + std::to_string(in) + "), dim " +
                         std::to_string(dim) + ", " + std::to_string(k()) + " centroids, " +
                         std::to_string(n_codebooks()) + " codebooks");
    for (float v : codebooks)
        if (!f16_exact(v)) throw InputError("vq: centroid " + std::to_string(v) + " is not exactly representable in f16");
    for (float v : scales)
        if (!f16_exact(v)) throw InputError("vq: scale " + std::to_string(v) + " is not exactly representable in f16");
    if (codebook_bits != 8 && codebook_bits != 16)
        throw InputError("vq: codebook_bits must be 8 or 16, got " + std::to_string(codebook_bits));
    if (codebook_scales.size() != (codebook_bits == 8 ? (size_t)n_codebooks() : 0))
        throw InputError("vq: " + std::to_string(codebook_scales.size()) + " codebook scales for " +
                         std::to_string(n_codebooks()) + " codebooks of " + std::to_string(codebook_bits) + " bits");
    for (size_t c = 0; c < codebook_scales.size(); ++c) {
        const float s = codebook_scales[c];
        if (!f16_exact(s) || !(s >= 0) || std::isinf(s))
            throw InputError("vq: codebook scale " + std::to_string(s) + " is not a finite non-negative f16 value");
        const size_t n = (size_t)k() * dim;
        for (size_t i = c * n; i < (c + 1) * n; ++i)
            if (codebook_int8(codebooks[i], s) < -127)
                throw InputError("vq: centroid " + std::to_string(codebooks[i]) + " of codebook " + std::to_string(c) +
                                 " is not on its 8-bit grid (scale " + std::to_string(s) + ")");
    }
    for (uint16_t c : codes)
        if (c >= k()) throw InputError("vq: code " + std::to_string(c) + " >= " + std::to_string(k()) + " centroids");
}

std::vector<float> VqWeights::dequantize() const {
    std::vector<float> w((size_t)out * in); // (out, in)
    const int          K = k(), ncg = n_col_groups();
    for (int o = 0; o < out; ++o)
        for (int j = 0; j < in; ++j) {
            const int64_t cb = (int64_t)(o / rows_per_codebook) * ncg + j / group_cols;
            const float   c  = codebooks[(cb * K + codes[(size_t)o * (in / dim) + j / dim]) * dim + j % dim];
            w[(size_t)o * in + j] = (scales.empty() ? 1.0f : scales[o]) * c;
        }
    return w;
}

// ---- VqLinear -------------------------------------------------------------------------------------------------------

std::vector<uint8_t> VqLinear::pack(const uint16_t* codes, int out, int in, int dim, int bits) {
    const int64_t        rb = row_bytes(in, dim, bits), n_idx = in / dim;
    const int            B  = bits * dim;
    std::vector<uint8_t> packed((size_t)(rb * out), 0); // (out, row_bytes)
    for (int o = 0; o < out; ++o) {
        uint8_t* row = packed.data() + o * rb;
        for (int64_t i = 0; i < n_idx; ++i) {
            const uint32_t code = codes[o * n_idx + i] & ((1u << B) - 1);
            const int64_t  off  = i * B;
            // Up to 16 bits starting at any bit offset span at most 3 bytes.
            for (int b = 0; b < 3 && (off & 7) + B > 8 * b; ++b)
                row[(off >> 3) + b] |= (uint8_t)((code << (off & 7)) >> (8 * b));
        }
    }
    return packed;
}

namespace {

VqPacked pack_weights(const VqWeights& w) {
    w.validate();
    VqPacked p;
    p.dim = w.dim, p.bits = w.bits, p.group_cols = w.group_cols, p.rows_per_codebook = w.rows_per_codebook;
    p.codebook_bits = w.codebook_bits;
    p.codes = VqLinear::pack(w.codes.data(), w.out, w.in, w.dim, w.bits);
    if (w.codebook_bits == 8) { // the constructor derives the f16 codebooks
        const size_t n = (size_t)w.k() * w.dim;
        for (size_t i = 0; i < w.codebooks.size(); ++i)
            p.codebooks_i8.push_back((int8_t)codebook_int8(w.codebooks[i], w.codebook_scales[i / n]));
        for (float s : w.codebook_scales) p.codebook_scales.push_back(f32_to_f16(s));
    } else {
        for (float v : w.codebooks) p.codebooks.push_back(f32_to_f16(v));
    }
    for (float v : w.scales) p.scales.push_back(f32_to_f16(v));
    return p;
}

} // namespace

VqLinear::VqLinear(const VqWeights& w) : VqLinear(w.in, w.out, pack_weights(w)) {}

VqLinear::VqLinear(int in_features, int out_features, VqPacked p) : Linear(in_features, out_features), p_(std::move(p)) {
    if (auto e = param_error(in_, out_, p_.dim, p_.bits, p_.group_cols, p_.rows_per_codebook); !e.empty())
        throw FormatError("vq linear: " + e);
    if (p_.codebook_bits != 8 && p_.codebook_bits != 16)
        throw FormatError("vq linear: codebook_bits must be 8 or 16, got " + std::to_string(p_.codebook_bits));
    row_bytes_       = row_bytes(in_, p_.dim, p_.bits);
    const size_t ncb = (size_t)n_codebooks() * k() * p_.dim;
    const bool   i8  = p_.codebook_bits == 8;
    if ((int64_t)p_.codes.size() != row_bytes_ * out_ || (i8 ? p_.codebooks_i8.size() : p_.codebooks.size()) != ncb ||
        (i8 ? !p_.codebooks.empty() || p_.codebook_scales.size() != (size_t)n_codebooks()
            : !p_.codebooks_i8.empty() || !p_.codebook_scales.empty()) ||
        (!p_.scales.empty() && p_.scales.size() != (size_t)out_))
        throw FormatError("vq linear: array sizes (codes " + std::to_string(p_.codes.size()) + ", codebooks " +
                          std::to_string(i8 ? p_.codebooks_i8.size() : p_.codebooks.size()) + ", codebook scales " +
                          std::to_string(p_.codebook_scales.size()) + ", scales " + std::to_string(p_.scales.size()) +
                          ") do not match shape (" + std::to_string(out_) + ", " + std::to_string(in_) + "), dim " +
                          std::to_string(p_.dim) + ", bits " + std::to_string(p_.bits) + ", " +
                          std::to_string(n_codebooks()) + " codebooks");
    p_.codes.resize(p_.codes.size() + kSlack, 0);
    if (i8) {
        for (uint16_t s : p_.codebook_scales)
            if ((s & 0x7c00) == 0x7c00 || (s & 0x8000))
                throw FormatError("vq linear: codebook scale " + std::to_string(f16_to_f32(s)) +
                                  " is not a finite non-negative f16 value");
        const size_t n = ncb / n_codebooks();
        for (size_t i = 0; i < ncb; ++i) {
            if (p_.codebooks_i8[i] == -128) throw FormatError("vq linear: 8-bit centroid -128 (the range is ±127)");
            p_.codebooks.push_back(f32_to_f16(vq_int8_centroid(p_.codebook_scales[i / n], p_.codebooks_i8[i])));
        }
    }
    codebooks_.resize(ncb);
    for (size_t i = 0; i < ncb; ++i) codebooks_[i] = f16_to_f32(p_.codebooks[i]);
    for (uint16_t s : p_.scales) scales_.push_back(f16_to_f32(s));
}

int VqLinear::n_codebooks() const {
    return (out_ + p_.rows_per_codebook - 1) / p_.rows_per_codebook * (in_ / p_.group_cols);
}

void VqLinear::decode_row(int o, float* dst) const {
    thread_local std::vector<uint16_t> idx; // (in / D) this row's centroid indices
    const int                          n_idx = in_ / p_.dim, K = k();
    if ((int)idx.size() < n_idx) idx.resize(n_idx);
    unpack_indices(p_.bits * p_.dim, p_.codes.data() + (int64_t)o * row_bytes_, n_idx, idx.data());
    const float* cbs = codebooks_.data() + (int64_t)(o / p_.rows_per_codebook) * (in_ / p_.group_cols) * K * p_.dim;
    const float  s   = scales_.empty() ? 1.0f : scales_[o];
    switch (p_.dim) {
    case 1:
        return lookup_row<1>(idx.data(), in_, p_.group_cols, cbs, K, s, dst);
    case 2:
        return lookup_row<2>(idx.data(), in_, p_.group_cols, cbs, K, s, dst);
    default:
        return lookup_row<4>(idx.data(), in_, p_.group_cols, cbs, K, s, dst);
    }
}

std::vector<float> VqLinear::dequantize() const {
    std::vector<float> w((size_t)out_ * in_); // (out, in)
    for (int o = 0; o < out_; ++o) decode_row(o, w.data() + (int64_t)o * in_);
    return w;
}

VqWeights VqLinear::unpack() const {
    VqWeights w;
    w.out = out_, w.in = in_, w.dim = p_.dim, w.bits = p_.bits, w.group_cols = p_.group_cols;
    w.rows_per_codebook = p_.rows_per_codebook;
    w.codebooks         = codebooks_;
    w.scales            = scales_;
    w.codebook_bits     = p_.codebook_bits;
    for (uint16_t s : p_.codebook_scales) w.codebook_scales.push_back(f16_to_f32(s));
    const int      B = p_.bits * p_.dim, n_idx = in_ / p_.dim;
    const uint32_t mask = (1u << B) - 1;
    w.codes.resize((size_t)out_ * n_idx);
    for (int o = 0; o < out_; ++o)
        for (int i = 0; i < n_idx; ++i)
            w.codes[(size_t)o * n_idx + i] = (uint16_t)read_index(p_.codes.data() + o * row_bytes_, i, B, mask);
    return w;
}

std::vector<PackedTensor> VqLinear::packed_tensors() const {
    auto bytes = [](const auto& v, size_t n) { return std::span<const uint8_t>((const uint8_t*)v.data(), n); };
    std::vector<PackedTensor> t{{".vq_codes", DType::U8, {out_, row_bytes_}, bytes(p_.codes, (size_t)(row_bytes_ * out_))}};
    if (p_.codebook_bits == 8) {
        t.push_back({".vq_codebooks", DType::I8, {n_codebooks(), k(), p_.dim}, bytes(p_.codebooks_i8, p_.codebooks_i8.size())});
        t.push_back({".vq_codebook_scales", DType::F16, {n_codebooks()}, bytes(p_.codebook_scales, p_.codebook_scales.size() * 2)});
    } else {
        t.push_back({".vq_codebooks", DType::F16, {n_codebooks(), k(), p_.dim}, bytes(p_.codebooks, p_.codebooks.size() * 2)});
    }
    if (has_scales()) t.push_back({".vq_scales", DType::F16, {out_}, bytes(p_.scales, p_.scales.size() * 2)});
    return t;
}

nlohmann::ordered_json VqLinear::packed_config() const {
    nlohmann::ordered_json j = {{"format", "vq"},         {"dim", p_.dim},
                                {"bits", p_.bits},        {"group_cols", p_.group_cols},
                                {"rows_per_codebook", p_.rows_per_codebook}, {"scales", has_scales()}};
    if (p_.codebook_bits != 16) j["codebook_bits"] = p_.codebook_bits; // absent: 16 (as written before 8-bit codebooks)
    return j;
}

size_t VqLinear::storage_bytes() const {
    const size_t cb = p_.codebook_bits == 8 ? p_.codebooks_i8.size() + 2 * p_.codebook_scales.size() : 2 * p_.codebooks.size();
    return (size_t)(row_bytes_ * out_) + cb + p_.scales.size() * sizeof(uint16_t);
}

void VqLinear::forward(const float* x, int n, float* y) const {
    cpu::row_decoded_forward(x, n, in_, out_, y, [this](int o, float* dst) { decode_row(o, dst); });
}

} // namespace moebius
