// End-to-end tests of the `moebius` command: real binary, real bundled model, JSON outputs and error behaviour.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include "e2e/cli_runner.h"
#include "test_util.h"

using json = nlohmann::json;

namespace {

using moebius::test::CliRun;
using moebius::test::run_cli;

std::string q(const std::string& s) { return "'" + s + "'"; }

// Error runs: non-zero exit (not a crash), exactly one line on stderr, nothing on stdout.
void expect_clean_error(const CliRun& r, const std::string& fragment) {
    EXPECT_NE(r.code, 0);
    EXPECT_LT(r.code, 128) << "crashed: " << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
    ASSERT_FALSE(r.err.empty());
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(fragment), std::string::npos) << r.err;
}

} // namespace

TEST(Cli, InfoJson) {
    CliRun r = run_cli("info --json");
    ASSERT_EQ(r.code, 0) << r.err;
    json j = json::parse(r.out);
    EXPECT_EQ(j["model_type"], "qwen2_moe");
    EXPECT_EQ(j["layers"], 4);
    EXPECT_EQ(j["experts"], 16);
    EXPECT_EQ(j["experts_per_token"], 4);
    EXPECT_EQ(j["shared_expert_ffn"], 512);
    EXPECT_EQ(j["dtype"], "BF16");
    EXPECT_EQ(j["shards"], 2);
    EXPECT_GT(j["total_params"].get<int64_t>(), j["active_params"].get<int64_t>());
}

TEST(Cli, ForwardJsonMatchesReference) {
    json ref = json::parse(moebius::test::read_text(moebius::test::reference("tiny-olmoe-random.forward.json")));
    std::string ids;
    for (auto& v : ref["input_ids"]) ids += (ids.empty() ? "" : ",") + std::to_string(v.get<int>());
    CliRun r = run_cli("forward " + q(moebius::test::random_model("olmoe").string()) + " --ids " + ids + " --json");
    ASSERT_EQ(r.code, 0) << r.err;
    json j = json::parse(r.out);
    EXPECT_EQ(j["topk_experts"], ref["topk_experts"]);
    float mx = 0, d = 0;
    for (size_t t = 0; t < ref["logits"].size(); ++t)
        for (size_t v = 0; v < ref["logits"][t].size(); ++v) {
            mx = std::max(mx, std::fabs(ref["logits"][t][v].get<float>()));
            d  = std::max(d, std::fabs(ref["logits"][t][v].get<float>() - j["logits"][t][v].get<float>()));
        }
    EXPECT_LE(d, 2e-3f * mx);
}

TEST(Cli, TokenizeJson) {
    CliRun r = run_cli("tokenize --text 'In the beginning God created the heaven and the earth.' --json");
    ASSERT_EQ(r.code, 0) << r.err;
    json j = json::parse(r.out);
    ASSERT_TRUE(j["ids"].is_array());
    EXPECT_GT(j["ids"].size(), 5u);
    EXPECT_EQ(j.size(), 1u); // exactly {"ids": [...]}
}

TEST(Cli, GenerateGreedyIsDeterministicAndReportsSpeed) {
    CliRun a = run_cli("generate --prompt 'And God said' --max-tokens 12 --temperature 0 --json");
    CliRun b = run_cli("generate --prompt 'And God said' --max-tokens 12 --temperature 0 --json");
    ASSERT_EQ(a.code, 0) << a.err;
    json ja = json::parse(a.out), jb = json::parse(b.out);
    EXPECT_EQ(ja["tokens"], jb["tokens"]);
    EXPECT_EQ(ja["text"], jb["text"]);
    EXPECT_GT(ja["tokens_per_s"].get<double>(), 0);
    EXPECT_GT(ja["time_to_first_token_s"].get<double>(), 0);
    EXPECT_LE(ja["generated_tokens"].get<int>(), 12);
}

TEST(Cli, GenerateChatStopsOnEos) {
    CliRun r = run_cli("generate --chat --prompt 'In the beginning God created' --max-tokens 60 --temperature 0 --json");
    ASSERT_EQ(r.code, 0) << r.err;
    json j = json::parse(r.out);
    EXPECT_FALSE(j["text"].get<std::string>().empty());
    // The model was trained on ChatML completions: it should end its turn with <|im_end|> before 60 tokens.
    EXPECT_EQ(j["stop_reason"], "eos") << j.dump();
}

TEST(Cli, PplOnTestTextMatchesReference) {
    json ref = json::parse(moebius::test::read_text(moebius::test::reference("tiny-qwen2moe.test.json")));
    CliRun  r   = run_cli("ppl --text " + q((moebius::test::resources_dir() / "corpus" / "test.txt").string()) +
                       " --seqlen 256 --json");
    ASSERT_EQ(r.code, 0) << r.err;
    json j = json::parse(r.out);
    EXPECT_EQ(j["windows"], ref["windows"]);
    EXPECT_EQ(j["seqlen"], 256);
    EXPECT_NEAR(j["ppl"].get<double>(), ref["ppl"].get<double>(), 1e-3 * ref["ppl"].get<double>());
}

TEST(Cli, ErrorsAreOneLineAndNonZero) {
    expect_clean_error(run_cli("info /nonexistent/model"), "/nonexistent/model");
    expect_clean_error(run_cli("frobnicate"), "unknown command");
    expect_clean_error(run_cli("info --bogus"), "--bogus");
    expect_clean_error(run_cli("forward --ids 1,x,3"), "--ids");
    expect_clean_error(run_cli("forward --ids 1,999999"), "999999");
    expect_clean_error(run_cli("generate --prompt \"$(printf '\\377\\376 bad')\" --max-tokens 2"), "UTF-8");
    expect_clean_error(run_cli("ppl --text /nonexistent.txt"), "/nonexistent.txt");
    expect_clean_error(run_cli("generate --prompt hi --temperature -1"), "--temperature");
}

TEST(Cli, BadCheckpointsFailCleanly) {
    namespace fs = std::filesystem;
    auto src     = moebius::test::random_model("qwen3moe");
    // Unknown model_type.
    auto d1 = moebius::test::scratch_dir("cli-badtype");
    fs::copy_file(src / "model.safetensors", d1 / "model.safetensors");
    std::string cfg = moebius::test::read_text(src / "config.json");
    cfg.replace(cfg.find("qwen3_moe"), 9, "qwen9_moe");
    std::ofstream(d1 / "config.json") << cfg;
    expect_clean_error(run_cli("info " + q(d1.string())), "qwen9_moe");
    // Truncated shard.
    auto d2 = moebius::test::scratch_dir("cli-trunc");
    fs::copy_file(src / "config.json", d2 / "config.json");
    fs::copy_file(src / "model.safetensors", d2 / "model.safetensors");
    fs::resize_file(d2 / "model.safetensors", fs::file_size(src / "model.safetensors") / 2);
    expect_clean_error(run_cli("forward " + q(d2.string()) + " --ids 1,2"), "model.safetensors");
    // Chat template with a syntax error.
    auto d3 = moebius::test::scratch_dir("cli-badtpl");
    for (auto& e : fs::directory_iterator(moebius::test::bundled_model())) fs::copy_file(e.path(), d3 / e.path().filename());
    auto tc = json::parse(moebius::test::read_text(d3 / "tokenizer_config.json"));
    tc["chat_template"] = "{% for m in messages %}{{ m['content'] }";
    fs::remove(d3 / "tokenizer_config.json");
    std::ofstream(d3 / "tokenizer_config.json") << tc.dump();
    expect_clean_error(run_cli("generate " + q(d3.string()) + " --chat --prompt hi --max-tokens 2"), "tokenizer_config.json");
    // Malformed tokenizer.json.
    auto d4 = moebius::test::scratch_dir("cli-badtok");
    for (auto& e : fs::directory_iterator(moebius::test::bundled_model())) fs::copy_file(e.path(), d4 / e.path().filename());
    fs::resize_file(d4 / "tokenizer.json", 1000);
    expect_clean_error(run_cli("tokenize " + q(d4.string()) + " --text hi"), "tokenizer.json");
}

TEST(Cli, CalibrateWritesStatisticsAndRefusesExistingOutput) {
    auto out = moebius::test::scratch_dir("cli-calib") / "stats";
    auto text = (moebius::test::resources_dir() / "corpus" / "train.txt").string();
    CliRun r = run_cli("calibrate --text " + q(text) + " --samples 4 --seqlen 32 --out " + q(out.string()) + " --json");
    ASSERT_EQ(r.code, 0) << r.err;
    json j = json::parse(r.out);
    EXPECT_EQ(j["tokens"], 128);
    EXPECT_EQ(j["per_layer"].size(), 4u);
    auto util = json::parse(moebius::test::read_text(out / "utilisation.json"));
    int64_t assigned = 0;
    for (auto& c : util["layers"][0]["counts"]) assigned += c.get<int64_t>();
    EXPECT_EQ(assigned, 128 * 4); // every token to top-4 experts
    EXPECT_TRUE(std::filesystem::exists(out / "calibration.jsonl"));
    EXPECT_TRUE(std::filesystem::exists(out / "layer2.expert_in.hdiag.npy"));
    // Existing output without --force: refused, old output untouched.
    expect_clean_error(run_cli("calibrate --text " + q(text) + " --samples 4 --seqlen 32 --out " + q(out.string())),
                       out.string());
    // Samples x seqlen beyond the text: clear error, no output directory.
    auto tiny = moebius::test::scratch_dir("cli-calib-tiny");
    std::ofstream(tiny / "short.txt") << "In the beginning God created the heaven and the earth.";
    expect_clean_error(run_cli("calibrate --text " + q((tiny / "short.txt").string()) + " --samples 2 --seqlen 64 --out " +
                               q((tiny / "o").string())),
                       "short.txt");
    EXPECT_FALSE(std::filesystem::exists(tiny / "o"));
}

TEST(Cli, RoutingDiffAgainstItselfIsZero) {
    auto m = moebius::test::bundled_model().string();
    CliRun r = run_cli("routing-diff " + q(m) + " " + q(m) + " --seqlen 64 --max-windows 3 --json");
    ASSERT_EQ(r.code, 0) << r.err;
    json j = json::parse(r.out);
    EXPECT_EQ(j["shift_rate"].get<double>(), 0.0);
    EXPECT_EQ(j["top1_flip_rate"].get<double>(), 0.0);
    EXPECT_EQ(j["router_kl"].get<double>(), 0.0);
    EXPECT_EQ(j["per_layer"].size(), 4u);
    expect_clean_error(run_cli("routing-diff " + q(m) + " " + q(moebius::test::random_model("mixtral").string()) +
                               " --seqlen 32 --max-windows 1"),
                       "differ");
}

TEST(Cli, ImportanceMapGlas) {
    auto out  = moebius::test::scratch_dir("cli-imp") / "map.npy";
    auto text = (moebius::test::resources_dir() / "corpus" / "train.txt").string();
    CliRun r  = run_cli("importance --layer 1 --module expert.down_proj --expert 3 --metric glas --text " + q(text) +
                        " --samples 4 --seqlen 64 --out " + q(out.string()) + " --max-size 32,32 --json");
    ASSERT_EQ(r.code, 0) << r.err;
    json j = json::parse(r.out);
    EXPECT_EQ(j["shape"], json::array({256, 128}));
    EXPECT_EQ(j["image_shape"], json::array({32, 32}));
    EXPECT_GT(j["tokens"].get<int>(), 0);
    EXPECT_EQ(j["col_sum"].size(), 128u);
    EXPECT_TRUE(std::filesystem::exists(out));
    expect_clean_error(run_cli("importance --module nonsense --text " + q(text)), "nonsense");
}
