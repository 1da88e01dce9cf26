#include "app/cli/cli_common.h"
#include "app/cli/commands.h"
#include "engine/core/model_config.h"
#include "engine/core/weight_store.h"

#include <iostream>
#include <map>

namespace moebius::cli {

int cmd_info(const Argv& argv) {
    Args        args(argv, {"json"}, {});
    auto        dir   = model_arg(args);
    ModelSpec   spec  = ModelSpec::load(dir);
    WeightStore store = WeightStore::open(dir);
    std::map<std::string, int64_t> dtype_params;
    for (const auto& name : store.names()) {
        const auto& ti = store.info(name);
        dtype_params[std::string(dtype_name(ti.dtype))] += ti.numel();
    }
    std::string dtype;
    int64_t     best = -1;
    for (auto& [d, n] : dtype_params)
        if (n > best) best = n, dtype = d;

    nlohmann::ordered_json j;
    j["path"]              = std::filesystem::absolute(dir).string();
    j["family"]            = spec.traits().display_name;
    j["model_type"]        = spec.model_type;
    j["layers"]            = spec.n_layer;
    j["moe_layers"]        = spec.n_moe_layers();
    j["hidden_size"]       = spec.n_embd;
    j["heads"]             = spec.n_head;
    j["kv_heads"]          = spec.n_head_kv;
    j["head_dim"]          = spec.head_dim;
    j["vocab_size"]        = spec.n_vocab;
    j["experts"]           = spec.n_expert;
    j["experts_per_token"] = spec.n_expert_used;
    j["expert_ffn"]        = spec.n_ff_expert;
    j["shared_expert_ffn"] = spec.n_ff_shared;
    j["shared_expert_gated"] = spec.n_ff_shared > 0 && spec.traits().shared_gated;
    j["norm_topk_prob"]    = spec.norm_topk_prob;
    j["total_params"]      = spec.total_params();
    j["active_params"]     = spec.active_params();
    j["dtype"]             = dtype;
    j["tensors"]           = store.size();
    j["bytes"]             = store.total_bytes();
    j["shards"]            = store.files().size();
    if (args.flag("json")) {
        print_json(j);
        return 0;
    }
    auto human = [](double v) {
        char buf[32];
        if (v >= 1e9) snprintf(buf, sizeof buf, "%.2f B", v / 1e9);
        else if (v >= 1e6) snprintf(buf, sizeof buf, "%.2f M", v / 1e6);
        else snprintf(buf, sizeof buf, "%.0f", v);
        return std::string(buf);
    };
    std::cout << j["path"].get<std::string>() << "\n"
              << "  family          " << spec.traits().display_name << " (" << spec.model_type << ")\n"
              << "  layers          " << spec.n_layer << " (" << spec.n_moe_layers() << " MoE)\n"
              << "  hidden / heads  " << spec.n_embd << " / " << spec.n_head << " q, " << spec.n_head_kv
              << " kv, head_dim " << spec.head_dim << "\n"
              << "  experts         " << spec.n_expert << ", top-" << spec.n_expert_used
              << (spec.norm_topk_prob ? " (renormalised)" : "") << ", width " << spec.n_ff_expert << "\n"
              << "  shared expert   "
              << (spec.n_ff_shared ? std::to_string(spec.n_ff_shared) + (spec.traits().shared_gated ? " (gated)" : "")
                                   : std::string("none"))
              << "\n"
              << "  parameters      " << human((double)spec.total_params()) << " total, "
              << human((double)spec.active_params()) << " active per token\n"
              << "  storage         " << dtype << ", " << human((double)store.total_bytes()) << "B in "
              << store.files().size() << " file(s), " << store.size() << " tensors\n";
    return 0;
}

} // namespace moebius::cli
