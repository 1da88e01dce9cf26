#pragma once
// Minimal command-line parsing for the `moebius` subcommands: positionals, `--key value`, `--key=value` and flags.
// Every option must be declared, so a typo is an error instead of being ignored.
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace moebius::cli {

class Args {
public:
    // flags: options without a value; options: options taking a value.
    Args(const std::vector<std::string>& argv, const std::set<std::string>& flags, const std::set<std::string>& options);
    const std::vector<std::string>& positional() const { return pos_; }
    bool                            flag(const std::string& name) const { return flags_.count(name) > 0; }
    std::optional<std::string>      get(const std::string& name) const;
    std::string                     get_or(const std::string& name, const std::string& dflt) const;
    long long                       get_int(const std::string& name, long long dflt, long long lo, long long hi) const;
    double                          get_double(const std::string& name, double dflt, double lo, double hi) const;

private:
    std::vector<std::string>           pos_;
    std::set<std::string>              flags_;
    std::map<std::string, std::string> opts_;
};

} // namespace moebius::cli
