#include "app/studio/quantize_pane.h"

#include <QCheckBox>
#include <QComboBox>
#include <QDir>
#include <QFileDialog>
#include <QFileInfo>
#include <QFormLayout>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QPushButton>
#include <QSpinBox>
#include <QVBoxLayout>

#include "app/studio/bar_chart.h"
#include "app/studio/calibration_options.h"
#include "app/studio/job.h"
#include "app/studio/job_controls.h"
#include "app/studio/model_library.h"
#include "app/studio/ui_util.h"
#include "engine/core/resources.h"
#include "quantizer/pipeline.h"

namespace moebius::studio {

namespace {
struct MethodInfo {
    const char* id;
    const char* label;
    const char* tip;
};
const MethodInfo kMethods[] = {
    {"rtn", "RTN — round to nearest", "Per-group min/max rounding of the weights. No calibration; seconds. The baseline."},
    {"gptq", "GPTQ", "Second-order error compensation with each expert's Hessian H = Σ x xᵀ over the tokens routed to it."},
    {"agq", "AGQ (MoEQuant)", "GPTQ with an affinity-weighted Hessian: each token counts by its router weight. Pair with EBSS."},
    {"gptvq", "GPTVQ — vector quantization", "Hessian-weighted k-means codebooks with GPTQ error feedback; 2–3 bits per weight."},
    {"billm", "BiLLM — binary", "Salient columns + bell-shaped split binarization (~1.1 nominal bits). Bits are ignored."},
    {"arb-x", "ARB-X — binary", "Alternating refined binarization with calibration cross-terms. Bits are ignored."},
    {"arb-rc", "ARB-RC — binary", "Alternating refined binarization with row and column scales. Bits are ignored."},
    {"kbvq", "KBVQ-MoE — vector quantization", "A low-rank basis shared by each layer's experts (IDRE), vector quantization of the rest with one codebook shared by the layer's experts (4-D at 2 bits), and a channel affine correction of the experts' output (BCOS); 2–3 bits per weight."},
    {"mobie", "MoBiE — binary experts", "ARB-RC binarization; routed experts share a rank-16 8-bit basis per layer (CEJD) with loss-gradient saliency (GLAS) and router-aware error placement (NGES). Bits are ignored."},
};
} // namespace

QuantizePane::QuantizePane(ModelLibrary* library, QWidget* parent) : QWidget(parent), library_(library) {
    job_       = new Job(this);
    auto* root = new QVBoxLayout(this);
    auto* opts = new QGroupBox(tr("Method"));
    auto* form = new QFormLayout(opts);
    method_    = new QComboBox;
    method_->setObjectName("method");
    for (const auto& m : kMethods) {
        method_->addItem(tr(m.label), m.id);
        method_->setItemData(method_->count() - 1, tr(m.tip), Qt::ToolTipRole);
    }
    method_->setCurrentIndex(method_->findData("gptq"));
    form->addRow(tr("Method:"), method_);
    auto* nums = new QHBoxLayout;
    bits_      = new QSpinBox;
    bits_->setObjectName("bits");
    bits_->setRange(1, 8);
    bits_->setValue(4);
    bits_->setToolTip(tr("Code bits per weight (RTN also takes 1: sign binarization)."));
    group_ = new QSpinBox;
    group_->setObjectName("group");
    group_->setRange(-1, 4096);
    group_->setValue(128);
    group_->setSpecialValueText(tr("per channel"));
    group_->setToolTip(tr("Weights sharing one scale and zero along the input dimension; must divide the input sizes."));
    nums->addWidget(new QLabel(tr("bits")));
    nums->addWidget(bits_);
    nums->addWidget(new QLabel(tr("group")));
    nums->addWidget(group_);
    sym_ = new QCheckBox(tr("symmetric"));
    sym_->setToolTip(tr("Zero point fixed at the centre of the grid (one scale per group, no offset)."));
    actOrder_ = new QCheckBox(tr("act-order"));
    actOrder_->setToolTip(tr("GPTQ: quantize columns in order of decreasing Hessian diagonal."));
    attention_ = new QCheckBox(tr("quantize attention"));
    attention_->setChecked(true);
    attention_->setToolTip(tr("Also quantize q/k/v/o projections (routers always stay in source precision)."));
    codebooks8_ = new QCheckBox(tr("8-bit codebooks"));
    codebooks8_->setObjectName("codebooks8");
    codebooks8_->setToolTip(tr("GPTVQ/KBVQ: int8 centroids with one scale per codebook, twice as many codebooks for the "
                               "same storage (KBVQ's codebooks shared by a layer's experts stay 16-bit)."));
    fpTarget_ = new QCheckBox(tr("FP-stream targets"));
    fpTarget_->setObjectName("fpTarget");
    fpTarget_->setToolTip(tr("Fit attention and the shared expert to the full-precision model's outputs instead of "
                             "their own inputs' (MoBiE's FP-stream targets; MoBiE always uses them). One extra forward "
                             "of the FP model; lower perplexity and routing shift at 2 bits on the bundled model."));
    nums->addWidget(sym_);
    nums->addWidget(actOrder_);
    nums->addWidget(attention_);
    nums->addWidget(codebooks8_);
    nums->addWidget(fpTarget_);
    nums->addStretch(1);
    form->addRow(tr("Options:"), nums);
    options_ = new CalibrationOptions;
    form->addRow(options_);
    auto* outRow = new QHBoxLayout;
    out_         = new QLineEdit;
    out_->setObjectName("outputDir");
    out_->setToolTip(tr("A new folder; it is written under a temporary name and renamed when complete."));
    auto* browse = new QPushButton(tr("Browse…"));
    outRow->addWidget(out_, 1);
    outRow->addWidget(browse);
    form->addRow(tr("Output folder:"), outRow);
    root->addWidget(opts);

    controls_ = new JobControls(job_, tr("Quantize"));
    root->addWidget(controls_);
    errors_ = new BarChart(tr("Reconstruction error per layer ‖(W−Ŵ)X‖²/‖WX‖², mean over modules (live)"));
    errors_->setObjectName("errorChart");
    root->addWidget(errors_, 1);
    summary_ = new QLabel;
    summary_->setObjectName("quantizeSummary");
    summary_->setTextInteractionFlags(Qt::TextSelectableByMouse);
    root->addWidget(summary_);

    connect(method_, &QComboBox::currentIndexChanged, this, &QuantizePane::syncMethod);
    connect(bits_, &QSpinBox::valueChanged, this, [this] { if (!outEdited_) out_->setText(suggestedOutput()); });
    connect(out_, &QLineEdit::textEdited, this, [this] { outEdited_ = true; });
    connect(browse, &QPushButton::clicked, this, [this] {
        const QString d = QFileDialog::getSaveFileName(this, tr("Output folder"), out_->text());
        if (!d.isEmpty()) out_->setText(d), outEdited_ = true;
    });
    connect(library_, &ModelLibrary::currentChanged, this, [this] { if (!outEdited_) out_->setText(suggestedOutput()); });
    connect(controls_, &JobControls::runClicked, this, &QuantizePane::runQuantization);
    connect(job_, &Job::failed, this, [this](const QString& m) { showError(this, tr("Quantization failed"), m); });
    syncMethod();
}

void QuantizePane::syncMethod() {
    const QString m = method_->currentData().toString();
    method_->setToolTip(method_->itemData(method_->currentIndex(), Qt::ToolTipRole).toString());
    const bool binary = quant::is_binary_method(m.toStdString());
    bits_->setEnabled(!binary);
    bits_->setMinimum(m == "rtn" ? 1 : 2);
    actOrder_->setEnabled(m == "gptq" || m == "agq");
    codebooks8_->setEnabled(m == "gptvq" || m == "kbvq");
    fpTarget_->setEnabled(m != "rtn" && m != "mobie"); // MoBiE has them built in
    options_->setEnabled(m != "rtn"); // RTN needs no calibration
    if (!outEdited_) out_->setText(suggestedOutput());
}

QString QuantizePane::suggestedOutput() const {
    const auto* e = library_->current();
    if (!e) return {};
    const QString m    = method_->currentData().toString();
    const bool    bin  = quant::is_binary_method(m.toStdString());
    const QString base = QString("%1-%2%3").arg(QFileInfo(e->path).fileName(), m, bin ? "" : QString("-%1bit").arg(bits_->value()));
    // Next to the model when that folder is writable and not the bundled/installed demo data, else in
    // ~/moebius-models (created when the run writes there).
    QString       dir     = QFileInfo(e->path).absolutePath();
    const QString bundled = QDir::cleanPath(QString::fromStdString(resources_dir().string()));
    if (!QFileInfo(dir).isWritable() || dir.startsWith(bundled + "/")) dir = QDir::homePath() + "/moebius-models";
    QString out = dir + "/" + base;
    for (int i = 2; QFileInfo::exists(out); ++i) out = dir + "/" + base + "-" + QString::number(i);
    return out;
}

void QuantizePane::setMethod(const QString& method) { method_->setCurrentIndex(method_->findData(method)); }
void QuantizePane::setBits(int bits) { bits_->setValue(bits); }
void QuantizePane::setOutput(const QString& dir) {
    out_->setText(dir);
    outEdited_ = true;
}
QString QuantizePane::summaryText() const { return summary_->text(); }

void QuantizePane::runQuantization() {
    const auto* e = library_->current();
    if (!e) return showError(this, tr("No model"), tr("Open a checkpoint folder first."));
    if (e->summary.quantized)
        return showError(this, tr("Already quantized"),
                         tr("%1 is a quantized checkpoint; quantize its source model instead.").arg(e->path));
    QuantizeRequest req;
    auto& o = req.options;
    o.method = method_->currentData().toString().toStdString();
    o.bits   = bits_->value();
    o.group  = group_->value() == 0 ? 128 : group_->value();
    o.sym    = sym_->isChecked();
    o.act_order = actOrder_->isEnabled() && actOrder_->isChecked();
    o.quantize_attention = attention_->isChecked();
    o.vq_codebook_bits   = codebooks8_->isEnabled() && codebooks8_->isChecked() ? 8 : 16;
    o.fp_target_any      = fpTarget_->isEnabled() && fpTarget_->isChecked();
    if (o.method != "rtn")
        if (auto p = options_->problem(); !p.isEmpty()) return showError(this, tr("Calibration source"), p);
    req.calibration = options_->request();
    req.out         = out_->text().trimmed().toStdString();
    if (req.out.empty()) return showError(this, tr("Output folder"), tr("Choose an output folder."));
    if (QFileInfo::exists(out_->text()) && !QDir(out_->text()).isEmpty())
        return showError(this, tr("Output folder"), tr("%1 already exists and is not empty.").arg(out_->text()));
    try {
        quant::validate_options(o, ModelSpec::load(e->summary.dir));
    } catch (const std::exception& ex) {
        return showError(this, tr("Invalid options"), QString::fromUtf8(ex.what()));
    }
    const int layers = e->summary.layers;
    QStringList labels;
    for (int l = 0; l < layers; ++l) labels << QString::number(l);
    errors_->setBars(labels, std::vector<double>(layers, 0.0));
    summary_->clear();
    const auto    dir = e->summary.dir;
    const QString ref = e->path;
    job_->start([this, req, dir, ref](const ProgressFn& progress) -> Job::Continuation {
        auto live = [this](int layer, double err) { job_->post([this, layer, err] { errors_->setBar(layer, err); }); };
        auto r    = std::make_shared<QuantizeResult>(quantize(dir, req, progress, live));
        return [this, r, ref] {
            result_ = r;
            for (int l = 0; l < (int)r->layer_error.size(); ++l) errors_->setBar(l, r->layer_error[l]);
            const QString out = QString::fromStdString(r->out.string());
            summary_->setText(tr("%1: %2 bits/weight storage-exact (%3 nominal) over the quantized modules; checkpoint "
                                 "%4; %5. Wrote %6")
                                  .arg(QString::fromStdString(r->method))
                                  .arg(r->bits_per_weight, 0, 'f', 3)
                                  .arg(r->nominal_bits, 0, 'f', 2)
                                  .arg(QString::fromStdString(human_bytes((double)r->bytes)))
                                  .arg(formatDuration(r->seconds), out));
            controls_->setStatus(tr("Done in %1.").arg(formatDuration(r->seconds)));
            if (auto err = library_->add(out, false); !err.isEmpty()) showError(this, tr("Quantized model"), err);
            outEdited_ = false;
            out_->setText(suggestedOutput());
            emit quantized(out, ref);
        };
    });
}

} // namespace moebius::studio
