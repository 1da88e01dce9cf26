#pragma once
// Runs the real `moebius` binary for end-to-end tests: stdout and stderr captured separately, exit code decoded.
#include <array>
#include <cstdio>
#include <string>
#include <sys/wait.h>

#include "test_util.h"

namespace moebius::test {

struct CliRun {
    int         code;
    std::string out, err;
};

// args is a shell-quoted argument string.
inline CliRun run_cli(const std::string& args) {
    auto        dir     = scratch_dir("cli");
    auto        errfile = dir / "stderr.txt";
    std::string cmd     = std::string("'") + MOEBIUS_CLI_PATH + "' " + args + " 2>'" + errfile.string() + "'";
    FILE*       p       = popen(cmd.c_str(), "r");
    CliRun      r;
    std::array<char, 65536> buf;
    size_t                  got;
    while ((got = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), got);
    int status = pclose(p);
    r.code     = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.err      = read_text(errfile);
    return r;
}

} // namespace moebius::test
