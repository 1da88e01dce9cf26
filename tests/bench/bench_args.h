#pragma once
// What the benchmark executables share: their command line (one positional MODEL, "--name value" integer options,
// "--flag" switches; an unknown option or a missing value exits 2 with a message) and random token windows.
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <random>
#include <string>
#include <utility>

#include "engine/core/model_config.h"
#include "quantizer/calibration/calibration_data.h"

namespace moebius::bench {

inline void parse_args(const char* prog, int argc, char** argv, std::string& model_dir,
                       std::initializer_list<std::pair<const char*, int*>> ints,
                       std::initializer_list<std::pair<const char*, bool*>> flags) {
    for (int i = 1; i < argc; ++i) {
        const std::string a    = argv[i];
        bool              done = false;
        for (const auto& [name, v] : ints)
            if (a == name) {
                if (i + 1 >= argc) {
                    std::fprintf(stderr, "%s: %s needs a value\n", prog, a.c_str());
                    std::exit(2);
                }
                *v   = std::atoi(argv[++i]);
                done = true;
            }
        for (const auto& [name, v] : flags)
            if (a == name) *v = done = true;
        if (done) continue;
        if (a.rfind("--", 0) == 0) {
            std::fprintf(stderr, "%s: unknown option %s\n", prog, a.c_str());
            std::exit(2);
        }
        model_dir = a;
    }
}

// `samples` windows of `seqlen` uniformly random token ids (fixed seed).
inline quant::CalibrationSet random_windows(const ModelSpec& spec, int samples, int seqlen) {
    quant::CalibrationSet set;
    set.seqlen = seqlen;
    std::mt19937_64                        rng(1);
    std::uniform_int_distribution<int32_t> tok(0, spec.n_vocab - 1);
    for (int s = 0; s < samples; ++s) {
        std::vector<int32_t> ids(seqlen);
        for (auto& v : ids) v = tok(rng);
        set.samples.push_back(std::move(ids));
    }
    return set;
}

} // namespace moebius::bench
