#pragma once
// Locates the bundled resources (tiny model, corpus, tasks) for a source build and an installed package alike.
#include <filesystem>

namespace moebius {

// First of: $MOEBIUS_RESOURCES, <exe dir>/../share/moebius, the source tree's resources/.
std::filesystem::path resources_dir();
std::filesystem::path default_model_dir(); // resources_dir()/models/tiny-qwen2moe

} // namespace moebius
