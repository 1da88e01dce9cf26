#include "app/studio/job_controls.h"

#include <QHBoxLayout>
#include <QLabel>
#include <QProgressBar>
#include <QPushButton>
#include <QVBoxLayout>

#include "app/studio/job.h"
#include "app/studio/ui_util.h"

namespace moebius::studio {

JobControls::JobControls(Job* job, const QString& runText, QWidget* parent) : QWidget(parent), job_(job) {
    auto* v = new QVBoxLayout(this);
    v->setContentsMargins(0, 0, 0, 0);
    auto* h = new QHBoxLayout;
    run_    = new QPushButton(runText);
    run_->setObjectName("runButton");
    cancel_ = new QPushButton(tr("Cancel"));
    cancel_->setObjectName("cancelButton");
    cancel_->setEnabled(false);
    bar_ = new QProgressBar;
    bar_->setRange(0, 1000);
    bar_->setValue(0);
    bar_->setFormat("%p%");
    h->addWidget(run_);
    h->addWidget(cancel_);
    h->addWidget(bar_, 1);
    v->addLayout(h);
    status_ = new QLabel(" ");
    status_->setObjectName("jobStatus");
    v->addWidget(status_);

    connect(run_, &QPushButton::clicked, this, &JobControls::runClicked);
    connect(cancel_, &QPushButton::clicked, job_, &Job::cancel);
    connect(job_, &Job::started, this, [this] {
        run_->setEnabled(false);
        cancel_->setEnabled(true);
        bar_->setValue(0);
        status_->setText(tr("starting…"));
    });
    connect(job_, &Job::progressed, this, [this](double f, const QString& stage, double eta) {
        bar_->setValue((int)(1000 * f));
        const QString e = f < 1.0 ? formatDuration(eta) : QString();
        status_->setText(e.isEmpty() ? stage : tr("%1 — about %2 left").arg(stage, e));
    });
    connect(job_, &Job::cancelled, this, [this] { status_->setText(tr("Cancelled; nothing was written.")); });
    connect(job_, &Job::failed, this, [this](const QString& m) { status_->setText(tr("Failed: %1").arg(m)); });
    connect(job_, &Job::succeeded, this, [this] { bar_->setValue(1000); });
    connect(job_, &Job::finished, this, [this] {
        run_->setEnabled(true);
        cancel_->setEnabled(false);
    });
}

QString JobControls::statusText() const { return status_->text(); }
void    JobControls::setStatus(const QString& text) { status_->setText(text); }

} // namespace moebius::studio
