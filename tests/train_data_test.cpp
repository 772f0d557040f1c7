// Tests of adapters_data: readers, label maps, splits, features and batches (with a real
// WordPiece tokenizer), metrics against hand-computed values, progress output and SVG charts.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <numeric>
#include <future>
#include <chrono>
#include <sys/stat.h>
#include <unistd.h>
#include <set>
#include <sstream>

#include "adapters/core/error.h"
#include "adapters/train/chart.h"
#include "adapters/train/data.h"
#include "adapters/train/metrics.h"
#include "adapters/train/progress.h"

namespace fs = std::filesystem;
using namespace adapters::train;
using adapters::tokenizer::Tokenizer;

namespace {

const fs::path kData = fs::path(ADAPTERS_TEST_DATA) / "train";

// A fresh, empty folder per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() / ("adapters_data_test_" + std::string(info->test_suite_name()) + "_" + info->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write_text(const fs::path& file, const std::string& text) {
  std::ofstream(file, std::ios::binary) << text;
}

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The message of the adapters::Error `f` throws (fails the test when it throws none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const adapters::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an adapters::Error";
  return "";
}

ReadOptions options_for(TaskKind task) {
  ReadOptions options;
  options.task = task;
  return options;
}

const Tokenizer& tiny_tokenizer() {
  static const Tokenizer tokenizer = Tokenizer::from_pretrained(kData / "tokenizer");
  return tokenizer;
}

int64_t token_id(const std::string& token) { return *tiny_tokenizer().token_to_id(token); }

std::vector<int64_t> ids_of(const std::vector<std::string>& tokens) {
  std::vector<int64_t> ids;
  for (const std::string& t : tokens) ids.push_back(token_id(t));
  return ids;
}

FeatureOptions max_length(size_t tokens) {
  FeatureOptions options;
  options.max_length = tokens;
  return options;
}

Dataset dataset_of(TaskKind task, const std::string& jsonl, const Columns& columns = {}) {
  ReadOptions options = options_for(task);
  options.columns = columns;
  return parse_dataset(jsonl, "mem.jsonl", FileFormat::Jsonl, options);
}

size_t count_of(const std::string& text, const std::string& needle) {
  size_t count = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++count;
  return count;
}

}  // namespace

// ---- reading ------------------------------------------------------------------------------------

TEST(TrainDataRead, JsonlTextPairsWithLines) {
  ReadOptions options = options_for(TaskKind::SequenceClassification);
  options.columns.text = "premise";
  options.columns.text_pair = "hypothesis";
  const Dataset d = read_dataset(kData / "nli.jsonl", options);
  ASSERT_EQ(d.size(), 4u);
  EXPECT_EQ(d.examples[0].text, "A cat sat on the mat.");
  EXPECT_EQ(d.examples[0].text_pair, "A cat is on a mat.");
  EXPECT_EQ(d.examples[1].labels, std::vector<std::string>{"contradiction"});
  EXPECT_EQ(d.examples[2].line, 4u);  // the blank line 3 is skipped but counted
  EXPECT_EQ(d.where(d.examples[2]), (kData / "nli.jsonl").string() + ":4");
  EXPECT_EQ(d.report.records, 4u);
  EXPECT_EQ(d.report.skipped, 0u);
}

TEST(TrainDataRead, CsvQuotedCommasNewlinesQuotesBomAndCrlf) {
  const Dataset d = read_dataset(kData / "reviews.csv", options_for(TaskKind::SequenceClassification));
  ASSERT_EQ(d.size(), 4u);
  EXPECT_EQ(d.examples[0].text, "Great movie, very good");
  EXPECT_EQ(d.examples[1].text, "He said \"bad\" and left");
  EXPECT_EQ(d.examples[2].text, "line one\r\nline two");
  EXPECT_EQ(d.examples[2].labels[0], "pos");
  EXPECT_EQ(d.examples[3].text, "plain text");
  EXPECT_EQ(d.examples[3].labels[0], "neg");
  EXPECT_EQ(d.examples[2].line, 4u);
  EXPECT_EQ(d.examples[3].line, 6u);  // after the two-line record
}

TEST(TrainDataRead, TsvKeepsQuotesLiterally) {
  const Dataset d = read_dataset(kData / "reviews.tsv", options_for(TaskKind::SequenceClassification));
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d.examples[0].text, "it was \"great");
  EXPECT_EQ(d.examples[1].labels[0], "neg");
}

TEST(TrainDataRead, RegressionFromTsv) {
  ReadOptions options = options_for(TaskKind::Regression);
  options.columns = {};
  options.columns.text = "sentence1";
  options.columns.text_pair = "sentence2";
  options.columns.label = "score";
  const Dataset d = read_dataset(kData / "stsb.tsv", options);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_DOUBLE_EQ(d.examples[0].target, 4.5);
  EXPECT_DOUBLE_EQ(d.examples[1].target, 0.25);
  EXPECT_TRUE(d.examples[1].labels.empty());

  const std::string message =
      error_of([&] { parse_dataset("sentence1\tsentence2\tscore\nx\ty\thigh\n", "sts.tsv", FileFormat::Tsv, options); });
  EXPECT_NE(message.find("sts.tsv:2"), std::string::npos) << message;
  EXPECT_NE(message.find("\"score\""), std::string::npos) << message;
  EXPECT_NE(message.find("expected a finite number"), std::string::npos) << message;

  // Invalid UTF-8 in the offending cell still gives an adapters::Error (shown with U+FFFD).
  const std::string latin1 = error_of([&] { parse_dataset("sentence1\tsentence2\tscore\nx\ty\t\xff\n", "sts.tsv", FileFormat::Tsv, options); });
  EXPECT_NE(latin1.find("sts.tsv:2: field \"score\": expected a finite number, found \"\xEF\xBF\xBD\""), std::string::npos) << latin1;
}

TEST(TrainDataRead, MultiLabelListsInJsonlAndCsv) {
  ReadOptions options = options_for(TaskKind::MultiLabel);
  options.columns.label = "labels";
  const Dataset d = read_dataset(kData / "topics.jsonl", options);
  ASSERT_EQ(d.size(), 3u);
  EXPECT_EQ(d.examples[0].labels, (std::vector<std::string>{"movie", "good"}));
  EXPECT_TRUE(d.examples[2].labels.empty());

  const Dataset csv = parse_dataset("text,labels\nhi,movie good\nho,\"[\"\"dog\"\", 3]\"\n", "m.csv", FileFormat::Csv, options);
  EXPECT_EQ(csv.examples[0].labels, (std::vector<std::string>{"movie", "good"}));
  EXPECT_EQ(csv.examples[1].labels, (std::vector<std::string>{"dog", "3"}));
}

TEST(TrainDataRead, TokenClassificationJsonlAndCsv) {
  ReadOptions options = options_for(TaskKind::TokenClassification);
  options.columns.tags = "ner_tags";
  const Dataset d = read_dataset(kData / "ner.jsonl", options);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d.examples[0].words, (std::vector<std::string>{"John", "lives", "in", "New", "York", "."}));
  EXPECT_EQ(d.examples[0].labels[4], "I-LOC");

  const Dataset csv = read_dataset(kData / "ner.csv", options_for(TaskKind::TokenClassification));
  ASSERT_EQ(csv.size(), 2u);
  EXPECT_EQ(csv.examples[0].words, (std::vector<std::string>{"John", "lives", "in", "Paris"}));
  EXPECT_EQ(csv.examples[0].labels, (std::vector<std::string>{"B-PER", "O", "O", "B-LOC"}));
  EXPECT_EQ(csv.examples[1].words, (std::vector<std::string>{"New", "York"}));

  const std::string message = error_of([] {
    parse_dataset("{\"tokens\": [\"a\", \"b\"], \"tags\": [\"O\"]}\n", "t.jsonl", FileFormat::Jsonl, options_for(TaskKind::TokenClassification));
  });
  EXPECT_NE(message.find("t.jsonl:1"), std::string::npos) << message;
  EXPECT_NE(message.find("2 words and 1 tags"), std::string::npos) << message;
}

TEST(TrainDataRead, SquadNestedAnswersInCodePoints) {
  ReadOptions options = options_for(TaskKind::QuestionAnswering);
  options.columns.answer_text = "answers.text";
  options.columns.answer_start = "answers.answer_start";
  const Dataset d = read_dataset(kData / "squad.jsonl", options);
  ASSERT_EQ(d.size(), 4u);
  ASSERT_EQ(d.examples[1].answers.size(), 2u);
  EXPECT_EQ(d.examples[1].answers[1].text, "in Paris");
  EXPECT_EQ(d.examples[1].answers[1].start, 14u);
  EXPECT_EQ(d.examples[3].answers[0].start, 20u);  // "Café": é is one code point, two bytes

  const std::string message = error_of([&] {
    parse_dataset(R"({"question": "q", "context": "John was born in Paris.", "answers": {"text": ["Paris"], "answer_start": [3]}})", "s.jsonl",
                  FileFormat::Jsonl, options);
  });
  EXPECT_NE(message.find("s.jsonl:1"), std::string::npos) << message;
  EXPECT_NE(message.find("expected the answer \"Paris\" at character 3"), std::string::npos) << message;
  EXPECT_NE(message.find("found \"n was\""), std::string::npos) << message;
}

TEST(TrainDataRead, MultipleChoiceFromColumnsAndLists) {
  ReadOptions options = options_for(TaskKind::MultipleChoice);
  options.columns.context = "sent1";
  options.columns.question = "sent2";
  options.columns.choice_columns = {"ending0", "ending1", "ending2"};
  const Dataset swag = read_dataset(kData / "swag.csv", options);
  ASSERT_EQ(swag.size(), 2u);
  EXPECT_EQ(swag.examples[1].context, "John lives in Paris, he");
  EXPECT_EQ(swag.examples[0].choices, (std::vector<std::string>{"sat on the mat.", "went to the park.", "was born in Paris."}));
  EXPECT_EQ(swag.examples[0].correct_choice, 1);

  ReadOptions list = options_for(TaskKind::MultipleChoice);
  list.columns.context = "question";
  list.columns.question = "";
  list.columns.choices = "options";
  list.columns.label = "answer";
  const Dataset d = read_dataset(kData / "choices.jsonl", list);
  EXPECT_EQ(d.examples[1].choices, (std::vector<std::string>{"a dog", "a cat", "we"}));
  EXPECT_EQ(d.examples[1].correct_choice, 1);

  const std::string message = error_of([&] {
    parse_dataset(R"({"question": "q", "options": ["a", "b"], "answer": 2})", "c.jsonl", FileFormat::Jsonl, list);
  });
  EXPECT_NE(message.find("c.jsonl:1"), std::string::npos) << message;
  EXPECT_NE(message.find("expected a choice index in [0, 2), found 2"), std::string::npos) << message;
}

TEST(TrainDataRead, MalformedJsonlSkippedWithFileAndLine) {
  ReadOptions options = options_for(TaskKind::SequenceClassification);
  options.on_malformed = MalformedPolicy::Skip;
  const fs::path file = kData / "malformed.jsonl";
  const Dataset d = read_dataset(file, options);
  ASSERT_EQ(d.size(), 3u);
  EXPECT_EQ(d.examples[2].line, 8u);
  EXPECT_EQ(d.report.records, 7u);
  EXPECT_EQ(d.report.skipped, 4u);
  ASSERT_EQ(d.report.warnings.size(), 4u);
  const std::string f = file.string();
  EXPECT_EQ(d.report.warnings[0].rfind(f + ":3: invalid JSON", 0), 0u) << d.report.warnings[0];
  EXPECT_EQ(d.report.warnings[1], f + ":5: missing field \"label\"");
  EXPECT_EQ(d.report.warnings[2], f + ":6: field \"text\": expected a string, found 5");
  EXPECT_EQ(d.report.warnings[3], f + ":7: expected a JSON object, found [1,2]");

  options.max_warnings = 1;
  const Dataset capped = read_dataset(file, options);
  EXPECT_EQ(capped.report.skipped, 4u);
  EXPECT_EQ(capped.report.warnings.size(), 1u);
}

TEST(TrainDataRead, MalformedJsonlFatalNamesFileAndLine) {
  const std::string message = error_of([] { read_dataset(kData / "malformed.jsonl", options_for(TaskKind::SequenceClassification)); });
  EXPECT_EQ(message.rfind((kData / "malformed.jsonl").string() + ":3: invalid JSON", 0), 0u) << message;
  EXPECT_NE(message.find("on_malformed"), std::string::npos) << message;
}

TEST(TrainDataRead, MalformedCsvRecords) {
  ReadOptions options = options_for(TaskKind::SequenceClassification);
  options.on_malformed = MalformedPolicy::Skip;
  const Dataset d = read_dataset(kData / "malformed.csv", options);
  ASSERT_EQ(d.size(), 3u);
  EXPECT_EQ(d.examples[0].text, "ok");
  EXPECT_EQ(d.examples[1].text, "multi\nline");
  EXPECT_EQ(d.examples[1].line, 4u);
  EXPECT_EQ(d.examples[2].text, "last");
  EXPECT_EQ(d.examples[2].line, 7u);
  const std::string f = (kData / "malformed.csv").string();
  ASSERT_EQ(d.report.warnings.size(), 3u);
  EXPECT_EQ(d.report.warnings[0], f + ":3: expected 2 fields (as the header), found 3");
  EXPECT_EQ(d.report.warnings[1], f + ":6: expected a delimiter or the end of the line after the closing quote of a field, found 'x'");
  EXPECT_EQ(d.report.warnings[2], f + ":8: the quoted field opened on line 8 is never closed");

  options.on_malformed = MalformedPolicy::Fatal;
  const std::string message = error_of([&] { read_dataset(kData / "malformed.csv", options); });
  EXPECT_EQ(message.rfind(f + ":3: expected 2 fields", 0), 0u) << message;
}

TEST(TrainDataRead, MissingHeaderColumnIsFatalEvenWhenSkipping) {
  ReadOptions options = options_for(TaskKind::SequenceClassification);
  options.on_malformed = MalformedPolicy::Skip;
  options.columns.label = "sentiment";
  const std::string message = error_of([&] { read_dataset(kData / "reviews.csv", options); });
  EXPECT_NE(message.find("reviews.csv:1: the header has no column \"sentiment\""), std::string::npos) << message;
  EXPECT_NE(message.find("columns: text, label"), std::string::npos) << message;
}

TEST(TrainDataRead, EmptyDatasetNamesTheFile) {
  TempDir dir;
  write_text(dir.path() / "empty.jsonl", "\n  \n");
  const std::string empty = error_of([&] { read_dataset(dir.path() / "empty.jsonl", options_for(TaskKind::SequenceClassification)); });
  EXPECT_NE(empty.find("empty.jsonl: expected at least one example, found no records"), std::string::npos) << empty;

  write_text(dir.path() / "bad.jsonl", "{\"text\": 1}\n");
  ReadOptions skip = options_for(TaskKind::SequenceClassification);
  skip.on_malformed = MalformedPolicy::Skip;
  const std::string all_bad = error_of([&] { read_dataset(dir.path() / "bad.jsonl", skip); });
  EXPECT_NE(all_bad.find("bad.jsonl: expected at least one example, found none: all 1 records were malformed"), std::string::npos) << all_bad;

  write_text(dir.path() / "header.csv", "text,label\n");
  const std::string header_only = error_of([&] { read_dataset(dir.path() / "header.csv", skip); });
  EXPECT_NE(header_only.find("header.csv: expected at least one example"), std::string::npos) << header_only;
}

TEST(TrainDataRead, FormatAndFileErrors) {
  const std::string ext = error_of([] { read_dataset(kData / "data.parquet", options_for(TaskKind::SequenceClassification)); });
  EXPECT_NE(ext.find("data.parquet: cannot tell the format from the extension \".parquet\""), std::string::npos) << ext;
  const std::string missing = error_of([] { read_dataset(kData / "missing.jsonl", options_for(TaskKind::SequenceClassification)); });
  EXPECT_NE(missing.find("missing.jsonl: cannot open"), std::string::npos) << missing;
  EXPECT_EQ(parse_task_kind("token_classification"), TaskKind::TokenClassification);
  EXPECT_EQ(to_string(TaskKind::MultipleChoice), "multiple_choice");
  EXPECT_NE(error_of([] { parse_task_kind("ner"); }).find("found \"ner\""), std::string::npos);
}

// The data reader refuses what is not a regular file, without blocking on a FIFO.
TEST(TrainDataRead, ReadsOnlyRegularFiles) {
  const fs::path dir = fs::temp_directory_path() / ("adapters_data_special_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "folder.jsonl");
  ASSERT_EQ(::mkfifo((dir / "fifo.jsonl").c_str(), 0600), 0);
  fs::create_symlink("/dev/zero", dir / "zero.jsonl");
  for (const char* name : {"folder.jsonl", "fifo.jsonl", "zero.jsonl"}) {
    auto read = std::async(std::launch::async, [&] {
      return error_of([&] { read_dataset(dir / name, options_for(TaskKind::SequenceClassification)); });
    });
    ASSERT_EQ(read.wait_for(std::chrono::seconds(10)), std::future_status::ready) << name << " blocked the reader";
    const std::string e = read.get();
    EXPECT_NE(e.find(name), std::string::npos) << e;
    EXPECT_NE(e.find("regular file"), std::string::npos) << e;
  }
  fs::remove_all(dir);
}

// ---- labels -------------------------------------------------------------------------------------

TEST(TrainDataLabels, BuiltSortedFromTraining) {
  ReadOptions options = options_for(TaskKind::SequenceClassification);
  options.columns.text = "premise";
  const TaskData data = load_data({kData / "nli.jsonl", std::nullopt, std::nullopt}, options);
  EXPECT_EQ(data.labels.names(), (std::vector<std::string>{"contradiction", "entailment", "neutral"}));
  EXPECT_EQ(data.labels.id("neutral", "x"), 2);
  EXPECT_TRUE(data.validation.empty());

  const Dataset numeric = dataset_of(TaskKind::SequenceClassification, "{\"text\": \"a\", \"label\": 10}\n{\"text\": \"b\", \"label\": 2}\n{\"text\": \"c\", \"label\": 0}\n");
  EXPECT_EQ(LabelMap::from_dataset(numeric).names(), (std::vector<std::string>{"0", "2", "10"}));
}

TEST(TrainDataLabels, UnknownLabelInValidationNamesFileLineAndKnownLabels) {
  TempDir dir;
  write_text(dir.path() / "train.csv", "text,label\na,pos\nb,neg\n");
  write_text(dir.path() / "dev.csv", "text,label\nc,pos\nd,neutral\n");
  const std::string message =
      error_of([&] { load_data({dir.path() / "train.csv", dir.path() / "dev.csv", std::nullopt}, options_for(TaskKind::SequenceClassification)); });
  EXPECT_NE(message.find((dir.path() / "dev.csv").string() + ":3: unknown label \"neutral\""), std::string::npos) << message;
  EXPECT_NE(message.find("\"neg\", \"pos\""), std::string::npos) << message;
}

TEST(TrainDataLabels, GivenLabel2Id) {
  const LabelMap map = LabelMap::from_label2id({{"pos", 1}, {"neg", 0}, {"neutral", 2}});
  EXPECT_EQ(map.name(1), "pos");
  EXPECT_EQ(map.label2id().at("neutral"), 2);
  TempDir dir;
  write_text(dir.path() / "train.csv", "text,label\na,pos\nb,neg\n");
  const TaskData data = load_data({dir.path() / "train.csv", std::nullopt, std::nullopt}, options_for(TaskKind::SequenceClassification), map);
  EXPECT_EQ(data.labels.names(), (std::vector<std::string>{"neg", "pos", "neutral"}));

  const std::string gap = error_of([] { LabelMap::from_label2id({{"a", 0}, {"b", 2}}); });
  EXPECT_NE(gap.find("label2id: expected ids 0..1, found 2 for label \"b\""), std::string::npos) << gap;
  const std::string twice = error_of([] { LabelMap::from_label2id({{"a", 0}, {"b", 0}}); });
  EXPECT_NE(twice.find("expected each id once"), std::string::npos) << twice;
  const std::string unknown = error_of([&] { load_data({dir.path() / "train.csv", std::nullopt, std::nullopt}, options_for(TaskKind::SequenceClassification),
                                                      LabelMap::from_label2id({{"pos", 0}})); });
  EXPECT_NE(unknown.find("train.csv:3: unknown label \"neg\""), std::string::npos) << unknown;
}

// ---- shuffling and splits -----------------------------------------------------------------------

TEST(TrainDataSplit, SeededPermutationIsReproducible) {
  const std::vector<size_t> a = seeded_permutation(20, 7), b = seeded_permutation(20, 7), c = seeded_permutation(20, 8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  std::vector<size_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) EXPECT_EQ(sorted[i], i);
  // Pinned: std::mt19937_64 is fully specified and the Fisher-Yates above is our own, so this
  // order is the same with every compiler and standard library.
  EXPECT_EQ(seeded_permutation(8, 42), (std::vector<size_t>{7, 0, 5, 1, 2, 4, 3, 6}));
  EXPECT_TRUE(seeded_permutation(0, 1).empty());
}

TEST(TrainDataSplit, ShuffleDataset) {
  Dataset d = read_dataset(kData / "nli.jsonl", [] {
    ReadOptions o = options_for(TaskKind::SequenceClassification);
    o.columns.text = "premise";
    return o;
  }());
  Dataset e = d;
  shuffle(d, 3);
  shuffle(e, 3);
  std::vector<size_t> lines_d, lines_e;
  for (const Example& x : d.examples) lines_d.push_back(x.line);
  for (const Example& x : e.examples) lines_e.push_back(x.line);
  EXPECT_EQ(lines_d, lines_e);
  const std::vector<size_t> order = seeded_permutation(4, 3);
  const std::vector<size_t> file_lines = {1, 2, 4, 5};
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(lines_d[i], file_lines[order[i]]);
}

TEST(TrainDataSplit, FractionsWithSeed) {
  std::string jsonl;
  for (int i = 0; i < 20; ++i) jsonl += "{\"text\": \"t" + std::to_string(i) + "\", \"label\": " + std::to_string(i % 3) + "}\n";
  const Dataset all = dataset_of(TaskKind::SequenceClassification, jsonl);
  const TaskData a = split_dataset(all, {0.8, 0.1, 0.1}, 5), b = split_dataset(all, {0.8, 0.1, 0.1}, 5), c = split_dataset(all, {0.8, 0.1, 0.1}, 6);
  EXPECT_EQ(a.train.size(), 16u);
  EXPECT_EQ(a.validation.size(), 2u);
  EXPECT_EQ(a.test.size(), 2u);
  const auto lines = [](const Dataset& d) {
    std::vector<size_t> out;
    for (const Example& e : d.examples) out.push_back(e.line);
    return out;
  };
  EXPECT_EQ(lines(a.train), lines(b.train));
  EXPECT_EQ(lines(a.validation), lines(b.validation));
  EXPECT_NE(lines(a.train), lines(c.train));
  std::set<size_t> seen;
  for (const Dataset* d : {&a.train, &a.validation, &a.test}) {
    const std::vector<size_t> l = lines(*d);
    EXPECT_TRUE(std::is_sorted(l.begin(), l.end()));
    seen.insert(l.begin(), l.end());
  }
  EXPECT_EQ(seen.size(), 20u);
  EXPECT_EQ(a.validation.source, "mem.jsonl[validation]");

  EXPECT_NE(error_of([&] { split_dataset(all, {0.5, 0.2, 0.2}, 1); }).find("summing to 1"), std::string::npos);
  EXPECT_NE(error_of([&] { split_dataset(all, {0.0, 0.5, 0.5}, 1); }).find("leave no training example"), std::string::npos);
}

TEST(TrainDataSplit, LoadAndSplitChecksLabels) {
  TempDir dir;
  std::string csv = "text,label\n";
  for (int i = 0; i < 10; ++i) csv += "t" + std::to_string(i) + "," + (i % 2 ? "pos" : "neg") + "\n";
  write_text(dir.path() / "all.csv", csv);
  const TaskData data = load_and_split(dir.path() / "all.csv", {0.6, 0.2, 0.2}, 11, options_for(TaskKind::SequenceClassification));
  EXPECT_EQ(data.train.size() + data.validation.size() + data.test.size(), 10u);
  EXPECT_EQ(data.validation.size(), 2u);
  EXPECT_EQ(data.labels.names(), (std::vector<std::string>{"neg", "pos"}));
}

// ---- features -----------------------------------------------------------------------------------

TEST(TrainDataFeatures, ClassificationPairsAndTruncation) {
  Columns columns;
  columns.text_pair = "pair";
  const Dataset d = dataset_of(TaskKind::SequenceClassification, R"({"text": "the cat sat", "pair": "on the mat", "label": "a"})" "\n", columns);
  const LabelMap labels = LabelMap::from_dataset(d);
  const FeatureSet full = make_features(tiny_tokenizer(), d, labels, max_length(32));
  ASSERT_EQ(full.features.size(), 1u);
  const TokenRow& row = full.features[0].rows.at(0);
  EXPECT_EQ(row.input_ids, ids_of({"[CLS]", "the", "cat", "sat", "[SEP]", "on", "the", "mat", "[SEP]"}));
  EXPECT_EQ(row.token_type_ids, (std::vector<int64_t>{0, 0, 0, 0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(full.features[0].label, 0);
  EXPECT_EQ(full.pad_id, token_id("[PAD]"));

  // 3 + 3 tokens into 7 - 3 special = 4: longest-first gives 2 + 2.
  const FeatureSet cut = make_features(tiny_tokenizer(), d, labels, max_length(7));
  EXPECT_EQ(cut.features[0].rows[0].input_ids, ids_of({"[CLS]", "the", "cat", "[SEP]", "on", "the", "[SEP]"}));
  EXPECT_NE(error_of([&] { make_features(tiny_tokenizer(), d, labels, max_length(3)); }).find("max_length 3 leaves no room"), std::string::npos);
}

TEST(TrainDataFeatures, RegressionAndMultiLabelTargets) {
  const Dataset reg = dataset_of(TaskKind::Regression, R"({"text": "the cat", "label": 2.5})" "\n");
  const FeatureSet r = make_features(tiny_tokenizer(), reg, LabelMap(), max_length(16));
  EXPECT_EQ(r.features[0].targets, std::vector<float>{2.5f});
  const Batch rb = collate(r, {0});
  EXPECT_EQ(rb.float_labels, std::vector<float>{2.5f});

  ReadOptions options = options_for(TaskKind::MultiLabel);
  options.columns.label = "labels";
  const Dataset multi = read_dataset(kData / "topics.jsonl", options);
  const LabelMap labels = LabelMap::from_dataset(multi);
  EXPECT_EQ(labels.names(), (std::vector<std::string>{"dog", "good", "movie"}));
  const FeatureSet m = make_features(tiny_tokenizer(), multi, labels, max_length(16));
  EXPECT_EQ(m.features[0].targets, (std::vector<float>{0, 1, 1}));
  EXPECT_EQ(m.features[2].targets, (std::vector<float>{0, 0, 0}));
  const Batch mb = collate(m, {0, 1});
  EXPECT_EQ(mb.float_labels, (std::vector<float>{0, 1, 1, 1, 0, 0}));
}

TEST(TrainDataFeatures, TaggingLabelsOnFirstSubToken) {
  ReadOptions options = options_for(TaskKind::TokenClassification);
  options.columns.tags = "ner_tags";
  const Dataset d = read_dataset(kData / "ner.jsonl", options);
  const LabelMap labels = LabelMap::from_dataset(d);
  ASSERT_EQ(labels.names(), (std::vector<std::string>{"B-LOC", "B-PER", "I-LOC", "O"}));
  const FeatureSet set = make_features(tiny_tokenizer(), d, labels, max_length(32));
  const int64_t X = kIgnoreIndex, BLOC = 0, BPER = 1, ILOC = 2, O = 3;
  // [CLS] john lives in new york . [SEP]
  EXPECT_EQ(set.features[0].rows[0].input_ids, ids_of({"[CLS]", "john", "lives", "in", "new", "york", ".", "[SEP]"}));
  EXPECT_EQ(set.features[0].token_labels, (std::vector<int64_t>{X, BPER, O, O, BLOC, ILOC, O, X}));
  // [CLS] un ##happy john was play ##ing [SEP]
  EXPECT_EQ(set.features[1].rows[0].input_ids, ids_of({"[CLS]", "un", "##happy", "john", "was", "play", "##ing", "[SEP]"}));
  EXPECT_EQ(set.features[1].token_labels, (std::vector<int64_t>{X, O, X, BPER, O, O, X, X}));

  // Truncated: the words cut off get no token, the rest keep their labels.
  const FeatureSet cut = make_features(tiny_tokenizer(), d, labels, max_length(4));
  EXPECT_EQ(cut.features[1].token_labels, (std::vector<int64_t>{X, O, X, X}));

  const Dataset unknown = dataset_of(TaskKind::TokenClassification, R"({"tokens": ["john"], "tags": ["B-ORG"]})" "\n");
  const std::string message = error_of([&] { make_features(tiny_tokenizer(), unknown, labels, max_length(8)); });
  EXPECT_NE(message.find("mem.jsonl:1: unknown label \"B-ORG\""), std::string::npos) << message;
}

TEST(TrainDataFeatures, QuestionAnsweringSpans) {
  ReadOptions options = options_for(TaskKind::QuestionAnswering);
  options.columns.answer_text = "answers.text";
  options.columns.answer_start = "answers.answer_start";
  const Dataset d = read_dataset(kData / "squad.jsonl", options);
  const FeatureSet set = make_features(tiny_tokenizer(), d, LabelMap(), max_length(64));
  // q2: [CLS] where was john born ? [SEP] john was born in paris in 19 ##90 . [SEP]
  const Feature& paris = set.features[1];
  EXPECT_EQ(paris.rows[0].input_ids, ids_of({"[CLS]", "where", "was", "john", "born", "?", "[SEP]", "john", "was", "born", "in", "paris", "in", "19",
                                             "##90", ".", "[SEP]"}));
  EXPECT_EQ(paris.start_position, 11);
  EXPECT_EQ(paris.end_position, 11);
  EXPECT_EQ(span_text(d.examples[1], paris, 10, 11), "in Paris");
  EXPECT_EQ(span_text(d.examples[1], paris, 0, 11), "");  // CLS is outside the context
  // q3: "1990" is two word pieces.
  EXPECT_EQ(set.features[2].start_position, 13);
  EXPECT_EQ(set.features[2].end_position, 14);
  EXPECT_EQ(span_text(d.examples[2], set.features[2], 13, 14), "1990");
  // q1: the answer is the first context token.
  EXPECT_EQ(set.features[0].start_position, 8);
  // q4: offsets count code points ("Café" -> [UNK]); Paris sits at character 20.
  const Feature& cafe = set.features[3];
  EXPECT_EQ(span_text(d.examples[3], cafe, static_cast<size_t>(cafe.start_position), static_cast<size_t>(cafe.end_position)), "Paris");
  EXPECT_EQ(span_text(d.examples[3], cafe, 7, 7), "Café");

  // Truncated so that the context stops before "paris": both positions point at CLS.
  const FeatureSet cut = make_features(tiny_tokenizer(), d, LabelMap(), max_length(10));
  EXPECT_EQ(cut.features[1].rows[0].input_ids.size(), 10u);
  EXPECT_EQ(cut.features[1].start_position, 0);
  EXPECT_EQ(cut.features[1].end_position, 0);
  EXPECT_EQ(cut.features[0].start_position, 8);  // "John" survives the cut

  const Batch batch = collate(cut, {0, 1});
  EXPECT_EQ(batch.start_positions, (std::vector<int64_t>{8, 0}));
  EXPECT_EQ(batch.end_positions, (std::vector<int64_t>{8, 0}));

  const std::string message = error_of([&] { make_features(tiny_tokenizer(), d, LabelMap(), max_length(7)); });
  EXPECT_NE(message.find("squad.jsonl:1: the question takes"), std::string::npos) << message;
}

TEST(TrainDataFeatures, QuestionAnsweringWindowsWithDocStride) {
  ReadOptions read = options_for(TaskKind::QuestionAnswering);
  read.columns.answer_text = "answers.text";
  read.columns.answer_start = "answers.answer_start";
  const Dataset d = read_dataset(kData / "squad.jsonl", read);
  FeatureOptions options = max_length(12);  // q2: 5 question tokens + 3 specials: 4 context tokens a window
  options.doc_stride = 2;
  const FeatureSet set = make_features(tiny_tokenizer(), d, LabelMap(), options);
  std::vector<const Feature*> q2;
  size_t previous = 0;
  for (const Feature& f : set.features) {
    EXPECT_GE(f.example, previous);  // windows stay in dataset order
    previous = f.example;
    EXPECT_LE(f.rows[0].input_ids.size(), 12u);
    if (f.example == 1) q2.push_back(&f);
  }
  ASSERT_EQ(q2.size(), 4u);
  // Context: john was born in paris in 19 ##90 . -- windows start every 4 - 2 = 2 tokens.
  const std::vector<std::vector<std::string>> windows = {
      {"john", "was", "born", "in"}, {"born", "in", "paris", "in"}, {"paris", "in", "19", "##90"}, {"19", "##90", "."}};
  const std::vector<std::pair<int64_t, int64_t>> answers = {{0, 0}, {9, 9}, {7, 7}, {0, 0}};  // CLS where cut off
  for (size_t w = 0; w < windows.size(); ++w) {
    SCOPED_TRACE(w);
    std::vector<std::string> tokens = {"[CLS]", "where", "was", "john", "born", "?", "[SEP]"};
    tokens.insert(tokens.end(), windows[w].begin(), windows[w].end());
    tokens.push_back("[SEP]");
    EXPECT_EQ(q2[w]->rows[0].input_ids, ids_of(tokens));
    EXPECT_EQ(std::make_pair(q2[w]->start_position, q2[w]->end_position), answers[w]);
  }
  EXPECT_EQ(span_text(d.examples[1], *q2[1], 9, 9), "Paris");  // offsets stay those of the context
  EXPECT_EQ(span_text(d.examples[1], *q2[2], 7, 10), "Paris in 1990");

  options.doc_stride = 4;
  const std::string message = error_of([&] { make_features(tiny_tokenizer(), d, LabelMap(), options); });
  // q1's question is a token longer than q2's: its windows hold 3 context tokens.
  EXPECT_NE(message.find("squad.jsonl:1: doc_stride 4 must be smaller than the 3 context tokens"), std::string::npos) << message;
}

TEST(TrainDataFeatures, MultipleChoiceRowsAndBatchShape) {
  ReadOptions options = options_for(TaskKind::MultipleChoice);
  options.columns.context = "sent1";
  options.columns.question = "sent2";
  options.columns.choice_columns = {"ending0", "ending1", "ending2"};
  const Dataset d = read_dataset(kData / "swag.csv", options);
  const FeatureSet set = make_features(tiny_tokenizer(), d, LabelMap(), max_length(32));
  ASSERT_EQ(set.features[0].rows.size(), 3u);
  // (context, "Then it sat on the mat.")
  EXPECT_EQ(set.features[0].rows[0].input_ids, ids_of({"[CLS]", "the", "dog", "ran", "to", "the", "park", ".", "[SEP]", "[UNK]", "it", "sat", "on", "the",
                                                       "mat", ".", "[SEP]"}));
  const Batch batch = collate(set, {0, 1});
  EXPECT_EQ(batch.shape(), (std::vector<int64_t>{2, 3, batch.seq_len}));
  EXPECT_EQ(batch.input_ids.size(), static_cast<size_t>(2 * 3 * batch.seq_len));
  EXPECT_EQ(batch.labels, (std::vector<int64_t>{1, 1}));
}

// ---- batches ------------------------------------------------------------------------------------

namespace {
FeatureSet features_of_lengths(const std::vector<size_t>& lengths) {
  FeatureSet set;
  set.task = TaskKind::TokenClassification;
  set.pad_id = 0;
  for (size_t i = 0; i < lengths.size(); ++i) {
    Feature f;
    f.example = i;
    f.rows.push_back({std::vector<int64_t>(lengths[i], 7), std::vector<int64_t>(lengths[i], 0)});
    f.token_labels.assign(lengths[i], 1);
    set.features.push_back(f);
  }
  return set;
}
}  // namespace

TEST(TrainDataBatch, DynamicPaddingToTheLongest) {
  const Dataset d = dataset_of(TaskKind::SequenceClassification,
                               "{\"text\": \"the cat sat on the mat\", \"label\": \"a\"}\n{\"text\": \"the dog\", \"label\": \"b\"}\n");
  const FeatureSet set = make_features(tiny_tokenizer(), d, LabelMap::from_dataset(d), max_length(32));
  const Batch batch = collate(set, {1, 0});
  EXPECT_EQ(batch.shape(), (std::vector<int64_t>{2, 8}));
  const int64_t pad = token_id("[PAD]");
  const std::vector<int64_t> first(batch.input_ids.begin(), batch.input_ids.begin() + 8);
  EXPECT_EQ(first, (std::vector<int64_t>{token_id("[CLS]"), token_id("the"), token_id("dog"), token_id("[SEP]"), pad, pad, pad, pad}));
  EXPECT_EQ(batch.attention_mask, (std::vector<int64_t>{1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1}));
  EXPECT_EQ(batch.labels, (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(batch.features, (std::vector<size_t>{1, 0}));

  const FeatureSet tags = features_of_lengths({2, 4});
  const Batch tb = collate(tags, {0, 1});
  EXPECT_EQ(tb.labels, (std::vector<int64_t>{1, 1, kIgnoreIndex, kIgnoreIndex, 1, 1, 1, 1}));
}

TEST(TrainDataBatch, CausalLmTargetsAreTheTokensWithoutTokenTypes) {
  const Dataset d = dataset_of(TaskKind::CausalLM, "{\"text\": \"the cat sat\"}\n{\"text\": \"the dog\", \"label\": \"ignored\"}\n");
  EXPECT_EQ(parse_task_kind("causal_lm"), TaskKind::CausalLM);
  EXPECT_FALSE(uses_label_map(TaskKind::CausalLM));
  const FeatureSet set = make_features(tiny_tokenizer(), d, LabelMap(), max_length(32));
  ASSERT_EQ(set.features.size(), 2u);
  EXPECT_EQ(set.features[0].token_labels, set.features[0].rows[0].input_ids);
  const Batch batch = collate(set, {1, 0});
  const int64_t pad = token_id("[PAD]");
  EXPECT_EQ(batch.shape(), (std::vector<int64_t>{2, 5}));
  EXPECT_EQ(batch.labels, (std::vector<int64_t>{token_id("[CLS]"), token_id("the"), token_id("dog"), token_id("[SEP]"), kIgnoreIndex,
                                                token_id("[CLS]"), token_id("the"), token_id("cat"), token_id("sat"), token_id("[SEP]")}));
  EXPECT_EQ(batch.input_ids[4], pad);
  EXPECT_TRUE(batch.token_type_ids.empty());  // GPT-2 would add the embedding of token type 0
}

// Masked LM: the text's tokens may be masked, the special tokens never; HF's collator rates
// (each token picked with p; picked: 80% [MASK], 10% a random id, 10% kept); a row is masked
// alike whichever batch it is in (so the ranks of a data-parallel run agree with one process).
// A record nested past 128 levels is a malformed record naming its line, not a stack overflow.
TEST(TrainDataRead, DeeplyNestedRecordsAreMalformed) {
  const std::string deep = std::string(1000000, '[') + std::string(1000000, ']');
  const std::string e = error_of([&] {
    dataset_of(TaskKind::SequenceClassification, "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": " + deep + "}\n");
  });
  EXPECT_EQ(e.rfind("mem.jsonl:2: invalid JSON (nested deeper than 128 levels", 0), 0u) << e.substr(0, 300);
}

TEST(TrainDataBatch, MaskedLmMasksTheTextAloneAsHfCollatorDoes) {
  std::string jsonl;
  for (int i = 0; i < 400; ++i) jsonl += "{\"text\": \"the cat sat on the mat and the dog ran\"}\n";
  const Dataset d = dataset_of(TaskKind::MaskedLM, jsonl);
  EXPECT_EQ(parse_task_kind("masked_lm"), TaskKind::MaskedLM);
  FeatureOptions options = max_length(32);
  options.mask_probability = 0.3;
  const FeatureSet set = make_features(tiny_tokenizer(), d, LabelMap(), options);
  EXPECT_EQ(set.masking.mask_id, token_id("[MASK]"));
  EXPECT_EQ(set.masking.probability, 0.3);
  const auto& f = set.features[0];
  EXPECT_EQ(f.token_labels.front(), kIgnoreIndex);  // [CLS]
  EXPECT_EQ(f.token_labels.back(), kIgnoreIndex);   // [SEP]
  EXPECT_EQ(std::vector<int64_t>(f.token_labels.begin() + 1, f.token_labels.end() - 1),
            std::vector<int64_t>(f.rows[0].input_ids.begin() + 1, f.rows[0].input_ids.end() - 1));

  std::vector<size_t> all(set.features.size());
  std::iota(all.begin(), all.end(), size_t{0});
  const Batch clean = collate(set, all);
  Batch masked = clean;
  mask_tokens(masked, set.masking, 11);
  size_t maskable = 0, picked = 0, as_mask = 0, kept = 0;
  for (size_t t = 0; t < clean.labels.size(); ++t) {
    if (clean.labels[t] == kIgnoreIndex) {
      EXPECT_EQ(masked.labels[t], kIgnoreIndex);
      EXPECT_EQ(masked.input_ids[t], clean.input_ids[t]) << "a special token or padding was changed at " << t;
      continue;
    }
    ++maskable;
    if (masked.labels[t] == kIgnoreIndex) {
      EXPECT_EQ(masked.input_ids[t], clean.input_ids[t]);
      continue;
    }
    ++picked;
    EXPECT_EQ(masked.labels[t], clean.input_ids[t]);
    as_mask += masked.input_ids[t] == token_id("[MASK]");
    kept += masked.input_ids[t] == clean.input_ids[t];
  }
  ASSERT_GT(maskable, 3000u);
  EXPECT_NEAR(static_cast<double>(picked) / maskable, 0.3, 0.03);
  EXPECT_NEAR(static_cast<double>(as_mask) / picked, 0.8, 0.04);
  EXPECT_GT(static_cast<double>(kept) / picked, 0.06);  // 10% kept, plus random ids that hit the token
  EXPECT_LT(static_cast<double>(kept) / picked, 0.14);

  // Row 5 alone, or beside other rows in another order: masked the same.
  Batch alone = collate(set, {5});
  mask_tokens(alone, set.masking, 11);
  const auto T = static_cast<size_t>(clean.seq_len);
  EXPECT_EQ(alone.input_ids, std::vector<int64_t>(masked.input_ids.begin() + 5 * T, masked.input_ids.begin() + 6 * T));
  EXPECT_EQ(alone.labels, std::vector<int64_t>(masked.labels.begin() + 5 * T, masked.labels.begin() + 6 * T));
  Batch reseeded = collate(set, {5});
  mask_tokens(reseeded, set.masking, 12);
  EXPECT_NE(reseeded.input_ids, alone.input_ids);  // another seed (step), another masking

  MaskingOptions no_mask;
  EXPECT_THROW(mask_tokens(alone, no_mask, 1), adapters::Error);
}

TEST(TrainDataBatch, PlainAndShuffledPlans) {
  const FeatureSet set = features_of_lengths(std::vector<size_t>(10, 3));
  const auto plain = plan_batches(set, {4});
  ASSERT_EQ(plain.size(), 3u);
  EXPECT_EQ(plain[0], (std::vector<size_t>{0, 1, 2, 3}));
  EXPECT_EQ(plain[2], (std::vector<size_t>{8, 9}));
  BatchOptions drop{4};
  drop.drop_last = true;
  EXPECT_EQ(plan_batches(set, drop).size(), 2u);

  BatchOptions shuffled{4, true, 9};
  EXPECT_EQ(plan_batches(set, shuffled), plan_batches(set, shuffled));
  const std::vector<size_t> order = seeded_permutation(10, 9);
  EXPECT_EQ(plan_batches(set, shuffled)[0], (std::vector<size_t>(order.begin(), order.begin() + 4)));
  shuffled.seed = 10;
  EXPECT_NE(plan_batches(set, shuffled), plan_batches(set, BatchOptions{4, true, 9}));
}

TEST(TrainDataBatch, LengthBucketing) {
  std::vector<size_t> lengths;
  for (size_t i = 0; i < 40; ++i) lengths.push_back(1 + (i * 7) % 40);  // 40 distinct lengths
  const FeatureSet set = features_of_lengths(lengths);
  BatchOptions options{4, true, 123};
  options.bucket_by_length = true;
  options.bucket_batches = 5;  // chunks of 20 features
  const auto plan = plan_batches(set, options);
  ASSERT_EQ(plan.size(), 10u);
  EXPECT_EQ(plan, plan_batches(set, options));
  std::vector<size_t> all;
  size_t padded = 0;
  for (const auto& batch : plan) {
    all.insert(all.end(), batch.begin(), batch.end());
    const Batch b = collate(set, batch);
    EXPECT_EQ(b.shape()[0], 4);
    size_t longest = 0;
    for (size_t i : batch) longest = std::max(longest, lengths[i]);
    EXPECT_EQ(b.seq_len, static_cast<int64_t>(longest));
    for (size_t i : batch) padded += longest - lengths[i];
  }
  std::sort(all.begin(), all.end());
  for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i], i);
  // Sorted within chunks, the batches waste far less padding than unbucketed ones.
  size_t padded_unbucketed = 0;
  for (const auto& batch : plan_batches(set, BatchOptions{4, true, 123})) {
    size_t longest = 0;
    for (size_t i : batch) longest = std::max(longest, lengths[i]);
    for (size_t i : batch) padded_unbucketed += longest - lengths[i];
  }
  EXPECT_LT(padded * 2, padded_unbucketed);

  // The batch order is shuffled: not the descending-length order of the chunks.
  std::vector<size_t> first_lengths;
  for (const auto& batch : plan) first_lengths.push_back(lengths[batch[0]]);
  EXPECT_FALSE(std::is_sorted(first_lengths.rbegin(), first_lengths.rend()));
  options.seed = 124;
  EXPECT_NE(plan_batches(set, options), plan);

  BatchOptions unshuffled{4};
  unshuffled.bucket_by_length = true;
  unshuffled.bucket_batches = 10;
  const auto sorted_plan = plan_batches(set, unshuffled);
  EXPECT_EQ(lengths[sorted_plan[0][0]], 40u);
  EXPECT_EQ(lengths[sorted_plan[9][3]], 1u);
}

// ---- metrics ------------------------------------------------------------------------------------

TEST(TrainMetrics, Classification) {
  EXPECT_DOUBLE_EQ(accuracy({0, 1, 2, 1}, {0, 2, 2, 1}), 0.75);
  // class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 1 -> 0.8; class 2: fn 1 -> 0.
  EXPECT_NEAR(macro_f1({0, 0, 1, 1, 2}, {0, 1, 1, 1, 0}), (0.5 + 0.8 + 0.0) / 3, 1e-12);
  // A class only predicted counts (F1 0); classes in neither are ignored.
  EXPECT_NEAR(macro_f1({0, 0}, {0, 1}), (2.0 / 3 + 0) / 2, 1e-12);
  EXPECT_DOUBLE_EQ(macro_f1({5, 5}, {5, 5}), 1.0);
  // Binary: TP 2 FN 1 TN 1 FP 1 -> (2 - 1) / sqrt(3 * 3 * 2 * 2).
  EXPECT_NEAR(matthews_corrcoef({1, 1, 1, 0, 0}, {1, 0, 1, 0, 1}), 1.0 / 6, 1e-12);
  // Multiclass (sklearn): (3*6 - 12) / sqrt((36 - 12) * (36 - 14)).
  EXPECT_NEAR(matthews_corrcoef({0, 1, 2, 0, 1, 2}, {0, 2, 1, 0, 0, 2}), 6 / std::sqrt(24.0 * 22.0), 1e-12);
  EXPECT_DOUBLE_EQ(matthews_corrcoef({0, 1, 0}, {1, 1, 1}), 0.0);
  EXPECT_DOUBLE_EQ(matthews_corrcoef({0, 1, 0}, {0, 1, 0}), 1.0);
  EXPECT_DOUBLE_EQ(majority_baseline_accuracy({0, 1, 1, 2}, {1, 0, 1, 1}), 0.75);
  EXPECT_DOUBLE_EQ(majority_baseline_accuracy({2, 0}, {0, 2, 2}), 1.0 / 3);  // tie -> smallest id
  EXPECT_NE(error_of([] { accuracy({0, 1}, {0}); }).find("expected as many predictions"), std::string::npos);
  EXPECT_NE(error_of([] { accuracy({}, {}); }).find("at least one example"), std::string::npos);
}

TEST(TrainMetrics, Correlations) {
  EXPECT_NEAR(pearson({1, 2, 3, 4}, {2, 4, 5, 9}), 11 / std::sqrt(130.0), 1e-12);
  EXPECT_NEAR(pearson({1, 2, 3}, {3, 2, 1}), -1.0, 1e-12);
  EXPECT_TRUE(std::isnan(pearson({1, 1, 1}, {1, 2, 3})));
  EXPECT_EQ(average_ranks({10, 20, 20, 5}), (std::vector<double>{2, 3.5, 3.5, 1}));
  // ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4] -> 4.5 / sqrt(4.5 * 5).
  EXPECT_NEAR(spearman({1, 2, 2, 3}, {1, 3, 2, 4}), 4.5 / std::sqrt(22.5), 1e-12);
  EXPECT_NEAR(spearman({1, 10, 100}, {1, 2, 3}), 1.0, 1e-12);
}

TEST(TrainMetrics, TokenAndEntityF1) {
  // Ignoring position 3 (-100) and O (0): TP 2, predicted 4, gold 3.
  const PrecisionRecallF1 t = token_f1({0, 1, 1, -100, 2, 0}, {0, 1, 2, 5, 2, 1}, -100, 0);
  EXPECT_EQ(t.true_positives, 2u);
  EXPECT_DOUBLE_EQ(t.precision, 0.5);
  EXPECT_DOUBLE_EQ(t.recall, 2.0 / 3);
  EXPECT_NEAR(t.f1, 4.0 / 7, 1e-12);
  EXPECT_DOUBLE_EQ(token_f1({0, 1, 1, -100, 2, 0}, {0, 1, 2, 5, 2, 1}).f1, 0.6);  // = accuracy without an O class

  EXPECT_EQ(extract_entities({"B-PER", "I-PER", "O", "B-LOC"}), (std::vector<Entity>{{"PER", 0, 1}, {"LOC", 3, 3}}));
  EXPECT_EQ(extract_entities({"O", "I-PER", "I-PER"}), (std::vector<Entity>{{"PER", 1, 2}}));
  EXPECT_EQ(extract_entities({"B-PER", "I-LOC"}), (std::vector<Entity>{{"PER", 0, 0}, {"LOC", 1, 1}}));
  EXPECT_EQ(extract_entities({"B-PER", "B-PER"}), (std::vector<Entity>{{"PER", 0, 0}, {"PER", 1, 1}}));
  const PrecisionRecallF1 e = entity_f1({{"B-PER", "I-PER", "O", "B-LOC"}, {"B-ORG", "O"}}, {{"B-PER", "I-PER", "O", "B-ORG"}, {"B-ORG", "I-ORG"}});
  EXPECT_EQ(e.true_positives, 1u);
  EXPECT_EQ(e.gold, 3u);
  EXPECT_EQ(e.predicted, 3u);
  EXPECT_NEAR(e.f1, 1.0 / 3, 1e-12);
  const PrecisionRecallF1 none = entity_f1({{"B-PER"}}, {{"O"}});
  EXPECT_DOUBLE_EQ(none.precision, 0.0);
  EXPECT_DOUBLE_EQ(none.f1, 0.0);
}

TEST(TrainMetrics, Squad) {
  EXPECT_EQ(normalize_answer("The  Cat, a dog!"), "cat dog");
  EXPECT_EQ(normalize_answer("Anna and the theatre"), "anna and theatre");
  EXPECT_EQ(normalize_answer("an"), "");
  EXPECT_DOUBLE_EQ(exact_match("the Paris.", "Paris"), 1.0);
  EXPECT_DOUBLE_EQ(exact_match("Paris France", "Paris"), 0.0);
  EXPECT_NEAR(answer_f1("Paris France", "Paris"), 2.0 / 3, 1e-12);  // P 1/2, R 1
  EXPECT_DOUBLE_EQ(answer_f1("the", "a"), 0.0);
  const QaScores s = squad_scores({"in Paris", "1991"}, {{"Paris", "in Paris"}, {"1990"}});
  EXPECT_DOUBLE_EQ(s.exact_match, 0.5);
  EXPECT_DOUBLE_EQ(s.f1, 0.5);
}

// ---- progress -----------------------------------------------------------------------------------

namespace {
struct FakeClock {
  double now = 100;
  std::function<double()> fn() {
    return [this] { return now; };
  }
};
}  // namespace

TEST(TrainProgress, PlainLinesEveryNSteps) {
  std::ostringstream out;
  FakeClock clock;
  ProgressOptions options;
  options.total_steps = 10;
  options.log_every_steps = 3;
  options.log_every_seconds = 0;
  options.clock = clock.fn();
  ProgressBar bar(out, options);
  EXPECT_FALSE(bar.is_tty());  // a string stream is no terminal
  for (size_t step = 1; step <= 10; ++step) {
    clock.now += 0.5;
    bar.update(step, 0.5);
  }
  bar.finish();
  EXPECT_EQ(out.str(),
            "train step 3/10 (30%) loss 0.5000 2.00 step/s ETA 00:04\n"
            "train step 6/10 (60%) loss 0.5000 2.00 step/s ETA 00:02\n"
            "train step 9/10 (90%) loss 0.5000 2.00 step/s ETA 00:01\n"
            "train step 10/10 (100%) loss 0.5000 2.00 step/s\n");
}

TEST(TrainProgress, PlainLinesEveryNSecondsAndMessages) {
  std::ostringstream out;
  FakeClock clock;
  ProgressOptions options;
  options.description = "epoch 1";
  options.log_every_steps = 0;
  options.log_every_seconds = 10;
  options.clock = clock.fn();
  ProgressBar bar(out, options);
  for (size_t step = 1; step <= 7; ++step) {
    clock.now += 4;
    bar.update(step);
  }
  bar.message("eval accuracy 0.9");
  bar.finish();
  // t = 12 (step 3) and t = 24 (step 6) pass 10 s since the last line; finish adds step 7.
  EXPECT_EQ(out.str(),
            "epoch 1 step 3 4.00 s/step\n"
            "epoch 1 step 6 4.00 s/step\n"
            "eval accuracy 0.9\n"
            "epoch 1 step 7 4.00 s/step\n");
}

TEST(TrainProgress, TerminalBarRedrawsInPlace) {
  std::ostringstream out;
  FakeClock clock;
  ProgressOptions options;
  options.total_steps = 4;
  options.tty = true;
  options.bar_width = 8;
  options.redraw_seconds = 1;
  options.clock = clock.fn();
  ProgressBar bar(out, options);
  ASSERT_TRUE(bar.is_tty());
  clock.now += 1;
  bar.update(1, 2.0);
  clock.now += 0.5;
  bar.update(2, 1.5);  // within redraw_seconds: not drawn
  EXPECT_EQ(out.str(), "\rtrain [##------] 1/4 loss 2.0000 1.00 step/s ETA 00:03");
  clock.now += 0.5;
  bar.update(3, 1.25);
  bar.message("eval done");
  clock.now += 1;
  bar.update(4, 1.0);  // the last step is always drawn
  bar.finish();
  const std::string text = out.str();
  const std::string step3 = "train [######--] 3/4 loss 1.2500 1.50 step/s ETA 00:01";
  EXPECT_NE(text.find("\r" + step3 + "\r" + std::string(step3.size(), ' ') + "\reval done\n\r" + step3), std::string::npos) << text;
  EXPECT_NE(text.find("\rtrain [########] 4/4 loss 1.0000 1.33 step/s"), std::string::npos) << text;
  EXPECT_EQ(text.back(), '\n');
  EXPECT_EQ(count_of(text, "\n"), 2u);  // the message and the end of the bar
  EXPECT_EQ(text.find("2/4"), std::string::npos);
}

TEST(TrainProgress, FileOutputAndDurations) {
  std::FILE* file = std::tmpfile();
  ASSERT_NE(file, nullptr);
  EXPECT_FALSE(is_terminal(file));
  {
    ProgressOptions options;
    options.total_steps = 2;
    options.log_every_steps = 1;
    ProgressBar bar(file, options);
    EXPECT_FALSE(bar.is_tty());
    bar.update(1);
    bar.update(2);
  }
  std::rewind(file);
  char buffer[256] = {};
  const size_t n = std::fread(buffer, 1, sizeof buffer - 1, file);
  std::fclose(file);
  const std::string text(buffer, n);
  EXPECT_EQ(text.rfind("train step 1/2 (50%)", 0), 0u) << text;
  EXPECT_NE(text.find("\ntrain step 2/2 (100%)"), std::string::npos) << text;
  EXPECT_EQ(count_of(text, "\n"), 2u);
  EXPECT_EQ(format_duration(3725), "1:02:05");
  EXPECT_EQ(format_duration(65.4), "01:05");
  EXPECT_EQ(format_duration(std::nan("")), "--:--");
}

TEST(TrainProgress, MetricsLogAppendsJsonLines) {
  TempDir dir;
  const fs::path file = dir.path() / "logs" / "metrics.jsonl";
  {
    MetricsLog log(file);
    log.write({10, 0.5, "train", {{"loss", 0.75}}});
    log.write({20, 1.0, "validation", {{"accuracy", 0.875}, {"pearson", std::nan("")}}});
    EXPECT_EQ(read_text(file).size(), read_text(file).find_last_of('\n') + 1);  // flushed, whole lines
  }
  MetricsLog(file).write({30, 1.5, "test", {}});
  std::istringstream lines(read_text(file));
  std::vector<nlohmann::json> events;
  for (std::string line; std::getline(lines, line);) events.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0], (nlohmann::json{{"step", 10}, {"epoch", 0.5}, {"split", "train"}, {"loss", 0.75}}));
  EXPECT_EQ(events[1]["accuracy"], 0.875);
  EXPECT_TRUE(events[1]["pearson"].is_null());
  EXPECT_EQ(events[2]["split"], "test");
  const std::string clash = error_of([&] { MetricsLog(file).write({1, 0, "train", {{"step", 3}}}); });
  EXPECT_NE(clash.find("metric \"step\" clashes"), std::string::npos) << clash;
}

// ---- charts -------------------------------------------------------------------------------------

namespace {
// Checks that every element is closed in order; returns the first problem, or "" when fine.
std::string xml_nesting_problem(const std::string& xml) {
  std::vector<std::string> open;
  for (size_t at = xml.find('<'); at != std::string::npos; at = xml.find('<', at + 1)) {
    const size_t end = xml.find('>', at);
    if (end == std::string::npos) return "unterminated tag";
    const std::string tag = xml.substr(at + 1, end - at - 1);
    if (tag.empty() || tag[0] == '?' || tag.back() == '/') continue;
    const std::string name = tag.substr(tag[0] == '/' ? 1 : 0, tag.find_first_of(" \n", 0) - (tag[0] == '/' ? 1 : 0));
    if (tag[0] != '/') {
      open.push_back(name);
    } else if (open.empty() || open.back() != name) {
      return "unexpected </" + name + ">";
    } else {
      open.pop_back();
    }
  }
  return open.empty() ? "" : "unclosed <" + open.back() + ">";
}
}  // namespace

TEST(TrainChart, NiceTicks) {
  const auto expect_ticks = [](const std::vector<double>& actual, const std::vector<double>& expected) {
    ASSERT_EQ(actual.size(), expected.size());
    for (size_t i = 0; i < actual.size(); ++i) EXPECT_NEAR(actual[i], expected[i], 1e-9) << "tick " << i;
  };
  expect_ticks(nice_ticks(0, 1), {0, 0.2, 0.4, 0.6, 0.8, 1});
  expect_ticks(nice_ticks(0.13, 0.87), {0, 0.2, 0.4, 0.6, 0.8, 1});
  expect_ticks(nice_ticks(3, 97), {0, 20, 40, 60, 80, 100});
  expect_ticks(nice_ticks(0, 1000), {0, 200, 400, 600, 800, 1000});
  expect_ticks(nice_ticks(0.5, 2.3), {0.5, 1, 1.5, 2, 2.5});
  expect_ticks(nice_ticks(-3, 3), {-4, -2, 0, 2, 4});
  EXPECT_NE(error_of([] { nice_ticks(1, 1); }).find("expected finite low < high"), std::string::npos);
}

TEST(TrainChart, SvgHasPanelsSeriesAndLegend) {
  const double nan = std::nan("");
  const std::vector<Series> series = {
      {"train loss", {{0, 2.3}, {100, 1.1}, {200, 0.7}, {300, nan}, {400, 0.5}}, Panel::Loss},
      {"validation <loss>", {{200, 0.9}, {400, 0.8}}, Panel::Loss},
      {"validation accuracy", {{200, 0.71}, {400, 0.84}}, Panel::Metric},
      {"test accuracy", {{400, 0.8}}, Panel::Metric},
      {"macro F1", {}, Panel::Metric},
  };
  ChartOptions options;
  options.title = "run & test";
  const std::string svg = render_svg(series, options);
  EXPECT_EQ(svg.find("<svg"), svg.find('<', svg.find("?>")));
  EXPECT_EQ(xml_nesting_problem(svg), "");
  EXPECT_EQ(count_of(svg, "<polyline"), 3u);
  EXPECT_EQ(count_of(svg, "class=\"panel\""), 2u);
  EXPECT_NE(svg.find(">train loss</text>"), std::string::npos);
  EXPECT_NE(svg.find(">validation &lt;loss&gt;</text>"), std::string::npos);
  EXPECT_NE(svg.find(">macro F1 (no data)</text>"), std::string::npos);
  EXPECT_NE(svg.find(">run &amp; test</text>"), std::string::npos);
  EXPECT_NE(svg.find(">validation accuracy</text>"), std::string::npos);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.find("inf"), std::string::npos);
  // The train loss polyline has the 4 finite points only.
  const size_t poly = svg.find("data-series=\"train loss\"");
  const size_t points = svg.find("points=\"", poly) + 8;
  EXPECT_EQ(count_of(svg.substr(points, svg.find('"', points) - points), ","), 4u);
  // Tick labels on nice numbers: x 0..400, loss 0.5..2.5 by 0.5.
  EXPECT_NE(svg.find(">400</text>"), std::string::npos);
  EXPECT_NE(svg.find(">2.5</text>"), std::string::npos);
}

TEST(TrainChart, EmptyAndSinglePanelCharts) {
  const std::string none = render_svg({}, ChartOptions());
  EXPECT_EQ(xml_nesting_problem(none), "");
  EXPECT_NE(none.find(">no data</text>"), std::string::npos);
  EXPECT_EQ(count_of(none, "class=\"panel\""), 1u);
  const std::string metric_only = render_svg({{"acc", {{1, 0.5}, {2, 0.5}}, Panel::Metric}}, ChartOptions());
  EXPECT_EQ(count_of(metric_only, "class=\"panel\""), 1u);
  EXPECT_EQ(count_of(metric_only, "<polyline"), 1u);
  EXPECT_EQ(xml_nesting_problem(metric_only), "");
  EXPECT_EQ(metric_only.find("nan"), std::string::npos);  // a flat series still gets a y range
}

TEST(TrainChart, WriteSvgAtomically) {
  TempDir dir;
  const fs::path file = dir.path() / "charts" / "curves.svg";
  write_svg(file, {{"loss", {{0, 1}, {1, 0.5}}, Panel::Loss}}, ChartOptions());
  write_text(file, "old");
  write_svg(file, {{"loss", {{0, 1}, {1, 0.25}}, Panel::Loss}}, ChartOptions());
  const std::string text = read_text(file);
  EXPECT_EQ(text.rfind("<?xml", 0), 0u);
  EXPECT_NE(text.find("</svg>"), std::string::npos);
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(file.parent_path())) {
    ++files;
    EXPECT_EQ(entry.path().filename(), "curves.svg");
  }
  EXPECT_EQ(files, 1u);  // no temporary file left behind
  const std::string error = error_of([&] { write_svg(file / "x.svg", {}, ChartOptions()); });  // a file as folder
  EXPECT_NE(error.find("x.svg"), std::string::npos);
}
