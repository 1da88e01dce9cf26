#include "engine/cpu/session.h"

#include "engine/core/error.h"

namespace moebius {

void CpuSession::reset(int n_ctx) {
    if (n_ctx <= 0) throw InputError("the context must hold at least one token");
    // The cache only grows: a loop that alternates short and long requests allocates once.
    if (n_ctx > cache_.n_ctx) cache_ = model_.new_cache(n_ctx);
    cache_.n_past = 0;
}

void CpuSession::rewind(int n_past) {
    if (n_past < 0 || n_past > cache_.n_past) throw InputError("cannot rewind the cache forward");
    cache_.n_past = n_past;
}

} // namespace moebius
