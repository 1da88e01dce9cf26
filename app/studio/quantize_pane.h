#pragma once
// Quantize pane: method and options (with tooltips), calibration source, output folder; runs on a worker thread
// with per-layer progress, ETA, a live per-layer reconstruction-error chart and cancel. On success the summary is
// shown and the new checkpoint joins the model list.
#include <QWidget>

#include <memory>

#include "app/studio/workflows.h"

class QCheckBox;
class QComboBox;
class QLabel;
class QLineEdit;
class QSpinBox;

namespace moebius::studio {

class BarChart;
class CalibrationOptions;
class Job;
class JobControls;
class ModelLibrary;

class QuantizePane : public QWidget {
    Q_OBJECT
public:
    explicit QuantizePane(ModelLibrary* library, QWidget* parent = nullptr);

    void runQuantization();

    void setMethod(const QString& method);
    void setBits(int bits);
    void setOutput(const QString& dir);
    CalibrationOptions* options() const { return options_; }
    JobControls*        controls() const { return controls_; }
    Job*                job() const { return job_; }
    BarChart*           errorChart() const { return errors_; }
    QString             summaryText() const;
    const QuantizeResult* result() const { return result_.get(); }

signals:
    void quantized(const QString& path, const QString& reference);

private:
    void syncMethod();
    QString suggestedOutput() const;

    ModelLibrary*       library_;
    Job*                job_;
    QComboBox*          method_;
    QSpinBox *          bits_, *group_;
    QCheckBox *         sym_, *actOrder_, *attention_, *codebooks8_, *fpTarget_;
    CalibrationOptions* options_;
    QLineEdit*          out_;
    JobControls*        controls_;
    BarChart*           errors_;
    QLabel*             summary_;
    std::shared_ptr<QuantizeResult> result_;
    bool                outEdited_ = false;
};

} // namespace moebius::studio
