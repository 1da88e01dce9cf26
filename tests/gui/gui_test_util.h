#pragma once
// Helpers for the Studio GUI tests: waiting on a job while measuring how long the UI thread goes without
// servicing a 10 ms timer (the "never blocks the UI" check), temp folders, finding error dialogs.
#include <QApplication>
#include <QElapsedTimer>
#include <QMessageBox>
#include <QSignalSpy>
#include <QTemporaryDir>
#include <QTimer>

#include <algorithm>

#include "app/studio/job.h"

namespace moebius::studio::test {

// Ticks every 10 ms on the UI thread and records the longest gap between consecutive ticks.
class GapMeter {
public:
    GapMeter() {
        timer_.setInterval(10);
        timer_.setTimerType(Qt::PreciseTimer);
        QObject::connect(&timer_, &QTimer::timeout, [this] {
            const qint64 ns = clock_.nsecsElapsed();
            if (last_ >= 0) max_ = std::max(max_, ns - last_);
            last_ = ns;
            ++ticks_;
        });
        clock_.start();
        timer_.start();
    }
    double maxGapMs() const { return max_ / 1e6; }
    int    ticks() const { return ticks_; }

private:
    QTimer        timer_;
    QElapsedTimer clock_;
    qint64        last_ = -1, max_ = 0;
    int           ticks_ = 0;
};

// Waits (running the event loop) until the job finishes; false on timeout.
inline bool waitForJob(Job* job, int timeoutMs = 120000) {
    if (!job->isRunning()) return true;
    QSignalSpy spy(job, &Job::finished);
    return spy.wait(timeoutMs);
}

// The visible error dialog, if any (they are non-modal QMessageBoxes named "errorDialog").
inline QMessageBox* errorDialog() {
    for (QWidget* w : QApplication::topLevelWidgets())
        if (auto* box = qobject_cast<QMessageBox*>(w); box && box->objectName() == "errorDialog" && box->isVisible())
            return box;
    return nullptr;
}

inline void closeErrorDialogs() {
    while (auto* box = errorDialog()) {
        box->close();
        QApplication::processEvents();
    }
}

} // namespace moebius::studio::test
