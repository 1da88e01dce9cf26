#include "engine/core/generation_config.h"

#include "engine/core/error.h"

#include <fstream>
#include <nlohmann/json.hpp>

namespace moebius {

GenerationConfig GenerationConfig::load(const std::filesystem::path& model_dir) {
    GenerationConfig g;
    auto             file = model_dir / "generation_config.json";
    std::ifstream    f(file, std::ios::binary);
    if (!f) return g;
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(f);
    } catch (const nlohmann::json::exception& e) {
        throw FormatError(file.string() + ": invalid JSON: " + e.what());
    }
    if (!j.is_object()) throw FormatError(file.string() + ": expected a JSON object");
    auto num = [&](const char* key, double dflt) {
        if (!j.contains(key) || j[key].is_null()) return dflt;
        if (!j[key].is_number()) throw FormatError(file.string() + ": key '" + key + "' must be a number");
        return j[key].get<double>();
    };
    bool do_sample = j.value("do_sample", false);
    g.sampling.temperature        = do_sample ? (float)num("temperature", 1.0) : 0.f;
    g.sampling.top_p              = (float)num("top_p", 1.0);
    g.sampling.top_k              = (int)num("top_k", 0);
    g.sampling.min_p              = (float)num("min_p", 0.0);
    g.sampling.repetition_penalty = (float)num("repetition_penalty", 1.0);
    g.max_new_tokens              = (int)num("max_new_tokens", 0);
    if (j.contains("eos_token_id")) {
        const auto& e = j["eos_token_id"];
        if (e.is_number_integer()) g.eos_token_ids.push_back(e.get<int32_t>());
        else if (e.is_array()) {
            for (const auto& v : e) {
                if (!v.is_number_integer()) throw FormatError(file.string() + ": eos_token_id must hold integers");
                g.eos_token_ids.push_back(v.get<int32_t>());
            }
        } else if (!e.is_null()) throw FormatError(file.string() + ": eos_token_id must be an integer or a list");
    }
    return g;
}

} // namespace moebius
