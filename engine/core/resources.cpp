#include "engine/core/resources.h"

#include <cstdlib>
#include <system_error>

namespace moebius {

std::filesystem::path resources_dir() {
    namespace fs = std::filesystem;
    if (const char* env = std::getenv("MOEBIUS_RESOURCES"); env && *env) return env;
    std::error_code ec;
    fs::path        exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) {
        fs::path installed = exe.parent_path().parent_path() / "share" / "moebius";
        if (fs::exists(installed / "models", ec)) return installed;
    }
    return MOEBIUS_RESOURCES_DIR;
}

std::filesystem::path default_model_dir() { return resources_dir() / "models" / "tiny-qwen2moe"; }

} // namespace moebius
