#pragma once
// A model with its own KV cache: what the generation, perplexity and multiple-choice loops drive, so that each loop
// is written once for every backend. CpuSession runs Model::forward; engine/vulkan/runner.h's Runner runs the same
// math on a Vulkan device.
#include "engine/cpu/model.h"

#include <cstdint>

namespace moebius {

class Session {
  public:
    virtual ~Session() = default;
    virtual const ModelSpec& spec() const = 0;
    // Makes room for n_ctx positions and empties the cache.
    virtual void reset(int n_ctx) = 0;
    virtual int  n_ctx() const  = 0;
    virtual int  n_past() const = 0;
    // Keeps the first n_past positions (≤ n_past()); later tokens overwrite the rest.
    virtual void rewind(int n_past) = 0;
    // Runs n tokens at positions n_past().. and appends them to the cache.
    // logits: (n, n_vocab) if logits_all, else (n_vocab) for the last token only; may be nullptr.
    virtual void forward(const int32_t* tokens, int n, float* logits, bool logits_all) = 0;
    void         clear() { rewind(0); }
};

// The CPU reference model behind the Session interface.
class CpuSession final : public Session {
  public:
    explicit CpuSession(const Model& model, int n_ctx = 0) : model_(model) {
        if (n_ctx > 0) reset(n_ctx);
    }
    const ModelSpec& spec() const override { return model_.spec(); }
    void             reset(int n_ctx) override;
    int              n_ctx() const override { return cache_.n_ctx; }
    int              n_past() const override { return cache_.n_past; }
    void             rewind(int n_past) override;
    void forward(const int32_t* tokens, int n, float* logits, bool logits_all) override {
        model_.forward(tokens, n, cache_, logits, logits_all);
    }

  private:
    const Model& model_;
    KVCache      cache_;
};

} // namespace moebius
