#include "app/studio/calibration_options.h"

#include <QComboBox>
#include <QFileDialog>
#include <QFileInfo>
#include <QFormLayout>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QPushButton>
#include <QSpinBox>

namespace moebius::studio {

using Source = CalibrationRequest::Source;

CalibrationOptions::CalibrationOptions(QWidget* parent) : QWidget(parent) {
    auto* form = new QFormLayout(this);
    form->setContentsMargins(0, 0, 0, 0);
    source_ = new QComboBox;
    source_->setObjectName("calibSource");
    source_->addItem(tr("Bundled text (KJV train split)"), (int)Source::BundledText);
    source_->addItem(tr("Text file…"), (int)Source::File);
    source_->addItem(tr("EBSS (the model samples its own balanced set)"), (int)Source::Ebss);
    source_->setToolTip(tr("Where calibration tokens come from. Random windows of a text (GPTQ style), or EBSS: "
                           "expert-balanced self-sampling (MoEQuant), which needs no data but generates with the model."));
    form->addRow(tr("Calibration:"), source_);
    auto* row = new QHBoxLayout;
    file_     = new QLineEdit;
    file_->setObjectName("calibFile");
    file_->setPlaceholderText(tr("plain text or JSONL with {\"text\": …} per line"));
    browse_ = new QPushButton(tr("Browse…"));
    row->addWidget(file_, 1);
    row->addWidget(browse_);
    form->addRow(tr("Text file:"), row);
    samples_ = new QSpinBox;
    samples_->setObjectName("calibSamples");
    samples_->setRange(1, 4096);
    samples_->setValue(32);
    samples_->setToolTip(tr("Number of calibration sequences (GPTQ uses 128 × 2048 on real models)."));
    seqlen_ = new QSpinBox;
    seqlen_->setObjectName("calibSeqlen");
    seqlen_->setRange(8, 32768);
    seqlen_->setValue(256);
    seqlen_->setToolTip(tr("Tokens per calibration sequence."));
    seed_ = new QSpinBox;
    seed_->setRange(0, 1 << 30);
    seed_->setToolTip(tr("Seed of the window positions / EBSS first tokens: the same seed gives the same set."));
    auto* sizes = new QHBoxLayout;
    sizes->addWidget(samples_);
    sizes->addWidget(new QLabel("×"));
    sizes->addWidget(seqlen_);
    sizes->addWidget(new QLabel(tr("tokens, seed")));
    sizes->addWidget(seed_);
    form->addRow(tr("Samples:"), sizes);

    auto sync = [this] {
        const bool file = (Source)source_->currentData().toInt() == Source::File;
        file_->setEnabled(file);
        browse_->setEnabled(file);
    };
    connect(source_, &QComboBox::currentIndexChanged, this, sync);
    connect(browse_, &QPushButton::clicked, this, [this] {
        const QString f = QFileDialog::getOpenFileName(this, tr("Calibration text"), QFileInfo(file_->text()).path(),
                                                       tr("Text (*.txt *.jsonl);;All files (*)"));
        if (!f.isEmpty()) file_->setText(f);
    });
    sync();
}

CalibrationRequest CalibrationOptions::request() const {
    CalibrationRequest r;
    r.source  = (Source)source_->currentData().toInt();
    r.file    = file_->text().toStdString();
    r.samples = samples_->value();
    r.seqlen  = seqlen_->value();
    r.seed    = (uint64_t)seed_->value();
    return r;
}

void CalibrationOptions::setSamples(int n) { samples_->setValue(n); }
void CalibrationOptions::setSeqlen(int n) { seqlen_->setValue(n); }

void CalibrationOptions::setSource(Source s, const QString& file) {
    source_->setCurrentIndex(source_->findData((int)s));
    if (!file.isEmpty()) file_->setText(file);
}

QString CalibrationOptions::problem() const {
    if ((Source)source_->currentData().toInt() != Source::File) return {};
    if (file_->text().isEmpty()) return tr("Choose a calibration text file.");
    if (!QFileInfo(file_->text()).isFile()) return tr("%1 is not a readable file.").arg(file_->text());
    return {};
}

} // namespace moebius::studio
