// Decoders of tokenizer.json (ByteLevel, WordPiece, Metaspace, BPEDecoder, ByteFallback, Fuse,
// Strip, Replace, Sequence) and their registry.
#include <functional>
#include <map>

#include "adapters/core/error.h"
#include "components.h"

namespace adapters::tokenizer {

namespace {

std::vector<char32_t> chars_of(const std::string& s) {
  std::vector<char32_t> out;
  for (size_t i = 0; i < s.size();) out.push_back(unicode::next(s, i));
  return out;
}

std::string join(const std::vector<char32_t>& chars, size_t begin, size_t end) {
  std::string out;
  for (size_t i = begin; i < end; ++i) unicode::append(out, chars[i]);
  return out;
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return;
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size())) s.replace(pos, from.size(), to);
}

class ByteLevelDecoder final : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::string bytes;
    for (const std::string& token : tokens) {
      std::string mapped;
      bool all_mapped = true;
      for (char32_t c : chars_of(token)) {
        const auto b = char_to_byte(c);
        if (!b) {
          all_mapped = false;
          break;
        }
        mapped.push_back(static_cast<char>(*b));
      }
      bytes += all_mapped ? mapped : token;
    }
    return {unicode::repair(bytes)};
  }
};

class WordPieceDecoder final : public Decoder {
 public:
  explicit WordPieceDecoder(const json& c) : prefix_(string_or(c, "prefix", "##")), cleanup_(bool_or(c, "cleanup", true)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      if (i != 0) {
        if (t.compare(0, prefix_.size(), prefix_) == 0) t.erase(0, prefix_.size());
        else t.insert(0, " ");
      }
      if (cleanup_) cleanup(t);
    }
    return tokens;
  }

 private:
  static void cleanup(std::string& s) {
    static const std::vector<std::pair<std::string, std::string>> rules = {
        {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
        {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
    for (const auto& [from, to] : rules) replace_all(s, from, to);
  }

  std::string prefix_;
  bool cleanup_;
};

class MetaspaceDecoder final : public Decoder {
 public:
  explicit MetaspaceDecoder(const json& c) {
    const std::string r = string_or(c, "replacement", "\u2581");
    size_t i = 0;
    replacement_ = unicode::next(r, i);
    strip_first_ = c.contains("prepend_scheme") ? c["prepend_scheme"].get<std::string>() != "never" : bool_or(c, "add_prefix_space", true);
  }
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      for (char32_t c : chars_of(tokens[i])) {
        if (c != replacement_) unicode::append(out, c);
        else if (!(i == 0 && strip_first_)) out += ' ';
      }
      tokens[i] = std::move(out);
    }
    return tokens;
  }

 private:
  char32_t replacement_ = 0x2581;
  bool strip_first_ = true;
};

class BpeDecoder final : public Decoder {
 public:
  explicit BpeDecoder(const json& c) : suffix_(string_or(c, "suffix", "</w>")) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) replace_all(tokens[i], suffix_, i + 1 == tokens.size() ? "" : " ");
    return tokens;
  }

 private:
  std::string suffix_;
};

class ByteFallbackDecoder final : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&]() {
      if (pending.empty()) return;
      if (unicode::is_valid(pending)) out.push_back(pending);
      else for (size_t k = 0; k < pending.size(); ++k) out.push_back("\uFFFD");
      pending.clear();
    };
    for (std::string& t : tokens) {
      if (const auto byte = parse_byte(t)) {
        pending.push_back(static_cast<char>(*byte));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    return out;
  }

 private:
  static std::optional<unsigned char> parse_byte(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return std::nullopt;
    char* end = nullptr;
    const std::string hex = t.substr(3, 2);
    const long value = std::strtol(hex.c_str(), &end, 16);
    if (end != hex.c_str() + 2) return std::nullopt;
    return static_cast<unsigned char>(value);
  }
};

class FuseDecoder final : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    return {all};
  }
};

class StripDecoder final : public Decoder {
 public:
  explicit StripDecoder(const json& c)
      : start_(c.value("start", size_t{0})), stop_(c.value("stop", size_t{0})) {
    const std::string content = require(c, "content", "Strip decoder").get<std::string>();
    size_t i = 0;
    content_ = content.empty() ? 0 : unicode::next(content, i);
  }
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (std::string& t : tokens) {
      const std::vector<char32_t> chars = chars_of(t);
      size_t begin = 0, end = chars.size();
      while (begin < std::min(start_, chars.size()) && chars[begin] == content_) ++begin;
      for (size_t k = 0; k < stop_ && end > begin && chars[end - 1] == content_; ++k) --end;
      t = join(chars, begin, end);
    }
    return tokens;
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class ReplaceDecoder final : public Decoder {
 public:
  explicit ReplaceDecoder(const json& c)
      : pattern_(parse_pattern(require(c, "pattern", "Replace decoder"))), content_(require(c, "content", "Replace decoder").get<std::string>()) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (std::string& t : tokens) {
      std::string out;
      for (const Match& m : pattern_.find_matches(t)) out += m.is_match ? content_ : t.substr(m.range.first, m.range.second - m.range.first);
      t = std::move(out);
    }
    return tokens;
  }

 private:
  Regex pattern_;
  std::string content_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(const json& c) {
    for (const json& item : require(c, "decoders", "Sequence decoder")) steps_.push_back(make_decoder(item));
  }
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (const auto& s : steps_) tokens = s->decode_chain(std::move(tokens));
    return tokens;
  }

 private:
  std::vector<std::shared_ptr<const Decoder>> steps_;
};

using Builder = std::function<std::shared_ptr<const Decoder>(const json&)>;

const std::map<std::string, Builder>& registry() {
  static const std::map<std::string, Builder> builders = {
      {"ByteLevel", [](const json&) { return std::make_shared<ByteLevelDecoder>(); }},
      {"WordPiece", [](const json& c) { return std::make_shared<WordPieceDecoder>(c); }},
      {"Metaspace", [](const json& c) { return std::make_shared<MetaspaceDecoder>(c); }},
      {"BPEDecoder", [](const json& c) { return std::make_shared<BpeDecoder>(c); }},
      {"ByteFallback", [](const json&) { return std::make_shared<ByteFallbackDecoder>(); }},
      {"Fuse", [](const json&) { return std::make_shared<FuseDecoder>(); }},
      {"Strip", [](const json& c) { return std::make_shared<StripDecoder>(c); }},
      {"Replace", [](const json& c) { return std::make_shared<ReplaceDecoder>(c); }},
      {"Sequence", [](const json& c) { return std::make_shared<SequenceDecoder>(c); }},
  };
  return builders;
}

}  // namespace

std::shared_ptr<const Decoder> make_decoder(const json& config) {
  const std::string type = require(config, "type", "decoder").get<std::string>();
  const auto it = registry().find(type);
  if (it == registry().end()) throw Error(str("tokenizer.json: unsupported decoder type \"", type, "\""));
  return it->second(config);
}

}  // namespace adapters::tokenizer
