#pragma once
// Run / Cancel buttons, a progress bar and a "stage — ETA" line, wired to one Job.
#include <QWidget>

class QLabel;
class QProgressBar;
class QPushButton;

namespace moebius::studio {

class Job;

class JobControls : public QWidget {
    Q_OBJECT
public:
    JobControls(Job* job, const QString& runText, QWidget* parent = nullptr);

    QPushButton* runButton() const { return run_; }
    QPushButton* cancelButton() const { return cancel_; }
    QProgressBar* progressBar() const { return bar_; }
    QString       statusText() const;
    void          setStatus(const QString& text);

signals:
    void runClicked();

private:
    Job*          job_;
    QPushButton * run_, *cancel_;
    QProgressBar* bar_;
    QLabel*       status_;
};

} // namespace moebius::studio
