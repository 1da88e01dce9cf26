#include "engine/core/dtype.h"

#include "engine/core/error.h"

#include <array>
#include <bit>
#include <cstring>
#include <string>

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#define MOEBIUS_HAVE_F16C 1
#endif

namespace moebius {

size_t dtype_size(DType t) {
    switch (t) {
    case DType::BOOL:
    case DType::U8:
    case DType::I8:
    case DType::F8_E4M3:
    case DType::F8_E5M2:
        return 1;
    case DType::U16:
    case DType::I16:
    case DType::F16:
    case DType::BF16:
        return 2;
    case DType::U32:
    case DType::I32:
    case DType::F32:
        return 4;
    case DType::U64:
    case DType::I64:
    case DType::F64:
        return 8;
    }
    MOEBIUS_ASSERT(false);
    return 0;
}

std::string_view dtype_name(DType t) {
    switch (t) {
    case DType::BOOL:
        return "BOOL";
    case DType::U8:
        return "U8";
    case DType::I8:
        return "I8";
    case DType::U16:
        return "U16";
    case DType::I16:
        return "I16";
    case DType::U32:
        return "U32";
    case DType::I32:
        return "I32";
    case DType::U64:
        return "U64";
    case DType::I64:
        return "I64";
    case DType::F16:
        return "F16";
    case DType::BF16:
        return "BF16";
    case DType::F32:
        return "F32";
    case DType::F64:
        return "F64";
    case DType::F8_E4M3:
        return "F8_E4M3";
    case DType::F8_E5M2:
        return "F8_E5M2";
    }
    MOEBIUS_ASSERT(false);
    return {};
}

std::optional<DType> dtype_from_name(std::string_view s) {
    for (DType t : all_dtypes)
        if (dtype_name(t) == s)
            return t;
    return std::nullopt;
}

bool dtype_is_float(DType t) {
    switch (t) {
    case DType::F16:
    case DType::BF16:
    case DType::F32:
    case DType::F64:
    case DType::F8_E4M3:
    case DType::F8_E5M2:
        return true;
    default:
        return false;
    }
}

float bf16_to_f32(uint16_t h) {
    return std::bit_cast<float>(uint32_t(h) << 16);
}

uint16_t f32_to_bf16(float f) {
    uint32_t x = std::bit_cast<uint32_t>(f);
    // Truncating a NaN could clear every mantissa bit and yield inf; force the quiet bit instead.
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return uint16_t((x >> 16) | 0x0040u);
    x += 0x7fffu + ((x >> 16) & 1u); // round to nearest, ties to even; overflow carries into inf correctly
    return uint16_t(x >> 16);
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t exp  = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13); // inf, or NaN with its payload kept
    } else if (exp != 0) {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {
        // Subnormal: mant * 2^-24 is exact in f32.
        float v = float(mant) * 0x1p-24f;
        bits    = sign | std::bit_cast<uint32_t>(v);
    }
    return std::bit_cast<float>(bits);
}

uint16_t f32_to_f16(float f) {
    uint32_t x    = std::bit_cast<uint32_t>(f);
    uint16_t sign = uint16_t((x >> 16) & 0x8000u);
    uint32_t ax   = x & 0x7fffffffu;
    if (ax > 0x7f800000u)
        return uint16_t(sign | 0x7e00u | ((ax >> 13) & 0x3ffu)); // NaN: quiet, keep top payload
    if (ax >= 0x477ff000u)
        return uint16_t(sign | 0x7c00u); // >= 65520 rounds to inf
    if (ax >= 0x38800000u) {             // normal half
        uint32_t h   = (((ax >> 23) - 127 + 15) << 10) | ((ax >> 13) & 0x3ffu);
        uint32_t rem = ax & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
            ++h; // a carry into the exponent is still correct
        return uint16_t(sign | h);
    }
    if (ax <= 0x33000000u)
        return sign; // <= 2^-25 rounds (ties-to-even) to zero
    // Subnormal half: units of 2^-24.
    uint32_t m     = (ax & 0x7fffffu) | 0x800000u;
    int      e     = int(ax >> 23) - 127; // in [-25, -15]
    int      shift = -(e + 1);            // in [14, 24]
    uint32_t h     = m >> shift;
    uint32_t rem   = m & ((1u << shift) - 1);
    uint32_t half  = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u)))
        ++h; // may become 0x400 = smallest normal, which is right
    return uint16_t(sign | h);
}

float f8_e4m3_to_f32(uint8_t b) {
    uint32_t sign = uint32_t(b & 0x80u) << 24;
    uint32_t exp  = (b >> 3) & 0xfu;
    uint32_t mant = b & 0x7u;
    if (exp == 0xf && mant == 0x7)
        return std::bit_cast<float>(sign | 0x7fc00000u); // E4M3FN has NaN but no inf
    if (exp == 0) {
        float v = float(mant) * 0x1p-9f; // subnormal: mant/8 * 2^-6
        return std::bit_cast<float>(sign | std::bit_cast<uint32_t>(v));
    }
    return std::bit_cast<float>(sign | ((exp + 127 - 7) << 23) | (mant << 20));
}

// E5M2 is exactly the top byte of an IEEE half.
float f8_e5m2_to_f32(uint8_t b) {
    return f16_to_f32(uint16_t(b) << 8);
}

namespace {
template <class T> T load(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof v); // src may be unaligned (safetensors only aligns with well-behaved writers)
    return v;
}
std::array<float, 256> make_lut(float (*f)(uint8_t)) {
    std::array<float, 256> lut;
    for (int b = 0; b < 256; ++b)
        lut[b] = f(uint8_t(b));
    return lut;
}
} // namespace

void convert_to_f32(DType t, const void* src, float* dst, size_t n) {
    const uint8_t* s = static_cast<const uint8_t*>(src);
    if (n == 0 && dtype_is_float(t))
        return; // src/dst may be null for empty tensors; memcpy(null, ..., 0) is UB
    switch (t) {
    case DType::F32:
        std::memcpy(dst, s, n * 4);
        return;
    case DType::F64:
        for (size_t i = 0; i < n; ++i)
            dst[i] = float(load<double>(s + 8 * i));
        return;
    case DType::BF16:
        for (size_t i = 0; i < n; ++i)
            dst[i] = std::bit_cast<float>(uint32_t(load<uint16_t>(s + 2 * i)) << 16);
        return;
    case DType::F16: {
        size_t i = 0;
#ifdef MOEBIUS_HAVE_F16C
        for (; i + 8 <= n; i += 8) {
            __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 2 * i));
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
        }
#endif
        for (; i < n; ++i)
            dst[i] = f16_to_f32(load<uint16_t>(s + 2 * i));
        return;
    }
    case DType::F8_E4M3: {
        static const auto lut = make_lut(f8_e4m3_to_f32);
        for (size_t i = 0; i < n; ++i)
            dst[i] = lut[s[i]];
        return;
    }
    case DType::F8_E5M2: {
        static const auto lut = make_lut(f8_e5m2_to_f32);
        for (size_t i = 0; i < n; ++i)
            dst[i] = lut[s[i]];
        return;
    }
    default:
        break;
    }
    throw UnsupportedError("cannot convert dtype " + std::string(dtype_name(t)) + " to F32");
}

} // namespace moebius
