#pragma once
// The calibration source controls shared by the Inspect and Quantize panes: bundled text, a file, or EBSS
// self-sampling; samples × sequence length; seed.
#include <QWidget>

#include "app/studio/workflows.h"

class QComboBox;
class QLineEdit;
class QPushButton;
class QSpinBox;

namespace moebius::studio {

class CalibrationOptions : public QWidget {
    Q_OBJECT
public:
    explicit CalibrationOptions(QWidget* parent = nullptr);

    CalibrationRequest request() const;
    void               setSamples(int n);
    void               setSeqlen(int n);
    void               setSource(CalibrationRequest::Source s, const QString& file = {});
    // Empty, or why the current choice cannot run (e.g. no file chosen).
    QString            problem() const;

private:
    QComboBox*   source_;
    QLineEdit*   file_;
    QPushButton* browse_;
    QSpinBox *   samples_, *seqlen_, *seed_;
};

} // namespace moebius::studio
