#pragma once
// Shared by the Vulkan model tests: one device per test process (pipeline compilation on lavapipe is the slow part)
// and the missing-device policy of test_vulkan_ops.cpp: FAIL when no device is found, unless MOEBIUS_NO_VULKAN=1.
#if MOEBIUS_HAS_VULKAN
#include <gtest/gtest.h>

#include "engine/core/error.h"
#include "engine/vulkan/device.h"

#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace moebius::test {

inline bool no_vulkan_expected() {
    const char* e = std::getenv("MOEBIUS_NO_VULKAN");
    return e && std::string(e) == "1";
}

inline vk::Device* vulkan_device(std::string* why) {
    static std::unique_ptr<vk::Device> dev;
    static std::string                 error;
    static bool                        tried = false;
    if (!tried) {
        tried = true;
        try {
            dev = std::make_unique<vk::Device>();
        } catch (const Error& e) {
            error = e.what();
        }
    }
    *why = error;
    return dev.get();
}

#define VK_DEVICE_OR_SKIP(dev)                                                                                         \
    std::string  why_##dev;                                                                                            \
    vk::Device*  dev = moebius::test::vulkan_device(&why_##dev);                                                       \
    if (!dev) {                                                                                                        \
        if (moebius::test::no_vulkan_expected()) GTEST_SKIP() << "MOEBIUS_NO_VULKAN=1: " << why_##dev;                 \
        FAIL() << "no Vulkan device (" << why_##dev << "); set MOEBIUS_NO_VULKAN=1 on machines without one";          \
    }

inline std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
    std::mt19937                    rng(seed);
    std::normal_distribution<float> nd(0, scale);
    std::vector<float>              v(n);
    for (auto& x : v) x = nd(rng);
    return v;
}

inline std::vector<float> read_floats(vk::Device& dev, const vk::Buffer& b, size_t n) {
    std::vector<float> v(n);
    dev.download(b, v.data(), n * sizeof(float));
    return v;
}

} // namespace moebius::test
#endif
