#include "app/cli/cli_common.h"
#include "app/cli/commands.h"
#include "engine/core/error.h"
#include "engine/cpu/model.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <sstream>

namespace moebius::cli {

static std::vector<int32_t> parse_ids(const std::string& s) {
    std::vector<int32_t> ids;
    std::stringstream    ss(s);
    std::string          item;
    while (std::getline(ss, item, ',')) {
        char* end = nullptr;
        errno     = 0;
        long v    = std::strtol(item.c_str(), &end, 10);
        if (item.empty() || *end || errno || v < 0 || v > INT32_MAX)
            throw InputError("--ids: '" + item + "' is not a token id");
        ids.push_back((int32_t)v);
    }
    if (ids.empty()) throw InputError("--ids: no token ids given");
    return ids;
}

int cmd_forward(const Argv& argv) {
    Args args(argv, {"json"}, {"ids", "threads"});
    apply_threads(args);
    auto dir = model_arg(args);
    auto ids_arg = args.get("ids");
    if (!ids_arg) throw InputError("--ids is required (comma-separated token ids)");
    auto ids   = parse_ids(*ids_arg);
    auto model = Model::load(dir);
    const auto& spec = model->spec();
    for (int32_t id : ids)
        if (id >= spec.n_vocab)
            throw InputError("token id " + std::to_string(id) + " is outside the vocabulary of " +
                             std::to_string(spec.n_vocab));

    std::vector<std::vector<std::vector<int>>> topk;
    Hooks                                      hooks;
    hooks.on_router = [&](const RouterEvent& ev) {
        std::vector<std::vector<int>> layer(ev.n);
        for (int t = 0; t < ev.n; ++t) {
            layer[t].assign(ev.topk_ids + t * ev.k, ev.topk_ids + (t + 1) * ev.k);
            std::sort(layer[t].begin(), layer[t].end());
        }
        topk.push_back(std::move(layer));
    };
    const int          n     = (int)ids.size();
    KVCache            cache = model->new_cache(n);
    std::vector<float> logits((size_t)n * spec.n_vocab);
    model->forward(ids.data(), n, cache, logits.data(), true, &hooks);

    nlohmann::ordered_json j;
    j["input_ids"] = ids;
    auto rows      = nlohmann::ordered_json::array();
    for (int t = 0; t < n; ++t)
        rows.push_back(std::vector<float>(logits.begin() + (int64_t)t * spec.n_vocab,
                                          logits.begin() + (int64_t)(t + 1) * spec.n_vocab));
    j["logits"]       = std::move(rows);
    j["topk_experts"] = topk;
    if (!args.flag("json")) {
        // Human form: the argmax of each position and its experts, the full dump is for --json.
        for (int t = 0; t < n; ++t) {
            const float* row = logits.data() + (int64_t)t * spec.n_vocab;
            int          am  = (int)(std::max_element(row, row + spec.n_vocab) - row);
            printf("pos %d  id %d  argmax %d (%.3f)", t, ids[t], am, row[am]);
            for (size_t l = 0; l < topk.size(); ++l) {
                printf("  L%zu[", l);
                for (size_t k = 0; k < topk[l][t].size(); ++k) printf(k ? ",%d" : "%d", topk[l][t][k]);
                printf("]");
            }
            printf("\n");
        }
        return 0;
    }
    print_json(j);
    return 0;
}

} // namespace moebius::cli
