// bench_cejd: what MoBiE's shared basis (the `cejd` format) costs in a MoE block at decode.
//
//   bench_cejd [--hidden 2048] [--ff 1408] [--experts 60] [--top-k 4] [--rank 16] [--rounds 7] [--min-ms 200]
//
// Defaults are a Qwen1.5-MoE-A2.7B layer. Every routed expert's gate/up is `cejd` input side (binary residual + 8-bit
// C (ff, r) · shared 8-bit B (r, hidden)), down is output side (binary residual + shared B (hidden, r) · 8-bit C (r, ff)).
// One decode token through the routed experts (gate, up, SiLU·mul, down, weighted sum) is timed two ways:
//   per-expert: every selected expert applies the whole CejdLinear (so B runs once per expert and projection);
//   shared:     the MoE block's path (Model::moe_ffn): z = B x once for gate and once for up, each expert runs its
//               residual and C, down's C h are summed with the router weights and B is applied once.
// The basis GEMVs are counted by wrapping B, and reported per token next to the time and the residuals' time alone.
// Weights are random (fixed seeds): the kernels' speed does not depend on the values.
#include "engine/cpu/binary_linear.h"
#include "engine/cpu/cejd_linear.h"
#include "engine/cpu/nbit_linear.h"
#include "engine/cpu/ops.h"
#include "quantizer/methods/uniform_quant.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <functional>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

using namespace moebius;
using clk = std::chrono::steady_clock;

namespace {

// Counts the calls that reach the shared basis.
class Counted final : public Linear {
public:
    explicit Counted(std::unique_ptr<Linear> l) : Linear(l->in_features(), l->out_features()), l_(std::move(l)) {}
    void forward(const float* x, int n, float* y) const override {
        ++calls;
        l_->forward(x, n, y);
    }
    std::vector<float> dequantize() const override { return l_->dequantize(); }
    size_t             storage_bytes() const override { return l_->storage_bytes(); }
    std::string        format() const override { return l_->format(); }
    mutable std::atomic<int64_t> calls{0};

private:
    std::unique_ptr<Linear> l_;
};

std::vector<float> rnd(size_t n, uint32_t seed) {
    std::mt19937                    g(seed);
    std::normal_distribution<float> d(0, 1);
    std::vector<float>              v(n);
    for (auto& x : v) x = d(g);
    return v;
}

std::unique_ptr<Linear> int8(int out, int in, uint32_t seed) {
    quant::UniformConfig c;
    c.bits  = 8;
    c.group = in % 128 == 0 ? 128 : -1;
    return quant::make_nbit_linear(quant::rtn_quantize(rnd((size_t)out * in, seed).data(), out, in, c));
}

std::unique_ptr<Linear> binary(int out, int in, uint32_t seed) {
    return std::make_unique<BinaryLinear>(quant::rtn_binarize(rnd((size_t)out * in, seed).data(), out, in, 128));
}

} // namespace

int main(int argc, char** argv) {
    int H = 2048, F = 1408, E = 60, K = 4, r = 16, rounds = 7;
    double min_ms = 200;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (i + 1 >= argc) {
            std::fprintf(stderr, "bench_cejd: %s needs a value\n", a.c_str());
            return 2;
        }
        const char* v = argv[++i];
        if (a == "--hidden") H = std::atoi(v);
        else if (a == "--ff") F = std::atoi(v);
        else if (a == "--experts") E = std::atoi(v);
        else if (a == "--top-k") K = std::atoi(v);
        else if (a == "--rank") r = std::atoi(v);
        else if (a == "--rounds") rounds = std::atoi(v);
        else if (a == "--min-ms") min_ms = std::atof(v);
        else {
            std::fprintf(stderr, "bench_cejd: unknown option %s\n", a.c_str());
            return 2;
        }
    }
    if (H <= 0 || F <= 0 || E <= 0 || K <= 0 || K > E || r <= 0 || rounds <= 0 || H % 128 || F % 128) {
        std::fprintf(stderr, "bench_cejd: sizes must be positive, top-k ≤ experts, hidden and ff multiples of 128\n");
        return 2;
    }
    std::shared_ptr<Counted> Bg = std::make_shared<Counted>(int8(r, H, 1)), Bu = std::make_shared<Counted>(int8(r, H, 2)),
                             Bd = std::make_shared<Counted>(int8(H, r, 3));
    std::vector<std::array<std::unique_ptr<CejdLinear>, 3>> ex(E);
    for (int e = 0; e < E; ++e) {
        const uint32_t s = 100 + 10 * e;
        ex[e][0] = std::make_unique<CejdLinear>(binary(F, H, s), int8(F, r, s + 1), Bg, true, "g", e == 0);
        ex[e][1] = std::make_unique<CejdLinear>(binary(F, H, s + 2), int8(F, r, s + 3), Bu, true, "u", e == 0);
        ex[e][2] = std::make_unique<CejdLinear>(binary(H, F, s + 4), int8(r, F, s + 5), Bd, false, "d", e == 0);
    }
    const auto        x = rnd(H, 7);
    std::vector<int>  sel(K);
    std::vector<float> w(K, 1.0f / K);
    for (int k = 0; k < K; ++k) sel[k] = (k * 7919) % E;
    std::vector<float> g(F), u(F), h(F), y(H), out(H), z(r), t(F), acc(r), cz(r);

    auto per_expert = [&] {
        std::fill(out.begin(), out.end(), 0.f);
        for (int k = 0; k < K; ++k) {
            auto& e = ex[sel[k]];
            e[0]->forward(x.data(), 1, g.data());
            e[1]->forward(x.data(), 1, u.data());
            cpu::silu_mul(g.data(), u.data(), 1, F, h.data());
            e[2]->forward(h.data(), 1, y.data());
            for (int d = 0; d < H; ++d) out[d] += w[k] * y[d];
        }
    };
    std::vector<float> zg(r), zu(r);
    auto shared = [&] {
        std::fill(out.begin(), out.end(), 0.f);
        std::fill(acc.begin(), acc.end(), 0.f);
        Bg->forward(x.data(), 1, zg.data());
        Bu->forward(x.data(), 1, zu.data());
        for (int k = 0; k < K; ++k) {
            auto& e = ex[sel[k]];
            for (int p = 0; p < 2; ++p) {
                float* dst = p ? u.data() : g.data();
                e[p]->residual().forward(x.data(), 1, dst);
                e[p]->coef().forward(p ? zu.data() : zg.data(), 1, t.data());
                for (int i = 0; i < F; ++i) dst[i] += t[i];
            }
            cpu::silu_mul(g.data(), u.data(), 1, F, h.data());
            e[2]->residual().forward(h.data(), 1, y.data());
            e[2]->coef().forward(h.data(), 1, cz.data());
            for (int d = 0; d < H; ++d) out[d] += w[k] * y[d];
            for (int i = 0; i < r; ++i) acc[i] += w[k] * cz[i];
        }
        Bd->forward(acc.data(), 1, y.data());
        for (int d = 0; d < H; ++d) out[d] += y[d];
    };
    auto residual_only = [&] {
        for (int k = 0; k < K; ++k) {
            auto& e = ex[sel[k]];
            e[0]->residual().forward(x.data(), 1, g.data());
            e[1]->residual().forward(x.data(), 1, u.data());
            cpu::silu_mul(g.data(), u.data(), 1, F, h.data());
            e[2]->residual().forward(h.data(), 1, y.data());
        }
    };
    // The two paths compute the same block output (up to rounding).
    per_expert();
    const std::vector<float> ref = out;
    shared();
    double md = 0, mr = 0;
    for (int d = 0; d < H; ++d) md = std::max(md, (double)std::abs(out[d] - ref[d])), mr = std::max(mr, (double)std::abs(ref[d]));

    struct Path {
        const char*           name;
        std::function<void()> fn;
        double                best = 1e30;
        double                basis_calls = 0;
    };
    std::vector<Path> paths = {{"per-expert", per_expert}, {"shared", shared}, {"residuals only", residual_only}};
    for (int rd = 0; rd < rounds; ++rd)
        for (auto& p : paths) {
            const int64_t c0 = Bg->calls + Bu->calls + Bd->calls;
            int64_t       n  = 0;
            const auto    t0 = clk::now();
            double        ms = 0;
            while (ms < min_ms) {
                p.fn();
                ++n;
                ms = std::chrono::duration<double, std::milli>(clk::now() - t0).count();
            }
            p.best        = std::min(p.best, ms / n);
            p.basis_calls = (double)(Bg->calls + Bd->calls + Bu->calls - c0) / n;
        }
    std::printf("MoE block decode, hidden %d, ff %d, %d experts, top-%d, rank %d (paths agree to %.1e relative)\n", H, F,
                E, K, r, md / mr);
    std::printf("%-16s %12s %22s\n", "path", "ms / token", "basis GEMVs / token");
    for (const auto& p : paths) std::printf("%-16s %12.4f %22.1f\n", p.name, p.best, p.basis_calls);
    return 0;
}
