#include "engine/vulkan/model_ops.h"

#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "engine/cpu/binary_linear.h"
#include "engine/cpu/nbit_linear.h"
#include "engine/cpu/vq_linear.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

namespace moebius::vk {

namespace {

uint32_t ceil_div(int64_t a, int64_t b) { return (uint32_t)((a + b - 1) / b); }

// Rows over grid x and y (each ≤ 65535 workgroups on many devices), as ops.cpp does.
std::pair<uint32_t, uint32_t> row_grid(int64_t rows) {
    const uint32_t x = (uint32_t)std::min<int64_t>(std::max<int64_t>(rows, 1), 65535);
    return {x, (uint32_t)((rows + x - 1) / x)};
}

void check_grid(Device& dev, int64_t n, const char* what) {
    if (n > (int64_t)dev.info().max_workgroup_count[1])
        throw UnsupportedError(std::string("vulkan: ") + what + ": " + std::to_string(n) +
                               " tokens exceed the device's grid limit");
}

const Buffer& or_dummy(Device& dev, const Buffer* b) { return b ? *b : dev.dummy(); }

// A kernel's specialization constants: its own (ids 0..9) then the weight format's (qweight.glsl, ids 10..14).
std::vector<uint32_t> with_weight_spec(std::vector<uint32_t> own, const QWeights& w) {
    own.resize(10, 0);
    own.insert(own.end(), {(uint32_t)w.vq_dim, w.vq_scaled ? 1u : 0u, (uint32_t)w.bin_salient_groups,
                           w.bin_mean ? 1u : 0u, w.bin_col_scale ? 1u : 0u});
    return own;
}

// A second weight set's (qweight_second.glsl): FORMAT2, BITS2 (ids 15, 16), its format constants (ids 20..24).
std::vector<uint32_t> with_second_spec(std::vector<uint32_t> spec, const QWeights* w) {
    if (!w) return spec;
    spec.resize(15, 0);
    spec.insert(spec.end(), {(uint32_t)w->format, (uint32_t)std::max(w->bits, 1), 0, 0, 0});
    spec.insert(spec.end(), {(uint32_t)w->vq_dim, w->vq_scaled ? 1u : 0u, (uint32_t)w->bin_salient_groups,
                             w->bin_mean ? 1u : 0u, w->bin_col_scale ? 1u : 0u});
    return spec;
}

// Workgroup of the row-reduction kernels. A CPU device (lavapipe) runs a workgroup as SIMD-width slices switched at
// every barrier, so the fewer slices the better: one subgroup, no shared-memory tree beyond it. GPUs keep the
// device's reduction workgroup (≥ 64 lanes to hide memory latency).
uint32_t row_wg(Device& dev) {
    if (dev.info().type == "cpu") return std::max<uint32_t>(dev.info().subgroup_size, 8);
    return dev.reduction_workgroup();
}

template <class T> Buffer upload_words(Device& dev, const std::vector<T>& v, uint64_t slack = 0) {
    const uint64_t bytes = v.size() * sizeof(T), size = std::max<uint64_t>(4, (bytes + slack + 3) / 4 * 4);
    // Every buffer of a weight set is one binding: refuse it here, at upload, rather than at the first dispatch.
    // Weight sets were split to fit before they get here (place_rows); what still does not fit cannot be split.
    if (size > dev.max_binding_bytes())
        throw UnsupportedError("vulkan: a weight set of " + std::to_string(bytes >> 10) +
                               " KiB exceeds the device's largest binding (" +
                               std::to_string(dev.max_binding_bytes() >> 10) +
                               " KiB)");
    Buffer b = dev.create_buffer(size);
    if (bytes) dev.upload(b, v.data(), bytes);
    return b;
}

// Rows [r0, r0 + rows) of every matrix of a (n_mats, out, row_elems) array.
template <class T>
std::vector<T> rows_of(const std::vector<T>& v, int n_mats, int out, int64_t row_elems, int r0, int rows) {
    if (r0 == 0 && rows == out) return v;
    std::vector<T> s;
    s.reserve((size_t)n_mats * rows * row_elems);
    for (int m = 0; m < n_mats; ++m) {
        const auto b = v.begin() + ((int64_t)m * out + r0) * row_elems;
        s.insert(s.end(), b, b + (int64_t)rows * row_elems);
    }
    return s;
}

// Uploads a set as one part, or split by rows into parts whose every buffer fits one binding. row_bytes_max: the
// largest per-row size of one matrix among the set's arrays; slack: bytes a buffer carries beyond its rows (+ the
// rounding to whole words). make(r0, rows) uploads rows [r0, r0 + rows) of every matrix. Parts start at multiples of
// `align` rows; other_bytes(rows), when given, is the size of a buffer that does not grow row by row (vq codebooks).
void place_rows(Device& dev, QWeights& q, uint64_t row_bytes_max, uint64_t slack,
                const std::function<QWeights::Part(int, int)>& make, int align = 1,
                const std::function<uint64_t(int)>& other_bytes = {}) {
    const uint64_t lim = dev.max_binding_bytes() & ~uint64_t(3), per = (uint64_t)q.n_mats * row_bytes_max;
    auto           fits = [&](int rows) {
        return per * rows + slack + 4 <= lim && (!other_bytes || other_bytes(rows) + 4 <= lim);
    };
    int rows = q.out;
    if (!fits(rows)) {
        rows = (int)std::min<uint64_t>(q.out, (lim - std::min(lim, slack + 4)) / std::max<uint64_t>(per, 1)) / align * align;
        while (rows > 0 && !fits(rows)) rows -= align;
        if (rows <= 0)
            throw UnsupportedError("vulkan: " + std::to_string(align) + " row(s) of every matrix of a weight set (" +
                                   std::to_string(per * align) +
                                   " bytes and more), or the side data every part carries, exceed the device's "
                                   "largest binding (" + std::to_string(lim) + " bytes)");
    }
    q.part_rows = rows;
    q.more.clear();
    for (int r0 = 0; r0 < q.out; r0 += rows) {
        QWeights::Part p = make(r0, std::min(rows, q.out - r0));
        if (r0 == 0) {
            q.w      = std::move(p.w);
            q.scales = std::move(p.scales);
            q.zeros  = std::move(p.zeros);
        } else {
            q.more.push_back(std::move(p));
        }
    }
}

// The nbit layout: codes (rows, row_bytes), f16 scales and u8 zeros (rows, n_groups), split to fit.
void place_nbit(Device& dev, QWeights& q, const std::vector<uint8_t>& codes, const std::vector<uint16_t>& scales,
                const std::vector<uint8_t>& zeros) {
    place_rows(dev, q, std::max<uint64_t>(q.row_bytes, 2 * (uint64_t)q.n_groups), 4, [&](int r0, int rows) {
        // A code may straddle into the word after the last row: one slack word.
        return QWeights::Part{upload_words(dev, rows_of(codes, q.n_mats, q.out, q.row_bytes, r0, rows), 4),
                              upload_words(dev, rows_of(scales, q.n_mats, q.out, q.n_groups, r0, rows)),
                              upload_words(dev, rows_of(zeros, q.n_mats, q.out, q.n_groups, r0, rows))};
    });
}

// A format the runner dequantizes must be a plain linear map: forward(x) = x · dequantize()ᵀ. A format whose forward
// adds something else (a bias, a transform outside the weight) would be silently wrong on the GPU, so it is refused
// here (UnsupportedError: the caller falls back to the CPU). Checked on one probe row, to f32 rounding.
void check_linear_map(const Linear& l, const std::vector<float>& w) {
    const int          in = l.in_features(), out = l.out_features();
    std::vector<float> x(in), y(out);
    for (int j = 0; j < in; ++j) x[j] = (float)((j * 2654435761u) % 1000) / 500.f - 1.f;
    l.forward(x.data(), 1, y.data());
    for (int o = 0; o < out; ++o) {
        double ref = 0, mag = 0;
        for (int j = 0; j < in; ++j) {
            ref += (double)w[(size_t)o * in + j] * x[j];
            mag += std::fabs((double)w[(size_t)o * in + j] * x[j]);
        }
        if (std::fabs(y[o] - ref) > 1e-4 * mag + 1e-6)
            throw UnsupportedError("vulkan: format '" + l.format() +
                                   "': its forward is not x·Wᵀ of its dequantized weight, and the runner has no kernel "
                                   "for it");
    }
}

} // namespace

QWeights QWeights::upload(Device& dev, const std::vector<const Linear*>& linears, int out) {
    MOEBIUS_ASSERT(!linears.empty() && out > 0);
    QWeights q;
    q.in         = linears[0]->in_features();
    int64_t rows = 0;
    for (const Linear* l : linears) {
        MOEBIUS_ASSERT(l->in_features() == q.in);
        rows += l->out_features();
    }
    MOEBIUS_ASSERT(rows % out == 0);
    q.out       = out;
    q.n_mats    = (int)(rows / out);
    q.part_rows = out;

    const auto* first  = dynamic_cast<const NbitLinear*>(linears[0]);
    bool        nbit   = first != nullptr;
    bool        all_fp = true;
    for (const Linear* l : linears) {
        const auto* nb = dynamic_cast<const NbitLinear*>(l);
        nbit           = nbit && nb && nb->bits() == first->bits() && nb->group() == first->group();
        all_fp         = all_fp && l->format() == "f32";
    }
    if (nbit) {
        q.format    = WeightFormat::Nbit;
        q.bits      = first->bits();
        q.group     = first->group();
        q.row_bytes = (int)NbitLinear::row_bytes(q.in, q.bits);
        q.n_groups  = first->n_groups();
        std::vector<uint8_t>  codes;  // (rows, row_bytes)
        std::vector<uint16_t> scales; // (rows, n_groups)
        std::vector<uint8_t>  zeros;  // (rows, n_groups)
        codes.reserve((size_t)rows * q.row_bytes);
        for (const Linear* l : linears) {
            const auto* nb = static_cast<const NbitLinear*>(l);
            codes.insert(codes.end(), nb->packed_codes().begin(), nb->packed_codes().end());
            scales.insert(scales.end(), nb->scales_f16().begin(), nb->scales_f16().end());
            zeros.insert(zeros.end(), nb->zeros().begin(), nb->zeros().end());
        }
        place_nbit(dev, q, codes, scales, zeros);
        return q;
    }
    const auto* bin0 = dynamic_cast<const BinaryLinear*>(linears[0]);
    bool        bin  = bin0 != nullptr;
    for (const Linear* l : linears) {
        const auto* b = dynamic_cast<const BinaryLinear*>(l);
        bin = bin && b && b->block() == bin0->block() && b->salient_groups() == bin0->salient_groups() &&
              b->packed().has_mean == bin0->packed().has_mean &&
              b->packed().has_col_scale == bin0->packed().has_col_scale;
    }
    if (bin) {
        // Repacked into 32-bit words (shaders/qweight.glsl FORMAT 3); bits and f16 values are the checkpoint's.
        q.format             = WeightFormat::Binary;
        q.group              = bin0->block();
        q.bin_salient_groups = bin0->salient_groups();
        q.bin_mean           = bin0->packed().has_mean;
        q.bin_col_scale      = bin0->packed().has_col_scale;
        const int rw = (q.in + 31) / 32, n_slots = bin0->n_slots();
        int       rw2 = 0;
        for (const Linear* l : linears)
            rw2 = std::max(rw2, (static_cast<const BinaryLinear*>(l)->n_salient() + 31) / 32);
        q.row_bytes = rw;
        q.n_groups  = rw2;
        const int64_t row_words = 2 * rw + rw2;
        const int64_t rs_row    = (int64_t)(q.in / q.group) * (n_slots + (q.bin_mean ? bin0->n_groups() : 0));
        std::vector<uint32_t>              planes((size_t)rows * row_words, 0);
        std::vector<uint16_t>              rs;      // per row: scales (n_blocks, n_slots) then means (n_blocks, n_groups)
        std::vector<std::vector<uint32_t>> regions; // per linear: its region (below)
        std::vector<int64_t>               lin_r0;  // per linear: its first global row
        int64_t                            r0 = 0;
        for (const Linear* l : linears) {
            const auto&   bl  = static_cast<const BinaryLinear&>(*l);
            const auto&   b   = bl.packed();
            const int     out = l->out_features(), nb = q.in / q.group, ng = bin0->n_groups();
            const int64_t rb = BinaryLinear::bit_bytes(q.in), rb2 = BinaryLinear::bit_bytes(bl.n_salient());
            for (int o = 0; o < out; ++o) {
                uint8_t* row = (uint8_t*)(planes.data() + (r0 + o) * row_words);
                std::memcpy(row, b.split.data() + o * rb, rb);
                std::memcpy(row + rw * 4, b.signs.data() + o * rb, rb);
                if (rb2) std::memcpy(row + 2 * rw * 4, b.signs2.data() + o * rb2, rb2);
                rs.insert(rs.end(), b.row_scales.begin() + (int64_t)o * nb * n_slots,
                          b.row_scales.begin() + (int64_t)(o + 1) * nb * n_slots);
                if (q.bin_mean)
                    rs.insert(rs.end(), b.row_means.begin() + (int64_t)o * nb * ng,
                              b.row_means.begin() + (int64_t)(o + 1) * nb * ng);
            }
            // Region: sal_idx (in) int32, the salient bitmap (rw words), then column scales (in, n_slots) f16, two
            // per word, only when the format has them (the kernels read them only then; every part carries its
            // linears' regions, so they are kept small).
            std::vector<uint32_t> reg;
            int                   rank = 0;
            std::vector<uint32_t> bitmap(rw, 0);
            for (int j = 0; j < q.in; ++j) {
                const bool s = !b.salient.empty() && ((b.salient[j >> 3] >> (j & 7)) & 1);
                reg.push_back(s ? (uint32_t)rank++ : 0xffffffffu);
                if (s) bitmap[j >> 5] |= 1u << (j & 31);
            }
            reg.insert(reg.end(), bitmap.begin(), bitmap.end());
            if (q.bin_col_scale) {
                std::vector<uint16_t> cs = b.col_scales;
                cs.resize((size_t)q.in * n_slots + 1, 0); // even: whole words
                for (size_t i = 0; i + 1 < cs.size(); i += 2) reg.push_back(cs[i] | (uint32_t)cs[i + 1] << 16);
            }
            regions.push_back(std::move(reg));
            lin_r0.push_back(r0);
            r0 += out;
        }
        // qz of the part holding rows [p0, p0 + n) of every matrix: each of its rows' region offset (rows in the
        // part's order), then the regions of the linears those rows belong to, each once. A part is a binary set of
        // its own, so qweight.glsl reads it unchanged with part-local rows.
        // With aux null only the size in words is computed.
        auto aux_of = [&](int p0, int n, std::vector<uint32_t>* aux) {
            std::vector<int>      used; // linears of the part, in order
            std::vector<uint32_t> off(regions.size(), 0);
            uint64_t              words = (uint64_t)q.n_mats * n;
            if (aux) aux->assign(words, 0);
            for (int m = 0; m < q.n_mats; ++m) {
                const int64_t g0 = (int64_t)m * q.out + p0;
                // The linears overlapping global rows [g0, g0 + n); they are stacked contiguously.
                size_t li = std::upper_bound(lin_r0.begin(), lin_r0.end(), g0) - lin_r0.begin() - 1;
                for (; li < regions.size() && lin_r0[li] < g0 + n; ++li) {
                    if (used.empty() || used.back() != (int)li) {
                        used.push_back((int)li);
                        off[li] = (uint32_t)words;
                        words += regions[li].size();
                    }
                    if (!aux) continue;
                    const int64_t a = std::max(g0, lin_r0[li]),
                                  e = std::min(g0 + n, li + 1 < regions.size() ? lin_r0[li + 1] : rows);
                    for (int64_t g = a; g < e; ++g) (*aux)[(size_t)((int64_t)m * n + (g - g0))] = off[li];
                }
            }
            if (aux)
                for (int li : used) aux->insert(aux->end(), regions[li].begin(), regions[li].end());
            return words;
        };
        // The largest qz of parts of n rows: it does not grow row by row (regions come whole), so place_rows checks
        // it apart.
        auto aux_bytes = [&](int n) {
            uint64_t mx = 0;
            for (int p0 = 0; p0 < q.out; p0 += n) mx = std::max(mx, aux_of(p0, std::min(n, q.out - p0), nullptr) * 4);
            return mx;
        };
        place_rows(
            dev, q, std::max<uint64_t>(row_words * 4, rs_row * 2), 0,
            [&](int p0, int n) {
                return QWeights::Part{upload_words(dev, rows_of(planes, q.n_mats, q.out, row_words, p0, n)),
                                      upload_words(dev, rows_of(rs, q.n_mats, q.out, rs_row, p0, n)),
                                      [&] {
                                          std::vector<uint32_t> aux;
                                          aux_of(p0, n, &aux);
                                          return upload_words(dev, aux);
                                      }()};
            },
            1, aux_bytes);
        return q;
    }
    const auto* vq0   = dynamic_cast<const VqLinear*>(linears[0]);
    bool        vq    = vq0 != nullptr;
    for (const Linear* l : linears) {
        const auto* v = dynamic_cast<const VqLinear*>(l);
        // One linear per matrix, or several stacked into one matrix (q | k | v) whose codebook row blocks line up:
        // then codebook (r / R) · (in / G) + j / G of the stack is the linear's own.
        const bool rows_ok = v && (l->out_features() == out ||
                                   (rows == out && l->out_features() % v->rows_per_codebook() == 0));
        vq = vq && v && rows_ok && v->dim() == vq0->dim() && v->bits() == vq0->bits() &&
             v->group_cols() == vq0->group_cols() && v->rows_per_codebook() == vq0->rows_per_codebook() &&
             v->has_scales() == vq0->has_scales();
    }
    if (vq) {
        q.format    = WeightFormat::Vq;
        q.vq_dim    = vq0->dim();
        q.bits      = vq0->bits() * vq0->dim();
        q.group     = vq0->group_cols();
        q.n_groups  = vq0->rows_per_codebook();
        q.row_bytes = (int)VqLinear::row_bytes(q.in, vq0->dim(), vq0->bits());
        q.vq_scaled = vq0->has_scales();
        std::vector<uint8_t>  codes;     // (rows, row_bytes)
        std::vector<uint16_t> codebooks; // (n_mats · codebooks, K, D)
        std::vector<uint16_t> scales;    // (rows)
        for (const Linear* l : linears) {
            // The decoded f16 codebooks, whether stored in f16 or 8 bits (docs/FORMAT.md "vq").
            const auto& cb16 = static_cast<const VqLinear*>(l)->codebooks_f16();
            codebooks.insert(codebooks.end(), cb16.begin(), cb16.end());
            for (const PackedTensor& t : l->packed_tensors()) {
                if (t.suffix == ".vq_codes") codes.insert(codes.end(), t.bytes.begin(), t.bytes.end());
                auto* h = (const uint16_t*)t.bytes.data();
                if (t.suffix == ".vq_scales") scales.insert(scales.end(), h, h + t.bytes.size() / 2);
            }
        }
        // Split by rows in whole codebook row blocks (R rows): a part's codebooks are its blocks of every matrix,
        // (n_mats, blocks, in / G, K, D), and qweight.glsl's codebook index holds within the part.
        const int      R = q.n_groups, n_cg = q.in / q.group, nb = (q.out + R - 1) / R;
        const uint64_t cb = (uint64_t)n_cg << q.bits; // centroids of one row block's codebooks (D halves each)
        auto           blocks_of = [&](int r0, int rows) {
            std::vector<uint16_t> s;
            const int             b0 = r0 / R, b1 = (r0 + rows + R - 1) / R;
            for (int m = 0; m < q.n_mats; ++m) {
                const auto b = codebooks.begin() + (int64_t)(m * nb + b0) * cb * q.vq_dim;
                s.insert(s.end(), b, b + (int64_t)(b1 - b0) * cb * q.vq_dim);
            }
            return s;
        };
        MOEBIUS_ASSERT(codebooks.size() == (size_t)q.n_mats * nb * cb * q.vq_dim);
        place_rows(
            dev, q, std::max<uint64_t>(q.row_bytes, 2), 4,
            [&](int r0, int rows) {
                // An index may straddle into the word after the last row: one slack word.
                return QWeights::Part{upload_words(dev, rows_of(codes, q.n_mats, q.out, q.row_bytes, r0, rows), 4),
                                      upload_words(dev, blocks_of(r0, rows)),
                                      upload_words(dev, scales.empty() ? scales
                                                                       : rows_of(scales, q.n_mats, q.out, 1, r0, rows))};
            },
            R, [&](int rows) { return (uint64_t)q.n_mats * ((rows + R - 1) / R) * cb * q.vq_dim * 2; });
        return q;
    }
    if (!all_fp) {
        std::string fmts;
        for (const Linear* l : linears)
            if (fmts.find(l->format()) == std::string::npos) fmts += (fmts.empty() ? "" : ", ") + l->format();
        q.note = "dequantized to f32 at upload: format " + fmts +
                 (first || vq0 ? " (mixed parameters or row counts in one weight set)"
                               : " has no GPU kernel in the runner");
    }
    std::vector<float> w;
    w.reserve((size_t)rows * q.in);
    for (const Linear* l : linears) {
        if (const auto* d = dynamic_cast<const DenseLinear*>(l)) {
            w.insert(w.end(), d->data(), d->data() + (size_t)l->out_features() * q.in);
        } else {
            auto dq = l->dequantize();
            check_linear_map(*l, dq);
            w.insert(w.end(), dq.begin(), dq.end());
        }
    }
    // Half the bytes when no value changes: bf16 checkpoints are bf16-exact; f16 when that is exact instead.
    auto narrow = [&](uint16_t (*to)(float), float (*back)(uint16_t)) {
        std::vector<uint16_t> h(w.size());
        for (size_t i = 0; i < w.size(); ++i) {
            h[i] = to(w[i]);
            const float b = back(h[i]);
            if (std::memcmp(&b, &w[i], 4) != 0) return std::vector<uint16_t>{};
        }
        return h;
    };
    std::vector<uint16_t> h = narrow(f32_to_bf16, bf16_to_f32);
    q.format                = WeightFormat::Bf16;
    if (h.empty()) {
        h        = narrow(f32_to_f16, f16_to_f32);
        q.format = WeightFormat::F16;
    }
    if (h.empty()) q.format = WeightFormat::F32;
    place_rows(dev, q, (uint64_t)q.in * (h.empty() ? 4 : 2), 0, [&](int r0, int rows) {
        return QWeights::Part{h.empty() ? upload_words(dev, rows_of(w, q.n_mats, q.out, q.in, r0, rows))
                                        : upload_words(dev, rows_of(h, q.n_mats, q.out, q.in, r0, rows)),
                              dev.create_buffer(4), dev.create_buffer(4)};
    });
    return q;
}

QWeights QWeights::upload_int8_rows(Device& dev, const std::vector<int8_t>& q, const std::vector<uint16_t>& scales,
                                    int n_mats, int out, int in) {
    const int64_t rows = (int64_t)n_mats * out;
    MOEBIUS_ASSERT(n_mats > 0 && out > 0 && in > 0 && q.size() == (size_t)(rows * in) && scales.size() == (size_t)rows);
    QWeights w;
    w.format    = WeightFormat::Nbit;
    w.in        = in;
    w.out       = out;
    w.n_mats    = n_mats;
    w.part_rows = out;
    w.bits      = 8;
    w.group     = in;
    w.n_groups  = 1;
    w.row_bytes = in;
    std::vector<uint8_t> codes(q.size()); // (rows, in): q + 128
    for (size_t i = 0; i < q.size(); ++i) codes[i] = (uint8_t)(q[i] + 128);
    place_nbit(dev, w, codes, scales, std::vector<uint8_t>((size_t)rows, 128));
    return w;
}

void linear(Device& dev, CommandList& cl, const QWeights& w, int mat, const Buffer& x, int n, Buffer& y,
            const Epilogue& ep) {
    MOEBIUS_ASSERT(mat >= 0 && mat < w.n_mats && n > 0);
    struct {
        uint32_t n, in, out, row_bytes, n_groups, group, mat, gate_stride, gate_off;
        float    eps;
        uint32_t r0, rows;
    } pc{(uint32_t)n, (uint32_t)w.in, (uint32_t)w.out, (uint32_t)w.row_bytes, (uint32_t)w.n_groups,
         (uint32_t)std::max(w.group, 1), (uint32_t)mat, (uint32_t)ep.gate_stride, (uint32_t)ep.gate_off, ep.eps, 0, 0};
    // Tokens per workgroup: all of a decode batch (≤ 8), else chunks of 8.
    const int   tokens = std::min(n, 8);
    const auto& p = dev.pipeline("linear", 9, sizeof pc,
                                 with_weight_spec({row_wg(dev), (uint32_t)w.format, (uint32_t)std::max(w.bits, 1),
                                                   ep.bias ? 1u : 0u, ep.gate ? 1u : 0u, ep.add ? 1u : 0u,
                                                   ep.residual ? 1u : 0u, (uint32_t)tokens, ep.norm ? 1u : 0u},
                                                  w));
    for (int part = 0; part < w.n_parts(); ++part) { // one dispatch per part of a split set
        pc.r0               = (uint32_t)w.part_r0(part);
        pc.rows             = (uint32_t)w.part_n(part);
        const auto [gx, gy] = row_grid(pc.rows);
        cl.dispatch(p, {x, y, or_dummy(dev, ep.bias), or_dummy(dev, ep.add), or_dummy(dev, ep.gate), w.part_w(part),
                        w.part_scales(part), w.part_zeros(part), or_dummy(dev, ep.norm)},
                    pc, gx, gy, ceil_div(n, tokens));
        cl.annotate((w.part_w(part).size() + w.part_scales(part).size() + w.part_zeros(part).size()) / w.n_mats +
                    (uint64_t)n * (w.in + pc.rows * (ep.residual || ep.add ? 2 : 1)) * 4);
    }
}

void embed(Device& dev, CommandList& cl, const Buffer& tokens, int n, const Buffer& table, int d, Buffer& x, int v0,
           int rows) {
    check_grid(dev, n, "embedding");
    struct {
        uint32_t n, d, v0, rows;
    } pc{(uint32_t)n, (uint32_t)d, (uint32_t)v0, (uint32_t)(rows < 0 ? table.size() / 4 / d : rows)};
    const auto& p = dev.pipeline("embed", 3, sizeof pc);
    cl.dispatch(p, {tokens, table, x}, pc, ceil_div(d, 64), (uint32_t)n);
    cl.annotate((uint64_t)n * d * 8);
}

std::vector<float> rope_table(const std::vector<float>& inv_freq, int n_pos) {
    const size_t       half = inv_freq.size();
    std::vector<float> t((size_t)n_pos * half * 2); // (n_pos, half, 2)
    for (int p = 0; p < n_pos; ++p)
        for (size_t i = 0; i < half; ++i) {
            const float a            = (float)p * inv_freq[i]; // f32 angle, as engine/cpu/ops.cpp rope()
            t[(p * half + i) * 2]     = std::cos(a);
            t[(p * half + i) * 2 + 1] = std::sin(a);
        }
    return t;
}

void qk_rope(Device& dev, CommandList& cl, const Buffer& qkv, int n, int n_past, const AttnShape& s, QkNormMode mode,
             const Buffer* qn, const Buffer* kn, float eps, std::optional<float> clip, const Buffer& rope,
             Buffer& q, Buffer& kc, Buffer& vc) {
    if (s.n_head + s.n_head_kv > 512) throw UnsupportedError("vulkan: more than 512 attention heads");
    MOEBIUS_ASSERT(mode == QkNormMode::None || (qn && kn));
    struct {
        uint32_t n, n_past, nh, nkv, hd;
        float    eps, clip;
    } pc{(uint32_t)n, (uint32_t)n_past, (uint32_t)s.n_head, (uint32_t)s.n_head_kv, (uint32_t)s.head_dim, eps,
         clip.value_or(0.f)};
    const auto& p = dev.pipeline("qk_rope", 7, sizeof pc,
                                 {row_wg(dev), (uint32_t)mode, clip ? 1u : 0u});
    const auto [gx, gy] = row_grid(n);
    cl.dispatch(p, {qkv, q, kc, vc, or_dummy(dev, qn), or_dummy(dev, kn), rope}, pc, gx, gy);
    cl.annotate((uint64_t)n * (s.q_dim() + 2 * s.kv_dim()) * 8);
}

void attention(Device& dev, CommandList& cl, const Buffer& q, const Buffer& kc, const Buffer& vc, int n, int n_past,
               const AttnShape& s, int n_ctx, Buffer& scores, Buffer& o) {
    check_grid(dev, n, "attention");
    struct {
        uint32_t n, n_past, nh, nkv, hd, n_ctx;
        float    scale, eps, clip;
    } pc{(uint32_t)n, (uint32_t)n_past, (uint32_t)s.n_head, (uint32_t)s.n_head_kv, (uint32_t)s.head_dim,
         (uint32_t)n_ctx, 1.0f / std::sqrt((float)s.head_dim), 0.f, 0.f};
    const auto& p  = dev.pipeline("attention", 9, sizeof pc, {row_wg(dev)});
    const auto& d0 = dev.dummy();
    cl.dispatch(p, {q, kc, vc, o, scores, d0, d0, d0, d0}, pc, (uint32_t)s.n_head, (uint32_t)n);
    cl.annotate((uint64_t)(n_past + n) * s.kv_dim() * 8 + (uint64_t)n * s.q_dim() * 8);
}

void attention_rope(Device& dev, CommandList& cl, const Buffer& qkv, int n_past, const AttnShape& s,
                    QkNormMode mode, const Buffer* qn, const Buffer* kn, float eps, std::optional<float> clip,
                    const Buffer& rope, Buffer& kc, Buffer& vc, int n_ctx, Buffer& scores, Buffer& o) {
    if (s.head_dim > 256) throw UnsupportedError("vulkan: fused decode attention supports head_dim up to 256");
    MOEBIUS_ASSERT(mode == QkNormMode::None || (qn && kn));
    struct {
        uint32_t n, n_past, nh, nkv, hd, n_ctx;
        float    scale, eps, clip;
    } pc{1u, (uint32_t)n_past, (uint32_t)s.n_head, (uint32_t)s.n_head_kv, (uint32_t)s.head_dim, (uint32_t)n_ctx,
         1.0f / std::sqrt((float)s.head_dim), eps, clip.value_or(0.f)};
    const auto& p = dev.pipeline("attention", 9, sizeof pc, {row_wg(dev), 1u, (uint32_t)mode, clip ? 1u : 0u});
    cl.dispatch(p, {dev.dummy(), kc, vc, o, scores, qkv, or_dummy(dev, qn), or_dummy(dev, kn), rope}, pc,
                (uint32_t)s.n_head, 1u);
    cl.annotate((uint64_t)(n_past + 1) * s.kv_dim() * 8 + (uint64_t)(s.q_dim() + 2 * s.kv_dim()) * 4 +
                (uint64_t)s.q_dim() * 4);
}

void router_topk(Device& dev, CommandList& cl, const Buffer& logits, int n, int n_expert, int k, int stride,
                 bool renorm, Buffer& ids, Buffer& w) {
    if (k > 32 || n_expert > 1024 || k > n_expert)
        throw UnsupportedError("vulkan: routing supports up to 1024 experts and top-32 (model: " +
                               std::to_string(n_expert) + " experts, top-" + std::to_string(k) + ")");
    struct {
        uint32_t n, n_expert, k, stride, renorm;
    } pc{(uint32_t)n, (uint32_t)n_expert, (uint32_t)k, (uint32_t)stride, renorm ? 1u : 0u};
    const auto& p = dev.pipeline("router_topk", 3, sizeof pc);
    cl.dispatch(p, {logits, ids, w}, pc, ceil_div(n, 64));
    cl.annotate((uint64_t)n * (stride + 2 * k) * 4);
}

void route(Device& dev, CommandList& cl, const Buffer& x, int n, const QWeights& router, const InputNorm& nm,
           int n_expert, int k, bool renorm, Buffer& logits, Buffer& ids, Buffer& w) {
    if (k > 32 || router.out > 1025 || k > n_expert || n_expert > router.out)
        throw UnsupportedError("vulkan: routing supports up to 1024 experts and top-32 (model: " +
                               std::to_string(n_expert) + " experts, top-" + std::to_string(k) + ")");
    MOEBIUS_ASSERT(router.n_mats == 1);
    if (router.n_parts() > 1) throw UnsupportedError("vulkan: a router larger than one binding");
    struct {
        uint32_t n, in, n_expert, k, stride, renorm, row_bytes, n_groups, group;
        float    eps;
    } pc{(uint32_t)n, (uint32_t)router.in, (uint32_t)n_expert, (uint32_t)k, (uint32_t)router.out, renorm ? 1u : 0u,
         (uint32_t)router.row_bytes, (uint32_t)router.n_groups, (uint32_t)std::max(router.group, 1), nm.eps};
    const auto& p = dev.pipeline("router", 8, sizeof pc,
                                 with_weight_spec({row_wg(dev), (uint32_t)router.format,
                                                   (uint32_t)std::max(router.bits, 1), nm.norm ? 1u : 0u},
                                                  router));
    const auto [gx, gy] = row_grid(n);
    cl.dispatch(p, {x, logits, ids, w, or_dummy(dev, nm.norm), router.w, router.scales, router.zeros}, pc, gx, gy);
    cl.annotate(router.matrix_bytes() + (uint64_t)n * (router.in + router.out + 2 * k) * 4);
}

void moe_gate_up(Device& dev, CommandList& cl, const Buffer& x, int n, const Buffer* ids, int k, const QWeights& gu,
                 Buffer& h, const LowRank& lr, const InputNorm& nm, const KbvqAffine& kb, const SharedExpert& se) {
    check_grid(dev, n, "expert gate/up");
    MOEBIUS_ASSERT(gu.n_mats % 2 == 0 && (ids || 2 * k <= gu.n_mats));
    MOEBIUS_ASSERT(!lr.z == !lr.coef && (!lr.z || lr.rank > 0));
    // The two low-rank forms share bindings 6, 7 (a layer's experts have one format).
    MOEBIUS_ASSERT(!(lr.z && kb.affine) && (!kb.affine || ids) && (!kb.rank || kb.c));
    const bool     kbvq = kb.affine != nullptr;
    const QWeights* sg  = se.gu;
    MOEBIUS_ASSERT(!sg || (ids && se.hs && sg->n_mats == 2 && sg->n_parts() == 1 && sg->in == gu.in));
    const Buffer*  z    = kbvq ? kb.c : lr.z;
    const Buffer*  coef = kbvq ? kb.affine : lr.coef;
    const int      rank = kbvq ? kb.rank : lr.rank;
    struct {
        uint32_t n, k, in, ff, row_bytes, n_groups, group, rank;
        float    eps;
        uint32_t zs, f0, rows, ff2, row_bytes2, n_groups2, group2;
    } pc{(uint32_t)n,         (uint32_t)k,        (uint32_t)gu.in,      (uint32_t)gu.out,        (uint32_t)gu.row_bytes,
         (uint32_t)gu.n_groups, (uint32_t)std::max(gu.group, 1), (uint32_t)rank, nm.eps, (uint32_t)kb.zs, 0, 0,
         sg ? (uint32_t)sg->out : 0u, sg ? (uint32_t)sg->row_bytes : 0u, sg ? (uint32_t)sg->n_groups : 0u,
         sg ? (uint32_t)std::max(sg->group, 1) : 1u};
    const auto& p = dev.pipeline(
        "moe_gate_up", 13, sizeof pc,
        with_second_spec(with_weight_spec({row_wg(dev), (uint32_t)gu.format, (uint32_t)std::max(gu.bits, 1),
                                           ids ? 1u : 0u, lr.z ? 1u : 0u, nm.norm ? 1u : 0u, kbvq ? 1u : 0u,
                                           sg ? 1u : 0u},
                                          gu),
                         sg));
    for (int part = 0; part < gu.n_parts(); ++part) { // one dispatch per part of a split set
        pc.f0            = (uint32_t)gu.part_r0(part);
        pc.rows          = (uint32_t)gu.part_n(part);
        const bool with = sg && part == 0; // the shared expert: slot k of the first part's dispatch
        if (sg && part == 1) pc.ff2 = 0;  // (later parts' slot k does nothing)
        cl.dispatch(p, {x, or_dummy(dev, ids), h, gu.part_w(part), gu.part_scales(part), gu.part_zeros(part),
                        or_dummy(dev, z), or_dummy(dev, coef), or_dummy(dev, nm.norm), sg ? sg->w : dev.dummy(),
                        sg ? sg->scales : dev.dummy(), sg ? sg->zeros : dev.dummy(), or_dummy(dev, se.hs)},
                    pc, with ? std::max<uint32_t>(pc.rows, pc.ff2) : pc.rows, (uint32_t)n,
                    (uint32_t)k + (sg ? 1 : 0));
    }
    // Each distinct selected expert's gate and up once (at most every expert); KBVQ's affine once.
    const uint64_t experts = std::min<uint64_t>((uint64_t)n * k, gu.n_mats / 2);
    cl.annotate(experts * 2 * (gu.matrix_bytes() + (kbvq ? 0 : (uint64_t)gu.out * rank * 4)) +
                (sg ? 2 * sg->matrix_bytes() + (uint64_t)n * sg->out * 4 : 0) +
                (kbvq ? (uint64_t)2 * gu.out * (rank + 2) * 4 : 0) +
                (uint64_t)n * (gu.in + (kbvq ? 2 * k : 2) * rank + k * gu.out) * 4);
}

void moe_down(Device& dev, CommandList& cl, const Buffer& h, const Buffer& ids, const Buffer& w, int n, int k,
              const QWeights& down, Buffer& y, bool residual, const KbvqAffine& kb, const SharedExpert& se) {
    check_grid(dev, n, "expert down");
    MOEBIUS_ASSERT(!kb.rank || (kb.c && kb.affine));
    const QWeights* sd = se.down;
    MOEBIUS_ASSERT(!sd || (se.hs && sd->n_mats == 1 && sd->n_parts() == 1 && sd->out == down.out));
    struct {
        uint32_t n, k, in, out, row_bytes, n_groups, group, rank, d0, rows;
        uint32_t ff2, row_bytes2, n_groups2, group2, gate_stride, gate_off;
    } pc{(uint32_t)n, (uint32_t)k, (uint32_t)down.in, (uint32_t)down.out, (uint32_t)down.row_bytes,
         (uint32_t)down.n_groups, (uint32_t)std::max(down.group, 1), (uint32_t)kb.rank, 0, 0,
         sd ? (uint32_t)sd->in : 0u, sd ? (uint32_t)sd->row_bytes : 0u, sd ? (uint32_t)sd->n_groups : 0u,
         sd ? (uint32_t)std::max(sd->group, 1) : 1u, (uint32_t)se.gate_stride, (uint32_t)se.gate_off};
    const auto& p = dev.pipeline(
        "moe_down", 14, sizeof pc,
        with_second_spec(with_weight_spec({row_wg(dev), (uint32_t)down.format, (uint32_t)std::max(down.bits, 1),
                                           residual ? 1u : 0u, kb.affine ? 1u : 0u, sd ? 1u : 0u,
                                           sd && se.gate ? 1u : 0u},
                                          down),
                         sd));
    for (int part = 0; part < down.n_parts(); ++part) { // one dispatch per part of a split set (disjoint rows)
        pc.d0   = (uint32_t)down.part_r0(part);
        pc.rows = (uint32_t)down.part_n(part);
        cl.dispatch(p, {h, ids, w, y, down.part_w(part), down.part_scales(part), down.part_zeros(part),
                        or_dummy(dev, kb.c), or_dummy(dev, kb.affine), sd ? sd->w : dev.dummy(),
                        sd ? sd->scales : dev.dummy(), sd ? sd->zeros : dev.dummy(), or_dummy(dev, se.hs),
                        or_dummy(dev, se.gate)},
                    pc, pc.rows, (uint32_t)n);
    }
    const uint64_t experts = std::min<uint64_t>((uint64_t)n * k, down.n_mats);
    cl.annotate(experts * down.matrix_bytes() + (kb.affine ? (uint64_t)down.out * (kb.rank + 2) * 4 : 0) +
                (sd ? sd->matrix_bytes() + (uint64_t)n * sd->in * 4 : 0) +
                (uint64_t)n * (k * down.in + kb.rank + down.out * (residual ? 2 : 1)) * 4);
}

} // namespace moebius::vk
