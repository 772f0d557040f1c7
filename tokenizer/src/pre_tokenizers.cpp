// Pre-tokenizers of tokenizer.json (BertPreTokenizer, ByteLevel, Whitespace, WhitespaceSplit,
// Metaspace, Split, Punctuation, Digits, CharDelimiterSplit, Sequence) and their registry.
#include <functional>
#include <map>

#include "adapters/core/error.h"
#include "components.h"

namespace adapters::tokenizer {

namespace {

using Pieces = std::vector<NormalizedString>;

class BertPreTokenizer final : public PreTokenizer {
 public:
  void pre_tokenize(PreTokenizedString& text) const override {
    text.split([](NormalizedString s) {
      return s.split(find_char_matches(s.get(), unicode::is_whitespace), SplitBehavior::Removed);
    });
    text.split([](NormalizedString s) {
      return s.split(find_char_matches(s.get(), unicode::is_punctuation), SplitBehavior::Isolated);
    });
  }
};

class ByteLevel final : public PreTokenizer {
 public:
  explicit ByteLevel(const json& c)
      : add_prefix_space_(bool_or(c, "add_prefix_space", true)), use_regex_(bool_or(c, "use_regex", true)) {}

  void pre_tokenize(PreTokenizedString& text) const override {
    static const Regex gpt2(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)");
    text.split([this](NormalizedString s) {
      if (add_prefix_space_ && s.get().front() != ' ') s.prepend(" ");
      if (!use_regex_) return Pieces{std::move(s)};
      return s.split(gpt2.find_matches(s.get()), SplitBehavior::Isolated);
    });
    text.normalize([](NormalizedString& s) {
      const std::string& bytes = s.get();
      std::vector<Change> dest;
      dest.reserve(bytes.size());
      for (size_t i = 0; i < bytes.size();) {
        const size_t len = unicode::sequence_length(static_cast<unsigned char>(bytes[i]));
        for (size_t k = 0; k < len; ++k) {
          const std::string& mapped = byte_to_char(static_cast<unsigned char>(bytes[i + k]));
          size_t pos = 0;
          dest.push_back({unicode::next(mapped, pos), k > 0 ? 1 : 0});
        }
        i += len;
      }
      s.transform(dest, 0);
    });
  }

 private:
  bool add_prefix_space_, use_regex_;
};

class Whitespace final : public PreTokenizer {
 public:
  void pre_tokenize(PreTokenizedString& text) const override {
    static const Regex words(R"(\w+|[^\w\s]+)");
    text.split([](NormalizedString s) {
      std::vector<Match> matches = words.find_matches(s.get());
      for (Match& m : matches) m.is_match = !m.is_match;
      return s.split(matches, SplitBehavior::Removed);
    });
  }
};

class WhitespaceSplit final : public PreTokenizer {
 public:
  void pre_tokenize(PreTokenizedString& text) const override {
    text.split([](NormalizedString s) {
      return s.split(find_char_matches(s.get(), unicode::is_whitespace), SplitBehavior::Removed);
    });
  }
};

class Metaspace final : public PreTokenizer {
 public:
  enum class Prepend { Always, First, Never };

  explicit Metaspace(const json& c) : replacement_(string_or(c, "replacement", "\u2581")), split_(bool_or(c, "split", true)) {
    if (c.contains("prepend_scheme")) {
      const std::string scheme = c["prepend_scheme"].get<std::string>();
      if (scheme == "always") prepend_ = Prepend::Always;
      else if (scheme == "first") prepend_ = Prepend::First;
      else if (scheme == "never") prepend_ = Prepend::Never;
      else throw Error(str("tokenizer.json: Metaspace \"prepend_scheme\" must be always, first or never, found \"", scheme, "\""));
    } else {
      prepend_ = bool_or(c, "add_prefix_space", true) ? Prepend::Always : Prepend::Never;
    }
    size_t i = 0;
    replacement_char_ = unicode::next(replacement_, i);
  }

  void pre_tokenize(PreTokenizedString& text) const override {
    text.split([this](NormalizedString s) {
      s.replace(find_char_matches(s.get(), [](char32_t c) { return c == U' '; }), replacement_);
      const bool starts = s.get().compare(0, replacement_.size(), replacement_) == 0;
      const bool prepend = prepend_ == Prepend::Always || (prepend_ == Prepend::First && s.offsets_original().first == 0);
      if (prepend && !starts) s.prepend(replacement_);
      if (!split_) return Pieces{std::move(s)};
      const char32_t r = replacement_char_;
      return s.split(find_char_matches(s.get(), [r](char32_t c) { return c == r; }), SplitBehavior::MergedWithNext);
    });
  }

 private:
  std::string replacement_;
  char32_t replacement_char_ = 0;
  Prepend prepend_ = Prepend::Always;
  bool split_;
};

class SplitPattern final : public PreTokenizer {
 public:
  explicit SplitPattern(const json& c)
      : pattern_(parse_pattern(require(c, "pattern", "Split"))),
        behavior_(parse_behavior(require(c, "behavior", "Split"))),
        invert_(bool_or(c, "invert", false)) {}

  void pre_tokenize(PreTokenizedString& text) const override {
    text.split([this](NormalizedString s) {
      std::vector<Match> matches = pattern_.find_matches(s.get());
      if (invert_) for (Match& m : matches) m.is_match = !m.is_match;
      return s.split(matches, behavior_);
    });
  }

 private:
  Regex pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

// Splits on every character satisfying a predicate (Punctuation, Digits, CharDelimiterSplit).
class CharSplit final : public PreTokenizer {
 public:
  CharSplit(std::function<bool(char32_t)> pred, SplitBehavior behavior) : pred_(std::move(pred)), behavior_(behavior) {}
  void pre_tokenize(PreTokenizedString& text) const override {
    text.split([this](NormalizedString s) { return s.split(find_char_matches(s.get(), pred_), behavior_); });
  }

 private:
  std::function<bool(char32_t)> pred_;
  SplitBehavior behavior_;
};

std::shared_ptr<const PreTokenizer> make_punctuation(const json& c) {
  const SplitBehavior behavior = c.contains("behavior") ? parse_behavior(c["behavior"]) : SplitBehavior::Isolated;
  return std::make_shared<CharSplit>(unicode::is_punctuation, behavior);
}

std::shared_ptr<const PreTokenizer> make_digits(const json& c) {
  const bool individual = bool_or(c, "individual_digits", false);
  return std::make_shared<CharSplit>(unicode::is_numeric, individual ? SplitBehavior::Isolated : SplitBehavior::Contiguous);
}

std::shared_ptr<const PreTokenizer> make_char_delimiter(const json& c) {
  const std::string delimiter = require(c, "delimiter", "CharDelimiterSplit").get<std::string>();
  size_t i = 0;
  const char32_t d = delimiter.empty() ? 0 : unicode::next(delimiter, i);
  return std::make_shared<CharSplit>([d](char32_t x) { return x == d; }, SplitBehavior::Removed);
}

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(const json& c) {
    for (const json& item : require(c, "pretokenizers", "Sequence pre-tokenizer")) steps_.push_back(make_pre_tokenizer(item));
  }
  void pre_tokenize(PreTokenizedString& text) const override {
    for (const auto& step : steps_) step->pre_tokenize(text);
  }

 private:
  std::vector<std::shared_ptr<const PreTokenizer>> steps_;
};

using Builder = std::function<std::shared_ptr<const PreTokenizer>(const json&)>;

const std::map<std::string, Builder>& registry() {
  static const std::map<std::string, Builder> builders = {
      {"BertPreTokenizer", [](const json&) { return std::make_shared<BertPreTokenizer>(); }},
      {"ByteLevel", [](const json& c) { return std::make_shared<ByteLevel>(c); }},
      {"Whitespace", [](const json&) { return std::make_shared<Whitespace>(); }},
      {"WhitespaceSplit", [](const json&) { return std::make_shared<WhitespaceSplit>(); }},
      {"Metaspace", [](const json& c) { return std::make_shared<Metaspace>(c); }},
      {"Split", [](const json& c) { return std::make_shared<SplitPattern>(c); }},
      {"Punctuation", make_punctuation},
      {"Digits", make_digits},
      {"CharDelimiterSplit", make_char_delimiter},
      {"Sequence", [](const json& c) { return std::make_shared<SequencePreTokenizer>(c); }},
  };
  return builders;
}

}  // namespace

SplitBehavior parse_behavior(const json& value) {
  static const std::map<std::string, SplitBehavior> names = {
      {"Removed", SplitBehavior::Removed}, {"Isolated", SplitBehavior::Isolated},
      {"MergedWithPrevious", SplitBehavior::MergedWithPrevious}, {"MergedWithNext", SplitBehavior::MergedWithNext},
      {"Contiguous", SplitBehavior::Contiguous}};
  const auto it = value.is_string() ? names.find(value.get<std::string>()) : names.end();
  if (it == names.end()) {
    throw Error(str("tokenizer.json: \"behavior\" must be Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous, found ", value.dump()));
  }
  return it->second;
}

std::shared_ptr<const PreTokenizer> make_pre_tokenizer(const json& config) {
  const std::string type = require(config, "type", "pre_tokenizer").get<std::string>();
  const auto it = registry().find(type);
  if (it == registry().end()) throw Error(str("tokenizer.json: unsupported pre_tokenizer type \"", type, "\""));
  return it->second(config);
}

}  // namespace adapters::tokenizer
