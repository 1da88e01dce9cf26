// Backward pass against an independent PyTorch implementation (tests/data/reference/tiny-qwen2moe.grads.json): the
// mean next-token loss over 128 tokens, the L2 norm of the gradient of every weight, and three full gradients.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "engine/cpu/backward.h"
#include "engine/cpu/model.h"
#include "test_util.h"

using namespace moebius;
using json = nlohmann::json;

namespace {

double l2(const std::vector<float>& v) {
    double s = 0;
    for (float f : v) s += (double)f * f;
    return std::sqrt(s);
}

} // namespace

TEST(BackwardReference, Qwen2MoeBundled) {
    const json ref   = json::parse(test::read_text(test::reference("tiny-qwen2moe.grads.json")));
    auto       model = Model::load(test::bundled_model());
    const auto ids   = ref["input_ids"].get<std::vector<int32_t>>();
    ASSERT_EQ(ids.size(), 128u);

    const Gradients g = loss_and_gradients(*model, ids);
    EXPECT_EQ(g.n_predictions, 127);
    const double ref_loss = ref["loss"].get<double>();
    EXPECT_NEAR(g.loss, ref_loss, 1e-4 * ref_loss);

    // Same tensors as the reference, and every norm within 1e-3 relative.
    const auto& norms = ref["grad_norms"];
    EXPECT_EQ(g.weights.size(), norms.size());
    double worst = 0;
    std::string worst_name;
    for (const auto& [name, value] : norms.items()) {
        auto it = g.weights.find(name);
        if (it == g.weights.end()) {
            ADD_FAILURE() << "no gradient for " << name;
            continue;
        }
        const double r = value.get<double>(), got = l2(it->second);
        const double rel = std::fabs(got - r) / r;
        EXPECT_LE(rel, 1e-3) << name << ": |g| " << got << " vs reference " << r;
        if (rel > worst) worst = rel, worst_name = name;
    }
    RecordProperty("max_norm_rel_error", std::to_string(worst));
    std::printf("max relative grad-norm error %.3g (%s), loss %.9g vs %.9g\n", worst, worst_name.c_str(), g.loss,
                ref_loss);

    // Full gradients: ‖g − g_ref‖ / ‖g_ref‖ ≤ 1e-3. The reference stores them rounded to 6 decimals, a rounding noise
    // of rms 1e-6/√12 per entry: 2.2e-3 of ‖g_ref‖ for the down_proj (32768 entries of rms 1.3e-4) and 3.4e-4 for the
    // q_proj, so the raw difference measures the file's precision. Ours is rounded to the same grid first; an entry
    // then differs only where our error moves it across a rounding boundary, which makes the check stricter.
    constexpr double k_quantum = 1e-6;
    for (const auto& [name, rows] : ref["grads"].items()) {
        auto it = g.weights.find(name);
        ASSERT_NE(it, g.weights.end()) << name;
        const std::vector<float>& got = it->second;
        double                    diff = 0, diff_raw = 0, nref = 0;
        size_t                    i = 0;
        for (const auto& row : rows)
            for (const auto& v : row) {
                ASSERT_LT(i, got.size()) << name;
                const double r = v.get<double>(), q = std::round(got[i] / k_quantum) * k_quantum;
                diff += (q - r) * (q - r);
                diff_raw += (got[i] - r) * (got[i] - r);
                nref += r * r;
                ++i;
            }
        EXPECT_EQ(i, got.size()) << name;
        const double rel = std::sqrt(diff / nref);
        EXPECT_LE(rel, 1e-3) << name;
        std::printf("full gradient %s: relative error %.3g after rounding to the reference's grid, %.3g raw\n",
                    name.c_str(), rel, std::sqrt(diff_raw / nref));
    }
}
