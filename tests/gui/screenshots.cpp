// Writes a PNG of every Studio pane, after running the real flows on the bundled model (offscreen platform,
// QWidget::grab). Usage: moebius_studio_screenshots OUT_DIR   (scripts/make_screenshots.sh)
#include <QApplication>
#include <QDir>
#include <QPlainTextEdit>
#include <QDoubleSpinBox>
#include <QSettings>
#include <QSignalSpy>
#include <QSpinBox>
#include <QTabWidget>
#include <QTemporaryDir>

#include <cstdio>

#include "app/studio/calibration_options.h"
#include "app/studio/chat_pane.h"
#include "app/studio/compare_pane.h"
#include "app/studio/importance_pane.h"
#include "app/studio/inspect_pane.h"
#include "app/studio/job.h"
#include "app/studio/main_window.h"
#include "app/studio/quantize_pane.h"
#include "app/studio/studio_style.h"
#include "engine/core/resources.h"

using namespace moebius::studio;

static bool wait(Job* job) {
    if (!job->isRunning()) return true;
    QSignalSpy spy(job, &Job::finished);
    return spy.wait(600000);
}

static bool grab(MainWindow& w, QWidget* pane, const QString& file) {
    w.tabs()->setCurrentWidget(pane);
    QApplication::processEvents();
    const bool ok = w.grab().save(file);
    std::printf("%s %s\n", ok ? "wrote" : "FAILED", qPrintable(file));
    return ok;
}

int main(int argc, char** argv) {
    qputenv("QT_QPA_PLATFORM", qgetenv("QT_QPA_PLATFORM").isEmpty() ? QByteArray("offscreen") : qgetenv("QT_QPA_PLATFORM"));
    QApplication app(argc, argv);
    QApplication::setOrganizationName("MoebiusScreenshots");
    QSettings::setDefaultFormat(QSettings::IniFormat);
    QTemporaryDir settings, work;
    QSettings::setPath(QSettings::IniFormat, QSettings::UserScope, settings.path());
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
        return 2;
    }
    qputenv("MOEBIUS_STUDIO_THEME", "light");
    applyStudioStyle(app);
    const QString out = argv[1];
    QDir().mkpath(out);
    MainWindow w;
    w.resize(1280, 800);
    w.show();
    const QString model = QString::fromStdString(moebius::default_model_dir().string());
    if (!w.openModel(model)) return 1;
    bool ok = grab(w, (QWidget*)w.modelPane(), out + "/model.png");

    w.inspectPane()->options()->setSamples(16);
    w.inspectPane()->options()->setSeqlen(128);
    w.inspectPane()->runCalibration();
    ok &= wait(w.inspectPane()->job()) && grab(w, (QWidget*)w.inspectPane(), out + "/inspect.png");

    w.importancePane()->select(1, "expert.up_proj", 3, "obs");
    w.importancePane()->options()->setSamples(8);
    w.importancePane()->options()->setSeqlen(128);
    w.importancePane()->runImportance();
    ok &= wait(w.importancePane()->job()) && grab(w, (QWidget*)w.importancePane(), out + "/importance.png");

    w.quantizePane()->setMethod("gptq");
    w.quantizePane()->setBits(3);
    w.quantizePane()->options()->setSamples(16);
    w.quantizePane()->options()->setSeqlen(128);
    w.quantizePane()->setOutput(work.filePath("tiny-qwen2moe-gptq-3bit"));
    w.quantizePane()->runQuantization();
    ok &= wait(w.quantizePane()->job()) && grab(w, (QWidget*)w.quantizePane(), out + "/quantize.png");

    w.comparePane()->setWindows(16, 256);
    w.comparePane()->runComparison();
    ok &= wait(w.comparePane()->job()) && grab(w, (QWidget*)w.comparePane(), out + "/compare.png");

    auto* chat = w.chatPane();
    chat->temperature()->setValue(0);
    chat->maxTokens()->setValue(48);
    chat->input()->setPlainText("And God said");
    w.tabs()->setCurrentWidget(chat);
    chat->send();
    ok &= wait(chat->job()) && grab(w, (QWidget*)chat, out + "/chat.png");

    // The dark palette (what a desktop that prefers dark gets).
    qputenv("MOEBIUS_STUDIO_THEME", "dark");
    applyStudioStyle(app);
    ok &= grab(w, (QWidget*)w.comparePane(), out + "/compare-dark.png");
    return ok ? 0 : 1;
}
