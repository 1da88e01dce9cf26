#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "engine/core/sampling.h"

using namespace moebius;

TEST(Sampling, GreedyPicksArgmaxLowestOnTies) {
    SamplingParams p; // temperature 0
    Sampler        s(p);
    std::vector<float> l{0.1f, 2.f, 2.f, -1.f};
    EXPECT_EQ(s.sample(l.data(), 4, {}), 1);
}

TEST(Sampling, RepetitionPenaltyFollowsTransformers) {
    SamplingParams p;
    p.repetition_penalty = 2.f;
    Sampler              s(p);
    std::vector<float>   l{3.f, 2.5f, -1.f};
    std::vector<int32_t> hist{0, 0, 2};
    // logit 3 -> 1.5 (divided), -1 -> -2 (multiplied): token 1 wins.
    EXPECT_EQ(s.sample(l.data(), 3, hist), 1);
    EXPECT_FLOAT_EQ(l[0], 1.5f);
    EXPECT_FLOAT_EQ(l[2], -2.f);
}

TEST(Sampling, TopKAndTopPRestrictSupport) {
    std::vector<float> base{5.f, 4.f, 3.f, 0.f, -1.f};
    SamplingParams     p;
    p.temperature = 1.f;
    p.top_k       = 2;
    p.seed        = 7;
    Sampler s(p);
    for (int i = 0; i < 200; ++i) {
        auto l = base;
        EXPECT_LT(s.sample(l.data(), 5, {}), 2);
    }
    SamplingParams q;
    q.temperature = 1.f;
    q.top_p       = 0.5f; // p(0) = 0.66 > 0.5: only token 0 survives
    Sampler s2(q);
    for (int i = 0; i < 50; ++i) {
        auto l = base;
        EXPECT_EQ(s2.sample(l.data(), 5, {}), 0);
    }
}

TEST(Sampling, MinPAndDistribution) {
    // Two tokens with probabilities 0.75/0.25 at temperature 1: empirical frequency within 3 sigma.
    std::vector<float> base{std::log(3.f), 0.f};
    SamplingParams     p;
    p.temperature = 1.f;
    p.seed        = 123;
    Sampler s(p);
    int     n = 4000, zeros = 0;
    for (int i = 0; i < n; ++i) {
        auto l = base;
        zeros += s.sample(l.data(), 2, {}) == 0;
    }
    EXPECT_NEAR(zeros / (double)n, 0.75, 3 * std::sqrt(0.75 * 0.25 / n));
    p.min_p = 0.5f; // 0.25 < 0.5 * 0.75: token 1 removed
    Sampler s2(p);
    for (int i = 0; i < 100; ++i) {
        auto l = base;
        EXPECT_EQ(s2.sample(l.data(), 2, {}), 0);
    }
}

TEST(Sampling, SeedIsReproducible) {
    std::vector<float> base(50);
    for (int i = 0; i < 50; ++i) base[i] = (float)((i * 37) % 11) * 0.3f;
    SamplingParams p;
    p.temperature = 0.8f;
    p.seed        = 42;
    Sampler a(p), b(p);
    for (int i = 0; i < 100; ++i) {
        auto la = base, lb = base;
        EXPECT_EQ(a.sample(la.data(), 50, {}), b.sample(lb.data(), 50, {}));
    }
}
