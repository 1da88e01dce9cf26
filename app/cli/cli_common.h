#pragma once
// Helpers shared by the subcommands.
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "app/cli/args.h"

namespace moebius::cli {

// MODEL positional (index 0) or the bundled model; errors if more positionals than expected.
std::filesystem::path model_arg(const Args& args, size_t max_positionals = 1);
// Prints exactly one JSON object on stdout.
void print_json(const nlohmann::ordered_json& j);
// Applies --threads (default: all cores).
void apply_threads(const Args& args);
std::string read_file_text(const std::filesystem::path& p);

} // namespace moebius::cli
