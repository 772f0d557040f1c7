// Training data: record readers (JSONL, CSV with RFC 4180 quoting, TSV), examples per task kind,
// label maps, seeded splits and shuffles, tokenization into features, and padded batches.
#include "adapters/train/data.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <string_view>

#include "adapters/core/error.h"
#include "adapters/core/json_parse.h"

namespace adapters::train {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

// ---- small text helpers -------------------------------------------------------------------------

bool is_utf8_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

size_t code_point_count(const std::string& s) {
  return static_cast<size_t>(std::count_if(s.begin(), s.end(), [](char c) { return !is_utf8_continuation(static_cast<unsigned char>(c)); }));
}

// Byte offset of code point `index` (s.size() when past the end).
size_t byte_offset(const std::string& s, size_t index) {
  size_t seen = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (is_utf8_continuation(static_cast<unsigned char>(s[i]))) continue;
    if (seen++ == index) return i;
  }
  return s.size();
}

std::string code_point_substr(const std::string& s, size_t start, size_t end) {
  const size_t from = byte_offset(s, start);
  return s.substr(from, byte_offset(s, end) - from);
}

bool is_blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; });
}

std::string trim(const std::string& s) {
  const size_t first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  return s.substr(first, s.find_last_not_of(" \t\r\n") - first + 1);
}

std::vector<std::string> split_whitespace(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> items;
  for (std::string item; in >> item;) items.push_back(item);
  return items;
}

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
  return out;
}

std::string quoted(const std::string& s) { return "\"" + s + "\""; }

// A JSON value for messages, shortened: "\"abc\"", "3", "[1,2]".
std::string describe(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

// The text without a leading UTF-8 byte order mark.
std::string_view without_bom(std::string_view text) {
  constexpr std::string_view kBom = "\xEF\xBB\xBF";
  return text.substr(0, kBom.size()) == kBom ? text.substr(kBom.size()) : text;
}

// ---- records: one JSON object per example, whatever the file format ------------------------------

struct Record {
  size_t line = 0;
  json fields = json::object();  // CSV / TSV: header name -> cell text
  std::string error;              // set when the record itself is malformed
};

using RecordSink = std::function<void(Record&&)>;

// A problem in one record; becomes "file:line: message" under the malformed-record policy.
struct RecordError {
  std::string message;
};

void read_jsonl(std::string_view text, const RecordSink& sink) {
  size_t start = 0;
  for (size_t number = 1; start < text.size(); ++number) {
    const size_t end = std::min(text.find('\n', start), text.size());
    const std::string_view line = text.substr(start, end - start);
    start = end + 1;
    if (is_blank(line)) continue;
    Record record;
    record.line = number;
    std::string error;
    if (std::optional<json> fields = try_parse_json(std::string(line), &error)) {
      record.fields = std::move(*fields);
      if (!record.fields.is_object()) record.error = "expected a JSON object, found " + describe(record.fields);
    } else {
      record.error = str("invalid JSON (", error, ")");
    }
    sink(std::move(record));
  }
}

struct Row {
  size_t line = 0;
  std::vector<std::string> cells;
  std::string error;
  bool blank = false;  // an empty physical line
};

// Splits delimited text into rows. With quoting (CSV, RFC 4180): a field in double quotes may
// hold delimiters, newlines and doubled quotes (""); a quote inside an unquoted field is kept.
class DelimitedReader {
 public:
  DelimitedReader(std::string_view text, char delimiter, bool quoting)
      : text_(text), delimiter_(delimiter), quoting_(quoting) {}

  bool next(Row& row) {
    if (pos_ >= text_.size()) return false;
    row = Row{};
    row.line = line_;
    row.blank = at_line_end();
    while (true) {
      row.cells.push_back(quoting_ && text_[pos_] == '"' ? quoted_field(row) : plain_field());
      if (!row.error.empty()) {
        skip_rest_of_line();
        return true;
      }
      if (pos_ < text_.size() && text_[pos_] == delimiter_) {
        ++pos_;
        continue;
      }
      consume_line_end();
      return true;
    }
  }

 private:
  bool at_line_end() const { return pos_ >= text_.size() || text_[pos_] == '\n' || text_[pos_] == '\r'; }

  void consume_line_end() {
    if (pos_ < text_.size() && text_[pos_] == '\r') ++pos_;
    if (pos_ < text_.size() && text_[pos_] == '\n') ++pos_;
    ++line_;
  }

  void skip_rest_of_line() {
    while (!at_line_end()) ++pos_;
    consume_line_end();
  }

  std::string plain_field() {
    const size_t start = pos_;
    while (!at_line_end() && text_[pos_] != delimiter_) ++pos_;
    return std::string(text_.substr(start, pos_ - start));
  }

  std::string quoted_field(Row& row) {
    const size_t opened_on = line_;
    std::string value;
    for (++pos_; pos_ < text_.size(); ++pos_) {
      const char c = text_[pos_];
      if (c == '"') {
        if (pos_ + 1 < text_.size() && text_[pos_ + 1] == '"') {
          value += '"';
          ++pos_;
          continue;
        }
        ++pos_;
        if (!at_line_end() && text_[pos_] != delimiter_) {
          row.error = str("expected a delimiter or the end of the line after the closing quote of a field, found '", text_[pos_], "'");
        }
        return value;
      }
      if (c == '\n') ++line_;
      value += c;
    }
    row.error = str("the quoted field opened on line ", opened_on, " is never closed");
    return value;
  }

  std::string_view text_;
  char delimiter_;
  bool quoting_;
  size_t pos_ = 0;
  size_t line_ = 1;
};

// The header names of a delimited file; throws on an unusable header.
std::vector<std::string> read_header(DelimitedReader& reader, const std::string& source) {
  Row header;
  do {
    if (!reader.next(header)) throw Error(str(source, ": expected a header row, found an empty file"));
  } while (header.blank);
  if (!header.error.empty()) throw Error(str(source, ":", header.line, ": header row: ", header.error));
  std::set<std::string> seen;
  for (const std::string& name : header.cells) {
    if (!seen.insert(name).second) throw Error(str(source, ":", header.line, ": header row: column ", quoted(name), " appears twice"));
  }
  return header.cells;
}

void read_delimited(std::string_view text, char delimiter, bool quoting, const std::string& source,
                    const std::vector<std::string>& required, const RecordSink& sink) {
  DelimitedReader reader(text, delimiter, quoting);
  const std::vector<std::string> header = read_header(reader, source);
  for (const std::string& column : required) {
    if (std::find(header.begin(), header.end(), column) == header.end()) {
      throw Error(str(source, ":1: the header has no column ", quoted(column), " (a column option of ReadOptions::columns names it); columns: ",
                      join(header, ", ")));
    }
  }
  for (Row row; reader.next(row);) {
    if (row.blank && row.cells.size() == 1 && row.error.empty()) continue;
    Record record;
    record.line = row.line;
    record.error = row.error;
    if (record.error.empty() && row.cells.size() != header.size()) {
      record.error = str("expected ", header.size(), " fields (as the header), found ", row.cells.size());
    }
    for (size_t i = 0; record.error.empty() && i < header.size(); ++i) record.fields[header[i]] = row.cells[i];
    sink(std::move(record));
  }
}

// ---- field access and conversion ----------------------------------------------------------------

const json* find_field(const json& record, const std::string& name) {
  if (const auto it = record.find(name); it != record.end()) return &*it;
  const json* node = &record;
  size_t start = 0;
  while (start <= name.size()) {
    const size_t dot = std::min(name.find('.', start), name.size());
    if (!node->is_object()) return nullptr;
    const auto it = node->find(name.substr(start, dot - start));
    if (it == node->end()) return nullptr;
    node = &*it;
    start = dot + 1;
  }
  return node == &record ? nullptr : node;
}

const json& require_field(const json& record, const std::string& name) {
  const json* value = find_field(record, name);
  if (!value) throw RecordError{str("missing field ", quoted(name))};
  if (value->is_null()) throw RecordError{str("field ", quoted(name), ": expected a value, found null")};
  return *value;
}

std::string as_text(const json& value, const std::string& name) {
  if (!value.is_string()) throw RecordError{str("field ", quoted(name), ": expected a string, found ", describe(value))};
  return value.get<std::string>();
}

// Labels may be strings, integers or booleans; all become their text.
std::string as_label(const json& value, const std::string& name) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_number_integer() || value.is_boolean()) return value.dump();
  throw RecordError{str("field ", quoted(name), ": expected a string or integer label, found ", describe(value))};
}

double as_number(const json& value, const std::string& name) {
  double number = 0;
  bool ok = value.is_number();
  if (ok) {
    number = value.get<double>();
  } else if (value.is_string()) {
    const std::string text = trim(value.get<std::string>());
    char* end = nullptr;
    number = std::strtod(text.c_str(), &end);
    ok = !text.empty() && end == text.c_str() + text.size();
  }
  if (!ok || !std::isfinite(number)) throw RecordError{str("field ", quoted(name), ": expected a finite number, found ", describe(value))};
  return number;
}

int64_t as_index(const json& value, const std::string& name) {
  if (value.is_number_integer()) return value.get<int64_t>();
  if (value.is_string()) {
    const std::string text = trim(value.get<std::string>());
    char* end = nullptr;
    const long long number = std::strtoll(text.c_str(), &end, 10);
    if (!text.empty() && end == text.c_str() + text.size()) return number;
  }
  throw RecordError{str("field ", quoted(name), ": expected an integer, found ", describe(value))};
}

// A list: a JSON array, text holding a JSON array, or (when allowed) whitespace-separated text.
json as_array(const json& value, const std::string& name, bool whitespace_items) {
  if (value.is_array()) return value;
  if (value.is_string()) {
    const std::string text = trim(value.get<std::string>());
    if (!text.empty() && text.front() == '[') {
      const std::optional<json> parsed = try_parse_json(text);
      if (parsed && parsed->is_array()) return *parsed;
      throw RecordError{str("field ", quoted(name), ": expected a JSON array, found ", describe(value))};
    }
    if (whitespace_items) return json(split_whitespace(text));
  }
  throw RecordError{str("field ", quoted(name), ": expected a list", whitespace_items ? " (JSON array or space-separated items)" : " (JSON array)",
                        ", found ", describe(value))};
}

template <typename Convert>
std::vector<std::string> as_list(const json& value, const std::string& name, bool whitespace_items, Convert convert) {
  std::vector<std::string> items;
  const json array = as_array(value, name, whitespace_items);
  for (size_t i = 0; i < array.size(); ++i) items.push_back(convert(array[i], str(name, "[", i, "]")));
  return items;
}

// A scalar or a list of scalars (several gold answers), as a list.
json as_scalar_list(const json& value) { return value.is_array() ? value : json::array({value}); }

// ---- examples per task ---------------------------------------------------------------------------

void read_texts(const json& record, const Columns& columns, Example& example) {
  example.text = as_text(require_field(record, columns.text), columns.text);
  if (!columns.text_pair.empty()) example.text_pair = as_text(require_field(record, columns.text_pair), columns.text_pair);
}

Example sequence_example(const json& record, TaskKind task, const Columns& columns) {
  Example example;
  read_texts(record, columns, example);
  const json& label = require_field(record, columns.label);
  if (task == TaskKind::Regression) example.target = as_number(label, columns.label);
  else if (task == TaskKind::MultiLabel) example.labels = as_list(label, columns.label, true, as_label);
  else example.labels = {as_label(label, columns.label)};
  return example;
}

Example tagging_example(const json& record, const Columns& columns) {
  Example example;
  example.words = as_list(require_field(record, columns.words), columns.words, true, as_text);
  example.labels = as_list(require_field(record, columns.tags), columns.tags, true, as_label);
  if (example.words.empty()) throw RecordError{str("field ", quoted(columns.words), ": expected at least one word, found none")};
  if (example.words.size() != example.labels.size()) {
    throw RecordError{str("fields ", quoted(columns.words), " and ", quoted(columns.tags), ": expected one tag per word, found ",
                          example.words.size(), " words and ", example.labels.size(), " tags")};
  }
  return example;
}

void check_answer(const Answer& answer, const std::string& context, const Columns& columns) {
  const size_t length = code_point_count(answer.text);
  const std::string found = code_point_substr(context, answer.start, answer.start + length);
  if (answer.start + length > code_point_count(context) || found != answer.text) {
    throw RecordError{str("fields ", quoted(columns.answer_text), " / ", quoted(columns.answer_start), ": expected the answer ",
                          quoted(answer.text), " at character ", answer.start, " of the context, found ", quoted(found))};
  }
}

Example qa_example(const json& record, const Columns& columns) {
  Example example;
  example.question = as_text(require_field(record, columns.question), columns.question);
  example.context = as_text(require_field(record, columns.context), columns.context);
  const json texts = as_scalar_list(require_field(record, columns.answer_text));
  const json starts = as_scalar_list(require_field(record, columns.answer_start));
  if (texts.size() != starts.size()) {
    throw RecordError{str("fields ", quoted(columns.answer_text), " and ", quoted(columns.answer_start), ": expected as many answer texts as starts, found ",
                          texts.size(), " and ", starts.size())};
  }
  for (size_t i = 0; i < texts.size(); ++i) {
    const int64_t start = as_index(starts[i], columns.answer_start);
    if (start < 0) throw RecordError{str("field ", quoted(columns.answer_start), ": expected a character index >= 0, found ", start)};
    Answer answer{as_text(texts[i], columns.answer_text), static_cast<size_t>(start)};
    check_answer(answer, example.context, columns);
    example.answers.push_back(std::move(answer));
  }
  return example;
}

Example choice_example(const json& record, const Columns& columns) {
  Example example;
  example.context = as_text(require_field(record, columns.context), columns.context);
  if (!columns.question.empty()) example.question = as_text(require_field(record, columns.question), columns.question);
  if (columns.choice_columns.empty()) {
    example.choices = as_list(require_field(record, columns.choices), columns.choices, false, as_text);
  } else {
    for (const std::string& column : columns.choice_columns) example.choices.push_back(as_text(require_field(record, column), column));
  }
  if (example.choices.empty()) throw RecordError{str("field ", quoted(columns.choices), ": expected at least one choice, found none")};
  example.correct_choice = as_index(require_field(record, columns.label), columns.label);
  if (example.correct_choice < 0 || example.correct_choice >= static_cast<int64_t>(example.choices.size())) {
    throw RecordError{str("field ", quoted(columns.label), ": expected a choice index in [0, ", example.choices.size(), "), found ", example.correct_choice)};
  }
  return example;
}

Example text_example(const json& record, const Columns& columns) {
  Example example;
  example.text = as_text(require_field(record, columns.text), columns.text);
  return example;
}

Example parse_example(const json& record, TaskKind task, const Columns& columns) {
  switch (task) {
    case TaskKind::CausalLM:
    case TaskKind::MaskedLM: return text_example(record, columns);
    case TaskKind::SequenceClassification:
    case TaskKind::Regression:
    case TaskKind::MultiLabel: return sequence_example(record, task, columns);
    case TaskKind::TokenClassification: return tagging_example(record, columns);
    case TaskKind::QuestionAnswering: return qa_example(record, columns);
    case TaskKind::MultipleChoice: return choice_example(record, columns);
  }
  throw Error("unknown task kind");
}

// The columns a CSV / TSV header must have for the task.
std::vector<std::string> required_columns(TaskKind task, const Columns& c) {
  std::vector<std::string> names;
  switch (task) {
    case TaskKind::SequenceClassification:
    case TaskKind::Regression:
    case TaskKind::MultiLabel: names = {c.text, c.text_pair, c.label}; break;
    case TaskKind::TokenClassification: names = {c.words, c.tags}; break;
    case TaskKind::CausalLM:
    case TaskKind::MaskedLM: names = {c.text}; break;
    case TaskKind::QuestionAnswering: names = {c.question, c.context, c.answer_text, c.answer_start}; break;
    case TaskKind::MultipleChoice:
      names = {c.context, c.question, c.label};
      if (c.choice_columns.empty()) names.push_back(c.choices);
      names.insert(names.end(), c.choice_columns.begin(), c.choice_columns.end());
      break;
  }
  names.push_back(c.adapter);
  names.erase(std::remove(names.begin(), names.end(), std::string()), names.end());
  return names;
}

FileFormat format_of(const fs::path& file) {
  std::string ext = file.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (ext == ".jsonl" || ext == ".json" || ext == ".ndjson") return FileFormat::Jsonl;
  if (ext == ".csv") return FileFormat::Csv;
  if (ext == ".tsv" || ext == ".tab") return FileFormat::Tsv;
  throw Error(str(file.string(), ": cannot tell the format from the extension ", quoted(ext),
                  ": expected .jsonl, .json, .csv or .tsv, or set ReadOptions::format"));
}

// Reads a whole training data file. Like io::check_readable_file (this library has no torch, so it
// cannot call it), the file is checked before it is opened, symlinks followed: anything but a
// regular file (a FIFO would block, /dev/zero never ends) and anything past kMaxDataFileBytes is
// refused, naming the file.
std::string read_file(const fs::path& file) {
  constexpr std::uintmax_t kMaxDataFileBytes = std::uintmax_t{4} << 30;  // 4 GiB
  std::error_code error;
  const fs::file_status status = fs::status(file, error);
  if (error) throw Error(str(file.string(), ": cannot open the data file for reading: ", error.message()));
  if (!fs::is_regular_file(status)) {
    const fs::file_type type = status.type();
    const char* kind = type == fs::file_type::directory ? "a folder"
                       : type == fs::file_type::fifo    ? "a FIFO (named pipe)"
                       : type == fs::file_type::character ? "a character device"
                       : type == fs::file_type::block     ? "a block device"
                       : type == fs::file_type::socket    ? "a socket"
                                                          : "not a regular file";
    throw Error(str(file.string(), ": cannot read the data file: it is ", kind, ", expected a regular file"),
                "name the file itself, not a pipe, device, folder or process substitution");
  }
  const std::uintmax_t size = fs::file_size(file, error);
  if (error) throw Error(str(file.string(), ": cannot open the data file for reading: ", error.message()));
  if (size > kMaxDataFileBytes)
    throw Error(str(file.string(), ": the data file is ", size, " bytes, past the limit of ", kMaxDataFileBytes, " bytes"),
                "split it into several files");
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(str(file.string(), ": cannot open the data file for reading"));
  std::string text(static_cast<size_t>(size), '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  if (in.bad() || static_cast<std::uintmax_t>(in.gcount()) != size || in.peek() != std::ifstream::traits_type::eof())
    throw Error(str(file.string(), ": error while reading the data file (did it change while being read?)"));
  return text;
}

// Applies the malformed-record policy to "source:line: message".
void report_malformed(const std::string& message, const ReadOptions& options, ReadReport& report) {
  if (options.on_malformed == MalformedPolicy::Fatal) throw Error(message + " (set ReadOptions::on_malformed = Skip to skip such records)");
  ++report.skipped;
  if (report.warnings.size() < options.max_warnings) report.warnings.push_back(message);
}

}  // namespace

// ---- task kinds ---------------------------------------------------------------------------------

namespace {
constexpr std::pair<TaskKind, const char*> kTaskNames[] = {
    {TaskKind::SequenceClassification, "sequence_classification"}, {TaskKind::Regression, "regression"},
    {TaskKind::MultiLabel, "multilabel"}, {TaskKind::TokenClassification, "token_classification"},
    {TaskKind::QuestionAnswering, "question_answering"}, {TaskKind::MultipleChoice, "multiple_choice"},
    {TaskKind::CausalLM, "causal_lm"}, {TaskKind::MaskedLM, "masked_lm"}};
}  // namespace

std::string to_string(TaskKind task) {
  for (const auto& [kind, name] : kTaskNames) {
    if (kind == task) return name;
  }
  return "unknown";
}

TaskKind parse_task_kind(const std::string& name) {
  std::vector<std::string> known;
  for (const auto& [kind, known_name] : kTaskNames) {
    if (known_name == name) return kind;
    known.push_back(known_name);
  }
  throw Error(str("task kind: expected one of ", join(known, ", "), ", found ", quoted(name)));
}

bool uses_label_map(TaskKind task) {
  return task == TaskKind::SequenceClassification || task == TaskKind::MultiLabel || task == TaskKind::TokenClassification;
}

// ---- reading ------------------------------------------------------------------------------------

std::string Dataset::where(const Example& example) const { return str(source, ":", example.line); }

Dataset parse_dataset(const std::string& text, const std::string& source, FileFormat format, const ReadOptions& options) {
  ADAPTERS_CHECK(format != FileFormat::Auto, source, ": parse_dataset needs a format: expected Jsonl, Csv or Tsv, found Auto");
  Dataset dataset;
  dataset.source = source;
  dataset.task = options.task;
  const std::string_view body = without_bom(text);
  const RecordSink add = [&](Record&& record) {
    ++dataset.report.records;
    const std::string where = str(source, ":", record.line, ": ");
    if (!record.error.empty()) {
      report_malformed(where + record.error, options, dataset.report);
      return;
    }
    try {
      Example example = parse_example(record.fields, options.task, options.columns);
      if (!options.columns.adapter.empty()) {
        const std::string& column = options.columns.adapter;
        example.adapter = as_text(require_field(record.fields, column), column);
        if (example.adapter.empty()) throw RecordError{str("field ", quoted(column), ": expected an adapter name, found \"\"")};
      }
      example.line = record.line;
      dataset.examples.push_back(std::move(example));
    } catch (const RecordError& e) {
      report_malformed(where + e.message, options, dataset.report);
    }
  };
  if (format == FileFormat::Jsonl) read_jsonl(body, add);
  else read_delimited(body, format == FileFormat::Csv ? ',' : '\t', format == FileFormat::Csv, source, required_columns(options.task, options.columns), add);
  if (dataset.empty()) {
    const ReadReport& r = dataset.report;
    throw Error(r.records == 0 ? str(source, ": expected at least one example, found no records")
                               : str(source, ": expected at least one example, found none: all ", r.records, " records were malformed and skipped; first: ",
                                     r.warnings.empty() ? std::string("-") : r.warnings.front()));
  }
  return dataset;
}

Dataset read_dataset(const fs::path& file, const ReadOptions& options) {
  const FileFormat format = options.format == FileFormat::Auto ? format_of(file) : options.format;
  return parse_dataset(read_file(file), file.string(), format, options);
}

// ---- labels -------------------------------------------------------------------------------------

namespace {
bool is_integer_text(const std::string& s) {
  const size_t digits = s.rfind('-', 0) == 0 ? 1 : 0;
  return s.size() > digits && s.size() - digits <= 18 && std::all_of(s.begin() + static_cast<std::ptrdiff_t>(digits), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

void sort_labels(std::vector<std::string>& names) {
  if (std::all_of(names.begin(), names.end(), is_integer_text)) {
    std::sort(names.begin(), names.end(), [](const std::string& a, const std::string& b) { return std::stoll(a) < std::stoll(b); });
  } else {
    std::sort(names.begin(), names.end());
  }
}
}  // namespace

LabelMap::LabelMap(std::vector<std::string> names) : names_(std::move(names)) {
  for (size_t i = 0; i < names_.size(); ++i) ids_[names_[i]] = static_cast<int64_t>(i);
}

LabelMap LabelMap::from_dataset(const Dataset& train) {
  ADAPTERS_CHECK(uses_label_map(train.task), train.source, ": a label map needs a classification, multilabel or tagging task, found ", to_string(train.task));
  std::set<std::string> unique;
  for (const Example& example : train.examples) unique.insert(example.labels.begin(), example.labels.end());
  std::vector<std::string> names(unique.begin(), unique.end());
  ADAPTERS_CHECK(!names.empty(), train.source, ": expected at least one label to build the label map from, found none");
  sort_labels(names);
  return LabelMap(std::move(names));
}

LabelMap LabelMap::from_label2id(const std::map<std::string, int64_t>& label2id) {
  std::vector<std::string> names(label2id.size());
  for (const auto& [label, id] : label2id) {
    ADAPTERS_CHECK(id >= 0 && id < static_cast<int64_t>(names.size()), "label2id: expected ids 0..", names.size() - 1, ", found ", id, " for label ", quoted(label));
    ADAPTERS_CHECK(names[static_cast<size_t>(id)].empty() && !label.empty(), "label2id: expected each id once and non-empty labels, found id ", id,
                   " for ", quoted(names[static_cast<size_t>(id)]), " and ", quoted(label));
    names[static_cast<size_t>(id)] = label;
  }
  return LabelMap(std::move(names));
}

std::optional<int64_t> LabelMap::find(const std::string& label) const {
  const auto it = ids_.find(label);
  if (it == ids_.end()) return std::nullopt;
  return it->second;
}

int64_t LabelMap::id(const std::string& label, const std::string& where) const {
  if (const auto id = find(label)) return *id;
  constexpr size_t kListed = 50;
  std::vector<std::string> listed;
  for (size_t i = 0; i < std::min(names_.size(), kListed); ++i) listed.push_back(quoted(names_[i]));
  if (names_.size() > kListed) listed.push_back(str("... (", names_.size(), " in all)"));
  throw Error(str(where, ": unknown label ", quoted(label), ": expected one of the label map's labels: ", join(listed, ", ")),
              "labels come from the training split or a given label2id");
}

const std::string& LabelMap::name(int64_t id) const {
  ADAPTERS_CHECK(id >= 0 && id < static_cast<int64_t>(names_.size()), "label id: expected 0..", names_.size(), " (exclusive), found ", id);
  return names_[static_cast<size_t>(id)];
}

std::map<std::string, int64_t> LabelMap::label2id() const { return ids_; }

void LabelMap::check(const Dataset& dataset) const {
  for (const Example& example : dataset.examples) {
    for (const std::string& label : example.labels) id(label, dataset.where(example));
  }
}

// ---- shuffling and splits -----------------------------------------------------------------------

namespace {
// Uniform in [0, bound): rejects the low 2^64 mod bound outputs, so every value is equally likely.
uint64_t uniform_below(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t threshold = (uint64_t{0} - bound) % bound;
  while (true) {
    const uint64_t r = rng();
    if (r >= threshold) return r % bound;
  }
}

Dataset subset(const Dataset& all, std::vector<size_t> indices, const std::string& split) {
  std::sort(indices.begin(), indices.end());
  Dataset part;
  part.source = str(all.source, "[", split, "]");
  part.task = all.task;
  for (size_t i : indices) part.examples.push_back(all.examples[i]);
  return part;
}

Dataset empty_like(const Dataset& model) {
  Dataset empty;
  empty.task = model.task;
  return empty;
}

void attach_labels(TaskData& data, const std::optional<LabelMap>& label2id) {
  if (!uses_label_map(data.train.task)) return;
  data.labels = label2id ? *label2id : LabelMap::from_dataset(data.train);
  for (const Dataset* split : {&data.train, &data.validation, &data.test}) data.labels.check(*split);
}
}  // namespace

std::vector<size_t> seeded_permutation(size_t n, uint64_t seed) {
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::mt19937_64 rng(seed);
  for (size_t i = n; i > 1; --i) std::swap(order[i - 1], order[uniform_below(rng, i)]);
  return order;
}

void shuffle(Dataset& dataset, uint64_t seed) {
  std::vector<Example> shuffled;
  shuffled.reserve(dataset.size());
  for (size_t i : seeded_permutation(dataset.size(), seed)) shuffled.push_back(std::move(dataset.examples[i]));
  dataset.examples = std::move(shuffled);
}

TaskData split_dataset(const Dataset& all, const SplitFractions& f, uint64_t seed) {
  const double sum = f.train + f.validation + f.test;
  ADAPTERS_CHECK(f.train >= 0 && f.validation >= 0 && f.test >= 0 && std::abs(sum - 1.0) < 1e-6,
                 "split fractions: expected train, validation and test >= 0 summing to 1, found ", f.train, ", ", f.validation, ", ", f.test);
  const size_t n = all.size();
  const auto count = [n](double fraction) { return static_cast<size_t>(std::llround(static_cast<double>(n) * fraction)); };
  const size_t n_validation = std::min(count(f.validation), n), n_test = std::min(count(f.test), n - n_validation);
  ADAPTERS_CHECK(n_validation + n_test < n, all.source, ": split fractions ", f.train, "/", f.validation, "/", f.test, " leave no training example of ", n);
  const std::vector<size_t> order = seeded_permutation(n, seed);
  const auto part = [&](size_t from, size_t to) { return std::vector<size_t>(order.begin() + static_cast<std::ptrdiff_t>(from), order.begin() + static_cast<std::ptrdiff_t>(to)); };
  TaskData data;
  data.validation = n_validation ? subset(all, part(0, n_validation), "validation") : empty_like(all);
  data.test = n_test ? subset(all, part(n_validation, n_validation + n_test), "test") : empty_like(all);
  data.train = subset(all, part(n_validation + n_test, n), "train");
  data.train.report = all.report;
  return data;
}

TaskData load_data(const DataFiles& files, const ReadOptions& options, const std::optional<LabelMap>& label2id) {
  TaskData data;
  data.train = read_dataset(files.train, options);
  data.validation = files.validation ? read_dataset(*files.validation, options) : empty_like(data.train);
  data.test = files.test ? read_dataset(*files.test, options) : empty_like(data.train);
  attach_labels(data, label2id);
  return data;
}

TaskData load_and_split(const fs::path& file, const SplitFractions& fractions, uint64_t seed, const ReadOptions& options,
                        const std::optional<LabelMap>& label2id) {
  TaskData data = split_dataset(read_dataset(file, options), fractions, seed);
  attach_labels(data, label2id);
  return data;
}

// ---- features -----------------------------------------------------------------------------------

namespace {

enum class Truncation { LongestFirst, OnlySecond };

// An encoding cut to max_length: the kept tokens with their ids, offsets and sequence (0 or 1;
// -1 for special tokens), in order.
struct Tokens {
  std::vector<int64_t> ids, type_ids;
  std::vector<tokenizer::Offsets> offsets;
  std::vector<int> sequence;
};

// HF's token budget per sequence (tokenizers' truncate_encodings, right side): longest-first
// shortens the longer sequence, splitting the room evenly when both are long; only-second keeps
// the first sequence whole.
// A row of max_length tokens must hold its special tokens and at least one token of text.
void check_specials_fit(size_t specials, size_t max_length, const std::string& where) {
  ADAPTERS_CHECK(specials < max_length, where, ": max_length ", max_length, " leaves no room for text next to the ", specials,
                 " special tokens: expected a larger FeatureOptions::max_length");
}

// QA keeps the question whole: it must leave room for at least one context token.
void check_question_fits(size_t question, size_t room, const std::string& where) {
  ADAPTERS_CHECK(question < room, where, ": the question takes ", question, " tokens, leaving no room for the context: expected fewer than ",
                 room, " (raise FeatureOptions::max_length)");
}

std::pair<size_t, size_t> budgets(size_t n1, size_t n2, size_t room, Truncation strategy, const std::string& where) {
  if (n1 + n2 <= room) return {n1, n2};
  if (strategy == Truncation::OnlySecond) {
    check_question_fits(n1, room, where);
    return {n1, room - n1};
  }
  const bool first_is_longer = n1 > n2;
  size_t shorter = std::min(n1, n2);
  size_t longer = shorter > room ? shorter : std::max(shorter, room - shorter);
  if (shorter + longer > room) {
    shorter = room / 2;
    longer = shorter + room % 2;
  }
  return first_is_longer ? std::pair{longer, shorter} : std::pair{shorter, longer};
}

int sequence_of(const tokenizer::Encoding& e, size_t token) {
  for (const auto& [id, range] : e.sequence_ranges) {
    if (token >= range.first && token < range.second) return static_cast<int>(id);
  }
  if (e.sequence_ranges.empty() && !e.special_tokens_mask.empty() && e.special_tokens_mask[token] == 0) return 0;
  return -1;
}

Tokens truncated(const tokenizer::Encoding& e, size_t max_length, Truncation strategy, const std::string& where) {
  std::vector<size_t> live;  // tokens that are not padding
  for (size_t i = 0; i < e.size(); ++i) {
    if (e.attention_mask.empty() || e.attention_mask[i] != 0) live.push_back(i);
  }
  size_t count[2] = {0, 0};
  for (size_t i : live) {
    const int s = sequence_of(e, i);
    if (s == 0 || s == 1) ++count[s];
  }
  const size_t specials = live.size() - count[0] - count[1];
  check_specials_fit(specials, max_length, where);
  const auto [keep0, keep1] = budgets(count[0], count[1], max_length - specials, strategy, where);
  const size_t keep[2] = {keep0, keep1};
  size_t kept[2] = {0, 0};
  Tokens out;
  for (size_t i : live) {
    const int s = sequence_of(e, i);
    if (s >= 0 && kept[s]++ >= keep[s]) continue;
    out.ids.push_back(e.ids[i]);
    out.type_ids.push_back(e.type_ids.empty() ? 0 : e.type_ids[i]);
    out.offsets.push_back(e.offsets[i]);
    out.sequence.push_back(s);
  }
  return out;
}

TokenRow row_of(const Tokens& tokens) { return {tokens.ids, tokens.type_ids}; }

// Which word each code point of the space-joined words belongs to (-1 for the separators).
std::vector<int64_t> word_of_char(const std::vector<std::string>& words) {
  std::vector<int64_t> owner;
  for (size_t w = 0; w < words.size(); ++w) {
    if (w) owner.push_back(-1);
    owner.insert(owner.end(), code_point_count(words[w]), static_cast<int64_t>(w));
  }
  return owner;
}

// Labels at the first sub-token of each word; a token belongs to the word holding its last
// character (so a byte-level token with a leading space still finds its word).
std::vector<int64_t> aligned_labels(const Tokens& tokens, const std::vector<int64_t>& owner, const std::vector<int64_t>& word_labels) {
  std::vector<int64_t> labels(tokens.ids.size(), kIgnoreIndex);
  std::vector<bool> labelled(word_labels.size(), false);
  for (size_t t = 0; t < tokens.ids.size(); ++t) {
    const auto [begin, end] = tokens.offsets[t];
    if (tokens.sequence[t] != 0 || end <= begin || end - 1 >= owner.size()) continue;
    const int64_t word = owner[end - 1];
    if (word < 0 || labelled[static_cast<size_t>(word)]) continue;
    labelled[static_cast<size_t>(word)] = true;
    labels[t] = word_labels[static_cast<size_t>(word)];
  }
  return labels;
}

// HF's run_qa mapping of a character span to tokens of the context; (0, 0) when cut off.
std::pair<int64_t, int64_t> answer_tokens(const Tokens& tokens, size_t start_char, size_t end_char) {
  std::vector<size_t> context;
  for (size_t t = 0; t < tokens.ids.size(); ++t) {
    if (tokens.sequence[t] == 1) context.push_back(t);
  }
  if (context.empty() || tokens.offsets[context.front()].first > start_char || tokens.offsets[context.back()].second < end_char) return {0, 0};
  size_t first = 0;
  while (first < context.size() && tokens.offsets[context[first]].first <= start_char) ++first;
  size_t last = context.size();
  while (last > 0 && tokens.offsets[context[last - 1]].second >= end_char) --last;
  return {static_cast<int64_t>(context[first - 1]), static_cast<int64_t>(context[last])};
}

int64_t resolve_pad_id(const tokenizer::Tokenizer& tokenizer, const FeatureOptions& options) {
  if (options.pad_id) return *options.pad_id;
  if (tokenizer.padding()) return tokenizer.padding()->pad_id;
  for (const char* token : {"[PAD]", "<pad>"}) {
    if (const auto id = tokenizer.token_to_id(token)) return *id;
  }
  throw Error("tokenizer: expected a padding token ([PAD] or <pad>) or padding settings, found neither", "set FeatureOptions::pad_id");
}

// The tokens of `full` with only the context tokens [begin, end) of its context kept.
Tokens context_window(const Tokens& full, size_t begin, size_t end) {
  Tokens out;
  size_t context_index = 0;
  for (size_t t = 0; t < full.ids.size(); ++t) {
    if (full.sequence[t] == 1) {
      const size_t i = context_index++;
      if (i < begin || i >= end) continue;
    }
    out.ids.push_back(full.ids[t]);
    out.type_ids.push_back(full.type_ids[t]);
    out.offsets.push_back(full.offsets[t]);
    out.sequence.push_back(full.sequence[t]);
  }
  return out;
}

class FeatureMaker {
 public:
  FeatureMaker(const tokenizer::Tokenizer& tokenizer, const Dataset& dataset, const LabelMap& labels, const FeatureOptions& options)
      : tokenizer_(tokenizer), dataset_(dataset), labels_(labels), max_length_(options.max_length), doc_stride_(options.doc_stride) {}

  // The features of example `index` (one, or one per window for QA with a doc stride).
  void make(size_t index, std::vector<Feature>& out) const {
    const Example& example = dataset_.examples[index];
    Feature feature;
    feature.example = index;
    feature.adapter = example.adapter;
    switch (dataset_.task) {
      case TaskKind::SequenceClassification:
      case TaskKind::Regression:
      case TaskKind::MultiLabel: sequence(example, feature); break;
      case TaskKind::TokenClassification: tagging(example, feature); break;
      case TaskKind::QuestionAnswering:
        if (doc_stride_ > 0) return question_answering_windows(example, index, out);
        question_answering(qa_tokens(example, max_length_), example, feature);
        break;
      case TaskKind::MultipleChoice: multiple_choice(example, feature); break;
      case TaskKind::CausalLM: causal_lm(example, feature); break;
      case TaskKind::MaskedLM: masked_lm(example, feature); break;
    }
    out.push_back(std::move(feature));
  }

 private:
  Tokens encode(const std::string& first, const std::string* second, Truncation strategy, const std::string& where) const {
    const tokenizer::Encoding e = second ? tokenizer_.encode_pair(first, *second) : tokenizer_.encode(first);
    return truncated(e, max_length_, strategy, where);
  }

  void sequence(const Example& example, Feature& feature) const {
    const std::string where = dataset_.where(example);
    feature.rows.push_back(row_of(encode(example.text, example.text_pair.empty() ? nullptr : &example.text_pair, Truncation::LongestFirst, where)));
    if (dataset_.task == TaskKind::Regression) {
      feature.targets = {static_cast<float>(example.target)};
    } else if (dataset_.task == TaskKind::MultiLabel) {
      feature.targets.assign(labels_.size(), 0.0f);
      for (const std::string& label : example.labels) feature.targets[static_cast<size_t>(labels_.id(label, where))] = 1.0f;
    } else {
      feature.label = labels_.id(example.labels.at(0), where);
    }
  }

  void tagging(const Example& example, Feature& feature) const {
    const std::string where = dataset_.where(example);
    std::vector<int64_t> word_labels;
    for (const std::string& tag : example.labels) word_labels.push_back(labels_.id(tag, where));
    const Tokens tokens = encode(join(example.words, " "), nullptr, Truncation::LongestFirst, where);
    feature.token_labels = aligned_labels(tokens, word_of_char(example.words), word_labels);
    feature.rows.push_back(row_of(tokens));
  }

  // The text with the tokenizer's special tokens (<s> ... </s>), its own targets.
  void causal_lm(const Example& example, Feature& feature) const {
    const Tokens tokens = encode(example.text, nullptr, Truncation::LongestFirst, dataset_.where(example));
    feature.token_labels = tokens.ids;
    feature.rows.push_back(row_of(tokens));
  }

  // Every token of the text may be masked, none of the special tokens.
  void masked_lm(const Example& example, Feature& feature) const {
    const Tokens tokens = encode(example.text, nullptr, Truncation::LongestFirst, dataset_.where(example));
    for (size_t t = 0; t < tokens.ids.size(); ++t) feature.token_labels.push_back(tokens.sequence[t] >= 0 ? tokens.ids[t] : kIgnoreIndex);
    feature.rows.push_back(row_of(tokens));
  }

  Tokens qa_tokens(const Example& example, size_t max_length) const {
    const tokenizer::Encoding e = tokenizer_.encode_pair(example.question, example.context);
    return truncated(e, max_length, Truncation::OnlySecond, dataset_.where(example));
  }

  // HF run_qa's overflowing windows: every window holds the question and `room` context tokens,
  // the next one starting room - doc_stride tokens later.
  void question_answering_windows(const Example& example, size_t index, std::vector<Feature>& out) const {
    const Tokens full = qa_tokens(example, std::numeric_limits<size_t>::max());
    size_t context = 0, question = 0;
    for (int s : full.sequence) {
      if (s == 0) ++question;
      if (s == 1) ++context;
    }
    const size_t specials = full.ids.size() - context - question;
    const std::string where = dataset_.where(example);
    check_specials_fit(specials, max_length_, where);
    check_question_fits(question, max_length_ - specials, where);
    const size_t room = max_length_ - specials - question;
    ADAPTERS_CHECK(doc_stride_ < room, where, ": doc_stride ", doc_stride_, " must be smaller than the ", room,
                   " context tokens a window holds (lower doc_stride or raise max_length)");
    for (size_t begin = 0;; begin += room - doc_stride_) {
      Feature feature;
      feature.example = index;
      feature.adapter = example.adapter;
      question_answering(context_window(full, begin, begin + room), example, feature);
      out.push_back(std::move(feature));
      if (begin + room >= context) break;
    }
  }

  void question_answering(const Tokens& tokens, const Example& example, Feature& feature) const {
    for (size_t t = 0; t < tokens.ids.size(); ++t) {
      feature.context_offsets.push_back(tokens.sequence[t] == 1 ? std::optional(tokens.offsets[t]) : std::nullopt);
    }
    if (!example.answers.empty()) {
      const Answer& answer = example.answers.front();
      std::tie(feature.start_position, feature.end_position) = answer_tokens(tokens, answer.start, answer.start + code_point_count(answer.text));
    }
    feature.rows.push_back(row_of(tokens));
  }

  void multiple_choice(const Example& example, Feature& feature) const {
    for (const std::string& choice : example.choices) {
      const std::string ending = example.question.empty() ? choice : example.question + " " + choice;
      feature.rows.push_back(row_of(encode(example.context, &ending, Truncation::LongestFirst, dataset_.where(example))));
    }
    feature.label = example.correct_choice;
  }

  const tokenizer::Tokenizer& tokenizer_;
  const Dataset& dataset_;
  const LabelMap& labels_;
  size_t max_length_, doc_stride_;
};

}  // namespace

size_t Feature::length() const {
  size_t longest = 0;
  for (const TokenRow& row : rows) longest = std::max(longest, row.input_ids.size());
  return longest;
}

MaskingOptions masking_options(const tokenizer::Tokenizer& tokenizer, double probability) {
  ADAPTERS_CHECK(probability > 0 && probability <= 1, "mask probability: expected a share in (0, 1], found ", probability);
  MaskingOptions masking;
  for (const char* name : {"[MASK]", "<mask>"}) {
    if (const auto id = tokenizer.token_to_id(name)) {
      masking.mask_id = *id;
      break;
    }
  }
  ADAPTERS_CHECK(masking.mask_id >= 0, "masked LM: the tokenizer has no [MASK] or <mask> token to mask with");
  masking.vocab_size = static_cast<int64_t>(tokenizer.vocab_size());
  masking.probability = probability;
  return masking;
}

FeatureSet make_features(const tokenizer::Tokenizer& tokenizer, const Dataset& dataset, const LabelMap& labels, const FeatureOptions& options) {
  ADAPTERS_CHECK(options.max_length > 0, "FeatureOptions::max_length: expected > 0, found 0");
  ADAPTERS_CHECK(!uses_label_map(dataset.task) || !labels.empty(), dataset.source, ": a ", to_string(dataset.task),
                 " task needs a label map: expected a non-empty LabelMap, found an empty one");
  FeatureSet set;
  set.task = dataset.task;
  set.num_labels = labels.size();
  set.pad_id = resolve_pad_id(tokenizer, options);
  set.pad_type_id = tokenizer.padding() ? tokenizer.padding()->pad_type_id : 0;
  if (set.task == TaskKind::MaskedLM) set.masking = masking_options(tokenizer, options.mask_probability);
  const FeatureMaker maker(tokenizer, dataset, labels, options);
  set.features.reserve(dataset.size());
  for (size_t i = 0; i < dataset.size(); ++i) maker.make(i, set.features);
  return set;
}

std::string span_text(const Example& example, const Feature& feature, size_t start_token, size_t end_token) {
  const auto& offsets = feature.context_offsets;
  if (end_token < start_token || end_token >= offsets.size() || !offsets[start_token] || !offsets[end_token]) return "";
  return code_point_substr(example.context, offsets[start_token]->first, offsets[end_token]->second);
}

// ---- batches ------------------------------------------------------------------------------------

std::vector<int64_t> Batch::shape() const {
  if (num_choices > 1) return {batch_size, num_choices, seq_len};
  return {batch_size, seq_len};
}

namespace {
std::vector<std::vector<size_t>> cut(const std::vector<size_t>& order, size_t size, bool drop_last) {
  std::vector<std::vector<size_t>> batches;
  for (size_t from = 0; from < order.size(); from += size) {
    const size_t to = std::min(order.size(), from + size);
    if (to - from < size && drop_last) break;
    batches.emplace_back(order.begin() + static_cast<std::ptrdiff_t>(from), order.begin() + static_cast<std::ptrdiff_t>(to));
  }
  return batches;
}

void sort_chunks_by_length(std::vector<size_t>& order, const FeatureSet& set, size_t chunk) {
  for (size_t from = 0; from < order.size(); from += chunk) {
    const auto begin = order.begin() + static_cast<std::ptrdiff_t>(from);
    const auto end = order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), from + chunk));
    std::stable_sort(begin, end, [&](size_t a, size_t b) { return set.features[a].length() > set.features[b].length(); });
  }
}

template <typename T>
void append_padded(std::vector<T>& out, const std::vector<T>& values, size_t length, T pad) {
  out.insert(out.end(), values.begin(), values.end());
  out.insert(out.end(), length - values.size(), pad);
}
}  // namespace

std::vector<std::vector<size_t>> plan_batches(const FeatureSet& set, const BatchOptions& options) {
  ADAPTERS_CHECK(options.batch_size > 0, "BatchOptions::batch_size: expected > 0, found 0");
  const size_t n = set.features.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  if (options.shuffle) order = seeded_permutation(n, options.seed);
  if (!options.bucket_by_length) return cut(order, options.batch_size, options.drop_last);
  ADAPTERS_CHECK(options.bucket_batches > 0, "BatchOptions::bucket_batches: expected > 0, found 0");
  sort_chunks_by_length(order, set, options.batch_size * options.bucket_batches);
  std::vector<std::vector<size_t>> batches = cut(order, options.batch_size, options.drop_last);
  if (!options.shuffle) return batches;
  std::vector<std::vector<size_t>> shuffled;
  for (size_t i : seeded_permutation(batches.size(), options.seed ^ 0x9E3779B97F4A7C15ULL)) shuffled.push_back(std::move(batches[i]));
  return shuffled;
}

Batch collate(const FeatureSet& set, const std::vector<size_t>& indices) {
  ADAPTERS_CHECK(!indices.empty(), "collate: expected at least one feature index, found none");
  Batch batch;
  batch.batch_size = static_cast<int64_t>(indices.size());
  batch.features = indices;
  size_t length = 0;
  for (size_t i : indices) {
    ADAPTERS_CHECK(i < set.features.size(), "collate: feature index ", i, " out of range: expected < ", set.features.size());
    length = std::max(length, set.features[i].length());
    batch.num_choices = static_cast<int64_t>(set.features[i].rows.size());
  }
  batch.seq_len = static_cast<int64_t>(length);
  for (size_t i : indices) {
    const Feature& f = set.features[i];
    ADAPTERS_CHECK(static_cast<int64_t>(f.rows.size()) == batch.num_choices, "collate: expected ", batch.num_choices,
                   " rows per feature (choices), found ", f.rows.size(), " in feature ", i);
    for (const TokenRow& row : f.rows) {
      if (!f.adapter.empty()) batch.adapters.push_back(f.adapter);
      append_padded(batch.input_ids, row.input_ids, length, set.pad_id);
      if (set.task != TaskKind::CausalLM) append_padded(batch.token_type_ids, row.token_type_ids, length, set.pad_type_id);
      append_padded(batch.attention_mask, std::vector<int64_t>(row.input_ids.size(), 1), length, int64_t{0});
    }
    switch (set.task) {
      case TaskKind::SequenceClassification:
      case TaskKind::MultipleChoice: batch.labels.push_back(f.label); break;
      case TaskKind::Regression:
      case TaskKind::MultiLabel: batch.float_labels.insert(batch.float_labels.end(), f.targets.begin(), f.targets.end()); break;
      case TaskKind::TokenClassification:
      case TaskKind::CausalLM:
      case TaskKind::MaskedLM: append_padded(batch.labels, f.token_labels, length, kIgnoreIndex); break;
      case TaskKind::QuestionAnswering:
        batch.start_positions.push_back(f.start_position);
        batch.end_positions.push_back(f.end_position);
        break;
    }
  }
  ADAPTERS_CHECK(batch.adapters.empty() || batch.adapters.size() == static_cast<size_t>(batch.batch_size * batch.num_choices),
                 "collate: some examples name an adapter and some do not (features ", indices.front(), "...)");
  return batch;
}

void mask_tokens(Batch& batch, const MaskingOptions& masking, uint64_t seed) {
  ADAPTERS_CHECK(masking.mask_id >= 0 && masking.vocab_size > 0, "mask_tokens: expected a mask id and a vocabulary size, found ",
                 masking.mask_id, " and ", masking.vocab_size);
  const auto T = static_cast<size_t>(batch.seq_len);
  ADAPTERS_CHECK(batch.labels.size() == batch.features.size() * T && batch.input_ids.size() == batch.labels.size(),
                 "mask_tokens: expected (B, T) labels and input ids of a masked-LM batch");
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::uniform_int_distribution<int64_t> any_token(0, masking.vocab_size - 1);
  for (size_t b = 0; b < batch.features.size(); ++b) {
    std::mt19937_64 rng(seed ^ (0x9E3779B97F4A7C15ULL * (batch.features[b] + 1)));
    for (size_t t = b * T; t < (b + 1) * T; ++t) {
      if (batch.labels[t] == kIgnoreIndex) continue;
      if (uniform(rng) >= masking.probability) {
        batch.labels[t] = kIgnoreIndex;
        continue;
      }
      const double corruption = uniform(rng);
      if (corruption < 0.8) batch.input_ids[t] = masking.mask_id;
      else if (corruption < 0.9) batch.input_ids[t] = any_token(rng);
    }
  }
}

std::vector<Batch> make_batches(const FeatureSet& set, const BatchOptions& options) {
  std::vector<Batch> batches;
  for (const std::vector<size_t>& indices : plan_batches(set, options)) batches.push_back(collate(set, indices));
  return batches;
}

}  // namespace adapters::train
