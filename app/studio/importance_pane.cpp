#include "app/studio/importance_pane.h"

#include <QComboBox>
#include <QFormLayout>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QSpinBox>
#include <QVBoxLayout>

#include "app/studio/calibration_options.h"
#include "app/studio/heatmap_widget.h"
#include "app/studio/job.h"
#include "app/studio/job_controls.h"
#include "app/studio/model_library.h"
#include "app/studio/ui_util.h"
#include "engine/core/model_config.h"

namespace moebius::studio {

ImportancePane::ImportancePane(ModelLibrary* library, QWidget* parent) : QWidget(parent), library_(library) {
    job_       = new Job(this);
    auto* root = new QVBoxLayout(this);
    auto* box  = new QGroupBox(tr("Importance map"));
    auto* form = new QFormLayout(box);
    auto* row  = new QHBoxLayout;
    layer_     = new QSpinBox;
    layer_->setObjectName("importanceLayer");
    module_ = new QComboBox;
    module_->setObjectName("importanceModule");
    for (int k = 0; k < (int)LinearKind::Count; ++k) {
        const auto kind = (LinearKind)k;
        if (kind == LinearKind::Router || kind == LinearKind::SharedExpertGate) continue;
        module_->addItem(linear_kind_name(kind), linear_kind_name(kind));
    }
    module_->setCurrentIndex(module_->findData("expert.up_proj"));
    expert_ = new QSpinBox;
    expert_->setObjectName("importanceExpert");
    metric_ = new QComboBox;
    metric_->setObjectName("importanceMetric");
    metric_->addItem(tr("OBS saliency  w²/[H⁻¹]²"), "obs");
    metric_->addItem(tr("Hessian diagonal  H_jj·w²"), "hdiag");
    metric_->addItem(tr("GLAS (loss-gradient aware)"), "glas");
    metric_->setToolTip(tr("OBS: the error of removing a weight (BiLLM). GLAS also weighs each output channel by its "
                           "mean squared loss gradient (MoBiE); it runs a backward pass."));
    row->addWidget(new QLabel(tr("layer")));
    row->addWidget(layer_);
    row->addWidget(new QLabel(tr("projection")));
    row->addWidget(module_);
    row->addWidget(new QLabel(tr("expert")));
    row->addWidget(expert_);
    row->addWidget(new QLabel(tr("metric")));
    row->addWidget(metric_, 1);
    form->addRow(row);
    options_ = new CalibrationOptions;
    options_->setSamples(8);
    options_->setSeqlen(128);
    form->addRow(options_);
    root->addWidget(box);
    controls_ = new JobControls(job_, tr("Compute"));
    root->addWidget(controls_);
    info_ = new QLabel(tr("Wheel zooms, drag pans, double-click resets. Rows: output channels; columns: input channels."));
    root->addWidget(info_);
    heatmap_ = new HeatmapWidget;
    heatmap_->setObjectName("importanceHeatmap");
    root->addWidget(heatmap_, 1);

    connect(module_, &QComboBox::currentIndexChanged, this, [this] {
        LinearKind k;
        expert_->setEnabled(linear_kind_from_name(module_->currentData().toString().toStdString(), k) && is_expert_kind(k));
    });
    connect(library_, &ModelLibrary::currentChanged, this, &ImportancePane::syncModel);
    connect(controls_, &JobControls::runClicked, this, &ImportancePane::runImportance);
    connect(job_, &Job::failed, this, [this](const QString& m) { showError(this, tr("Importance map failed"), m); });
}

void ImportancePane::syncModel() {
    if (const auto* e = library_->current()) {
        layer_->setMaximum(std::max(0, e->summary.layers - 1));
        expert_->setMaximum(std::max(0, e->summary.experts - 1));
    }
}

void ImportancePane::select(int layer, const QString& module, int expert, const QString& metric) {
    layer_->setValue(layer);
    module_->setCurrentIndex(module_->findData(module));
    expert_->setValue(expert);
    metric_->setCurrentIndex(metric_->findData(metric));
}

void ImportancePane::runImportance() {
    const auto* e = library_->current();
    if (!e) return showError(this, tr("No model"), tr("Open a checkpoint folder first."));
    if (auto p = options_->problem(); !p.isEmpty()) return showError(this, tr("Calibration source"), p);
    ImportanceRequest req;
    req.layer       = layer_->value();
    req.module      = module_->currentData().toString().toStdString();
    req.expert      = expert_->value();
    req.metric      = metric_->currentData().toString().toStdString();
    req.calibration = options_->request();
    const auto dir  = e->summary.dir;
    job_->start([this, req, dir](const ProgressFn& progress) -> Job::Continuation {
        auto r = std::make_shared<ImportanceResult>(importance(dir, req, progress));
        return [this, r, req] {
            result_ = r;
            heatmap_->setData(r->shown_rows, r->shown_cols, std::vector<double>(r->values.begin(), r->values.end()),
                              tr("out"), tr("in"), QString::fromStdString(req.metric));
            info_->setText(tr("%1, layer %2%3: %4 × %5 weights (shown %6 × %7, mean-pooled), %8 calibration tokens.")
                               .arg(QString::fromStdString(req.module))
                               .arg(req.layer)
                               .arg(req.module.rfind("expert.", 0) == 0 ? tr(", expert %1").arg(req.expert) : QString())
                               .arg(r->rows)
                               .arg(r->cols)
                               .arg(r->shown_rows)
                               .arg(r->shown_cols)
                               .arg(r->tokens));
            emit computed();
        };
    });
}

} // namespace moebius::studio
