#include "quantizer/format/layer_checkpoint.h"

#include "engine/core/atomic_file.h"
#include "engine/core/error.h"
#include "engine/core/weight_store.h"
#include "engine/cpu/linear_loader.h"
#include "quantizer/pipeline.h"

#include <cstdio>
#include <fstream>

namespace moebius::quant {

namespace fs = std::filesystem;

uint64_t calibration_hash(const std::vector<std::vector<int32_t>>& samples) {
    uint64_t h = 1469598103934665603ull;
    auto     mix = [&](uint32_t v) {
        for (int b = 0; b < 4; ++b) {
            h ^= (v >> (8 * b)) & 0xff;
            h *= 1099511628211ull;
        }
    };
    for (const auto& s : samples) {
        mix((uint32_t)s.size());
        for (int32_t id : s) mix((uint32_t)id);
    }
    return h;
}

namespace {

std::string layer_file(int il) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "layer-%03d.safetensors", il);
    return buf;
}

} // namespace

LayerCheckpoints::LayerCheckpoints(fs::path dir, nlohmann::ordered_json fingerprint, bool resume)
    : dir_(std::move(dir)), fingerprint_(std::move(fingerprint)) {
    const fs::path state = dir_ / "state.json";
    if (resume && fs::exists(state)) {
        nlohmann::ordered_json j;
        try {
            std::ifstream f(state);
            j = nlohmann::ordered_json::parse(f);
        } catch (const std::exception& e) {
            throw FormatError(state.string() + ": not valid JSON (" + e.what() + "); delete " + dir_.string() +
                              " to start over");
        }
        if (!j.is_object() || !j.contains("fingerprint") || !j.contains("layers") || !j["layers"].is_array())
            throw FormatError(state.string() + ": not a Moebius resume state (fingerprint, layers)");
        for (const auto& [k, v] : fingerprint_.items())
            if (!j["fingerprint"].contains(k) || j["fingerprint"][k] != v)
                throw InputError("cannot resume from " + dir_.string() + ": it was made with " + k + " = " +
                                 (j["fingerprint"].contains(k) ? j["fingerprint"][k].dump() : "(none)") +
                                 ", this run has " + v.dump() + " (delete it or run without resuming)");
        int expect = 0;
        for (const auto& L : j["layers"]) {
            if (!L.is_object() || L.value("layer", -1) != expect || !L.contains("modules"))
                throw FormatError(state.string() + ": layer entries must be consecutive from 0");
            if (!fs::exists(dir_ / layer_file(expect)))
                throw NotFoundError(state.string() + ": " + layer_file(expect) + " is missing");
            layers_.push_back(L);
            ++expect;
        }
        return;
    }
    // A fresh start: whatever an earlier run left here is stale.
    if (fs::exists(dir_)) fs::remove_all(dir_);
    fs::create_directories(dir_);
    write_state();
}

void LayerCheckpoints::write_state() const {
    nlohmann::ordered_json j;
    j["fingerprint"] = fingerprint_;
    j["layers"]      = nlohmann::ordered_json::array();
    for (const auto& L : layers_) j["layers"].push_back(L);
    write_file_atomic(dir_ / "state.json", j.dump(1));
}

void LayerCheckpoints::save(const Model& model, int il, const QuantizeReport& report) {
    MOEBIUS_ASSERT(il == saved_layers());
    const auto&                spec = model.spec();
    std::vector<TensorToWrite> tensors;
    nlohmann::ordered_json     modules = nlohmann::ordered_json::object();
    model.layer(il).for_each_linear([&](LinearKind kind, int e, const std::unique_ptr<Linear>& slot) {
        auto p = slot->packed_tensors();
        if (p.empty()) return; // dense: read from the source checkpoint on restore
        const std::string name = spec.linear_name(il, kind, e);
        modules[name]          = slot->packed_config();
        for (const auto& t : p) tensors.push_back({name + t.suffix, t.dtype, t.shape, t.bytes});
    });
    write_safetensors(dir_ / layer_file(il), tensors);

    nlohmann::ordered_json L;
    L["layer"]   = il;
    L["modules"] = modules;
    auto rep     = nlohmann::ordered_json::array();
    for (const auto& m : report.modules)
        if (m.layer == il)
            rep.push_back({{"name", m.name}, {"expert", m.expert}, {"tokens", m.tokens}, {"rel_error", m.rel_error},
                           {"weights", m.weights}, {"bytes", m.bytes},
                           {"nominal_bits", m.nominal_bits}});
    L["report"] = rep;
    auto under  = nlohmann::ordered_json::array();
    for (const auto& u : report.undercalibrated)
        if (u.layer == il) under.push_back({{"expert", u.expert}, {"tokens", u.tokens}});
    L["undercalibrated"] = under;
    layers_.push_back(L);
    write_state(); // after the layer file: a state never names a layer whose tensors are not complete
}

void LayerCheckpoints::restore(Model& model, int il, QuantizeReport& report) const {
    MOEBIUS_ASSERT(il < saved_layers());
    const auto& L     = layers_[il];
    ModelSpec   spec  = model.spec();
    spec.quantization = {{"modules", L["modules"]}};
    WeightStore store = WeightStore::open(dir_ / layer_file(il));
    SharedParts shared;
    model.layer(il).for_each_linear([&](LinearKind kind, int e, std::unique_ptr<Linear>& slot) {
        const std::string name = spec.linear_name(il, kind, e);
        if (!L["modules"].contains(name)) return;
        slot = load_linear(store, spec, name, slot->out_features(), slot->in_features(), &shared);
    });
    try {
        for (const auto& m : L["report"])
            report.modules.push_back({m.at("name"), il, m.at("expert"), m.at("tokens"), m.at("rel_error"),
                                      m.at("weights"), m.at("bytes"), m.at("nominal_bits")});
        for (const auto& u : L["undercalibrated"]) report.undercalibrated.push_back({il, u.at("expert"), u.at("tokens")});
    } catch (const nlohmann::json::exception& e) {
        throw FormatError((dir_ / "state.json").string() + ": layer " + std::to_string(il) + " report: " + e.what());
    }
}

} // namespace moebius::quant
