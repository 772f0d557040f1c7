// Parsing of adapter config strings ("name[key=value,...]") and of saved configs.
#include "adapters/methods/adapter_config.h"

#include <cctype>
#include <cstdlib>

#include "adapters/methods/registry.h"

namespace adapters::methods {
namespace {

// A small reader of Python/JSON literals as they appear in config strings.
class LiteralParser {
 public:
  LiteralParser(const std::string& text, std::string context) : text_(text), context_(std::move(context)) {}

  json parse_all() {
    json v = parse_value();
    skip_space();
    if (pos_ != text_.size()) fail("unexpected text '" + text_.substr(pos_) + "'");
    return v;
  }

 private:
  const std::string& text_;
  std::string context_;
  std::size_t pos_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(str(context_, ": cannot read value \"", text_, "\": ", what));
  }
  void skip_space() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }
  bool take(char c) {
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  json parse_value() {
    skip_space();
    if (pos_ >= text_.size()) fail("missing value");
    char c = text_[pos_];
    if (c == '[') return parse_sequence('[', ']');
    if (c == '(') return parse_sequence('(', ')');
    if (c == '{') return parse_mapping();
    if (c == '\'' || c == '"') return parse_quoted();
    return parse_word();
  }

  json parse_sequence(char open, char close) {
    take(open);
    json list = json::array();
    if (take(close)) return list;
    do {
      list.push_back(parse_value());
    } while (take(','));
    if (!take(close)) fail(str("expected '", close, "'"));
    return list;
  }

  json parse_mapping() {
    take('{');
    json object = json::object();
    if (take('}')) return object;
    do {
      json key = parse_value();
      if (!take(':')) fail("expected ':' in a mapping");
      object[key.is_string() ? key.get<std::string>() : key.dump()] = parse_value();
    } while (take(','));
    if (!take('}')) fail("expected '}'");
    return object;
  }

  json parse_quoted() {
    char quote = text_[pos_++];
    std::string out;
    while (pos_ < text_.size() && text_[pos_] != quote) out += text_[pos_++];
    if (pos_ >= text_.size()) fail("unterminated string");
    ++pos_;
    return out;
  }

  json parse_word() {
    std::size_t start = pos_;
    while (pos_ < text_.size() && std::string(",:]})").find(text_[pos_]) == std::string::npos) ++pos_;
    std::string word = text_.substr(start, pos_ - start);
    while (!word.empty() && std::isspace(static_cast<unsigned char>(word.back()))) word.pop_back();
    if (word.empty()) fail("missing value");
    if (word == "true" || word == "True") return true;
    if (word == "false" || word == "False") return false;
    if (word == "null" || word == "None") return nullptr;
    char* end = nullptr;
    long long i = std::strtoll(word.c_str(), &end, 10);
    if (*end == '\0') return static_cast<std::int64_t>(i);
    double d = std::strtod(word.c_str(), &end);
    if (*end == '\0') return d;
    return word;
  }
};

// Splits "a=1,b=[1,2],c={'x': 1}" at top-level commas.
std::vector<std::string> split_options(const std::string& body) {
  std::vector<std::string> parts;
  int depth = 0;
  char quote = 0;
  std::string current;
  for (char c : body) {
    if (quote) {
      if (c == quote) quote = 0;
    } else if (c == '\'' || c == '"') {
      quote = c;
    } else if (c == '[' || c == '(' || c == '{') {
      ++depth;
    } else if (c == ']' || c == ')' || c == '}') {
      --depth;
    } else if (c == ',' && depth == 0) {
      parts.push_back(current);
      current.clear();
      continue;
    }
    current += c;
  }
  if (!current.empty()) parts.push_back(current);
  return parts;
}

std::string trim(const std::string& s) {
  std::size_t b = s.find_first_not_of(" \t\n");
  std::size_t e = s.find_last_not_of(" \t\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

}  // namespace

json parse_option_value(const std::string& text, const std::string& context) {
  return LiteralParser(text, context).parse_all();
}

namespace {

// Top-level '|' splits a union string ("prefix_tuning|par_bn[reduction_factor=4]").
std::vector<std::string> split_union(const std::string& text) {
  std::vector<std::string> parts;
  int depth = 0;
  std::string current;
  for (char c : text) {
    if (c == '[' || c == '(' || c == '{') ++depth;
    if (c == ']' || c == ')' || c == '}') --depth;
    if (c == '|' && depth == 0) {
      parts.push_back(current);
      current.clear();
      continue;
    }
    current += c;
  }
  parts.push_back(current);
  return parts;
}

// Overrides of a union preset go to every member that has the option ("mam[bottleneck_size=64]").
void apply_union_overrides(json& union_config, const json& overrides, const std::string& spec) {
  for (auto it = overrides.begin(); it != overrides.end(); ++it) {
    bool applied = false;
    for (auto& member : union_config.at("configs")) {
      if (member.contains(it.key())) {
        member[it.key()] = it.value();
        applied = true;
      }
    }
    ADAPTERS_CHECK(applied, "adapter config \"", spec, "\": no member of the union has the option '", it.key(), "'");
  }
}

}  // namespace

AdapterConfig AdapterConfig::parse(const std::string& spec) {
  const std::string text = trim(spec);
  const std::vector<std::string> members = split_union(text);
  if (members.size() > 1) {
    json configs = json::array();
    for (const auto& m : members) configs.push_back(parse(m).values);
    const MethodSpec& u = method_spec("union");
    return {u.name, u.normalize(json{{"architecture", "union"}, {"configs", configs}}, "adapter config \"" + spec + "\"")};
  }
  std::size_t open = text.find_first_of("[(");
  std::string name = trim(text.substr(0, open));
  json overrides = json::object();
  if (open != std::string::npos) {
    char close = text[open] == '[' ? ']' : ')';
    ADAPTERS_CHECK(text.back() == close, "adapter config \"", spec, "\": expected '", close, "' at the end");
    for (const auto& part : split_options(text.substr(open + 1, text.size() - open - 2))) {
      std::size_t eq = part.find('=');
      ADAPTERS_CHECK(eq != std::string::npos, "adapter config \"", spec, "\": expected key=value, found \"",
                     trim(part), "\"");
      std::string key = trim(part.substr(0, eq));
      overrides[key] = parse_option_value(part.substr(eq + 1), str("adapter config \"", spec, "\" option '", key, "'"));
    }
  }
  json preset;
  const MethodSpec* method = find_preset(name, &preset);
  if (method == nullptr) {
    std::string known;
    for (const auto& p : preset_names()) known += (known.empty() ? "" : ", ") + p;
    throw Error(str("adapter config \"", spec, "\": unknown config name '", name, "'"), "known: " + known);
  }
  json options = preset;
  if (method->name == "union") {
    apply_union_overrides(options, overrides, spec);
  } else {
    for (auto it = overrides.begin(); it != overrides.end(); ++it) options[it.key()] = it.value();
  }
  return {method->name, method->normalize(options, str("adapter config \"", spec, "\""))};
}

AdapterConfig AdapterConfig::from_json(const json& config, const std::string& source) {
  ADAPTERS_CHECK(config.is_object(), source, ": expected an adapter config object, found ", describe(config));
  json architecture = config.contains("architecture") ? config.at("architecture") : json();
  const MethodSpec& method = method_for_architecture(architecture, source);
  return {method.name, method.normalize(config, source)};
}

}  // namespace adapters::methods
