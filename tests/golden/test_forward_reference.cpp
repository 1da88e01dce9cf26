// Forward pass against the independent PyTorch implementation (tests/data/reference, from ../shared/fixtures).
// Tolerances from DESIGN §9: logits |Δ| ≤ 2e-3·max|logit|, identical expert choices.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "engine/cpu/model.h"
#include "test_util.h"

using namespace moebius;
using json = nlohmann::json;

namespace {

struct Case {
    std::string           model_dir_name;
    std::filesystem::path dir;
};

void check_against_reference(const std::filesystem::path& dir, const std::string& ref_name) {
    json ref = json::parse(test::read_text(test::reference(ref_name)));
    auto model = Model::load(dir);
    const auto& spec = model->spec();
    EXPECT_EQ(ref["model_type"].get<std::string>(), spec.model_type);

    std::vector<int32_t> ids = ref["input_ids"].get<std::vector<int32_t>>();
    const int            n   = (int)ids.size();
    // Capture top-k per sparse layer through the router hook.
    std::vector<std::vector<std::vector<int>>> topk; // [moe layer][token] ascending ids
    std::vector<float>                         last_probs_layer0;
    Hooks                                      hooks;
    hooks.on_router = [&](const RouterEvent& ev) {
        std::vector<std::vector<int>> per_tok(ev.n);
        for (int t = 0; t < ev.n; ++t) {
            per_tok[t].assign(ev.topk_ids + t * ev.k, ev.topk_ids + (t + 1) * ev.k);
            std::sort(per_tok[t].begin(), per_tok[t].end());
        }
        topk.push_back(per_tok);
    };
    KVCache            cache = model->new_cache(n);
    std::vector<float> logits((size_t)n * spec.n_vocab);
    model->forward(ids.data(), n, cache, logits.data(), true, &hooks);

    const auto& ref_logits = ref["logits"];
    ASSERT_EQ((int)ref_logits.size(), n);
    float max_abs = 0, max_diff = 0;
    for (int t = 0; t < n; ++t) {
        ASSERT_EQ((int)ref_logits[t].size(), spec.n_vocab);
        for (int v = 0; v < spec.n_vocab; ++v) {
            float r  = ref_logits[t][v].get<float>();
            max_abs  = std::max(max_abs, std::fabs(r));
            max_diff = std::max(max_diff, std::fabs(r - logits[(size_t)t * spec.n_vocab + v]));
        }
    }
    EXPECT_LE(max_diff, 2e-3f * max_abs) << ref_name << ": max |Δlogit| " << max_diff << " vs max |logit| " << max_abs;

    const auto& ref_topk = ref["topk_experts"];
    ASSERT_EQ(ref_topk.size(), topk.size()) << "number of sparse layers";
    for (size_t l = 0; l < topk.size(); ++l)
        for (int t = 0; t < n; ++t)
            EXPECT_EQ(ref_topk[l][t].get<std::vector<int>>(), topk[l][t]) << "sparse layer " << l << " token " << t;
}

} // namespace

TEST(ForwardReference, Qwen2MoeBundled) { check_against_reference(test::bundled_model(), "tiny-qwen2moe.forward.json"); }
TEST(ForwardReference, Qwen3MoeRandom) {
    check_against_reference(test::random_model("qwen3moe"), "tiny-qwen3moe-random.forward.json");
}
TEST(ForwardReference, MixtralRandom) {
    check_against_reference(test::random_model("mixtral"), "tiny-mixtral-random.forward.json");
}
TEST(ForwardReference, OlmoeRandom) { check_against_reference(test::random_model("olmoe"), "tiny-olmoe-random.forward.json"); }
TEST(ForwardReference, DeepseekRandom) {
    check_against_reference(test::random_model("deepseekmoe"), "tiny-deepseekmoe-random.forward.json");
}
