#pragma once
// Small helpers shared by the panes.
#include <QString>

class QWidget;
class QComboBox;

namespace moebius::studio {

class ModelLibrary;

// A non-blocking error dialog (window-modal, deleted on close): never exec(), so no job or timer stalls behind it.
void showError(QWidget* parent, const QString& title, const QString& message);
// "12 s", "3 min 05 s"; empty for an unknown (negative) ETA.
QString formatDuration(double seconds);
// Fills a combo box with the library's models (data = path), keeping the selection when it still exists.
void fillModelCombo(QComboBox* combo, const ModelLibrary& library, bool quantizedFirst = false);

} // namespace moebius::studio
