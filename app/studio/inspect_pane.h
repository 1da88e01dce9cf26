#pragma once
// Inspect pane: calibrate the current model on a worker thread, then show expert utilisation — a layer × expert
// heatmap of top-k assignment counts (hover for values) and the per-layer imbalance.
#include <QWidget>

#include <memory>

#include "app/studio/workflows.h"

class QComboBox;
class QLabel;

namespace moebius::studio {

class BarChart;
class CalibrationOptions;
class HeatmapWidget;
class Job;
class JobControls;
class ModelLibrary;

class InspectPane : public QWidget {
    Q_OBJECT
public:
    explicit InspectPane(ModelLibrary* library, QWidget* parent = nullptr);

    void runCalibration();

    CalibrationOptions* options() const { return options_; }
    JobControls*        controls() const { return controls_; }
    Job*                job() const { return job_; }
    HeatmapWidget*      heatmap() const { return heatmap_; }
    BarChart*           imbalanceChart() const { return imbalance_; }
    // The last finished calibration (null before the first).
    const CalibrationResult* result() const { return result_.get(); }

signals:
    void calibrated();

private:
    void showResult();

    ModelLibrary*                      library_;
    Job*                               job_;
    CalibrationOptions*                options_;
    JobControls*                       controls_;
    QComboBox*                         measure_;
    HeatmapWidget*                     heatmap_;
    BarChart*                          imbalance_;
    QLabel*                            summary_;
    std::shared_ptr<CalibrationResult> result_;
    QString                            resultModel_;
};

} // namespace moebius::studio
