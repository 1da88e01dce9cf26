#include "app/cli/cli_common.h"

#include "engine/core/error.h"
#include "engine/core/resources.h"
#include "engine/cpu/parallel.h"

#include <fstream>
#include <iostream>
#include <sstream>

namespace moebius::cli {

std::filesystem::path model_arg(const Args& args, size_t max_positionals) {
    const auto& pos = args.positional();
    if (pos.size() > max_positionals) throw InputError("unexpected argument '" + pos[max_positionals] + "'");
    if (pos.empty()) return default_model_dir();
    return pos[0];
}

void print_json(const nlohmann::ordered_json& j) {
    // Invalid UTF-8 in model output must not abort the dump: replace it.
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
}

void apply_threads(const Args& args) { set_num_threads((int)args.get_int("threads", 0, 0, 4096)); }

std::string read_file_text(const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    if (!f) throw NotFoundError(p.string() + ": cannot open");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

} // namespace moebius::cli
