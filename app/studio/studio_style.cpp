#include "app/studio/studio_style.h"

#include <QApplication>
#include <QPalette>
#include <QProcess>
#include <QStyle>
#include <QStyleFactory>

namespace moebius::studio {

bool prefersDarkTheme() {
    const QByteArray forced = qgetenv("MOEBIUS_STUDIO_THEME").toLower();
    if (forced == "dark") return true;
    if (forced == "light") return false;
    if (qgetenv("GTK_THEME").toLower().endsWith(":dark")) return true;
    // GNOME 42+ keeps the choice here; Qt 6.4 does not read it itself. No gsettings (or no GNOME): no answer.
    QProcess gs;
    gs.start("gsettings", {"get", "org.gnome.desktop.interface", "color-scheme"});
    if (gs.waitForFinished(500) && gs.exitCode() == 0) {
        const QByteArray v = gs.readAllStandardOutput();
        if (v.contains("prefer-dark")) return true;
        if (v.contains("prefer-light") || v.contains("default")) return false;
    } else {
        gs.kill();
        gs.waitForFinished(100);
    }
    // KDE and other platform themes hand Qt their palette directly.
    return QApplication::palette().color(QPalette::Window).lightness() < 128;
}

void applyStudioStyle(QApplication& app) {
    app.setStyle(QStyleFactory::create("Fusion"));
    if (!prefersDarkTheme()) {
        app.setPalette(app.style()->standardPalette());
        return;
    }
    QPalette p;
    const QColor window(45, 47, 56), base(30, 31, 38), text(222, 224, 230), disabled(120, 122, 130);
    p.setColor(QPalette::Window, window);
    p.setColor(QPalette::WindowText, text);
    p.setColor(QPalette::Base, base);
    p.setColor(QPalette::AlternateBase, window);
    p.setColor(QPalette::ToolTipBase, base);
    p.setColor(QPalette::ToolTipText, text);
    p.setColor(QPalette::PlaceholderText, disabled);
    p.setColor(QPalette::Text, text);
    p.setColor(QPalette::Button, window);
    p.setColor(QPalette::ButtonText, text);
    p.setColor(QPalette::BrightText, Qt::white);
    p.setColor(QPalette::Highlight, QColor(42, 130, 218));
    p.setColor(QPalette::HighlightedText, Qt::white);
    p.setColor(QPalette::Link, QColor(90, 170, 255));
    for (auto role : {QPalette::WindowText, QPalette::Text, QPalette::ButtonText})
        p.setColor(QPalette::Disabled, role, disabled);
    app.setPalette(p);
}

} // namespace moebius::studio
