#include "app/studio/heatmap_widget.h"

#include <QMouseEvent>
#include <QPainter>
#include <QToolTip>
#include <QWheelEvent>

#include <algorithm>
#include <cmath>

namespace moebius::studio {

namespace {
constexpr int kLeft = 56, kTop = 8, kBottom = 30, kLegend = 84, kProfile = 48;

// A perceptually ordered ramp (viridis control points), so bright never means "less".
QColor ramp(double t) {
    static const QColor stops[] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
    t = std::clamp(t, 0.0, 1.0) * 4.0;
    const int    i = std::min(3, (int)t);
    const double f = t - i;
    const QColor a = stops[i], b = stops[i + 1];
    return QColor((int)(a.red() + f * (b.red() - a.red())), (int)(a.green() + f * (b.green() - a.green())),
                  (int)(a.blue() + f * (b.blue() - a.blue())));
}
} // namespace

HeatmapWidget::HeatmapWidget(QWidget* parent) : QWidget(parent) {
    setMouseTracking(true);
    setMinimumSize(240, 160);
}

void HeatmapWidget::setData(int rows, int cols, std::vector<double> values, const QString& rowName,
                            const QString& colName, const QString& valueName) {
    rows_ = rows, cols_ = cols, values_ = std::move(values);
    rowName_ = rowName, colName_ = colName, valueName_ = valueName;
    rowLabels_.clear();
    lo_ = 0, hi_ = 0;
    if (!values_.empty()) {
        auto [mn, mx] = std::minmax_element(values_.begin(), values_.end());
        lo_ = *mn, hi_ = *mx;
    }
    if (hi_ <= lo_) hi_ = lo_ + 1;
    resetView();
}

void HeatmapWidget::resetView() {
    zoom_ = 1.0;
    pan_  = {};
    update();
}

QRect HeatmapWidget::plotArea() const {
    const int right = kLegend + (profiles_ ? kProfile : 0);
    const int below = kBottom + (profiles_ ? kProfile : 0);
    return QRect(kLeft, kTop, std::max(10, width() - kLeft - right), std::max(10, height() - kTop - below));
}

QRectF HeatmapWidget::mapRect() const {
    const QRect a = plotArea();
    return QRectF(a.left() + pan_.x(), a.top() + pan_.y(), a.width() * zoom_, a.height() * zoom_);
}

bool HeatmapWidget::cellAt(QPoint pos, int& r, int& c) const {
    if (rows_ == 0 || cols_ == 0 || !plotArea().contains(pos)) return false;
    const QRectF m = mapRect();
    if (!m.contains(pos)) return false;
    c = std::clamp((int)((pos.x() - m.left()) / m.width() * cols_), 0, cols_ - 1);
    r = std::clamp((int)((pos.y() - m.top()) / m.height() * rows_), 0, rows_ - 1);
    return true;
}

QString HeatmapWidget::hoverText(int r, int c) const {
    const QString row = r < rowLabels_.size() ? rowLabels_[r] : QString("%1 %2").arg(rowName_).arg(r);
    return QString("%1, %2 %3: %4 %5").arg(row, colName_).arg(c).arg(value(r, c), 0, 'g', 6).arg(valueName_);
}

QColor HeatmapWidget::colour(double v) const {
    if (!diverging_) return ramp((v - lo_) / (hi_ - lo_));
    const double m = std::max(std::abs(lo_), std::abs(hi_));
    const double t = m > 0 ? std::clamp(v / m, -1.0, 1.0) : 0;
    const int    k = (int)(255 * (1 - std::abs(t)));
    return t >= 0 ? QColor(255, k, k) : QColor(k, k, 255);
}

void HeatmapWidget::paintEvent(QPaintEvent*) {
    QPainter p(this);
    p.fillRect(rect(), palette().base());
    const QRect area = plotArea();
    if (rows_ == 0 || cols_ == 0) {
        p.setPen(palette().color(QPalette::PlaceholderText));
        p.drawText(rect(), Qt::AlignCenter, tr("No data yet"));
        return;
    }
    const QRectF m  = mapRect();
    const double cw = m.width() / cols_, ch = m.height() / rows_;
    p.save();
    p.setClipRect(area);
    // Only the visible cells are painted, so a zoomed-in 2048×2048 importance map stays cheap.
    const int c0 = std::max(0, (int)((area.left() - m.left()) / cw)), c1 = std::min(cols_, (int)((area.right() - m.left()) / cw) + 1);
    const int r0 = std::max(0, (int)((area.top() - m.top()) / ch)), r1 = std::min(rows_, (int)((area.bottom() - m.top()) / ch) + 1);
    for (int r = r0; r < r1; ++r)
        for (int c = c0; c < c1; ++c)
            p.fillRect(QRectF(m.left() + c * cw, m.top() + r * ch, cw + 0.5, ch + 0.5), colour(value(r, c)));
    p.restore();
    p.setPen(palette().color(QPalette::Text));
    p.drawRect(area.adjusted(0, 0, -1, -1));

    // Axes: a label every few rows/columns, whatever fits.
    QFontMetrics fm(font());
    const int rstep = std::max(1, (int)std::ceil(fm.height() / std::max(ch, 1e-9)));
    for (int r = r0; r < r1; r += rstep) {
        const double y = m.top() + (r + 0.5) * ch;
        if (y < area.top() || y > area.bottom()) continue;
        const QString t = r < rowLabels_.size() ? rowLabels_[r] : QString::number(r);
        p.drawText(QRectF(0, y - fm.height() / 2.0, kLeft - 4, fm.height()), Qt::AlignRight | Qt::AlignVCenter, t);
    }
    const int cstep = std::max(1, (int)std::ceil(fm.horizontalAdvance("0000") / std::max(cw, 1e-9)));
    for (int c = c0; c < c1; c += cstep) {
        const double x = m.left() + (c + 0.5) * cw;
        if (x < area.left() || x > area.right()) continue;
        p.drawText(QRectF(x - 20, area.bottom() + 2, 40, fm.height()), Qt::AlignCenter, QString::number(c));
    }
    p.drawText(QRect(area.left(), area.bottom() + 2 + fm.height(), area.width(), fm.height()), Qt::AlignCenter, colName_);

    // Colour scale.
    const int lx = width() - kLegend + 8;
    const QRect bar(lx, area.top(), 14, area.height());
    for (int y = 0; y < bar.height(); ++y) {
        const double t = 1.0 - (double)y / std::max(1, bar.height() - 1);
        p.setPen(colour(lo_ + t * (hi_ - lo_)));
        p.drawLine(bar.left(), bar.top() + y, bar.right(), bar.top() + y);
    }
    p.setPen(palette().color(QPalette::Text));
    p.drawRect(bar);
    p.drawText(QRect(bar.right() + 2, bar.top(), kLegend, fm.height()), Qt::AlignLeft, QString::number(hi_, 'g', 3));
    p.drawText(QRect(bar.right() + 2, bar.bottom() - fm.height(), kLegend, fm.height()), Qt::AlignLeft,
               QString::number(lo_, 'g', 3));

    if (!profiles_) return;
    // Row sums (right) and column means (below) of the visible rows/columns: the marginal loads at a glance.
    const QColor bars = palette().color(QPalette::Highlight);
    std::vector<double> rs(rows_, 0.0), cs(cols_, 0.0);
    for (int r = 0; r < rows_; ++r)
        for (int c = 0; c < cols_; ++c) rs[r] += value(r, c), cs[c] += value(r, c) / rows_;
    const auto [rmin, rmax] = std::minmax_element(rs.begin(), rs.end());
    const auto [cmin, cmax] = std::minmax_element(cs.begin(), cs.end());
    const double rscale = std::max(std::abs(*rmin), std::abs(*rmax)), cscale = std::max(std::abs(*cmin), std::abs(*cmax));
    const int px = area.right() + 4;
    p.save();
    p.setClipRect(QRect(px, area.top(), kProfile - 8, area.height()));
    for (int r = r0; r < r1; ++r) {
        const double w = rscale > 0 ? std::abs(rs[r]) / rscale * (kProfile - 8) : 0;
        p.fillRect(QRectF(px, m.top() + r * ch + 1, w, std::max(1.0, ch - 2)), bars);
    }
    p.restore();
    const int py = area.bottom() + kBottom;
    p.save();
    p.setClipRect(QRect(area.left(), py, area.width(), kProfile - 4));
    for (int c = c0; c < c1; ++c) {
        const double h = cscale > 0 ? std::abs(cs[c]) / cscale * (kProfile - 6) : 0;
        p.fillRect(QRectF(m.left() + c * cw + 1, py + (kProfile - 6) - h, std::max(1.0, cw - 2), h), bars);
    }
    p.restore();
}

void HeatmapWidget::mouseMoveEvent(QMouseEvent* e) {
    if (dragging_) {
        pan_ += e->pos() - dragFrom_;
        dragFrom_ = e->pos();
        update();
        return;
    }
    int r, c;
    if (cellAt(e->pos(), r, c)) {
        QToolTip::showText(e->globalPosition().toPoint(), hoverText(r, c), this);
        emit cellHovered(r, c, value(r, c));
    } else {
        QToolTip::hideText();
    }
}

void HeatmapWidget::mousePressEvent(QMouseEvent* e) {
    if (e->button() == Qt::LeftButton && zoom_ > 1.0) dragging_ = true, dragFrom_ = e->pos();
}

void HeatmapWidget::mouseReleaseEvent(QMouseEvent*) { dragging_ = false; }

void HeatmapWidget::mouseDoubleClickEvent(QMouseEvent*) { resetView(); }

void HeatmapWidget::wheelEvent(QWheelEvent* e) {
    // Zoom about the cursor: the point under it stays where it is.
    const double  f   = e->angleDelta().y() > 0 ? 1.25 : 0.8;
    const double  nz  = std::clamp(zoom_ * f, 1.0, 64.0);
    const QPointF pos = e->position();
    const QRectF  m   = mapRect();
    const QPointF rel((pos.x() - m.left()) / m.width(), (pos.y() - m.top()) / m.height());
    zoom_             = nz;
    const QRect a     = plotArea();
    pan_ = QPointF(pos.x() - a.left() - rel.x() * a.width() * zoom_, pos.y() - a.top() - rel.y() * a.height() * zoom_);
    if (zoom_ == 1.0) pan_ = {};
    update();
    e->accept();
}

} // namespace moebius::studio
