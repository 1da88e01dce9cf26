#pragma once
// UTF-8 helpers and the GPT-2 byte<->unicode map used by byte-level BPE tokenizers.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace moebius::unicode {

inline constexpr size_t npos = std::string_view::npos;

// Offset of the first byte that does not start a well-formed UTF-8 sequence (overlongs, surrogates and code
// points above U+10FFFF are ill-formed), or npos when the whole string is valid.
size_t utf8_invalid_offset(std::string_view s);

// Decodes the code point starting at s[pos] and advances pos. The input must be valid UTF-8.
char32_t utf8_next(std::string_view s, size_t& pos);

void utf8_append(std::string& out, char32_t cp);

// Length in bytes of the sequence introduced by lead byte b (1 for ASCII and for stray bytes).
size_t utf8_sequence_length(unsigned char b);

// Replaces every maximal ill-formed subpart with U+FFFD, as WHATWG/Python errors="replace"/Rust from_utf8_lossy do.
std::string utf8_sanitize(std::string_view bytes);

// Length of the longest prefix of `bytes` that does not end inside a UTF-8 sequence that could still be completed
// by more bytes. Bytes that can never become valid are part of the prefix (they decode to U+FFFD right away).
size_t utf8_complete_prefix(std::string_view bytes);

// GPT-2 bytes_to_unicode: byte -> UTF-8 of its printable stand-in code point.
const std::array<std::string, 256>& byte_level_encode_table();

// Inverse of the map above: code point -> byte, or -1 when the code point is not a byte stand-in.
int byte_level_decode(char32_t cp);

} // namespace moebius::unicode
