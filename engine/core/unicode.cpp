#include "engine/core/unicode.h"

namespace moebius::unicode {

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

// Allowed range of the second byte for a lead byte (Unicode table 3-7); len 0 marks an impossible lead byte.
struct LeadInfo {
    size_t        len;
    unsigned char lo, hi;
};

LeadInfo lead_info(unsigned char b) {
    if (b < 0x80)
        return {1, 0, 0};
    if (b >= 0xC2 && b <= 0xDF)
        return {2, 0x80, 0xBF};
    if (b == 0xE0)
        return {3, 0xA0, 0xBF};
    if (b == 0xED)
        return {3, 0x80, 0x9F};
    if (b >= 0xE1 && b <= 0xEF)
        return {3, 0x80, 0xBF};
    if (b == 0xF0)
        return {4, 0x90, 0xBF};
    if (b >= 0xF1 && b <= 0xF3)
        return {4, 0x80, 0xBF};
    if (b == 0xF4)
        return {4, 0x80, 0x8F};
    return {0, 0, 0};
}

// Number of bytes of the well-formed prefix of the sequence at s[i] (== info.len when complete).
size_t valid_run(std::string_view s, size_t i, const LeadInfo& info) {
    size_t k = 1;
    for (; k < info.len && i + k < s.size(); ++k) {
        auto c  = static_cast<unsigned char>(s[i + k]);
        bool ok = k == 1 ? (c >= info.lo && c <= info.hi) : (c >= 0x80 && c <= 0xBF);
        if (!ok)
            break;
    }
    return k;
}

} // namespace

size_t utf8_invalid_offset(std::string_view s) {
    size_t i = 0;
    while (i < s.size()) {
        auto b = static_cast<unsigned char>(s[i]);
        if (b < 0x80) {
            ++i;
            continue;
        }
        LeadInfo info = lead_info(b);
        if (info.len == 0)
            return i;
        size_t k = valid_run(s, i, info);
        if (k != info.len)
            return i;
        i += k;
    }
    return npos;
}

char32_t utf8_next(std::string_view s, size_t& pos) {
    auto   b   = static_cast<unsigned char>(s[pos]);
    size_t len = utf8_sequence_length(b);
    if (pos + len > s.size())
        len = 1;
    char32_t cp = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
    for (size_t k = 1; k < len; ++k)
        cp = (cp << 6) | (static_cast<unsigned char>(s[pos + k]) & 0x3F);
    pos += len;
    return cp;
}

void utf8_append(std::string& out, char32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

size_t utf8_sequence_length(unsigned char b) {
    if (b >= 0xF0 && b <= 0xF7)
        return 4;
    if (b >= 0xE0)
        return b <= 0xEF ? 3 : 1;
    if (b >= 0xC0)
        return 2;
    return 1;
}

std::string utf8_sanitize(std::string_view s) {
    if (utf8_invalid_offset(s) == npos)
        return std::string(s);
    std::string out;
    out.reserve(s.size() + 8);
    size_t i = 0;
    while (i < s.size()) {
        auto b = static_cast<unsigned char>(s[i]);
        if (b < 0x80) {
            out += static_cast<char>(b);
            ++i;
            continue;
        }
        LeadInfo info = lead_info(b);
        if (info.len == 0) {
            out += kReplacement;
            ++i;
            continue;
        }
        size_t k = valid_run(s, i, info);
        if (k == info.len) {
            out.append(s.substr(i, k));
        } else {
            out += kReplacement; // one U+FFFD per maximal ill-formed subpart
        }
        i += k;
    }
    return out;
}

size_t utf8_complete_prefix(std::string_view s) {
    size_t n = s.size();
    // Walk back over the trailing continuation bytes to the lead byte of the last sequence.
    size_t p    = n;
    size_t cont = 0;
    while (p > 0 && cont < 4) {
        auto b = static_cast<unsigned char>(s[p - 1]);
        if (b < 0x80 || b >= 0xC0)
            break;
        --p;
        ++cont;
    }
    if (p == 0 || cont >= 4)
        return n; // no lead byte: those bytes are already ill-formed
    --p;
    LeadInfo info = lead_info(static_cast<unsigned char>(s[p]));
    if (info.len <= 1 || n - p >= info.len)
        return n; // ASCII, impossible lead or complete sequence
    return valid_run(s, p, info) == n - p ? p : n;
}

const std::array<std::string, 256>& byte_level_encode_table() {
    static const std::array<std::string, 256> table = [] {
        std::array<std::string, 256> t;
        int                          n = 0;
        for (int b = 0; b < 256; ++b) {
            bool     printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            char32_t cp        = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
            utf8_append(t[b], cp);
        }
        return t;
    }();
    return table;
}

int byte_level_decode(char32_t cp) {
    static const std::array<int16_t, 512> table = [] {
        std::array<int16_t, 512> t;
        t.fill(-1);
        const auto& enc = byte_level_encode_table();
        for (int b = 0; b < 256; ++b) {
            size_t pos                = 0;
            t[utf8_next(enc[b], pos)] = static_cast<int16_t>(b);
        }
        return t;
    }();
    return cp < table.size() ? table[cp] : -1;
}

} // namespace moebius::unicode
