#pragma once
// Progress reporting for long synchronous jobs. The callback returns false to cancel; the job then throws
// moebius::Cancelled after cleaning up (no partial output is left behind).
#include <functional>
#include <string>

namespace moebius {

struct Progress {
    double      fraction = 0; // 0..1 over the whole job
    std::string stage;        // what is being done, e.g. "layer 3/24: experts"
};
using ProgressFn = std::function<bool(const Progress&)>;

// Calls fn (if set) and throws Cancelled when it asks to stop.
void report_progress(const ProgressFn& fn, double fraction, const std::string& stage);

} // namespace moebius
