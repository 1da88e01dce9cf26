// KBVQ-MoE (methods.md §2, docs/FORMAT.md "kbvq"): the KbvqLinear decode formula by hand and its forward parity,
// IDRE's activation-weighted joint decomposition against the unweighted one and against a planted shared subspace,
// the BCOS least-squares fit and its held-out bias figure, the checkpoint round trip (logits), the dequantized
// export, the loader's refusals, and the pipeline end to end (BCOS lowers the MoE output bias on the held-out fold,
// deterministic for a seed).
#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "engine/core/safetensors.h"
#include "engine/core/tokenizer.h"
#include "engine/cpu/kbvq_linear.h"
#include "engine/cpu/model.h"
#include "quantizer/format/checkpoint_writer.h"
#include "quantizer/methods/kbvq.h"
#include "quantizer/pipeline.h"
#include "checkpoint_test_util.h"
#include "quant_test_util.h"
#include "test_util.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <gtest/gtest.h>
#include <omp.h>
#include <random>

using namespace moebius;
using moebius::test::correlated_h;
using moebius::test::edit_config;
using moebius::test::expect_load_error;
using moebius::test::random_w;
namespace fs = std::filesystem;

namespace {

float f16r(float v) { return f16_to_f32(f32_to_f16(v)); }

VqWeights random_vq(int out, int in, uint32_t seed) {
    std::mt19937                          rng(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    VqWeights                             w;
    w.out = out, w.in = in, w.dim = 2, w.bits = 2, w.group_cols = in, w.rows_per_codebook = 8;
    w.codebooks.resize((size_t)w.n_codebooks() * w.k() * w.dim);
    for (auto& v : w.codebooks) v = f16r(0.1f * u(rng));
    w.codes.resize((size_t)out * (in / w.dim));
    std::uniform_int_distribution<int> ci(0, w.k() - 1);
    for (auto& c : w.codes) c = (uint16_t)ci(rng);
    return w;
}

std::shared_ptr<KbvqShared> random_shared(int out, int rank, bool bias, uint32_t seed) {
    std::mt19937                          rng(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    auto                                  s = std::make_shared<KbvqShared>();
    s->rank                                 = rank;
    for (int i = 0; i < out * rank; ++i) s->basis.push_back(f16r(u(rng)));
    for (int i = 0; i < out; ++i) s->gamma.push_back(f16r(1 + 0.1f * u(rng)));
    if (bias)
        for (int i = 0; i < out; ++i) s->beta.push_back(f16r(0.05f * u(rng)));
    return s;
}

KbvqPacked random_coef(int rank, int in, uint32_t seed) {
    std::mt19937                       rng(seed);
    std::uniform_int_distribution<int> c(-127, 127);
    KbvqPacked                         p;
    p.rank = rank;
    for (int i = 0; i < rank * in; ++i) p.coef.push_back((int8_t)c(rng));
    for (int k = 0; k < rank; ++k) p.coef_scales.push_back(f32_to_f16(0.001f * (k + 1)));
    return p;
}

const std::vector<int32_t> k_ids{71, 276, 281, 277, 32, 56, 10, 296, 388, 1398, 1496, 646, 111, 390, 44, 267};

std::vector<float> logits_of(const Model& m, const std::vector<int32_t>& ids) {
    KVCache            c = m.new_cache((int)ids.size());
    std::vector<float> out(ids.size() * m.spec().n_vocab);
    m.forward(ids.data(), (int)ids.size(), c, out.data(), true);
    return out;
}

// Σ_e ‖(W_e − B C_e) X_e‖² with H_e = X_eᵀX_e, for the decomposition's unquantized coefficients.
double idre_objective(const quant::IdreResult& r, const std::vector<std::vector<float>>& W, int out, int in,
                      const std::vector<std::vector<double>>& H) {
    double s = 0;
    for (size_t e = 0; e < W.size(); ++e) {
        std::vector<float> lr((size_t)out * in, 0.f);
        for (int o = 0; o < out; ++o)
            for (int k = 0; k < r.rank; ++k)
                for (int j = 0; j < in; ++j)
                    lr[(size_t)o * in + j] += (float)(r.basis[(size_t)o * r.rank + k] * r.coef[e][(size_t)k * in + j]);
        s += test::hessian_objective(W[e], lr, out, in, H[e]);
    }
    return s;
}

// Layer 1 of the bundled model with its routed experts' down projections replaced by KBVQ (rank 2, random Hessians
// per expert, a BCOS-like γ and β), written to dir/"kbvq". codebook_bits 8: the residuals' own codebooks in 8 bits.
std::unique_ptr<Model> kbvq_model_written_to(const fs::path& dir, bool bias, bool shared_codebooks = false,
                                             int codebook_bits = 16) {
    auto        m = Model::load(test::bundled_model());
    auto&       L = m->layer(1);
    const int   E = (int)L.experts.size();
    const int   out = L.experts[0][2]->out_features(), in = L.experts[0][2]->in_features();
    std::vector<std::vector<float>>          W(E);
    std::vector<std::vector<double>>         Hs(E);
    std::vector<const std::vector<double>*>  Hp(E);
    for (int e = 0; e < E; ++e) W[e] = L.experts[e][2]->dequantize(), Hs[e] = correlated_h(in, 256, 10 + e), Hp[e] = &Hs[e];
    const auto idre  = quant::idre_decompose(W, out, in, Hp, 2);
    auto       sh    = random_shared(out, 2, bias, 4);
    sh->basis        = idre.basis;
    const std::string owner = m->spec().linear_name(1, LinearKind::ExpertDown, 0);
    quant::GptvqOptions vo;
    vo.kmeans.iters  = 5;
    vo.group_size    = 2048;
    vo.codebook_bits = codebook_bits;
    if (shared_codebooks) {
        // One D = 4 codebook for the group (fitted on the weights themselves; a test needs no residual), and γ = 1
        // as the quantizer leaves gate/up (and down without BCOS).
        vo.dim = 4, vo.group_cols = in, vo.group_size = out * in;
        sh->gamma.assign(out, 1.0f);
        vo.codebooks  = quant::shared_codebooks(W, out, in, Hp, vo, 0.01);
        sh->codebooks = vo.codebooks;
    }
    for (int e = 0; e < E; ++e) {
        KbvqPacked p;
        p.rank = 2, p.owner = owner, p.is_owner = e == 0;
        KbvqLinear::quantize_coef(idre.coef[e], 2, in, p.coef, p.coef_scales);
        L.experts[e][2] = std::make_unique<KbvqLinear>(quant::gptvq_quantize(W[e].data(), out, in, Hs[e], vo),
                                                       std::move(p), sh);
    }
    quant::WriteOptions wo;
    wo.quantization = {{"method", "kbvq-test"}};
    quant::write_checkpoint(*m, test::bundled_model(), dir / "kbvq", wo);
    return m;
}

quant::CalibrationSet tiny_calibration(int n, int seqlen) {
    auto ids = Tokenizer::from_file(test::bundled_model() / "tokenizer.json")
                   .encode(test::read_text(test::resources_dir() / "corpus" / "train.txt").substr(0, 200000));
    return quant::random_windows(ids, n, seqlen, 7, "train.txt");
}

} // namespace

// ---- format ---------------------------------------------------------------------------------------------------------

TEST(KbvqLinear, DecodeFormulaByHandAndForwardParity) {
    const int out = 16, in = 32, rank = 3;
    auto      vq = random_vq(out, in, 1);
    auto      sh = random_shared(out, rank, true, 2);
    auto      p  = random_coef(rank, in, 3);
    const KbvqPacked pc = p;
    KbvqLinear       lin(vq, std::move(p), sh);
    const auto       r  = vq.dequantize();
    const auto       w  = lin.dequantize();
    for (int o = 0; o < out; ++o)
        for (int j = 0; j < in; ++j) {
            double lr = 0;
            for (int k = 0; k < rank; ++k)
                lr += (double)sh->basis[o * rank + k] * f16_to_f32(pc.coef_scales[k]) * pc.coef[k * in + j];
            ASSERT_NEAR(w[(size_t)o * in + j], sh->gamma[o] * (r[(size_t)o * in + j] + lr), 1e-5) << o << "," << j;
        }
    // forward = x Wᵀ + β; for n ≤ 4 bit-identical to the dense GEMV of the same rows.
    DenseLinear dense(in, out, w);
    for (int n : {1, 3, 9}) {
        auto               x = random_w(n, in, 40 + n);
        std::vector<float> y1((size_t)n * out), y2((size_t)n * out);
        dense.forward(x.data(), n, y1.data());
        lin.forward(x.data(), n, y2.data());
        for (int t = 0; t < n; ++t)
            for (int o = 0; o < out; ++o) {
                const float ref = y1[(size_t)t * out + o] + sh->beta[o];
                if (n <= 4)
                    ASSERT_EQ(y2[(size_t)t * out + o], ref) << n;
                else
                    ASSERT_NEAR(y2[(size_t)t * out + o], ref, 1e-5f * (1 + std::abs(ref))) << n;
            }
    }
    // Shared arrays are counted by the owner only.
    KbvqPacked owner = pc, member = pc;
    owner.is_owner   = true;
    KbvqLinear a(vq, owner, sh), b(vq, member, sh);
    EXPECT_EQ(a.storage_bytes() - b.storage_bytes(), 2u * (out * rank + 2 * out));
    EXPECT_EQ(b.storage_bytes(), VqLinear(vq).storage_bytes() + rank * in + 2 * rank);
    // γ = 1 everywhere is not stored.
    auto unit   = std::make_shared<KbvqShared>(*sh);
    unit->gamma.assign(out, 1.0f);
    KbvqLinear au(vq, owner, unit);
    EXPECT_EQ(a.storage_bytes() - au.storage_bytes(), 2u * out);
    for (const auto& t : au.packed_tensors()) EXPECT_NE(t.suffix, ".kbvq_gamma");
    EXPECT_EQ(au.packed_config()["gamma"], false);
    EXPECT_EQ(a.packed_config()["gamma"], true);
    // Shared codebooks: the owner stores them once, the members not at all; they must be the residual's own.
    auto shc       = std::make_shared<KbvqShared>(*sh);
    shc->codebooks = vq.codebooks;
    const size_t cb_bytes = 2 * vq.codebooks.size();
    KbvqLinear   ao(vq, owner, shc), bo(vq, member, shc);
    EXPECT_TRUE(ao.shared_codebooks());
    EXPECT_EQ(ao.storage_bytes(), a.storage_bytes());
    EXPECT_EQ(bo.storage_bytes(), b.storage_bytes() - cb_bytes);
    EXPECT_EQ(bo.dequantize(), b.dequantize());
    for (const auto& t : bo.packed_tensors()) EXPECT_NE(t.suffix, ".vq_codebooks");
    size_t stored = 0;
    for (const auto& t : ao.packed_tensors()) stored += t.suffix == ".kbvq_codebooks" ? t.bytes.size() : 0;
    EXPECT_EQ(stored, cb_bytes);
    shc->codebooks[3] = f16r(shc->codebooks[3] + 0.25f);
    EXPECT_THROW(KbvqLinear(vq, pc, shc), FormatError);
    // Inconsistent shared arrays are refused.
    auto bad = std::make_shared<KbvqShared>(*sh);
    bad->gamma.pop_back();
    EXPECT_THROW(KbvqLinear(vq, pc, bad), FormatError);
    bad = std::make_shared<KbvqShared>(*sh);
    bad->basis[0] = 0.1f; // not an f16 value
    EXPECT_THROW(KbvqLinear(vq, pc, bad), FormatError);
}

TEST(KbvqLinear, CheckpointRoundTripKeepsLogitsAndExport) {
    auto dir = test::scratch_dir("kbvq-ckpt");
    for (bool bias : {true, false}) {
        const fs::path d = dir / (bias ? "b" : "nb");
        auto           m = kbvq_model_written_to(d, bias, false, bias ? 8 : 16);
        auto           q = Model::load(d / "kbvq");
        const auto*    k = dynamic_cast<const KbvqLinear*>(q->layer(1).experts[5][2].get());
        ASSERT_NE(k, nullptr);
        EXPECT_EQ(k->residual().codebook_bits(), bias ? 8 : 16);
        EXPECT_EQ(k->storage_bytes(), m->layer(1).experts[5][2]->storage_bytes());
        for (int e : {0, 5})
            EXPECT_EQ(q->layer(1).experts[e][2]->dequantize(), m->layer(1).experts[e][2]->dequantize()) << e;
        const auto lq = logits_of(*q, k_ids);
        EXPECT_EQ(lq, logits_of(*m, k_ids));
        for (float v : lq) ASSERT_TRUE(std::isfinite(v));
        // The shared tensors are stored once, with expert 0.
        auto              st   = SafetensorsFile::open(d / "kbvq" / "model.safetensors");
        const std::string e0   = q->spec().linear_name(1, LinearKind::ExpertDown, 0);
        const std::string e5   = q->spec().linear_name(1, LinearKind::ExpertDown, 5);
        EXPECT_NE(st->find(e0 + ".kbvq_basis"), nullptr);
        EXPECT_EQ(st->find(e5 + ".kbvq_basis"), nullptr);
        EXPECT_EQ(st->find(e0 + ".kbvq_beta") != nullptr, bias);
        EXPECT_EQ(q->spec().quantization["modules"][e5]["shared"], e0);
        // Dequantized export: exact without β (plain Qwen2-MoE checkpoints have no expert biases, docs/FORMAT.md).
        quant::WriteOptions de;
        de.dequantized = true;
        de.dtype       = DType::F32;
        quant::write_checkpoint(*q, d / "kbvq", d / "deq", de);
        const auto ld = logits_of(*Model::load(d / "deq"), k_ids);
        if (bias)
            EXPECT_NE(ld, lq);
        else
            EXPECT_EQ(ld, lq);
    }
}

TEST(KbvqLinear, SharedCodebooksAreStoredOnceAndRoundTrip) {
    auto       dir = test::scratch_dir("kbvq-shared-cb");
    auto       m   = kbvq_model_written_to(dir, false, true);
    auto       q   = Model::load(dir / "kbvq");
    const auto e0 = q->spec().linear_name(1, LinearKind::ExpertDown, 0), e5 = q->spec().linear_name(1, LinearKind::ExpertDown, 5);
    const auto* k5 = dynamic_cast<const KbvqLinear*>(q->layer(1).experts[5][2].get());
    ASSERT_NE(k5, nullptr);
    EXPECT_TRUE(k5->shared_codebooks());
    EXPECT_EQ(k5->residual().dim(), 4);
    EXPECT_EQ(k5->residual().n_codebooks(), 1);
    EXPECT_EQ(k5->shared()->codebooks, dynamic_cast<const KbvqLinear&>(*m->layer(1).experts[0][2]).shared()->codebooks);
    for (int e : {0, 5})
        EXPECT_EQ(q->layer(1).experts[e][2]->dequantize(), m->layer(1).experts[e][2]->dequantize()) << e;
    EXPECT_EQ(logits_of(*q, k_ids), logits_of(*m, k_ids));
    auto st = SafetensorsFile::open(dir / "kbvq" / "model.safetensors");
    EXPECT_NE(st->find(e0 + ".kbvq_codebooks"), nullptr);
    EXPECT_EQ(st->find(e5 + ".kbvq_codebooks"), nullptr);
    EXPECT_EQ(st->find(e0 + ".vq_codebooks"), nullptr);
    EXPECT_EQ(st->find(e5 + ".vq_codebooks"), nullptr);
    EXPECT_EQ(q->spec().quantization["modules"][e5]["shared_codebooks"], true);
    // γ = 1 is not stored; the reader restores the ones.
    EXPECT_EQ(st->find(e0 + ".kbvq_gamma"), nullptr);
    EXPECT_EQ(q->spec().quantization["modules"][e5]["gamma"], false);
    EXPECT_EQ(k5->shared()->gamma, std::vector<float>(k5->out_features(), 1.0f));
    // The dequantized export equals the packed checkpoint (no β here).
    quant::WriteOptions de;
    de.dequantized = true;
    de.dtype       = DType::F32;
    quant::write_checkpoint(*q, dir / "kbvq", dir / "deq", de);
    EXPECT_EQ(logits_of(*Model::load(dir / "deq"), k_ids), logits_of(*q, k_ids));
    // A member claiming its own codebooks has none stored: the reader names the missing tensor.
    fs::copy(dir / "kbvq", dir / "own", fs::copy_options::recursive);
    edit_config(dir / "own", [&](auto& cfg) { cfg["quantization_config"]["modules"][e5]["shared_codebooks"] = false; });
    EXPECT_THROW(Model::load(dir / "own"), NotFoundError);
    fs::copy(dir / "kbvq", dir / "nogamma", fs::copy_options::recursive);
    edit_config(dir / "nogamma", [&](auto& cfg) { cfg["quantization_config"]["modules"][e5]["gamma"] = true; });
    EXPECT_THROW(Model::load(dir / "nogamma"), NotFoundError); // the owner stores no γ
    fs::copy(dir / "kbvq", dir / "badval", fs::copy_options::recursive);
    edit_config(dir / "badval", [&](auto& cfg) { cfg["quantization_config"]["modules"][e5]["shared_codebooks"] = 1; });
    expect_load_error(dir / "badval", {(dir / "badval" / "config.json").string(), e5, "shared_codebooks"});
}

TEST(KbvqLinear, LoaderRejectsInconsistentCheckpoints) {
    auto              dir = test::scratch_dir("kbvq-loader");
    auto              m   = kbvq_model_written_to(dir, true);
    const auto        src = dir / "kbvq";
    const std::string e3  = m->spec().linear_name(1, LinearKind::ExpertDown, 3);
    auto fresh = [&](const std::string& name) {
        fs::copy(src, dir / name, fs::copy_options::recursive);
        return dir / name;
    };
    auto config_case = [&](const std::string& name, const std::function<void(nlohmann::ordered_json&)>& edit,
                           const std::string& what) {
        auto d = fresh(name);
        edit_config(d, [&](auto& cfg) { edit(cfg["quantization_config"]["modules"][e3]); });
        expect_load_error(d, {(d / "config.json").string(), e3, what});
    };
    config_case("rank-missing", [](auto& q) { q.erase("rank"); }, "\"rank\"");
    config_case("rank-bad", [](auto& q) { q["rank"] = -1; }, "rank must be");
    config_case("shared-missing", [](auto& q) { q.erase("shared"); }, "\"shared\"");
    config_case("bias-missing", [](auto& q) { q.erase("bias"); }, "\"bias\"");
    {
        // A rank that does not match the stored coefficients: the message names the file and the tensor.
        auto d = fresh("rank-shape");
        edit_config(d, [&](auto& cfg) { cfg["quantization_config"]["modules"][e3]["rank"] = 3; });
        expect_load_error(d, {(d / "model.safetensors").string(), e3 + ".kbvq_coef", "I8 [3, 128]", "I8 [2, 128]"});
    }
    {
        // The owner's basis must have this module's rank.
        auto d = fresh("shared-other");
        edit_config(d, [&](auto& cfg) {
            cfg["quantization_config"]["modules"][e3]["shared"] = m->spec().linear_name(1, LinearKind::ExpertDown, 2);
        });
        EXPECT_THROW(Model::load(d), NotFoundError); // expert 2 holds no shared tensors
    }
    EXPECT_NO_THROW(Model::load(fresh("ok")));
}

// ---- IDRE -----------------------------------------------------------------------------------------------------------

TEST(Kbvq, IdreActivationWeightedBeatsPlainJointSvdOnItsObjective) {
    const int out = 24, in = 32, E = 6, rank = 3;
    std::vector<std::vector<float>>         W(E);
    std::vector<std::vector<double>>        H(E);
    std::vector<const std::vector<double>*> Hp(E);
    for (int e = 0; e < E; ++e) W[e] = random_w(out, in, 100 + e), H[e] = correlated_h(in, 200, 200 + e), Hp[e] = &H[e];
    const auto w = quant::idre_decompose(W, out, in, Hp, rank, true, 1e-6);
    const auto p = quant::idre_decompose(W, out, in, Hp, rank, false);
    ASSERT_EQ(w.rank, rank);
    const double ow = idre_objective(w, W, out, in, H), op = idre_objective(p, W, out, in, H);
    double       total = 0;
    for (int e = 0; e < E; ++e) total += test::hessian_objective(W[e], std::vector<float>(W[e].size(), 0.f), out, in, H[e]);
    EXPECT_LT(ow, op);
    EXPECT_LT(ow, total);
    // The basis is orthonormal up to f16 rounding; rank 0 keeps nothing.
    Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> B(w.basis.data(), out, rank);
    EXPECT_LT((B.transpose() * B - Eigen::MatrixXf::Identity(rank, rank)).cwiseAbs().maxCoeff(), 2e-3f);
    EXPECT_EQ(quant::idre_decompose(W, out, in, Hp, 0).basis.size(), 0u);
}

TEST(Kbvq, IdreRecoversAPlantedSharedSubspace) {
    // W_e = S A_e + noise with S (out, 2) common to every expert: the rank-2 basis must span S.
    const int out = 20, in = 16, E = 5;
    auto      S = random_w(out, 2, 9);
    std::vector<std::vector<float>>         W(E);
    std::vector<std::vector<double>>        H(E);
    std::vector<const std::vector<double>*> Hp(E);
    for (int e = 0; e < E; ++e) {
        auto A = random_w(2, in, 50 + e), N = random_w(out, in, 60 + e, 0.01f);
        W[e]   = N;
        for (int o = 0; o < out; ++o)
            for (int j = 0; j < in; ++j) W[e][o * in + j] += S[o * 2] * A[j] + S[o * 2 + 1] * A[in + j];
        H[e] = correlated_h(in, 100, 70 + e), Hp[e] = &H[e];
    }
    const auto r = quant::idre_decompose(W, out, in, Hp, 2);
    Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> B(r.basis.data(), out, 2),
        Sm(S.data(), out, 2);
    const Eigen::MatrixXf resid = Sm - B * (B.transpose() * Sm);
    EXPECT_LT(resid.norm() / Sm.norm(), 0.02f);
}

TEST(Kbvq, ExpertVectorDimensionFollowsTheSharedCodebooksCost) {
    quant::QuantizeOptions o;
    o.method = "kbvq", o.bits = 2, o.vq_dim = 2;
    EXPECT_EQ(quant::kbvq_expert_dim(o, 16, 128, 256), 4); // 256 · 4 · 16 bits / 524,288 weights = 1/32 bit
    EXPECT_EQ(quant::kbvq_expert_dim(o, 2, 128, 256), 2);  // 1/4 bit for D = 4: too much for two experts
    o.bits = 3;
    EXPECT_EQ(quant::kbvq_expert_dim(o, 16, 128, 256), 2); // K = 4096 at D = 4 would cost 1/2 bit
    EXPECT_EQ(quant::kbvq_expert_dim(o, 16, 128, 254), 2); // D must divide the row
    o.kbvq_dim = 1;
    EXPECT_EQ(quant::kbvq_expert_dim(o, 16, 128, 256), 1);
    o.kbvq_shared_codebooks = false;
    EXPECT_EQ(quant::kbvq_expert_dim(o, 16, 128, 256), 2); // own codebooks: --vq-dim
}

TEST(Kbvq, SharedCodebookWeighsExpertsByTheirHessiansAndIsThreadIndependent) {
    // Two centroids (D = 1, 1 bit), two clusters: half of every row at −10, the other half at +10 in the expert with
    // the large Hessian and at +11 in the one whose Hessian is 10⁻⁴ of it. The upper centroid is the weighted mean of
    // its cluster: 10 to f16 precision, not the unweighted 10.5.
    const int out = 8, in = 16;
    std::vector<std::vector<float>> R(2, std::vector<float>(out * in, -10.0f));
    for (int o = 0; o < out / 2; ++o)
        for (int j = 0; j < in; ++j) R[0][o * in + j] = 10.0f, R[1][o * in + j] = 11.0f;
    auto Hbig = correlated_h(in, 100, 1), Hsmall = Hbig;
    for (auto& v : Hsmall) v *= 1e-4;
    std::vector<const std::vector<double>*> H{&Hbig, &Hsmall};
    quant::GptvqOptions vo;
    vo.dim = 1, vo.bits = 1;
    auto cb = quant::shared_codebooks(R, out, in, H, vo, 0.01);
    ASSERT_EQ(cb.size(), 2u);
    std::sort(cb.begin(), cb.end());
    EXPECT_EQ(cb[0], -10.0f);
    EXPECT_EQ(cb[1], 10.0f);
    // Many points (the parallel assignment runs): the same codebook at 1 and 2 threads.
    std::vector<std::vector<float>> Rs;
    std::vector<std::vector<double>> Hs;
    for (int e = 0; e < 8; ++e) Rs.push_back(random_w(128, 256, 30 + e)), Hs.push_back(correlated_h(256, 300, 40 + e));
    std::vector<const std::vector<double>*> Hp;
    for (auto& h : Hs) Hp.push_back(&h);
    quant::GptvqOptions v4;
    v4.dim = 4, v4.bits = 2, v4.kmeans.iters = 4;
    omp_set_num_threads(1);
    auto c1 = quant::shared_codebooks(Rs, 128, 256, Hp, v4, 0.01);
    omp_set_num_threads(2);
    auto c2 = quant::shared_codebooks(Rs, 128, 256, Hp, v4, 0.01);
    omp_set_num_threads(1);
    EXPECT_EQ(c1, c2);
    EXPECT_EQ(c1.size(), 256u * 4);
}

// ---- BCOS -----------------------------------------------------------------------------------------------------------

TEST(Kbvq, BcosRecoversAPlantedAffineAndReportsHeldOutBias) {
    const int                        C = 8;
    std::mt19937                     rng(3);
    std::normal_distribution<double> nd(0, 1);
    std::uniform_real_distribution<double> us(0.2, 1.0);
    quant::BcosFit                   fit(C);
    std::vector<double>              g(C), b(C);
    for (int c = 0; c < C; ++c) g[c] = 0.8 + 0.05 * c, b[c] = 0.3 - 0.1 * c;
    std::vector<float> yq(C), yf(C);
    for (int t = 0; t < 4000; ++t) {
        const double s = us(rng);
        for (int c = 0; c < C; ++c) {
            yq[c] = (float)(nd(rng) + 0.5);
            yf[c] = (float)(g[c] * yq[c] + b[c] * s + 0.01 * nd(rng));
        }
        fit.add(t % 2, yq.data(), yf.data(), s);
    }
    const auto r = fit.solve(true);
    EXPECT_EQ(r.tokens, 4000);
    for (int c = 0; c < C; ++c) {
        EXPECT_NEAR(r.gamma[c], g[c], 2e-3) << c;
        EXPECT_NEAR(r.beta[c], b[c], 5e-3) << c;
    }
    EXPECT_GT(r.bias_before, 0.05);
    EXPECT_LT(r.bias_after, 0.01 * r.bias_before + 1e-3);
    const auto ng = fit.solve(false); // γ only: β stays 0
    for (int c = 0; c < C; ++c) EXPECT_EQ(ng.beta[c], 0.0);
}

// ---- pipeline -------------------------------------------------------------------------------------------------------

TEST(Kbvq, PipelineBcosLowersHeldOutBiasAndIsDeterministic) {
    // 2,048 tokens (1,024 per fold): with fewer, fitting 2 values per channel on one fold overfits it.
    auto calib = tiny_calibration(16, 128);
    quant::QuantizeOptions opt;
    opt.method             = "kbvq";
    opt.bits               = 2;
    opt.vq_dim             = 2;
    opt.kbvq_rank          = 2;
    opt.quantize_attention = false;
    auto a  = Model::load(test::bundled_model());
    auto ra = quant::quantize_model(*a, calib, opt);
    ASSERT_EQ(ra.moe_output_bias.size(), (size_t)a->spec().n_layer);
    for (const auto& l : ra.moe_output_bias) {
        EXPECT_GT(l.tokens, 0);
        EXPECT_LT(l.after, l.before) << "layer " << l.layer;
    }
    auto* d = dynamic_cast<const KbvqLinear*>(a->layer(2).experts[4][2].get());
    ASSERT_NE(d, nullptr);
    EXPECT_EQ(d->rank(), 2);
    EXPECT_FALSE(d->shared()->beta.empty());
    EXPECT_EQ(a->layer(2).shared_down->format(), "vq"); // outside the routed experts: GPTVQ
    // By default one D = 4 codebook per layer and kind (2 bits: 256 centroids for 16 × 32,768 weights), shared.
    EXPECT_TRUE(d->shared_codebooks());
    EXPECT_EQ(d->residual().dim(), 4);
    const auto& d11 = dynamic_cast<const KbvqLinear&>(*a->layer(2).experts[11][2]);
    EXPECT_EQ(d->residual().codebooks(), d11.residual().codebooks());
    EXPECT_EQ(dynamic_cast<const VqLinear&>(*a->layer(2).shared_down).dim(), 2);
    // Same seed and calibration: the same weights.
    auto b = Model::load(test::bundled_model());
    quant::quantize_model(*b, calib, opt);
    for (int il : {0, 3})
        for (int k = 0; k < 3; ++k)
            EXPECT_EQ(a->layer(il).experts[9][k]->dequantize(), b->layer(il).experts[9][k]->dequantize()) << il << k;
    // The packed checkpoint reproduces the quantized model's logits.
    auto dir = test::scratch_dir("kbvq-pipe");
    quant::WriteOptions wo;
    wo.quantization = {{"method", "kbvq"}};
    quant::write_checkpoint(*a, test::bundled_model(), dir / "q", wo);
    auto reloaded = Model::load(dir / "q");
    EXPECT_EQ(logits_of(*reloaded, k_ids), logits_of(*a, k_ids));
    // γ is stored only where BCOS put it: the down projections.
    const auto& mods = reloaded->spec().quantization["modules"];
    EXPECT_EQ(mods[reloaded->spec().linear_name(2, LinearKind::ExpertGate, 3)]["gamma"], false);
    EXPECT_EQ(mods[reloaded->spec().linear_name(2, LinearKind::ExpertDown, 3)]["gamma"], true);
    // The group's members hold one copy of the owner's basis, γ and β, not one each.
    for (int k = 0; k < 3; ++k) {
        const auto* first = dynamic_cast<const KbvqLinear*>(reloaded->layer(2).experts[0][k].get());
        ASSERT_NE(first, nullptr);
        for (const auto& ex : reloaded->layer(2).experts) {
            const auto* e = dynamic_cast<const KbvqLinear*>(ex[k].get());
            ASSERT_NE(e, nullptr);
            EXPECT_EQ(e->shared().get(), first->shared().get()) << "kind " << k;
        }
    }
}
