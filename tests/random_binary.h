#pragma once
// Random structured binary weights (engine/cpu/binary_linear.h) in any of the binarizers' layouts, for the Vulkan
// kernel tests and benchmarks: random signs and split bits, about one salient column in `salient_every`, f16-exact
// scales of a trained weight's magnitude (~0.01–0.06), means and column scales when the layout has them.
#include "engine/cpu/binary_linear.h"

#include <cmath>
#include <random>

namespace moebius::test {

inline BinaryWeights random_binary_weights(int out, int in, int salient_groups, bool mean, bool col_scale,
                                           std::mt19937& rng, int salient_every = 10) {
    BinaryWeights w;
    w.out = out, w.in = in, w.block = std::min(128, in);
    w.salient_groups = salient_groups, w.has_mean = mean, w.has_col_scale = col_scale;
    w.salient.assign(in, 0);
    if (salient_groups > 0)
        for (auto& s : w.salient) s = rng() % salient_every == 0;
    w.split.resize((size_t)out * in);
    w.sign1.resize(w.split.size());
    w.sign2.resize(w.split.size());
    for (size_t i = 0; i < w.split.size(); ++i) {
        w.split[i] = rng() % 2;
        w.sign1[i] = rng() % 2 ? 1 : -1;
        w.sign2[i] = rng() % 2 ? 1 : -1;
    }
    auto f16 = [&](int lo, int hi, int e) { return std::ldexp((float)(lo + (int)(rng() % (hi - lo))), e); };
    w.row_scale.resize((size_t)out * w.n_blocks() * w.n_slots());
    for (auto& v : w.row_scale) v = f16(16, 128, -11);
    if (mean) {
        w.row_mean.resize((size_t)out * w.n_blocks() * w.n_groups());
        for (auto& v : w.row_mean) v = f16(-32, 32, -12);
    }
    if (col_scale) {
        w.col_scale.resize((size_t)in * w.n_slots());
        for (auto& v : w.col_scale) v = f16(256, 1024, -9);
    }
    return w;
}

} // namespace moebius::test
