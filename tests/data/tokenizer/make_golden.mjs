// Regenerates the tokenizer fixtures and golden files in this directory with an independent implementation,
// the pure-JS Hugging Face tokenizers (@huggingface/tokenizers 0.2.0), installed outside the repository. Run it from
// the directory that holds node_modules (the package is resolved from the current directory):
//
//   mkdir -p /tmp/tokgold && cd /tmp/tokgold && npm install @huggingface/tokenizers@0.2.0
//   cd /tmp/tokgold && node /path/to/moebius/tests/data/tokenizer/make_golden.mjs
//
// The script fails if the JS ids of resources/corpus/test.txt disagree with the reference ids in
// tests/data/reference/tiny-qwen2moe.test.json.
// Outputs: sp_normalizer.json, sp_metaspace.json, sp_metaspace_split.json, gpt2_bytelevel.json (hand-made BPE
// tokenizers, vocab/merges trained here on the test corpus) and golden.json (ids and decoded strings from the JS
// library for every tokenizer, plus a hash of the ids of the whole test corpus).
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(path.join(process.cwd(), "noop.js"));
let tokenizers;
try {
    tokenizers = await import(require.resolve("@huggingface/tokenizers"));
} catch {
    tokenizers = await import("@huggingface/tokenizers");
}
const Tokenizer = tokenizers.Tokenizer ?? tokenizers.default.Tokenizer;

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../../..");
const corpus = fs.readFileSync(path.join(repo, "resources/corpus/test.txt"), "utf8");
const reference = JSON.parse(fs.readFileSync(path.join(repo, "tests/data/reference/tiny-qwen2moe.test.json"), "utf8"));
const qwenJson = JSON.parse(fs.readFileSync(path.join(repo, "resources/models/tiny-qwen2moe/tokenizer.json"), "utf8"));

// ---- a tiny deterministic BPE trainer ------------------------------------------------------------------------------
// words: Map<string, count>; split: word -> initial symbols. Most frequent pair first, ties by the pair text.
function trainBpe(words, split, numMerges) {
    const entries = [...words.entries()].map(([w, n]) => ({ syms: split(w), n }));
    const merges = [];
    for (let k = 0; k < numMerges; ++k) {
        const counts = new Map();
        for (const { syms, n } of entries) {
            for (let i = 0; i + 1 < syms.length; ++i) {
                const key = syms[i] + "\u0000" + syms[i + 1];
                counts.set(key, (counts.get(key) ?? 0) + n);
            }
        }
        let best = null;
        let bestCount = 1;
        for (const [key, c] of counts) {
            if (c > bestCount || (c === bestCount && best !== null && key < best)) {
                best = key;
                bestCount = c;
            }
        }
        if (best === null) break;
        const [a, b] = best.split("\u0000");
        merges.push([a, b]);
        for (const e of entries) {
            const out = [];
            for (let i = 0; i < e.syms.length; ++i) {
                if (i + 1 < e.syms.length && e.syms[i] === a && e.syms[i + 1] === b) {
                    out.push(a + b);
                    ++i;
                } else {
                    out.push(e.syms[i]);
                }
            }
            e.syms = out;
        }
    }
    return merges;
}

function countWords(list) {
    const m = new Map();
    for (const w of list) if (w.length) m.set(w, (m.get(w) ?? 0) + 1);
    return new Map([...m.entries()].sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0)));
}

// Extra words so that a few non-ASCII characters are in the vocab and the rest go through byte fallback.
const extraWords = ["café", "naïve", "Straße", "über", "résumé", "日本", "日本語", "Ångström"];

// ---- SentencePiece-style BPE (Llama-2 / Mistral layout: <unk>, <s>, </s>, <0x00>..<0xFF>, pieces) ------------------
const SP = "\u2581";
const spWords = countWords([...corpus.split(/\s+/), ...extraWords].filter((w) => w.length).map((w) => SP + w));
const spMerges = trainBpe(spWords, (w) => Array.from(w), 400);
const spVocab = { "<unk>": 0, "<s>": 1, "</s>": 2 };
for (let b = 0; b < 256; ++b) spVocab[`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`] = 3 + b;
const spChars = [...new Set([...spWords.keys()].flatMap((w) => Array.from(w)))].sort();
for (const c of spChars) if (!(c in spVocab)) spVocab[c] = Object.keys(spVocab).length;
for (const [a, b] of spMerges) if (!(a + b in spVocab)) spVocab[a + b] = Object.keys(spVocab).length;
const spNextId = Object.keys(spVocab).length;

function spAdded() {
    return [
        { id: 0, content: "<unk>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
        { id: 1, content: "<s>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
        { id: 2, content: "</s>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
        // Mistral-style control token that eats the whitespace around it.
        { id: spNextId, content: "[INST]", single_word: false, lstrip: true, rstrip: true, normalized: false, special: true },
        // A non-special added token matched on the normalized text.
        { id: spNextId + 1, content: "<tool>", single_word: false, lstrip: false, rstrip: false, normalized: true, special: false },
    ];
}
const bosTemplate = {
    type: "TemplateProcessing",
    single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
    pair: [
        { SpecialToken: { id: "<s>", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: "<s>", type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
    ],
    special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
};
const spDecoderSeq = {
    type: "Sequence",
    decoders: [
        { type: "Replace", pattern: { String: SP }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
    ],
};
function spModel(extra = {}) {
    return {
        type: "BPE",
        dropout: null,
        unk_token: "<unk>",
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: true,
        byte_fallback: true,
        vocab: spVocab,
        merges: spMerges.map(([a, b]) => `${a} ${b}`),
        ...extra,
    };
}

// (b1) old Llama-2 conversion: Prepend + Replace normalizer, no pre-tokenizer, merges as "a b" strings.
const spNormalizer = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: spAdded(),
    normalizer: {
        type: "Sequence",
        normalizers: [
            { type: "Prepend", prepend: SP },
            { type: "Replace", pattern: { String: " " }, content: SP },
        ],
    },
    pre_tokenizer: null,
    post_processor: bosTemplate,
    decoder: spDecoderSeq,
    model: spModel(),
};

// (b2) newer Mistral/Mixtral conversion: no normalizer, Metaspace(first, split false) pre-tokenizer.
const spMetaspace = {
    ...spNormalizer,
    normalizer: null,
    pre_tokenizer: { type: "Metaspace", replacement: SP, prepend_scheme: "first", split: false },
};

// (b3) Metaspace(always, split true) and Metaspace decoder, no byte fallback: unknown characters become <unk>,
// fused per word.
const spMetaspaceSplit = {
    ...spNormalizer,
    normalizer: null,
    pre_tokenizer: { type: "Metaspace", replacement: SP, prepend_scheme: "always", split: true },
    decoder: { type: "Metaspace", replacement: SP, prepend_scheme: "always", split: true },
    model: spModel({ byte_fallback: false }),
};
// tokenizers.js ignores Metaspace "split"; for the golden ids, emulate split=true (split on U+2581, merged with
// the following text, as HF does) with an explicit Split after a non-splitting Metaspace.
const spMetaspaceSplitForJs = {
    ...spMetaspaceSplit,
    pre_tokenizer: {
        type: "Sequence",
        pretokenizers: [
            { type: "Metaspace", replacement: SP, prepend_scheme: "always", split: false },
            { type: "Split", pattern: { Regex: `${SP}[^${SP}]*|[^${SP}]+` }, behavior: "Isolated", invert: false },
        ],
    },
};

// ---- GPT-2 style byte-level BPE, merges as ["a", "b"] pairs --------------------------------------------------------
const byteToUnicode = (() => {
    const bs = [];
    for (let b = 0x21; b <= 0x7e; ++b) bs.push(b);
    for (let b = 0xa1; b <= 0xac; ++b) bs.push(b);
    for (let b = 0xae; b <= 0xff; ++b) bs.push(b);
    const cs = bs.slice();
    let n = 0;
    for (let b = 0; b < 256; ++b) {
        if (!bs.includes(b)) {
            bs.push(b);
            cs.push(256 + n++);
        }
    }
    return bs.map((b, i) => [b, String.fromCodePoint(cs[i])]);
})();
const byteMap = Object.fromEntries(byteToUnicode);
const gpt2Re = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
const enc = new TextEncoder();
const blWords = countWords(
    [...(corpus + " " + extraWords.join(" ")).matchAll(gpt2Re)].map((m) =>
        Array.from(enc.encode(m[0]), (b) => byteMap[b]).join(""),
    ),
);
const blMerges = trainBpe(blWords, (w) => Array.from(w), 500);
const blVocab = {};
for (const [, ch] of byteToUnicode) blVocab[ch] = Object.keys(blVocab).length;
for (const [a, b] of blMerges) if (!(a + b in blVocab)) blVocab[a + b] = Object.keys(blVocab).length;
const blEos = Object.keys(blVocab).length;
const byteLevelCfg = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true };
const gpt2 = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [
        { id: blEos, content: "<|endoftext|>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
    ],
    normalizer: null,
    pre_tokenizer: byteLevelCfg,
    post_processor: byteLevelCfg,
    decoder: byteLevelCfg,
    model: {
        type: "BPE",
        dropout: null,
        unk_token: null,
        continuing_subword_prefix: "",
        end_of_word_suffix: "",
        fuse_unk: false,
        byte_fallback: false,
        ignore_merges: false,
        vocab: blVocab,
        merges: blMerges,
    },
};

// ---- golden cases --------------------------------------------------------------------------------------------------
const corpusLines = corpus.split("\n");
const commonTexts = [
    "",
    "a",
    "Hello world",
    "Hello, world! How's it going? I'm fine; they're here, we've done, you'll see, he'd go.",
    "HOW'S IT GOING? DON'T YOU'LL THEY'RE",
    "1234567890 3.14159 1,000,000 +42 -7 x²",
    "naïve café résumé Ångström Straße über",
    "cafe\u0301 n\u0303o A\u030Angstro\u0308m e\u0301te\u0301", // decomposed: NFC composes these
    "I \u2764\uFE0F \u{1F980} and \u{1F469}\u200D\u{1F469}\u200D\u{1F467} family \u{1F389}\u{1F389}",
    "日本語のテキスト 中文字符 한국어 日本",
    "a  b   c\n\n\nd\t\te \r\n f   \n  g    ",
    "   leading and trailing   ",
    "\n\nnewlines first\n",
    "Arabic العربية, Hebrew עברית, Greek ελληνικά, Russian русский язык",
    "def f(x):\n    return x**2  # comment\n\tif y != 3: pass\n",
    "The year 2024 was \u{1F389} great!!! ... ---- //// ((()))",
    "non\u00A0breaking\u00A0space and ideographic\u3000space",
    "\u2581 already metaspace \u2581\u2581x",
    "<<<>>> </ s> <s > <ss>",
    // Repeated symbols: merge ties between equal pairs must go to the leftmost one.
    "aaaa bbb ...... !!!!! ---- ==== 0000 llll ssss eeee oooo ttt hhhhh  ,,,, ;;;; :::: ''''",
    "lll llll lllll falll wellll ..... --- === 000 eee ooo ttt hhh ,,, ;;; ::: !!! ''' theee thththth",
    corpusLines[1],
    corpusLines.slice(2, 6).join("\n"),
];
const qwenTexts = [
    ...commonTexts,
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text <|im_end|><|im_end|> tail",
    "<|im_start|",
];
const spTexts = [
    ...commonTexts,
    "<s>Hello</s> <unk> world</s>",
    "Say [INST] do this [/INST] now [INST]x",
    "call <tool> now<tool>x <tool>",
    "  [INST]  spaced  [INST]",
];
const gpt2Texts = [...commonTexts, "hello<|endoftext|> world <|endoftext|><|endoftext|>"];

// FNV-1a 64 over the little-endian int32 ids: compact check of a long id list (same function in the C++ test).
function fnv1a(ids) {
    let h = 0xcbf29ce484222325n;
    const prime = 0x100000001b3n;
    for (const id of ids) {
        let v = id >>> 0;
        for (let k = 0; k < 4; ++k) {
            h ^= BigInt(v & 0xff);
            h = (h * prime) & 0xffffffffffffffffn;
            v >>>= 8;
        }
    }
    return h.toString(16).padStart(16, "0");
}

function decodeOrEmpty(tok, ids, opts) {
    return ids.length === 0 ? "" : tok.decode(ids, { clean_up_tokenization_spaces: false, ...opts });
}

function makeGolden(name, tokJson, texts, jsTokJson = tokJson, { fullText = true } = {}) {
    const tok = new Tokenizer(jsTokJson, {});
    const cases = texts.map((text) => {
        const ids = tok.encode(text).ids;
        return {
            text,
            ids,
            ids_no_special: tok.encode(text, { add_special_tokens: false }).ids,
            decoded: decodeOrEmpty(tok, ids, {}),
            decoded_skip_special: decodeOrEmpty(tok, ids, { skip_special_tokens: true }),
        };
    });
    const out = { cases };
    if (fullText) {
        const ids = tok.encode(corpus).ids;
        out.corpus = { n_tokens: ids.length, fnv1a64: fnv1a(ids), first_ids: ids.slice(0, 2000) };
        out.corpus_roundtrip = decodeOrEmpty(tok, ids, { skip_special_tokens: true }) === corpus;
    }
    // Partial UTF-8 at the end: the first byte token(s) of a multi-byte character decode to U+FFFD.
    const emoji = tok.encode("\u{1F980}", { add_special_tokens: false }).ids;
    out.partial = [];
    for (let k = 1; k < emoji.length; ++k) {
        const ids = emoji.slice(0, k);
        out.partial.push({ ids, decoded: decodeOrEmpty(tok, ids, {}) });
    }
    console.log(`${name}: ${cases.length} cases, emoji -> ${emoji.length} tokens`);
    return out;
}

const golden = {
    generator: "@huggingface/tokenizers@0.2.0 via tests/data/tokenizer/make_golden.mjs",
    qwen: makeGolden("qwen", qwenJson, qwenTexts),
    sp_normalizer: makeGolden("sp_normalizer", spNormalizer, spTexts),
    sp_metaspace: makeGolden("sp_metaspace", spMetaspace, spTexts),
    sp_metaspace_split: makeGolden("sp_metaspace_split", spMetaspaceSplit, spTexts, spMetaspaceSplitForJs),
    gpt2_bytelevel: makeGolden("gpt2_bytelevel", gpt2, gpt2Texts),
};

// The JS library must agree with the reference ids from the Python stack before it is trusted as an oracle.
const q = golden.qwen.corpus;
if (q.n_tokens !== reference.n_tokens) throw new Error(`JS n_tokens ${q.n_tokens} != reference ${reference.n_tokens}`);
reference.first_ids.forEach((id, i) => {
    if (q.first_ids[i] !== id) throw new Error(`JS id ${i} = ${q.first_ids[i]} != reference ${id}`);
});
console.log(`qwen corpus: ${q.n_tokens} tokens, matches reference n_tokens and ${reference.first_ids.length} first_ids`);

const write = (file, obj) => fs.writeFileSync(path.join(here, file), JSON.stringify(obj) + "\n");
write("sp_normalizer.json", spNormalizer);
write("sp_metaspace.json", spMetaspace);
write("sp_metaspace_split.json", spMetaspaceSplit);
write("gpt2_bytelevel.json", gpt2);
// One line per id list keeps the file small and diffs readable.
const pretty = JSON.stringify(golden, null, 1).replace(/\[[\d,\s-]*\]/g, (m) => m.replace(/\s+/g, ""));
fs.writeFileSync(path.join(here, "golden.json"), pretty + "\n");
