#pragma once
// Reading and writing single safetensors files (huggingface/safetensors "Format"): u64 LE header length, JSON header,
// one byte buffer. Files are mmapped read-only; tensors point into the mapping (zero copy).
#include "engine/core/dtype.h"

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace moebius {

struct TensorInfo {
    std::string           name;
    DType                 dtype = DType::F32;
    std::vector<int64_t>  shape;
    const uint8_t*        data   = nullptr; // points into the mmapped file; NOT necessarily aligned
    size_t                nbytes = 0;
    std::filesystem::path file; // the shard it lives in
    int64_t               numel() const;
};

// Largest header the reference implementation accepts.
inline constexpr uint64_t safetensors_max_header = 100ull << 20;

// One .safetensors file, mmapped read-only. The whole header is validated at open: 8-byte length not past EOF and
// <= 100 MiB, JSON object, every entry has a known dtype, integer shape >= 0, data_offsets [begin,end] with
// end-begin == numel*size, inside the data buffer, no overlaps, no duplicate names; "__metadata__" must be a
// string->string map. Any violation -> FormatError("<file>: <problem>, tensor '<name>'"). Missing file ->
// NotFoundError. Tensor data is not read at open.
class SafetensorsFile {
  public:
    static std::unique_ptr<SafetensorsFile> open(const std::filesystem::path& file);
    ~SafetensorsFile();
    SafetensorsFile(const SafetensorsFile&)            = delete;
    SafetensorsFile& operator=(const SafetensorsFile&) = delete;

    const std::map<std::string, TensorInfo>&  tensors() const { return tensors_; }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    const std::filesystem::path&              path() const { return path_; }
    // nullptr if absent.
    const TensorInfo* find(const std::string& name) const;
    size_t            file_size() const { return size_; }
    // Drops this process's resident pages of the mapping (they stay in the page cache; later reads fault them back).
    // Lazily loaded models call it after converting a layer, so the mapping does not grow into a second copy.
    void release_resident_pages() const;

  private:
    SafetensorsFile() = default;
    std::filesystem::path              path_;
    void*                              map_  = nullptr;
    size_t                             size_ = 0;
    std::map<std::string, TensorInfo>  tensors_;
    std::map<std::string, std::string> metadata_;
};

struct TensorToWrite {
    std::string              name;
    DType                    dtype = DType::F32;
    std::vector<int64_t>     shape;
    std::span<const uint8_t> data; // numel*dtype_size bytes, little-endian
};

// Builds the header bytes (8-byte length + JSON padded with spaces to 8-byte alignment) for the given tensors in
// name order; exposed for writers that stream data themselves. Validates names/sizes (throws InputError).
std::string safetensors_header(const std::vector<TensorToWrite>&         tensors,
                               const std::map<std::string, std::string>& metadata = {});

// Writes one safetensors file atomically (temp name in the same directory + fsync + rename). Header padded with spaces
// so the data starts 8-byte aligned; tensors sorted by name like the Python library does; metadata strings only.
void write_safetensors(const std::filesystem::path& file, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

} // namespace moebius
