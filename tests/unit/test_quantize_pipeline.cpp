// The quantization pipeline end to end on the bundled model: packed checkpoints, their reload, the dequantized
// export, honest size accounting, sparse calibration and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <random>

#include "engine/core/error.h"
#include "engine/core/tokenizer.h"
#include "engine/core/weight_store.h"
#include "engine/cpu/model.h"
#include "engine/cpu/nbit_linear.h"
#include "engine/cpu/parallel.h"
#include "engine/cpu/vq_linear.h"
#include "engine/eval/perplexity.h"
#include "quantizer/format/checkpoint_writer.h"
#include "quantizer/methods/gptvq.h"
#include "quantizer/pipeline.h"
#include "test_util.h"

using namespace moebius;
using namespace moebius::quant;

namespace {

std::vector<float> logits_of(const Model& m, const std::vector<int32_t>& ids) {
    KVCache            c = m.new_cache((int)ids.size());
    std::vector<float> out(ids.size() * m.spec().n_vocab);
    m.forward(ids.data(), (int)ids.size(), c, out.data(), true);
    return out;
}

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        num += (double)(a[i] - b[i]) * (a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return std::sqrt(num / den);
}

const std::vector<int32_t> k_ids{71, 276, 281, 277, 32, 56, 10, 296, 388, 1398, 1496, 646, 111, 390, 44, 267};

CalibrationSet tiny_calibration(int n, int seqlen) {
    auto ids = Tokenizer::from_file(test::bundled_model() / "tokenizer.json")
                   .encode(test::read_text(test::resources_dir() / "corpus" / "train.txt").substr(0, 200000));
    return random_windows(ids, n, seqlen, 7, "train.txt");
}

} // namespace

TEST(QuantizePipeline, RtnCheckpointReloadsAndMatchesDequantizedExport) {
    auto            m = Model::load(test::bundled_model());
    QuantizeOptions opt;
    opt.method = "rtn";
    opt.bits   = 4;
    auto rep   = quantize_model(*m, CalibrationSet{}, opt);
    // Every linear except the router and the shared-expert gate is packed.
    const auto& s = m->spec();
    EXPECT_EQ(rep.modules.size(), (size_t)s.n_layer * (4 + 3 * s.n_expert + 3));
    EXPECT_NE(dynamic_cast<NbitLinear*>(m->layer(2).experts[5][2].get()), nullptr);
    EXPECT_NE(dynamic_cast<DenseLinear*>(m->layer(2).router.get()), nullptr);

    auto dir = test::scratch_dir("qpipe");
    WriteOptions wo;
    wo.quantization = {{"method", "rtn"}, {"bits", 4}};
    WriteReport wr = write_checkpoint(*m, test::bundled_model(), dir / "q", wo);
    // Storage-exact accounting: codes + f16 scales + u8 zeros; the file is that plus untouched tensors and a header.
    EXPECT_NEAR(8.0 * wr.quantized_bytes / wr.quantized_weights, 4.0 + 24.0 / 128, 1e-9);
    auto fsize = (int64_t)std::filesystem::file_size(dir / "q" / "model.safetensors");
    EXPECT_GE(fsize, wr.bytes_total);
    EXPECT_LT(fsize, wr.bytes_total + 200000); // header (names, shapes) only

    auto q = Model::load(dir / "q");
    EXPECT_FALSE(q->spec().quantization.is_null());
    auto lq = logits_of(*q, k_ids), lm = logits_of(*m, k_ids);
    EXPECT_LT(rel_diff(lq, lm), 1e-6); // reload is exact

    WriteOptions de;
    de.dequantized = true;
    de.dtype       = DType::F32;
    write_checkpoint(*q, dir / "q", dir / "deq", de);
    auto d = Model::load(dir / "deq");
    EXPECT_TRUE(d->spec().quantization.is_null());
    EXPECT_NE(dynamic_cast<DenseLinear*>(d->layer(0).experts[0][0].get()), nullptr);
    EXPECT_LT(rel_diff(logits_of(*d, k_ids), lq), 1e-4); // packed kernels agree with the dequantized weights
    // And quantization changed the model (the test can fail).
    auto fp = Model::load(test::bundled_model());
    EXPECT_GT(rel_diff(logits_of(*fp, k_ids), lq), 1e-3);
}

TEST(QuantizePipeline, SparseCalibrationQuantizesEveryExpertAndNamesTheStarved) {
    auto            m = Model::load(test::bundled_model());
    QuantizeOptions opt;
    opt.method = "gptq";
    opt.bits   = 3;
    auto rep   = quantize_model(*m, tiny_calibration(2, 32), opt);
    const auto& s = m->spec();
    for (int il = 0; il < s.n_layer; ++il)
        for (int e = 0; e < s.n_expert; ++e)
            for (int p = 0; p < 3; ++p)
                EXPECT_NE(dynamic_cast<NbitLinear*>(m->layer(il).experts[e][p].get()), nullptr) << il << "/" << e;
    // 64 tokens x top-4 over 16 experts: several experts get fewer than 16 tokens.
    ASSERT_FALSE(rep.undercalibrated.empty());
    for (const auto& u : rep.undercalibrated) EXPECT_LT(u.tokens, opt.min_expert_tokens);
    auto l = logits_of(*m, k_ids);
    for (float v : l) ASSERT_TRUE(std::isfinite(v));
}

TEST(QuantizePipeline, GptqBeatsRtnOnHeldOutText) {
    // 3-bit, 32 x 128 calibration tokens from the train chapters (with 8 x 64 tokens an expert sees ~128 tokens for a
    // 256-dim input and GPTQ's compensation overfits: it then loses to RTN on held-out text, measured).
    auto            a = Model::load(test::bundled_model()), b = Model::load(test::bundled_model());
    QuantizeOptions opt;
    opt.bits         = 3;
    opt.method       = "gptq";
    auto   gr        = quantize_model(*a, tiny_calibration(32, 128), opt);
    double mean_gptq = 0;
    for (auto& mr : gr.modules) mean_gptq += mr.rel_error / gr.modules.size();
    EXPECT_GT(mean_gptq, 0);
    EXPECT_LT(mean_gptq, 0.2);
    opt.method = "rtn";
    quantize_model(*b, CalibrationSet{}, opt);
    // Held-out: the first 8 windows of the test chapters.
    auto text = Tokenizer::from_file(test::bundled_model() / "tokenizer.json")
                    .encode(test::read_text(test::resources_dir() / "corpus" / "test.txt"));
    text.resize(8 * 256);
    auto   fp   = Model::load(test::bundled_model());
    double p_fp = perplexity(*fp, text, 256).ppl, p_gptq = perplexity(*a, text, 256).ppl,
           p_rtn = perplexity(*b, text, 256).ppl;
    RecordProperty("ppl_fp", std::to_string(p_fp));
    RecordProperty("ppl_gptq3", std::to_string(p_gptq));
    RecordProperty("ppl_rtn3", std::to_string(p_rtn));
    EXPECT_LT(p_gptq, p_rtn) << "fp " << p_fp << " gptq " << p_gptq << " rtn " << p_rtn;
    EXPECT_GT(p_rtn, p_fp);
}

TEST(QuantizePipeline, BadOptionsAreRejected) {
    auto spec = ModelSpec::load(test::bundled_model());
    QuantizeOptions o;
    o.method = "awq";
    EXPECT_THROW(validate_options(o, spec), InputError);
    o.method = "gptq";
    o.bits   = 9;
    EXPECT_THROW(validate_options(o, spec), InputError);
    o.bits  = 4;
    o.group = 96; // does not divide 256
    EXPECT_THROW(validate_options(o, spec), InputError);
    o.group = 64;
    EXPECT_NO_THROW(validate_options(o, spec));
    o.method           = "gptvq";
    o.bits             = 2;
    o.vq_codebook_bits = 4;
    EXPECT_THROW(validate_options(o, spec), InputError);
    o.vq_codebook_bits = 8;
    EXPECT_NO_THROW(validate_options(o, spec));
    EXPECT_EQ(gptvq_options(o).group_size, 64 * 2 * 16); // the 8-bit codebooks still cost 1/8 bit per weight
    o.vq_codebook_bits = 16;
    EXPECT_EQ(gptvq_options(o).group_size, 4096); // GPTVQ's released 2-bit D = 2 setting
    o.vq_codebook_bits = 8;
    o.vq_refine_iters = -1;
    EXPECT_THROW(validate_options(o, spec), InputError);
    o.vq_refine_iters = 5; // K·D = 32
    EXPECT_NO_THROW(validate_options(o, spec));
    o.bits = 4; // K·D = 512
    EXPECT_THROW(validate_options(o, spec), InputError);
    o.bits            = 2;
    o.vq_refine_iters = 0;
    o.method          = "kbvq";
    EXPECT_NO_THROW(validate_options(o, spec));
}

TEST(QuantizePipeline, CancelAndWriteFailureLeaveNoCheckpoint) {
    auto            dir = test::scratch_dir("qcancel");
    auto            m   = Model::load(test::bundled_model());
    QuantizeOptions opt;
    opt.method = "rtn";
    int calls  = 0;
    EXPECT_THROW(quantize_model(*m, CalibrationSet{}, opt, [&](const Progress&) { return ++calls < 3; }), Cancelled);
    quantize_model(*m, CalibrationSet{}, opt);
    // Cancel while writing: no output directory, no temp left.
    EXPECT_THROW(write_checkpoint(*m, test::bundled_model(), dir / "out", WriteOptions{},
                                  [&](const Progress& p) { return p.fraction < 0.3; }),
                 Cancelled);
    EXPECT_FALSE(std::filesystem::exists(dir / "out"));
    EXPECT_TRUE(std::filesystem::is_empty(dir));
    // Existing output without force.
    std::filesystem::create_directories(dir / "taken");
    std::ofstream(dir / "taken" / "x") << "keep";
    EXPECT_THROW(write_checkpoint(*m, test::bundled_model(), dir / "taken", WriteOptions{}), InputError);
    EXPECT_EQ(test::read_text(dir / "taken" / "x"), "keep");
    // Unwritable target (its parent is a regular file; works for root too): an error and nothing that loads.
    std::ofstream(dir / "file") << "not a directory";
    EXPECT_ANY_THROW(write_checkpoint(*m, test::bundled_model(), dir / "file" / "out", WriteOptions{}));
    EXPECT_EQ(test::read_text(dir / "file"), "not a directory");
}

// An interrupted run resumes from its last finished layer and ends with exactly the checkpoint of an uninterrupted
// run (the calibration states of restored layers are recomputed through their saved packed weights).
TEST(QuantizePipeline, ResumeAfterInterruptionEqualsUninterrupted) {
    auto           dir   = test::scratch_dir("qresume");
    CalibrationSet calib = tiny_calibration(4, 64);
    QuantizeOptions opt;
    opt.method   = "gptq";
    opt.bits     = 3;
    opt.work_dir = dir / "work";

    auto whole = Model::load(test::bundled_model());
    QuantizeOptions plain = opt;
    plain.work_dir.clear();
    auto rep_whole = quantize_model(*whole, calib, plain);

    {   // Interrupted once layer 2 has started: layers 0 and 1 are saved.
        auto m = Model::load(test::bundled_model());
        EXPECT_THROW(quantize_model(*m, calib, opt,
                                    [&](const Progress& p) { return p.fraction < 2.2 / m->spec().n_layer; }),
                     Cancelled);
    }
    ASSERT_TRUE(std::filesystem::exists(dir / "work" / "layer-001.safetensors"));
    EXPECT_FALSE(std::filesystem::exists(dir / "work" / "layer-002.safetensors"));
    EXPECT_FALSE(std::filesystem::exists(dir / "work" / "config.json")); // never loads as a model

    // Different options: refused, naming the field.
    {
        auto            m   = Model::load(test::bundled_model());
        QuantizeOptions bad = opt;
        bad.bits            = 4;
        bad.resume          = true;
        try {
            quantize_model(*m, calib, bad);
            ADD_FAILURE() << "resumed with other options";
        } catch (const InputError& e) {
            EXPECT_NE(std::string(e.what()).find("bits"), std::string::npos) << e.what();
        }
    }
    LoadOptions lazy;
    lazy.lazy_layers = true;
    auto m           = Model::load(test::bundled_model(), {}, lazy);
    opt.resume       = true;
    std::vector<std::string> stages;
    auto rep = quantize_model(*m, calib, opt, [&](const Progress& p) {
        stages.push_back(p.stage);
        return true;
    });
    int restored = 0;
    for (const auto& s : stages) restored += s.find("restored") != std::string::npos;
    EXPECT_EQ(restored, 2);
    ASSERT_EQ(rep.modules.size(), rep_whole.modules.size());
    for (size_t i = 0; i < rep.modules.size(); ++i) {
        EXPECT_EQ(rep.modules[i].name, rep_whole.modules[i].name);
        EXPECT_EQ(rep.modules[i].rel_error, rep_whole.modules[i].rel_error) << rep.modules[i].name;
    }
    EXPECT_EQ(rep.undercalibrated.size(), rep_whole.undercalibrated.size());
    for (int il = 0; il < m->spec().n_layer; ++il)
        for (int e : {0, 9})
            EXPECT_EQ(m->layer(il).experts[e][2]->dequantize(), whole->layer(il).experts[e][2]->dequantize());
    EXPECT_EQ(logits_of(*m, k_ids), logits_of(*whole, k_ids));
}

// 1-bit RTN: sign binarization with a mean and a scale per group, stored in the binary format.
TEST(QuantizePipeline, OneBitRtnIsSignBinarization) {
    auto            m = Model::load(test::bundled_model());
    auto            W = m->layer(1).experts[3][0]->dequantize();
    QuantizeOptions opt;
    opt.method = "rtn";
    opt.bits   = 1;
    quantize_model(*m, CalibrationSet{}, opt);
    const Linear& q = *m->layer(1).experts[3][0];
    EXPECT_EQ(q.format(), "binary");
    auto Q = q.dequantize();
    // Each (row, 128-column group) takes exactly two values μ ± α around the group's mean, by the side of the mean.
    const int in = q.in_features();
    ASSERT_EQ(in % 128, 0);
    for (int o = 0; o < 4; ++o)
        for (int g = 0; g < in / 128; ++g) {
            const float* w  = W.data() + (size_t)o * in + g * 128;
            const float* v  = Q.data() + (size_t)o * in + g * 128;
            double       mu = 0;
            for (int j = 0; j < 128; ++j) mu += w[j];
            mu /= 128;
            const float hi = *std::max_element(v, v + 128), lo = *std::min_element(v, v + 128);
            EXPECT_NEAR((hi + lo) / 2, mu, 1e-3 * std::fabs(mu) + 1e-6);
            for (int j = 0; j < 128; ++j) {
                EXPECT_TRUE(v[j] == lo || v[j] == hi);
                if (std::fabs(w[j] - mu) > 1e-3 * std::fabs(mu) + 1e-6) { EXPECT_EQ(v[j], w[j] > mu ? hi : lo); }
            }
        }
}

// The binary methods end to end: every quantized linear is packed binary, held-out perplexity is finite and its
// excess over FP at most half that of plain 1-bit RTN, ARB-RC is no worse than BiLLM, and the packed checkpoint's perplexity equals that of its
// dequantized export (the binary kernel computes with exactly the stored weights).
TEST(QuantizePipeline, BinaryMethodsBeatOneBitRtnAndMatchTheirExport) {
    auto text = Tokenizer::from_file(test::bundled_model() / "tokenizer.json")
                    .encode(test::read_text(test::resources_dir() / "corpus" / "test.txt"));
    text.resize(6 * 256); // held-out windows
    CalibrationSet calib = tiny_calibration(16, 128);
    auto ppl_of = [&](const std::string& method, std::unique_ptr<Model>* keep = nullptr) {
        auto            m = Model::load(test::bundled_model());
        QuantizeOptions opt;
        opt.method = method;
        opt.bits   = 1;
        auto rep   = quantize_model(*m, method == "rtn" ? CalibrationSet{} : calib, opt);
        for (const auto& mr : rep.modules) {
            EXPECT_EQ(m->layer(mr.layer).slot(LinearKind::Q)->format(), "binary");
            EXPECT_GE(mr.nominal_bits, 1.0);
            EXPECT_LT(mr.nominal_bits, 2.0);
        }
        double p = perplexity(*m, text, 256).ppl;
        if (keep) *keep = std::move(m);
        return p;
    };
    std::unique_ptr<Model> billm_model;
    const double rtn1 = ppl_of("rtn"), billm = ppl_of("billm", &billm_model), arbx = ppl_of("arb-x"),
                 arbrc = ppl_of("arb-rc");
    const double fp = perplexity(*Model::load(test::bundled_model()), text, 256).ppl;
    RecordProperty("ppl_fp", std::to_string(fp));
    RecordProperty("ppl_rtn1", std::to_string(rtn1));
    RecordProperty("ppl_billm", std::to_string(billm));
    RecordProperty("ppl_arbx", std::to_string(arbx));
    RecordProperty("ppl_arbrc", std::to_string(arbrc));
    for (double p : {billm, arbx, arbrc}) {
        EXPECT_TRUE(std::isfinite(p));
        EXPECT_LT(p - fp, 0.5 * (rtn1 - fp))
            << "fp " << fp << " rtn1 " << rtn1 << " billm " << billm << " arb-x " << arbx << " arb-rc " << arbrc;
    }
    EXPECT_LE(arbrc, billm);

    auto dir = test::scratch_dir("qbinary");
    const WriteReport wr = write_checkpoint(*billm_model, test::bundled_model(), dir / "packed", WriteOptions{});
    WriteOptions deq;
    deq.dequantized = true;
    deq.dtype       = DType::F32;
    write_checkpoint(*billm_model, test::bundled_model(), dir / "deq", deq);
    auto packed = Model::load(dir / "packed"), plain = Model::load(dir / "deq");
    EXPECT_EQ(packed->layer(0).experts[0][0]->format(), "binary");
    const double p_packed = perplexity(*packed, text, 256).ppl, p_plain = perplexity(*plain, text, 256).ppl;
    EXPECT_NEAR(p_packed, billm, 1e-9 * billm);
    EXPECT_NEAR(p_packed, p_plain, 1e-5 * p_plain);
    // Disk size matches the storage-exact accounting of the packed modules.
    int64_t disk = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir / "packed"))
        if (e.path().extension() == ".safetensors") disk += (int64_t)std::filesystem::file_size(e.path());
    EXPECT_GE(disk, wr.bytes_total);
    EXPECT_LT(disk - wr.bytes_total, 256 * 1024); // safetensors headers
    int64_t storage = 0;
    for (int il = 0; il < packed->spec().n_layer; ++il)
        packed->layer(il).for_each_linear([&](LinearKind, int, const std::unique_ptr<Linear>& l) {
            if (l->format() == "binary") storage += (int64_t)l->storage_bytes();
        });
    EXPECT_EQ(storage, wr.quantized_bytes);
}

// GPTVQ through the pipeline: every linear packed as `vq`, fewer storage-exact bits than RTN 2-bit g128 and a lower
// held-out perplexity.
TEST(QuantizePipeline, GptvqTwoBitBeatsRtnTwoBit) {
    auto text = Tokenizer::from_file(test::bundled_model() / "tokenizer.json")
                    .encode(test::read_text(test::resources_dir() / "corpus" / "test.txt"));
    text.resize(4 * 256);
    auto            vq = Model::load(test::bundled_model()), rtn = Model::load(test::bundled_model());
    QuantizeOptions opt;
    opt.method = "gptvq";
    opt.bits   = 2;
    opt.vq_dim = 2;
    auto rv    = quantize_model(*vq, tiny_calibration(16, 128), opt);
    opt.method = "rtn";
    auto rr    = quantize_model(*rtn, CalibrationSet{}, opt);
    EXPECT_EQ(vq->layer(3).experts[7][2]->format(), "vq");
    int64_t bv = 0, br = 0, n = 0;
    for (const auto& m : rv.modules) bv += m.bytes, n += m.weights;
    for (const auto& m : rr.modules) br += m.bytes;
    EXPECT_LT(bv, br);
    const double pv = perplexity(*vq, text, 256).ppl, pr = perplexity(*rtn, text, 256).ppl;
    RecordProperty("ppl_gptvq2", std::to_string(pv));
    RecordProperty("ppl_rtn2", std::to_string(pr));
    RecordProperty("bits_gptvq2", std::to_string(8.0 * bv / n));
    EXPECT_TRUE(std::isfinite(pv));
    EXPECT_LT(pv, pr) << "gptvq " << pv << " (" << 8.0 * bv / n << " bits) vs rtn " << pr;
}

// --codebook-bits and --vq-refine reach GPTVQ through the pipeline (a random Mixtral-layout model, 64 wide: cheap):
// every vq module holds 8-bit codebooks, and refining lowers the objective of layer 0's q/k/v (the only modules with the
// same inputs in both runs: the rest see outputs of already-quantized modules) without raising any one's.
TEST(QuantizePipeline, GptvqCodebookBitsAndRefinementReachTheQuantizer) {
    std::vector<int32_t> ids(4096);
    std::mt19937         rng(3);
    for (auto& t : ids) t = (int32_t)(rng() % 512);
    const CalibrationSet calib = random_windows(ids, 8, 64, 1, "random ids");
    QuantizeOptions      opt;
    opt.method           = "gptvq";
    opt.bits             = 2;
    opt.vq_codebook_bits = 8;
    auto plain = Model::load(test::random_model("mixtral")), refined = Model::load(test::random_model("mixtral"));
    const auto r0 = quantize_model(*plain, calib, opt);
    opt.vq_refine_iters = 3;
    const auto r1 = quantize_model(*refined, calib, opt);
    int n_vq = 0;
    for (int il = 0; il < refined->spec().n_layer; ++il)
        refined->layer(il).for_each_linear([&](LinearKind, int, const std::unique_ptr<Linear>& l) {
            if (const auto* v = dynamic_cast<const VqLinear*>(l.get())) {
                ++n_vq;
                EXPECT_EQ(v->codebook_bits(), 8);
            }
        });
    EXPECT_EQ(n_vq, (int)r1.modules.size());
    ASSERT_EQ(r0.modules.size(), r1.modules.size());
    double e0 = 0, e1 = 0;
    for (size_t i = 0; i < r0.modules.size(); ++i) {
        const std::string& nm = r0.modules[i].name;
        if (r0.modules[i].layer != 0 || (nm.find("q_proj") == nm.npos && nm.find("k_proj") == nm.npos &&
                                         nm.find("v_proj") == nm.npos))
            continue;
        ASSERT_EQ(r0.modules[i].name, r1.modules[i].name);
        EXPECT_LE(r1.modules[i].rel_error, r0.modules[i].rel_error * (1 + 1e-12)) << r0.modules[i].name;
        e0 += r0.modules[i].rel_error, e1 += r1.modules[i].rel_error;
    }
    EXPECT_LT(e1, e0);
}

// The same calibration and options give the same checkpoint at any thread count (the forward's per-thread GEMM ranges
// start where a single thread's tiles do), and the quantized model's GEMM-regime logits match too. GPTQ runs both
// kinds of forward (dense f32 linears and row-decoded packed ones) through every statistics pass; the binary methods'
// forward is the same row-decoded path (ARB-RC doubled this test's time under the sanitizers for no other coverage).
TEST(QuantizePipeline, ResultDoesNotDependOnThreadCount) {
    const CalibrationSet calib   = tiny_calibration(4, 64);
    const int            threads = num_threads();
    for (const char* method : {"gptq"}) {
        std::vector<std::vector<float>> weights[2], logits[2];
        for (int t = 0; t < 2; ++t) {
            set_num_threads(t == 0 ? 1 : 3);
            auto            m = Model::load(test::bundled_model());
            QuantizeOptions opt;
            opt.method = method;
            opt.bits   = std::string(method) == "gptq" ? 3 : 1;
            quantize_model(*m, calib, opt);
            for (int il = 0; il < m->spec().n_layer; ++il)
                m->layer(il).for_each_linear([&](LinearKind, int, const std::unique_ptr<Linear>& l) {
                    weights[t].push_back(l->dequantize());
                });
            logits[t].push_back(logits_of(*m, k_ids));
        }
        set_num_threads(threads);
        ASSERT_EQ(weights[0].size(), weights[1].size());
        size_t differ = 0;
        for (size_t i = 0; i < weights[0].size(); ++i) differ += weights[0][i] != weights[1][i];
        EXPECT_EQ(differ, 0u) << method << ": linears that differ between 1 and 3 threads";
        EXPECT_TRUE(logits[0] == logits[1]) << method;
    }
}
