// Setup tree helpers and the recursive-descent parser of setup strings.
#include "adapters/composition/setup.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <map>
#include <sstream>

#include <cmath>
#include <nlohmann/json.hpp>

#include "adapters/core/json.h"
#include <set>

#include "adapters/core/error.h"

namespace adapters::composition {
namespace {

const std::map<std::string, BlockType>& block_names() {
  static const std::map<std::string, BlockType> names = {
      {"Stack", BlockType::Stack},   {"Fuse", BlockType::Fuse},         {"Split", BlockType::Split},
      {"BatchSplit", BlockType::BatchSplit}, {"Parallel", BlockType::Parallel}, {"Average", BlockType::Average}};
  return names;
}

void collect(const Block& b, std::vector<std::string>& out) {
  if (b.is_adapter()) {
    if (std::find(out.begin(), out.end(), b.name) == out.end()) out.push_back(b.name);
    return;
  }
  for (const auto& c : b.children) collect(c, out);
}

template <typename T>
std::string join_numbers(const std::vector<T>& values) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < values.size(); ++i) os << (i ? ", " : "") << values[i];
  os << ']';
  return os.str();
}

class Parser {
 public:
  explicit Parser(const std::string& text) : text_(text) {}

  Block parse_all() {
    Block b = parse_block();
    skip_space();
    if (pos_ != text_.size()) fail("unexpected '" + std::string(1, text_[pos_]) + "' after the setup");
    return b;
  }

 private:
  static constexpr int kMaxSetupDepth = 32;  // no setup nests more than a few blocks

  const std::string& text_;
  std::size_t pos_ = 0;
  int depth_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(str("adapter setup \"", excerpt(), "\": ", what, " at position ", pos_));
  }

  // The setup, or for a long one the part around the error.
  std::string excerpt() const {
    if (text_.size() <= 80) return text_;
    const std::size_t begin = pos_ > 30 ? pos_ - 30 : 0;
    return (begin > 0 ? "..." : "") + text_.substr(begin, 60) + (begin + 60 < text_.size() ? "..." : "");
  }

  void skip_space() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }

  bool peek(char c) {
    skip_space();
    return pos_ < text_.size() && text_[pos_] == c;
  }

  void expect(char c) {
    if (!peek(c)) fail(str("expected '", c, "'"));
    ++pos_;
  }

  static bool is_name_char(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' || c == '/' || c == '+';
  }

  std::string parse_name() {
    skip_space();
    std::size_t start = pos_;
    while (pos_ < text_.size() && is_name_char(text_[pos_])) ++pos_;
    if (start == pos_) fail("expected an adapter name or a block");
    return text_.substr(start, pos_ - start);
  }

  std::string parse_number_text() {
    skip_space();
    std::size_t start = pos_;
    while (pos_ < text_.size() && (std::isdigit(static_cast<unsigned char>(text_[pos_])) || text_[pos_] == '.' ||
                                   text_[pos_] == '-' || text_[pos_] == '+' || text_[pos_] == 'e')) {
      ++pos_;
    }
    if (start == pos_) fail("expected a number");
    return text_.substr(start, pos_ - start);
  }

  std::int64_t parse_int() {
    std::size_t at = pos_;
    std::string t = parse_number_text();
    char* end = nullptr;
    long long v = std::strtoll(t.c_str(), &end, 10);
    if (*end != '\0') {
      pos_ = at;
      fail("expected an integer, found '" + t + "'");
    }
    return v;
  }

  double parse_double() {
    std::size_t at = pos_;
    std::string t = parse_number_text();
    char* end = nullptr;
    double v = std::strtod(t.c_str(), &end);
    if (*end != '\0') {
      pos_ = at;
      fail("expected a number, found '" + t + "'");
    }
    return v;
  }

  template <typename F>
  void parse_list(F&& item) {
    expect('[');
    if (peek(']')) {
      ++pos_;
      return;
    }
    while (true) {
      item();
      if (peek(',')) {
        ++pos_;
        continue;
      }
      expect(']');
      return;
    }
  }

  void parse_option(Block& b, const std::string& key) {
    expect('=');
    if (key == "split_index" && b.type == BlockType::Split) {
      b.split_index = parse_int();
    } else if (key == "batch_sizes" && b.type == BlockType::BatchSplit) {
      parse_list([&] { b.batch_sizes.push_back(parse_int()); });
    } else if (key == "weights" && b.type == BlockType::Average) {
      parse_list([&] { b.weights.push_back(parse_double()); });
    } else {
      fail(str("unknown option '", key, "' for ", block_type_name(b.type)));
    }
  }

  Block parse_block() {
    if (++depth_ > kMaxSetupDepth) fail(str("blocks nested deeper than ", kMaxSetupDepth, " levels"));
    Block b = parse_block_body();
    --depth_;
    return b;
  }

  Block parse_block_body() {
    std::string name = parse_name();
    auto it = block_names().find(name);
    if (it == block_names().end()) {
      if (peek('(')) fail("unknown block '" + name + "' (known: Stack, Fuse, Split, BatchSplit, Parallel, Average)");
      return Block::adapter(name);
    }
    Block b;
    b.type = it->second;
    expect('(');
    while (!peek(')')) {
      std::size_t save = pos_;
      std::string word = parse_name();
      if (peek('=')) {
        parse_option(b, word);
      } else {
        pos_ = save;
        b.children.push_back(parse_block());  // recursion bounded by kMaxSetupDepth
      }
      if (peek(',')) {
        ++pos_;
        continue;
      }
      if (!peek(')')) fail("expected ',' or ')'");
    }
    ++pos_;
    if (b.children.empty()) fail(str(block_type_name(b.type), " needs at least one member"));
    return b;
  }
};

}  // namespace

const char* block_type_name(BlockType type) {
  switch (type) {
    case BlockType::Adapter: return "Adapter";
    case BlockType::Stack: return "Stack";
    case BlockType::Fuse: return "Fuse";
    case BlockType::Split: return "Split";
    case BlockType::BatchSplit: return "BatchSplit";
    case BlockType::Parallel: return "Parallel";
    case BlockType::Average: return "Average";
  }
  return "?";
}

Block Block::adapter(std::string name) {
  Block b;
  b.name = std::move(name);
  return b;
}

Block Block::of(BlockType type, std::vector<Block> children) {
  Block b;
  b.type = type;
  b.children = std::move(children);
  return b;
}

std::vector<std::string> Block::flatten() const {
  std::vector<std::string> out;
  collect(*this, out);
  return out;
}

bool Block::contains(const std::string& adapter) const {
  auto names = flatten();
  return std::find(names.begin(), names.end(), adapter) != names.end();
}

std::string Block::first() const { return is_adapter() ? name : children.front().first(); }
std::string Block::last() const { return is_adapter() ? name : children.back().last(); }

std::string Block::fusion_name() const {
  // As the reference: each child contributes its last adapter, so Fuse(Stack(p, q), r) is "q,r".
  std::string out;
  for (const auto& c : children) out += (out.empty() ? "" : ",") + c.last();
  return out;
}

std::string Block::to_string() const {
  if (is_adapter()) return name;
  std::string out = std::string(block_type_name(type)) + "(";
  for (std::size_t i = 0; i < children.size(); ++i) out += (i ? ", " : "") + children[i].to_string();
  if (type == BlockType::Split) out += str(", split_index=", split_index);
  if (type == BlockType::BatchSplit) out += ", batch_sizes=" + join_numbers(batch_sizes);
  if (type == BlockType::Average && !weights.empty()) out += ", weights=" + join_numbers(weights);
  return out + ")";
}

bool Block::operator==(const Block& o) const {
  return type == o.type && name == o.name && children == o.children && split_index == o.split_index &&
         batch_sizes == o.batch_sizes && weights == o.weights;
}

Block parse(const std::string& text) { return Parser(text).parse_all(); }

namespace {

const std::set<BlockType>& allowed_members(BlockType parent) {
  using T = BlockType;
  static const std::map<T, std::set<T>> allowed = {
      {T::Stack, {T::Adapter, T::Fuse, T::Split, T::Parallel, T::BatchSplit, T::Average}},
      {T::Fuse, {T::Adapter, T::Stack}},
      {T::Split, {T::Adapter, T::Split, T::Stack, T::BatchSplit, T::Average}},
      {T::Parallel, {T::Adapter, T::Stack, T::BatchSplit, T::Average}},
      {T::BatchSplit, {T::Adapter, T::Stack, T::Split, T::BatchSplit, T::Average}},
      {T::Average, {T::Adapter, T::Stack, T::Split, T::BatchSplit}},
      {T::Adapter, {}}};
  return allowed.at(parent);
}

void check_options(const Block& b, const std::string& whole) {
  const std::string where = str("adapter setup ", whole, ": ", b.to_string());
  switch (b.type) {
    case BlockType::Split:
      ADAPTERS_CHECK(b.children.size() == 2, where, ": Split takes exactly two members, found ", b.children.size());
      ADAPTERS_CHECK(b.split_index > 0, where, ": split_index must be positive, found ", b.split_index);
      break;
    case BlockType::BatchSplit:
      ADAPTERS_CHECK(b.batch_sizes.size() == b.children.size(), where, ": expected one batch size per member (",
                     b.children.size(), "), found ", b.batch_sizes.size());
      for (auto n : b.batch_sizes) ADAPTERS_CHECK(n >= 0, where, ": batch sizes must not be negative, found ", n);
      break;
    case BlockType::Average:
      ADAPTERS_CHECK(b.weights.empty() || b.weights.size() == b.children.size(), where,
                     ": expected one weight per member (", b.children.size(), "), found ", b.weights.size());
      break;
    default: break;
  }
}

void validate_at(const Block& b, int level, const std::string& whole) {
  if (b.is_adapter()) return;
  if (level > 1 && b.type != BlockType::Stack) {
    throw Error(str("adapter setup ", whole, " is too deep: cannot have ", b.to_string(), " at level ", level));
  }
  check_options(b, whole);
  for (const Block& child : b.children) {
    if (!allowed_members(b.type).count(child.type)) {
      throw Error(str("adapter setup ", whole, ": cannot nest ", block_type_name(child.type), " ", child.to_string(),
                      " in ", block_type_name(b.type)),
                  str(block_type_name(b.type), " may hold ",
                      b.type == BlockType::Fuse ? "adapters and Stack" : "adapters and the blocks listed in docs/composition.md"));
    }
    validate_at(child, level + 1, whole);
  }
}

nlohmann::json block_json(const Block& b) {
  if (b.is_adapter()) return b.name;
  nlohmann::json children = nlohmann::json::array();
  for (const auto& c : b.children) children.push_back(block_json(c));
  nlohmann::json j = {{"type", block_type_name(b.type)}, {"children", children}};
  if (b.type == BlockType::Split) j["split_index"] = b.split_index;
  if (b.type == BlockType::BatchSplit) j["batch_sizes"] = b.batch_sizes;
  if (b.type == BlockType::Average && !b.weights.empty()) j["weights"] = b.weights;
  return j;
}

Block block_from_json(const nlohmann::json& j, const std::string& source) {
  if (j.is_string()) return Block::adapter(j.get<std::string>());
  ADAPTERS_CHECK(j.is_object() && j.contains("type") && j.contains("children") && j["children"].is_array(), source,
                 ": expected an adapter name or {\"type\": ..., \"children\": [...]}, found ", describe(j));
  const std::string type = j["type"].is_string() ? j["type"].get<std::string>() : "";
  auto it = block_names().find(type);
  ADAPTERS_CHECK(it != block_names().end(), source, ": unknown block type '", describe(j["type"]),
                 "' (known: Stack, Fuse, Split, BatchSplit, Parallel, Average)");
  std::vector<Block> children;
  for (const auto& c : j["children"]) children.push_back(block_from_json(c, source));
  Block b = Block::of(it->second, std::move(children));
  try {
    if (j.contains("split_index")) b.split_index = j["split_index"].get<std::int64_t>();
    if (j.contains("batch_sizes")) b.batch_sizes = j["batch_sizes"].get<std::vector<std::int64_t>>();
    if (j.contains("weights") && !j["weights"].is_null()) b.weights = j["weights"].get<std::vector<double>>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(str(source, ": bad option of ", type, ": ", e.what()));
  }
  return b;
}

}  // namespace

void validate(const Block& setup) { validate_at(setup, 0, setup.to_string()); }

std::vector<double> average_weights(const Block& average) {
  const auto n = average.children.size();
  if (average.weights.empty()) return std::vector<double>(n, 1.0 / static_cast<double>(n));
  double sum = 0.0;
  for (double w : average.weights) sum += w;
  ADAPTERS_CHECK(std::abs(sum) > 1e-12, "adapter setup ", average.to_string(), ": the weights sum to 0, cannot normalise");
  std::vector<double> out;
  for (double w : average.weights) out.push_back(w / sum);
  return out;
}

std::int64_t parallel_channels(const Block& setup) {
  if (setup.type == BlockType::Parallel) return static_cast<std::int64_t>(setup.children.size());
  std::int64_t n = 1;
  if (setup.type == BlockType::Stack) {
    for (const auto& c : setup.children) n = std::max(n, parallel_channels(c));
  }
  return n;
}

std::string to_json(const Block& setup) { return block_json(setup).dump(); }

Block from_json(const std::string& json_text, const std::string& source) {
  return block_from_json(parse_json_file_text(json_text, source), source);
}

Block normalize_active(Block setup) {
  if (setup.is_adapter()) return Block::of(BlockType::Stack, {std::move(setup)});
  return setup;
}

}  // namespace adapters::composition
