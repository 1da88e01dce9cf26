#include "app/studio/inspect_pane.h"

#include <QComboBox>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QSplitter>
#include <QVBoxLayout>

#include "app/studio/bar_chart.h"
#include "app/studio/calibration_options.h"
#include "app/studio/heatmap_widget.h"
#include "app/studio/job.h"
#include "app/studio/job_controls.h"
#include "app/studio/model_library.h"
#include "app/studio/ui_util.h"

namespace moebius::studio {

namespace {
enum Measure { Counts, Share, MeanWeight };
}

InspectPane::InspectPane(ModelLibrary* library, QWidget* parent) : QWidget(parent), library_(library) {
    job_       = new Job(this);
    auto* root = new QVBoxLayout(this);
    auto* top  = new QGroupBox(tr("Calibration"));
    auto* tl   = new QVBoxLayout(top);
    options_   = new CalibrationOptions;
    tl->addWidget(options_);
    controls_ = new JobControls(job_, tr("Run calibration"));
    tl->addWidget(controls_);
    root->addWidget(top);

    auto* bar = new QHBoxLayout;
    bar->addWidget(new QLabel(tr("Show:")));
    measure_ = new QComboBox;
    measure_->setObjectName("usageMeasure");
    measure_->addItem(tr("tokens routed to the expert (top-k assignments)"), Counts);
    measure_->addItem(tr("share of the layer's assignments"), Share);
    measure_->addItem(tr("mean router weight when chosen"), MeanWeight);
    bar->addWidget(measure_, 1);
    summary_ = new QLabel;
    summary_->setObjectName("usageSummary");
    bar->addWidget(summary_, 1);
    root->addLayout(bar);

    auto* split = new QSplitter(Qt::Vertical);
    heatmap_    = new HeatmapWidget;
    heatmap_->setObjectName("usageHeatmap");
    imbalance_ = new BarChart(tr("Imbalance per layer (σ of expert frequencies; 0 = balanced)"));
    imbalance_->setObjectName("imbalanceChart");
    split->addWidget(heatmap_);
    split->addWidget(imbalance_);
    split->setStretchFactor(0, 3);
    split->setStretchFactor(1, 1);
    root->addWidget(split, 1);

    connect(controls_, &JobControls::runClicked, this, &InspectPane::runCalibration);
    connect(measure_, &QComboBox::currentIndexChanged, this, &InspectPane::showResult);
    connect(job_, &Job::failed, this, [this](const QString& m) { showError(this, tr("Calibration failed"), m); });
}

void InspectPane::runCalibration() {
    const auto* e = library_->current();
    if (!e) return showError(this, tr("No model"), tr("Open a checkpoint folder first."));
    if (auto p = options_->problem(); !p.isEmpty()) return showError(this, tr("Calibration source"), p);
    const auto req  = options_->request();
    const auto dir  = e->summary.dir;
    const QString path = e->path;
    job_->start([this, req, dir, path](const ProgressFn& progress) -> Job::Continuation {
        auto r = std::make_shared<CalibrationResult>(calibrate(dir, req, progress));
        return [this, r, path] {
            result_      = r;
            resultModel_ = path;
            showResult();
            emit calibrated();
        };
    });
}

void InspectPane::showResult() {
    if (!result_) return;
    const auto& u = result_->usage;
    const int   L = (int)u.layers.size(), E = u.n_expert;
    std::vector<double> v((size_t)L * E);
    const int m = measure_->currentData().toInt();
    for (int l = 0; l < L; ++l)
        for (int e = 0; e < E; ++e)
            v[(size_t)l * E + e] = m == Counts ? (double)u.counts[l][e] : m == Share ? u.fraction(l, e) : u.mean_weight(l, e);
    const QString what = m == Counts ? tr("tokens") : m == Share ? tr("of assignments") : tr("mean weight");
    heatmap_->setData(L, E, std::move(v), tr("layer"), tr("expert"), what);
    QStringList rows, labels;
    std::vector<double> imb;
    for (int l = 0; l < L; ++l) {
        rows << tr("layer %1").arg(u.layers[l]);
        labels << QString::number(u.layers[l]);
        imb.push_back(u.imbalance(l));
    }
    heatmap_->setRowLabels(rows);
    imbalance_->setBars(labels, imb);
    summary_->setText(tr("%1 × %2 tokens (%3), mean imbalance σ %4, %5")
                          .arg(result_->set.samples.size())
                          .arg(result_->set.seqlen)
                          .arg(QString::fromStdString(result_->set.source))
                          .arg(u.mean_imbalance(), 0, 'f', 4)
                          .arg(formatDuration(result_->seconds)));
    controls_->setStatus(tr("Calibrated %1 in %2.").arg(resultModel_.section('/', -1), formatDuration(result_->seconds)));
}

} // namespace moebius::studio
