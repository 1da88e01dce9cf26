#include "app/studio/compare_pane.h"

#include <QCheckBox>
#include <QComboBox>
#include <QFileInfo>
#include <QFormLayout>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QLabel>
#include <QSpinBox>
#include <QSplitter>
#include <QTableWidget>
#include <QVBoxLayout>

#include "app/studio/bar_chart.h"
#include "app/studio/heatmap_widget.h"
#include "app/studio/job.h"
#include "app/studio/job_controls.h"
#include "app/studio/model_library.h"
#include "app/studio/ui_util.h"

namespace moebius::studio {

namespace {
const QStringList kColumns = {"reference", "model", "ppl ref", "ppl model", "× ref", "acc ref", "acc model",
                              "bits/param ref", "bits/param model", "size ref", "size model", "routing shift",
                              "top-1 flips", "router KL"};
QString pct(double v) { return QString("%1 %").arg(100 * v, 0, 'f', 2); }
QString acc(double v) { return v < 0 ? QString("—") : QString::number(v, 'f', 3); }
} // namespace

ComparePane::ComparePane(ModelLibrary* library, QWidget* parent) : QWidget(parent), library_(library) {
    job_       = new Job(this);
    auto* root = new QVBoxLayout(this);
    auto* box  = new QGroupBox(tr("Compare"));
    auto* form = new QFormLayout(box);
    ref_       = new QComboBox;
    ref_->setObjectName("referenceModel");
    model_ = new QComboBox;
    model_->setObjectName("comparedModel");
    form->addRow(tr("Reference:"), ref_);
    form->addRow(tr("Model:"), model_);
    auto* row = new QHBoxLayout;
    windows_  = new QSpinBox;
    windows_->setRange(0, 100000);
    windows_->setValue(16);
    windows_->setSpecialValueText(tr("all"));
    windows_->setToolTip(tr("Windows of the bundled test text to score (0: the whole text)."));
    seqlen_ = new QSpinBox;
    seqlen_->setRange(8, 32768);
    seqlen_->setValue(256);
    tasks_ = new QCheckBox(tr("task accuracy (kjv-cloze)"));
    tasks_->setToolTip(tr("Also score multiple-choice verse completion (acc, lm-eval-harness scoring)."));
    taskItems_ = new QSpinBox;
    taskItems_->setRange(1, 100000);
    taskItems_->setValue(100);
    row->addWidget(new QLabel(tr("windows")));
    row->addWidget(windows_);
    row->addWidget(new QLabel(tr("× tokens")));
    row->addWidget(seqlen_);
    row->addWidget(tasks_);
    row->addWidget(taskItems_);
    row->addWidget(new QLabel(tr("items")));
    row->addStretch(1);
    form->addRow(tr("Evaluation:"), row);
    root->addWidget(box);
    controls_ = new JobControls(job_, tr("Compare"));
    root->addWidget(controls_);

    auto* split = new QSplitter(Qt::Vertical);
    table_      = new QTableWidget(0, kColumns.size());
    table_->setObjectName("runsTable");
    table_->setHorizontalHeaderLabels(kColumns);
    table_->horizontalHeader()->setSectionResizeMode(QHeaderView::ResizeToContents);
    table_->setEditTriggers(QAbstractItemView::NoEditTriggers);
    table_->setSelectionBehavior(QAbstractItemView::SelectRows);
    split->addWidget(table_);
    auto* charts = new QWidget;
    auto* cl     = new QHBoxLayout(charts);
    shift_       = new BarChart(tr("Routing shift per layer (top-k set changed)"));
    shift_->setObjectName("shiftChart");
    cl->addWidget(shift_, 1);
    auto* right = new QVBoxLayout;
    auto* lrow  = new QHBoxLayout;
    lrow->addWidget(new QLabel(tr("Layer:")));
    layer_ = new QComboBox;
    layer_->setObjectName("transitionLayer");
    lrow->addWidget(layer_, 1);
    right->addLayout(lrow);
    transitions_ = new HeatmapWidget;
    transitions_->setObjectName("transitionHeatmap");
    transitions_->setToolTip(tr("Reference top-1 expert (rows) → quantized top-1 expert (columns), token counts."));
    right->addWidget(transitions_, 2);
    load_ = new BarChart(tr("Load change per expert (share, model − reference)"));
    load_->setObjectName("loadChart");
    right->addWidget(load_, 1);
    cl->addLayout(right, 1);
    split->addWidget(charts);
    split->setStretchFactor(1, 3);
    root->addWidget(split, 1);

    auto refill = [this] {
        fillModelCombo(ref_, *library_);
        fillModelCombo(model_, *library_, true);
    };
    connect(library_, &ModelLibrary::entriesChanged, this, refill);
    connect(controls_, &JobControls::runClicked, this, &ComparePane::runComparison);
    connect(layer_, &QComboBox::currentIndexChanged, this, [this](int i) { showLayer(i); });
    connect(job_, &Job::failed, this, [this](const QString& m) { showError(this, tr("Comparison failed"), m); });
    refill();
}

void ComparePane::setPair(const QString& reference, const QString& model) {
    fillModelCombo(ref_, *library_);
    fillModelCombo(model_, *library_, true);
    ref_->setCurrentIndex(ref_->findData(reference));
    model_->setCurrentIndex(model_->findData(model));
}

void ComparePane::setWindows(int windows, int seqlen) {
    windows_->setValue(windows);
    seqlen_->setValue(seqlen);
}

void ComparePane::setTasks(bool on, int items) {
    tasks_->setChecked(on);
    taskItems_->setValue(items);
}

void ComparePane::runComparison() {
    const QString a = ref_->currentData().toString(), b = model_->currentData().toString();
    if (a.isEmpty() || b.isEmpty()) return showError(this, tr("Compare"), tr("Choose a reference and a model."));
    if (a == b) return showError(this, tr("Compare"), tr("Reference and model are the same checkpoint."));
    CompareRequest req;
    req.reference  = a.toStdString();
    req.model      = b.toStdString();
    req.windows    = windows_->value();
    req.seqlen     = seqlen_->value();
    req.tasks      = tasks_->isChecked();
    req.task_items = taskItems_->value();
    job_->start([this, req](const ProgressFn& progress) -> Job::Continuation {
        auto r = std::make_shared<CompareResult>(compare(req, progress));
        return [this, r] {
            result_ = r;
            addRow(*r);
            QStringList labels;
            std::vector<double> v;
            layer_->blockSignals(true);
            layer_->clear();
            for (const auto& L : r->routing.layers) {
                labels << QString::number(L.layer);
                v.push_back(L.shift_rate);
                layer_->addItem(tr("layer %1 (shift %2)").arg(L.layer).arg(pct(L.shift_rate)));
            }
            layer_->blockSignals(false);
            shift_->setBars(labels, v);
            showLayer(0);
            controls_->setStatus(tr("Mean routing shift %1, perplexity ×%2, in %3.")
                                     .arg(pct(r->routing.shift_rate()))
                                     .arg(r->model.ppl / r->reference.ppl, 0, 'f', 4)
                                     .arg(formatDuration(r->seconds)));
            emit compared();
        };
    });
}

void ComparePane::showLayer(int i) {
    if (!result_ || i < 0 || i >= (int)result_->routing.layers.size()) return;
    const auto& L = result_->routing.layers[i];
    const int   E = result_->routing.n_expert;
    transitions_->setData(E, E, std::vector<double>(L.transition.begin(), L.transition.end()), tr("ref expert"),
                          tr("model expert"), tr("tokens"));
    QStringList labels;
    for (int e = 0; e < E; ++e) labels << QString::number(e);
    load_->setBars(labels, L.load_delta);
}

void ComparePane::addRow(const CompareResult& r) {
    const int row = table_->rowCount();
    table_->insertRow(row);
    const QStringList cells = {
        QString::fromStdString(r.reference.label), QString::fromStdString(r.model.label),
        QString::number(r.reference.ppl, 'f', 3), QString::number(r.model.ppl, 'f', 3),
        QString::number(r.model.ppl / r.reference.ppl, 'f', 4), acc(r.reference.acc), acc(r.model.acc),
        QString::number(r.reference.bits_per_weight, 'f', 2), QString::number(r.model.bits_per_weight, 'f', 2),
        QString::fromStdString(human_bytes((double)r.reference.bytes)),
        QString::fromStdString(human_bytes((double)r.model.bytes)), pct(r.routing.shift_rate()),
        pct(r.routing.top1_flip_rate()), QString::number(r.routing.router_kl(), 'g', 4)};
    for (int c = 0; c < cells.size(); ++c) table_->setItem(row, c, new QTableWidgetItem(cells[c]));
    table_->selectRow(row);
}

} // namespace moebius::studio
