#include "app/studio/model_library.h"

#include <QDir>
#include <QFileInfo>

namespace moebius::studio {

QString ModelLibrary::Entry::label() const {
    const QString name = QFileInfo(path).fileName();
    if (!summary.quantized) return name;
    return QString("%1  [%2 %3-bit]").arg(name, QString::fromStdString(summary.method)).arg(summary.bits);
}

QString ModelLibrary::add(const QString& path, bool makeCurrent) {
    const QString clean = QDir::cleanPath(QFileInfo(path).absoluteFilePath());
    Entry e;
    e.path = clean;
    try {
        e.summary = ModelSummary::read(clean.toStdString());
    } catch (const std::exception& ex) {
        return QString::fromUtf8(ex.what());
    }
    bool replaced = false;
    for (auto& old : entries_)
        if (old.path == clean) old = e, replaced = true;
    if (!replaced) entries_.push_back(e);
    emit entriesChanged();
    if (makeCurrent) setCurrent(clean);
    return {};
}

void ModelLibrary::setCurrent(const QString& path) {
    if (path == current_ || !find(path)) return;
    current_ = path;
    emit currentChanged(path);
}

const ModelLibrary::Entry* ModelLibrary::find(const QString& path) const {
    for (const auto& e : entries_)
        if (e.path == path) return &e;
    return nullptr;
}

} // namespace moebius::studio
