#include "engine/core/progress.h"

#include "engine/core/error.h"

namespace moebius {

void report_progress(const ProgressFn& fn, double fraction, const std::string& stage) {
    if (fn && !fn(Progress{fraction, stage})) throw Cancelled();
}

} // namespace moebius
