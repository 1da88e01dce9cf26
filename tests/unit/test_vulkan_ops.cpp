// Vulkan backend: device runtime and the first ops, each against its CPU reference. Runs on any Vulkan 1.2 device;
// CI and the dev machines have Mesa lavapipe (CPU). Missing device policy: a test FAILS when no Vulkan device is
// found (a broken driver install must not pass silently), unless MOEBIUS_NO_VULKAN=1 says this machine has none.
//
// Tolerances: the GPU sums dot products in a different order than the CPU (strided partial sums + a tree), so f32
// results differ by rounding. For a sum of K products the error of any summation order is ≤ ~K·u·Σ|x_i·w_i|
// (u = 2^-24 ≈ 6e-8), and blocked/tree orders give ≈ (K/WG + log2 WG)·u·Σ|x_i·w_i|. We check
// |y − y_ref| ≤ 1e-5 · Σ|x_i·w_i|: that holds for K up to ~160 in the worst case and far beyond in practice, while a
// wrong index or a missing term shows up at ~1e-1 of that scale. Element-wise ops (RMSNorm, SiLU·mul) are checked
// at relative 1e-5 (a few ulp of exp / sqrt / division differences between the driver's and the CPU's maths).
#include <gtest/gtest.h>

#if MOEBIUS_HAS_VULKAN

#include "engine/cpu/binary_linear.h"
#include "engine/cpu/ops.h"
#include "engine/core/dtype.h"
#include "engine/vulkan/device.h"
#include "engine/vulkan/ops.h"
#include "engine/vulkan/shaders.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

using namespace moebius;
using moebius::vk::Buffer;
using moebius::vk::CommandList;
using moebius::vk::Device;

namespace {

bool no_vulkan_expected() {
    const char* e = std::getenv("MOEBIUS_NO_VULKAN");
    return e && std::string(e) == "1";
}

// One device for the whole suite: pipeline compilation on lavapipe (LLVM) is the slow part.
Device* shared_device(std::string* why) {
    static std::unique_ptr<Device> dev;
    static std::string             error;
    static bool                    tried = false;
    if (!tried) {
        tried = true;
        try {
            dev = std::make_unique<Device>();
        } catch (const Error& e) {
            error = e.what();
        }
    }
    *why = error;
    return dev.get();
}

#define VULKAN_DEVICE_OR_RETURN(dev)                                                                                   \
    std::string why_##dev;                                                                                             \
    Device*     dev = shared_device(&why_##dev);                                                                       \
    if (!dev) {                                                                                                        \
        if (no_vulkan_expected()) GTEST_SKIP() << "MOEBIUS_NO_VULKAN=1: " << why_##dev;                                \
        FAIL() << "no Vulkan device (" << why_##dev << "); set MOEBIUS_NO_VULKAN=1 on machines without one";          \
    }

std::vector<float> random_vec(size_t n, uint32_t seed, float scale = 1.0f) {
    std::mt19937                    rng(seed);
    std::normal_distribution<float> nd(0, scale);
    std::vector<float>              v(n);
    for (auto& x : v) x = nd(rng);
    return v;
}

std::vector<float> download(Device& dev, const Buffer& b, size_t n) {
    std::vector<float> v(n);
    dev.download(b, v.data(), n * sizeof(float));
    return v;
}

// Checks y (n, out) against x (n, in) · Wᵀ: |y − ref| ≤ rtol · Σ|x·w| (see the header comment).
void expect_matmul_close(const std::vector<float>& y, const std::vector<float>& ref, const std::vector<float>& x,
                         const std::vector<float>& w, int n, int in, int out, double rtol, const std::string& what) {
    int bad = 0;
    for (int t = 0; t < n && bad < 5; ++t)
        for (int o = 0; o < out && bad < 5; ++o) {
            double mag = 0;
            for (int j = 0; j < in; ++j) mag += std::fabs((double)x[(size_t)t * in + j] * w[(size_t)o * in + j]);
            const size_t i = (size_t)t * out + o;
            if (std::fabs((double)y[i] - ref[i]) > rtol * mag + 1e-30) {
                ++bad;
                ADD_FAILURE() << what << ": y[" << t << ", " << o << "] = " << y[i] << ", reference " << ref[i]
                              << " (scale " << mag << ")";
            }
        }
}

// x (n, in) · Wᵀ in double, rounded once to f32.
std::vector<float> matmul_ref(const std::vector<float>& x, const std::vector<float>& w, int n, int in, int out) {
    std::vector<float> y((size_t)n * out);
    for (int t = 0; t < n; ++t)
        for (int o = 0; o < out; ++o) {
            double s = 0;
            for (int j = 0; j < in; ++j) s += (double)x[(size_t)t * in + j] * w[(size_t)o * in + j];
            y[(size_t)t * out + o] = (float)s;
        }
    return y;
}

void expect_rel_close(const std::vector<float>& got, const std::vector<float>& want, double rtol,
                      const std::string& what) {
    ASSERT_EQ(got.size(), want.size());
    int bad = 0;
    for (size_t i = 0; i < got.size() && bad < 5; ++i)
        if (std::fabs((double)got[i] - want[i]) > rtol * std::fabs((double)want[i]) + 1e-30) {
            ++bad;
            ADD_FAILURE() << what << ": [" << i << "] = " << got[i] << ", reference " << want[i];
        }
}

float f16r(float v) { return f16_to_f32(f32_to_f16(v)); }

// Random structured-binary weights (as tests/unit/test_binary_linear.cpp): f16-exact scales and means.
BinaryWeights random_binary(int out, int in, int block, int salient_groups, bool mean, bool col, uint32_t seed) {
    std::mt19937                          rng(seed);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    BinaryWeights                         w;
    w.out = out, w.in = in, w.block = block, w.salient_groups = salient_groups, w.has_mean = mean,
    w.has_col_scale = col;
    for (int j = 0; j < in; ++j) w.salient.push_back(u(rng) < 0.2f);
    for (int i = 0; i < out * in; ++i) {
        w.split.push_back(u(rng) < 0.3f);
        w.sign1.push_back(u(rng) < 0.5f ? 1 : -1);
        w.sign2.push_back(u(rng) < 0.5f ? 1 : -1);
    }
    for (int i = 0; i < out * w.n_blocks() * w.n_slots(); ++i) w.row_scale.push_back(f16r(0.001f + 0.05f * u(rng)));
    for (int i = 0; i < out * w.n_blocks() * w.n_groups() && mean; ++i)
        w.row_mean.push_back(f16r(0.02f * (u(rng) - 0.5f)));
    for (int i = 0; i < in * w.n_slots() && col; ++i) w.col_scale.push_back(f16r(0.5f + u(rng)));
    return w;
}

} // namespace

TEST(VulkanDevice, FoundAndDescribed) {
    VULKAN_DEVICE_OR_RETURN(dev);
    const auto& d = dev->info();
    EXPECT_FALSE(d.name.empty());
    EXPECT_GT(d.subgroup_size, 0u);
    EXPECT_GE(d.max_storage_buffer_range, 1u << 27) << "Vulkan guarantees ≥ 128 MiB";
    EXPECT_GE(d.api_version, (uint32_t)VK_API_VERSION_1_2);
    EXPECT_FALSE(d.heaps.empty());
    const uint32_t wg = dev->reduction_workgroup();
    EXPECT_EQ(wg & (wg - 1), 0u) << "power of two";
    EXPECT_GE(wg, 8u);
    EXPECT_LE(wg, d.max_workgroup_invocations);
    // Every shader is embedded as valid SPIR-V (magic number first).
    ASSERT_GE(vk::embedded_shaders().size(), 5u);
    for (const auto& s : vk::embedded_shaders()) {
        ASSERT_GT(s.n_words, 5u) << s.name;
        EXPECT_EQ(s.words[0], 0x07230203u) << s.name;
    }
    EXPECT_EQ(vk::find_shader("no_such_shader"), nullptr);
}

TEST(VulkanDevice, SelectionByIndexAndName) {
    VULKAN_DEVICE_OR_RETURN(dev);
    vk::Instance inst;
    ASSERT_FALSE(inst.devices().empty());
    const auto& first = inst.devices()[0];
    EXPECT_EQ(inst.select(std::to_string(first.index)), first.index);
    // Indices are vkEnumeratePhysicalDevices positions (pre-1.2 devices are left out of the list).
    auto by_index = [&](int index) -> const vk::DeviceInfo& {
        for (const auto& d : inst.devices())
            if (d.index == index) return d;
        throw std::runtime_error("no device " + std::to_string(index));
    };
    // Case-insensitive substring of the name.
    std::string part = first.name.substr(0, std::min<size_t>(4, first.name.size()));
    for (auto& c : part) c = (char)std::toupper((unsigned char)c);
    std::string chosen = by_index(inst.select(part)).name;
    for (auto& c : chosen) c = (char)std::toupper((unsigned char)c);
    EXPECT_NE(chosen.find(part), std::string::npos) << part << " → " << chosen;
    EXPECT_THROW(inst.select("no-such-device-anywhere"), UnsupportedError);
    EXPECT_THROW(inst.select("9999"), UnsupportedError);
    // The default prefers real GPUs over CPU devices.
    const int best = inst.select();
    bool any_discrete = false;
    for (const auto& d : inst.devices()) any_discrete |= d.type == "discrete";
    if (any_discrete) {
        EXPECT_EQ(by_index(best).type, "discrete");
    }
}

TEST(VulkanDevice, BuffersAndLimits) {
    VULKAN_DEVICE_OR_RETURN(dev);
    std::vector<float> v = random_vec(1000, 1);
    Buffer             b = dev->upload_vector(v);
    EXPECT_EQ(b.size(), v.size() * sizeof(float));
    EXPECT_EQ(download(*dev, b, v.size()), v);
    // Partial upload at an offset.
    const float two[2] = {7.0f, 8.0f};
    dev->upload(b, two, sizeof two, 10 * sizeof(float));
    auto back = download(*dev, b, v.size());
    EXPECT_EQ(back[10], 7.0f);
    EXPECT_EQ(back[11], 8.0f);
    EXPECT_EQ(back[12], v[12]);
    // Over the allocation limit: a clean error, no allocation attempted.
    EXPECT_THROW(dev->create_buffer(dev->max_buffer_bytes() + 1), UnsupportedError);
    // A binding over maxStorageBufferRange is refused before it reaches the driver.
    Buffer      y = dev->create_buffer(64);
    CommandList cl(*dev);
    const auto&    silu = dev->pipeline("silu_mul", 3, 4, {64});
    const uint32_t four = 4;
    EXPECT_THROW(cl.dispatch(silu, {vk::BufferRef(b, 0, dev->max_binding_bytes() + 4), b, y}, four, 1),
                 UnsupportedError);
    // Pipelines are cached per (shader, specialization constants).
    const auto& p1 = dev->pipeline("silu_mul", 3, 4, {64});
    const auto& p2 = dev->pipeline("silu_mul", 3, 4, {64});
    const auto& p3 = dev->pipeline("silu_mul", 3, 4, {32});
    EXPECT_EQ(&p1, &p2);
    EXPECT_NE(&p1, &p3);
    EXPECT_THROW(dev->pipeline("no_such_shader", 1, 0), NotFoundError);
}

// Small buffers share memory blocks (maxMemoryAllocationCount may be 4096: a large model has more norms and biases),
// each at a multiple of minStorageBufferOffsetAlignment, and keep their own contents; a kernel reads and writes them.
TEST(VulkanDevice, SmallBuffersShareAllocations) {
    VULKAN_DEVICE_OR_RETURN(dev);
    const size_t        before = dev->n_allocations();
    std::vector<Buffer> bs;
    for (int i = 0; i < 300; ++i) bs.push_back(dev->upload_vector(std::vector<float>(37 + i % 5, (float)i)));
    EXPECT_LE(dev->n_allocations() - before, 1u); // 300 small buffers: one 16 MiB block at most
    const uint64_t align = std::max<uint64_t>(dev->info().min_storage_offset_alignment, 4);
    for (int i = 0; i < 300; ++i) {
        EXPECT_EQ(download(*dev, bs[i], 37 + i % 5), std::vector<float>(37 + i % 5, (float)i)) << i;
        if (bs[i].mapped() && bs[0].mapped() && i > 0) {
            const auto d = (char*)bs[i].mapped() - (char*)bs[i - 1].mapped();
            EXPECT_EQ(d % (std::ptrdiff_t)align, 0) << i;
            EXPECT_GE(d, (std::ptrdiff_t)bs[i - 1].size()) << i; // no overlap with the previous buffer
        }
    }
    // y = silu(g) ⊙ u over three neighbouring sub-allocated buffers.
    auto        g = random_vec(37, 2), u = random_vec(37, 3);
    Buffer      bg = dev->upload_vector(g), bu = dev->upload_vector(u), by = dev->create_buffer(37 * 4);
    CommandList cl(*dev);
    vk::silu_mul(*dev, cl, bg, bu, 37, by);
    cl.submit_and_wait();
    const auto y = download(*dev, by, 37);
    for (int i = 0; i < 37; ++i) EXPECT_NEAR(y[i], g[i] / (1 + std::exp(-g[i])) * u[i], 1e-5 * (1 + std::fabs(y[i])));
    EXPECT_EQ(download(*dev, bs[299], 41), std::vector<float>(41, 299.f)); // neighbours untouched
    // A large buffer gets its own allocation.
    const size_t n0 = dev->n_allocations();
    Buffer       big = dev->create_buffer(Device::k_small_buffer + 4);
    EXPECT_EQ(dev->n_allocations(), n0 + 1);
}

// The discrete-GPU memory path (unmapped device buffers, staging copies through a transfer) forced on this device.
TEST(VulkanDevice, StagingPath) {
    VULKAN_DEVICE_OR_RETURN(shared);
    Device dev("", /*force_staging=*/true);
    EXPECT_TRUE(dev.uses_staging());
    const int n = 2, in = 37, out = 29;
    auto      x = random_vec((size_t)n * in, 5), w = random_vec((size_t)out * in, 6);
    Buffer    bx = dev.upload_vector(x), bw = dev.upload_vector(w);
    EXPECT_EQ(bx.mapped(), nullptr);
    EXPECT_EQ(download(dev, bx, x.size()), x);
    Buffer      by = dev.create_buffer((size_t)n * out * sizeof(float)); // (n, out)
    CommandList cl(dev);
    vk::matmul_wt(dev, cl, bx, n, in, bw, out, by);
    cl.submit_and_wait();
    expect_matmul_close(download(dev, by, (size_t)n * out), matmul_ref(x, w, n, in, out), x, w, n, in, out, 1e-5,
                        "staging matmul");
}

TEST(VulkanOps, MatmulF32MatchesCpu) {
    VULKAN_DEVICE_OR_RETURN(dev);
    struct Shape {
        int in, out;
    };
    // Odd sizes (tails of every loop), a vocabulary-like row count over one grid dimension (2-D row grid).
    for (Shape s : {Shape{61, 37}, Shape{1, 1}, Shape{256, 64}, Shape{5, 70000}})
        for (int n : {1, 2, 3, 4, 5, 6, 7, 8, 17, 33}) {
            if (s.out == 70000 && n > 1) continue; // the grid is what that shape tests (and it is slow on lavapipe)
            const std::string what = "matmul n=" + std::to_string(n) + " in=" + std::to_string(s.in) +
                                     " out=" + std::to_string(s.out);
            auto x = random_vec((size_t)n * s.in, 10 + n);          // (n, in)
            auto w = random_vec((size_t)s.out * s.in, 20 + s.in);   // (out, in)
            Buffer      bx = dev->upload_vector(x), bw = dev->upload_vector(w);
            Buffer      by = dev->create_buffer((size_t)n * s.out * sizeof(float)); // (n, out)
            CommandList cl(*dev);
            vk::matmul_wt(*dev, cl, bx, n, s.in, bw, s.out, by);
            cl.submit_and_wait();
            auto y = download(*dev, by, (size_t)n * s.out);
            expect_matmul_close(y, matmul_ref(x, w, n, s.in, s.out), x, w, n, s.in, s.out, 1e-5, what);
            std::vector<float> ycpu((size_t)n * s.out);
            cpu::matmul_wt(x.data(), n, s.in, w.data(), s.out, ycpu.data());
            expect_matmul_close(y, ycpu, x, w, n, s.in, s.out, 2e-5, what + " vs cpu::matmul_wt");
            if (HasFailure()) return;
        }
}

TEST(VulkanOps, RmsNormMatchesCpu) {
    VULKAN_DEVICE_OR_RETURN(dev);
    for (int d : {1, 37, 256, 1000})
        for (int n : {1, 3}) {
            auto x = random_vec((size_t)n * d, 30 + d, 2.0f); // (n, d)
            auto g = random_vec((size_t)d, 40 + d);           // (d)
            std::vector<float> ref((size_t)n * d);
            cpu::rmsnorm(x.data(), n, d, g.data(), 1e-6f, ref.data());
            Buffer      bx = dev->upload_vector(x), bg = dev->upload_vector(g);
            Buffer      by = dev->create_buffer(x.size() * sizeof(float));
            CommandList cl(*dev);
            vk::rmsnorm(*dev, cl, bx, n, d, bg, 1e-6f, by);
            vk::rmsnorm(*dev, cl, bx, n, d, bg, 1e-6f, bx); // in place, after the first read x (barrier between)
            cl.submit_and_wait();
            const std::string what = "rmsnorm n=" + std::to_string(n) + " d=" + std::to_string(d);
            expect_rel_close(download(*dev, by, x.size()), ref, 1e-5, what);
            expect_rel_close(download(*dev, bx, x.size()), ref, 1e-5, what + " in place");
        }
}

TEST(VulkanOps, SiluMulMatchesCpu) {
    VULKAN_DEVICE_OR_RETURN(dev);
    // 65535·64 + 37 elements need the second grid dimension.
    for (int64_t total : {int64_t{1}, int64_t{111}, int64_t{65535} * 64 + 37}) {
        auto g = random_vec((size_t)total, 50, 3.0f), u = random_vec((size_t)total, 51);
        std::vector<float> ref((size_t)total);
        cpu::silu_mul(g.data(), u.data(), 1, (int)total, ref.data());
        Buffer      bg = dev->upload_vector(g), bu = dev->upload_vector(u);
        Buffer      bh = dev->create_buffer((size_t)total * sizeof(float));
        CommandList cl(*dev);
        vk::silu_mul(*dev, cl, bg, bu, total, bh);
        cl.submit_and_wait();
        expect_rel_close(download(*dev, bh, (size_t)total), ref, 1e-5, "silu_mul total=" + std::to_string(total));
    }
}

// The GPU decodes every binary variant (BiLLM: 1 salient group + means; ARB-X: 2 groups; ARB-RC: column scales, no
// means) to exactly BinaryLinear's weights, and its forward matches BinaryLinear::forward.
TEST(VulkanOps, BinaryGemvMatchesBinaryLinear) {
    VULKAN_DEVICE_OR_RETURN(dev);
    struct Variant {
        int  sg;
        bool mean, col;
    };
    struct Shape {
        int out, in, block;
    };
    // in = 40, block 8: rows of 5 bytes, so rows start mid-word; out = 37: odd row count.
    for (Shape s : {Shape{37, 40, 8}, Shape{19, 256, 128}})
        for (Variant v : {Variant{1, true, false}, Variant{2, true, false}, Variant{1, false, true},
                          Variant{2, false, true}, Variant{2, true, true}}) {
            const std::string what = "binary " + std::to_string(s.out) + "x" + std::to_string(s.in) + " sg=" +
                                     std::to_string(v.sg) + " mean=" + std::to_string(v.mean) +
                                     " col=" + std::to_string(v.col);
            BinaryLinear       lin(random_binary(s.out, s.in, s.block, v.sg, v.mean, v.col, 60 + s.in + v.sg));
            std::vector<float> w  = lin.dequantize(); // (out, in)
            auto               gw = vk::BinaryTensors::upload(*dev, lin);

            // Exact decode: x = I (in tokens) makes y = Wᵀ with one nonzero product per sum, so no rounding.
            std::vector<float> eye((size_t)s.in * s.in, 0.0f); // (in, in)
            for (int j = 0; j < s.in; ++j) eye[(size_t)j * s.in + j] = 1.0f;
            Buffer      bi = dev->upload_vector(eye);
            Buffer      bt = dev->create_buffer((size_t)s.in * s.out * sizeof(float)); // (in, out)
            CommandList cl(*dev);
            vk::binary_matmul_wt(*dev, cl, gw, bi, s.in, bt);
            cl.submit_and_wait();
            auto wt = download(*dev, bt, (size_t)s.in * s.out);
            int  bad = 0;
            for (int o = 0; o < s.out && bad < 5; ++o)
                for (int j = 0; j < s.in && bad < 5; ++j)
                    if (wt[(size_t)j * s.out + o] != w[(size_t)o * s.in + j]) {
                        ++bad;
                        ADD_FAILURE() << what << ": W[" << o << ", " << j << "] decodes to "
                                      << wt[(size_t)j * s.out + o] << ", BinaryLinear has " << w[(size_t)o * s.in + j];
                    }

            for (int n : {1, 2, 3, 5, 8, 17}) {
                auto x = random_vec((size_t)n * s.in, 70 + n); // (n, in)
                std::vector<float> ycpu((size_t)n * s.out);    // (n, out)
                lin.forward(x.data(), n, ycpu.data());
                Buffer bx = dev->upload_vector(x);
                Buffer by = dev->create_buffer(ycpu.size() * sizeof(float));
                vk::binary_matmul_wt(*dev, cl, gw, bx, n, by);
                cl.submit_and_wait();
                expect_matmul_close(download(*dev, by, ycpu.size()), ycpu, x, w, n, s.in, s.out, 1e-5,
                                    what + " n=" + std::to_string(n));
            }
            if (HasFailure()) return;
        }
}

// Several ops in one submit (barriers between them), as a layer will run: RMSNorm → gate and up GEMVs → SiLU·mul →
// down GEMV; the same result as the CPU chain, and bit-identical when run again.
TEST(VulkanOps, ChainInOneSubmitIsDeterministic) {
    VULKAN_DEVICE_OR_RETURN(dev);
    const int n = 3, d = 64, f = 96;
    auto x = random_vec((size_t)n * d, 80), g = random_vec(d, 81);
    auto wg = random_vec((size_t)f * d, 82, 0.2f), wu = random_vec((size_t)f * d, 83, 0.2f);
    auto wd = random_vec((size_t)d * f, 84, 0.2f);
    // CPU chain.
    std::vector<float> h((size_t)n * d), a((size_t)n * f), b((size_t)n * f), m((size_t)n * f), ref((size_t)n * d);
    cpu::rmsnorm(x.data(), n, d, g.data(), 1e-6f, h.data());
    cpu::matmul_wt(h.data(), n, d, wg.data(), f, a.data());
    cpu::matmul_wt(h.data(), n, d, wu.data(), f, b.data());
    cpu::silu_mul(a.data(), b.data(), n, f, m.data());
    cpu::matmul_wt(m.data(), n, f, wd.data(), d, ref.data());

    Buffer bx = dev->upload_vector(x), bg = dev->upload_vector(g), bwg = dev->upload_vector(wg),
           bwu = dev->upload_vector(wu), bwd = dev->upload_vector(wd);
    Buffer bh = dev->create_buffer(h.size() * 4), ba = dev->create_buffer(a.size() * 4),
           bb = dev->create_buffer(b.size() * 4), bm = dev->create_buffer(m.size() * 4),
           by = dev->create_buffer(ref.size() * 4);
    std::vector<float> first;
    for (int rep = 0; rep < 2; ++rep) {
        CommandList cl(*dev);
        vk::rmsnorm(*dev, cl, bx, n, d, bg, 1e-6f, bh);
        vk::matmul_wt(*dev, cl, bh, n, d, bwg, f, ba);
        vk::matmul_wt(*dev, cl, bh, n, d, bwu, f, bb);
        vk::silu_mul(*dev, cl, ba, bb, (int64_t)n * f, bm);
        vk::matmul_wt(*dev, cl, bm, n, f, bwd, d, by);
        EXPECT_EQ(cl.n_dispatches(), 5u);
        cl.submit_and_wait();
        auto y = download(*dev, by, ref.size());
        if (rep == 0) {
            first = y;
            // Errors compound through the chain: compare with a looser bound relative to the output scale.
            double scale = 0;
            for (float v : ref) scale = std::max(scale, (double)std::fabs(v));
            for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], ref[i], 1e-5 * scale) << i;
        } else {
            EXPECT_EQ(0, std::memcmp(first.data(), y.data(), y.size() * 4)) << "not deterministic";
        }
    }
}

#else

TEST(Vulkan, NotBuilt) { GTEST_SKIP() << "built without MOEBIUS_VULKAN"; }

#endif
