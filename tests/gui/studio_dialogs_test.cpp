// Everyday quality: bad input gives an error dialog (never a crash), cancel leaves nothing behind, settings and the
// recent-models list survive a restart.
#include <QDir>
#include <QFile>
#include <QFileInfo>
#include <QLineEdit>
#include <QSettings>
#include <QSpinBox>
#include <QTabWidget>

#include <gtest/gtest.h>

#include "app/studio/calibration_options.h"
#include "app/studio/chat_pane.h"
#include "app/studio/job_controls.h"
#include "app/studio/main_window.h"
#include "app/studio/model_library.h"
#include "app/studio/model_pane.h"
#include "app/studio/quantize_pane.h"
#include "engine/core/resources.h"
#include "tests/gui/gui_test_util.h"

namespace moebius::studio {
namespace {

const QString kModel = QString::fromStdString(default_model_dir().string());

TEST(StudioDialogs, FolderThatIsNotACheckpointShowsAnError) {
    QTemporaryDir tmp;
    MainWindow    w;
    w.show();
    EXPECT_FALSE(w.openModel(tmp.path()));
    auto* box = test::errorDialog();
    ASSERT_NE(box, nullptr);
    EXPECT_TRUE(box->text().contains("not a checkpoint folder")) << box->text().toStdString();
    test::closeErrorDialogs();

    // A config.json that is not JSON: the message names the file.
    QFile cfg(tmp.filePath("config.json"));
    ASSERT_TRUE(cfg.open(QIODevice::WriteOnly));
    cfg.write("{ not json");
    cfg.close();
    EXPECT_FALSE(w.openModel(tmp.path()));
    box = test::errorDialog();
    ASSERT_NE(box, nullptr);
    EXPECT_TRUE(box->text().contains("config.json")) << box->text().toStdString();
    test::closeErrorDialogs();
    EXPECT_EQ(w.library()->entries().size(), 0);

    // Quantizing with nothing open, or into a non-empty folder, is refused with a dialog.
    w.quantizePane()->runQuantization();
    ASSERT_NE(test::errorDialog(), nullptr);
    test::closeErrorDialogs();
    ASSERT_TRUE(w.openModel(kModel));
    w.quantizePane()->setMethod("rtn");
    w.quantizePane()->setOutput(kModel); // exists and is not empty
    w.quantizePane()->runQuantization();
    EXPECT_FALSE(w.quantizePane()->job()->isRunning());
    ASSERT_NE(test::errorDialog(), nullptr);
    test::closeErrorDialogs();
    // A calibration file that does not exist.
    w.quantizePane()->setMethod("gptq");
    w.quantizePane()->options()->setSource(CalibrationRequest::Source::File, tmp.filePath("missing.txt"));
    w.quantizePane()->setOutput(tmp.filePath("out"));
    w.quantizePane()->runQuantization();
    EXPECT_FALSE(w.quantizePane()->job()->isRunning());
    ASSERT_NE(test::errorDialog(), nullptr);
    test::closeErrorDialogs();
}

TEST(StudioDialogs, CancelledQuantizationLeavesNothing) {
    QTemporaryDir tmp;
    MainWindow    w;
    w.show();
    ASSERT_TRUE(w.openModel(kModel));
    auto* qp = w.quantizePane();
    qp->setMethod("gptq");
    qp->setBits(3);
    qp->options()->setSamples(4);
    qp->options()->setSeqlen(64);
    const QString out = tmp.filePath("cancelled");
    qp->setOutput(out);
    bool cancelled = false;
    QObject::connect(qp->job(), &Job::cancelled, [&] { cancelled = true; });
    // Cancel as soon as the first progress report arrives (the job is then inside the pipeline).
    QObject::connect(qp->job(), &Job::progressed, qp->job(), &Job::cancel);
    qp->runQuantization();
    ASSERT_TRUE(test::waitForJob(qp->job()));
    EXPECT_TRUE(cancelled) << qp->controls()->statusText().toStdString();
    EXPECT_EQ(qp->result(), nullptr);
    EXPECT_FALSE(QFileInfo::exists(out));
    EXPECT_FALSE(QFileInfo::exists(out + ".partial"));
    EXPECT_EQ(test::errorDialog(), nullptr);
    EXPECT_TRUE(QDir(tmp.path()).entryList(QDir::NoDotAndDotDot | QDir::AllEntries).isEmpty());
}

TEST(StudioDialogs, SettingsAndRecentModelsSurviveARestart) {
    {
        MainWindow w;
        w.show();
        ASSERT_TRUE(w.openModel(kModel));
        w.chatPane()->systemPrompt()->setText("Answer in one verse.");
        w.chatPane()->maxTokens()->setValue(77);
        w.tabs()->setCurrentIndex(3);
        w.close();
    }
    MainWindow again;
    const QString clean = QDir::cleanPath(QFileInfo(kModel).absoluteFilePath());
    ASSERT_FALSE(again.recentModels().isEmpty());
    EXPECT_EQ(again.recentModels().first(), clean);
    EXPECT_EQ(again.chatPane()->systemPrompt()->text(), "Answer in one verse.");
    EXPECT_EQ(again.chatPane()->maxTokens()->value(), 77);
    EXPECT_EQ(again.tabs()->currentIndex(), 3);
}

} // namespace
} // namespace moebius::studio
