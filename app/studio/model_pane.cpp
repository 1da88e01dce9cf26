#include "app/studio/model_pane.h"

#include <QFormLayout>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QLabel>
#include <QListWidget>
#include <QPushButton>
#include <QTableWidget>
#include <QVBoxLayout>

#include "app/studio/model_library.h"

namespace moebius::studio {

namespace {
const char* kFields[] = {"path", "family", "layers", "experts", "top-k", "shared experts", "total parameters",
                         "active parameters", "storage", "size on disk", "quantization"};
QString qs(const std::string& s) { return QString::fromStdString(s); }
} // namespace

ModelPane::ModelPane(ModelLibrary* library, QWidget* parent) : QWidget(parent), library_(library) {
    auto* root = new QHBoxLayout(this);

    auto* left = new QVBoxLayout;
    auto* open = new QPushButton(tr("Open checkpoint…"));
    open->setObjectName("openButton");
    open->setToolTip(tr("A Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json). "
                        "You can also drop a folder onto the window."));
    connect(open, &QPushButton::clicked, this, &ModelPane::openRequested);
    left->addWidget(open);
    left->addWidget(new QLabel(tr("Models in this session:")));
    list_ = new QListWidget;
    list_->setObjectName("modelList");
    left->addWidget(list_, 1);
    root->addLayout(left, 1);

    auto* right = new QVBoxLayout;
    title_ = new QLabel(tr("No model open. Open a checkpoint folder or drop one here."));
    title_->setObjectName("modelTitle");
    QFont f = title_->font();
    f.setPointSizeF(f.pointSizeF() * 1.3);
    f.setBold(true);
    title_->setFont(f);
    right->addWidget(title_);
    auto* box = new QGroupBox(tr("Summary"));
    form_     = new QFormLayout(box);
    for (const char* name : kFields) {
        auto* v = new QLabel("—");
        v->setObjectName(QString("field:%1").arg(name));
        v->setTextInteractionFlags(Qt::TextSelectableByMouse);
        v->setWordWrap(true);
        form_->addRow(QString(name) + ":", v);
    }
    right->addWidget(box);
    auto* est = new QGroupBox(tr("Estimated size after quantization (attention + experts; one f16 scale and zero per group)"));
    auto* el  = new QVBoxLayout(est);
    estimates_ = new QTableWidget(0, 3);
    estimates_->setObjectName("estimates");
    estimates_->setHorizontalHeaderLabels({tr("setting"), tr("size"), tr("vs now")});
    estimates_->horizontalHeader()->setSectionResizeMode(QHeaderView::Stretch);
    estimates_->verticalHeader()->hide();
    estimates_->setEditTriggers(QAbstractItemView::NoEditTriggers);
    el->addWidget(estimates_);
    right->addWidget(est, 1);
    root->addLayout(right, 2);

    connect(library_, &ModelLibrary::entriesChanged, this, [this] {
        list_->clear();
        for (const auto& e : library_->entries()) {
            auto* it = new QListWidgetItem(e.label(), list_);
            it->setData(Qt::UserRole, e.path);
            it->setToolTip(e.path);
            if (e.path == library_->currentPath()) list_->setCurrentItem(it);
        }
    });
    connect(list_, &QListWidget::currentItemChanged, this, [this](QListWidgetItem* it) {
        if (it) library_->setCurrent(it->data(Qt::UserRole).toString());
    });
    connect(library_, &ModelLibrary::currentChanged, this, &ModelPane::showCurrent);
}

void ModelPane::setField(const QString& name, const QString& value) {
    if (auto* l = findChild<QLabel*>("field:" + name)) l->setText(value);
}

QString ModelPane::field(const QString& name) const {
    auto* l = findChild<QLabel*>("field:" + name);
    return l ? l->text() : QString();
}

void ModelPane::showCurrent() {
    const auto* e = library_->current();
    if (!e) return;
    for (int i = 0; i < list_->count(); ++i)
        if (list_->item(i)->data(Qt::UserRole).toString() == e->path) list_->setCurrentRow(i);
    const auto& s = e->summary;
    title_->setText(e->label());
    setField("path", e->path);
    setField("family", QString("%1 (%2)").arg(qs(s.family), qs(s.model_type)));
    setField("layers", QString("%1 (%2 MoE)").arg(s.layers).arg(s.moe_layers));
    setField("experts", QString("%1 routed, width %2").arg(s.experts).arg(s.expert_ffn));
    setField("top-k", QString::number(s.experts_per_token));
    setField("shared experts", s.shared_ffn ? QString("width %1%2").arg(s.shared_ffn).arg(s.shared_gated ? tr(", gated") : "")
                                            : tr("none"));
    setField("total parameters", qs(human_count((double)s.total_params)));
    setField("active parameters", qs(human_count((double)s.active_params)) + tr(" per token"));
    setField("storage", qs(s.dtype));
    setField("size on disk", qs(human_bytes((double)s.bytes)));
    setField("quantization", s.quantized ? QString("%1, %2 bits, group %3").arg(qs(s.method)).arg(s.bits).arg(s.group)
                                         : tr("none (source precision)"));
    const std::pair<int, int> settings[] = {{8, 128}, {4, 128}, {3, 128}, {2, 128}, {1, 128}};
    estimates_->setRowCount(0);
    if (s.quantized) return; // an estimate from already-packed storage would be meaningless
    for (auto [bits, group] : settings) {
        const int  r = estimates_->rowCount();
        const auto b = s.estimated_bytes(bits, group);
        estimates_->insertRow(r);
        estimates_->setItem(r, 0, new QTableWidgetItem(QString("%1-bit, group %2").arg(bits).arg(group)));
        estimates_->setItem(r, 1, new QTableWidgetItem(qs(human_bytes((double)b))));
        estimates_->setItem(r, 2, new QTableWidgetItem(QString("%1 %").arg(100.0 * b / std::max<int64_t>(1, s.bytes), 0, 'f', 1)));
    }
}

} // namespace moebius::studio
