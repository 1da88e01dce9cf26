#pragma once
// Paths used by the test suites. Everything a test needs ships inside the repository (resources/ and tests/data/),
// so the suite runs from a plain clone; ../shared/fixtures is the origin of those copies.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <unistd.h>

namespace moebius::test {

inline std::filesystem::path resources_dir() { return MOEBIUS_RESOURCES_DIR; }
inline std::filesystem::path data_dir() { return MOEBIUS_TEST_DATA_DIR; }
inline std::filesystem::path bundled_model() { return resources_dir() / "models" / "tiny-qwen2moe"; }
inline std::filesystem::path random_model(const std::string& family) {
    return data_dir() / "models" / ("tiny-" + family + "-random");
}
inline std::filesystem::path reference(const std::string& name) { return data_dir() / "reference" / name; }
inline std::string read_text(const std::filesystem::path& p) {
    std::ifstream      f(p, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}
// The scratch directories of this process, removed when it exits (a full ctest run otherwise leaves ~1 GB in /tmp,
// the binary checkpoints alone 274 MB a run). MOEBIUS_KEEP_TEST_DIRS=1 keeps them for a look after a failure.
struct ScratchDirs {
    std::set<std::filesystem::path> dirs;
    ~ScratchDirs() {
        if (const char* keep = std::getenv("MOEBIUS_KEEP_TEST_DIRS"); keep && *keep && std::string(keep) != "0") return;
        for (const auto& d : dirs) {
            std::error_code ec; // best effort: a test may have made a file read-only or the directory may be gone
            std::filesystem::remove_all(d, ec);
        }
    }
};
inline ScratchDirs& scratch_dirs() {
    static ScratchDirs s;
    return s;
}

// A fresh, empty scratch directory, unique per process (ctest runs tests in parallel processes).
inline std::filesystem::path scratch_dir(const std::string& name) {
    auto p = std::filesystem::temp_directory_path() / ("moebius-test-" + name + "-" + std::to_string(::getpid()));
    std::filesystem::remove_all(p);
    std::filesystem::create_directories(p);
    scratch_dirs().dirs.insert(p);
    return p;
}

} // namespace moebius::test
