#pragma once
// First Vulkan ops, each the GPU twin of a CPU reference kernel (engine/cpu/ops.h, BinaryLinear::forward) and each
// covered by a parity test (tests/unit/test_vulkan_ops.cpp). Ops record into a CommandList; nothing runs until
// CommandList::submit_and_wait(), so several ops go in one submit with barriers between them.
#include "engine/cpu/binary_linear.h"
#include "engine/vulkan/device.h"

namespace moebius::vk {

// Up to this many tokens the GEMVs load each weight once for all tokens; above, f32 uses the tiled GEMM
// (llama.cpp's switch point, kernels.md §7.2).
constexpr int k_gemv_max_tokens = 8;

// y (n, out) = x (n, in) · Wᵀ, W (out, in), all f32.
void matmul_wt(Device& dev, CommandList& cl, const Buffer& x, int n, int in, const Buffer& w, int out, Buffer& y);
// y (n, d) = g ⊙ x / sqrt(mean(x²) + eps) per row; y may be x.
void rmsnorm(Device& dev, CommandList& cl, const Buffer& x, int n, int d, const Buffer& g, float eps, Buffer& y);
// h (n·d) = silu(g) ⊙ u.
void silu_mul(Device& dev, CommandList& cl, const Buffer& g, const Buffer& u, int64_t total, Buffer& h);

// A BinaryLinear's packed tensors (docs/FORMAT.md "binary") on the device, bytes as they are in the checkpoint,
// plus a per-column rank among the salient columns (the column → signs2 index the CPU decoder also precomputes).
struct BinaryTensors {
    int    in = 0, out = 0, block = 0, salient_groups = 1;
    bool   has_mean = true, has_col_scale = false;
    int    row_bytes = 0, row_bytes2 = 0;
    Buffer split, signs, signs2; // (out, row_bytes), (out, row_bytes), (out, row_bytes2) LSB-first bit rows
    Buffer sal_idx;              // (in) int32 rank of a salient column, −1 elsewhere
    Buffer row_scales;           // (out, n_blocks, n_slots) f16
    Buffer row_means;            // (out, n_blocks, n_groups) f16; a 4-byte dummy binding without means
    Buffer col_scales;           // (in, n_slots) f16; a 4-byte dummy binding without column scales

    static BinaryTensors upload(Device& dev, const BinaryLinear& lin);
};

// The device's buffer-copy bandwidth in GB/s (bytes read + written per second), the best of `reps` copies of
// `bytes`: the practical memory roofline `moebius bench` compares kernels with. Timestamps when the queue has them,
// else host time around each submit.
double copy_bandwidth_gbps(Device& dev, uint64_t bytes = 64ull << 20, int reps = 5);

// y (n, out) = x (n, in) · Wᵀ with W decoded from `w` exactly as BinaryLinear decodes it.
void binary_matmul_wt(Device& dev, CommandList& cl, const BinaryTensors& w, const Buffer& x, int n, Buffer& y);

} // namespace moebius::vk
