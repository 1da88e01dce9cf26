#pragma once
// Error types. Bad input (corrupt files, unknown architectures, malformed JSON, template errors) throws a
// subclass of moebius::Error whose message names the file and the problem; programmer errors use MOEBIUS_ASSERT.
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace moebius {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};
// A file exists but its content is malformed or inconsistent (safetensors, config.json, tokenizer.json, ...).
struct FormatError : Error {
    using Error::Error;
};
// A file or tensor is missing.
struct NotFoundError : Error {
    using Error::Error;
};
// Valid input we do not support (unknown model_type, unsupported dtype for an operation).
struct UnsupportedError : Error {
    using Error::Error;
};
// User input that is invalid (bad CLI value, invalid UTF-8 in a prompt, template render error).
struct InputError : Error {
    using Error::Error;
};
// A long job was cancelled through its progress callback.
struct Cancelled : Error {
    Cancelled() : Error("cancelled") {}
    explicit Cancelled(const std::string& what) : Error(what) {}
};

} // namespace moebius

#define MOEBIUS_ASSERT(cond)                                                                                           \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            std::fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond);                          \
            std::abort();                                                                                              \
        }                                                                                                              \
    } while (0)
