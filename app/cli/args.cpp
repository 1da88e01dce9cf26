#include "app/cli/args.h"

#include "engine/core/error.h"

#include <cerrno>
#include <cstdlib>

namespace moebius::cli {

Args::Args(const std::vector<std::string>& argv, const std::set<std::string>& flags,
           const std::set<std::string>& options) {
    for (size_t i = 0; i < argv.size(); ++i) {
        const std::string& a = argv[i];
        if (a.size() > 2 && a.compare(0, 2, "--") == 0) {
            std::string name = a.substr(2), value;
            bool        has_value = false;
            if (auto eq = name.find('='); eq != std::string::npos) {
                value     = name.substr(eq + 1);
                name      = name.substr(0, eq);
                has_value = true;
            }
            if (flags.count(name)) {
                if (has_value) throw InputError("option --" + name + " takes no value");
                flags_.insert(name);
            } else if (options.count(name)) {
                if (!has_value) {
                    if (i + 1 >= argv.size()) throw InputError("option --" + name + " needs a value");
                    value = argv[++i];
                }
                opts_[name] = value;
            } else {
                throw InputError("unknown option --" + name);
            }
        } else {
            pos_.push_back(a);
        }
    }
}

std::optional<std::string> Args::get(const std::string& name) const {
    auto it = opts_.find(name);
    if (it == opts_.end()) return std::nullopt;
    return it->second;
}

std::string Args::get_or(const std::string& name, const std::string& dflt) const { return get(name).value_or(dflt); }

long long Args::get_int(const std::string& name, long long dflt, long long lo, long long hi) const {
    auto v = get(name);
    if (!v) return dflt;
    char* end = nullptr;
    errno     = 0;
    long long r = std::strtoll(v->c_str(), &end, 10);
    if (v->empty() || *end || errno) throw InputError("--" + name + ": '" + *v + "' is not an integer");
    if (r < lo || r > hi)
        throw InputError("--" + name + ": " + *v + " is outside " + std::to_string(lo) + ".." + std::to_string(hi));
    return r;
}

double Args::get_double(const std::string& name, double dflt, double lo, double hi) const {
    auto v = get(name);
    if (!v) return dflt;
    char* end = nullptr;
    errno     = 0;
    double r  = std::strtod(v->c_str(), &end);
    if (v->empty() || *end || errno) throw InputError("--" + name + ": '" + *v + "' is not a number");
    if (!(r >= lo && r <= hi))
        throw InputError("--" + name + ": " + *v + " is outside " + std::to_string(lo) + ".." + std::to_string(hi));
    return r;
}

} // namespace moebius::cli
