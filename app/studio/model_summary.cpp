#include "app/studio/model_summary.h"

#include <cstdio>
#include <map>

#include "engine/core/error.h"
#include "engine/core/model_config.h"
#include "engine/core/weight_store.h"

namespace moebius::studio {

namespace fs = std::filesystem;

ModelSummary ModelSummary::read(const fs::path& dir) {
    if (!fs::is_directory(dir)) throw InputError(dir.string() + ": not a folder");
    if (!fs::exists(dir / "config.json"))
        throw InputError(dir.string() + ": not a checkpoint folder (no config.json)");
    ModelSpec   spec  = ModelSpec::load(dir);
    WeightStore store = WeightStore::open(dir);
    ModelSummary s;
    s.dir               = dir;
    s.family            = spec.traits().display_name;
    s.model_type        = spec.model_type;
    s.layers            = spec.n_layer;
    s.moe_layers        = spec.n_moe_layers();
    s.experts           = spec.n_expert;
    s.experts_per_token = spec.n_expert_used;
    s.expert_ffn        = spec.n_ff_expert;
    s.shared_ffn        = spec.n_ff_shared;
    s.shared_gated      = spec.n_ff_shared > 0 && spec.traits().shared_gated;
    s.total_params      = spec.total_params();
    s.active_params     = spec.active_params();
    s.bytes             = store.total_bytes();
    s.vocab             = spec.n_vocab;
    s.hidden            = spec.n_embd;
    std::map<std::string, int64_t> by_dtype;
    for (const auto& name : store.names()) by_dtype[std::string(dtype_name(store.info(name).dtype))] += store.info(name).numel();
    int64_t best = -1;
    for (auto& [d, n] : by_dtype)
        if (n > best) best = n, s.dtype = d;
    // The linears a quantization method replaces by default: attention and every FFN projection.
    auto sz = [&](LinearKind k) { auto [o, i] = spec.linear_shape(k); return (int64_t)o * i; };
    for (int il = 0; il < spec.n_layer; ++il) {
        s.quantizable_params += sz(LinearKind::Q) + sz(LinearKind::K) + sz(LinearKind::V) + sz(LinearKind::O);
        if (spec.layer_is_moe[il]) {
            s.quantizable_params += (int64_t)spec.n_expert * 3 * sz(LinearKind::ExpertGate);
            if (spec.n_ff_shared > 0) s.quantizable_params += 3 * sz(LinearKind::SharedGate);
        } else {
            s.quantizable_params += 3 * sz(LinearKind::DenseGate);
        }
    }
    if (!spec.quantization.is_null() && spec.quantization.is_object()) {
        s.quantized = true;
        s.method    = spec.quantization.value("method", std::string("?"));
        s.bits      = spec.quantization.value("bits", 0);
        s.group     = spec.quantization.value("group_size", 0);
    }
    return s;
}

int64_t ModelSummary::estimated_bytes(int bits, int group) const {
    const double per_param = total_params > 0 ? (double)bytes / (double)total_params : 2.0;
    const double side      = group > 0 ? 32.0 / group : 0.0; // f16 scale + f16 zero per group
    const double q         = (double)quantizable_params * (bits + side) / 8.0;
    return (int64_t)(q + per_param * (double)(total_params - quantizable_params));
}

std::string human_count(double v) {
    char buf[32];
    if (v >= 1e9) std::snprintf(buf, sizeof buf, "%.2f B", v / 1e9);
    else if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.2f M", v / 1e6);
    else if (v >= 1e3) std::snprintf(buf, sizeof buf, "%.1f K", v / 1e3);
    else std::snprintf(buf, sizeof buf, "%.0f", v);
    return buf;
}

std::string human_bytes(double v) {
    char buf[32];
    if (v >= 1e9) std::snprintf(buf, sizeof buf, "%.2f GB", v / 1e9);
    else if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.1f MB", v / 1e6);
    else if (v >= 1e3) std::snprintf(buf, sizeof buf, "%.1f kB", v / 1e3);
    else std::snprintf(buf, sizeof buf, "%.0f B", v);
    return buf;
}

} // namespace moebius::studio
