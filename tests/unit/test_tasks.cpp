// Multiple-choice evaluation: strict JSONL loader, lm-eval-style scoring checked against an independent full-sequence
// computation, acc vs acc_norm, and accuracy on the bundled KJV cloze task.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>

#include "engine/core/error.h"
#include "engine/core/tokenizer.h"
#include "engine/cpu/model.h"
#include "engine/eval/tasks.h"
#include "test_util.h"

using namespace moebius;

namespace {

const Model& bundled() {
    static auto m = Model::load(test::bundled_model());
    return *m;
}
const Tokenizer& bundled_tok() {
    static auto t = Tokenizer::from_file(test::bundled_model() / "tokenizer.json");
    return t;
}

std::filesystem::path write_file(const std::string& name, const std::string& text) {
    auto p = test::scratch_dir("tasks-" + name) / "t.jsonl";
    std::ofstream(p, std::ios::binary) << text;
    return p;
}

// Loading must throw FormatError whose message names the file and contains `fragment`.
void expect_format_error(const std::string& name, const std::string& text, const std::string& fragment) {
    auto p = write_file(name, text);
    try {
        load_mc_tasks(p);
        ADD_FAILURE() << name << ": no exception";
    } catch (const FormatError& e) {
        std::string msg = e.what();
        EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
        EXPECT_NE(msg.find(fragment), std::string::npos) << msg;
    } catch (const std::exception& e) {
        ADD_FAILURE() << name << ": wrong exception type: " << e.what();
    }
}

// Independent reference: tokenize as lm-eval (written out here), one fresh full-sequence forward of context +
// continuation with every position's logits, log-softmax of the continuation positions summed.
double reference_loglik(const std::string& context, const std::string& choice) {
    const Model&     m   = bundled();
    const Tokenizer& tok = bundled_tok();
    const int        V   = m.spec().n_vocab;
    auto             ctx = tok.encode(context, false);
    auto             all = tok.encode(context + choice, false);
    std::vector<int32_t> seq = ctx;
    seq.insert(seq.end(), all.begin() + ctx.size(), all.end());
    const int          n = (int)seq.size(), n_ctx = (int)ctx.size();
    KVCache            cache = m.new_cache(n);
    std::vector<float> logits((size_t)n * V);
    m.forward(seq.data(), n, cache, logits.data(), true);
    double ll = 0;
    for (int p = n_ctx; p < n; ++p) {
        const float* row = logits.data() + (size_t)(p - 1) * V;
        const double mx  = *std::max_element(row, row + V);
        double       s   = 0;
        for (int v = 0; v < V; ++v) s += std::exp((double)row[v] - mx);
        ll += (double)row[seq[p]] - mx - std::log(s);
    }
    return ll;
}

} // namespace

TEST(Tasks, LoaderReadsItemsAndSkipsBlankLines) {
    auto p     = write_file("ok", "{\"context\": \"a\", \"choices\": [\" b\", \" c\"], \"gold\": 1, \"extra\": 0}\n"
                                  "\n   \n"
                                  "{\"context\": \"\", \"choices\": [\" d\"], \"gold\": 0}");
    auto items = load_mc_tasks(p);
    ASSERT_EQ(items.size(), 2u);
    EXPECT_EQ(items[0].context, "a");
    EXPECT_EQ(items[0].choices, (std::vector<std::string>{" b", " c"}));
    EXPECT_EQ(items[0].gold, 1);
    EXPECT_EQ(items[1].choices.size(), 1u);

    auto kjv = load_mc_tasks(test::resources_dir() / "tasks" / "kjv-cloze-test.jsonl");
    EXPECT_EQ(kjv.size(), 300u);
}

TEST(Tasks, LoaderRejectsBadInput) {
    const std::string good = "{\"context\": \"a\", \"choices\": [\" b\", \" c\"], \"gold\": 0}\n";
    expect_format_error("notjson", good + "{\"context\": \"a\", \"choices\": [\n", "line 2");
    expect_format_error("notobject", "[1, 2]\n", "line 1: expected a JSON object");
    expect_format_error("nochoices", good + good + "{\"context\": \"a\", \"gold\": 0}\n",
                        "line 3: missing \"choices\"");
    expect_format_error("emptychoices", "{\"context\": \"a\", \"choices\": [], \"gold\": 0}\n", "line 1: \"choices\"");
    expect_format_error("choicenotstr", "{\"context\": \"a\", \"choices\": [\" b\", 3], \"gold\": 0}\n", "line 1");
    expect_format_error("nocontext", "{\"choices\": [\" b\"], \"gold\": 0}\n", "line 1: missing \"context\"");
    expect_format_error("goldrange", good + "\n{\"context\": \"a\", \"choices\": [\" b\", \" c\"], \"gold\": 2}\n",
                        "line 3: \"gold\" 2 is out of range");
    expect_format_error("goldneg", "{\"context\": \"a\", \"choices\": [\" b\"], \"gold\": -1}\n", "out of range");
    expect_format_error("goldfloat", "{\"context\": \"a\", \"choices\": [\" b\"], \"gold\": 0.5}\n", "integer");
    expect_format_error("empty", "", "no items");
    expect_format_error("blank", "\n  \n", "no items");
    EXPECT_THROW(load_mc_tasks("/nonexistent/tasks.jsonl"), NotFoundError);
}

TEST(Tasks, ScoringMatchesFullSequenceReference) {
    auto kjv = load_mc_tasks(test::resources_dir() / "tasks" / "kjv-cloze-test.jsonl");
    std::vector<McItem> items(kjv.begin(), kjv.begin() + 3);
    // Trailing space on the context: lm-eval moves it onto the continuation.
    items.push_back({"And God said, ", {"Let there be light: and there was light.", "Amen."}, 0});
    auto r = evaluate_mc(bundled(), bundled_tok(), items);
    ASSERT_EQ(r.n, 4);
    for (size_t i = 0; i < items.size(); ++i) {
        const auto& it  = items[i];
        std::string ctx = it.context, pre;
        while (!ctx.empty() && ctx.back() == ' ') ctx.pop_back(), pre += ' ';
        ASSERT_EQ(r.loglik[i].size(), it.choices.size());
        std::vector<double> ref;
        for (size_t c = 0; c < it.choices.size(); ++c) {
            ref.push_back(reference_loglik(ctx, pre + it.choices[c]));
            EXPECT_NEAR(r.loglik[i][c], ref.back(), 2e-3 + 1e-4 * std::fabs(ref.back())) << i << "/" << c;
        }
        EXPECT_EQ(r.predicted[i], (int)(std::max_element(ref.begin(), ref.end()) - ref.begin())) << i;
    }
    // The moved space gives the same request as writing it on the choice.
    auto r2 =
        evaluate_mc(bundled(), bundled_tok(), {{"And God said,", {" Let there be light: and there was light."}, 0}});
    EXPECT_NEAR(r2.loglik[0][0], r.loglik[3][0], 1e-4);
}

TEST(Tasks, AccNormDiffersFromAccWhenLengthsDiffer) {
    // A short unlikely choice has the larger total log-likelihood (few tokens); the long true continuation has the
    // larger log-likelihood per byte.
    McItem item{"In the beginning God created the heaven and the earth. And the earth was without form, and void; and",
                {" zebra",
                 " darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters."},
                1};
    auto r = evaluate_mc(bundled(), bundled_tok(), {item});
    const auto& ll = r.loglik[0];
    ASSERT_EQ(ll.size(), 2u);
    EXPECT_GT(ll[0], ll[1]);
    EXPECT_GT(ll[1] / item.choices[1].size(), ll[0] / item.choices[0].size());
    EXPECT_EQ(r.predicted[0], 0);
    EXPECT_EQ(r.predicted_norm[0], 1);
    EXPECT_EQ(r.acc, 0.0);
    EXPECT_EQ(r.acc_norm, 1.0);
}

TEST(Tasks, TiesGoToTheLowestIndex) {
    auto r = evaluate_mc(bundled(), bundled_tok(), {{"And the LORD said", {" unto", " unto", " unto"}, 2}});
    EXPECT_EQ(r.loglik[0][0], r.loglik[0][2]);
    EXPECT_EQ(r.predicted[0], 0);
    EXPECT_EQ(r.predicted_norm[0], 0);
    EXPECT_EQ(r.acc, 0.0);
}

TEST(Tasks, EmptyContextUsesPrefixToken) {
    auto r = evaluate_mc(bundled(), bundled_tok(), {{"", {" In the beginning", " zzq"}, 0}});
    EXPECT_TRUE(std::isfinite(r.loglik[0][0]));
    EXPECT_GT(r.loglik[0][0], r.loglik[0][1]);
}

TEST(Tasks, KjvClozeAccuracyFarAboveChance) {
    // Whole file (~20 s on one core): the headline number. Measured: acc 0.390, acc_norm 0.473 (chance 0.25, one
    // standard error 0.025). Raw acc favours short choices, whose lengths vary widely here; acc_norm corrects that.
    auto   items = load_mc_tasks(test::resources_dir() / "tasks" / "kjv-cloze-test.jsonl");
    auto   t0    = std::chrono::steady_clock::now();
    auto   r     = evaluate_mc(bundled(), bundled_tok(), items);
    double secs  = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::cout << "kjv-cloze: acc " << r.acc << " acc_norm " << r.acc_norm << " n " << r.n << " (" << secs << " s)\n";
    EXPECT_EQ(r.n, 300);
    EXPECT_GT(r.acc, 0.33);
    EXPECT_GT(r.acc_norm, 0.4);
}
