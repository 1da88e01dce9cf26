// moebius-studio: the Qt 6 workbench. Opens the checkpoint given on the command line, else the bundled model.
#include <QApplication>
#include <QCommandLineParser>
#include <QFileInfo>
#include <QIcon>
#include <QTabWidget>

#include <iostream>

#include "app/studio/main_window.h"
#include "app/studio/studio_style.h"
#include "engine/core/resources.h"

int main(int argc, char** argv) {
    QApplication app(argc, argv);
    QApplication::setOrganizationName("Moebius");
    QApplication::setApplicationName("moebius-studio");
    QApplication::setApplicationDisplayName("Moebius Studio");
    QApplication::setApplicationVersion(MOEBIUS_VERSION);
    QApplication::setDesktopFileName("moebius-studio");
    QApplication::setWindowIcon(QIcon(":/studio/moebius.svg"));
    moebius::studio::applyStudioStyle(app);

    QCommandLineParser cli;
    cli.setApplicationDescription("Inspect, quantize, compare and chat with Mixture-of-Experts models.");
    cli.addHelpOption();
    cli.addVersionOption();
    cli.addPositionalArgument("model", "Checkpoint folder to open (default: the bundled tiny-qwen2moe).");
    QCommandLineOption tab("tab", "Pane to show first: model, inspect, importance, quantize, compare, chat.", "name");
    cli.addOption(tab);
    cli.process(app);

    moebius::studio::MainWindow w;
    const QStringList pos  = cli.positionalArguments();
    const QString     path = pos.isEmpty() ? QString::fromStdString(moebius::default_model_dir().string()) : pos.first();
    if (QFileInfo(path).exists() || !pos.isEmpty()) w.openModel(path);
    if (cli.isSet(tab)) {
        const QStringList names = {"model", "inspect", "importance", "quantize", "compare", "chat"};
        const int i = names.indexOf(cli.value(tab).toLower());
        if (i >= 0) w.tabs()->setCurrentIndex(i);
    }
    w.show();
    return app.exec();
}
