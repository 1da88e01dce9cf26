#pragma once
// A Hugging Face checkpoint's weights: model.safetensors, or shards + model.safetensors.index.json, or a single
// .safetensors file. All shards are mmapped at open; tensors are converted only when asked.
#include "engine/core/safetensors.h"

#include <cstddef>
#include <filesystem>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace moebius {

class WeightStore {
  public:
    // dir_or_file: a directory holding model.safetensors.index.json (preferred) or model.safetensors, or a path to a
    // .safetensors file. The index's weight_map is validated: every listed shard exists (NotFoundError naming the
    // index and the shard) and holds the tensors the map says (FormatError naming the index and the shard).
    static WeightStore open(const std::filesystem::path& dir_or_file);

    WeightStore(WeightStore&&) noexcept            = default;
    WeightStore& operator=(WeightStore&&) noexcept = default;
    ~WeightStore();

    bool                     has(const std::string& name) const;
    const TensorInfo&        info(const std::string& name) const; // NotFoundError("<dir>: missing tensor '<name>'")
    const TensorInfo*        find(const std::string& name) const; // nullptr if absent
    std::vector<std::string> names() const;                       // sorted
    size_t                   size() const { return index_.size(); }
    std::vector<float>       to_f32(const std::string& name) const;             // converted copy
    void                     to_f32(const std::string& name, float* dst) const; // into caller memory (numel floats)
    size_t                   total_bytes() const;                               // sum of tensor bytes
    // The checkpoint directory, or the file itself when open() was given a .safetensors path.
    const std::filesystem::path& root() const { return root_; }
    // The opened shard files, sorted by shard name (one entry for single-file checkpoints).
    const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

  private:
    WeightStore() = default;
    std::filesystem::path                              root_;
    std::vector<std::unique_ptr<SafetensorsFile>>      files_;
    std::unordered_map<std::string, const TensorInfo*> index_; // points into files_ (stable across moves)
};

} // namespace moebius
