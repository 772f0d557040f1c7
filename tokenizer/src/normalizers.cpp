// Normalizers of tokenizer.json (BertNormalizer, NFC/NFD/NFKC/NFKD, Lowercase, StripAccents,
// Strip, Replace, Prepend, Sequence; Precompiled lives in precompiled.cpp) and their registry.
#include <functional>
#include <map>

#include "adapters/core/error.h"
#include "components.h"
#include "precompiled.h"
#include "regex.h"

namespace adapters::tokenizer {

namespace {

class BertNormalizer final : public Normalizer {
 public:
  explicit BertNormalizer(const json& c)
      : clean_text_(bool_or(c, "clean_text", true)),
        chinese_chars_(bool_or(c, "handle_chinese_chars", true)),
        lowercase_(bool_or(c, "lowercase", true)),
        strip_accents_(c.contains("strip_accents") && !c["strip_accents"].is_null() ? c["strip_accents"].get<bool>() : lowercase_) {}

  void normalize(NormalizedString& text) const override {
    if (clean_text_) {
      text.filter([](char32_t c) { return !(c == 0 || c == 0xFFFD || (c != '\t' && c != '\n' && c != '\r' && unicode::is_control_or_other(c))); });
      text.map([](char32_t c) { return c == '\t' || c == '\n' || c == '\r' || unicode::is_whitespace(c) ? U' ' : c; });
    }
    if (chinese_chars_) pad_chinese(text);
    if (strip_accents_) {
      text.normalize(static_cast<int>(unicode::Form::NFD));
      text.filter([](char32_t c) { return !unicode::is_nonspacing_mark(c); });
    }
    if (lowercase_) text.lowercase();
  }

 private:
  static void pad_chinese(NormalizedString& text) {
    const std::string& s = text.get();
    std::vector<Change> dest;
    bool any = false;
    for (size_t i = 0; i < s.size();) {
      const char32_t c = unicode::next(s, i);
      if (unicode::is_chinese(c)) {
        dest.insert(dest.end(), {{U' ', 0}, {c, 1}, {U' ', 1}});
        any = true;
      } else {
        dest.push_back({c, 0});
      }
    }
    if (any) text.transform(dest, 0);
  }

  bool clean_text_, chinese_chars_, lowercase_, strip_accents_;
};

class UnicodeForm final : public Normalizer {
 public:
  explicit UnicodeForm(unicode::Form form) : form_(form) {}
  void normalize(NormalizedString& text) const override { text.normalize(static_cast<int>(form_)); }

 private:
  unicode::Form form_;
};

class Lowercase final : public Normalizer {
 public:
  void normalize(NormalizedString& text) const override { text.lowercase(); }
};

// Removes every combining mark (HF's StripAccents; BERT's own accent stripping keeps Mc and Me).
class StripAccents final : public Normalizer {
 public:
  void normalize(NormalizedString& text) const override {
    text.filter([](char32_t c) { return !unicode::is_mark(c); });
  }
};

class Strip final : public Normalizer {
 public:
  explicit Strip(const json& c) : left_(bool_or(c, "strip_left", true)), right_(bool_or(c, "strip_right", true)) {}
  void normalize(NormalizedString& text) const override { text.strip(left_, right_); }

 private:
  bool left_, right_;
};

class Replace final : public Normalizer {
 public:
  explicit Replace(const json& c)
      : pattern_(parse_pattern(require(c, "pattern", "Replace"))), content_(require(c, "content", "Replace").get<std::string>()) {}
  void normalize(NormalizedString& text) const override { text.replace(pattern_.find_matches(text.get()), content_); }

 private:
  Regex pattern_;
  std::string content_;
};

class Prepend final : public Normalizer {
 public:
  explicit Prepend(const json& c) : prefix_(require(c, "prepend", "Prepend").get<std::string>()) {}
  void normalize(NormalizedString& text) const override { text.prepend(prefix_); }

 private:
  std::string prefix_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(const json& c) {
    for (const json& item : require(c, "normalizers", "Sequence normalizer")) steps_.push_back(make_normalizer(item));
  }
  void normalize(NormalizedString& text) const override {
    for (const auto& step : steps_) step->normalize(text);
  }

 private:
  std::vector<std::shared_ptr<const Normalizer>> steps_;
};

using Builder = std::function<std::shared_ptr<const Normalizer>(const json&)>;

const std::map<std::string, Builder>& registry() {
  static const std::map<std::string, Builder> builders = {
      {"BertNormalizer", [](const json& c) { return std::make_shared<BertNormalizer>(c); }},
      {"NFC", [](const json&) { return std::make_shared<UnicodeForm>(unicode::Form::NFC); }},
      {"NFD", [](const json&) { return std::make_shared<UnicodeForm>(unicode::Form::NFD); }},
      {"NFKC", [](const json&) { return std::make_shared<UnicodeForm>(unicode::Form::NFKC); }},
      {"NFKD", [](const json&) { return std::make_shared<UnicodeForm>(unicode::Form::NFKD); }},
      {"Lowercase", [](const json&) { return std::make_shared<Lowercase>(); }},
      {"StripAccents", [](const json&) { return std::make_shared<StripAccents>(); }},
      {"Strip", [](const json& c) { return std::make_shared<Strip>(c); }},
      {"Replace", [](const json& c) { return std::make_shared<Replace>(c); }},
      {"Prepend", [](const json& c) { return std::make_shared<Prepend>(c); }},
      {"Precompiled", make_precompiled},
      {"Sequence", [](const json& c) { return std::make_shared<SequenceNormalizer>(c); }},
  };
  return builders;
}

}  // namespace

Regex parse_pattern(const json& pattern) {
  if (pattern.is_object() && pattern.contains("String")) return Regex::literal(pattern["String"].get<std::string>());
  if (pattern.is_object() && pattern.contains("Regex")) return Regex(pattern["Regex"].get<std::string>());
  throw Error(str("tokenizer.json: \"pattern\" must be {\"String\": ...} or {\"Regex\": ...}, found ", pattern.dump()));
}

std::shared_ptr<const Normalizer> make_normalizer(const json& config) {
  const std::string type = require(config, "type", "normalizer").get<std::string>();
  const auto it = registry().find(type);
  if (it == registry().end()) throw Error(str("tokenizer.json: unsupported normalizer type \"", type, "\""));
  return it->second(config);
}

}  // namespace adapters::tokenizer
