// Post-processors of tokenizer.json (TemplateProcessing, BertProcessing, RobertaProcessing,
// ByteLevel, Sequence) and their registry.
#include <algorithm>
#include <functional>
#include <map>

#include "adapters/core/error.h"
#include "components.h"

namespace adapters::tokenizer {

namespace {

// An encoding made only of special tokens (HF's special-token pieces of a template).
Encoding special_encoding(const std::vector<uint32_t>& ids, const std::vector<std::string>& tokens, uint32_t type_id) {
  Encoding e;
  e.ids = ids;
  e.tokens = tokens;
  e.type_ids.assign(ids.size(), type_id);
  e.words.assign(ids.size(), std::nullopt);
  e.offsets.assign(ids.size(), {0, 0});
  e.special_tokens_mask.assign(ids.size(), 1);
  e.attention_mask.assign(ids.size(), 1);
  return e;
}

// Wraps `e` (and its overflowing parts) between special tokens, as Bert/Roberta processing do. The
// special tokens are inserted into `e`, whose tokens are not copied.
Encoding wrap(Encoding e, const std::pair<std::string, uint32_t>* before, const std::pair<std::string, uint32_t>& after,
              uint32_t before_type, uint32_t after_type, size_t sequence_id) {
  std::vector<Encoding> overflowing = std::move(e.overflowing);
  e.overflowing.clear();
  if (before) insert_tokens(e, 0, special_encoding({before->second}, {before->first}, before_type));
  insert_tokens(e, e.size(), special_encoding({after.second}, {after.first}, after_type));
  e.sequence_ranges = {{sequence_id, {before ? 1 : 0, e.size() - 1}}};
  for (Encoding& o : overflowing) e.overflowing.push_back(wrap(std::move(o), before, after, before_type, after_type, sequence_id));
  return e;
}

std::pair<std::string, uint32_t> token_pair(const json& c, const char* key, const char* where) {
  const json& v = require(c, key, where);
  if (!v.is_array() || v.size() != 2) throw Error(str("tokenizer.json: ", where, " \"", key, "\" must be [token, id], found ", v.dump()));
  return {v[0].get<std::string>(), v[1].get<uint32_t>()};
}

class BertProcessing final : public PostProcessor {
 public:
  explicit BertProcessing(const json& c) : sep_(token_pair(c, "sep", "BertProcessing")), cls_(token_pair(c, "cls", "BertProcessing")) {}
  size_t added_tokens(bool is_pair) const override { return is_pair ? 3 : 2; }
  std::vector<Encoding> process_encodings(std::vector<Encoding> encodings, bool add_special_tokens) const override {
    if (!add_special_tokens) return encodings;
    std::vector<Encoding> out;
    for (size_t i = 0; i < encodings.size(); ++i) {
      out.push_back(i == 0 ? wrap(std::move(encodings[i]), &cls_, sep_, 0, 0, 0) : wrap(std::move(encodings[i]), nullptr, sep_, 0, 1, 1));
    }
    return out;
  }

 private:
  std::pair<std::string, uint32_t> sep_, cls_;
};

class RobertaProcessing final : public PostProcessor {
 public:
  explicit RobertaProcessing(const json& c)
      : sep_(token_pair(c, "sep", "RobertaProcessing")),
        cls_(token_pair(c, "cls", "RobertaProcessing")),
        trim_offsets_(bool_or(c, "trim_offsets", true)),
        add_prefix_space_(bool_or(c, "add_prefix_space", true)) {}
  size_t added_tokens(bool is_pair) const override { return is_pair ? 4 : 2; }
  std::vector<Encoding> process_encodings(std::vector<Encoding> encodings, bool add_special_tokens) const override {
    for (Encoding& e : encodings) {
      if (trim_offsets_) {
        trim_byte_level_offsets(e, add_prefix_space_);
        for (Encoding& o : e.overflowing) trim_byte_level_offsets(o, add_prefix_space_);
      }
      e.set_type_ids(0);
      for (Encoding& o : e.overflowing) o.set_type_ids(0);
    }
    if (!add_special_tokens) return encodings;
    std::vector<Encoding> out;
    for (size_t i = 0; i < encodings.size(); ++i) out.push_back(wrap(std::move(encodings[i]), i == 0 ? &cls_ : &sep_, sep_, 0, 0, i));
    return out;
  }

 private:
  std::pair<std::string, uint32_t> sep_, cls_;
  bool trim_offsets_, add_prefix_space_;
};

class ByteLevelProcessing final : public PostProcessor {
 public:
  explicit ByteLevelProcessing(const json& c)
      : trim_offsets_(bool_or(c, "trim_offsets", true)), add_prefix_space_(bool_or(c, "add_prefix_space", true)) {}
  size_t added_tokens(bool) const override { return 0; }
  std::vector<Encoding> process_encodings(std::vector<Encoding> encodings, bool) const override {
    for (size_t i = 0; i < encodings.size(); ++i) {
      Encoding& e = encodings[i];
      if (trim_offsets_) {
        trim_byte_level_offsets(e, add_prefix_space_);
        for (Encoding& o : e.overflowing) trim_byte_level_offsets(o, add_prefix_space_);
      }
      e.set_sequence_id(i);
    }
    return encodings;
  }

 private:
  bool trim_offsets_, add_prefix_space_;
};

class TemplateProcessing final : public PostProcessor {
 public:
  struct Piece {
    bool is_sequence;
    std::string id;  // "A"/"B" for sequences, the special token name otherwise
    uint32_t type_id;
  };
  struct Special {
    std::vector<uint32_t> ids;
    std::vector<std::string> tokens;
  };

  explicit TemplateProcessing(const json& c) {
    for (const auto& [name, value] : require(c, "special_tokens", "TemplateProcessing").items()) {
      specials_[name] = Special{value.at("ids").get<std::vector<uint32_t>>(), value.at("tokens").get<std::vector<std::string>>()};
    }
    single_ = parse_template(require(c, "single", "TemplateProcessing"));
    pair_ = parse_template(require(c, "pair", "TemplateProcessing"));
  }

  size_t added_tokens(bool is_pair) const override {
    size_t n = 0;
    for (const Piece& p : is_pair ? pair_ : single_) {
      if (!p.is_sequence) n += specials_.at(p.id).ids.size();
    }
    return n;
  }

  std::vector<Encoding> process_encodings(std::vector<Encoding> encodings, bool add_special_tokens) const override {
    std::vector<Encoding> out;
    const std::vector<Piece>& pieces = encodings.size() == 2 ? pair_ : single_;
    for (auto p = pieces.begin(); p != pieces.end(); ++p) {
      if (p->is_sequence) {
        const size_t i = p->id == "A" ? 0 : 1;
        if (i >= encodings.size()) throw Error("TemplateProcessing: the single template uses the pair sequence $B");
        const bool used_again = std::any_of(p + 1, pieces.end(), [&](const Piece& later) { return later.is_sequence && later.id == p->id; });
        Encoding e = used_again ? encodings[i] : std::move(encodings[i]);
        e.set_type_ids(p->type_id);
        for (Encoding& o : e.overflowing) o.set_type_ids(p->type_id);
        e.set_sequence_id(i);
        out.push_back(std::move(e));
      } else if (add_special_tokens) {
        const Special& s = specials_.at(p->id);
        out.push_back(special_encoding(s.ids, s.tokens, p->type_id));
      }
    }
    return out;
  }

 private:
  std::vector<Piece> parse_template(const json& pieces) const {
    std::vector<Piece> out;
    for (const json& p : pieces) {
      if (p.contains("Sequence")) {
        out.push_back({true, p["Sequence"].at("id").get<std::string>(), p["Sequence"].at("type_id").get<uint32_t>()});
      } else if (p.contains("SpecialToken")) {
        const std::string id = p["SpecialToken"].at("id").get<std::string>();
        if (!specials_.count(id)) throw Error(str("tokenizer.json: TemplateProcessing uses the special token \"", id, "\" missing from \"special_tokens\""));
        out.push_back({false, id, p["SpecialToken"].at("type_id").get<uint32_t>()});
      } else {
        throw Error(str("tokenizer.json: a template piece must be {\"Sequence\": ...} or {\"SpecialToken\": ...}, found ", p.dump()));
      }
    }
    return out;
  }

  std::map<std::string, Special> specials_;
  std::vector<Piece> single_, pair_;
};

class SequenceProcessor final : public PostProcessor {
 public:
  explicit SequenceProcessor(const json& c) {
    for (const json& item : require(c, "processors", "Sequence post_processor")) steps_.push_back(make_post_processor(item));
  }
  size_t added_tokens(bool is_pair) const override {
    size_t n = 0;
    for (const auto& s : steps_) n += s->added_tokens(is_pair);
    return n;
  }
  std::vector<Encoding> process_encodings(std::vector<Encoding> encodings, bool add_special_tokens) const override {
    for (const auto& s : steps_) encodings = s->process_encodings(std::move(encodings), add_special_tokens);
    return encodings;
  }

 private:
  std::vector<std::shared_ptr<const PostProcessor>> steps_;
};

using Builder = std::function<std::shared_ptr<const PostProcessor>(const json&)>;

const std::map<std::string, Builder>& registry() {
  static const std::map<std::string, Builder> builders = {
      {"TemplateProcessing", [](const json& c) { return std::make_shared<TemplateProcessing>(c); }},
      {"BertProcessing", [](const json& c) { return std::make_shared<BertProcessing>(c); }},
      {"RobertaProcessing", [](const json& c) { return std::make_shared<RobertaProcessing>(c); }},
      {"ByteLevel", [](const json& c) { return std::make_shared<ByteLevelProcessing>(c); }},
      {"Sequence", [](const json& c) { return std::make_shared<SequenceProcessor>(c); }},
  };
  return builders;
}

}  // namespace

std::shared_ptr<const PostProcessor> make_post_processor(const json& config) {
  const std::string type = require(config, "type", "post_processor").get<std::string>();
  const auto it = registry().find(type);
  if (it == registry().end()) throw Error(str("tokenizer.json: unsupported post_processor type \"", type, "\""));
  return it->second(config);
}

}  // namespace adapters::tokenizer
