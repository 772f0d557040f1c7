// Training data without torch: reading JSONL / CSV / TSV files into examples of one task kind,
// label maps, seeded splits and shuffles, tokenization into features, and padded batches.
//
// The pipeline a trainer runs:
//
//   ReadOptions read{TaskKind::SequenceClassification};
//   read.columns.text = "sentence1"; read.columns.text_pair = "sentence2";
//   TaskData data = load_data({"train.csv", "dev.csv"}, read);               // or load_and_split
//   FeatureSet train = make_features(tokenizer, data.train, data.labels, {128});
//   for (const auto& indices : plan_batches(train, {32, true, seed + epoch})) {
//     Batch batch = collate(train, indices);   // flat int64 vectors, shape (B, T)
//   }
//
// Errors are adapters::Error; every message names the file and line, the column or option, what
// was expected and what was found. Nothing here depends on torch.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "adapters/tokenizer/tokenizer.h"

namespace adapters::train {

// ---- tasks and columns ------------------------------------------------------------------------

enum class TaskKind {
  SequenceClassification,  // text (+ text pair) -> one label
  Regression,              // text (+ text pair) -> one float
  MultiLabel,              // text (+ text pair) -> a set of labels
  TokenClassification,     // words -> one tag per word
  QuestionAnswering,       // question + context -> answer span (text and char start)
  MultipleChoice,          // context (+ question) + choices -> index of the right choice
  CausalLM,                // text -> the text itself, each token predicted from the ones before
  MaskedLM,                // text -> the text itself, a share of its tokens masked and predicted
};

// "sequence_classification", "regression", ... (the names parse_task_kind accepts).
std::string to_string(TaskKind task);
TaskKind parse_task_kind(const std::string& name);

// Where each field of an example is read from: a JSONL key or a CSV/TSV header name. In JSONL a
// dotted name ("answers.text") also reaches into nested objects when no key has the literal name.
//
// List fields (words, tags, multilabel labels, choices) are a JSON array in JSONL. In CSV/TSV a
// list cell holds a JSON array ("[...]") or whitespace-separated items; choices, which contain
// spaces, must be a JSON array there (or use `choice_columns`).
struct Columns {
  // Sequence classification, regression, multilabel.
  std::string text = "text";
  std::string text_pair;  // empty: single texts
  std::string label = "label";  // also multiple choice's label
  // Token classification.
  std::string words = "tokens";
  std::string tags = "tags";
  // Question answering (SQuAD's nested layout: answer_text = "answers.text",
  // answer_start = "answers.answer_start"; scalars or equally long lists of gold answers).
  std::string question = "question";
  std::string context = "context";
  std::string answer_text = "answer_text";
  std::string answer_start = "answer_start";
  // Multiple choice: `context`, `question` (may be empty), the choices as one column per option
  // (`choice_columns`, e.g. ending0..ending3) or one list column (`choices`), and `label`
  // (the 0-based index of the right choice).
  std::vector<std::string> choice_columns;
  std::string choices = "choices";
  // One adapter per example (multi-tenant training): the column naming each example's adapter
  // ("__base__": none); empty: every example trains the same adapters.
  std::string adapter;
};

// ---- examples and datasets ----------------------------------------------------------------------

struct Answer {
  std::string text;
  size_t start = 0;  // in Unicode code points of the context (as Python's str indices)
};

// One example as read; which fields are set depends on the task kind. Labels stay strings until
// features are made, so that a LabelMap can be built from (or checked against) the data.
struct Example {
  size_t line = 0;                  // 1-based line of the source where the record starts
  std::string text, text_pair;      // classification, regression, multilabel
  std::vector<std::string> words;   // token classification
  std::string question, context;    // question answering, multiple choice
  std::vector<Answer> answers;      // question answering: the gold answers (at least one)
  std::vector<std::string> choices; // multiple choice
  // Raw labels: one (classification), any number (multilabel), one per word (tagging).
  std::vector<std::string> labels;
  double target = 0;                // regression
  int64_t correct_choice = -1;      // multiple choice: index into `choices`
  std::string adapter;              // Columns::adapter's value, when that column is read
};

// JSONL: one JSON object per line (also for .json files). CSV: a header row, then RFC 4180
// records (fields in double quotes may hold commas, newlines and doubled quotes ""). TSV: a header
// row, then tab-separated fields without quoting (quotes are text, as in the GLUE files). Blank
// lines are skipped; a UTF-8 byte order mark is ignored. Auto: from the extension.
enum class FileFormat { Auto, Jsonl, Csv, Tsv };

// What a malformed record (bad JSON or CSV quoting, wrong column count, missing column, wrong
// type, inconsistent fields) does: throw at once, or be skipped with a warning.
enum class MalformedPolicy { Fatal, Skip };

struct ReadOptions {
  TaskKind task = TaskKind::SequenceClassification;
  Columns columns;
  FileFormat format = FileFormat::Auto;
  MalformedPolicy on_malformed = MalformedPolicy::Fatal;
  size_t max_warnings = 100;  // warnings kept in ReadReport (all are counted)
};

struct ReadReport {
  size_t records = 0;                 // records found (read + skipped)
  size_t skipped = 0;                 // malformed records skipped (MalformedPolicy::Skip)
  std::vector<std::string> warnings;  // "file:line: what is wrong", the first max_warnings
};

struct Dataset {
  std::string source;  // the file, plus "[validation]" etc. when split from one file
  TaskKind task = TaskKind::SequenceClassification;
  std::vector<Example> examples;
  ReadReport report;

  size_t size() const { return examples.size(); }
  bool empty() const { return examples.empty(); }
  // "train.csv:12", for messages about one example.
  std::string where(const Example& example) const;
};

// Reads a whole file. Throws when the file cannot be read, the header lacks a configured column,
// a record is malformed under MalformedPolicy::Fatal, or no example remains.
Dataset read_dataset(const std::filesystem::path& file, const ReadOptions& options);
// Same from text in memory; `source` names it in messages, `format` must not be Auto.
Dataset parse_dataset(const std::string& text, const std::string& source, FileFormat format, const ReadOptions& options);

// ---- labels -------------------------------------------------------------------------------------

// Label names <-> ids 0..n-1. Built from training data, labels are sorted: numerically when every
// label is an integer ("0", "1", "10"), else by bytes, so the map never depends on file order.
class LabelMap {
 public:
  LabelMap() = default;
  static LabelMap from_dataset(const Dataset& train);
  // A given label2id: the ids must be 0..n-1, each once.
  static LabelMap from_label2id(const std::map<std::string, int64_t>& label2id);

  // The id of `label`; throws naming `where` (file:line), the label and the known labels.
  int64_t id(const std::string& label, const std::string& where) const;
  std::optional<int64_t> find(const std::string& label) const;
  const std::string& name(int64_t id) const;
  const std::vector<std::string>& names() const { return names_; }  // id2label
  std::map<std::string, int64_t> label2id() const;
  size_t size() const { return names_.size(); }
  bool empty() const { return names_.empty(); }

  // Throws at the first label of `dataset` not in the map.
  void check(const Dataset& dataset) const;

 private:
  explicit LabelMap(std::vector<std::string> names);
  std::vector<std::string> names_;
  std::map<std::string, int64_t> ids_;
};

// Whether the task's labels go through a LabelMap (classification, multilabel, tagging).
bool uses_label_map(TaskKind task);

// ---- splits and shuffling -----------------------------------------------------------------------

// A permutation of 0..n-1: Fisher-Yates driven by std::mt19937_64(seed) with unbiased rejection
// sampling, so the same seed gives the same order on every platform and standard library.
std::vector<size_t> seeded_permutation(size_t n, uint64_t seed);
void shuffle(Dataset& dataset, uint64_t seed);

struct SplitFractions {
  double train = 0.8, validation = 0.1, test = 0.1;  // >= 0, summing to 1
};

struct TaskData {
  Dataset train, validation, test;  // validation / test are empty when not given
  LabelMap labels;                  // empty unless uses_label_map(task)
};

struct DataFiles {
  std::filesystem::path train;
  std::optional<std::filesystem::path> validation, test;
};

// Reads the files; the label map is `label2id` when given, else built from the training split.
// Every split's labels are checked against it.
TaskData load_data(const DataFiles& files, const ReadOptions& options,
                   const std::optional<LabelMap>& label2id = std::nullopt);
// Reads one file and splits it with split_dataset, then as load_data.
TaskData load_and_split(const std::filesystem::path& file, const SplitFractions& fractions, uint64_t seed,
                        const ReadOptions& options, const std::optional<LabelMap>& label2id = std::nullopt);
// Validation and test get round(n * fraction) examples of a seeded permutation, train the rest;
// each split keeps the file order. Throws when the training split would be empty.
TaskData split_dataset(const Dataset& all, const SplitFractions& fractions, uint64_t seed);

// ---- features -----------------------------------------------------------------------------------

constexpr int64_t kIgnoreIndex = -100;  // label of positions the loss ignores (as PyTorch / HF)

// One tokenized sequence. Multiple choice has one per choice, the other tasks exactly one.
struct TokenRow {
  std::vector<int64_t> input_ids, token_type_ids;
};

// One example, tokenized. Layout of the labels by task:
//   classification:  label = class id           multilabel: targets = multi-hot (num_labels)
//   regression:      targets = {value}          multiple choice: label = correct choice
//   tagging:         token_labels = tag id at the first sub-token of each word, kIgnoreIndex
//                    elsewhere (special tokens, continuation pieces)
//   causal LM:       token_labels = input_ids (the causal_lm head shifts them: token t predicts
//                    token t+1); padding gets kIgnoreIndex when batched
//   masked LM:       token_labels = input_ids where a token may be masked, kIgnoreIndex at the
//                    special tokens; mask_tokens() picks the masked ones per batch
//   QA:              start_position / end_position = token indices of the answer, both 0 (the
//                    CLS position) when truncation cut the answer off; context_offsets maps each
//                    token to its code-point span in the context (none outside the context)
struct Feature {
  size_t example = 0;  // index into Dataset::examples
  std::vector<TokenRow> rows;
  int64_t label = kIgnoreIndex;
  std::vector<float> targets;
  std::vector<int64_t> token_labels;
  int64_t start_position = 0, end_position = 0;
  std::vector<std::optional<tokenizer::Offsets>> context_offsets;
  std::string adapter;  // the example's adapter (Columns::adapter), or empty

  size_t length() const;  // tokens of the longest row
};

struct FeatureOptions {
  size_t max_length = 128;        // tokens per row, special tokens included
  std::optional<int64_t> pad_id;  // default: the tokenizer's padding id, else [PAD] or <pad>
  // Question answering: a context too long for max_length is cut into overlapping windows, each a
  // feature of its own, consecutive windows sharing doc_stride context tokens (HF run_qa's
  // --doc_stride). 0: one window, the rest of the context truncated.
  size_t doc_stride = 0;
  double mask_probability = 0.15;  // masked LM: the share of the tokens masked (MaskingOptions)
};

// Masked LM's corruption, as HF's DataCollatorForLanguageModeling: each maskable token is picked
// with `probability`; a picked token becomes mask_id (80%), a random id in [0, vocab_size) (10%)
// or stays (10%), and only the picked tokens are predicted.
struct MaskingOptions {
  int64_t mask_id = -1;
  int64_t vocab_size = 0;
  double probability = 0.15;
};

// The tokenizer's [MASK] (or <mask>) token and vocabulary size; throws when it has no mask token.
MaskingOptions masking_options(const tokenizer::Tokenizer& tokenizer, double probability);

struct FeatureSet {
  TaskKind task = TaskKind::SequenceClassification;
  size_t num_labels = 0;  // label map size (classification, multilabel, tagging)
  int64_t pad_id = 0, pad_type_id = 0;
  std::vector<Feature> features;  // one per example (QA with doc_stride: one per window), in dataset order
  MaskingOptions masking;         // masked LM
};

// Tokenizes every example: pairs as (text, text_pair), QA as (question, context) (in windows when
// FeatureOptions::doc_stride is set; a window that does not hold the answer points at CLS), multiple choice
// as (context, question + " " + choice) per choice. Rows longer than max_length are truncated as
// HF does (longest-first for pairs; only the context for QA), after the tokenizer's own
// truncation, if any. Token classification joins the words with single spaces and aligns labels
// through the token offsets. Throws naming file:line for unknown labels and QA questions that
// leave no room for context.
FeatureSet make_features(const tokenizer::Tokenizer& tokenizer, const Dataset& dataset, const LabelMap& labels,
                         const FeatureOptions& options);

// The answer text a predicted token span [start_token, end_token] stands for: a substring of the
// example's context, empty when either token lies outside the context or end < start.
std::string span_text(const Example& example, const Feature& feature, size_t start_token, size_t end_token);

// ---- batches ------------------------------------------------------------------------------------

// A padded batch, every tensor a flat row-major int64 (or float) vector. Rows are right-padded
// to the longest row of the batch: input_ids with the pad id, token_type_ids with the pad type
// id, attention_mask with 0, token labels with kIgnoreIndex. Causal-LM batches carry no
// token_type_ids: GPT-2 adds the embedding of any token type ids it is given.
struct Batch {
  int64_t batch_size = 0;   // B: examples
  int64_t num_choices = 1;  // C: rows per example (multiple choice), else 1
  int64_t seq_len = 0;      // T
  std::vector<int64_t> input_ids, token_type_ids, attention_mask;  // (B, T) or (B, C, T)
  std::vector<int64_t> labels;         // (B) classification / multiple choice; (B, T) tagging, causal LM
  std::vector<float> float_labels;     // (B) regression; (B, num_labels) multilabel
  std::vector<int64_t> start_positions, end_positions;  // (B) question answering
  std::vector<size_t> features;        // (B) indices into FeatureSet::features
  std::vector<std::string> adapters;   // (B*C) each model row's adapter (Columns::adapter), or empty

  // {B, T}, or {B, C, T} for multiple choice: the shape of input_ids.
  std::vector<int64_t> shape() const;
};

struct BatchOptions {
  size_t batch_size = 32;
  bool shuffle = false;
  uint64_t seed = 0;              // for shuffling (vary it per epoch: seed + epoch)
  bool bucket_by_length = false;  // group similar lengths to cut padding
  size_t bucket_batches = 50;     // batches per bucketing chunk
  bool drop_last = false;         // drop a final smaller batch
};

// The feature indices of each batch. Plain: in order, or a seeded permutation when shuffling.
// Bucketed: the (shuffled) order is cut into chunks of bucket_batches * batch_size features,
// each chunk is sorted by length (longest first, stable) and cut into batches, and then the
// order of all batches is shuffled (when shuffling). Deterministic for a given seed.
std::vector<std::vector<size_t>> plan_batches(const FeatureSet& features, const BatchOptions& options);
// Pads and stacks the given features (multiple choice: all with the same number of choices).
// Masked LM: labels hold every maskable token until mask_tokens() picks.
Batch collate(const FeatureSet& features, const std::vector<size_t>& indices);
// Masked LM's collator step: corrupts a collated batch in place (MaskingOptions) and keeps as
// labels only the picked tokens. Each row draws from its own stream, seeded by `seed` and its
// feature index, so a row is masked alike in any batch and on any rank of a data-parallel run.
void mask_tokens(Batch& batch, const MaskingOptions& masking, uint64_t seed);
std::vector<Batch> make_batches(const FeatureSet& features, const BatchOptions& options);

}  // namespace adapters::train
