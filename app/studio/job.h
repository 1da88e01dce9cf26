#pragma once
// Runs one synchronous engine job on a worker thread and reports back on the UI thread through queued calls.
//
// The work function gets a ProgressFn (returning false cancels, as every engine API expects) and returns a
// continuation that is run on the UI thread when the job succeeds: results travel inside that closure, so no
// widget is ever touched from the worker and no result type needs registering with Qt's meta-type system.
#include <QElapsedTimer>
#include <QObject>
#include <QString>

#include <atomic>
#include <functional>
#include <memory>

#include "engine/core/progress.h"

class QThread;

namespace moebius::studio {

class Job : public QObject {
    Q_OBJECT
public:
    using Continuation = std::function<void()>;
    using Work         = std::function<Continuation(const ProgressFn&)>;

    explicit Job(QObject* parent = nullptr);
    ~Job() override; // cancels a running job and waits for its thread

    // False (and nothing started) while another job of this runner is still running.
    bool start(Work work);
    void cancel();
    bool isRunning() const { return running_; }
    // Posts fn to the UI thread (for live results a job produces before it ends, e.g. one finished layer).
    void post(std::function<void()> fn);

signals:
    void started();
    // fraction 0..1; etaSeconds < 0 while not yet known. Emitted at most ~20 times a second.
    void progressed(double fraction, const QString& stage, double etaSeconds);
    void succeeded();
    void failed(const QString& message);
    void cancelled();
    void finished(); // after any of the three above

private:
    void finish(int outcome, const QString& message, Continuation then);

    QThread*                           thread_ = nullptr;
    bool                               running_ = false;
    std::shared_ptr<std::atomic<bool>> cancel_;
};

} // namespace moebius::studio
