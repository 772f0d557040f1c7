// AutoTokenizer-style loading of a model folder: tokenizer.json, or the older files — vocab.txt
// (BERT WordPiece), vocab.json + merges.txt (GPT-2 / RoBERTa byte-level BPE) and SentencePiece
// .model files — turned into the same pipeline transformers' fast converters build.
#include <sentencepiece_processor.h>

#include <fstream>
#include <sstream>

#include "adapters/core/error.h"
#include "adapters/tokenizer/tokenizer.h"
#include "components.h"
#include "models.h"

namespace adapters::tokenizer {

namespace fs = std::filesystem;

namespace {

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(str("cannot read ", path.string()));
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

json read_json_or_empty(const fs::path& path) {
  if (!fs::exists(path)) return json::object();
  json doc = json::parse(read_text(path), nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) throw Error(str(path.string(), ": expected a JSON object"));
  return doc;
}

// tokenizer_config.json overlaid with special_tokens_map.json.
json read_config(const fs::path& folder) {
  json config = read_json_or_empty(folder / "tokenizer_config.json");
  const json special_tokens = read_json_or_empty(folder / "special_tokens_map.json");
  for (const auto& [key, value] : special_tokens.items()) config[key] = value;
  return config;
}

// A special token entry of a config: "text" or {"content": "text", "lstrip": ...}.
std::optional<AddedToken> config_token(const json& config, const char* key) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  AddedToken t;
  t.special = true;
  t.normalized = false;
  if (it->is_string()) {
    t.content = it->get<std::string>();
  } else {
    t.content = require(*it, "content", key).get<std::string>();
    t.lstrip = bool_or(*it, "lstrip", false);
    t.rstrip = bool_or(*it, "rstrip", false);
    t.single_word = bool_or(*it, "single_word", false);
  }
  return t;
}

std::string token_or(const json& config, const char* key, const std::string& fallback) {
  const auto t = config_token(config, key);
  return t ? t->content : fallback;
}

json added_tokens(const json& config, const json& vocab, const std::vector<const char*>& keys) {
  json list = json::array();
  std::vector<std::string> seen;
  for (const char* key : keys) {
    const auto t = config_token(config, key);
    if (!t || !vocab.contains(t->content) || std::find(seen.begin(), seen.end(), t->content) != seen.end()) continue;
    seen.push_back(t->content);
    list.push_back({{"id", vocab[t->content]}, {"content", t->content}, {"single_word", t->single_word}, {"lstrip", t->lstrip},
                    {"rstrip", t->rstrip}, {"normalized", false}, {"special", true}});
  }
  return list;
}

json template_processor(const std::vector<std::string>& single, const std::vector<std::string>& pair, const json& special_tokens) {
  auto pieces = [](const std::vector<std::string>& names) {
    json out = json::array();
    for (const std::string& n : names) {
      const size_t colon = n.find(':');
      const std::string id = n.substr(0, colon);
      const uint32_t type_id = colon == std::string::npos ? 0 : static_cast<uint32_t>(std::stoul(n.substr(colon + 1)));
      if (id == "$A" || id == "$B") out.push_back({{"Sequence", {{"id", id.substr(1)}, {"type_id", type_id}}}});
      else out.push_back({{"SpecialToken", {{"id", id}, {"type_id", type_id}}}});
    }
    return out;
  };
  return {{"type", "TemplateProcessing"}, {"single", pieces(single)}, {"pair", pieces(pair)}, {"special_tokens", special_tokens}};
}

json bert_document(const fs::path& folder) {
  const json config = read_config(folder);
  json vocab = json::object();
  std::istringstream lines(read_text(folder / "vocab.txt"));
  std::string line;
  for (uint32_t id = 0; std::getline(lines, line); ++id) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!vocab.contains(line)) vocab[line] = id;
  }
  const std::string cls = token_or(config, "cls_token", "[CLS]"), sep = token_or(config, "sep_token", "[SEP]");
  for (const std::string& t : {cls, sep}) {
    if (!vocab.contains(t)) throw Error(str((folder / "vocab.txt").string(), ": the special token \"", t, "\" is not in the vocabulary"));
  }
  const bool lowercase = config.value("do_lower_case", true);
  const json specials = {{cls, {{"id", cls}, {"ids", {vocab[cls]}}, {"tokens", {cls}}}}, {sep, {{"id", sep}, {"ids", {vocab[sep]}}, {"tokens", {sep}}}}};
  return {
      {"added_tokens", added_tokens(config, vocab, {"pad_token", "unk_token", "cls_token", "sep_token", "mask_token"})},
      {"normalizer", {{"type", "BertNormalizer"}, {"clean_text", true}, {"handle_chinese_chars", config.value("tokenize_chinese_chars", true)},
                      {"strip_accents", config.contains("strip_accents") ? config["strip_accents"] : json()}, {"lowercase", lowercase}}},
      {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
      {"post_processor", template_processor({cls, "$A", sep}, {cls, "$A", sep, "$B:1", sep + ":1"}, specials)},
      {"decoder", {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}},
      {"model", {{"type", "WordPiece"}, {"unk_token", token_or(config, "unk_token", "[UNK]")}, {"continuing_subword_prefix", "##"},
                 {"max_input_chars_per_word", 100}, {"vocab", vocab}}},
  };
}

json byte_level_bpe_document(const fs::path& folder) {
  const json config = read_config(folder);
  const json vocab = json::parse(read_text(folder / "vocab.json"), nullptr, false);
  if (vocab.is_discarded() || !vocab.is_object()) throw Error(str((folder / "vocab.json").string(), ": expected a JSON object of token: id"));
  json merges = json::array();
  std::istringstream lines(read_text(folder / "merges.txt"));
  std::string line;
  while (std::getline(lines, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    const auto [a, b] = split_merge_line(line);
    merges.push_back({a, b});
  }
  const bool prefix_space = config.value("add_prefix_space", false);
  const bool roberta = config.value("tokenizer_class", "") == "RobertaTokenizer";
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", prefix_space}, {"trim_offsets", true}, {"use_regex", true}};
  json doc = {
      {"added_tokens", added_tokens(config, vocab, {"bos_token", "pad_token", "eos_token", "unk_token", "sep_token", "cls_token", "mask_token"})},
      {"pre_tokenizer", byte_level},
      {"decoder", byte_level},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
  };
  if (roberta) {
    const std::string sep = token_or(config, "sep_token", "</s>"), cls = token_or(config, "cls_token", "<s>");
    doc["post_processor"] = {{"type", "RobertaProcessing"}, {"sep", {sep, vocab.value(sep, 2)}}, {"cls", {cls, vocab.value(cls, 0)}},
                             {"trim_offsets", config.value("trim_offsets", true)}, {"add_prefix_space", prefix_space}};
  } else {
    doc["post_processor"] = {{"type", "ByteLevel"}, {"add_prefix_space", prefix_space}, {"trim_offsets", false}, {"use_regex", true}};
  }
  return doc;
}

// A SentencePiece model run by libsentencepiece on the whole text, offsets from its spans.
class SentencePieceModel final : public Model {
 public:
  explicit SentencePieceModel(const fs::path& file) {
    const auto status = processor_.Load(file.string());
    if (!status.ok()) throw Error(str("cannot load SentencePiece model ", file.string(), ": ", status.ToString()));
  }
  std::vector<Token> tokenize(const std::string& text) const override {
    std::vector<Token> tokens;
    const auto encoded = processor_.EncodeAsImmutableProto(text);
    for (const auto& piece : encoded.pieces()) {
      tokens.push_back(Token{piece.id(), piece.piece(), {piece.begin(), piece.end()}});
    }
    return tokens;
  }
  std::optional<uint32_t> token_to_id(const std::string& token) const override {
    const int id = processor_.PieceToId(token);
    return id == processor_.unk_id() && token != processor_.IdToPiece(id) ? std::nullopt : std::optional<uint32_t>(id);
  }
  std::optional<std::string> id_to_token(uint32_t id) const override {
    return static_cast<int>(id) < processor_.GetPieceSize() ? std::optional<std::string>(processor_.IdToPiece(static_cast<int>(id))) : std::nullopt;
  }
  size_t vocab_size() const override { return static_cast<size_t>(processor_.GetPieceSize()); }
  bool is_control(uint32_t id) const { return processor_.IsControl(static_cast<int>(id)); }

 private:
  sentencepiece::SentencePieceProcessor processor_;
};

Tokenizer sentencepiece_tokenizer(const fs::path& folder, const fs::path& model_file) {
  const json config = read_config(folder);
  auto model = std::make_shared<SentencePieceModel>(model_file);
  Pipeline p;
  p.model = model;
  json specials = json::object();
  std::vector<std::string> single, pair;
  auto special = [&](const char* key, const char* flag, bool default_on, std::vector<std::string>& into, const std::string& suffix) {
    const std::string token = token_or(config, key, "");
    const auto id = token.empty() ? std::nullopt : model->token_to_id(token);
    if (!id || !config.value(flag, default_on)) return;
    specials[token] = {{"id", token}, {"ids", {*id}}, {"tokens", {token}}};
    into.push_back(token + suffix);
  };
  special("bos_token", "add_bos_token", true, single, "");
  single.push_back("$A");
  special("eos_token", "add_eos_token", false, single, "");
  special("bos_token", "add_bos_token", true, pair, "");
  pair.push_back("$A");
  special("eos_token", "add_eos_token", false, pair, "");
  special("bos_token", "add_bos_token", true, pair, ":1");
  pair.push_back("$B:1");
  special("eos_token", "add_eos_token", false, pair, ":1");
  p.post_processor = make_post_processor(template_processor(single, pair, specials));
  p.decoder = make_decoder({{"type", "Sequence"}, {"decoders", {{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                                                                  {{"type", "ByteFallback"}}, {{"type", "Fuse"}},
                                                                  {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}});
  for (uint32_t id = 0; id < model->vocab_size(); ++id) {
    if (!model->is_control(id)) continue;
    AddedToken t;
    t.content = *model->id_to_token(id);
    t.id = id;
    t.special = true;
    t.normalized = false;
    p.added_tokens.push_back(t);
  }
  return Tokenizer(std::move(p));
}

std::optional<fs::path> find_sentencepiece_model(const fs::path& folder) {
  for (const char* name : {"tokenizer.model", "spiece.model", "sentencepiece.bpe.model"}) {
    if (fs::exists(folder / name)) return folder / name;
  }
  for (const auto& entry : fs::directory_iterator(folder)) {
    if (entry.path().extension() == ".model") return entry.path();
  }
  return std::nullopt;
}

}  // namespace

Tokenizer Tokenizer::from_pretrained(const fs::path& folder) {
  if (!fs::is_directory(folder)) throw Error(str("model folder ", folder.string(), " does not exist or is not a directory"));
  if (fs::exists(folder / "tokenizer.json")) return from_file(folder / "tokenizer.json");
  try {
    if (fs::exists(folder / "vocab.txt")) return from_json(bert_document(folder).dump());
    if (fs::exists(folder / "vocab.json") && fs::exists(folder / "merges.txt")) return from_json(byte_level_bpe_document(folder).dump());
    if (const auto model = find_sentencepiece_model(folder)) return sentencepiece_tokenizer(folder, *model);
  } catch (const json::exception& e) {
    throw Error(str(folder.string(), ": malformed tokenizer files: ", e.what()));
  }
  throw Error(str("model folder ", folder.string(),
                  " has no tokenizer: expected tokenizer.json, vocab.txt, vocab.json with merges.txt, or a SentencePiece .model"));
}

}  // namespace adapters::tokenizer
