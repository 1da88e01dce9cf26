// WeightStore: sharded and single-file checkpoints, lazy f32 conversion, index validation.
#include "engine/core/error.h"
#include "engine/core/safetensors.h"
#include "engine/core/weight_store.h"
#include "test_util.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace fs = std::filesystem;
using namespace moebius;
using nlohmann::json;

namespace {

json read_json(const fs::path& p) {
    return json::parse(test::read_text(p));
}

// Decodes element i of a bf16 tensor by hand from its raw little-endian bytes.
float hand_bf16(const TensorInfo& t, size_t i) {
    uint32_t lo = t.data[2 * i], hi = t.data[2 * i + 1];
    return std::bit_cast<float>(((hi << 8) | lo) << 16);
}

template <class E> std::string expect_throw(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const E& e) {
        return e.what();
    } catch (const std::exception& e) {
        ADD_FAILURE() << "wrong exception type: " << e.what();
        return {};
    }
    ADD_FAILURE() << "no exception";
    return {};
}

bool contains(const std::string& s, const std::string& sub) {
    return s.find(sub) != std::string::npos;
}

// A small two-shard checkpoint built with our writer, for index corruption tests.
fs::path make_sharded(const std::string& name) {
    auto                  dir   = test::scratch_dir(name);
    std::vector<uint16_t> a     = {0x3f80, 0x4000, 0xc040}; // bf16 1, 2, -3
    std::vector<float>    b     = {0.5f, -0.25f};
    std::vector<int32_t>  c     = {7};
    auto                  bytes = [](const auto& v) {
        return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(v[0]));
    };
    write_safetensors(dir / "model-00001-of-00002.safetensors", {{"a", DType::BF16, {3}, bytes(a)}});
    write_safetensors(dir / "model-00002-of-00002.safetensors",
                      {{"b", DType::F32, {1, 2}, bytes(b)}, {"c", DType::I32, {1}, bytes(c)}});
    json idx = {{"metadata", {{"total_size", 18}}},
                {"weight_map",
                 {{"a", "model-00001-of-00002.safetensors"},
                  {"b", "model-00002-of-00002.safetensors"},
                  {"c", "model-00002-of-00002.safetensors"}}}};
    std::ofstream(dir / "model.safetensors.index.json") << idx.dump(2);
    return dir;
}

void edit_index(const fs::path& dir, const std::function<void(json&)>& edit) {
    json idx = read_json(dir / "model.safetensors.index.json");
    edit(idx);
    std::ofstream(dir / "model.safetensors.index.json", std::ios::trunc) << idx.dump(2);
}

} // namespace

TEST(WeightStore, BundledShardedModel) {
    auto        dir = test::bundled_model();
    auto        ws  = WeightStore::open(dir);
    json        cfg = read_json(dir / "config.json");
    json        idx = read_json(dir / "model.safetensors.index.json");
    const auto& wm  = idx["weight_map"];

    EXPECT_EQ(ws.root(), dir);
    EXPECT_EQ(ws.files().size(), 2u);
    ASSERT_EQ(ws.names().size(), wm.size());
    EXPECT_EQ(ws.size(), wm.size());
    auto names = ws.names();
    EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
    for (auto& [name, shard] : wm.items()) {
        ASSERT_TRUE(ws.has(name)) << name;
        EXPECT_EQ(ws.info(name).file, dir / shard.get<std::string>()) << name;
        EXPECT_EQ(ws.info(name).dtype, DType::BF16) << name;
    }
    EXPECT_EQ(ws.total_bytes(), idx["metadata"]["total_size"].get<size_t>());

    const int64_t V = cfg["vocab_size"], H = cfg["hidden_size"], E = cfg["num_experts"],
                  I = cfg["moe_intermediate_size"], S = cfg["shared_expert_intermediate_size"],
                  L = cfg["num_hidden_layers"], nh = cfg["num_attention_heads"], nkv = cfg["num_key_value_heads"];
    const int64_t hd = H / nh;
    using Shape      = std::vector<int64_t>;
    EXPECT_EQ(ws.info("model.embed_tokens.weight").shape, (Shape{2048, 256})); // literal, per the config
    EXPECT_EQ(ws.info("model.embed_tokens.weight").shape, (Shape{V, H}));
    EXPECT_EQ(ws.info("lm_head.weight").shape, (Shape{V, H}));
    EXPECT_EQ(ws.info("model.norm.weight").shape, (Shape{H}));
    for (int64_t l = 0; l < L; ++l) {
        std::string p = "model.layers." + std::to_string(l) + ".";
        EXPECT_EQ(ws.info(p + "self_attn.q_proj.weight").shape, (Shape{nh * hd, H}));
        EXPECT_EQ(ws.info(p + "self_attn.q_proj.bias").shape, (Shape{nh * hd}));
        EXPECT_EQ(ws.info(p + "self_attn.k_proj.weight").shape, (Shape{nkv * hd, H}));
        EXPECT_EQ(ws.info(p + "self_attn.o_proj.weight").shape, (Shape{H, nh * hd}));
        EXPECT_EQ(ws.info(p + "mlp.gate.weight").shape, (Shape{E, H}));
        EXPECT_EQ(ws.info(p + "mlp.shared_expert.gate_proj.weight").shape, (Shape{S, H}));
        EXPECT_EQ(ws.info(p + "mlp.shared_expert_gate.weight").shape, (Shape{1, H}));
        for (int64_t e = 0; e < E; ++e) {
            std::string ep = p + "mlp.experts." + std::to_string(e) + ".";
            EXPECT_EQ(ws.info(ep + "gate_proj.weight").shape, (Shape{I, H}));
            EXPECT_EQ(ws.info(ep + "up_proj.weight").shape, (Shape{I, H}));
            EXPECT_EQ(ws.info(ep + "down_proj.weight").shape, (Shape{H, I}));
        }
    }
}

TEST(WeightStore, BundledBf16Values) {
    auto ws  = WeightStore::open(test::bundled_model());
    auto emb = ws.to_f32("model.embed_tokens.weight");
    ASSERT_EQ(emb.size(), 2048u * 256u);
    // Expected values computed independently with python3:
    //   raw = data[base + 2*i : base + 2*i + 2]; struct.unpack('<f', b'\x00\x00' + raw)[0]
    // on model-00001-of-00002.safetensors (raw bytes shown as little-endian hex).
    EXPECT_EQ(emb[0], -0.02099609375f);         // acbc
    EXPECT_EQ(emb[1], -0.021484375f);           // b0bc
    EXPECT_EQ(emb[257], -0.01495361328125f);    // 75bc (row 1, col 1)
    EXPECT_EQ(emb[524287], 0.0233154296875f);   // bf3c (last element)
    auto norm = ws.to_f32("model.norm.weight"); // lives in the second shard
    EXPECT_EQ(norm[0], 1.2109375f);             // 9b3f
    EXPECT_EQ(norm[255], 1.171875f);            // 963f

    // And the whole tensor against a by-hand bf16 decode of the mapped bytes.
    const TensorInfo& t = ws.info("model.embed_tokens.weight");
    for (size_t i = 0; i < emb.size(); ++i)
        ASSERT_EQ(std::bit_cast<uint32_t>(emb[i]), std::bit_cast<uint32_t>(hand_bf16(t, i))) << i;
}

TEST(WeightStore, F16AndF32SingleFileModels) {
    // Expected values: python3 struct.unpack('<e', raw) for F16 and struct.unpack('<f', raw) for F32 on the raw bytes
    // of model.embed_tokens.weight (raw little-endian hex in the comments).
    auto mix = WeightStore::open(test::random_model("mixtral"));
    EXPECT_EQ(mix.info("model.embed_tokens.weight").dtype, DType::F16);
    EXPECT_EQ(mix.info("model.embed_tokens.weight").shape, (std::vector<int64_t>{512, 64}));
    auto me = mix.to_f32("model.embed_tokens.weight");
    EXPECT_EQ(me[0], 0.25537109375f);   // 1634
    EXPECT_EQ(me[1], 1.318359375f);     // 463d
    EXPECT_EQ(me[100], -0.7861328125f); // 4aba

    auto olmoe = WeightStore::open(test::random_model("olmoe"));
    EXPECT_EQ(olmoe.info("model.embed_tokens.weight").dtype, DType::F32);
    auto oe = olmoe.to_f32("model.embed_tokens.weight");
    EXPECT_EQ(oe[0], 0.49289217591285706f);   // 5d5cfc3e
    EXPECT_EQ(oe[1], -0.67792809009552f);     // b28c2dbf
    EXPECT_EQ(oe[100], 0.48694536089897156f); // e750f93e

    // The caller-memory overload gives the same result.
    std::vector<float> buf(512 * 64, NAN);
    mix.to_f32("model.embed_tokens.weight", buf.data());
    EXPECT_EQ(std::memcmp(buf.data(), me.data(), buf.size() * 4), 0);
}

TEST(WeightStore, AllRandomModelsOpenAndConvert) {
    for (std::string family : {"qwen3moe", "mixtral", "olmoe", "deepseekmoe"}) {
        auto dir      = test::random_model(family);
        auto ws       = WeightStore::open(dir);
        auto via_file = WeightStore::open(dir / "model.safetensors"); // a file path works too
        EXPECT_EQ(ws.names(), via_file.names()) << family;
        EXPECT_EQ(via_file.root(), dir / "model.safetensors");
        json   cfg   = read_json(dir / "config.json");
        size_t bytes = 0;
        for (const auto& n : ws.names()) {
            const TensorInfo& t = ws.info(n);
            bytes += t.nbytes;
            auto v = ws.to_f32(n);
            ASSERT_EQ(int64_t(v.size()), t.numel()) << family << " " << n;
            for (float x : v)
                ASSERT_TRUE(std::isfinite(x)) << family << " " << n;
        }
        EXPECT_EQ(ws.total_bytes(), bytes);
        EXPECT_EQ(ws.info("model.embed_tokens.weight").shape,
                  (std::vector<int64_t>{cfg["vocab_size"].get<int64_t>(), cfg["hidden_size"].get<int64_t>()}))
            << family;
    }
}

TEST(WeightStore, MoveKeepsTensorsValid) {
    auto              a   = WeightStore::open(test::random_model("qwen3moe"));
    const TensorInfo* emb = &a.info("model.embed_tokens.weight");
    auto              ref = a.to_f32("model.embed_tokens.weight");
    WeightStore       b   = std::move(a);
    EXPECT_EQ(&b.info("model.embed_tokens.weight"), emb); // infos live in the shard objects, not the store
    EXPECT_EQ(b.to_f32("model.embed_tokens.weight"), ref);
    std::vector<WeightStore> v;
    v.push_back(std::move(b));
    EXPECT_EQ(v[0].to_f32("model.embed_tokens.weight"), ref);
}

TEST(WeightStore, MissingTensor) {
    auto dir = test::bundled_model();
    auto ws  = WeightStore::open(dir);
    EXPECT_FALSE(ws.has("model.layers.99.mlp.gate.weight"));
    EXPECT_EQ(ws.find("model.layers.99.mlp.gate.weight"), nullptr);
    auto msg = expect_throw<NotFoundError>([&] { ws.info("model.layers.99.mlp.gate.weight"); });
    EXPECT_TRUE(contains(msg, dir.string())) << msg;
    EXPECT_TRUE(contains(msg, "missing tensor 'model.layers.99.mlp.gate.weight'")) << msg;
    EXPECT_THROW(ws.to_f32("nope"), NotFoundError);
}

TEST(WeightStore, SmallShardedAndNonFloat) {
    auto dir = make_sharded("ws-small");
    auto ws  = WeightStore::open(dir);
    EXPECT_EQ(ws.names(), (std::vector<std::string>{"a", "b", "c"}));
    EXPECT_EQ(ws.to_f32("a"), (std::vector<float>{1, 2, -3}));
    EXPECT_EQ(ws.to_f32("b"), (std::vector<float>{0.5f, -0.25f}));
    EXPECT_EQ(ws.total_bytes(), 18u);
    auto msg = expect_throw<UnsupportedError>([&] { ws.to_f32("c"); });
    EXPECT_TRUE(contains(msg, "'c'")) << msg;
    EXPECT_EQ(ws.info("c").data[0], 7);

    // Tensors in a shard but not in weight_map are not part of the checkpoint (the index is authoritative).
    edit_index(dir, [](json& j) { j["weight_map"].erase("c"); });
    EXPECT_FALSE(WeightStore::open(dir).has("c"));
}

TEST(WeightStoreBad, NoCheckpoint) {
    auto dir = test::scratch_dir("ws-empty");
    auto msg = expect_throw<NotFoundError>([&] { WeightStore::open(dir); });
    EXPECT_TRUE(contains(msg, dir.string())) << msg;
    msg = expect_throw<NotFoundError>([&] { WeightStore::open(dir / "missing"); });
    EXPECT_TRUE(contains(msg, (dir / "missing").string())) << msg;
}

TEST(WeightStoreBad, IndexPointsToMissingShard) {
    auto dir = make_sharded("ws-missing-shard");
    edit_index(dir, [](json& j) { j["weight_map"]["b"] = "model-00003-of-00002.safetensors"; });
    auto msg = expect_throw<NotFoundError>([&] { WeightStore::open(dir); });
    EXPECT_TRUE(contains(msg, (dir / "model.safetensors.index.json").string())) << msg;
    EXPECT_TRUE(contains(msg, "model-00003-of-00002.safetensors")) << msg;

    dir = make_sharded("ws-deleted-shard");
    fs::remove(dir / "model-00001-of-00002.safetensors");
    msg = expect_throw<NotFoundError>([&] { WeightStore::open(dir); });
    EXPECT_TRUE(contains(msg, "model.safetensors.index.json")) << msg;
    EXPECT_TRUE(contains(msg, "model-00001-of-00002.safetensors")) << msg;
}

TEST(WeightStoreBad, IndexNamesTensorShardLacks) {
    auto dir = make_sharded("ws-lacks");
    edit_index(dir, [](json& j) { j["weight_map"]["a"] = "model-00002-of-00002.safetensors"; });
    auto msg = expect_throw<FormatError>([&] { WeightStore::open(dir); });
    EXPECT_TRUE(contains(msg, (dir / "model.safetensors.index.json").string())) << msg;
    EXPECT_TRUE(contains(msg, "model-00002-of-00002.safetensors")) << msg;
    EXPECT_TRUE(contains(msg, "'a'")) << msg;
}

TEST(WeightStoreBad, MalformedIndex) {
    auto dir   = make_sharded("ws-bad-index");
    auto index = dir / "model.safetensors.index.json";
    std::ofstream(index, std::ios::trunc) << "{\"weight_map\": {";
    auto msg = expect_throw<FormatError>([&] { WeightStore::open(dir); });
    EXPECT_TRUE(contains(msg, index.string())) << msg;

    std::ofstream(index, std::ios::trunc) << R"({"metadata": {}})";
    msg = expect_throw<FormatError>([&] { WeightStore::open(dir); });
    EXPECT_TRUE(contains(msg, "weight_map")) << msg;

    std::ofstream(index, std::ios::trunc) << R"({"weight_map": {"a": 3}})";
    EXPECT_THROW(WeightStore::open(dir), FormatError);

    // Shard names must stay inside the checkpoint directory.
    std::ofstream(index, std::ios::trunc) << R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})";
    msg = expect_throw<FormatError>([&] { WeightStore::open(dir); });
    EXPECT_TRUE(contains(msg, "invalid shard name")) << msg;
}

TEST(WeightStoreBad, CorruptShardIsNamed) {
    auto dir   = make_sharded("ws-corrupt-shard");
    auto shard = dir / "model-00002-of-00002.safetensors";
    fs::resize_file(shard, fs::file_size(shard) - 2);
    auto msg = expect_throw<FormatError>([&] { WeightStore::open(dir); });
    EXPECT_TRUE(contains(msg, shard.string())) << msg;
}
