#include "engine/vulkan/ops.h"

#include <algorithm>
#include <chrono>

namespace moebius::vk {

namespace {

// Row-per-workgroup kernels: rows spread over grid x and y (each ≤ 65535 workgroups on many devices).
struct Grid2 {
    uint32_t x, y;
};
Grid2 row_grid(int64_t rows) {
    const uint32_t x = (uint32_t)std::min<int64_t>(std::max<int64_t>(rows, 1), 65535);
    return {x, (uint32_t)((rows + x - 1) / x)};
}

uint32_t ceil_div(int64_t a, int64_t b) { return (uint32_t)((a + b - 1) / b); }

template <class T> Buffer upload_bytes(Device& dev, const std::vector<T>& v) {
    // Shaders read 32-bit words: round the buffer up to whole words (the tail bytes are never used).
    const uint64_t bytes = v.size() * sizeof(T);
    Buffer         b     = dev.create_buffer(std::max<uint64_t>(4, (bytes + 3) / 4 * 4));
    if (bytes) dev.upload(b, v.data(), bytes);
    return b;
}

} // namespace

void matmul_wt(Device& dev, CommandList& cl, const Buffer& x, int n, int in, const Buffer& w, int out, Buffer& y) {
    struct {
        uint32_t n, in, out;
    } pc{(uint32_t)n, (uint32_t)in, (uint32_t)out};
    if (n <= k_gemv_max_tokens) {
        const auto& p = dev.pipeline("gemv_f32", 3, sizeof pc, {dev.reduction_workgroup()});
        const Grid2 g = row_grid(out);
        cl.dispatch(p, {x, w, y}, pc, g.x, g.y, ceil_div(n, k_gemv_max_tokens));
    } else {
        const auto& p = dev.pipeline("gemm_f32", 3, sizeof pc);
        cl.dispatch(p, {x, w, y}, pc, ceil_div(out, 16), ceil_div(n, 16));
    }
}

void rmsnorm(Device& dev, CommandList& cl, const Buffer& x, int n, int d, const Buffer& g, float eps, Buffer& y) {
    struct {
        uint32_t n, d;
        float    eps;
    } pc{(uint32_t)n, (uint32_t)d, eps};
    const auto& p  = dev.pipeline("rmsnorm", 3, sizeof pc, {dev.reduction_workgroup()});
    const Grid2 gr = row_grid(n);
    cl.dispatch(p, {x, g, y}, pc, gr.x, gr.y);
    cl.annotate((uint64_t)n * d * 8 + (uint64_t)d * 4);
}

void silu_mul(Device& dev, CommandList& cl, const Buffer& g, const Buffer& u, int64_t total, Buffer& h) {
    const uint32_t wg = 64;
    struct {
        uint32_t total;
    } pc{(uint32_t)total};
    const auto& p  = dev.pipeline("silu_mul", 3, sizeof pc, {wg});
    const Grid2 gr = row_grid(ceil_div(total, wg));
    cl.dispatch(p, {g, u, h}, pc, gr.x, gr.y);
}

BinaryTensors BinaryTensors::upload(Device& dev, const BinaryLinear& lin) {
    const BinaryPacked& pk = lin.packed();
    BinaryTensors       t;
    t.in             = lin.in_features();
    t.out            = lin.out_features();
    t.block          = pk.block;
    t.salient_groups = pk.salient_groups;
    t.has_mean       = pk.has_mean;
    t.has_col_scale  = pk.has_col_scale;
    t.row_bytes      = (int)BinaryLinear::bit_bytes(t.in);
    t.row_bytes2     = (int)BinaryLinear::bit_bytes(lin.n_salient());
    std::vector<int32_t> idx((size_t)t.in, -1); // (in)
    int                  k = 0;
    for (int j = 0; j < t.in; ++j)
        if ((pk.salient[(size_t)j >> 3] >> (j & 7)) & 1) idx[(size_t)j] = k++;
    t.split      = upload_bytes(dev, pk.split);
    t.signs      = upload_bytes(dev, pk.signs);
    t.signs2     = upload_bytes(dev, pk.signs2);
    t.sal_idx    = upload_bytes(dev, idx);
    t.row_scales = upload_bytes(dev, pk.row_scales);
    t.row_means  = upload_bytes(dev, pk.row_means);
    t.col_scales = upload_bytes(dev, pk.col_scales);
    return t;
}

void binary_matmul_wt(Device& dev, CommandList& cl, const BinaryTensors& w, const Buffer& x, int n, Buffer& y) {
    struct {
        uint32_t n, in, out, block, row_bytes, row_bytes2;
    } pc{(uint32_t)n, (uint32_t)w.in, (uint32_t)w.out, (uint32_t)w.block, (uint32_t)w.row_bytes,
         (uint32_t)w.row_bytes2};
    // The format's variants are specialization constants: one pipeline each, no per-element branches on them.
    const auto& p = dev.pipeline("binary_gemv", 9, sizeof pc,
                                 {dev.reduction_workgroup(), (uint32_t)w.salient_groups, w.has_mean ? 1u : 0u,
                                  w.has_col_scale ? 1u : 0u});
    const Grid2 g = row_grid(w.out);
    cl.dispatch(p, {x, y, w.split, w.signs, w.signs2, w.sal_idx, w.row_scales, w.row_means, w.col_scales}, pc, g.x,
                g.y, ceil_div(n, k_gemv_max_tokens));
}

double copy_bandwidth_gbps(Device& dev, uint64_t bytes, int reps) {
    bytes        = std::min<uint64_t>(bytes, dev.max_buffer_bytes()) / 4 * 4;
    Buffer a     = dev.create_buffer(bytes), b = dev.create_buffer(bytes);
    double best  = 0;
    for (int r = 0; r < reps; ++r) {
        CommandList cl(dev);
        const bool  timed = cl.enable_timing();
        cl.copy(a, b, bytes);
        const auto t0 = std::chrono::steady_clock::now();
        cl.submit_and_wait();
        const double s = timed ? cl.timings().at(0).seconds
                               : std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (r > 0 && s > 0) best = std::max(best, 2.0 * (double)bytes / s * 1e-9); // the first copy warms up
    }
    return best;
}

} // namespace moebius::vk
