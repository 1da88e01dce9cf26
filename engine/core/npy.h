#pragma once
// NumPy .npy files (format 1.0, little-endian f32/f64/i64, C order): the exchange format for statistics arrays.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace moebius {

// Writes atomically. shape's product must equal the element count.
void write_npy(const std::filesystem::path& file, const std::vector<int64_t>& shape, const float* data);
void write_npy(const std::filesystem::path& file, const std::vector<int64_t>& shape, const double* data);
void write_npy(const std::filesystem::path& file, const std::vector<int64_t>& shape, const int64_t* data);

struct NpyArray {
    std::string          descr; // "<f4", "<f8", "<i8"
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
};
// Reads what write_npy writes; FormatError naming the file otherwise.
NpyArray read_npy(const std::filesystem::path& file);

} // namespace moebius
