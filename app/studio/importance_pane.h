#pragma once
// Importance maps: pick layer / projection / expert / metric, compute on a worker thread, show the (mean-pooled)
// map as a zoomable heatmap with its row and column profiles.
#include <QWidget>

#include <memory>

#include "app/studio/workflows.h"

class QComboBox;
class QLabel;
class QSpinBox;

namespace moebius::studio {

class CalibrationOptions;
class HeatmapWidget;
class Job;
class JobControls;
class ModelLibrary;

class ImportancePane : public QWidget {
    Q_OBJECT
public:
    explicit ImportancePane(ModelLibrary* library, QWidget* parent = nullptr);

    void runImportance();
    void select(int layer, const QString& module, int expert, const QString& metric);
    CalibrationOptions* options() const { return options_; }
    Job*                job() const { return job_; }
    HeatmapWidget*      heatmap() const { return heatmap_; }
    const ImportanceResult* result() const { return result_.get(); }

signals:
    void computed();

private:
    void syncModel();

    ModelLibrary*       library_;
    Job*                job_;
    QSpinBox *          layer_, *expert_;
    QComboBox *         module_, *metric_;
    CalibrationOptions* options_;
    JobControls*        controls_;
    HeatmapWidget*      heatmap_;
    QLabel*             info_;
    std::shared_ptr<ImportanceResult> result_;
};

} // namespace moebius::studio
