// bench_vulkan_gemv: device time of one weight matrix's GEMV in every format the Vulkan runner reads, on one device.
//
//   bench_vulkan_gemv [--device SEL] [--out 1408] [--in 2048] [--tokens 1] [--reps 50]
//
// Defaults are a Qwen1.5-MoE-A2.7B expert's gate (1408 × 2048). Each format's matrix is applied `reps` times in one
// command buffer with a timestamp after every dispatch (the runner's `linear` kernel, engine/vulkan/model_ops.h); the
// median dispatch time is reported with the bytes the matrix occupies on the device, the GB/s that makes, its share of
// the device's measured copy bandwidth, and the speedup over the f16 GEMV of the same shape (the 1-bit goal:
// ≥ 8× on a GPU). Weights are random with fixed seeds: the kernels' speed does not depend on the values.
#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "engine/cpu/binary_linear.h"
#include "engine/cpu/nbit_linear.h"
#include "engine/cpu/vq_linear.h"
#include "engine/vulkan/model_ops.h"
#include "engine/vulkan/ops.h"
#include "random_binary.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

using namespace moebius;

namespace {

std::unique_ptr<Linear> dense(int out, int in, int round, std::mt19937& rng) {
    std::normal_distribution<float> nd(0, 0.02f);
    std::vector<float>              w((size_t)out * in);
    for (auto& v : w) {
        v = nd(rng);
        if (round == 1) v = f16_to_f32(f32_to_f16(v));
        if (round == 2) v = bf16_to_f32(f32_to_bf16(v));
    }
    return std::make_unique<DenseLinear>(in, out, std::move(w));
}

std::unique_ptr<Linear> nbit(int out, int in, int bits, std::mt19937& rng) {
    const int            group = 128;
    std::vector<uint8_t> codes((size_t)in * out);
    for (auto& c : codes) c = (uint8_t)(rng() % (1u << bits));
    std::vector<float> scales((size_t)out * (in / group)), zeros(scales.size());
    for (auto& s : scales) s = std::ldexp((float)(rng() % 1024 + 1), -16);
    for (auto& z : zeros) z = (float)(rng() % (1u << bits));
    return NbitLinear::from_codes(in, out, bits, group, codes.data(), scales.data(), zeros.data());
}

// sg 1 + means: BiLLM; sg 2 + column scales: ARB-RC; sg 0: MoBiE's residual (~5 % salient columns otherwise).
std::unique_ptr<Linear> binary(int out, int in, int sg, bool mean, bool cols, std::mt19937& rng) {
    return std::make_unique<BinaryLinear>(test::random_binary_weights(out, in, sg, mean, cols, rng, 20));
}

std::unique_ptr<Linear> vq(int out, int in, int bits, std::mt19937& rng) {
    VqWeights w;
    w.out = out, w.in = in, w.dim = 2, w.bits = bits, w.group_cols = in, w.rows_per_codebook = 256;
    w.codebooks.resize((size_t)w.n_codebooks() * w.k() * w.dim);
    for (auto& c : w.codebooks) c = std::ldexp((float)((int)(rng() % 256) - 128), -13);
    w.codes.resize((size_t)out * (in / w.dim));
    for (auto& c : w.codes) c = (uint16_t)(rng() % w.k());
    w.scales.assign(out, 1.0f);
    return std::make_unique<VqLinear>(w);
}

int arg_int(int argc, char** argv, const char* name, int dflt) {
    for (int i = 1; i + 1 < argc; ++i)
        if (std::strcmp(argv[i], name) == 0) return std::atoi(argv[i + 1]);
    return dflt;
}

} // namespace

int main(int argc, char** argv) {
    try {
        std::string sel;
        for (int i = 1; i + 1 < argc; ++i)
            if (std::strcmp(argv[i], "--device") == 0) sel = argv[i + 1];
        const int  out = arg_int(argc, argv, "--out", 1408), in = arg_int(argc, argv, "--in", 2048);
        const int  n = arg_int(argc, argv, "--tokens", 1), reps = std::max(3, arg_int(argc, argv, "--reps", 50));
        vk::Device dev(sel);
        if (dev.info().timestamp_bits == 0) {
            std::fprintf(stderr, "bench_vulkan_gemv: %s has no timestamps on its compute queue\n", dev.info().name.c_str());
            return 1;
        }
        const double copy = vk::copy_bandwidth_gbps(dev);
        std::printf("device %s (%s), copy bandwidth %.1f GB/s; W (%d, %d), %d token(s), median of %d dispatches\n",
                    dev.info().name.c_str(), dev.info().type.c_str(), copy, out, in, n, reps);
        std::mt19937 rng(1);
        struct Case {
            const char*             name;
            std::unique_ptr<Linear> lin;
        };
        std::vector<Case> cases;
        cases.push_back({"f16", dense(out, in, 1, rng)});
        cases.push_back({"f32", dense(out, in, 0, rng)});
        cases.push_back({"bf16", dense(out, in, 2, rng)});
        cases.push_back({"nbit 4-bit g128", nbit(out, in, 4, rng)});
        cases.push_back({"nbit 2-bit g128", nbit(out, in, 2, rng)});
        cases.push_back({"vq D2 2-bit", vq(out, in, 2, rng)});
        cases.push_back({"binary BiLLM", binary(out, in, 1, true, false, rng)});
        cases.push_back({"binary ARB-RC", binary(out, in, 2, false, true, rng)});
        cases.push_back({"binary MoBiE residual", binary(out, in, 0, false, true, rng)});
        std::vector<float> xv((size_t)n * in);
        for (size_t i = 0; i < xv.size(); ++i) xv[i] = std::sin((float)i);
        vk::Buffer x = dev.upload_vector(xv), y = dev.create_buffer((size_t)n * out * 4);
        double     f16_us = 0;
        std::printf("%-24s %-7s %10s %10s %9s %8s %9s\n", "format", "kernel", "MiB", "us", "GB/s", "of copy",
                    "vs f16");
        for (const auto& c : cases) {
            auto q = vk::QWeights::upload(dev, {c.lin.get()}, out);
            if (!q.note.empty()) std::printf("  (%s: %s)\n", c.name, q.note.c_str());
            vk::CommandList cl(dev);
            cl.enable_timing();
            for (int r = 0; r < reps; ++r) vk::linear(dev, cl, q, 0, x, n, y);
            cl.submit_and_wait();
            std::vector<double> t;
            for (const auto& tm : cl.timings()) t.push_back(tm.seconds);
            std::sort(t.begin() + 1, t.end()); // the first dispatch warms caches: left out of the median
            const double us    = t[1 + (t.size() - 1) / 2] * 1e6;
            const double bytes = (double)q.matrix_bytes();
            if (f16_us == 0) f16_us = us;
            const char* fmts[] = {"f32", "nbit", "vq", "binary", "f16", "bf16"};
            std::printf("%-24s %-7s %10.2f %10.1f %9.2f %7.1f%% %8.2fx\n", c.name, fmts[(int)q.format], bytes / 1048576,
                        us, bytes / us * 1e-3, 100 * bytes / us * 1e-3 / copy, f16_us / us);
        }
        return 0;
    } catch (const Error& e) {
        std::fprintf(stderr, "bench_vulkan_gemv: %s\n", e.what());
        return 1;
    }
}
