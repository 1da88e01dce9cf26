#include "app/studio/job.h"

#include <QMetaObject>
#include <QThread>

#include <chrono>

#ifdef __linux__
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "engine/core/error.h"

namespace moebius::studio {

namespace {
enum Outcome { Succeeded, Failed, Cancelled };
}

Job::Job(QObject* parent) : QObject(parent) {}

Job::~Job() {
    if (thread_) {
        cancel_->store(true);
        thread_->wait();
        delete thread_;
    }
}

void Job::cancel() {
    if (cancel_) cancel_->store(true);
}

void Job::post(std::function<void()> fn) {
    QMetaObject::invokeMethod(this, std::move(fn), Qt::QueuedConnection);
}

bool Job::start(Work work) {
    if (running_) return false;
    if (thread_) { // the previous job's thread has finished its work; reap it
        thread_->wait();
        delete thread_;
        thread_ = nullptr;
    }
    running_      = true;
    cancel_       = std::make_shared<std::atomic<bool>>(false);
    auto cancel   = cancel_;
    thread_ = QThread::create([this, cancel, work = std::move(work)] {
#ifdef __linux__
        // A lower CPU priority (nice +5) for the worker and the OpenMP threads it starts: on a busy machine the
        // scheduler then serves the UI thread first, so repaints and input are never starved by our own job.
        setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 5);
#endif
        using Clock = std::chrono::steady_clock;
        const auto t0   = Clock::now();
        auto       last = t0 - std::chrono::seconds(1);
        ProgressFn progress = [&](const Progress& p) {
            const auto now = Clock::now();
            // Throttled: a flood of queued events would keep the UI thread busy for nothing.
            if (now - last >= std::chrono::milliseconds(50) || p.fraction >= 1.0) {
                last              = now;
                const double el   = std::chrono::duration<double>(now - t0).count();
                const double eta  = p.fraction > 0.02 ? el * (1 - p.fraction) / p.fraction : -1;
                const QString st  = QString::fromStdString(p.stage);
                const double frac = p.fraction;
                QMetaObject::invokeMethod(this, [this, frac, st, eta] { emit progressed(frac, st, eta); },
                                          Qt::QueuedConnection);
            }
            return !cancel->load();
        };
        int          outcome = Succeeded;
        QString      message;
        Continuation then;
        try {
            then = work(progress);
            if (cancel->load()) outcome = Cancelled; // cancelled after the last progress check: drop the result
        } catch (const moebius::Cancelled&) {
            outcome = Cancelled;
        } catch (const std::bad_alloc&) {
            outcome = Failed, message = tr("Out of memory.");
        } catch (const std::exception& e) {
            outcome = Failed, message = QString::fromUtf8(e.what());
        } catch (...) {
            outcome = Failed, message = tr("Unknown error.");
        }
        QMetaObject::invokeMethod(
            this, [this, outcome, message, then = std::move(then)] { finish(outcome, message, then); },
            Qt::QueuedConnection);
    });
    thread_->start();
    emit started();
    return true;
}

void Job::finish(int outcome, const QString& message, Continuation then) {
    running_ = false;
    if (outcome == Succeeded) {
        if (then) then();
        emit succeeded();
    } else if (outcome == Failed) {
        emit failed(message);
    } else {
        emit cancelled();
    }
    emit finished();
}

} // namespace moebius::studio
