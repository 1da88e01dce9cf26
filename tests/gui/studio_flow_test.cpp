// The Studio's main flow on the bundled model, through the real widgets: open → calibrate → utilisation heatmap →
// quantize (RTN) → compare → chat. Every number the panes show is checked against the engine computed here
// independently, and the UI thread's responsiveness is measured while the worker threads run.
#include <QCheckBox>
#include <QComboBox>
#include <QDoubleSpinBox>
#include <QFile>
#include <QSpinBox>
#include <QTest>
#include <QDir>
#include <QFileInfo>
#include <QLineEdit>
#include <QPlainTextEdit>
#include <QTableWidget>
#include <QTabWidget>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "app/studio/bar_chart.h"
#include "app/studio/calibration_options.h"
#include "app/studio/chat_pane.h"
#include "app/studio/compare_pane.h"
#include "app/studio/heatmap_widget.h"
#include "app/studio/importance_pane.h"
#include "app/studio/inspect_pane.h"
#include "app/studio/job_controls.h"
#include "app/studio/main_window.h"
#include "app/studio/model_library.h"
#include "app/studio/model_pane.h"
#include "app/studio/quantize_pane.h"
#include "engine/core/resources.h"
#include "engine/core/tokenizer.h"
#include "engine/cpu/model.h"
#include "engine/eval/routing.h"
#include "quantizer/calibration/calibration_data.h"
#include "tests/gui/gui_test_util.h"

namespace moebius::studio {
namespace {

using test::GapMeter;
using test::waitForJob;

const QString kModel = QString::fromStdString(default_model_dir().string());
constexpr double kMaxUiGapMs = 100.0;

TEST(StudioFlow, OpenCalibrateQuantizeCompare) {
    QTemporaryDir tmp;
    ASSERT_TRUE(tmp.isValid());
    MainWindow w;
    w.show();
    ASSERT_TRUE(w.openModel(kModel));

    // Model pane: the summary of the bundled model.
    EXPECT_EQ(w.modelPane()->field("layers"), "4 (4 MoE)");
    EXPECT_TRUE(w.modelPane()->field("experts").startsWith("16 routed"));
    EXPECT_EQ(w.modelPane()->field("top-k"), "4");
    EXPECT_TRUE(w.modelPane()->field("shared experts").contains("gated"));
    EXPECT_TRUE(w.modelPane()->field("family").contains("qwen2_moe"));

    // Inspect: a short calibration on the worker thread, the UI serviced throughout.
    auto* inspect = w.inspectPane();
    w.tabs()->setCurrentWidget(inspect);
    inspect->options()->setSamples(4);
    inspect->options()->setSeqlen(64);
    double calibGap;
    {
        GapMeter meter;
        inspect->runCalibration();
        ASSERT_TRUE(inspect->job()->isRunning());
        ASSERT_TRUE(waitForJob(inspect->job()));
        calibGap = meter.maxGapMs();
        EXPECT_GT(meter.ticks(), 0);
    }
    ASSERT_NE(inspect->result(), nullptr) << inspect->controls()->statusText().toStdString();
    std::printf("[ measure  ] calibration: max UI-thread gap %.1f ms\n", calibGap);
    EXPECT_LT(calibGap, kMaxUiGapMs);

    // The heatmap's cells are the top-k assignment counts of the same windows, computed here independently.
    {
        auto      model = Model::load(kModel.toStdString());
        Tokenizer tok   = Tokenizer::from_file(kModel.toStdString() + "/tokenizer.json");
        auto ids  = tok.encode(quant::read_calibration_text(resources_dir() / "corpus" / "train.txt"));
        auto set  = quant::random_windows(ids, 4, 64, 0, "train.txt");
        std::vector<int32_t> flat;
        for (const auto& s : set.samples) flat.insert(flat.end(), s.begin(), s.end());
        ExpertUsage usage = measure_usage(*model, flat, 64);
        auto* hm = inspect->heatmap();
        ASSERT_EQ(hm->rows(), 4);
        ASSERT_EQ(hm->cols(), 16);
        int64_t total = 0;
        for (int l = 0; l < 4; ++l)
            for (int e = 0; e < 16; ++e) {
                EXPECT_EQ(hm->value(l, e), (double)usage.counts[l][e]) << "layer " << l << " expert " << e;
                total += usage.counts[l][e];
            }
        EXPECT_EQ(total, 4LL * 4 * 64 * 4); // layers × samples × seqlen × top-k
        EXPECT_TRUE(hm->hoverText(2, 5).contains(QString::number(usage.counts[2][5])));
        auto* imb = inspect->imbalanceChart();
        ASSERT_EQ(imb->count(), 4);
        for (int l = 0; l < 4; ++l) EXPECT_DOUBLE_EQ(imb->value(l), usage.imbalance(l));
    }

    // Quantize: RTN 4-bit into a new folder, on the worker thread.
    auto* qp = w.quantizePane();
    w.tabs()->setCurrentWidget(qp);
    qp->setMethod("rtn");
    qp->setBits(4);
    const QString out = tmp.filePath("tiny-rtn4");
    qp->setOutput(out);
    QString quantizedPath, referencePath;
    QObject::connect(qp, &QuantizePane::quantized, [&](const QString& o, const QString& r) { quantizedPath = o, referencePath = r; });
    double quantGap;
    {
        GapMeter meter;
        qp->runQuantization();
        ASSERT_TRUE(qp->job()->isRunning());
        ASSERT_TRUE(waitForJob(qp->job()));
        quantGap = meter.maxGapMs();
    }
    std::printf("[ measure  ] quantization: max UI-thread gap %.1f ms\n", quantGap);
    EXPECT_LT(quantGap, kMaxUiGapMs);
    ASSERT_NE(qp->result(), nullptr) << qp->controls()->statusText().toStdString();
    EXPECT_EQ(quantizedPath, out);
    EXPECT_TRUE(QFileInfo(out + "/config.json").isFile());
    EXPECT_FALSE(QFileInfo::exists(out + ".partial"));
    EXPECT_NEAR(qp->result()->bits_per_weight, 4.19, 0.01); // 4 code bits + scale and zero per 128 (README table)
    EXPECT_TRUE(qp->summaryText().contains("rtn"));
    ASSERT_EQ(qp->errorChart()->count(), 4);
    for (int l = 0; l < 4; ++l) EXPECT_EQ(qp->errorChart()->value(l), 0.0); // RTN sees no calibration inputs
    const auto* entry = w.library()->find(out);
    ASSERT_NE(entry, nullptr);
    EXPECT_TRUE(entry->summary.quantized);
    EXPECT_EQ(entry->summary.method, "rtn");
    EXPECT_EQ(entry->summary.bits, 4);

    // Compare: the pane's routing shift equals compare_routing on the same tokens.
    auto* cp = w.comparePane();
    w.tabs()->setCurrentWidget(cp);
    cp->setWindows(4, 64);
    cp->runComparison();
    ASSERT_TRUE(waitForJob(cp->job()));
    ASSERT_NE(cp->result(), nullptr) << cp->controls()->statusText().toStdString();
    {
        auto ref   = Model::load(kModel.toStdString());
        auto quant = Model::load(out.toStdString());
        auto ids   = evaluation_ids(kModel.toStdString(), {}, 64, 4);
        ASSERT_EQ(ids.size(), 256u);
        RoutingDiff d = compare_routing(*ref, *quant, ids, 64);
        EXPECT_DOUBLE_EQ(cp->result()->routing.shift_rate(), d.shift_rate());
        EXPECT_GT(d.shift_rate(), 0.0);
        ASSERT_EQ(cp->shiftChart()->count(), (int)d.layers.size());
        for (size_t l = 0; l < d.layers.size(); ++l) EXPECT_DOUBLE_EQ(cp->shiftChart()->value((int)l), d.layers[l].shift_rate);
        auto* table = cp->table();
        ASSERT_EQ(table->rowCount(), 1);
        int shiftCol = -1;
        for (int c = 0; c < table->columnCount(); ++c)
            if (table->horizontalHeaderItem(c)->text() == "routing shift") shiftCol = c;
        ASSERT_GE(shiftCol, 0);
        EXPECT_EQ(table->item(0, shiftCol)->text(), QString("%1 %").arg(100 * d.shift_rate(), 0, 'f', 2));
        // Transition heatmap of the first layer: every token of the text, once.
        int64_t sum = 0;
        for (int r = 0; r < 16; ++r)
            for (int c = 0; c < 16; ++c) sum += (int64_t)cp->transitions()->value(r, c);
        EXPECT_EQ(sum, d.layers[0].tokens);
    }
    EXPECT_GT(cp->result()->model.ppl, 0.0);
    EXPECT_LT(cp->result()->model.bits_per_weight, cp->result()->reference.bits_per_weight);
    // A second run adds a row: several runs in one table.
    cp->runComparison();
    ASSERT_TRUE(waitForJob(cp->job()));
    EXPECT_EQ(cp->table()->rowCount(), 2);
}

TEST(StudioFlow, GptqShowsLayerErrorsWhileRunning) {
    QTemporaryDir tmp;
    MainWindow    w;
    w.show();
    ASSERT_TRUE(w.openModel(kModel));
    auto* qp = w.quantizePane();
    w.tabs()->setCurrentWidget(qp);
    qp->setMethod("gptq");
    qp->setBits(3);
    qp->options()->setSamples(4);
    qp->options()->setSeqlen(64);
    qp->setOutput(tmp.filePath("gptq3"));
    // Sampled on every progress report: a layer's error must appear before the whole job is over.
    bool liveError = false;
    QObject::connect(qp->job(), &Job::progressed, [&] {
        if (qp->job()->isRunning() && qp->errorChart()->count() > 0 && qp->errorChart()->value(0) > 0) liveError = true;
    });
    GapMeter meter;
    qp->runQuantization();
    ASSERT_TRUE(waitForJob(qp->job()));
    std::printf("[ measure  ] GPTQ quantization: max UI-thread gap %.1f ms\n", meter.maxGapMs());
    EXPECT_LT(meter.maxGapMs(), kMaxUiGapMs);
    ASSERT_NE(qp->result(), nullptr) << qp->controls()->statusText().toStdString();
    EXPECT_TRUE(liveError);
    for (int l = 0; l < 4; ++l) {
        EXPECT_GT(qp->errorChart()->value(l), 0.0);
        EXPECT_DOUBLE_EQ(qp->errorChart()->value(l), qp->result()->layer_error[l]);
    }
}

// The VQ options reach the quantizer: 8-bit codebooks land in the checkpoint's vq modules, FP-stream targets in its
// metadata; each box is enabled only for the methods it applies to.
TEST(StudioFlow, VqOptionsReachTheCheckpoint) {
    QTemporaryDir tmp;
    MainWindow    w;
    w.show();
    ASSERT_TRUE(w.openModel(kModel));
    auto* qp  = w.quantizePane();
    auto* cb8 = qp->findChild<QCheckBox*>("codebooks8");
    auto* fpt = qp->findChild<QCheckBox*>("fpTarget");
    ASSERT_TRUE(cb8 && fpt);
    const std::pair<const char*, std::pair<bool, bool>> enabled[] = {
        {"rtn", {false, false}}, {"gptq", {false, true}}, {"gptvq", {true, true}}, {"kbvq", {true, true}},
        {"mobie", {false, false}}, {"arb-rc", {false, true}}};
    for (const auto& [m, e] : enabled) {
        qp->setMethod(m);
        EXPECT_EQ(cb8->isEnabled(), e.first) << m;
        EXPECT_EQ(fpt->isEnabled(), e.second) << m;
    }
    qp->setMethod("gptvq");
    qp->setBits(2);
    cb8->setChecked(true);
    fpt->setChecked(true);
    qp->options()->setSamples(4);
    qp->options()->setSeqlen(64);
    qp->setOutput(tmp.filePath("gptvq2"));
    qp->runQuantization();
    ASSERT_TRUE(waitForJob(qp->job()));
    ASSERT_NE(qp->result(), nullptr) << qp->controls()->statusText().toStdString();
    // 2-bit codes, and per codebook of 2,048 weights (8-bit default group 64·K·D, K = 16, D = 2) K·D int8 centroids
    // and one f16 scale.
    const double K = 16, D = 2, group = 64 * K * D;
    EXPECT_NEAR(qp->result()->bits_per_weight, 2 + (8 * K * D + 16) / group, 1e-4);
    QFile f(tmp.filePath("gptvq2/config.json"));
    ASSERT_TRUE(f.open(QIODevice::ReadOnly));
    const auto cfg = nlohmann::json::parse(f.readAll().toStdString());
    const auto& q  = cfg["quantization_config"];
    EXPECT_EQ(q.value("fp_target", false), true);
    int eight = 0;
    for (const auto& [name, m] : q["modules"].items()) eight += m.value("codebook_bits", 16) == 8;
    EXPECT_EQ(eight, (int)q["modules"].size());
    EXPECT_GT(eight, 0);
}

TEST(StudioFlow, ChatStreamsOnCpu) {
    MainWindow w;
    w.show();
    ASSERT_TRUE(w.openModel(kModel));
    auto* chat = w.chatPane();
    w.tabs()->setCurrentWidget(chat);
    // The device picker lists the CPU and the Vulkan entries; on the CPU it says what Vulkan would need.
    EXPECT_GE(chat->backendBox()->count(), 2);
    ASSERT_TRUE(chat->selectBackend("cpu"));
    EXPECT_TRUE(chat->backendReason().contains("CPU")) << chat->backendReason().toStdString();
    chat->temperature()->setValue(0); // greedy, so the reply can be checked exactly
    chat->maxTokens()->setValue(24);
    chat->systemPrompt()->setText("You are a helpful assistant.");
    chat->input()->setPlainText("And God said");
    QString stop;
    QObject::connect(chat, &ChatPane::replyFinished, [&](const QString& s) { stop = s; });
    GapMeter meter;
    chat->send();
    ASSERT_TRUE(chat->isGenerating());
    ASSERT_TRUE(waitForJob(chat->job()));
    EXPECT_FALSE(stop.isEmpty());
    EXPECT_GE(chat->piecesReceived(), 2); // streamed piece by piece, not in one block
    ASSERT_EQ(chat->messages().size(), 3u);
    const std::string reply = chat->messages()[2].content;
    EXPECT_FALSE(reply.empty());
    EXPECT_TRUE(chat->transcriptText().contains(QString::fromStdString(reply).trimmed()));
    EXPECT_TRUE(chat->statsText().contains("tok/s"));
    EXPECT_EQ(chat->deviceUsed(), "CPU");
    std::printf("[ measure  ] chat: max UI-thread gap %.1f ms; %s\n", meter.maxGapMs(), chat->statsText().toUtf8().constData());

    // The same turn through the engine directly gives the same greedy reply.
    auto cm = ChatModel::load(kModel.toStdString());
    ChatTurnOptions opt;
    opt.max_tokens           = 24;
    opt.sampling.temperature = 0;
    auto direct = run_chat_turn(*cm, {{"system", "You are a helpful assistant."}, {"user", "And God said"}}, opt,
                                [](const std::string&) { return true; });
    EXPECT_EQ(reply, direct.reply);

    // Stop: a long reply ends early and keeps what arrived.
    chat->maxTokens()->setValue(2000);
    chat->input()->setPlainText("Tell me about the flood");
    QObject::connect(chat, &ChatPane::replyFinished, [&](const QString& s) { stop = s; });
    chat->send();
    ASSERT_TRUE(QTest::qWaitFor([&] { return chat->piecesReceived() >= 2; }, 30000));
    chat->stop();
    ASSERT_TRUE(waitForJob(chat->job()));
    EXPECT_TRUE(stop == "cancelled" || stop == "eos") << stop.toStdString();
    ASSERT_EQ(chat->messages().size(), 5u);

    // Export as JSON and Markdown (written through a temporary file).
    QTemporaryDir tmp;
    ASSERT_TRUE(chat->exportTo(tmp.filePath("c.json")));
    ASSERT_TRUE(chat->exportTo(tmp.filePath("c.md")));
    QFile f(tmp.filePath("c.md"));
    ASSERT_TRUE(f.open(QIODevice::ReadOnly));
    EXPECT_TRUE(f.readAll().contains("And God said"));
}

// The same greedy turn on the Vulkan runner (Mesa lavapipe in CI): streamed, and the same reply as the CPU engine.
TEST(StudioFlow, ChatStreamsOnVulkan) {
    MainWindow w;
    w.show();
    ASSERT_TRUE(w.openModel(kModel));
    auto* chat = w.chatPane();
    w.tabs()->setCurrentWidget(chat);
    if (!chat->selectBackend("vulkan")) GTEST_SKIP() << "no usable Vulkan device: " << chat->backendReason().toStdString();
    chat->temperature()->setValue(0);
    chat->maxTokens()->setValue(24);
    chat->input()->setPlainText("And God said");
    chat->send();
    ASSERT_TRUE(waitForJob(chat->job(), 300000));
    ASSERT_EQ(chat->messages().size(), 2u);
    EXPECT_TRUE(chat->deviceUsed().startsWith("Vulkan")) << chat->deviceUsed().toStdString() << ": "
                                                         << chat->backendReason().toStdString();
    EXPECT_GE(chat->piecesReceived(), 2);
    const std::string reply = chat->messages()[1].content;
    EXPECT_FALSE(reply.empty());
    std::printf("[ measure  ] vulkan chat: %s\n", chat->statsText().toUtf8().constData());

    auto cm = ChatModel::load(kModel.toStdString());
    ChatTurnOptions opt;
    opt.max_tokens           = 24;
    opt.sampling.temperature = 0;
    auto cpu = run_chat_turn(*cm, {{"user", "And God said"}}, opt, [](const std::string&) { return true; });
    EXPECT_EQ(reply, cpu.reply);
}

TEST(StudioFlow, ImportanceMapOfAnExpert) {
    MainWindow w;
    w.show();
    ASSERT_TRUE(w.openModel(kModel));
    auto* ip = w.importancePane();
    ip->select(1, "expert.up_proj", 3, "obs");
    ip->options()->setSamples(4);
    ip->options()->setSeqlen(64);
    ip->runImportance();
    ASSERT_TRUE(waitForJob(ip->job()));
    ASSERT_NE(ip->result(), nullptr);
    ImportanceRequest req;
    req.layer = 1, req.module = "expert.up_proj", req.expert = 3, req.metric = "obs";
    req.calibration.samples = 4, req.calibration.seqlen = 64;
    auto direct = importance(kModel.toStdString(), req);
    ASSERT_EQ(ip->heatmap()->rows(), direct.shown_rows);
    ASSERT_EQ(ip->heatmap()->cols(), direct.shown_cols);
    for (int r = 0; r < direct.shown_rows; r += 7)
        for (int c = 0; c < direct.shown_cols; c += 5)
            EXPECT_EQ(ip->heatmap()->value(r, c), (double)direct.values[(size_t)r * direct.shown_cols + c]);
}

} // namespace
} // namespace moebius::studio
