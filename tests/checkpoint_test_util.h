#pragma once
// Helpers for tests that corrupt a written checkpoint and check the loader's refusal.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/core/error.h"
#include "engine/cpu/model.h"
#include "test_util.h"

namespace moebius::test {

// Rewrites dir/config.json through `edit`.
inline void edit_config(const std::filesystem::path& dir, const std::function<void(nlohmann::ordered_json&)>& edit) {
    auto cfg = nlohmann::ordered_json::parse(read_text(dir / "config.json"));
    edit(cfg);
    std::ofstream(dir / "config.json") << cfg.dump(2);
}

// Model::load(dir) must throw FormatError whose message contains every string in `parts`.
inline void expect_load_error(const std::filesystem::path& dir, std::initializer_list<std::string> parts) {
    try {
        Model::load(dir);
        ADD_FAILURE() << "expected FormatError";
    } catch (const FormatError& e) {
        const std::string msg = e.what();
        for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
    }
}

} // namespace moebius::test
