// Vector-quantized linear layer (docs/FORMAT.md "vq") and the GPTVQ quantizer (methods.md §4.4): the decode formula
// by hand, pack/unpack, forward parity with DenseLinear, validation, the loader's checks, a write_checkpoint →
// Model::load round trip; weighted k-means (determinism, monotone objective), GPTVQ on grid-valued weights, against
// RTN on a bundled-model matrix, with and without error feedback, codebook refinement, thread independence.
#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "engine/core/safetensors.h"
#include "engine/cpu/linear.h"
#include "engine/cpu/model.h"
#include "engine/cpu/vq_linear.h"
#include "quantizer/format/checkpoint_writer.h"
#include "quantizer/methods/gptvq.h"
#include "quantizer/methods/uniform_quant.h"
#include "quant_test_util.h"
#include "checkpoint_test_util.h"
#include "test_util.h"

#include <cmath>
#include <fstream>
#include <functional>
#include <gtest/gtest.h>
#include <limits>
#include <nlohmann/json.hpp>
#include <omp.h>
#include <random>

using namespace moebius;
using moebius::test::correlated_h;
using moebius::test::hessian_objective;
using moebius::test::random_w;
namespace fs = std::filesystem;
using moebius::test::edit_config;
using moebius::test::expect_load_error;

namespace {

float f16r(float v) { return f16_to_f32(f32_to_f16(v)); }

VqWeights random_vq(int out, int in, int dim, int bits, int G, int R, bool scales, uint32_t seed) {
    std::mt19937                          rng(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    VqWeights                             w;
    w.out = out, w.in = in, w.dim = dim, w.bits = bits, w.group_cols = G, w.rows_per_codebook = R;
    w.codebooks.resize((size_t)w.n_codebooks() * w.k() * dim);
    for (auto& v : w.codebooks) v = f16r(0.1f * u(rng));
    w.codes.resize((size_t)out * (in / dim));
    std::uniform_int_distribution<int> ci(0, w.k() - 1);
    for (auto& c : w.codes) c = (uint16_t)ci(rng);
    if (scales)
        for (int o = 0; o < out; ++o) w.scales.push_back(f16r(0.5f + u(rng)));
    return w;
}

std::vector<float> random_x(int n, int in, uint32_t seed) { return random_w(n, in, seed); }

// ok edited by edit must be refused by VqLinear's validating constructor.
void expect_rejected(const VqWeights& ok, const std::string& what, const std::function<void(VqWeights&)>& edit) {
    auto w = ok;
    edit(w);
    EXPECT_THROW(VqLinear{w}, InputError) << what;
}

void check_parity(const VqWeights& w, const std::string& what) {
    VqLinear lin(w);
    auto     deq = lin.dequantize();
    ASSERT_EQ(deq, w.dequantize()) << what;
    DenseLinear dense(w.in, w.out, deq);
    for (int n : {1, 3, 17}) {
        auto               x = random_x(n, w.in, 31 * n + w.out);
        std::vector<float> y1((size_t)n * w.out), y2((size_t)n * w.out);
        dense.forward(x.data(), n, y1.data());
        lin.forward(x.data(), n, y2.data());
        for (size_t i = 0; i < y1.size(); ++i) {
            if (n <= 4)
                ASSERT_EQ(y2[i], y1[i]) << what << ", n " << n; // same decoded row, same dot
            else
                ASSERT_NEAR(y2[i], y1[i], 1e-5f * (1 + std::abs(y1[i]))) << what << ", n " << n;
        }
    }
}

// The bundled model's layer-1 shared up projection (512, 256) and H from correlated Gaussian inputs.
struct ModelMatrix {
    std::vector<float>  W;
    int                 out = 0, in = 0;
    std::vector<double> H;
};
const ModelMatrix& model_matrix() {
    static const ModelMatrix mm = [] {
        ModelMatrix r;
        auto        m = Model::load(test::bundled_model());
        const auto& s = m->layer(1).slot(LinearKind::SharedUp);
        r.out = s->out_features(), r.in = s->in_features(), r.W = s->dequantize();
        r.H = correlated_h(r.in, 2048, 5);
        return r;
    }();
    return mm;
}

const std::vector<int32_t> k_ids{71, 276, 281, 277, 32, 56, 10, 296, 388, 1398, 1496, 646, 111, 390, 44, 267};

std::vector<float> logits_of(const Model& m, const std::vector<int32_t>& ids) {
    KVCache            c = m.new_cache((int)ids.size());
    std::vector<float> out(ids.size() * m.spec().n_vocab);
    m.forward(ids.data(), (int)ids.size(), c, out.data(), true);
    return out;
}

// The bundled model with a few linears GPTVQ-quantized (different dims, bits, scales), written to dir/"vq".
std::unique_ptr<Model> vq_model_written_to(const fs::path& dir) {
    auto m = Model::load(test::bundled_model());
    struct Repl {
        int        layer;
        LinearKind kind;
        int        expert, dim, bits, group_cols, group_size;
        bool       scales;
        int        codebook_bits = 16;
    };
    const Repl repl[] = {{0, LinearKind::Q, -1, 2, 2, 128, 2048, false},
                         {1, LinearKind::ExpertDown, 3, 1, 3, 64, 512, true},
                         {2, LinearKind::SharedUp, -1, 4, 2, 256, 4096, false},
                         {3, LinearKind::ExpertUp, 2, 2, 3, 128, 8192, true, 8}};
    for (const auto& r : repl) {
        auto&     slot = m->layer(r.layer).slot(r.kind, r.expert);
        const int out = slot->out_features(), in = slot->in_features();
        auto      W = slot->dequantize();
        quant::GptvqOptions o;
        o.dim = r.dim, o.bits = r.bits, o.group_cols = r.group_cols, o.group_size = r.group_size;
        o.row_scales = r.scales, o.kmeans.iters = 10, o.codebook_bits = r.codebook_bits;
        slot = std::make_unique<VqLinear>(quant::gptvq_quantize(W.data(), out, in, correlated_h(in, 512, 3), o));
    }
    quant::WriteOptions wo;
    wo.quantization = {{"method", "gptvq-test"}};
    quant::write_checkpoint(*m, test::bundled_model(), dir / "vq", wo);
    return m;
}

} // namespace

// ---- format ---------------------------------------------------------------------------------------------------------

TEST(VqLinear, DequantizeFormulaByHand) {
    // 3 rows × 4 columns, D = 2, 1 bit per dimension (K = 4), G = 2, R = 2: codebooks (2 row blocks × 2 groups).
    VqWeights w;
    w.out = 3, w.in = 4, w.dim = 2, w.bits = 1, w.group_cols = 2, w.rows_per_codebook = 2;
    for (int cb = 0; cb < 4; ++cb)
        for (int k = 0; k < 4; ++k)
            for (int d = 0; d < 2; ++d) w.codebooks.push_back((float)(100 * cb + 10 * k + d));
    w.codes  = {0, 1, 2, 3, 3, 0}; // (3, 2)
    w.scales = {1.0f, 0.5f, 2.0f};
    const std::vector<float> expect{0, 1, 110, 111,                    // row 0: codebooks 0, 1
                                    0.5f * 20, 0.5f * 21, 0.5f * 130, 0.5f * 131, // row 1: codebooks 0, 1
                                    2 * 230, 2 * 231, 2 * 300, 2 * 301};          // row 2: codebooks 2, 3
    EXPECT_EQ(w.dequantize(), expect);
    EXPECT_EQ(VqLinear(w).dequantize(), expect);
    w.scales.clear();
    EXPECT_EQ(VqLinear(w).dequantize()[4], 20.0f);
}

TEST(VqLinear, PackLayoutLsbFirst) {
    // 3-bit indices (D = 1, bits 3): index i at bits [3i, 3i + 3).
    const uint16_t codes[] = {5, 3, 7, 1, 6};
    auto           p       = VqLinear::pack(codes, 1, 5, 1, 3);
    ASSERT_EQ(p.size(), 2u); // 15 bits → 2 bytes
    uint32_t v = p[0] | (p[1] << 8);
    for (int i = 0; i < 5; ++i) EXPECT_EQ((v >> (3 * i)) & 7, codes[i]) << i;
    // 12-bit indices (D = 4, 3 bits) straddle bytes.
    const uint16_t c12[] = {0xABC, 0x123};
    auto           q     = VqLinear::pack(c12, 1, 8, 4, 3);
    ASSERT_EQ(q.size(), 3u);
    EXPECT_EQ(q[0], 0xBC);
    EXPECT_EQ(q[1], 0x3A);
    EXPECT_EQ(q[2], 0x12);
}

TEST(VqLinear, PackUnpackRoundTripAndForwardParity) {
    struct Case {
        int out, in, dim, bits, G, R;
        bool scales;
    };
    // Covers every decode path: D = 1 with K ≤ 8 and K ≤ 32 (register tables), D = 2 with K ≤ 16 (register
    // tables) and larger (scalar), D = 4, group widths that leave a scalar tail, 9–16-bit indices.
    const Case cases[] = {{7, 24, 1, 3, 8, 3, false}, {5, 36, 2, 2, 12, 2, true}, {9, 40, 4, 1, 20, 4, false},
                          {3, 16, 2, 5, 16, 1, true}, {6, 8, 4, 4, 8, 7, false},  {4, 20, 1, 8, 4, 5, true},
                          {2, 8, 2, 8, 4, 1, false}, {33, 70, 2, 3, 14, 5, true}, {5, 48, 1, 5, 24, 2, true},
                          {3, 32, 1, 4, 16, 3, false}, {4, 24, 2, 1, 24, 2, true},  {6, 40, 1, 2, 40, 4, true}};
    for (const auto& c : cases) {
        const std::string what = "case " + std::to_string(c.out) + "x" + std::to_string(c.in) + " D" +
                                 std::to_string(c.dim) + " b" + std::to_string(c.bits);
        auto     w = random_vq(c.out, c.in, c.dim, c.bits, c.G, c.R, c.scales, c.out * 7 + c.in);
        VqLinear lin(w);
        auto     u = lin.unpack();
        EXPECT_EQ(u.codes, w.codes) << what;
        EXPECT_EQ(u.codebooks, w.codebooks) << what;
        EXPECT_EQ(u.scales, w.scales) << what;
        EXPECT_EQ(lin.storage_bytes(), (size_t)(VqLinear::row_bytes(c.in, c.dim, c.bits) * c.out) +
                                           w.codebooks.size() * 2 + w.scales.size() * 2)
            << what;
        check_parity(w, what);
    }
}

TEST(VqLinear, ForwardMultiThreaded) {
    auto w   = random_vq(300, 512, 2, 2, 256, 16, true, 4);
    auto deq = w.dequantize();
    omp_set_num_threads(2);
    VqLinear    lin(w);
    DenseLinear dense(w.in, w.out, deq);
    for (int n : {1, 64}) {
        auto               x = random_x(n, w.in, n);
        std::vector<float> y1((size_t)n * w.out), y2((size_t)n * w.out);
        dense.forward(x.data(), n, y1.data());
        lin.forward(x.data(), n, y2.data());
        for (size_t i = 0; i < y1.size(); ++i) ASSERT_NEAR(y2[i], y1[i], 1e-5f * (1 + std::abs(y1[i])));
    }
    omp_set_num_threads(1);
}

TEST(VqLinear, StorageMatchesTheWorkedExampleOfFormatMd) {
    // FORMAT.md: a 1408×2048 expert gate, D = 2, 2 bits, G = 256, R = 16: 2.125 bits per weight.
    VqWeights w;
    w.out = 1408, w.in = 2048, w.dim = 2, w.bits = 2, w.group_cols = 256, w.rows_per_codebook = 16;
    w.codebooks.assign((size_t)w.n_codebooks() * w.k() * w.dim, 0.0f);
    w.codes.assign((size_t)w.out * w.in / w.dim, 0);
    VqLinear lin(w);
    EXPECT_EQ(lin.n_codebooks(), 704);
    EXPECT_EQ(lin.storage_bytes(), 720896u + 45056u);
    EXPECT_DOUBLE_EQ(lin.storage_bytes() * 8.0 / (1408.0 * 2048.0), 2.125);
}

TEST(VqLinear, ValidateRejects) {
    auto ok = random_vq(4, 16, 2, 2, 8, 2, true, 1);
    EXPECT_NO_THROW(ok.validate());
    auto bad = [&](const std::string& what, const std::function<void(VqWeights&)>& edit) { expect_rejected(ok, what, edit); };
    bad("dim 3", [](auto& w) { w.dim = 3; });
    bad("bits 9 dim 2", [](auto& w) { w.bits = 9; });
    bad("G not dividing in", [](auto& w) { w.group_cols = 6; });
    bad("G odd for dim 2", [](auto& w) { w.group_cols = 1; });
    bad("R 0", [](auto& w) { w.rows_per_codebook = 0; });
    bad("codebook size", [](auto& w) { w.codebooks.pop_back(); });
    bad("codes size", [](auto& w) { w.codes.push_back(0); });
    bad("scales size", [](auto& w) { w.scales.pop_back(); });
    bad("code >= K", [](auto& w) { w.codes[3] = 16; });
    bad("centroid not f16", [](auto& w) { w.codebooks[5] = 0.1f; });
    bad("scale not f16", [](auto& w) { w.scales[0] = 0.1f; });
    // The packed constructor (checkpoint arrays) throws FormatError instead.
    VqPacked p;
    p.dim = 2, p.bits = 2, p.group_cols = 8, p.rows_per_codebook = 2;
    p.codes.assign(4 * VqLinear::row_bytes(16, 2, 2), 0);
    p.codebooks.assign(2 * 2 * 16 * 2, 0);
    EXPECT_NO_THROW(VqLinear(16, 4, p));
    auto pbad = p;
    pbad.codes.pop_back();
    EXPECT_THROW(VqLinear(16, 4, pbad), FormatError);
    pbad = p;
    pbad.scales.assign(3, 0);
    EXPECT_THROW(VqLinear(16, 4, pbad), FormatError);
    EXPECT_THROW(VqLinear(16, 5, p), FormatError); // 3 row blocks need 6 codebooks
}

TEST(VqLinear, CheckpointRoundTripKeepsLogits) {
    auto dir = test::scratch_dir("vq-ckpt");
    auto m   = vq_model_written_to(dir);
    auto q   = Model::load(dir / "vq");
    ASSERT_FALSE(q->spec().quantization.is_null());
    const auto& mods = q->spec().quantization["modules"];
    EXPECT_EQ(mods.size(), 4u);
    const std::tuple<int, LinearKind, int> where[] = {{0, LinearKind::Q, -1},
                                                      {1, LinearKind::ExpertDown, 3},
                                                      {2, LinearKind::SharedUp, -1},
                                                      {3, LinearKind::ExpertUp, 2}};
    for (auto [il, kind, e] : where) {
        auto* a = dynamic_cast<const VqLinear*>(m->layer(il).slot(kind, e).get());
        auto* b = dynamic_cast<const VqLinear*>(q->layer(il).slot(kind, e).get());
        ASSERT_NE(b, nullptr) << il;
        EXPECT_EQ(b->dequantize(), a->dequantize());
        EXPECT_EQ(b->storage_bytes(), a->storage_bytes());
        EXPECT_EQ(b->dim(), a->dim());
        EXPECT_EQ(b->has_scales(), a->has_scales());
        EXPECT_EQ(b->codebook_bits(), a->codebook_bits());
        EXPECT_EQ(b->codebook_bits(), il == 3 ? 8 : 16);
    }
    EXPECT_EQ(mods[q->spec().linear_name(0, LinearKind::Q)],
              nlohmann::json::parse(m->layer(0).q->packed_config().dump()));
    EXPECT_NE(dynamic_cast<const DenseLinear*>(q->layer(0).k.get()), nullptr);
    auto lq = logits_of(*q, k_ids), lm = logits_of(*m, k_ids);
    EXPECT_EQ(lq, lm);
    for (float v : lq) ASSERT_TRUE(std::isfinite(v));
    EXPECT_NE(lq, logits_of(*Model::load(test::bundled_model()), k_ids));
    auto              st   = SafetensorsFile::open(dir / "vq" / "model.safetensors");
    const std::string name = q->spec().linear_name(0, LinearKind::Q);
    EXPECT_EQ(st->find(name + ".weight"), nullptr);
    ASSERT_NE(st->find(name + ".vq_codebooks"), nullptr);
    EXPECT_EQ(st->find(name + ".vq_codebooks")->shape, (std::vector<int64_t>{(256 / 16) * (256 / 128), 16, 2}));
    EXPECT_EQ(st->find(name + ".vq_scales"), nullptr);
    EXPECT_EQ(st->find(name + ".vq_codebook_scales"), nullptr);
    EXPECT_FALSE(mods[name].contains("codebook_bits")); // f16 codebooks keep the configs written before 8-bit ones
    // 8-bit codebooks: int8 centroids (up 128 × 256, D 2, G 128, R 8192 / 128 = 64: 2 row blocks × 2 groups, K 64)
    // and one f16 scale per codebook.
    const std::string up = q->spec().linear_name(3, LinearKind::ExpertUp, 2);
    EXPECT_EQ(mods[up]["codebook_bits"], 8);
    ASSERT_NE(st->find(up + ".vq_codebooks"), nullptr);
    EXPECT_EQ(st->find(up + ".vq_codebooks")->dtype, DType::I8);
    EXPECT_EQ(st->find(up + ".vq_codebooks")->shape, (std::vector<int64_t>{4, 64, 2}));
    ASSERT_NE(st->find(up + ".vq_codebook_scales"), nullptr);
    EXPECT_EQ(st->find(up + ".vq_codebook_scales")->dtype, DType::F16);
    EXPECT_EQ(st->find(up + ".vq_codebook_scales")->shape, (std::vector<int64_t>{4}));
}

TEST(VqLinear, LoaderRejectsInconsistentCheckpoints) {
    auto              dir = test::scratch_dir("vq-loader");
    auto              m   = vq_model_written_to(dir);
    const auto        src = dir / "vq";
    const std::string q0  = m->spec().linear_name(0, LinearKind::Q);
    auto fresh = [&](const std::string& name) {
        fs::copy(src, dir / name, fs::copy_options::recursive);
        return dir / name;
    };
    auto config_case = [&](const std::string& name, const std::function<void(nlohmann::ordered_json&)>& edit,
                           const std::string& what) {
        auto d = fresh(name);
        edit_config(d, [&](auto& cfg) { edit(cfg["quantization_config"]["modules"][q0]); });
        expect_load_error(d, {(d / "config.json").string(), q0, what});
    };
    config_case("dim-missing", [](auto& q) { q.erase("dim"); }, "\"dim\"");
    config_case("dim-bad", [](auto& q) { q["dim"] = 3; }, "dim must be 1, 2 or 4");
    config_case("bits-bad", [](auto& q) { q["bits"] = 9; }, "bits·dim");
    config_case("g-bad", [](auto& q) { q["group_cols"] = 96; }, "group_cols must be");
    config_case("r-bad", [](auto& q) { q["rows_per_codebook"] = 0; }, "rows_per_codebook must be positive");
    config_case("scales-int", [](auto& q) { q["scales"] = 1; }, "\"scales\"");
    // Implied shapes change: the message names the safetensors file and the tensor.
    {
        auto d = fresh("r-shape");
        edit_config(d, [&](auto& cfg) { cfg["quantization_config"]["modules"][q0]["rows_per_codebook"] = 32; });
        expect_load_error(d, {(d / "model.safetensors").string(), q0 + ".vq_codebooks", "F16 [32, 16, 2]",
                              "F16 [16, 16, 2]"});
    }
    {
        auto d  = fresh("dtype");
        auto st = SafetensorsFile::open(d / "model.safetensors");
        std::vector<TensorToWrite> tensors;
        for (const auto& [name, ti] : st->tensors())
            tensors.push_back({name, name == q0 + ".vq_codes" ? DType::I8 : ti.dtype, ti.shape, {ti.data, ti.nbytes}});
        write_safetensors(d / "model.safetensors.new", tensors, st->metadata());
        st.reset();
        fs::rename(d / "model.safetensors.new", d / "model.safetensors");
        expect_load_error(d, {(d / "model.safetensors").string(), q0 + ".vq_codes", "I8"});
    }
    {
        // 8-bit codebooks: a bad width, f16 codebooks asked of int8 ones, a missing scale tensor.
        const std::string up = m->spec().linear_name(3, LinearKind::ExpertUp, 2);
        auto              d  = fresh("cb-bits-bad");
        edit_config(d, [&](auto& cfg) { cfg["quantization_config"]["modules"][up]["codebook_bits"] = 4; });
        expect_load_error(d, {(d / "config.json").string(), up, "codebook_bits must be 8 or 16"});
        d = fresh("cb-bits-absent");
        edit_config(d, [&](auto& cfg) { cfg["quantization_config"]["modules"][up].erase("codebook_bits"); });
        expect_load_error(d, {(d / "model.safetensors").string(), up + ".vq_codebooks", "I8", "F16"});
        d = fresh("cb-bits-on-f16");
        edit_config(d, [&](auto& cfg) { cfg["quantization_config"]["modules"][q0]["codebook_bits"] = 8; });
        expect_load_error(d, {(d / "model.safetensors").string(), q0 + ".vq_codebooks", "I8", "F16"});
    }
    {
        auto d = fresh("scales-missing"); // asks for a .vq_scales tensor the file does not have
        edit_config(d, [&](auto& cfg) { cfg["quantization_config"]["modules"][q0]["scales"] = true; });
        EXPECT_THROW(Model::load(d), NotFoundError);
    }
    EXPECT_NO_THROW(Model::load(fresh("ok")));
}

TEST(VqLinear, EightBitCodebookGrid) {
    std::mt19937                          rng(4);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (float range : {1e-3f, 0.07f, 3.0f}) {
        std::vector<float> v(64), orig;
        for (auto& x : v) x = f16r(range * u(rng));
        orig = v;
        std::vector<int8_t> q(v.size());
        const uint16_t      s  = vq_round_codebook_int8(v.data(), v.size(), q.data());
        const float         sf = f16_to_f32(s), mx = std::abs(*std::max_element(orig.begin(), orig.end(), [](float a, float b) {
                                   return std::abs(a) < std::abs(b);
                               }));
        // The smallest f16 scale that reaches the largest magnitude with |q| ≤ 127.
        EXPECT_GE(sf * 127.0f, mx) << range;
        EXPECT_LT(f16_to_f32((uint16_t)(s - 1)) * 127.0f, mx) << range;
        for (size_t i = 0; i < v.size(); ++i) {
            EXPECT_GE(q[i], -127);
            EXPECT_EQ(v[i], f16_to_f32(f32_to_f16(sf * (float)q[i]))) << i;
            // Nearest grid point, up to the f16 rounding of the product.
            EXPECT_LE(std::abs(v[i] - orig[i]), 0.5f * sf + std::abs(v[i]) * 0x1p-11f) << range << " " << i;
        }
    }
    std::vector<float> zero(8, 0.0f);
    EXPECT_EQ(vq_round_codebook_int8(zero.data(), zero.size()), 0);
    for (float x : zero) EXPECT_EQ(x, 0.0f);
}

TEST(VqLinear, EightBitCodebooksPackDecodeAndCount) {
    const auto&         mm = model_matrix();
    quant::GptvqOptions o;
    o.dim = 2, o.bits = 2, o.group_cols = 128, o.group_size = 2048, o.kmeans.iters = 10, o.row_scales = true;
    o.codebook_bits = 8;
    const VqWeights w = quant::gptvq_quantize(mm.W.data(), mm.out, mm.in, mm.H, o);
    ASSERT_EQ(w.codebook_bits, 8);
    ASSERT_EQ(w.codebook_scales.size(), (size_t)w.n_codebooks());
    EXPECT_NO_THROW(w.validate());
    check_parity(w, "8-bit codebooks");
    VqLinear lin(w);
    const VqWeights u = lin.unpack();
    EXPECT_EQ(u.codebooks, w.codebooks);
    EXPECT_EQ(u.codebook_scales, w.codebook_scales);
    EXPECT_EQ(u.codes, w.codes);
    // Storage: codes + K·D bytes and one f16 per codebook + f16 row scales.
    const size_t ncb = w.n_codebooks(), kd = (size_t)w.k() * w.dim;
    EXPECT_EQ(lin.storage_bytes(), (size_t)VqLinear::row_bytes(mm.in, 2, 2) * mm.out + ncb * kd + 2 * ncb + 2 * mm.out);
    size_t cb_bytes = 0;
    for (const auto& t : lin.packed_tensors()) {
        if (t.suffix != ".vq_codebooks" && t.suffix != ".vq_codebook_scales") continue;
        EXPECT_EQ(t.dtype, t.suffix == ".vq_codebooks" ? DType::I8 : DType::F16) << t.suffix;
        cb_bytes += t.bytes.size();
    }
    EXPECT_EQ(cb_bytes, ncb * kd + 2 * ncb);
    // f16 codebooks of the same layout: the int8 rounding costs little (one step ≤ 1/254 of the codebook's range).
    o.codebook_bits = 16;
    quant::GptvqReport r8, r16;
    quant::gptvq_quantize(mm.W.data(), mm.out, mm.in, mm.H, o, &r16);
    o.codebook_bits = 8;
    quant::gptvq_quantize(mm.W.data(), mm.out, mm.in, mm.H, o, &r8);
    EXPECT_LT(r8.rel_error, 1.05 * r16.rel_error);
    EXPECT_LT(r8.bits_per_weight, r16.bits_per_weight);
    // Refinement keeps the codebooks on (new) 8-bit grids.
    o.refine_iters = 2;
    const VqWeights rw = quant::gptvq_quantize(mm.W.data(), mm.out, mm.in, mm.H, o);
    EXPECT_NO_THROW(rw.validate());
}

TEST(VqLinear, EightBitCodebooksRejected) {
    auto ok = random_vq(4, 16, 2, 2, 8, 2, true, 1);
    ok.codebook_bits = 8;
    for (int c = 0; c < ok.n_codebooks(); ++c)
        ok.codebook_scales.push_back(f16_to_f32(vq_round_codebook_int8(ok.codebooks.data() + c * 32, 32)));
    EXPECT_NO_THROW(ok.validate());
    auto bad = [&](const std::string& what, const std::function<void(VqWeights&)>& edit) { expect_rejected(ok, what, edit); };
    bad("codebook bits 4", [](auto& w) { w.codebook_bits = 4; });
    bad("scales with f16 codebooks", [](auto& w) { w.codebook_bits = 16; });
    bad("scale count", [](auto& w) { w.codebook_scales.pop_back(); });
    bad("negative scale", [](auto& w) { w.codebook_scales[0] = -w.codebook_scales[0]; });
    bad("off the grid", [](auto& w) { w.codebooks[3] = f16r(w.codebooks[3] + 0.3f * w.codebook_scales[0]); });
    bad("beyond 127 steps", [](auto& w) { w.codebook_scales[1] = f16r(w.codebook_scales[1] / 4); });
    // Checkpoint arrays.
    VqPacked p;
    p.dim = 2, p.bits = 2, p.group_cols = 8, p.rows_per_codebook = 2, p.codebook_bits = 8;
    p.codes.assign(4 * VqLinear::row_bytes(16, 2, 2), 0);
    p.codebooks_i8.assign(4 * 16 * 2, 5);
    p.codebook_scales.assign(4, f32_to_f16(0.01f));
    EXPECT_NO_THROW(VqLinear(16, 4, p));
    EXPECT_EQ(VqLinear(16, 4, p).codebooks()[0], f16r(f16r(0.01f) * 5));
    auto pb = p;
    pb.codebooks_i8[7] = -128;
    EXPECT_THROW(VqLinear(16, 4, pb), FormatError);
    pb = p;
    pb.codebook_scales.pop_back();
    EXPECT_THROW(VqLinear(16, 4, pb), FormatError);
    pb = p;
    pb.codebook_scales[0] = 0x7c00; // inf
    EXPECT_THROW(VqLinear(16, 4, pb), FormatError);
    pb = p;
    pb.codebooks.assign(4 * 16 * 2, 0); // both forms
    EXPECT_THROW(VqLinear(16, 4, pb), FormatError);
    pb = p;
    pb.codebook_bits = 16;
    EXPECT_THROW(VqLinear(16, 4, pb), FormatError);
}

// ---- k-means --------------------------------------------------------------------------------------------------------

TEST(Gptvq, KmeansDeterministicAndMonotone) {
    const int           n = 600, dim = 2, k = 16;
    auto                pf = random_w(n, dim, 3);
    auto                wf = random_w(n, dim, 4);
    std::vector<double> x(pf.begin(), pf.end()), w(wf.size());
    for (size_t i = 0; i < w.size(); ++i) w[i] = 0.1 + std::abs(wf[i]);
    for (const char* init : {"mahalanobis", "kmeans++"}) {
        quant::KmeansOptions o;
        o.init = init, o.seed = 42, o.iters = 200;
        auto a = quant::weighted_kmeans(x.data(), w.data(), n, dim, k, o);
        auto b = quant::weighted_kmeans(x.data(), w.data(), n, dim, k, o);
        EXPECT_EQ(a.centroids, b.centroids) << init;
        EXPECT_EQ(a.assign, b.assign) << init;
        ASSERT_GE(a.objective.size(), 2u) << init;
        for (size_t t = 1; t < a.objective.size(); ++t)
            EXPECT_LE(a.objective[t], a.objective[t - 1] * (1 + 1e-12)) << init << " iteration " << t;
        EXPECT_LT(a.objective.back(), a.objective.front()) << init;
        // The reported objective is that of the returned centroids and assignment.
        double obj = 0;
        for (int p = 0; p < n; ++p)
            for (int d = 0; d < dim; ++d) {
                double e = x[p * dim + d] - a.centroids[a.assign[p] * dim + d];
                obj += w[p * dim + d] * e * e;
            }
        EXPECT_NEAR(obj, a.objective.back(), 1e-9 * obj) << init;
    }
    quant::KmeansOptions o;
    o.init = "kmeans++", o.seed = 1;
    auto c1 = quant::weighted_kmeans(x.data(), w.data(), n, dim, k, o);
    o.seed  = 2;
    auto c2 = quant::weighted_kmeans(x.data(), w.data(), n, dim, k, o);
    EXPECT_NE(c1.centroids, c2.centroids); // the seed matters
    o.init = "random";
    EXPECT_THROW(quant::weighted_kmeans(x.data(), w.data(), n, dim, k, o), InputError);
}

TEST(Gptvq, KmeansBoundsGiveExactlyPlainLloyd) {
    // The distance bounds skip work, not decisions: a plain Lloyd written here (centroid-outer distances, strict
    // lowest-index ties, weighted means) must give the same assignments, centroids and objectives — with many
    // centroids (groups of them skipped), ties (duplicated points, repeated values), zero weights and 1 or 2 threads.
    for (int dim : {1, 2, 4})
        for (int k : {3, 64, 256}) {
            const int n = 3000;
            auto      pf = random_w(n, dim, 7 + dim), wf = random_w(n, dim, 9 + k);
            std::vector<double> x(pf.begin(), pf.end()), w(wf.size());
            for (size_t i = 0; i < w.size(); ++i) w[i] = i % 97 == 0 ? 0.0 : std::exp(3 * wf[i]);
            for (int p = 0; p < 300; ++p)
                for (int d = 0; d < dim; ++d) x[(size_t)(n - 1 - p) * dim + d] = x[(size_t)p * dim + d]; // duplicates
            for (int p = 0; p < 200; ++p) x[(size_t)(1000 + p) * dim] = 0.25;                              // ties
            quant::KmeansOptions o;
            o.init = "kmeans++", o.seed = 5, o.iters = 60;
            omp_set_num_threads(2);
            auto r = quant::weighted_kmeans(x.data(), w.data(), n, dim, k, o);
            omp_set_num_threads(1);
            auto r1 = quant::weighted_kmeans(x.data(), w.data(), n, dim, k, o);
            EXPECT_EQ(r.assign, r1.assign);
            // Plain Lloyd from the same initial centroids: k-means++ is the first step of both.
            o.iters     = 0;
            auto             init = quant::weighted_kmeans(x.data(), w.data(), n, dim, k, o);
            std::vector<double> c = init.centroids, obj;
            std::vector<int>    a(n, -1);
            for (int it = 0; it <= 60; ++it) {
                if (it > 0) {
                    std::vector<double> num((size_t)k * dim, 0.0), den((size_t)k * dim, 0.0);
                    for (int p = 0; p < n; ++p)
                        for (int d = 0; d < dim; ++d) {
                            num[(size_t)a[p] * dim + d] += w[(size_t)p * dim + d] * x[(size_t)p * dim + d];
                            den[(size_t)a[p] * dim + d] += w[(size_t)p * dim + d];
                        }
                    for (size_t i = 0; i < num.size(); ++i)
                        if (den[i] > 0) c[i] = num[i] / den[i];
                }
                bool   changed = false;
                double sum     = 0;
                for (int p = 0; p < n; ++p) {
                    int    best = 0;
                    double bd   = std::numeric_limits<double>::infinity();
                    for (int t = 0; t < k; ++t) {
                        double dd = 0;
                        for (int d = 0; d < dim; ++d) {
                            const double diff = x[(size_t)p * dim + d] - c[(size_t)t * dim + d];
                            dd += w[(size_t)p * dim + d] * diff * diff;
                        }
                        if (dd < bd) bd = dd, best = t;
                    }
                    changed |= a[p] != best;
                    a[p] = best;
                    sum += bd;
                }
                obj.push_back(sum);
                if (it > 0 && !changed) break;
            }
            EXPECT_EQ(r.assign, a) << "dim " << dim << " k " << k;
            EXPECT_EQ(r.centroids, c) << "dim " << dim << " k " << k;
            ASSERT_EQ(r.objective.size(), obj.size()) << "dim " << dim << " k " << k;
            for (size_t i = 0; i < obj.size(); ++i) EXPECT_NEAR(r.objective[i], obj[i], 1e-12 * obj[i]) << i;
        }
}

// ---- GPTVQ ----------------------------------------------------------------------------------------------------------

TEST(Gptvq, OneDimensionalCodebookRecoversGridLevels) {
    // Every weight on one of 4 f16 levels: with D = 1, 2 bits (one centroid per level) the codebook finds the levels
    // and the quantization is exact, so no error is ever fed back.
    const int          out = 32, in = 64;
    const float        levels[] = {-0.75f, -0.125f, 0.25f, 1.5f};
    std::mt19937       rng(7);
    std::vector<float> W((size_t)out * in);
    for (size_t i = 0; i < W.size(); ++i) W[i] = levels[(i + rng() % 4) % 4];
    auto                H = correlated_h(in, 256, 2);
    quant::GptvqOptions o;
    o.dim = 1, o.bits = 2, o.group_cols = 32, o.group_size = 32 * 8;
    o.kmeans.init = "kmeans++";
    quant::GptvqReport rep;
    auto               q = quant::gptvq_quantize(W.data(), out, in, H, o, &rep);
    EXPECT_EQ(q.dequantize(), W);
    EXPECT_EQ(rep.error, 0.0);
    EXPECT_EQ(q.rows_per_codebook, 8);
    EXPECT_EQ(q.n_codebooks(), 4 * 2);
    for (float c : q.codebooks) EXPECT_TRUE(c == levels[0] || c == levels[1] || c == levels[2] || c == levels[3]) << c;
    // Gaussian weights: every centroid is used inside the weights' range, error well below the weights' energy.
    auto Wg = random_w(out, in, 9, 0.05f);
    o.kmeans.init = "mahalanobis";
    q = quant::gptvq_quantize(Wg.data(), out, in, H, o, &rep);
    EXPECT_GT(rep.rel_error, 0.0);
    EXPECT_LT(rep.rel_error, 0.25);
    EXPECT_NEAR(rep.bits_per_weight, 2.0 + (double)q.codebooks.size() * 16 / (out * in), 1e-12);
}

TEST(Gptvq, TwoBitVqBeatsRtnOnModelMatrix) {
    const auto& mm = model_matrix();
    quant::GptvqOptions o; // D = 2, 2 bits, G = 256, 4096 weights per codebook: 2.125 bits
    quant::GptvqReport  rep;
    auto                q  = quant::gptvq_quantize(mm.W.data(), mm.out, mm.in, mm.H, o, &rep);
    auto                r  = quant::rtn_quantize(mm.W.data(), mm.out, mm.in, quant::UniformConfig{2, 128, false, false});
    const double        ev = hessian_objective(mm.W, q.dequantize(), mm.out, mm.in, mm.H);
    const double        er = hessian_objective(mm.W, r.dequantize(), mm.out, mm.in, mm.H);
    const double        ref = hessian_objective(mm.W, std::vector<float>(mm.W.size(), 0.0f), mm.out, mm.in, mm.H);
    EXPECT_LT(ev, 0.5 * er) << "gptvq " << ev / ref << " rtn " << er / ref;
    EXPECT_NEAR(rep.error, ev, 1e-9 * ref);
    EXPECT_NEAR(rep.rel_error, ev / ref, 1e-9);
    EXPECT_NEAR(rep.bits_per_weight, 2.125, 1e-12);
    EXPECT_EQ(rep.dead_columns, 0);
    // The result packs and decodes to the same weights.
    EXPECT_EQ(VqLinear(q).dequantize(), q.dequantize());
}

TEST(Gptvq, ErrorFeedbackLowersOutputError) {
    const auto& mm = model_matrix();
    for (int dim : {1, 2}) {
        quant::GptvqOptions o;
        o.dim = dim, o.group_size = 256 * 8;
        quant::GptvqReport with, without;
        quant::gptvq_quantize(mm.W.data(), mm.out, mm.in, mm.H, o, &with);
        o.error_feedback = false;
        quant::gptvq_quantize(mm.W.data(), mm.out, mm.in, mm.H, o, &without);
        EXPECT_LT(with.rel_error, 0.8 * without.rel_error) << "dim " << dim;
    }
}

TEST(Gptvq, RefinementAndRowScales) {
    const auto& mm = model_matrix();
    quant::GptvqOptions o;
    o.kmeans.iters = 20;
    quant::GptvqReport base, refined;
    quant::gptvq_quantize(mm.W.data(), mm.out, mm.in, mm.H, o, &base);
    o.refine_iters = 3;
    auto q         = quant::gptvq_quantize(mm.W.data(), mm.out, mm.in, mm.H, o, &refined);
    EXPECT_LE(refined.error, base.error);
    for (float c : q.codebooks) ASSERT_EQ(c, f16r(c));
    o.refine_iters = 0;
    o.row_scales   = true;
    quant::GptvqReport scaled;
    auto               s = quant::gptvq_quantize(mm.W.data(), mm.out, mm.in, mm.H, o, &scaled);
    ASSERT_EQ(s.scales.size(), (size_t)mm.out);
    EXPECT_LT(scaled.rel_error, 2 * base.rel_error);
    EXPECT_NEAR(scaled.bits_per_weight, 2.125 + 16.0 / mm.in, 1e-12);
    EXPECT_EQ(VqLinear(s).dequantize(), s.dequantize());
}

TEST(Gptvq, DeterministicAndThreadIndependent) {
    const int  out = 96, in = 128;
    auto       W = random_w(out, in, 11);
    auto       H = correlated_h(in, 400, 12);
    quant::GptvqOptions o;
    o.group_cols = 64, o.group_size = 64 * 16, o.block = 32, o.kmeans.init = "kmeans++", o.kmeans.seed = 3;
    omp_set_num_threads(1);
    auto a = quant::gptvq_quantize(W.data(), out, in, H, o);
    omp_set_num_threads(2);
    auto b = quant::gptvq_quantize(W.data(), out, in, H, o);
    omp_set_num_threads(1);
    EXPECT_EQ(a.codes, b.codes);
    EXPECT_EQ(a.codebooks, b.codebooks);
    // Block size only changes when the lazy updates land, not the result (up to rounding).
    o.block   = 128;
    auto c    = quant::gptvq_quantize(W.data(), out, in, H, o);
    double ea = hessian_objective(W, a.dequantize(), out, in, H), ec = hessian_objective(W, c.dequantize(), out, in, H);
    EXPECT_NEAR(ea, ec, 1e-3 * ea);
}

TEST(Gptvq, ColumnGroupShrinksToDivideTheRow) {
    // in = 96 with G = 64 asked: the widest multiple of D dividing 96 and ≤ 64 is 48 (for in = 1408, G = 256: 176).
    auto W = random_w(8, 96, 1);
    auto H = correlated_h(96, 200, 1);
    for (int dim : {1, 2, 4}) {
        quant::GptvqOptions o;
        o.dim = dim, o.bits = 2, o.group_cols = 64, o.group_size = 64 * 4, o.kmeans.iters = 5;
        auto q = quant::gptvq_quantize(W.data(), 8, 96, H, o);
        EXPECT_EQ(q.group_cols, 48) << dim;
        EXPECT_EQ(q.rows_per_codebook, 256 / 48) << dim;
        EXPECT_NO_THROW(VqLinear{q});
    }
}

TEST(Gptvq, BadOptions) {
    auto W = random_w(8, 32, 1);
    auto H = correlated_h(32, 64, 1);
    auto expect_bad = [&](const std::function<void(quant::GptvqOptions&)>& edit) {
        quant::GptvqOptions o;
        edit(o);
        EXPECT_THROW(quant::gptvq_quantize(W.data(), 8, 32, H, o), InputError);
    };
    expect_bad([](auto& o) { o.dim = 3; });
    expect_bad([](auto& o) { o.bits = 0; });
    expect_bad([](auto& o) { o.bits = 5, o.dim = 4; });
    expect_bad([](auto& o) { o.group_cols = 0; });

    expect_bad([](auto& o) { o.block = 3; });
    expect_bad([](auto& o) { o.damp = -1; });
    expect_bad([](auto& o) { o.refine_iters = 1, o.bits = 4, o.dim = 4; });
    expect_bad([](auto& o) { o.codebook_bits = 12; });
    // Given (shared) codebooks stay as given: neither refined nor re-gridded to 8 bits.
    const std::vector<float> given(16 * 2, 0.5f); // one codebook: 8 rows × 32 columns, K 16, D 2
    quant::GptvqOptions      og;
    og.codebooks = given;
    EXPECT_NO_THROW(quant::gptvq_quantize(W.data(), 8, 32, H, og));
    expect_bad([&](auto& o) { o.codebooks = given, o.refine_iters = 1; });
    expect_bad([&](auto& o) { o.codebooks = given, o.codebook_bits = 8; });
    auto W30 = random_w(4, 30, 1);
    quant::GptvqOptions o4;
    o4.dim = 4; // 4 does not divide 30
    EXPECT_THROW(quant::gptvq_quantize(W30.data(), 4, 30, correlated_h(30, 64, 1), o4), InputError);
    std::vector<double> Hbad(H.size() - 1);
    EXPECT_THROW(quant::gptvq_quantize(W.data(), 8, 32, Hbad, quant::GptvqOptions{}), InputError);
}
