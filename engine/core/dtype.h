#pragma once
// Element types of safetensors checkpoints and scalar conversions to f32.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace moebius {

enum class DType { BOOL, U8, I8, U16, I16, U32, I32, U64, I64, F16, BF16, F32, F64, F8_E4M3, F8_E5M2 };

inline constexpr DType all_dtypes[] = {DType::BOOL, DType::U8,  DType::I8,  DType::U16,     DType::I16,
                                       DType::U32,  DType::I32, DType::U64, DType::I64,     DType::F16,
                                       DType::BF16, DType::F32, DType::F64, DType::F8_E4M3, DType::F8_E5M2};

size_t               dtype_size(DType); // bytes per element
std::string_view     dtype_name(DType); // safetensors spelling: "BF16", "F8_E4M3", ...
std::optional<DType> dtype_from_name(std::string_view);
bool                 dtype_is_float(DType); // F16/BF16/F32/F64/F8_*: convertible by convert_to_f32

float    bf16_to_f32(uint16_t);
uint16_t f32_to_bf16(float); // round-to-nearest-even, NaN stays NaN (quiet)
float    f16_to_f32(uint16_t);
uint16_t f32_to_f16(float);       // round-to-nearest-even, subnormals, overflow -> inf, NaN stays NaN (quiet)
float    f8_e4m3_to_f32(uint8_t); // OCP E4M3FN: bias 7, no inf, S.1111.111 = NaN
float    f8_e5m2_to_f32(uint8_t); // OCP E5M2: bias 15, IEEE-like inf/NaN

// Converts n elements of a float-like dtype (F32/F16/BF16/F64/F8_*) to f32; throws UnsupportedError for others.
// src may be unaligned.
void convert_to_f32(DType, const void* src, float* dst, size_t n);

} // namespace moebius
