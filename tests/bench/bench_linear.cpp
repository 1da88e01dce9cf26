// bench_linear: forward time of one linear layer in each CPU weight format.
//
//   bench_linear [--out 1408] [--in 2048] [--tokens 1,64] [--salient 0.05] [--rounds 7] [--min-ms 200] [--threads T]
//
// W is (out, in) = (1408, 2048) by default: a Qwen1.5-MoE-A2.7B expert's gate/up projection. Formats: dense f32
// (DenseLinear), 4-bit groups of 128 (NbitLinear), and BinaryLinear with block 128 in two configurations: BiLLM-like
// (salient_groups 1, means, no column scales) and ARB-RC-like (salient_groups 2, no means, column scales), each with a
// fraction `--salient` of salient columns; when `in` is a multiple of 256, VqLinear codebook GEMVs and a KbvqLinear
// (2-bit D2 residual + rank-4 shared basis, 8-bit coefficients, γ, β). Weights and inputs are random (fixed seeds): the
// kernels' speed does not depend on the values. For each token count the formats are timed interleaved, round by round
// (one timing of each format per round), so load from other processes hits all of them alike; a timing is the mean over
// as many calls as fit in --min-ms. Reported: the best round of each format and its ratio to dense, plus the median of
// the per-round ratios (the number to trust on a shared machine).
#include "engine/core/dtype.h"
#include "engine/cpu/binary_linear.h"
#include "engine/cpu/kbvq_linear.h"
#include "engine/cpu/linear.h"
#include "engine/cpu/nbit_linear.h"
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
    std::fprintf(stderr, "bench_linear: %s\nusage: bench_linear [--out N] [--in N] [--tokens 1,64] [--salient F] "
                         "[--rounds R] [--min-ms MS] [--threads T]\n",
                 msg.c_str());
    std::exit(2);
}

float f16r(float v) { return moebius::f16_to_f32(moebius::f32_to_f16(v)); }

moebius::BinaryWeights random_binary(int out, int in, int block, int salient_groups, bool mean, bool col,
                                     double salient_frac, uint32_t seed) {
    std::mt19937                          rng(seed);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    moebius::BinaryWeights                w;
    w.out = out, w.in = in, w.block = block, w.salient_groups = salient_groups, w.has_mean = mean,
    w.has_col_scale = col;
    for (int j = 0; j < in; ++j) w.salient.push_back(u(rng) < salient_frac);
    const size_t oi = (size_t)out * in;
    w.split.resize(oi);
    w.sign1.resize(oi);
    w.sign2.resize(oi);
    for (size_t i = 0; i < oi; ++i) {
        w.split[i] = u(rng) < 0.3f;
        w.sign1[i] = u(rng) < 0.5f ? 1 : -1;
        w.sign2[i] = u(rng) < 0.5f ? 1 : -1;
    }
    for (int i = 0; i < out * w.n_blocks() * w.n_slots(); ++i) w.row_scale.push_back(f16r(0.01f + 0.05f * u(rng)));
    for (int i = 0; i < out * w.n_blocks() * w.n_groups() && mean; ++i) w.row_mean.push_back(f16r(0.01f * u(rng)));
    for (int i = 0; i < in * w.n_slots() && col; ++i) w.col_scale.push_back(f16r(0.5f + u(rng)));
    return w;
}

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

// Mean seconds per forward over as many calls as fit in min_s (at least 3).
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
    double           salient = 0.05, min_ms = 200;
    std::vector<int> tokens  = {1, 64};
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (i + 1 >= argc) usage("missing value for " + a);
        const char* v = argv[++i];
        if (a == "--out") out = std::atoi(v);
        else if (a == "--in") in = std::atoi(v);
        else if (a == "--rounds") rounds = std::atoi(v);
        else if (a == "--threads") threads = std::atoi(v);
        else if (a == "--salient") salient = std::atof(v);
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
    if (out <= 0 || in <= 0 || in % 128 || rounds <= 0 || salient < 0 || salient > 1 || tokens.empty())
        usage("need out > 0, in a multiple of 128, rounds > 0, 0 <= salient <= 1");
    for (int n : tokens)
        if (n <= 0) usage("token counts must be positive");
    if (threads > 0) omp_set_num_threads(threads);

    std::mt19937                    rng(1);
    std::normal_distribution<float> nd(0, 0.02f);
    std::vector<float>              w((size_t)out * in); // (out, in)
    for (auto& v : w) v = nd(rng);
    std::vector<uint8_t> codes((size_t)out * in);
    for (auto& c : codes) c = (uint8_t)(rng() & 15);
    std::vector<float> scales((size_t)out * (in / 128)), zeros(scales.size());
    for (size_t i = 0; i < scales.size(); ++i) scales[i] = f16r(0.001f + 0.001f * (float)(rng() % 16)), zeros[i] = 8;

    struct Fmt {
        const char*                      name;
        std::unique_ptr<moebius::Linear> lin;
    };
    std::vector<Fmt> fmts;
    fmts.push_back({"dense f32", std::make_unique<moebius::DenseLinear>(in, out, w)});
    fmts.push_back({"nbit 4-bit g128", moebius::NbitLinear::from_codes(in, out, 4, 128, codes.data(), scales.data(),
                                                                         zeros.data())});
    fmts.push_back({"binary BiLLM-like", std::make_unique<moebius::BinaryLinear>(
                                             random_binary(out, in, 128, 1, true, false, salient, 2))});
    fmts.push_back({"binary ARB-RC-like", std::make_unique<moebius::BinaryLinear>(
                                              random_binary(out, in, 128, 2, false, true, salient, 3))});
    if (in % 256 == 0) {
        using moebius::VqLinear;
        fmts.push_back({"vq D2 2-bit", std::make_unique<VqLinear>(random_vq(out, in, 2, 2, 4096, false, 4))});
        fmts.push_back({"vq D1 2-bit", std::make_unique<VqLinear>(random_vq(out, in, 1, 2, 512, false, 5))});
        fmts.push_back({"vq D2 3-bit", std::make_unique<VqLinear>(random_vq(out, in, 2, 3, 16384, false, 6))});
        fmts.push_back({"vq D4 2-bit", std::make_unique<VqLinear>(random_vq(out, in, 4, 2, 65536, false, 7))});
        fmts.push_back({"vq D2 2-bit scales", std::make_unique<VqLinear>(random_vq(out, in, 2, 2, 4096, true, 8))});
        // KBVQ: the D2 2-bit residual + a rank-4 shared basis with 8-bit coefficients + γ and β (counted as the
        // group owner, i.e. with the shared arrays).
        auto sh  = std::make_shared<moebius::KbvqShared>();
        sh->rank = 4;
        for (int i = 0; i < out * 4; ++i) sh->basis.push_back(f16r(0.1f * nd(rng)));
        for (int i = 0; i < out; ++i) sh->gamma.push_back(f16r(1.0f + nd(rng))), sh->beta.push_back(f16r(nd(rng)));
        moebius::KbvqPacked kp;
        kp.rank = 4, kp.is_owner = true, kp.owner = "bench";
        for (int i = 0; i < 4 * in; ++i) kp.coef.push_back((int8_t)(rng() % 255 - 127));
        for (int k = 0; k < 4; ++k) kp.coef_scales.push_back(moebius::f32_to_f16(0.001f));
        moebius::KbvqPacked kp1 = kp; // rank 1, for the shared-codebook layout below
        kp1.rank = 1, kp1.is_owner = false;
        kp1.coef.resize(in), kp1.coef_scales.resize(1);
        fmts.push_back({"kbvq D2 2-bit r4", std::make_unique<moebius::KbvqLinear>(random_vq(out, in, 2, 2, 4096, false, 9),
                                                                                   std::move(kp), sh)});
        // What `--method kbvq --bits 2` writes: D = 4, one codebook shared by the layer's experts (a group member:
        // the codebook is counted with the owner), rank 1.
        auto sh1  = std::make_shared<moebius::KbvqShared>();
        sh1->rank = 1;
        for (int i = 0; i < out; ++i) sh1->basis.push_back(f16r(0.1f * nd(rng)));
        for (int i = 0; i < out; ++i) sh1->gamma.push_back(f16r(1.0f + nd(rng))), sh1->beta.push_back(f16r(nd(rng)));
        moebius::VqWeights r4 = random_vq(out, in, 4, 2, out * in, false, 10);
        r4.group_cols = in, r4.rows_per_codebook = out;
        r4.codebooks.resize((size_t)r4.k() * 4);
        sh1->codebooks = r4.codebooks;
        fmts.push_back({"kbvq D4 2-bit r1 sh", std::make_unique<moebius::KbvqLinear>(r4, std::move(kp1), sh1)});
    }

    std::printf("W (%d, %d), %d OpenMP thread(s), salient fraction %.3f, %d rounds of >= %.0f ms\n", out, in,
                omp_get_max_threads(), salient, rounds, min_ms);
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
            const double       best = *std::min_element(t[f].begin(), t[f].end());
            std::vector<double> ratio;
            for (int r = 0; r < rounds; ++r) ratio.push_back(t[f][r] / t[0][r]);
            std::printf("  %-20s %12.4f %10.2f %14.2f %18.2f\n", fmts[f].name, best * 1e3,
                        2.0 * n * out * in / best / 1e9, best / best_dense, median(ratio));
        }
    }
    return 0;
}
