// `moebius devices`: lists the Vulkan devices; lavapipe (Mesa's CPU device) is installed wherever the tests run, so it
// must show up (MOEBIUS_NO_VULKAN=1 turns that expectation off, see tests/unit/test_vulkan_ops.cpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "e2e/cli_runner.h"

using json = nlohmann::json;
using moebius::test::CliRun;
using moebius::test::run_cli;

namespace {

[[maybe_unused]] bool no_vulkan_expected() {
    const char* e = std::getenv("MOEBIUS_NO_VULKAN");
    return e && std::string(e) == "1";
}

void expect_one_line_error(const CliRun& r, const std::string& fragment) {
    EXPECT_NE(r.code, 0);
    EXPECT_LT(r.code, 128) << "crashed: " << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(fragment), std::string::npos) << r.err;
}

} // namespace

#if MOEBIUS_HAS_VULKAN

TEST(CliVulkanDevices, JsonListsLavapipe) {
    CliRun r = run_cli("devices --json");
    if (no_vulkan_expected() && r.code != 0) GTEST_SKIP() << "MOEBIUS_NO_VULKAN=1: " << r.err;
    ASSERT_EQ(r.code, 0) << r.err;
    json j = json::parse(r.out);
    EXPECT_EQ(j["vulkan"], true);
    ASSERT_TRUE(j["devices"].is_array());
    if (no_vulkan_expected() && j["devices"].empty()) GTEST_SKIP() << "MOEBIUS_NO_VULKAN=1";
    ASSERT_FALSE(j["devices"].empty()) << r.out;
    ASSERT_TRUE(j["selected"].is_number_integer());
    bool lavapipe = false;
    for (const auto& d : j["devices"]) {
        for (const char* k : {"index", "name", "type", "vendor", "driver", "api_version", "subgroup_size",
                              "max_storage_buffer_range", "max_memory_allocation", "max_workgroup_size", "heaps"})
            EXPECT_TRUE(d.contains(k)) << k;
        EXPECT_GT(d["subgroup_size"].get<int>(), 0);
        EXPECT_GE(d["max_storage_buffer_range"].get<uint64_t>(), 1u << 27);
        EXPECT_FALSE(d["heaps"].empty());
        if (d["name"].get<std::string>().find("llvmpipe") != std::string::npos) {
            lavapipe = true;
            EXPECT_EQ(d["type"], "cpu");
            EXPECT_EQ(d["subgroup_size"], 8) << "lavapipe's 256-bit vectors of 32-bit lanes";
        }
    }
    EXPECT_TRUE(lavapipe) << "Mesa lavapipe (mesa-vulkan-drivers) not listed: " << r.out;
}

TEST(CliVulkanDevices, HumanReadableAndSelection) {
    if (no_vulkan_expected()) GTEST_SKIP() << "MOEBIUS_NO_VULKAN=1";
    CliRun r = run_cli("devices --device llvmpipe");
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find("* "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("llvmpipe"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("subgroup 8"), std::string::npos) << r.out;
    expect_one_line_error(run_cli("devices --device no-such-gpu-anywhere"), "no device matches");
}

#else

TEST(CliVulkanDevices, NotBuilt) {
    expect_one_line_error(run_cli("devices"), "Vulkan support was not built");
}

#endif
