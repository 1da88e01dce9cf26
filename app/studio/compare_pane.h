#pragma once
// Compare pane: reference vs quantized on the same evaluation tokens — perplexity, task accuracy, bits and size
// side by side; per-layer routing-shift bars, the expert→expert transition heatmap of a layer, per-expert load
// change; every run is kept as a row of one table.
#include <QWidget>

#include <memory>

#include "app/studio/workflows.h"

class QCheckBox;
class QComboBox;
class QSpinBox;
class QTableWidget;

namespace moebius::studio {

class BarChart;
class HeatmapWidget;
class Job;
class JobControls;
class ModelLibrary;

class ComparePane : public QWidget {
    Q_OBJECT
public:
    explicit ComparePane(ModelLibrary* library, QWidget* parent = nullptr);

    void runComparison();
    // Chooses the pair to compare (paths known to the library).
    void setPair(const QString& reference, const QString& model);
    void setWindows(int windows, int seqlen);
    void setTasks(bool on, int items);

    Job*           job() const { return job_; }
    JobControls*   controls() const { return controls_; }
    QTableWidget*  table() const { return table_; }
    BarChart*      shiftChart() const { return shift_; }
    HeatmapWidget* transitions() const { return transitions_; }
    BarChart*      loadChart() const { return load_; }
    const CompareResult* result() const { return result_.get(); }
    void           showLayer(int moeLayer);

signals:
    void compared();

private:
    void addRow(const CompareResult& r);

    ModelLibrary*  library_;
    Job*           job_;
    QComboBox *    ref_, *model_, *layer_;
    QSpinBox *     windows_, *seqlen_, *taskItems_;
    QCheckBox*     tasks_;
    JobControls*   controls_;
    QTableWidget*  table_;
    BarChart *     shift_, *load_;
    HeatmapWidget* transitions_;
    std::shared_ptr<CompareResult> result_;
};

} // namespace moebius::studio
