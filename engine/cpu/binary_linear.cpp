#include "engine/cpu/binary_linear.h"

#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "engine/cpu/row_decoded_forward.h"

#include <algorithm>
#include <cmath>
#include <string>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace moebius {

namespace {

// The weight formula of binary_linear.h, in one place so that BinaryWeights::dequantize() and every decode path
// perform the same f32 operations in the same order (products with a ±1 sign are exact, so FMA contraction cannot
// change a result either).
inline float order1(float m, float a0, float s1) { return m + a0 * s1; }
inline float order2(float m, float a0, float s1, float a1, float s2) { return (m + a0 * s1) + a1 * s2; }

// Group g's first coefficient slot; salient groups use slot0(g) + 1 for a_1.
constexpr int slot0(int g) { return g < 2 ? g : 2 + 2 * (g - 2); }

// Sign bit → ±1 by lookup: the bits are random, so a branch on them would be mispredicted half the time.
constexpr float kPm[2] = {-1.0f, 1.0f};

inline int get_bit(const uint8_t* bits, int64_t k) { return (bits[k >> 3] >> (k & 7)) & 1; }
inline void set_bit(uint8_t* bits, int64_t k) { bits[k >> 3] |= (uint8_t)(1u << (k & 7)); }

// A byte's eight bits, LSB first: as ±1 floats (sign planes) and as all-ones / all-zeros lane masks (split bits).
// 16 KiB, stays in L1.
struct BitLuts {
    float   sign[256][8];
    int32_t mask[256][8];
};
constexpr BitLuts make_luts() {
    BitLuts l{};
    for (int v = 0; v < 256; ++v)
        for (int k = 0; k < 8; ++k) {
            l.sign[v][k] = (v >> k) & 1 ? 1.0f : -1.0f;
            l.mask[v][k] = (v >> k) & 1 ? -1 : 0;
        }
    return l;
}
constexpr BitLuts kLuts = make_luts();

#if defined(__AVX2__)
// Byte → the same bits at the even positions of a 16-bit word, so a sign byte and a split byte interleave into one
// word whose bits (2k, 2k+1) are element k's (sign, split).
struct Spread {
    uint16_t v[256];
};
constexpr Spread make_spread() {
    Spread s{};
    for (int b = 0; b < 256; ++b)
        for (int k = 0; k < 8; ++k) s.v[b] |= (uint16_t)(((b >> k) & 1) << (2 * k));
    return s;
}
constexpr Spread kSpread = make_spread();
#endif

// Non-salient decode of columns [j0, j1) of one row without column scales: every element is one of four values,
// tbl[2·split + sign_bit] (tbl[4..7] repeat tbl[0..3]).
void decode_block_table(const uint8_t* sp, const uint8_t* sg, int j0, int j1, const float* tbl, float* dst) {
    int j = j0;
    for (; j < j1 && (j & 7); ++j) dst[j] = tbl[2 * get_bit(sp, j) + get_bit(sg, j)];
#if defined(__AVX2__)
    // Lane k shifts the interleaved word right by 2k: its low bits are then (sign_k, split_k, garbage), and
    // vpermps reads only the low three bits of each index, which the repeated upper half of tbl absorbs.
    const __m256  t      = _mm256_loadu_ps(tbl);
    const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    for (; j + 8 <= j1; j += 8) {
        const int     w   = kSpread.v[sg[j >> 3]] | (kSpread.v[sp[j >> 3]] << 1);
        const __m256i idx = _mm256_srlv_epi32(_mm256_set1_epi32(w), shifts);
        _mm256_storeu_ps(dst + j, _mm256_permutevar8x32_ps(t, idx));
    }
#else
    for (; j + 8 <= j1; j += 8) {
        const unsigned s = sg[j >> 3], p = sp[j >> 3];
        for (int k = 0; k < 8; ++k) dst[j + k] = tbl[2 * ((p >> k) & 1) + ((s >> k) & 1)];
    }
#endif
    for (; j < j1; ++j) dst[j] = tbl[2 * get_bit(sp, j) + get_bit(sg, j)];
}

// Non-salient decode of columns [j0, j1) with column scales (ARB-RC): a_0 = r_g · c_g[j] per element.
// c0, c1: the column scales of slots 0 and 1, indexed by column.
void decode_block_cols(const uint8_t* sp, const uint8_t* sg, int j0, int j1, float m0, float m1, float r0, float r1,
                       const float* c0, const float* c1, float* dst) {
    auto one = [&](int j) {
        const bool hi = get_bit(sp, j);
        dst[j]        = order1(hi ? m1 : m0, hi ? r1 * c1[j] : r0 * c0[j], kPm[get_bit(sg, j)]);
    };
    int j = j0;
    for (; j < j1 && (j & 7); ++j) one(j);
#if defined(__AVX2__)
    const __m256 vm0 = _mm256_set1_ps(m0), vm1 = _mm256_set1_ps(m1), vr0 = _mm256_set1_ps(r0),
                 vr1 = _mm256_set1_ps(r1);
    for (; j + 8 <= j1; j += 8) {
        const __m256 s  = _mm256_loadu_ps(kLuts.sign[sg[j >> 3]]);
        const __m256 hi = _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i*)kLuts.mask[sp[j >> 3]]));
        const __m256 a  = _mm256_blendv_ps(_mm256_mul_ps(vr0, _mm256_loadu_ps(c0 + j)),
                                           _mm256_mul_ps(vr1, _mm256_loadu_ps(c1 + j)), hi);
        // order1: m + a·s (a·s is exact, so whether the compiler fuses this into an FMA does not change the result).
        _mm256_storeu_ps(dst + j, _mm256_add_ps(_mm256_blendv_ps(vm0, vm1, hi), _mm256_mul_ps(a, s)));
    }
#else
    for (; j + 8 <= j1; j += 8) {
        const float*   s  = kLuts.sign[sg[j >> 3]];
        const int32_t* hi = kLuts.mask[sp[j >> 3]];
        for (int k = 0; k < 8; ++k)
            dst[j + k] = order1(hi[k] ? m1 : m0, hi[k] ? r1 * c1[j + k] : r0 * c0[j + k], s[k]);
    }
#endif
    for (; j < j1; ++j) one(j);
}

bool f16_exact(float v) { return std::isfinite(v) && f16_to_f32(f32_to_f16(v)) == v; }

} // namespace

// ---- BinaryWeights ------------------------------------------------------------------------------------------------

void BinaryWeights::validate() const {
    auto fail = [](const std::string& m) { throw InputError("binary weights: " + m); };
    if (out <= 0 || in <= 0) fail("bad shape (" + std::to_string(out) + ", " + std::to_string(in) + ")");
    if (salient_groups < 0 || salient_groups > 2)
        fail("salient_groups must be 0, 1 or 2, got " + std::to_string(salient_groups));
    if (block <= 0 || in % block != 0)
        fail("block " + std::to_string(block) + " does not divide the input dimension " + std::to_string(in));
    const size_t oi = (size_t)out * in, nb = (size_t)n_blocks();
    auto size_is = [&](const char* name, size_t got, size_t want) {
        if (got != want)
            fail(std::string(name) + " has " + std::to_string(got) + " elements, expected " + std::to_string(want) +
                 " for shape (" + std::to_string(out) + ", " + std::to_string(in) + "), block " +
                 std::to_string(block) + ", salient_groups " + std::to_string(salient_groups));
    };
    size_is("salient", salient.size(), (size_t)in);
    size_is("split", split.size(), oi);
    size_is("sign1", sign1.size(), oi);
    size_is("sign2", sign2.size(), oi);
    size_is("row_scale", row_scale.size(), (size_t)out * nb * n_slots());
    size_is("row_mean", row_mean.size(), has_mean ? (size_t)out * nb * n_groups() : 0);
    size_is("col_scale", col_scale.size(), has_col_scale ? (size_t)in * n_slots() : 0);
    for (int j = 0; j < in; ++j) {
        if (salient[j] > 1) fail("salient[" + std::to_string(j) + "] is " + std::to_string(salient[j]) + ", not 0/1");
        if (salient[j] && salient_groups == 0) fail("column " + std::to_string(j) + " is salient but salient_groups is 0");
    }
    for (size_t i = 0; i < oi; ++i) {
        const int j = (int)(i % in);
        if (split[i] > 1) fail("split bit " + std::to_string(split[i]) + " at element " + std::to_string(i));
        if (sign1[i] != 1 && sign1[i] != -1)
            fail("sign1 " + std::to_string(sign1[i]) + " at element " + std::to_string(i) + " is not ±1");
        if (salient[j] && sign2[i] != 1 && sign2[i] != -1)
            fail("sign2 " + std::to_string(sign2[i]) + " at element " + std::to_string(i) +
                 " (a salient column) is not ±1");
    }
    auto f16 = [&](const char* name, const std::vector<float>& v) {
        for (size_t i = 0; i < v.size(); ++i)
            if (!f16_exact(v[i]))
                fail(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(v[i]) +
                     " is not a finite f16 value");
    };
    f16("row_scale", row_scale);
    f16("row_mean", row_mean);
    f16("col_scale", col_scale);
}

std::vector<float> BinaryWeights::dequantize() const {
    const int          nb = n_blocks(), ns = n_slots(), ng = n_groups();
    std::vector<float> w((size_t)out * in); // (out, in)
    for (int o = 0; o < out; ++o)
        for (int j = 0; j < in; ++j) {
            const size_t i   = (size_t)o * in + j;
            const int    b   = j / block;
            const bool   sal = salient[j] != 0;
            const int    g   = sal ? 2 + (salient_groups == 2 ? split[i] : 0) : split[i];
            const int    k0  = slot0(g);
            const float* rs  = row_scale.data() + ((size_t)o * nb + b) * ns;
            const float  m   = has_mean ? row_mean[((size_t)o * nb + b) * ng + g] : 0.0f;
            const float  a0  = rs[k0] * (has_col_scale ? col_scale[(size_t)j * ns + k0] : 1.0f);
            if (sal) {
                const float a1 = rs[k0 + 1] * (has_col_scale ? col_scale[(size_t)j * ns + k0 + 1] : 1.0f);
                w[i]           = order2(m, a0, (float)sign1[i], a1, (float)sign2[i]);
            } else {
                w[i] = order1(m, a0, (float)sign1[i]);
            }
        }
    return w;
}

// ---- BinaryLinear -------------------------------------------------------------------------------------------------

BinaryLinear::BinaryLinear(const BinaryWeights& w) : Linear(w.in, w.out) {
    w.validate();
    p_.block          = w.block;
    p_.salient_groups = w.salient_groups;
    p_.has_mean       = w.has_mean;
    p_.has_col_scale  = w.has_col_scale;
    const int64_t rb  = bit_bytes(in_);
    p_.salient.assign((size_t)rb, 0);
    std::vector<int> cols; // salient columns, increasing
    for (int j = 0; j < in_; ++j)
        if (w.salient[j]) {
            set_bit(p_.salient.data(), j);
            cols.push_back(j);
        }
    const int64_t rb2 = bit_bytes((int64_t)cols.size());
    p_.split.assign((size_t)(out_ * rb), 0);
    p_.signs.assign((size_t)(out_ * rb), 0);
    p_.signs2.assign((size_t)(out_ * rb2), 0);
    for (int o = 0; o < out_; ++o) {
        uint8_t *sp = p_.split.data() + o * rb, *s1 = p_.signs.data() + o * rb, *s2 = p_.signs2.data() + o * rb2;
        for (int j = 0; j < in_; ++j) {
            const size_t i = (size_t)o * in_ + j;
            // With one salient group the split bit of a salient column means nothing; store 0 so that equal layers
            // give equal bytes.
            if (w.split[i] && !(w.salient[j] && w.salient_groups == 1)) set_bit(sp, j);
            if (w.sign1[i] > 0) set_bit(s1, j);
        }
        for (size_t k = 0; k < cols.size(); ++k)
            if (w.sign2[(size_t)o * in_ + cols[k]] > 0) set_bit(s2, (int64_t)k);
    }
    auto to_f16 = [](const std::vector<float>& v) {
        std::vector<uint16_t> h(v.size());
        for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_f16(v[i]); // exact: validate() checked
        return h;
    };
    p_.row_scales = to_f16(w.row_scale);
    p_.row_means  = to_f16(w.row_mean);
    p_.col_scales = to_f16(w.col_scale);
    init();
}

BinaryLinear::BinaryLinear(int in_features, int out_features, BinaryPacked packed)
    : Linear(in_features, out_features), p_(std::move(packed)) {
    init();
}

int BinaryLinear::count_salient(std::span<const uint8_t> bitmap, int in) {
    int n = 0;
    for (int j = 0; j < in && (size_t)(j >> 3) < bitmap.size(); ++j) n += get_bit(bitmap.data(), j);
    return n;
}

void BinaryLinear::init() {
    auto fail = [](const std::string& m) { throw FormatError("binary linear: " + m); };
    if (in_ <= 0 || out_ <= 0) fail("bad shape (" + std::to_string(out_) + ", " + std::to_string(in_) + ")");
    if (p_.salient_groups < 0 || p_.salient_groups > 2)
        fail("salient_groups must be 0, 1 or 2, got " + std::to_string(p_.salient_groups));
    if (p_.block <= 0 || in_ % p_.block != 0)
        fail("block size " + std::to_string(p_.block) + " does not divide the input dimension " + std::to_string(in_));
    row_bytes_ = bit_bytes(in_);
    if ((int64_t)p_.salient.size() != row_bytes_)
        fail("salient bitmap has " + std::to_string(p_.salient.size()) + " bytes, expected " +
             std::to_string(row_bytes_) + " for " + std::to_string(in_) + " columns");
    sal_cols_.clear();
    for (int j = 0; j < in_; ++j)
        if (get_bit(p_.salient.data(), j)) sal_cols_.push_back(j);
    if (p_.salient_groups == 0 && !sal_cols_.empty())
        fail(std::to_string(sal_cols_.size()) + " salient columns in the bitmap, but salient_groups is 0");
    row_bytes2_ = bit_bytes((int64_t)sal_cols_.size());
    sal_blk_.resize(sal_cols_.size());
    sal_off_.assign((size_t)n_blocks() + 1, 0);
    for (size_t i = 0; i < sal_cols_.size(); ++i) {
        sal_blk_[i] = sal_cols_[i] / p_.block;
        ++sal_off_[sal_blk_[i] + 1];
    }
    for (int b = 0; b < n_blocks(); ++b) sal_off_[b + 1] += sal_off_[b];

    const size_t nb = (size_t)n_blocks(), ns = (size_t)n_slots(), ng = (size_t)n_groups();
    const size_t want_split = (size_t)(out_ * row_bytes_), want_s2 = (size_t)(out_ * row_bytes2_);
    const size_t want_rs = (size_t)out_ * nb * ns, want_rm = p_.has_mean ? (size_t)out_ * nb * ng : 0;
    const size_t want_cs = p_.has_col_scale ? (size_t)in_ * ns : 0;
    if (p_.split.size() != want_split || p_.signs.size() != want_split || p_.signs2.size() != want_s2 ||
        p_.row_scales.size() != want_rs || p_.row_means.size() != want_rm || p_.col_scales.size() != want_cs)
        fail("array sizes (split " + std::to_string(p_.split.size()) + ", signs " + std::to_string(p_.signs.size()) +
             ", signs2 " + std::to_string(p_.signs2.size()) + ", row_scales " + std::to_string(p_.row_scales.size()) +
             ", row_means " + std::to_string(p_.row_means.size()) + ", col_scales " +
             std::to_string(p_.col_scales.size()) + ") do not match shape (" + std::to_string(out_) + ", " +
             std::to_string(in_) + "), block " + std::to_string(p_.block) + ", salient_groups " +
             std::to_string(p_.salient_groups) + ", " + std::to_string(sal_cols_.size()) + " salient columns, mean " +
             (p_.has_mean ? "true" : "false") + ", col_scale " + (p_.has_col_scale ? "true" : "false") +
             " (expected " + std::to_string(want_split) + ", " + std::to_string(want_split) + ", " +
             std::to_string(want_s2) + ", " + std::to_string(want_rs) + ", " + std::to_string(want_rm) + ", " +
             std::to_string(want_cs) + ")");

    auto to_f32 = [](const std::vector<uint16_t>& h) {
        std::vector<float> v(h.size());
        for (size_t i = 0; i < h.size(); ++i) v[i] = f16_to_f32(h[i]);
        return v;
    };
    row_scales_ = to_f32(p_.row_scales);
    row_means_  = to_f32(p_.row_means);
    col_scales_t_.assign(want_cs, 0.0f);
    for (size_t j = 0; j < (size_t)in_ && p_.has_col_scale; ++j)
        for (size_t k = 0; k < ns; ++k) col_scales_t_[k * in_ + j] = f16_to_f32(p_.col_scales[j * ns + k]);
    // The salient columns' own slots (2 .. n_slots − 1) side by side, one column after another.
    sal_col_scales_.clear();
    for (size_t i = 0; i < sal_cols_.size() && p_.has_col_scale; ++i)
        for (size_t k = 2; k < ns; ++k) sal_col_scales_.push_back(f16_to_f32(p_.col_scales[sal_cols_[i] * ns + k]));
}

void BinaryLinear::decode_row(int o, float* dst) const {
    const int      nb = n_blocks(), ns = n_slots(), ng = n_groups(), B = p_.block;
    const bool     two = p_.salient_groups == 2;
    const uint8_t* sp  = p_.split.data() + o * row_bytes_;
    const uint8_t* sg  = p_.signs.data() + o * row_bytes_;
    const uint8_t* s2  = p_.signs2.data() + o * row_bytes2_;
    const float*   cs  = col_scales_t_.data(); // (n_slots, in)
    const float    no_means[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    // Blocks go in chunks: first every column of the chunk as if it were non-salient, then the chunk's salient
    // columns (a small fraction) are overwritten in one tight loop, reading per-block value tables filled on the way.
    constexpr int kChunk = 32;
    // Per block of the chunk: without column scales the salient values themselves,
    // [4·(g − 2) + 2·sign1_bit + sign2_bit]; with them the coefficients {m, r_0, r_1} of each salient group g at
    // [3·(g − 2)], since a_k then varies by column.
    float st[kChunk][8];
    for (int b0 = 0; b0 < nb; b0 += kChunk) {
        const int b1 = std::min(nb, b0 + kChunk);
        for (int b = b0; b < b1; ++b) {
            const float* rs = row_scales_.data() + ((int64_t)o * nb + b) * ns;
            const float* rm = p_.has_mean ? row_means_.data() + ((int64_t)o * nb + b) * ng : no_means;
            const int    j0 = b * B, j1 = j0 + B;
            if (p_.has_col_scale) {
                decode_block_cols(sp, sg, j0, j1, rm[0], rm[1], rs[0], rs[1], cs, cs + in_, dst);
                for (int g = 2; g < ng; ++g) {
                    st[b - b0][3 * (g - 2)]     = rm[g];
                    st[b - b0][3 * (g - 2) + 1] = rs[slot0(g)];
                    st[b - b0][3 * (g - 2) + 2] = rs[slot0(g) + 1];
                }
                continue;
            }
            const float v[4]   = {order1(rm[0], rs[0], -1.0f), order1(rm[0], rs[0], 1.0f), order1(rm[1], rs[1], -1.0f),
                                  order1(rm[1], rs[1], 1.0f)};
            const float tbl[8] = {v[0], v[1], v[2], v[3], v[0], v[1], v[2], v[3]};
            decode_block_table(sp, sg, j0, j1, tbl, dst);
            if (sal_off_[b] == sal_off_[b + 1]) continue;
            for (int g = 2; g < ng; ++g) {
                const int k0 = slot0(g);
                for (int t = 0; t < 4; ++t)
                    st[b - b0][4 * (g - 2) + t] =
                        order2(rm[g], rs[k0], t & 2 ? 1.0f : -1.0f, rs[k0 + 1], t & 1 ? 1.0f : -1.0f);
            }
        }
        const int i0 = sal_off_[b0], i1 = sal_off_[b1];
        if (!p_.has_col_scale) {
            for (int i = i0; i < i1; ++i) {
                const int j = sal_cols_[i];
                dst[j] = st[sal_blk_[i] - b0][(two ? 4 * get_bit(sp, j) : 0) + 2 * get_bit(sg, j) + get_bit(s2, i)];
            }
        } else {
            const int nss = 2 * p_.salient_groups;
            for (int i = i0; i < i1; ++i) {
                const int    j  = sal_cols_[i];
                const int    gi = two ? get_bit(sp, j) : 0; // g − 2
                const float* k  = st[sal_blk_[i] - b0] + 3 * gi;
                const float* c  = sal_col_scales_.data() + (int64_t)i * nss + 2 * gi; // slots slot0(g), slot0(g) + 1
                dst[j] = order2(k[0], k[1] * c[0], kPm[get_bit(sg, j)], k[2] * c[1], kPm[get_bit(s2, i)]);
            }
        }
    }
}

std::vector<float> BinaryLinear::dequantize() const {
    std::vector<float> w((size_t)out_ * in_); // (out, in)
    for (int o = 0; o < out_; ++o) decode_row(o, w.data() + (int64_t)o * in_);
    return w;
}

void BinaryLinear::forward(const float* x, int n, float* y) const {
    cpu::row_decoded_forward(x, n, in_, out_, y, [this](int o, float* dst) { decode_row(o, dst); });
}

BinaryWeights BinaryLinear::unpack() const {
    BinaryWeights w;
    w.out            = out_;
    w.in             = in_;
    w.block          = p_.block;
    w.salient_groups = p_.salient_groups;
    w.has_mean       = p_.has_mean;
    w.has_col_scale  = p_.has_col_scale;
    const size_t oi = (size_t)out_ * in_;
    w.salient.assign((size_t)in_, 0);
    for (int j : sal_cols_) w.salient[j] = 1;
    w.split.resize(oi);
    w.sign1.resize(oi);
    w.sign2.assign(oi, 1);
    for (int o = 0; o < out_; ++o) {
        const uint8_t* sp = p_.split.data() + o * row_bytes_;
        const uint8_t* sg = p_.signs.data() + o * row_bytes_;
        const uint8_t* s2 = p_.signs2.data() + o * row_bytes2_;
        for (int j = 0; j < in_; ++j) {
            const size_t i = (size_t)o * in_ + j;
            w.split[i]     = (uint8_t)(w.salient[j] && p_.salient_groups == 1 ? 0 : get_bit(sp, j));
            w.sign1[i]     = get_bit(sg, j) ? 1 : -1;
        }
        for (size_t k = 0; k < sal_cols_.size(); ++k)
            w.sign2[(size_t)o * in_ + sal_cols_[k]] = get_bit(s2, (int64_t)k) ? 1 : -1;
    }
    w.row_scale = row_scales_;
    w.row_mean  = row_means_;
    w.col_scale.resize(p_.col_scales.size());
    for (size_t i = 0; i < p_.col_scales.size(); ++i) w.col_scale[i] = f16_to_f32(p_.col_scales[i]);
    return w;
}

std::vector<PackedTensor> BinaryLinear::packed_tensors() const {
    auto bytes = [](const auto& v) {
        return std::span<const uint8_t>((const uint8_t*)v.data(), v.size() * sizeof(v[0]));
    };
    const int64_t             nb = n_blocks(), ns = n_slots(), ng = n_groups();
    std::vector<PackedTensor> t = {{".salient", DType::U8, {row_bytes_}, bytes(p_.salient)},
                                   {".split", DType::U8, {out_, row_bytes_}, bytes(p_.split)},
                                   {".signs", DType::U8, {out_, row_bytes_}, bytes(p_.signs)},
                                   {".signs2", DType::U8, {out_, row_bytes2_}, bytes(p_.signs2)},
                                   {".row_scales", DType::F16, {out_, nb, ns}, bytes(p_.row_scales)}};
    if (p_.has_mean) t.push_back({".row_means", DType::F16, {out_, nb, ng}, bytes(p_.row_means)});
    if (p_.has_col_scale) t.push_back({".col_scales", DType::F16, {in_, ns}, bytes(p_.col_scales)});
    return t;
}

nlohmann::ordered_json BinaryLinear::packed_config() const {
    return {{"format", "binary"},
            {"block_size", p_.block},
            {"salient_groups", p_.salient_groups},
            {"mean", p_.has_mean},
            {"col_scale", p_.has_col_scale}};
}

size_t BinaryLinear::storage_bytes() const {
    size_t n = 0;
    for (const auto& t : packed_tensors()) n += t.bytes.size();
    return n;
}

} // namespace moebius
