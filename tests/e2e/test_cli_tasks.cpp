// End-to-end tests of `moebius tasks`: JSON output on the bundled cloze task and clean failure on a bad task file.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include "e2e/cli_runner.h"
#include "test_util.h"

using json = nlohmann::json;

namespace {

using TasksCliRun = moebius::test::CliRun;
inline TasksCliRun run_tasks_cli(const std::string& args) { return moebius::test::run_cli(args); }

} // namespace

TEST(CliTasks, JsonOnBundledClozeTask) {
    TasksCliRun r = run_tasks_cli("tasks --limit 10 --json --threads 1");
    ASSERT_EQ(r.code, 0) << r.err;
    json j = json::parse(r.out); // exactly one object: parse rejects trailing content
    EXPECT_EQ(j["n"], 10);
    EXPECT_GE(j["acc"].get<double>(), 0.0);
    EXPECT_LE(j["acc"].get<double>(), 1.0);
    EXPECT_GE(j["acc_norm"].get<double>(), 0.0);
    EXPECT_LE(j["acc_norm"].get<double>(), 1.0);
    EXPECT_NE(j["tasks"].get<std::string>().find("kjv-cloze-test.jsonl"), std::string::npos);
    EXPECT_GT(j["seconds"].get<double>(), 0.0);
}

TEST(CliTasks, MalformedTaskFileFailsWithOneLine) {
    auto bad = moebius::test::scratch_dir("cli-tasks-bad") / "bad.jsonl";
    std::ofstream(bad) << "{\"context\": \"a\", \"choices\": [\" b\"], \"gold\": 0}\n"
                       << "{\"context\": \"a\", \"gold\": 0}\n";
    TasksCliRun r = run_tasks_cli("tasks --json --tasks '" + bad.string() + "'");
    EXPECT_NE(r.code, 0);
    EXPECT_LT(r.code, 128) << "crashed: " << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(bad.string() + ": line 2"), std::string::npos) << r.err;
}
