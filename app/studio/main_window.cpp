#include "app/studio/main_window.h"

#include <QAction>
#include <QApplication>
#include <QCloseEvent>
#include <QDoubleSpinBox>
#include <QFileDialog>
#include <QFileInfo>
#include <QLineEdit>
#include <QMenuBar>
#include <QMessageBox>
#include <QMimeData>
#include <QSettings>
#include <QSpinBox>
#include <QStatusBar>
#include <QTabWidget>

#include "app/studio/chat_pane.h"
#include "app/studio/compare_pane.h"
#include "app/studio/importance_pane.h"
#include "app/studio/inspect_pane.h"
#include "app/studio/model_library.h"
#include "app/studio/model_pane.h"
#include "app/studio/quantize_pane.h"
#include "app/studio/ui_util.h"

namespace moebius::studio {

namespace {
constexpr int kMaxRecent = 10;
}

MainWindow::MainWindow(QWidget* parent) : QMainWindow(parent) {
    setWindowTitle(tr("Moebius Studio"));
    setWindowIcon(QIcon(":/studio/moebius.svg"));
    setAcceptDrops(true);
    library_        = new ModelLibrary(this);
    tabs_           = new QTabWidget;
    tabs_->setObjectName("panes");
    modelPane_      = new ModelPane(library_);
    inspectPane_    = new InspectPane(library_);
    importancePane_ = new ImportancePane(library_);
    quantizePane_   = new QuantizePane(library_);
    comparePane_    = new ComparePane(library_);
    chatPane_       = new ChatPane(library_);
    tabs_->addTab(modelPane_, tr("&Model"));
    tabs_->addTab(inspectPane_, tr("&Inspect"));
    tabs_->addTab(importancePane_, tr("Im&portance"));
    tabs_->addTab(quantizePane_, tr("&Quantize"));
    tabs_->addTab(comparePane_, tr("C&ompare"));
    tabs_->addTab(chatPane_, tr("&Chat"));
    setCentralWidget(tabs_);

    auto* file = menuBar()->addMenu(tr("&File"));
    file->addAction(tr("&Open checkpoint…"), QKeySequence::Open, this, &MainWindow::chooseModel);
    recentMenu_ = file->addMenu(tr("Open &recent"));
    file->addSeparator();
    file->addAction(tr("&Quit"), QKeySequence::Quit, this, &QWidget::close);
    auto* help = menuBar()->addMenu(tr("&Help"));
    help->addAction(tr("&About Moebius Studio"), this, [this] {
        QMessageBox::about(this, tr("About Moebius Studio"),
                           tr("<b>Moebius Studio %1</b><br>Inspect, quantize, compare and chat with Mixture-of-Experts "
                              "models.<br>GPL-3.0-or-later.").arg(MOEBIUS_VERSION));
    });

    connect(modelPane_, &ModelPane::openRequested, this, &MainWindow::chooseModel);
    connect(quantizePane_, &QuantizePane::quantized, this, [this](const QString& out, const QString& ref) {
        comparePane_->setPair(ref, out);
        statusBar()->showMessage(tr("Quantized model written to %1; compare it in the Compare tab.").arg(out), 10000);
    });
    connect(library_, &ModelLibrary::currentChanged, this, [this](const QString& p) {
        setWindowTitle(tr("%1 — Moebius Studio").arg(QFileInfo(p).fileName()));
    });

    QSettings s;
    restoreGeometry(s.value("window/geometry").toByteArray());
    restoreState(s.value("window/state").toByteArray());
    if (!s.contains("window/geometry")) resize(1200, 800);
    recent_ = s.value("models/recent").toStringList();
    chatPane_->systemPrompt()->setText(s.value("chat/system").toString());
    if (s.contains("chat/maxTokens")) chatPane_->maxTokens()->setValue(s.value("chat/maxTokens").toInt());
    rebuildRecentMenu();
    tabs_->setCurrentIndex(s.value("window/tab", 0).toInt());
    statusBar()->showMessage(tr("Open a checkpoint folder (Ctrl+O) or drop one onto the window."));
}

bool MainWindow::openModel(const QString& path) {
    const QString err = library_->add(path);
    if (!err.isEmpty()) {
        showError(this, tr("Cannot open model"), err);
        return false;
    }
    const QString clean = library_->currentPath();
    recent_.removeAll(clean);
    recent_.prepend(clean);
    while (recent_.size() > kMaxRecent) recent_.removeLast();
    rebuildRecentMenu();
    statusBar()->showMessage(tr("Opened %1").arg(clean), 5000);
    return true;
}

void MainWindow::chooseModel() {
    const QString start = library_->currentPath().isEmpty() ? QString() : QFileInfo(library_->currentPath()).path();
    const QString dir   = QFileDialog::getExistingDirectory(this, tr("Open checkpoint folder"), start);
    if (!dir.isEmpty()) openModel(dir);
}

void MainWindow::rebuildRecentMenu() {
    recentMenu_->clear();
    for (const QString& p : recent_) recentMenu_->addAction(p, this, [this, p] { openModel(p); });
    recentMenu_->setEnabled(!recent_.isEmpty());
}

void MainWindow::saveSettings() const {
    QSettings s;
    s.setValue("window/geometry", saveGeometry());
    s.setValue("window/state", saveState());
    s.setValue("window/tab", tabs_->currentIndex());
    s.setValue("models/recent", recent_);
    s.setValue("chat/system", chatPane_->systemPrompt()->text());
    s.setValue("chat/maxTokens", chatPane_->maxTokens()->value());
}

void MainWindow::closeEvent(QCloseEvent* e) {
    saveSettings();
    e->accept();
}

void MainWindow::dragEnterEvent(QDragEnterEvent* e) {
    if (e->mimeData()->hasUrls()) e->acceptProposedAction();
}

void MainWindow::dropEvent(QDropEvent* e) {
    for (const QUrl& u : e->mimeData()->urls()) {
        if (!u.isLocalFile()) continue;
        QFileInfo fi(u.toLocalFile());
        openModel(fi.isDir() ? fi.absoluteFilePath() : fi.absolutePath()); // a dropped config.json opens its folder
        break;
    }
}

} // namespace moebius::studio
