// config.json parsing: per-family conventions read from real fixture configs, and clear errors for bad configs.
#include <gtest/gtest.h>

#include <fstream>

#include "engine/core/error.h"
#include "engine/core/model_config.h"
#include "test_util.h"

using namespace moebius;

namespace {

// Expects `fn` to throw E with a message containing every fragment.
template <class E, class F> void expect_error(F&& fn, std::initializer_list<std::string> fragments) {
    try {
        fn();
        ADD_FAILURE() << "no exception";
    } catch (const E& e) {
        std::string msg = e.what();
        for (const auto& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << "message: " << msg;
    } catch (const std::exception& e) {
        ADD_FAILURE() << "wrong exception type: " << e.what();
    }
}

std::string base_qwen2 = R"({"model_type":"qwen2_moe","num_hidden_layers":2,"hidden_size":64,"num_attention_heads":4,
  "num_key_value_heads":2,"vocab_size":100,"intermediate_size":96,"moe_intermediate_size":32,
  "shared_expert_intermediate_size":64,"num_experts":8,"num_experts_per_tok":2,"decoder_sparse_step":1,
  "mlp_only_layers":[1]})";

} // namespace

TEST(ModelConfig, BundledQwen2Moe) {
    ModelSpec s = ModelSpec::load(test::bundled_model());
    EXPECT_EQ(s.family, Family::Qwen2Moe);
    EXPECT_EQ(s.n_layer, 4);
    EXPECT_EQ(s.n_embd, 256);
    EXPECT_EQ(s.head_dim, 64);
    EXPECT_EQ(s.n_head_kv, 2);
    EXPECT_EQ(s.n_expert, 16);
    EXPECT_EQ(s.n_expert_used, 4);
    EXPECT_EQ(s.n_ff_expert, 128);
    EXPECT_EQ(s.n_ff_shared, 512);
    EXPECT_FALSE(s.norm_topk_prob);
    EXPECT_TRUE(s.attn_qkv_bias);
    EXPECT_EQ(s.n_moe_layers(), 4);
    EXPECT_EQ(s.linear_name(2, LinearKind::ExpertUp, 7), "model.layers.2.mlp.experts.7.up_proj");
    EXPECT_EQ(s.linear_name(0, LinearKind::SharedExpertGate), "model.layers.0.mlp.shared_expert_gate");
}

TEST(ModelConfig, FamilyConventions) {
    ModelSpec q3 = ModelSpec::load(test::random_model("qwen3moe"));
    EXPECT_EQ(q3.head_dim, 32); // explicit, != hidden/heads
    EXPECT_TRUE(q3.norm_topk_prob);
    EXPECT_EQ(q3.traits().qk_norm, QkNorm::PerHead);
    EXPECT_EQ((std::vector<bool>{true, true, false}), q3.layer_is_moe); // mlp_only_layers [2]
    EXPECT_EQ(q3.linear_shape(LinearKind::Q), (std::pair<int, int>{128, 64}));

    ModelSpec mx = ModelSpec::load(test::random_model("mixtral"));
    EXPECT_TRUE(mx.norm_topk_prob); // always renormalised
    EXPECT_EQ(mx.linear_name(1, LinearKind::ExpertGate, 3), "model.layers.1.block_sparse_moe.experts.3.w1");
    EXPECT_EQ(mx.linear_name(1, LinearKind::ExpertDown, 3), "model.layers.1.block_sparse_moe.experts.3.w2");
    EXPECT_EQ(mx.n_head_kv, 1);

    ModelSpec ol = ModelSpec::load(test::random_model("olmoe"));
    EXPECT_EQ(ol.traits().qk_norm, QkNorm::Full);
    EXPECT_EQ(ol.n_ff_expert, 32); // OLMoE keeps the expert width in intermediate_size

    ModelSpec ds = ModelSpec::load(test::random_model("deepseekmoe"));
    EXPECT_EQ((std::vector<bool>{false, true, true}), ds.layer_is_moe); // first_k_dense_replace 1
    EXPECT_EQ(ds.n_ff_shared, 64);                                      // 2 shared experts x 32
    EXPECT_FALSE(ds.traits().shared_gated);
    EXPECT_EQ(ds.linear_name(1, LinearKind::SharedUp), "model.layers.1.mlp.shared_experts.up_proj");
}

TEST(ModelConfig, ParamCounts) {
    ModelSpec s = ModelSpec::load(test::bundled_model());
    // Independent count: embed+lm_head 2*2048*256, final norm 256; per layer: 2 norms, q/k/v/o + biases,
    // router 16x256, 16 experts x 3 x 128x256, shared 3 x 512x256, shared gate 256.
    int64_t per_layer = 2 * 256 + (256 * 256 + 2 * 128 * 256 + 256 * 256) + (256 + 2 * 128) + 16 * 256 +
                        16 * 3 * 128 * 256 + 3 * 512 * 256 + 256;
    EXPECT_EQ(s.total_params(), 2 * 2048 * 256 + 256 + 4 * per_layer);
    EXPECT_EQ(s.active_params(), s.total_params() - 4 * 12 * 3 * 128 * 256);
}

TEST(ModelConfig, RopeParametersSpelling) {
    auto s = ModelSpec::from_json_text(
        base_qwen2.substr(0, base_qwen2.size() - 1) + R"(,"rope_parameters":{"rope_theta":5000.0,"rope_type":"default"}})",
        "cfg.json");
    EXPECT_FLOAT_EQ(s.rope_theta, 5000.f);
    EXPECT_EQ((std::vector<bool>{true, false}), s.layer_is_moe);
}

TEST(ModelConfig, UnknownModelType) {
    expect_error<UnsupportedError>(
        [] { ModelSpec::from_json_text(R"({"model_type":"llama4_moe"})", "/x/config.json"); },
        {"/x/config.json", "llama4_moe", "qwen2_moe"});
}

TEST(ModelConfig, MalformedJson) {
    expect_error<FormatError>([] { ModelSpec::from_json_text("{\"model_type\": ", "/x/config.json"); },
                              {"/x/config.json", "invalid JSON"});
}

TEST(ModelConfig, MissingAndInvalidKeys) {
    std::string no_experts = base_qwen2;
    no_experts.replace(no_experts.find("\"num_experts\":8,"), 16, "");
    expect_error<FormatError>([&] { ModelSpec::from_json_text(no_experts, "c.json"); }, {"c.json", "num_experts"});
    std::string bad_type = base_qwen2;
    bad_type.replace(bad_type.find("\"hidden_size\":64"), 16, "\"hidden_size\":\"64\"");
    expect_error<FormatError>([&] { ModelSpec::from_json_text(bad_type, "c.json"); }, {"hidden_size", "integer"});
    std::string too_many = base_qwen2;
    too_many.replace(too_many.find("\"num_experts_per_tok\":2"), 23, "\"num_experts_per_tok\":9");
    expect_error<FormatError>([&] { ModelSpec::from_json_text(too_many, "c.json"); }, {"num_experts_per_tok"});
    std::string bad_gqa = base_qwen2;
    bad_gqa.replace(bad_gqa.find("\"num_key_value_heads\":2"), 23, "\"num_key_value_heads\":3");
    expect_error<FormatError>([&] { ModelSpec::from_json_text(bad_gqa, "c.json"); }, {"num_key_value_heads"});
}

TEST(ModelConfig, MissingDirectory) {
    expect_error<NotFoundError>([] { ModelSpec::load("/nonexistent/model"); }, {"/nonexistent/model"});
}
