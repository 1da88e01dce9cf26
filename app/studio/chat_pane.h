#pragma once
// Chat pane: pick a model and backend (with the reason when the CPU is used instead of a Vulkan device), system
// prompt and sampling settings; replies stream token by token from a worker thread, with stop, tokens/s, time to
// first token and context usage; the conversation can be copied or exported (Markdown or JSON).
#include <QElapsedTimer>
#include <QWidget>

#include <atomic>
#include <memory>
#include <vector>

#include "app/studio/chat_session.h"

class QComboBox;
class QDoubleSpinBox;
class QLabel;
class QLineEdit;
class QPlainTextEdit;
class QProgressBar;
class QPushButton;
class QSpinBox;
class QTextBrowser;

namespace moebius::studio {

class Job;
class ModelLibrary;

class ChatPane : public QWidget {
    Q_OBJECT
public:
    explicit ChatPane(ModelLibrary* library, QWidget* parent = nullptr);
    ~ChatPane() override { stop(); } // the worker's generate loop ends at its next token

    void send();        // sends the input box's text
    void stop();        // stops the reply being generated (keeps what arrived)
    void newChat();
    bool exportTo(const QString& file, QString* error = nullptr); // .json: messages; otherwise Markdown
    QString transcriptMarkdown() const;

    // Test and settings access.
    QPlainTextEdit* input() const { return input_; }
    QLineEdit*      systemPrompt() const { return system_; }
    QComboBox*      backendBox() const { return backend_; }
    QComboBox*      modelBox() const { return model_; }
    QDoubleSpinBox* temperature() const { return temperature_; }
    QSpinBox*       maxTokens() const { return maxTokens_; }
    QString         backendReason() const;
    // Selects the first usable backend of a kind ("cpu", "vulkan"); false when there is none.
    bool            selectBackend(const QString& kind);
    QString         deviceUsed() const { return device_; } // of the last reply: "CPU" or "Vulkan: <name>"
    QString         statsText() const;
    QString         transcriptText() const;
    Job*            job() const { return job_; }
    bool            isGenerating() const;
    int             piecesReceived() const { return pieces_; }
    const std::vector<ChatMessage>& messages() const { return messages_; }

signals:
    void replyFinished(const QString& stopReason);

private:
    void syncBackend();
    void appendBlock(const QString& who, const QString& text);
    void onPiece(const QString& piece);
    void updateStats(bool final);

    ModelLibrary*   library_;
    Job*            job_;
    QComboBox *     model_, *backend_;
    QLabel*         reason_;
    QLineEdit*      system_;
    QDoubleSpinBox *temperature_, *topP_;
    QSpinBox *      topK_, *maxTokens_;
    QTextBrowser*   transcript_;
    QPlainTextEdit* input_;
    QPushButton *   send_, *stop_;
    QLabel*         stats_;
    QProgressBar*   context_;

    std::vector<Backend>               backends_;
    std::shared_ptr<ChatModel>         loaded_; // reused while the same model is selected
    std::vector<ChatMessage>           messages_;
    std::shared_ptr<std::atomic<bool>> stopFlag_;
    QString                            reply_, device_;
    QElapsedTimer                      sent_;
    qint64                             firstTokenMs_ = -1;
    int                                pieces_ = 0, tokens_ = 0;
};

} // namespace moebius::studio
