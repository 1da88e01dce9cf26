// `--backend vulkan` on generate / ppl / tasks: the same tokens and perplexity as the CPU on the bundled model, and the
// CPU fallback with its reason when the device selector matches nothing (or Vulkan was not built).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "e2e/cli_runner.h"

using json = nlohmann::json;
using moebius::test::CliRun;
using moebius::test::run_cli;

namespace {

bool no_vulkan_expected() {
    const char* e = std::getenv("MOEBIUS_NO_VULKAN");
    return e && std::string(e) == "1";
}

// `cmd` on the CPU and with `--backend vulkan`: both succeed, and the second says it ran on the device (or, built
// without Vulkan, why it did not). Returns the two JSON outputs.
std::pair<json, json> on_both(const std::string& cmd, const std::string& what) {
    CliRun cpu = run_cli(cmd);
    CliRun gpu = run_cli(cmd + " --backend vulkan");
    EXPECT_EQ(cpu.code, 0) << cpu.err;
    EXPECT_EQ(gpu.code, 0) << gpu.err;
#if MOEBIUS_HAS_VULKAN
    if (!no_vulkan_expected()) {
        EXPECT_NE(gpu.err.find(what + " on Vulkan device"), std::string::npos) << gpu.err;
    }
#else
    EXPECT_NE(gpu.err.find("runs on the CPU"), std::string::npos) << gpu.err;
#endif
    if (cpu.code != 0 || gpu.code != 0) return {};
    return {json::parse(cpu.out), json::parse(gpu.out)};
}

} // namespace

TEST(CliVulkan, GenerateMatchesCpuTokens) {
    auto [cpu, gpu] = on_both("generate --prompt 'In the beginning God' --max-tokens 12 --json", "generate");
    ASSERT_FALSE(cpu.is_null());
    EXPECT_EQ(gpu["tokens"], cpu["tokens"]);
}

TEST(CliVulkan, PerplexityMatchesCpu) {
    const std::string cmd = "ppl --seqlen 16 --max-windows 2 --json";
    CliRun            cpu = run_cli(cmd);
    CliRun            gpu = run_cli(cmd + " --backend vulkan --device 0");
    ASSERT_EQ(cpu.code, 0) << cpu.err;
    ASSERT_EQ(gpu.code, 0) << gpu.err;
    const double a = json::parse(cpu.out)["ppl"], b = json::parse(gpu.out)["ppl"];
    EXPECT_NEAR(b, a, 1e-4 * a);
}

TEST(CliVulkan, TasksMatchCpu) {
    auto [cpu, gpu] = on_both("tasks --limit 2 --json", "tasks");
    ASSERT_FALSE(cpu.is_null());
    EXPECT_EQ(gpu["n"], 2);
    EXPECT_EQ(gpu["acc"], cpu["acc"]);
    EXPECT_EQ(gpu["acc_norm"], cpu["acc_norm"]);
}

TEST(CliVulkan, FallsBackToCpuWithTheReason) {
    CliRun r = run_cli("ppl --seqlen 16 --max-windows 1 --json --backend vulkan --device no-such-device");
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.err.find("runs on the CPU"), std::string::npos) << r.err;
    EXPECT_TRUE(json::parse(r.out).contains("ppl"));
    CliRun t = run_cli("tasks --limit 2 --json --backend vulkan --device no-such-device");
    ASSERT_EQ(t.code, 0) << t.err;
    EXPECT_NE(t.err.find("runs on the CPU"), std::string::npos) << t.err;
}

TEST(CliVulkan, BadBackendIsAnError) {
    CliRun r = run_cli("ppl --seqlen 16 --max-windows 1 --backend cuda");
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("--backend must be cpu or vulkan"), std::string::npos) << r.err;
    CliRun d = run_cli("ppl --seqlen 16 --max-windows 1 --device 0");
    EXPECT_NE(d.code, 0);
    EXPECT_NE(d.err.find("--device needs --backend vulkan"), std::string::npos) << d.err;
}

TEST(CliVulkan, BenchReportsSpeedAndDispatches) {
    CliRun r = run_cli("bench --prompt-tokens 8 --gen-tokens 4 --backend vulkan --json");
    ASSERT_EQ(r.code, 0) << r.err;
    json j = json::parse(r.out);
    EXPECT_EQ(j["generated_tokens"], 4);
    EXPECT_GT(j["decode_tokens_per_s"].get<double>(), 0);
#if MOEBIUS_HAS_VULKAN
    if (no_vulkan_expected()) return;
    EXPECT_EQ(j["backend"], "vulkan");
    EXPECT_EQ(j["dispatches_per_layer"], 6); // Qwen2-MoE with its gated shared expert, docs/VULKAN.md
    EXPECT_EQ(j["dispatches_per_decode_token"], 27);
    // lavapipe has timestamps: the decode steps are profiled per kernel (one entry per name, shares summing to 1,
    // each of the 4 layers calling the expert kernels once per token; only the weight-reading kernels and the
    // annotated small ones move bytes).
    ASSERT_TRUE(j.contains("kernels")) << r.out;
    double share = 0, calls_gu = 0;
    for (const auto& k : j["kernels"]) {
        share += k["time_share"].get<double>();
        if (k["name"] == "moe_gate_up") calls_gu = k["calls_per_token"].get<double>();
        if (k["name"] != "copy") {
            EXPECT_GT(k["bytes_per_token"].get<double>(), 0) << k.dump();
        }
    }
    EXPECT_NEAR(share, 1.0, 1e-6);
    EXPECT_EQ(calls_gu, 4.0);
    EXPECT_GT(j["copy_bandwidth_gbps"].get<double>(), 0);
    EXPECT_GT(j["decode_share_of_copy_bandwidth"].get<double>(), 0);
#endif
}
