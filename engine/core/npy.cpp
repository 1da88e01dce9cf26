#include "engine/core/npy.h"

#include "engine/core/atomic_file.h"
#include "engine/core/error.h"

#include <cstring>
#include <fstream>
#include <regex>

namespace moebius {

static void write_npy_raw(const std::filesystem::path& file, const std::vector<int64_t>& shape, const char* descr,
                          const void* data, size_t elem) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::string shp = "(";
    for (size_t i = 0; i < shape.size(); ++i) shp += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
    shp += ")";
    std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + shp + ", }";
    // Pad so that magic(6) + version(2) + len(2) + header + '\n' is a multiple of 64.
    size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header += '\n';
    std::string out("\x93NUMPY\x01\x00", 8);
    uint16_t    hl = (uint16_t)header.size();
    out.append(reinterpret_cast<const char*>(&hl), 2);
    out += header;
    out.append(static_cast<const char*>(data), (size_t)n * elem);
    write_file_atomic(file, out);
}

void write_npy(const std::filesystem::path& f, const std::vector<int64_t>& s, const float* d) { write_npy_raw(f, s, "<f4", d, 4); }
void write_npy(const std::filesystem::path& f, const std::vector<int64_t>& s, const double* d) { write_npy_raw(f, s, "<f8", d, 8); }
void write_npy(const std::filesystem::path& f, const std::vector<int64_t>& s, const int64_t* d) { write_npy_raw(f, s, "<i8", d, 8); }

NpyArray read_npy(const std::filesystem::path& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw NotFoundError(file.string() + ": cannot open");
    auto bad = [&](const std::string& m) { throw FormatError(file.string() + ": not a supported .npy file: " + m); };
    char magic[10];
    if (!in.read(magic, 10) || std::memcmp(magic, "\x93NUMPY\x01\x00", 8) != 0) bad("bad magic");
    uint16_t hl;
    std::memcpy(&hl, magic + 8, 2);
    std::string header(hl, '\0');
    if (!in.read(header.data(), hl)) bad("truncated header");
    std::smatch m;
    if (!std::regex_search(header, m, std::regex("'descr': '([<|][fi][48])'"))) bad("unsupported dtype");
    NpyArray a;
    a.descr = m[1];
    if (header.find("'fortran_order': False") == std::string::npos) bad("Fortran order");
    if (!std::regex_search(header, m, std::regex("'shape': \\(([0-9, ]*)\\)"))) bad("no shape");
    std::string s = m[1];
    int64_t     n = 1;
    static const std::regex num("[0-9]+");
    for (std::sregex_iterator it(s.begin(), s.end(), num), end; it != end; ++it) {
        a.shape.push_back(std::stoll(it->str()));
        n *= a.shape.back();
    }
    a.bytes.resize((size_t)n * (a.descr.back() - '0'));
    if (!in.read(reinterpret_cast<char*>(a.bytes.data()), (std::streamsize)a.bytes.size())) bad("truncated data");
    return a;
}

} // namespace moebius
