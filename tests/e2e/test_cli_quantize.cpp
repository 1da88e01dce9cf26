// End-to-end tests of `moebius quantize` and `moebius export`: sharded output that loads, honest size accounting,
// packed and dequantized checkpoints agreeing, and refusals that leave nothing behind.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "e2e/cli_runner.h"
#include "test_util.h"

using json   = nlohmann::json;
namespace fs = std::filesystem;
using moebius::test::run_cli;

namespace {

int64_t dir_tensor_bytes(const fs::path& dir) {
    int64_t b = 0;
    for (const auto& e : fs::directory_iterator(dir))
        if (e.path().extension() == ".safetensors") b += (int64_t)fs::file_size(e.path());
    return b;
}

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

} // namespace

TEST(CliQuantize, ShardedRtnCheckpointLoadsAndEqualsItsExport) {
    auto dir = moebius::test::scratch_dir("cli-quant");
    auto out = dir / "rtn4";
    auto r   = run_cli("quantize --method rtn --bits 4 --max-shard-size 3 --json --threads 1 --out " + q(out));
    ASSERT_EQ(r.code, 0) << r.err;
    json j = json::parse(r.out);
    EXPECT_GT(j["shards"].get<int>(), 1);
    EXPECT_TRUE(fs::exists(out / "model.safetensors.index.json"));
    EXPECT_FALSE(fs::exists(out / "model.safetensors"));
    EXPECT_FALSE(fs::exists(dir / "rtn4.partial")); // the resume state goes once the checkpoint is complete
    EXPECT_NEAR(j["bits_per_weight"].get<double>(), 4.1875, 1e-9);
    EXPECT_EQ(j["nominal_bits"].get<double>(), 4.0);
    // The bytes reported are the tensors on disk (headers aside).
    const int64_t disk = dir_tensor_bytes(out);
    EXPECT_GE(disk, j["bytes"].get<int64_t>());
    EXPECT_LT(disk - j["bytes"].get<int64_t>(), 64 * 1024 * j["shards"].get<int>());
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"})
        EXPECT_TRUE(fs::exists(out / f)) << f;

    auto exp = dir / "rtn4-bf16";
    r        = run_cli("export " + q(out) + " --dequantized " + q(exp) + " --dtype f32 --json");
    ASSERT_EQ(r.code, 0) << r.err;
    std::ifstream cf(exp / "config.json");
    EXPECT_FALSE(json::parse(cf).contains("quantization_config"));

    auto p1 = run_cli(q(out).insert(0, "ppl ") + " --max-windows 4 --json --threads 1");
    auto p2 = run_cli(q(exp).insert(0, "ppl ") + " --max-windows 4 --json --threads 1");
    ASSERT_EQ(p1.code, 0) << p1.err;
    ASSERT_EQ(p2.code, 0) << p2.err;
    const double a = json::parse(p1.out)["ppl"], b = json::parse(p2.out)["ppl"];
    EXPECT_NEAR(a, b, 1e-4 * b); // packed kernels vs the dequantized f32 weights
}

TEST(CliQuantize, RefusalsLeaveNothingBehind) {
    auto dir = moebius::test::scratch_dir("cli-quant-bad");
    auto r   = run_cli("quantize --method awq --out " + q(dir / "a"));
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.err.find("unknown method 'awq'"), std::string::npos) << r.err;
    r = run_cli("quantize --method gptq --bits 9 --out " + q(dir / "a"));
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.err.find("--bits"), std::string::npos) << r.err;
    r = run_cli("quantize --method gptq --group 96 --out " + q(dir / "a"));
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.err.find("does not divide"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir / "a"));
    EXPECT_FALSE(fs::exists(dir / "a.partial"));

    // An interrupted run's state is not silently overwritten.
    fs::create_directories(dir / "b.partial");
    r = run_cli("quantize --method rtn --out " + q(dir / "b"));
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.err.find("--resume"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir / "b"));

    // Too little calibration text for the requested windows.
    std::ofstream(dir / "short.txt") << "In the beginning God created the heaven and the earth.";
    r = run_cli("quantize --method gptq --calib " + q(dir / "short.txt") + " --samples 4 --seqlen 64 --out " +
                q(dir / "c"));
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_FALSE(fs::exists(dir / "c"));
}
