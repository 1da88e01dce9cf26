// dtype conversions, safetensors reader validation, writer round trips and the atomic-write helpers.
#include "engine/core/atomic_file.h"
#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "engine/core/safetensors.h"
#include "test_util.h"

#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <gtest/gtest.h>
#include <random>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace fs = std::filesystem;
using namespace moebius;

namespace {

// Independent f16 decode by the textbook formula (no bit tricks shared with the implementation).
double f16_reference(uint16_t h) {
    int    sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    double v = exp == 0 ? std::ldexp(double(mant), -24) : std::ldexp(1.0 + mant / 1024.0, exp - 15);
    if (exp == 0x1f)
        v = mant ? NAN : INFINITY;
    return sign ? -v : v;
}

uint32_t bits(float f) {
    return std::bit_cast<uint32_t>(f);
}

// Writes "<u64 LE len><header><data_len zero bytes>" — a hand-built (possibly corrupt) safetensors file.
fs::path write_raw(const fs::path& p, const std::string& header, size_t data_len, uint64_t len_field = UINT64_MAX) {
    uint64_t      n = len_field == UINT64_MAX ? header.size() : len_field;
    std::ofstream f(p, std::ios::binary);
    for (int i = 0; i < 8; ++i)
        f.put(char((n >> (8 * i)) & 0xff));
    f << header;
    std::string data(data_len, '\0');
    f << data;
    return p;
}

// Asserts that opening `p` throws FormatError whose message names the file and contains `what`.
void expect_format_error(const fs::path& p, const std::string& what) {
    try {
        SafetensorsFile::open(p);
        ADD_FAILURE() << p << ": expected FormatError containing '" << what << "'";
    } catch (const FormatError& e) {
        std::string msg = e.what();
        EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
        EXPECT_NE(msg.find(what), std::string::npos) << msg;
    }
}

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
    std::mt19937         rng(seed);
    std::vector<uint8_t> v(n);
    for (auto& b : v)
        b = uint8_t(rng());
    return v;
}

uint64_t header_len(const fs::path& p) {
    std::string s = test::read_text(p);
    uint64_t    n = 0;
    for (int i = 7; i >= 0; --i)
        n = (n << 8) | uint8_t(s[i]);
    return n;
}

size_t count_entries(const fs::path& dir) {
    size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir))
        ++n;
    return n;
}

} // namespace

// ---- dtype --------------------------------------------------------------------------------------------------------

TEST(DType, NamesSizesRoundTrip) {
    const std::pair<const char*, size_t> expected[] = {
        {"BOOL", 1}, {"U8", 1},  {"I8", 1},   {"U16", 2}, {"I16", 2}, {"U32", 4},     {"I32", 4},    {"U64", 8},
        {"I64", 8},  {"F16", 2}, {"BF16", 2}, {"F32", 4}, {"F64", 8}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
    for (auto [name, size] : expected) {
        auto t = dtype_from_name(name);
        ASSERT_TRUE(t.has_value()) << name;
        EXPECT_EQ(dtype_name(*t), name);
        EXPECT_EQ(dtype_size(*t), size) << name;
    }
    EXPECT_FALSE(dtype_from_name("bf16").has_value()); // the format is case-sensitive
    EXPECT_FALSE(dtype_from_name("F4").has_value());
    EXPECT_FALSE(dtype_from_name("").has_value());
}

TEST(DType, Bf16ExhaustiveRoundTrip) {
    for (uint32_t h = 0; h < 65536; ++h) {
        float f = bf16_to_f32(uint16_t(h));
        ASSERT_EQ(bits(f), h << 16) << h; // bf16 is the top half of an f32
        uint16_t back = f32_to_bf16(f);
        if (std::isnan(f)) {
            ASSERT_TRUE(std::isnan(bf16_to_f32(back))) << h;
            ASSERT_EQ(back & 0x8000, h & 0x8000) << h;
        } else {
            ASSERT_EQ(back, h) << h;
        }
    }
}

TEST(DType, Bf16RoundsToNearestEven) {
    for (uint32_t h = 0; h < 65536; ++h) {
        if (((h >> 7) & 0xff) == 0xff)
            continue; // inf/NaN have no midpoint above them
        uint32_t base = h << 16;
        uint16_t even = (h & 1) ? uint16_t(h + 1) : uint16_t(h);
        ASSERT_EQ(f32_to_bf16(std::bit_cast<float>(base | 0x8000)), even) << h;  // exact tie
        ASSERT_EQ(f32_to_bf16(std::bit_cast<float>(base | 0x7fff)), h) << h;     // just below: down
        ASSERT_EQ(f32_to_bf16(std::bit_cast<float>(base | 0x8001)), h + 1) << h; // just above: up
    }
    // Truncation of a NaN whose payload is only in the low bits would give inf; it must stay NaN.
    EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::bit_cast<float>(0x7f800001u)))));
    EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::bit_cast<float>(0xff800001u)))));
    EXPECT_EQ(f32_to_bf16(3.4028235e38f), 0x7f80); // FLT_MAX rounds up to inf
    EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
    EXPECT_EQ(f32_to_bf16(-2.0f), 0xc000);
}

TEST(DType, F16ExhaustiveAgainstReference) {
    for (uint32_t h = 0; h < 65536; ++h) {
        float  f   = f16_to_f32(uint16_t(h));
        double ref = f16_reference(uint16_t(h));
        if (std::isnan(ref)) {
            ASSERT_TRUE(std::isnan(f)) << h;
            ASSERT_EQ(std::signbit(f), bool(h & 0x8000)) << h;
            uint16_t back = f32_to_f16(f);
            ASSERT_EQ(back & 0x7c00, 0x7c00) << h; // still NaN (payload may be quieted)
            ASSERT_NE(back & 0x3ff, 0) << h;
            ASSERT_EQ(back & 0x8000, h & 0x8000) << h;
            continue;
        }
        ASSERT_EQ(double(f), ref) << h;
        ASSERT_EQ(std::signbit(f), bool(h & 0x8000)) << h; // -0 stays -0
        ASSERT_EQ(f32_to_f16(f), h) << h;
#if defined(__F16C__)
        ASSERT_EQ(bits(_cvtsh_ss(uint16_t(h))), bits(f)) << h;
#endif
    }
}

TEST(DType, F16RoundsToNearestEven) {
    // Every midpoint between adjacent finite halves is exact in f32; it must round to the even neighbour, and one f32
    // ulp either side must round to the nearer neighbour.
    for (uint32_t h = 0; h < 0x7bff; ++h) {
        float lo = float(f16_reference(uint16_t(h))), hi = float(f16_reference(uint16_t(h + 1)));
        float mid = float((double(lo) + double(hi)) / 2);
        ASSERT_EQ(double(mid), (double(lo) + double(hi)) / 2) << h;
        uint16_t even = (h & 1) ? uint16_t(h + 1) : uint16_t(h);
        ASSERT_EQ(f32_to_f16(mid), even) << h;
        ASSERT_EQ(f32_to_f16(std::nextafter(mid, 0.0f)), h) << h;
        ASSERT_EQ(f32_to_f16(std::nextafter(mid, INFINITY)), h + 1) << h;
        ASSERT_EQ(f32_to_f16(-mid), even | 0x8000) << h;
    }
    EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
    EXPECT_EQ(f32_to_f16(65519.996f), 0x7bff);
    EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00); // tie between max finite (odd) and 2^16 -> inf
    EXPECT_EQ(f32_to_f16(1e10f), 0x7c00);
    EXPECT_EQ(f32_to_f16(-INFINITY), 0xfc00);
    EXPECT_EQ(f32_to_f16(0x1p-25f), 0x0000);                       // tie with zero -> even (0)
    EXPECT_EQ(f32_to_f16(std::nextafter(0x1p-25f, 1.0f)), 0x0001); // just above -> smallest subnormal
    EXPECT_EQ(f32_to_f16(1e-30f), 0x0000);
    EXPECT_EQ(f32_to_f16(-1e-30f), 0x8000);
    EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(std::bit_cast<float>(0x7f800001u))))); // low-payload NaN stays NaN
}

#if defined(__F16C__)
TEST(DType, F16MatchesF16CSweep) {
    // ~1M f32 bit patterns spread over the whole range, compared with the hardware conversion.
    for (uint64_t x = 0; x < (1ull << 32); x += 4093) {
        float f = std::bit_cast<float>(uint32_t(x));
        if (std::isnan(f))
            continue;
        ASSERT_EQ(f32_to_f16(f), _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT)) << std::hex << x;
    }
}
#endif

TEST(DType, Fp8Decode) {
    EXPECT_EQ(f8_e4m3_to_f32(0x38), 1.0f);
    EXPECT_EQ(f8_e4m3_to_f32(0x7e), 448.0f); // max finite E4M3FN
    EXPECT_EQ(f8_e4m3_to_f32(0xfe), -448.0f);
    EXPECT_EQ(f8_e4m3_to_f32(0x01), 0x1p-9f); // smallest subnormal
    EXPECT_EQ(f8_e4m3_to_f32(0x08), 0x1p-6f); // smallest normal
    EXPECT_EQ(f8_e4m3_to_f32(0x78), 256.0f);  // exponent 15 is finite in the FN variant
    EXPECT_TRUE(std::isnan(f8_e4m3_to_f32(0x7f)));
    EXPECT_TRUE(std::isnan(f8_e4m3_to_f32(0xff)));
    EXPECT_EQ(f8_e5m2_to_f32(0x3c), 1.0f);
    EXPECT_EQ(f8_e5m2_to_f32(0x7b), 57344.0f);
    EXPECT_EQ(f8_e5m2_to_f32(0x01), 0x1p-16f);
    EXPECT_EQ(f8_e5m2_to_f32(0x7c), INFINITY);
    EXPECT_TRUE(std::isnan(f8_e5m2_to_f32(0x7f)));
}

TEST(DType, ConvertToF32) {
    // Unaligned source (offset 1) on purpose: safetensors data need not be aligned.
    std::vector<uint8_t>  buf(1 + 8 * 37);
    std::vector<float>    out(37);
    std::mt19937          rng(7);
    std::vector<uint16_t> halves(37);
    for (auto& h : halves)
        h = uint16_t(rng());
    std::memcpy(buf.data() + 1, halves.data(), 2 * halves.size());
    convert_to_f32(DType::F16, buf.data() + 1, out.data(), 37); // 37: exercises the vector body and the tail
    for (size_t i = 0; i < 37; ++i) {
        double ref = f16_reference(halves[i]);
        if (std::isnan(ref))
            EXPECT_TRUE(std::isnan(out[i]));
        else
            EXPECT_EQ(double(out[i]), ref) << i;
    }
    convert_to_f32(DType::BF16, buf.data() + 1, out.data(), 37);
    for (size_t i = 0; i < 37; ++i)
        EXPECT_EQ(bits(out[i]), uint32_t(halves[i]) << 16);

    double d[3] = {1.5, -2.25, 1e300};
    std::memcpy(buf.data() + 1, d, sizeof d);
    convert_to_f32(DType::F64, buf.data() + 1, out.data(), 3);
    EXPECT_EQ(out[0], 1.5f);
    EXPECT_EQ(out[1], -2.25f);
    EXPECT_EQ(out[2], INFINITY);

    uint8_t f8[2] = {0x38, 0xc0}; // E4M3: 1.0, -2.0
    convert_to_f32(DType::F8_E4M3, f8, out.data(), 2);
    EXPECT_EQ(out[0], 1.0f);
    EXPECT_EQ(out[1], -2.0f);

    EXPECT_THROW(convert_to_f32(DType::I32, buf.data(), out.data(), 1), UnsupportedError);
    EXPECT_THROW(convert_to_f32(DType::BOOL, buf.data(), out.data(), 1), UnsupportedError);
}

// ---- writer / reader round trip -------------------------------------------------------------------------------

TEST(Safetensors, WriteReadRoundTripEveryDType) {
    auto                              dir = test::scratch_dir("st-roundtrip");
    std::vector<std::vector<uint8_t>> storage;
    std::vector<TensorToWrite>        tensors;
    uint32_t                          seed = 1;
    // Odd element counts so tensors of 1-byte dtypes leave following tensors unaligned unless the writer is careful
    // with ordering; names deliberately not in insertion order.
    for (DType t : all_dtypes) {
        std::vector<int64_t> shape = {3, 5};
        storage.push_back(random_bytes(15 * dtype_size(t), seed++));
        tensors.push_back({"z." + std::string(dtype_name(t)), t, shape, storage.back()});
    }
    storage.push_back({});
    tensors.push_back({"a.empty", DType::F32, {0, 4}, storage.back()});
    storage.push_back(random_bytes(2, seed++));
    tensors.push_back({"b.scalar", DType::BF16, {}, storage.back()});

    auto file = dir / "rt.safetensors";
    write_safetensors(file, tensors, {{"format", "pt"}, {"note", "quote\" and \\ and ünïcode"}});
    EXPECT_EQ(count_entries(dir), 1u) << "temporary file left behind";
    EXPECT_EQ((8 + header_len(file)) % 8, 0u) << "data must start 8-byte aligned";

    auto st = SafetensorsFile::open(file);
    EXPECT_EQ(st->path(), file);
    ASSERT_EQ(st->tensors().size(), tensors.size());
    EXPECT_EQ(st->metadata().at("format"), "pt");
    EXPECT_EQ(st->metadata().at("note"), "quote\" and \\ and ünïcode");
    const uint8_t* prev_end = nullptr;
    for (const auto& [name, info] : st->tensors()) { // std::map: name order == file order
        if (prev_end) {
            EXPECT_EQ(info.data, prev_end) << "data not laid out in name order: " << name;
        }
        prev_end = info.data + info.nbytes;
    }
    for (const auto& t : tensors) {
        const TensorInfo* info = st->find(t.name);
        ASSERT_NE(info, nullptr) << t.name;
        EXPECT_EQ(info->name, t.name);
        EXPECT_EQ(info->dtype, t.dtype) << t.name;
        EXPECT_EQ(info->shape, t.shape) << t.name;
        EXPECT_EQ(info->file, file);
        ASSERT_EQ(info->nbytes, t.data.size()) << t.name;
        EXPECT_EQ(info->numel() * int64_t(dtype_size(t.dtype)), int64_t(t.data.size()));
        if (!t.data.empty()) { // memcmp with the null data() of an empty vector is UB
            EXPECT_EQ(std::memcmp(info->data, t.data.data(), t.data.size()), 0) << t.name;
        }
    }
    EXPECT_EQ(st->find("b.scalar")->numel(), 1);
    EXPECT_EQ(st->find("a.empty")->numel(), 0);

    // Overwriting an existing file replaces it completely.
    std::vector<uint8_t> one = {0, 0, 128, 63}; // 1.0f
    write_safetensors(file, {{"only", DType::F32, {1}, one}});
    auto st2 = SafetensorsFile::open(file);
    EXPECT_EQ(st2->tensors().size(), 1u);
    EXPECT_TRUE(st2->metadata().empty());
}

TEST(Safetensors, ZeroSizeTensorsAnywhereInTheFile) {
    // Packed formats have tensors of zero width (a binary layer without salient columns has a [out, 0] .signs2):
    // first, between others, last (its offsets then equal the end of the data buffer) and alone in a file.
    auto                 dir = test::scratch_dir("st-zero");
    std::vector<uint8_t> empty, mid = random_bytes(4, 9);
    std::vector<TensorToWrite> tensors = {{"m.signs", DType::U8, {2, 2}, mid},
                                          {"m.signs2", DType::U8, {2, 0}, empty},
                                          {"a.first", DType::F16, {0}, empty},
                                          {"z.last", DType::U8, {5, 0}, empty}};
    write_safetensors(dir / "z.safetensors", tensors);
    auto st = SafetensorsFile::open(dir / "z.safetensors");
    ASSERT_EQ(st->tensors().size(), 4u);
    for (const auto& t : tensors) {
        const TensorInfo* info = st->find(t.name);
        ASSERT_NE(info, nullptr) << t.name;
        EXPECT_EQ(info->shape, t.shape) << t.name;
        EXPECT_EQ(info->dtype, t.dtype) << t.name;
        EXPECT_EQ(info->nbytes, t.data.size()) << t.name;
    }
    EXPECT_EQ(st->find("m.signs2")->numel(), 0);
    EXPECT_EQ(std::memcmp(st->find("m.signs")->data, mid.data(), 4), 0);
    EXPECT_EQ(st->file_size(), 8 + header_len(dir / "z.safetensors") + 4);

    write_safetensors(dir / "only.safetensors", {{"x.signs2", DType::U8, {3, 0}, empty}});
    auto only = SafetensorsFile::open(dir / "only.safetensors");
    EXPECT_EQ(only->file_size(), 8 + header_len(dir / "only.safetensors")); // no data bytes at all
    EXPECT_EQ(only->find("x.signs2")->shape, (std::vector<int64_t>{3, 0}));
    EXPECT_EQ(only->find("x.signs2")->nbytes, 0u);
}

TEST(Safetensors, WriterRejectsBadInput) {
    auto                 dir = test::scratch_dir("st-writer-bad");
    std::vector<uint8_t> four(4);
    EXPECT_THROW(write_safetensors(dir / "a.safetensors", {{"x", DType::F32, {2}, four}}), InputError);
    EXPECT_THROW(write_safetensors(dir / "a.safetensors", {{"x", DType::F32, {1}, four}, {"x", DType::F32, {1}, four}}),
                 InputError);
    EXPECT_THROW(write_safetensors(dir / "a.safetensors", {{"__metadata__", DType::F32, {1}, four}}), InputError);
    EXPECT_EQ(count_entries(dir), 0u);
}

// ---- reader validation ------------------------------------------------------------------------------------------

TEST(SafetensorsBad, MissingFile) {
    auto p = test::scratch_dir("st-missing") / "nope.safetensors";
    try {
        SafetensorsFile::open(p);
        FAIL();
    } catch (const NotFoundError& e) {
        EXPECT_NE(std::string(e.what()).find(p.string()), std::string::npos);
    }
}

TEST(SafetensorsBad, TruncatedData) {
    auto                 dir = test::scratch_dir("st-truncated");
    auto                 p   = dir / "trunc.safetensors";
    std::vector<uint8_t> d   = random_bytes(64, 3);
    write_safetensors(p, {{"a", DType::F32, {8}, {d.data(), 32}}, {"b", DType::F32, {8}, {d.data() + 32, 32}}});
    ASSERT_NO_THROW(SafetensorsFile::open(p));
    fs::resize_file(p, fs::file_size(p) - 5);
    expect_format_error(p, "out of range");
    expect_format_error(p, "tensor 'b'");
}

TEST(SafetensorsBad, TooSmall) {
    auto dir = test::scratch_dir("st-small");
    auto p   = dir / "small.safetensors";
    std::ofstream(p) << "abc";
    expect_format_error(p, "too small");
    std::ofstream(dir / "empty.safetensors").close();
    expect_format_error(dir / "empty.safetensors", "too small");
}

TEST(SafetensorsBad, HeaderLengthPastEof) {
    auto dir = test::scratch_dir("st-pasteof");
    expect_format_error(write_raw(dir / "a.safetensors", "{}", 0, 1000), "past the end");
    expect_format_error(write_raw(dir / "b.safetensors", "{}", 0, 3), "past the end");
}

TEST(SafetensorsBad, HeaderLengthAbsurd) {
    auto dir = test::scratch_dir("st-absurd");
    expect_format_error(write_raw(dir / "a.safetensors", "{}", 0, (100ull << 20) + 1), "100 MiB");
    expect_format_error(write_raw(dir / "b.safetensors", "{}", 0, UINT64_MAX - 1), "100 MiB");
}

TEST(SafetensorsBad, HeaderNotJsonObject) {
    auto dir = test::scratch_dir("st-notjson");
    expect_format_error(write_raw(dir / "a.safetensors", "{\"a\": [", 0), "not valid JSON");
    expect_format_error(write_raw(dir / "b.safetensors", "[1, 2, 3]", 0), "not a JSON object");
    expect_format_error(write_raw(dir / "c.safetensors", "   {}", 0), "not a JSON object"); // must start with '{'
    expect_format_error(write_raw(dir / "d.safetensors", "{} trailing", 0), "not valid JSON");
    expect_format_error(write_raw(dir / "e.safetensors", "{\"a\": 1}", 0), "not an object");
    expect_format_error(write_raw(dir / "f.safetensors", std::string("{}\0\0", 4), 0), "not valid JSON");
    expect_format_error(write_raw(dir / "g.safetensors", std::string("{}\0garbage", 10), 0), "not valid JSON");
    // Trailing space padding is legal.
    EXPECT_NO_THROW(SafetensorsFile::open(write_raw(dir / "ok.safetensors", "{}      ", 0)));
}

TEST(SafetensorsBad, OverlappingOffsets) {
    auto dir = test::scratch_dir("st-overlap");
    auto p   = write_raw(dir / "a.safetensors",
                         R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                           R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                         24);
    expect_format_error(p, "overlap");
    // Zero-sized tensors occupy no bytes and may share an offset.
    EXPECT_NO_THROW(SafetensorsFile::open(write_raw(dir / "ok.safetensors",
                                                    R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                                    R"("e":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}})",
                                                    16)));
}

TEST(SafetensorsBad, OutOfRangeOffsets) {
    auto dir = test::scratch_dir("st-range");
    expect_format_error(
        write_raw(dir / "a.safetensors", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", 16),
        "out of range");
    expect_format_error(
        write_raw(dir / "b.safetensors", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[24,24]}})", 16),
        "out of range");
    expect_format_error(
        write_raw(dir / "c.safetensors", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", 16),
        "data_offsets");
}

TEST(SafetensorsBad, OffsetsInconsistentWithShape) {
    auto dir = test::scratch_dir("st-inconsistent");
    expect_format_error(
        write_raw(dir / "a.safetensors", R"({"w":{"dtype":"BF16","shape":[4],"data_offsets":[0,16]}})", 16),
        "tensor 'w'");
    expect_format_error(
        write_raw(dir / "b.safetensors", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}})", 16),
        "tensor 'w'");
    expect_format_error(write_raw(dir / "c.safetensors", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0]}})", 16),
                        "data_offsets");
    expect_format_error(write_raw(dir / "d.safetensors",
                                  R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}})", 16),
                        "overflow");
}

TEST(SafetensorsBad, UnknownDType) {
    auto dir = test::scratch_dir("st-dtype");
    expect_format_error(
        write_raw(dir / "a.safetensors", R"({"w":{"dtype":"F17","shape":[4],"data_offsets":[0,16]}})", 16),
        "unknown dtype 'F17', tensor 'w'");
    expect_format_error(write_raw(dir / "b.safetensors", R"({"w":{"dtype":4,"shape":[4],"data_offsets":[0,16]}})", 16),
                        "tensor 'w'");
    expect_format_error(write_raw(dir / "c.safetensors", R"({"w":{"shape":[4],"data_offsets":[0,16]}})", 16),
                        "tensor 'w'");
}

TEST(SafetensorsBad, BadShape) {
    auto dir = test::scratch_dir("st-shape");
    expect_format_error(
        write_raw(dir / "a.safetensors", R"({"w":{"dtype":"U8","shape":[-4],"data_offsets":[0,4]}})", 16), "negative");
    expect_format_error(
        write_raw(dir / "b.safetensors", R"({"w":{"dtype":"U8","shape":[2.0,2],"data_offsets":[0,4]}})", 16),
        "non-integer");
    expect_format_error(
        write_raw(dir / "c.safetensors", R"({"w":{"dtype":"U8","shape":["4"],"data_offsets":[0,4]}})", 16),
        "non-integer");
    expect_format_error(write_raw(dir / "d.safetensors", R"({"w":{"dtype":"U8","shape":4,"data_offsets":[0,4]}})", 16),
                        "shape");
}

TEST(SafetensorsBad, DuplicateTensor) {
    auto dir = test::scratch_dir("st-dup");
    expect_format_error(write_raw(dir / "a.safetensors",
                                  R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                                  R"("w":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
                                  16),
                        "duplicate key 'w'");
    // A duplicate inside an entry would also silently change meaning.
    expect_format_error(
        write_raw(dir / "b.safetensors", R"({"w":{"dtype":"U8","dtype":"F32","shape":[4],"data_offsets":[0,4]}})", 16),
        "duplicate key 'dtype'");
}

TEST(SafetensorsBad, BadMetadata) {
    auto dir = test::scratch_dir("st-meta");
    expect_format_error(write_raw(dir / "a.safetensors", R"({"__metadata__":{"format":1}})", 0), "__metadata__");
    expect_format_error(write_raw(dir / "b.safetensors", R"({"__metadata__":"pt"})", 0), "__metadata__");
    auto ok = SafetensorsFile::open(write_raw(dir / "ok.safetensors", R"({"__metadata__":{"format":"pt"}})", 0));
    EXPECT_EQ(ok->metadata().at("format"), "pt");
    EXPECT_TRUE(ok->tensors().empty());
}

TEST(Safetensors, OpenDoesNotReadData) {
    // A 1 GiB sparse tensor: open must only map it, not read or copy it.
    auto dir = test::scratch_dir("st-sparse");
    auto p   = write_raw(dir / "big.safetensors",
                         R"({"big":{"dtype":"U8","shape":[1073741824],"data_offsets":[0,1073741824]}})", 0);
    fs::resize_file(p, fs::file_size(p) + (1ull << 30));
    auto rss_kib = [] {
        std::ifstream s("/proc/self/statm");
        long          size = 0, resident = 0;
        s >> size >> resident;
        return resident * (sysconf(_SC_PAGESIZE) / 1024);
    };
    long before = rss_kib();
    auto t0     = std::chrono::steady_clock::now();
    auto st     = SafetensorsFile::open(p);
    auto dt     = std::chrono::steady_clock::now() - t0;
    long after  = rss_kib();
    EXPECT_EQ(st->tensors().at("big").nbytes, 1ull << 30);
    EXPECT_LT(after - before, 64 * 1024) << "open() appears to have read the tensor data";
    EXPECT_LT(std::chrono::duration<double>(dt).count(), 2.0);
}

// ---- atomic writes --------------------------------------------------------------------------------------------

TEST(AtomicFile, ExceptionMidWriteLeavesNoPartialFile) {
    auto dir   = test::scratch_dir("atomic-file");
    auto final = dir / "out.bin";
    write_file_atomic(final, "old contents");
    try {
        AtomicFile f(final);
        EXPECT_EQ(f.temp_path().parent_path(), dir);
        std::ofstream(f.temp_path(), std::ios::binary) << "half of the new";
        EXPECT_TRUE(fs::exists(f.temp_path()));
        throw std::runtime_error("writer failed mid-way");
    } catch (const std::runtime_error&) {
    }
    EXPECT_EQ(test::read_text(final), "old contents");
    EXPECT_EQ(count_entries(dir), 1u) << "temporary file left behind";

    {
        AtomicFile f(final);
        std::ofstream(f.temp_path(), std::ios::binary) << "new contents";
        f.commit();
        EXPECT_TRUE(f.committed());
    }
    EXPECT_EQ(test::read_text(final), "new contents");
    EXPECT_EQ(count_entries(dir), 1u);
}

TEST(AtomicFile, WriteSafetensorsFailureAtCommitCleansUp) {
    // The final path is a non-empty directory, so the rename after all data was written fails: nothing may remain.
    auto dir    = test::scratch_dir("atomic-st");
    auto target = dir / "model.safetensors";
    fs::create_directories(target / "x");
    std::vector<uint8_t> d(4);
    EXPECT_THROW(write_safetensors(target, {{"a", DType::F32, {1}, d}}), Error);
    EXPECT_EQ(count_entries(dir), 1u) << "temporary file left behind";
    EXPECT_TRUE(fs::is_directory(target / "x"));
}

TEST(AtomicDir, CommitAbortAndOverwriteRules) {
    auto root = test::scratch_dir("atomic-dir");
    auto out  = root / "ckpt";
    try {
        AtomicDir d(out);
        write_file_atomic(d.temp_path() / "config.json", "{}");
        throw std::runtime_error("quantizer failed");
    } catch (const std::runtime_error&) {
    }
    EXPECT_FALSE(fs::exists(out));
    EXPECT_EQ(count_entries(root), 0u) << "temporary directory left behind";

    {
        AtomicDir d(out);
        EXPECT_FALSE(fs::exists(out)) << "nothing visible before commit";
        std::ofstream(d.temp_path() / "config.json") << "{\"v\":1}";
        fs::create_directories(d.temp_path() / "sub");
        std::ofstream(d.temp_path() / "sub" / "f") << "x";
        d.commit();
    }
    EXPECT_EQ(test::read_text(out / "config.json"), "{\"v\":1}");
    EXPECT_EQ(test::read_text(out / "sub" / "f"), "x");
    EXPECT_EQ(count_entries(root), 1u);

    EXPECT_THROW(AtomicDir d(out), InputError); // non-empty, no force
    {
        AtomicDir d(out, /*force=*/true);
        std::ofstream(d.temp_path() / "config.json") << "{\"v\":2}";
        EXPECT_EQ(test::read_text(out / "config.json"), "{\"v\":1}") << "old dir must survive until commit";
        d.commit();
    }
    EXPECT_EQ(test::read_text(out / "config.json"), "{\"v\":2}");
    EXPECT_FALSE(fs::exists(out / "sub")) << "force replaces, not merges";
    EXPECT_EQ(count_entries(root), 1u);

    // An existing empty directory is fine without force (e.g. created by the user up front).
    fs::create_directories(root / "empty");
    {
        AtomicDir d(root / "empty/");
        std::ofstream(d.temp_path() / "a") << "a";
        d.commit();
    }
    EXPECT_EQ(test::read_text(root / "empty" / "a"), "a");
}
