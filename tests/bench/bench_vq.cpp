// bench_vq: forward time of the vector-quantized linear (VqLinear, docs/FORMAT.md "vq") against dense f32.
//
//   bench_vq [--out 1408] [--in 2048] [--tokens 1,64] [--rounds 7] [--min-ms 200] [--threads T]
//
// W is (out, in) = (1408, 2048) by default: a Qwen1.5-MoE-A2.7B expert's gate/up projection. Formats: dense f32
// (DenseLinear) and VqLinear in GPTVQ's released configurations (methods.md §4.4, G = 256 columns per codebook):
// D = 2 at 2 bits (4096 weights per codebook), D = 1 at 2 bits (512), D = 2 at 3 bits (16384), D = 4 at 2 bits
// (65536 weights per codebook, K = 256), and D = 2 at 2 bits with row scales. Codes and codebooks are random (fixed
// seeds): the kernel's speed does not depend on the values. Same method as bench_linear: formats timed interleaved
// round by round, a timing is the mean over as many calls as fit in --min-ms; reported are the best round of each
// format, its ratio to dense and the median of the per-round ratios (the number to trust on a shared machine).
#include "engine/core/dtype.h"
#include "engine/cpu/linear.h"
#include "engine/cpu/vq_linear.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <omp.h>
#include <random>
#include <string>
#include <vector>

namespace {

using clk = std::chrono::steady_clock;

[[noreturn]] void usage(const std::string& msg) {
    std::fprintf(stderr, "bench_vq: %s\nusage: bench_vq [--out N] [--in N] [--tokens 1,64] [--rounds R] [--min-ms MS] "
                         "[--threads T]\n",
                 msg.c_str());
    std::exit(2);
}

float f16r(float v) { return moebius::f16_to_f32(moebius::f32_to_f16(v)); }

moebius::VqWeights random_vq(int out, int in, int dim, int bits, int group_size, bool scales, uint32_t seed) {
    std::mt19937                          rng(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    moebius::VqWeights                    w;
    w.out = out, w.in = in, w.dim = dim, w.bits = bits, w.group_cols = 256;
    w.rows_per_codebook = std::max(1, group_size / 256);
    w.codebooks.resize((size_t)w.n_codebooks() * w.k() * dim);
    for (auto& v : w.codebooks) v = f16r(0.05f * u(rng));
    w.codes.resize((size_t)out * (in / dim));
    for (auto& c : w.codes) c = (uint16_t)(rng() % w.k());
    for (int o = 0; o < out && scales; ++o) w.scales.push_back(f16r(1.0f + 0.5f * u(rng)));
    return w;
}

double time_forward(const moebius::Linear& l, const std::vector<float>& x, int n, std::vector<float>& y, double min_s) {
    l.forward(x.data(), n, y.data()); // warm caches and the OpenMP pool
    int        calls = 0;
    const auto t0    = clk::now();
    double     el    = 0;
    do {
        l.forward(x.data(), n, y.data());
        ++calls;
        el = std::chrono::duration<double>(clk::now() - t0).count();
    } while (el < min_s || calls < 3);
    return el / calls;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

} // namespace

int main(int argc, char** argv) {
    int              out = 1408, in = 2048, rounds = 7, threads = 0;
    double           min_ms = 200;
    std::vector<int> tokens = {1, 64};
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (i + 1 >= argc) usage("missing value for " + a);
        const char* v = argv[++i];
        if (a == "--out") out = std::atoi(v);
        else if (a == "--in") in = std::atoi(v);
        else if (a == "--rounds") rounds = std::atoi(v);
        else if (a == "--threads") threads = std::atoi(v);
        else if (a == "--min-ms") min_ms = std::atof(v);
        else if (a == "--tokens") {
            tokens.clear();
            for (std::string s = v; !s.empty();) {
                const size_t c = s.find(',');
                tokens.push_back(std::atoi(s.substr(0, c).c_str()));
                s = c == std::string::npos ? "" : s.substr(c + 1);
            }
        } else usage("unknown option " + a);
    }
    if (out <= 0 || in <= 0 || in % 256 || rounds <= 0 || tokens.empty())
        usage("need out > 0, in a multiple of 256, rounds > 0");
    for (int n : tokens)
        if (n <= 0) usage("token counts must be positive");
    if (threads > 0) omp_set_num_threads(threads);

    std::mt19937                    rng(1);
    std::normal_distribution<float> nd(0, 0.02f);
    std::vector<float>              w((size_t)out * in); // (out, in)
    for (auto& v : w) v = nd(rng);

    struct Fmt {
        const char*                      name;
        std::unique_ptr<moebius::Linear> lin;
    };
    std::vector<Fmt> fmts;
    fmts.push_back({"dense f32", std::make_unique<moebius::DenseLinear>(in, out, w)});
    fmts.push_back({"vq D2 2-bit", std::make_unique<moebius::VqLinear>(random_vq(out, in, 2, 2, 4096, false, 2))});
    fmts.push_back({"vq D1 2-bit", std::make_unique<moebius::VqLinear>(random_vq(out, in, 1, 2, 512, false, 3))});
    fmts.push_back({"vq D2 3-bit", std::make_unique<moebius::VqLinear>(random_vq(out, in, 2, 3, 16384, false, 4))});
    fmts.push_back({"vq D4 2-bit", std::make_unique<moebius::VqLinear>(random_vq(out, in, 4, 2, 65536, false, 5))});
    fmts.push_back({"vq D2 2-bit scales", std::make_unique<moebius::VqLinear>(random_vq(out, in, 2, 2, 4096, true, 6))});

    std::printf("W (%d, %d), %d OpenMP thread(s), %d rounds of >= %.0f ms\n", out, in, omp_get_max_threads(), rounds,
                min_ms);
    for (const auto& f : fmts)
        std::printf("  %-20s %6.3f bits/weight\n", f.name, 8.0 * f.lin->storage_bytes() / ((double)out * in));
    for (int n : tokens) {
        std::mt19937                    xr(7 + n);
        std::normal_distribution<float> xd(0, 1);
        std::vector<float>              x((size_t)n * in), y((size_t)n * out);
        for (auto& v : x) v = xd(xr);
        std::vector<std::vector<double>> t(fmts.size());
        for (int r = 0; r < rounds; ++r)
            for (size_t f = 0; f < fmts.size(); ++f) t[f].push_back(time_forward(*fmts[f].lin, x, n, y, min_ms / 1e3));
        std::printf("\nn = %d tokens\n  %-20s %12s %10s %14s %18s\n", n, "format", "best ms", "GFLOP/s", "best/dense",
                    "median round ratio");
        const double best_dense = *std::min_element(t[0].begin(), t[0].end());
        for (size_t f = 0; f < fmts.size(); ++f) {
            const double        best = *std::min_element(t[f].begin(), t[f].end());
            std::vector<double> ratio;
            for (int r = 0; r < rounds; ++r) ratio.push_back(t[f][r] / t[0][r]);
            std::printf("  %-20s %12.4f %10.2f %14.2f %18.2f\n", fmts[f].name, best * 1e3,
                        2.0 * n * out * in / best / 1e9, best / best_dense, median(ratio));
        }
    }
    return 0;
}
