#include "app/studio/ui_util.h"

#include <QComboBox>
#include <QMessageBox>

#include "app/studio/model_library.h"

namespace moebius::studio {

void showError(QWidget* parent, const QString& title, const QString& message) {
    auto* box = new QMessageBox(QMessageBox::Warning, title, message, QMessageBox::Ok, parent);
    box->setObjectName("errorDialog");
    box->setAttribute(Qt::WA_DeleteOnClose);
    box->open();
}

QString formatDuration(double s) {
    if (s < 0) return {};
    if (s < 60) return QString("%1 s").arg(s, 0, 'f', s < 10 ? 1 : 0);
    const int m = (int)(s / 60);
    return QString("%1 min %2 s").arg(m).arg((int)s - 60 * m, 2, 10, QChar('0'));
}

void fillModelCombo(QComboBox* combo, const ModelLibrary& library, bool quantizedFirst) {
    const QString keep = combo->currentData().toString();
    combo->blockSignals(true);
    combo->clear();
    for (int pass = 0; pass < 2; ++pass)
        for (const auto& e : library.entries()) {
            const bool first = quantizedFirst ? e.summary.quantized : true;
            if ((pass == 0) != first) continue;
            combo->addItem(e.label(), e.path);
        }
    const int i = combo->findData(keep);
    if (i >= 0) combo->setCurrentIndex(i);
    combo->blockSignals(false);
}

} // namespace moebius::studio
