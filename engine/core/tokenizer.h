#pragma once
// Hugging Face tokenizer.json (BPE models): byte-level BPE (Qwen2/Qwen3, OLMoE, DeepSeek) and SentencePiece-style
// BPE with byte fallback (Mistral, Mixtral, Llama-2). Pipeline as in HF `tokenizers`: added tokens are split out
// first, then normalizer -> pre-tokenizer -> BPE per piece -> post-processor; decode runs the decoder chain.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moebius {

class Tokenizer {
  public:
    // Throws FormatError("<path>: <problem>") on malformed JSON, missing keys or unsupported component types,
    // NotFoundError when the file cannot be read.
    static Tokenizer from_file(const std::filesystem::path& tokenizer_json);
    // Same, from the JSON text; `origin` names it in error messages.
    static Tokenizer from_string(std::string_view json_text, const std::string& origin = "<memory>");

    // Throws InputError("invalid UTF-8 at byte N"). add_special_tokens applies the post-processor (e.g. BOS).
    std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
    // Ill-formed UTF-8 in the result (e.g. a cut multi-byte character) becomes U+FFFD. Unknown ids are skipped.
    std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;
    // Raw bytes a single token stands for, without sequence-level effects (leading-space strip). Throws
    // InputError for an unknown id.
    std::string token_bytes(int32_t id) const;
    int32_t     token_id(std::string_view token) const; // -1 if absent; added tokens first, then the vocab
    std::string token_string(int32_t id) const;         // as written in tokenizer.json; InputError if unknown
    size_t      vocab_size() const;                     // max id + 1 over vocab and added tokens
    bool        is_special(int32_t id) const;

    // Decoder output before the final U+FFFD replacement (may end inside a UTF-8 sequence). For streaming.
    std::string decode_raw(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

    struct Impl;

  private:
    explicit Tokenizer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
    std::shared_ptr<Impl> impl_; // shared: copies are cheap and share the word cache
};

// Streams text token by token without ever emitting a partial UTF-8 sequence. Works for any decoder chain by
// decoding a small window (one token of context + the tokens not yet fully emitted) and emitting the difference.
class StreamingDecoder {
  public:
    explicit StreamingDecoder(const Tokenizer& tok, bool skip_special_tokens = true);
    std::string push(int32_t id); // returns the newly completed text (may be empty)
    std::string flush();          // whatever is left (incomplete tail -> U+FFFD)

  private:
    Tokenizer            tok_; // a copy shares the tokenizer's state, so the decoder cannot dangle
    bool                 skip_special_;
    std::vector<int32_t> window_;   // context token (if any) followed by tokens whose bytes are not all emitted
    size_t               done_ = 0; // bytes of decode_raw(window_) already emitted
};

} // namespace moebius
