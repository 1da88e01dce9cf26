#include "app/studio/bar_chart.h"

#include <QMouseEvent>
#include <QPainter>
#include <QToolTip>

#include <algorithm>
#include <cmath>

namespace moebius::studio {

BarChart::BarChart(const QString& title, QWidget* parent) : QWidget(parent), title_(title) {
    setMouseTracking(true);
    setMinimumSize(200, 120);
}

void BarChart::setBars(const QStringList& labels, std::vector<double> values) {
    labels_ = labels;
    values_ = std::move(values);
    update();
}

void BarChart::setBar(int index, double value) {
    if (index < 0) return;
    if (index >= (int)values_.size()) values_.resize((size_t)index + 1, 0.0);
    while (labels_.size() < (int)values_.size()) labels_ << QString::number(labels_.size());
    values_[(size_t)index] = value;
    update();
}

QRect BarChart::plotArea() const {
    QFontMetrics fm(font());
    return QRect(56, fm.height() + 6, std::max(10, width() - 64), std::max(10, height() - 2 * fm.height() - 14));
}

void BarChart::paintEvent(QPaintEvent*) {
    QPainter p(this);
    p.fillRect(rect(), palette().base());
    QFontMetrics fm(font());
    p.setPen(palette().color(QPalette::Text));
    p.drawText(QRect(0, 2, width(), fm.height()), Qt::AlignCenter, title_);
    const QRect a = plotArea();
    if (values_.empty()) {
        p.setPen(palette().color(QPalette::PlaceholderText));
        p.drawText(a, Qt::AlignCenter, tr("No data yet"));
        return;
    }
    double lo = std::min(0.0, *std::min_element(values_.begin(), values_.end()));
    double hi = std::max(0.0, *std::max_element(values_.begin(), values_.end()));
    if (hi - lo <= 0) hi = lo + 1;
    auto y_of = [&](double v) { return a.bottom() - (v - lo) / (hi - lo) * a.height(); };
    const double bw = (double)a.width() / values_.size();
    const QColor pos = palette().color(QPalette::Highlight), neg(214, 90, 60);
    for (size_t i = 0; i < values_.size(); ++i) {
        const double y0 = y_of(0), y1 = y_of(values_[i]);
        p.fillRect(QRectF(a.left() + i * bw + bw * 0.12, std::min(y0, y1), bw * 0.76, std::abs(y1 - y0)),
                   values_[i] >= 0 ? pos : neg);
    }
    p.setPen(palette().color(QPalette::Text));
    p.drawLine(a.left(), (int)y_of(0), a.right(), (int)y_of(0));
    p.drawLine(a.left(), a.top(), a.left(), a.bottom());
    p.drawText(QRect(0, a.top() - fm.height() / 2, 52, fm.height()), Qt::AlignRight, QString::number(hi, 'g', 3));
    p.drawText(QRect(0, a.bottom() - fm.height() / 2, 52, fm.height()), Qt::AlignRight, QString::number(lo, 'g', 3));
    const int step = std::max(1, (int)std::ceil(fm.horizontalAdvance("000") / std::max(bw, 1e-9)));
    for (size_t i = 0; i < values_.size(); i += step)
        p.drawText(QRectF(a.left() + (i + 0.5) * bw - 40, a.bottom() + 2, 80, fm.height()), Qt::AlignHCenter,
                   i < (size_t)labels_.size() ? labels_[(int)i] : QString::number(i));
}

void BarChart::mouseMoveEvent(QMouseEvent* e) {
    const QRect a = plotArea();
    if (values_.empty() || !a.contains(e->pos())) return QToolTip::hideText();
    const int i = std::clamp((int)((e->pos().x() - a.left()) * values_.size() / std::max(1, a.width())), 0, count() - 1);
    const QString label = i < labels_.size() ? labels_[i] : QString::number(i);
    QToolTip::showText(e->globalPosition().toPoint(), QString("%1: %2").arg(label).arg(values_[(size_t)i], 0, 'g', 5), this);
}

} // namespace moebius::studio
