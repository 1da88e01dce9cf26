#pragma once
// Resume support for the layer-sequential quantizer: every finished layer's packed linears are saved to a work
// directory (layer-NNN.safetensors + state.json), so an interrupted run continues from the last finished layer. The
// work directory is not a checkpoint (no config.json): nothing in it loads as a model.
//
//   WORK/state.json          {"fingerprint": {...}, "layers": [{"layer": i, "modules": {name: packed_config},
//                             "report": [...], "undercalibrated": [...]}, ...]}   rewritten atomically per layer
//   WORK/layer-007.safetensors   the packed tensors of layer 7's quantized linears (docs/FORMAT.md names)
#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

#include "engine/cpu/model.h"

namespace moebius::quant {

struct ModuleReport;
struct QuantizeReport;

class LayerCheckpoints {
  public:
    // fingerprint: everything that determines the result (options, source model, calibration hash). With resume,
    // an existing state.json must carry the same fingerprint (InputError naming the first differing field);
    // without resume the directory is cleared.
    LayerCheckpoints(std::filesystem::path dir, nlohmann::ordered_json fingerprint, bool resume);

    // Number of leading layers already saved (0 on a fresh start).
    int saved_layers() const { return (int)layers_.size(); }
    // Replaces layer il's linears by the saved packed ones and appends their reports.
    void restore(Model& model, int il, QuantizeReport& report) const;
    // Saves layer il (every non-dense linear) with the report entries of that layer.
    void save(const Model& model, int il, const QuantizeReport& report);
    const std::filesystem::path& dir() const { return dir_; }

  private:
    void write_state() const;

    std::filesystem::path               dir_;
    nlohmann::ordered_json              fingerprint_;
    std::vector<nlohmann::ordered_json> layers_; // [saved layers] state entries
};

// 64-bit FNV-1a over the token ids of every sample (calibration provenance for fingerprints).
uint64_t calibration_hash(const std::vector<std::vector<int32_t>>& samples);

} // namespace moebius::quant
