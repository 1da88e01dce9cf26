#include "app/studio/chat_pane.h"

#include <QApplication>
#include <QClipboard>
#include <QComboBox>
#include <QDateTime>
#include <QDoubleSpinBox>
#include <QFile>
#include <QFileDialog>
#include <QFormLayout>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QLabel>
#include <QLineEdit>
#include <QPlainTextEdit>
#include <QProgressBar>
#include <QPushButton>
#include <QScrollBar>
#include <QSaveFile>
#include <QShortcut>
#include <QSpinBox>
#include <QSplitter>
#include <QTextBrowser>
#include <QVBoxLayout>

#include "app/studio/job.h"
#include "app/studio/model_library.h"
#include "app/studio/ui_util.h"

namespace moebius::studio {

ChatPane::ChatPane(ModelLibrary* library, QWidget* parent) : QWidget(parent), library_(library) {
    job_       = new Job(this);
    auto* root = new QHBoxLayout(this);

    // Left: settings.
    auto* side = new QGroupBox(tr("Settings"));
    auto* form = new QFormLayout(side);
    model_     = new QComboBox;
    model_->setObjectName("chatModel");
    form->addRow(tr("Model:"), model_);
    backend_ = new QComboBox;
    backend_->setObjectName("chatBackend");
    form->addRow(tr("Device:"), backend_);
    reason_ = new QLabel;
    reason_->setObjectName("backendReason");
    reason_->setWordWrap(true);
    form->addRow(reason_);
    system_ = new QLineEdit;
    system_->setObjectName("systemPrompt");
    system_->setPlaceholderText(tr("optional system prompt"));
    form->addRow(tr("System:"), system_);
    temperature_ = new QDoubleSpinBox;
    temperature_->setObjectName("temperature");
    temperature_->setRange(0, 5);
    temperature_->setSingleStep(0.1);
    temperature_->setToolTip(tr("0 = greedy (deterministic)."));
    topK_ = new QSpinBox;
    topK_->setRange(0, 100000);
    topK_->setSpecialValueText(tr("off"));
    topP_ = new QDoubleSpinBox;
    topP_->setRange(0, 1);
    topP_->setSingleStep(0.05);
    topP_->setValue(1);
    maxTokens_ = new QSpinBox;
    maxTokens_->setObjectName("maxTokens");
    maxTokens_->setRange(1, 32768);
    maxTokens_->setValue(256);
    form->addRow(tr("Temperature:"), temperature_);
    form->addRow(tr("Top-k:"), topK_);
    form->addRow(tr("Top-p:"), topP_);
    form->addRow(tr("Max tokens:"), maxTokens_);
    auto* buttons = new QHBoxLayout;
    auto* fresh   = new QPushButton(tr("New chat"));
    auto* copy    = new QPushButton(tr("Copy"));
    auto* save    = new QPushButton(tr("Export…"));
    buttons->addWidget(fresh);
    buttons->addWidget(copy);
    buttons->addWidget(save);
    form->addRow(buttons);
    side->setMaximumWidth(360);
    root->addWidget(side);

    // Right: conversation.
    auto* right = new QVBoxLayout;
    transcript_ = new QTextBrowser;
    transcript_->setObjectName("transcript");
    right->addWidget(transcript_, 1);
    input_ = new QPlainTextEdit;
    input_->setObjectName("chatInput");
    input_->setPlaceholderText(tr("Message (Ctrl+Enter sends, Esc stops)"));
    input_->setMaximumHeight(90);
    right->addWidget(input_);
    auto* row = new QHBoxLayout;
    send_     = new QPushButton(tr("Send"));
    send_->setObjectName("sendButton");
    stop_ = new QPushButton(tr("Stop"));
    stop_->setObjectName("stopButton");
    stop_->setEnabled(false);
    stats_ = new QLabel;
    stats_->setObjectName("chatStats");
    context_ = new QProgressBar;
    context_->setObjectName("contextUsage");
    context_->setMinimumWidth(200);
    context_->setFormat(tr("context %v / %m"));
    context_->setValue(0);
    row->addWidget(send_);
    row->addWidget(stop_);
    row->addWidget(stats_, 1);
    row->addWidget(context_);
    right->addLayout(row);
    root->addLayout(right, 1);

    auto* sendKey = new QShortcut(QKeySequence(Qt::CTRL | Qt::Key_Return), this);
    auto* sendKey2 = new QShortcut(QKeySequence(Qt::CTRL | Qt::Key_Enter), this);
    auto* stopKey = new QShortcut(QKeySequence(Qt::Key_Escape), this);
    for (auto* s : {sendKey, sendKey2, stopKey}) s->setContext(Qt::WidgetWithChildrenShortcut);
    connect(sendKey, &QShortcut::activated, this, &ChatPane::send);
    connect(sendKey2, &QShortcut::activated, this, &ChatPane::send);
    connect(stopKey, &QShortcut::activated, this, &ChatPane::stop);
    connect(send_, &QPushButton::clicked, this, &ChatPane::send);
    connect(stop_, &QPushButton::clicked, this, &ChatPane::stop);
    connect(fresh, &QPushButton::clicked, this, &ChatPane::newChat);
    connect(copy, &QPushButton::clicked, this, [this] { QApplication::clipboard()->setText(transcriptMarkdown()); });
    connect(save, &QPushButton::clicked, this, [this] {
        const QString f = QFileDialog::getSaveFileName(this, tr("Export conversation"), "conversation.md",
                                                       tr("Markdown (*.md);;JSON (*.json)"));
        QString err;
        if (!f.isEmpty() && !exportTo(f, &err)) showError(this, tr("Export failed"), err);
    });
    connect(backend_, &QComboBox::currentIndexChanged, this, &ChatPane::syncBackend);
    connect(library_, &ModelLibrary::entriesChanged, this, [this] { fillModelCombo(model_, *library_); });
    connect(library_, &ModelLibrary::currentChanged, this, [this](const QString& p) {
        fillModelCombo(model_, *library_);
        if (!isGenerating()) model_->setCurrentIndex(model_->findData(p));
    });
    connect(model_, &QComboBox::currentIndexChanged, this, [this] {
        // Sampling defaults come from the model's generation_config.json, as with the CLI.
        const QString p = model_->currentData().toString();
        try {
            auto g = GenerationConfig::load(p.toStdString());
            temperature_->setValue(g.sampling.temperature);
            topK_->setValue(g.sampling.top_k);
            topP_->setValue(g.sampling.top_p);
        } catch (const std::exception&) {
        }
    });
    connect(job_, &Job::failed, this, [this](const QString& m) {
        showError(this, tr("Chat failed"), m);
        stats_->setText(tr("failed"));
    });
    connect(job_, &Job::finished, this, [this] {
        send_->setEnabled(true);
        stop_->setEnabled(false);
    });

    backends_ = available_backends();
    for (const auto& b : backends_) backend_->addItem(QString::fromStdString(b.name), QString::fromStdString(b.key));
    // A real GPU when there is one; else the CPU engine (faster than a software Vulkan device), with the Vulkan
    // entries still listed and their state explained.
    int pick = 0;
    for (int i = 0; i < (int)backends_.size(); ++i)
        if (backends_[i].usable && backends_[i].hardware) { pick = i; break; }
    backend_->setCurrentIndex(pick);
    syncBackend();
}

void ChatPane::syncBackend() {
    const int i = backend_->currentIndex();
    if (i < 0 || i >= (int)backends_.size()) return;
    const auto& b = backends_[i];
    if (b.kind == "cpu") {
        QStringList why; // what the Vulkan entries say, so a missing GPU is never silent
        for (const auto& o : backends_)
            if (o.kind == "vulkan" && !o.usable) why << QString::fromStdString(o.reason);
        reason_->setText(why.isEmpty() ? tr("Runs on the CPU.") : tr("Runs on the CPU (Vulkan: %1).").arg(why.join("; ")));
    } else {
        reason_->setText(b.usable ? tr("Runs on %1 (falls back to the CPU, with the reason, if the model does not fit).")
                                        .arg(QString::fromStdString(b.name))
                                  : tr("Using the CPU: %1.").arg(QString::fromStdString(b.reason)));
    }
}

bool ChatPane::selectBackend(const QString& kind) {
    for (int i = 0; i < (int)backends_.size(); ++i)
        if (QString::fromStdString(backends_[i].kind) == kind && (backends_[i].usable || kind == "cpu")) {
            backend_->setCurrentIndex(i);
            return true;
        }
    return false;
}

QString ChatPane::backendReason() const { return reason_->text(); }
QString ChatPane::statsText() const { return stats_->text(); }
QString ChatPane::transcriptText() const { return transcript_->toPlainText(); }
bool    ChatPane::isGenerating() const { return job_->isRunning(); }

void ChatPane::appendBlock(const QString& who, const QString& text) {
    QTextCursor c(transcript_->document());
    c.movePosition(QTextCursor::End);
    if (!transcript_->document()->isEmpty()) c.insertBlock();
    QTextCharFormat bold;
    bold.setFontWeight(QFont::Bold);
    c.insertText(who + ": ", bold);
    c.insertText(text, QTextCharFormat());
    transcript_->setTextCursor(c);
}

void ChatPane::onPiece(const QString& piece) {
    if (firstTokenMs_ < 0) firstTokenMs_ = sent_.elapsed();
    ++pieces_;
    ++tokens_;
    reply_ += piece;
    QTextCursor c(transcript_->document());
    c.movePosition(QTextCursor::End);
    c.insertText(piece, QTextCharFormat());
    transcript_->verticalScrollBar()->setValue(transcript_->verticalScrollBar()->maximum());
    updateStats(false);
}

void ChatPane::updateStats(bool final) {
    const double ttft = firstTokenMs_ / 1000.0;
    const double gen  = (sent_.elapsed() - firstTokenMs_) / 1000.0;
    const double tps  = gen > 0 && tokens_ > 1 ? (tokens_ - 1) / gen : 0;
    stats_->setText(tr("%1 tok/s · first token %2 ms · %3 pieces%4")
                        .arg(tps, 0, 'f', 1)
                        .arg(firstTokenMs_ < 0 ? 0 : (int)(ttft * 1000))
                        .arg(tokens_)
                        .arg(final ? "" : tr(" · generating…")));
}

void ChatPane::send() {
    if (isGenerating()) return;
    const QString text = input_->toPlainText().trimmed();
    if (text.isEmpty()) return;
    const QString path = model_->currentData().toString();
    if (path.isEmpty()) return showError(this, tr("No model"), tr("Open a checkpoint folder first."));
    if (!messages_.empty() && loaded_ && loaded_->dir != path.toStdString()) newChat(); // a new model starts afresh
    if (messages_.empty() && !system_->text().trimmed().isEmpty())
        messages_.push_back({"system", system_->text().trimmed().toStdString()});
    messages_.push_back({"user", text.toStdString()});
    input_->clear();
    appendBlock(tr("You"), text);
    appendBlock(tr("Assistant"), "");
    reply_.clear();
    pieces_ = tokens_ = 0;
    firstTokenMs_     = -1;
    sent_.start();
    stats_->setText(loaded_ && loaded_->dir == path.toStdString() ? tr("thinking…") : tr("loading model…"));
    send_->setEnabled(false);
    stop_->setEnabled(true);

    ChatTurnOptions opt;
    opt.max_tokens           = maxTokens_->value();
    opt.sampling.temperature = (float)temperature_->value();
    opt.sampling.top_k       = topK_->value();
    opt.sampling.top_p       = (float)topP_->value();
    opt.sampling.seed        = (uint64_t)QDateTime::currentMSecsSinceEpoch();
    stopFlag_                = std::make_shared<std::atomic<bool>>(false);
    auto stopFlag            = stopFlag_;
    auto          cached     = loaded_;
    auto          msgs       = messages_;
    const QString backendKey = backend_->currentData().toString();
    const std::string key    = backendKey.isEmpty() ? std::string("cpu") : backendKey.toStdString();
    job_->start([this, path, cached, msgs, opt, stopFlag, key](const ProgressFn& progress) -> Job::Continuation {
        auto cm = cached && cached->dir == path.toStdString() && cached->backend == key
                      ? cached
                      : ChatModel::load(path.toStdString(), key, progress);
        auto r  = std::make_shared<ChatTurnResult>(run_chat_turn(*cm, msgs, opt, [&](const std::string& piece) {
            job_->post([this, p = QString::fromStdString(piece)] { onPiece(p); });
            return !stopFlag->load();
        }));
        return [this, cm, r] {
            loaded_ = cm;
            device_ = QString::fromStdString(cm->device);
            if (!cm->fallback.empty()) reason_->setText(tr("Using the CPU: %1.").arg(QString::fromStdString(cm->fallback)));
            messages_.push_back({"assistant", r->reply});
            context_->setMaximum(cm->n_ctx);
            context_->setValue(std::min(cm->n_ctx, r->context_used));
            updateStats(true);
            stats_->setText(stats_->text() + tr(" · %1: %2 tok/s decode · stop: %3")
                                                 .arg(device_)
                                                 .arg(r->gen.decode_tokens_per_s(), 0, 'f', 1)
                                                 .arg(QString::fromStdString(r->gen.stop_reason)));
            emit replyFinished(QString::fromStdString(r->gen.stop_reason));
        };
    });
}

void ChatPane::stop() {
    if (stopFlag_) stopFlag_->store(true);
}

void ChatPane::newChat() {
    stop();
    messages_.clear();
    transcript_->clear();
    stats_->clear();
    context_->setValue(0);
}

QString ChatPane::transcriptMarkdown() const {
    QString md;
    for (const auto& m : messages_)
        md += QString("**%1:** %2\n\n").arg(QString::fromStdString(m.role), QString::fromStdString(m.content));
    return md;
}

bool ChatPane::exportTo(const QString& file, QString* error) {
    QByteArray data;
    if (file.endsWith(".json", Qt::CaseInsensitive)) {
        QJsonArray arr;
        for (const auto& m : messages_)
            arr.append(QJsonObject{{"role", QString::fromStdString(m.role)}, {"content", QString::fromStdString(m.content)}});
        QJsonObject o{{"model", model_->currentData().toString()}, {"messages", arr}};
        data = QJsonDocument(o).toJson();
    } else {
        data = transcriptMarkdown().toUtf8();
    }
    QSaveFile f(file); // temporary file + rename: an interrupted export never leaves half a file
    if (!f.open(QIODevice::WriteOnly) || f.write(data) != data.size() || !f.commit()) {
        if (error) *error = tr("%1: %2").arg(file, f.errorString());
        return false;
    }
    return true;
}

} // namespace moebius::studio
