#pragma once
// The checkpoints the Studio knows in this session (opened ones and the ones it quantized), and which one is current.
#include <QObject>
#include <QString>
#include <QVector>

#include "app/studio/model_summary.h"

namespace moebius::studio {

class ModelLibrary : public QObject {
    Q_OBJECT
public:
    struct Entry {
        QString      path;
        ModelSummary summary;
        QString      label() const;
    };

    explicit ModelLibrary(QObject* parent = nullptr) : QObject(parent) {}

    // Reads the folder's summary, adds it (or refreshes it) and, with makeCurrent, selects it. Returns an error
    // message naming the folder and the problem, or an empty string.
    QString add(const QString& path, bool makeCurrent = true);
    void    setCurrent(const QString& path);

    const QVector<Entry>& entries() const { return entries_; }
    const Entry*          find(const QString& path) const;
    const Entry*          current() const { return find(current_); }
    QString               currentPath() const { return current_; }

signals:
    void entriesChanged();
    void currentChanged(const QString& path);

private:
    QVector<Entry> entries_;
    QString        current_;
};

} // namespace moebius::studio
