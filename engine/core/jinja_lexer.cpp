// Tokenizer of the Jinja2 subset. It mirrors jinja2/lexer.py for the environment Hugging Face uses:
// trim_blocks (drop the first newline after a block or comment tag), lstrip_blocks (drop the indentation before
// a block or comment tag), keep_trailing_newline=False, and the "-" / "+" whitespace modifiers.
#include "engine/core/jinja_ast.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace moebius::jinja {

namespace {

// Decodes the code point at s[i] (invalid bytes count as one unit) and returns its length.
size_t cp_at(std::string_view s, size_t i, char32_t& cp) {
    unsigned char c = s[i];
    if (c < 0x80) {
        cp = c;
        return 1;
    }
    size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (len == 1 || i + len > s.size()) {
        cp = 0xDC00 + c;
        return 1;
    }
    std::u32string d = utf8_decode(s.substr(i, len));
    cp               = d[0];
    return d.size() == 1 ? len : 1;
}

bool is_ws_at(std::string_view s, size_t i, size_t& len) {
    char32_t cp;
    len = cp_at(s, i, cp);
    return is_python_space(cp);
}

// Length of s without its trailing whitespace (Python str.rstrip()).
size_t rstrip_len(std::string_view s) {
    size_t end = s.size();
    while (end > 0) {
        size_t start = end - 1;
        while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80 && end - start < 4)
            --start;
        char32_t cp;
        size_t   len = cp_at(s, start, cp);
        if (start + len != end) { // not a clean code point: treat the last byte alone
            start = end - 1;
            cp_at(s, start, cp);
        }
        if (!is_python_space(cp))
            break;
        end = start;
    }
    return end;
}

bool all_ws(std::string_view s) {
    for (size_t i = 0, len; i < s.size(); i += len)
        if (!is_ws_at(s, i, len))
            return false;
    return true;
}

bool is_name_start(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool is_name_char(char c) {
    return is_name_start(c) || (c >= '0' && c <= '9');
}
bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

int hex_value(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

class Lexer {
  public:
    explicit Lexer(std::string_view source) {
        // Newlines are normalised and one trailing newline dropped, as jinja2 does before lexing.
        src_.reserve(source.size());
        for (size_t i = 0; i < source.size(); ++i) {
            if (source[i] == '\r') {
                src_.push_back('\n');
                if (i + 1 < source.size() && source[i + 1] == '\n')
                    ++i;
            } else {
                src_.push_back(source[i]);
            }
        }
        if (!src_.empty() && src_.back() == '\n')
            src_.pop_back();
        line_starts_.push_back(0);
        for (size_t i = 0; i < src_.size(); ++i)
            if (src_[i] == '\n')
                line_starts_.push_back(i + 1);
    }

    std::vector<Token> run() {
        const size_t n = src_.size();
        while (pos_ < n) {
            size_t t = find_tag(pos_);
            if (t == std::string::npos) {
                emit_data(pos_, src_.substr(pos_));
                break;
            }
            char   kind      = src_[t + 1];
            char   sign      = t + 2 < n && (src_[t + 2] == '-' || src_[t + 2] == '+') ? src_[t + 2] : 0;
            size_t raw_end   = 0;
            bool   raw_strip = false;
            bool   is_raw    = kind == '%' && match_raw_begin(t, raw_end, raw_strip);
            emit_data(pos_, strip_data(src_.substr(pos_, t - pos_), sign, kind != '{'));
            if (is_raw)
                lex_raw(t, raw_end);
            else if (kind == '#')
                lex_comment(t, sign);
            else
                lex_tag(t, kind, sign);
        }
        Token eof;
        eof.type = Tok::Eof;
        set_loc(eof, src_.size());
        toks_.push_back(std::move(eof));
        return std::move(toks_);
    }

  private:
    std::string         src_;
    std::vector<size_t> line_starts_;
    std::vector<Token>  toks_;
    size_t              pos_           = 0;
    bool                line_starting_ = true; // the last match ended with a newline (or nothing was matched yet)

    [[noreturn]] void fail(size_t at, const std::string& msg) const {
        Token t;
        set_loc(t, at);
        throw SyntaxError{msg, t.line, t.col};
    }

    void set_loc(Token& t, size_t at) const {
        auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), at);
        t.line  = int(it - line_starts_.begin());
        t.col   = int(at - line_starts_[t.line - 1]) + 1;
    }

    size_t find_tag(size_t from) const {
        for (size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1))
            if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#'))
                return i;
        return std::string::npos;
    }

    // Whitespace handling of the text before a tag (jinja2 OptionalLStrip).
    std::string strip_data(std::string text, char sign, bool lstrip_applies) const {
        if (sign == '-') {
            text.resize(rstrip_len(text));
        } else if (sign != '+' && lstrip_applies) {
            size_t l_pos = text.rfind('\n');
            l_pos        = l_pos == std::string::npos ? 0 : l_pos + 1;
            if ((l_pos > 0 || line_starting_) && l_pos < text.size() && all_ws(std::string_view(text).substr(l_pos)))
                text.resize(l_pos);
        }
        return text;
    }

    void emit_data(size_t at, std::string text) {
        if (text.empty())
            return;
        Token t;
        t.type = Tok::Data;
        set_loc(t, at);
        t.text = std::move(text);
        toks_.push_back(std::move(t));
    }

    size_t skip_ws(size_t i) const {
        size_t len;
        while (i < src_.size() && is_ws_at(src_, i, len))
            i += len;
        return i;
    }

    // After a block/comment end: "+" keeps everything, "-" eats all whitespace, otherwise one newline goes.
    size_t after_block_end(size_t end, char sign) {
        if (sign == '-')
            end = skip_ws(end);
        else if (sign != '+' && end < src_.size() && src_[end] == '\n')
            ++end;
        line_starting_ = end > 0 && src_[end - 1] == '\n';
        return end;
    }

    bool starts_with(size_t i, const char* s) const { return src_.compare(i, std::strlen(s), s) == 0; }

    bool match_word(size_t& i, const char* word) const {
        size_t len = std::strlen(word);
        if (!starts_with(i, word) || (i + len < src_.size() && is_name_char(src_[i + len])))
            return false;
        i += len;
        return true;
    }

    // {%(-|+|)\s*raw\s*(-%}\s*|%}) at t
    bool match_raw_begin(size_t t, size_t& end, bool& strip) const {
        size_t i = t + 2;
        if (i < src_.size() && (src_[i] == '-' || src_[i] == '+'))
            ++i;
        i = skip_ws(i);
        if (!match_word(i, "raw"))
            return false;
        i = skip_ws(i);
        if (starts_with(i, "-%}")) {
            strip = true;
            end   = skip_ws(i + 3);
            return true;
        }
        if (starts_with(i, "%}")) {
            strip = false;
            end   = i + 2;
            return true;
        }
        return false;
    }

    void lex_raw(size_t t, size_t body) {
        line_starting_ = body > 0 && src_[body - 1] == '\n';
        for (size_t c = src_.find("{%", body); c != std::string::npos; c = src_.find("{%", c + 1)) {
            size_t i    = c + 2;
            char   sign = i < src_.size() && (src_[i] == '-' || src_[i] == '+') ? src_[i] : 0;
            if (sign)
                ++i;
            i = skip_ws(i);
            if (!match_word(i, "endraw"))
                continue;
            i          = skip_ws(i);
            char esign = 0;
            if (starts_with(i, "+%}") || starts_with(i, "-%}")) {
                esign = src_[i];
                i += 3;
            } else if (starts_with(i, "%}")) {
                i += 2;
            } else {
                continue;
            }
            emit_data(body, strip_data(src_.substr(body, c - body), sign, true));
            pos_ = after_block_end(i, esign);
            return;
        }
        fail(t, "missing end of raw directive");
    }

    void lex_comment(size_t t, char sign) {
        size_t start = t + 2 + (sign ? 1 : 0);
        if (start >= src_.size()) { // jinja2 quietly ends the template at a "{#" that is its last text
            pos_ = src_.size();
            return;
        }
        size_t q = src_.find("#}", start);
        if (q == std::string::npos)
            fail(t, "missing end of comment tag");
        char esign = q > start && (src_[q - 1] == '-' || src_[q - 1] == '+') ? src_[q - 1] : 0;
        pos_       = after_block_end(q + 2, esign);
    }

    void push(Tok type, size_t at, std::string text) {
        Token tk;
        tk.type = type;
        tk.text = std::move(text);
        set_loc(tk, at);
        toks_.push_back(std::move(tk));
    }

    void lex_tag(size_t t, char kind, char sign) {
        const bool block = kind == '%';
        push(block ? Tok::BlockBegin : Tok::VarBegin, t, "");
        size_t            i = t + 2 + (sign ? 1 : 0);
        std::vector<char> balance;
        for (;;) {
            if (i >= src_.size())
                fail(t,
                     block ? "unexpected end of template, missing '%}'" : "unexpected end of template, missing '}}'");
            if (balance.empty()) {
                if (block) {
                    char   esign = 0;
                    size_t len   = 0;
                    if (starts_with(i, "+%}") || starts_with(i, "-%}")) {
                        esign = src_[i];
                        len   = 3;
                    } else if (starts_with(i, "%}")) {
                        len = 2;
                    }
                    if (len) {
                        push(Tok::BlockEnd, i, "");
                        pos_ = after_block_end(i + len, esign);
                        return;
                    }
                } else {
                    size_t end = 0;
                    if (starts_with(i, "-}}"))
                        end = skip_ws(i + 3);
                    else if (starts_with(i, "}}"))
                        end = i + 2;
                    if (end) {
                        push(Tok::VarEnd, i, "");
                        line_starting_ = src_[end - 1] == '\n';
                        pos_           = end;
                        return;
                    }
                }
            }
            size_t ws;
            if (is_ws_at(src_, i, ws)) {
                i += ws;
                continue;
            }
            char c = src_[i];
            if (is_digit(c)) {
                i = lex_number(i);
            } else if (is_name_start(c)) {
                size_t j = i;
                while (j < src_.size() && is_name_char(src_[j]))
                    ++j;
                push(Tok::Name, i, src_.substr(i, j - i));
                i = j;
            } else if (c == '\'' || c == '"') {
                i = lex_string(i);
            } else {
                i = lex_operator(i, balance);
            }
        }
    }

    size_t scan_digits(size_t i, bool (*ok)(char)) const {
        // digits with single underscores between them, like jinja2's (\d+_)*\d+
        size_t j = i;
        while (j < src_.size() && (ok(src_[j]) || (src_[j] == '_' && j > i && j + 1 < src_.size() && ok(src_[j + 1]))))
            ++j;
        return j;
    }

    size_t lex_number(size_t i) {
        auto strip_us = [](std::string s) {
            s.erase(std::remove(s.begin(), s.end(), '_'), s.end());
            return s;
        };
        const size_t n         = src_.size();
        bool         after_dot = i > 0 && src_[i - 1] == '.'; // x.0.1 is attribute access, not a float
        if (!after_dot) {
            size_t j        = scan_digits(i, is_digit);
            bool   is_float = false;
            if (j + 1 < n && src_[j] == '.' && is_digit(src_[j + 1])) {
                j        = scan_digits(j + 1, is_digit);
                is_float = true;
            }
            if (j < n && (src_[j] == 'e' || src_[j] == 'E')) {
                size_t k = j + 1;
                if (k < n && (src_[k] == '+' || src_[k] == '-'))
                    ++k;
                if (k < n && is_digit(src_[k])) {
                    j        = scan_digits(k, is_digit);
                    is_float = true;
                }
            }
            if (is_float) {
                Token t;
                t.type = Tok::Number;
                t.number =
                    Value(std::strtod(strip_us(src_.substr(i, j - i)).c_str(), nullptr)); // 1e999 -> inf, like Python
                set_loc(t, i);
                toks_.push_back(std::move(t));
                return j;
            }
        }
        int    base  = 10;
        size_t start = i, j;
        if (src_[i] == '0' && i + 1 < n && std::strchr("bBoOxX", src_[i + 1]) && src_[i + 1] != 0) {
            char p = char(src_[i + 1] | 0x20);
            base   = p == 'b' ? 2 : p == 'o' ? 8 : 16;
            start  = i + 2;
            j      = start;
            while (j < n && (src_[j] == '_' || (hex_value(src_[j]) >= 0 && hex_value(src_[j]) < base)))
                ++j;
            if (j == start)
                fail(i, "invalid integer literal");
        } else if (src_[i] == '0') {
            j = i + 1;
            while (j < n && (src_[j] == '0' || (src_[j] == '_' && j + 1 < n && src_[j + 1] == '0')))
                ++j;
        } else {
            j = scan_digits(i, is_digit);
        }
        std::string digits = strip_us(src_.substr(start, j - start));
        uint64_t    v      = 0;
        for (char d : digits) {
            uint64_t next = v * uint64_t(base) + uint64_t(hex_value(d));
            if (next / uint64_t(base) != v || next > uint64_t(INT64_MAX))
                fail(i, "integer literal too large");
            v = next;
        }
        Token t;
        t.type   = Tok::Number;
        t.number = Value(int64_t(v));
        set_loc(t, i);
        toks_.push_back(std::move(t));
        return j;
    }

    size_t lex_string(size_t i) {
        const char quote = src_[i];
        size_t     j     = i + 1;
        while (j < src_.size() && src_[j] != quote)
            j += src_[j] == '\\' ? 2 : 1;
        if (j >= src_.size())
            fail(i, "unterminated string literal");
        Token t;
        t.type = Tok::String;
        t.text = unescape(i, std::string_view(src_).substr(i + 1, j - i - 1));
        set_loc(t, i);
        toks_.push_back(std::move(t));
        return j + 1;
    }

    // Python's unicode_escape decoding, which jinja2 applies to string literals.
    std::string unescape(size_t at, std::string_view s) const {
        std::string out;
        out.reserve(s.size());
        char32_t pending_high = 0; // a \uD8xx waiting for its low surrogate
        auto     put_cp       = [&](char32_t cp) {
            if (pending_high && cp >= 0xDC00 && cp <= 0xDFFF) {
                utf8_append(out, 0x10000 + ((pending_high - 0xD800) << 10) + (cp - 0xDC00));
                pending_high = 0;
                return;
            }
            if (pending_high)
                utf8_append(out, pending_high);
            pending_high = 0;
            if (cp >= 0xD800 && cp <= 0xDBFF)
                pending_high = cp;
            else
                utf8_append(out, cp);
        };
        auto flush = [&] {
            if (pending_high)
                utf8_append(out, pending_high);
            pending_high = 0;
        };
        for (size_t i = 0; i < s.size(); ++i) {
            if (s[i] != '\\' || i + 1 >= s.size()) {
                flush();
                out.push_back(s[i]);
                continue;
            }
            char e        = s[++i];
            auto read_hex = [&](int digits) {
                char32_t v = 0;
                for (int k = 0; k < digits; ++k) {
                    if (i + 1 >= s.size() || hex_value(s[i + 1]) < 0)
                        fail(at, std::string("truncated \\") + e + " escape in string literal");
                    v = v * 16 + char32_t(hex_value(s[++i]));
                }
                return v;
            };
            switch (e) {
            case '\n':
                break; // line continuation
            case '\\':
            case '\'':
            case '"':
                flush();
                out.push_back(e);
                break;
            case 'a':
                flush();
                out.push_back('\a');
                break;
            case 'b':
                flush();
                out.push_back('\b');
                break;
            case 'f':
                flush();
                out.push_back('\f');
                break;
            case 'n':
                flush();
                out.push_back('\n');
                break;
            case 'r':
                flush();
                out.push_back('\r');
                break;
            case 't':
                flush();
                out.push_back('\t');
                break;
            case 'v':
                flush();
                out.push_back('\v');
                break;
            case 'x':
                put_cp(read_hex(2));
                break;
            case 'u':
                put_cp(read_hex(4));
                break;
            case 'U': {
                char32_t cp = read_hex(8);
                if (cp > 0x10FFFF)
                    fail(at, "illegal Unicode character in string literal");
                put_cp(cp);
                break;
            }
            default:
                if (e >= '0' && e <= '7') {
                    char32_t v = char32_t(e - '0');
                    for (int k = 0; k < 2 && i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7'; ++k)
                        v = v * 8 + char32_t(s[++i] - '0');
                    put_cp(v);
                } else if (e == 'N') {
                    fail(at, "\\N{...} escapes are not supported");
                } else { // unknown escapes stay as written
                    flush();
                    out.push_back('\\');
                    out.push_back(e);
                }
            }
        }
        flush();
        return out;
    }

    size_t lex_operator(size_t i, std::vector<char>& balance) {
        static const char* two[] = {"//", "**", "==", "!=", ">=", "<="};
        for (const char* op : two)
            if (starts_with(i, op)) {
                push(Tok::Op, i, op);
                return i + 2;
            }
        char c = src_[i];
        if (!std::strchr("+-/*%~[](){}><=.:|,;", c) || c == 0) {
            char32_t cp;
            cp_at(src_, i, cp);
            std::string ch;
            utf8_append(ch, cp);
            fail(i, "unexpected character '" + ch + "'");
        }
        if (c == '(' || c == '[' || c == '{') {
            if (balance.size() >= size_t(k_max_nesting))
                fail(i, "brackets nested too deeply");
            balance.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
        } else if (c == ')' || c == ']' || c == '}') {
            if (balance.empty())
                fail(i, std::string("unexpected '") + c + "'");
            if (balance.back() != c)
                fail(i, std::string("unexpected '") + c + "', expected '" + balance.back() + "'");
            balance.pop_back();
        }
        push(Tok::Op, i, std::string(1, c));
        return i + 1;
    }
};

} // namespace

std::vector<Token> tokenize(std::string_view source) {
    return Lexer(source).run();
}

} // namespace moebius::jinja
