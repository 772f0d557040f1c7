// AutoTokenizer-style loading of a model folder: tokenizer.json, or the older files — vocab.txt
// (BERT WordPiece), vocab.json + merges.txt (GPT-2 / RoBERTa byte-level BPE) and SentencePiece
// .model files, read natively — turned into the same pipeline transformers' fast converters build.
#include <algorithm>
#include <fstream>
#include <sstream>
#include <tuple>
#include <unordered_map>

#include "adapters/core/error.h"
#include "adapters/core/json_parse.h"
#include "adapters/tokenizer/tokenizer.h"
#include "components.h"
#include "base64.h"
#include "models.h"
#include "sentencepiece_model.h"
#include "unicode.h"

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
  std::optional<json> doc = try_parse_json(read_text(path));
  if (!doc || !doc->is_object()) throw Error(str(path.string(), ": expected a JSON object (nested at most ", kMaxJsonDepth, " levels)"));
  return std::move(*doc);
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
  const json vocab = try_parse_json(read_text(folder / "vocab.json")).value_or(json());
  if (!vocab.is_object()) throw Error(str((folder / "vocab.json").string(), ": expected a JSON object of token: id"));
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

// HF's merges of a SentencePiece BPE vocabulary (SentencePieceExtractor): every split of a piece
// into two pieces of the vocabulary, by piece score (highest first), then by the ids of the two
// halves.
json sentencepiece_merges(const SentencePieceModelProto& model) {
  std::unordered_map<std::string, size_t> ids;
  for (size_t id = 0; id < model.pieces.size(); ++id) ids.emplace(model.pieces[id].piece, id);
  struct Merge {
    size_t left, right;
    float score;
  };
  std::vector<Merge> merges;
  for (const auto& piece : model.pieces) {
    std::vector<Merge> local;
    const std::string& p = piece.piece;
    for (size_t cut = unicode::sequence_length(static_cast<unsigned char>(p[0])); cut < p.size();
         cut += unicode::sequence_length(static_cast<unsigned char>(p[cut]))) {
      const auto left = ids.find(p.substr(0, cut)), right = ids.find(p.substr(cut));
      if (left != ids.end() && right != ids.end()) local.push_back({left->second, right->second, piece.score});
    }
    std::sort(local.begin(), local.end(), [](const Merge& a, const Merge& b) { return std::tie(a.left, a.right) < std::tie(b.left, b.right); });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) { return a.score > b.score; });
  json out = json::array();
  for (const Merge& m : merges) out.push_back({model.pieces[m.left].piece, model.pieces[m.right].piece});
  return out;
}

json sentencepiece_model_json(const SentencePieceModelProto& model) {
  if (model.model_type == SentencePieceModelProto::ModelType::Unigram) {
    json vocab = json::array();
    for (const auto& p : model.pieces) vocab.push_back({p.piece, p.score});
    return {{"type", "Unigram"}, {"unk_id", model.unk_id}, {"vocab", vocab}, {"byte_fallback", model.byte_fallback}};
  }
  json vocab = json::object();
  for (size_t id = 0; id < model.pieces.size(); ++id) vocab.emplace(model.pieces[id].piece, id);
  return {{"type", "BPE"}, {"vocab", vocab}, {"merges", sentencepiece_merges(model)}, {"unk_token", model.pieces[model.unk_id].piece},
          {"fuse_unk", true}, {"byte_fallback", model.byte_fallback}};
}

// SpmConverter's normalizer: the charsmap (when there is one), then libsentencepiece's removal of
// trailing and repeated spaces (only U+0020, as libsentencepiece does; the converter's Strip
// would also drop other trailing whitespace that an identity charsmap leaves in place). Leading
// spaces end up as the single "▁" that Metaspace then does not prepend again.
json sentencepiece_normalizer(const SentencePieceModelProto& model) {
  json steps = json::array();
  if (!model.precompiled_charsmap.empty()) steps.push_back({{"type", "Precompiled"}, {"precompiled_charsmap", base64::encode(model.precompiled_charsmap)}});
  if (model.remove_extra_whitespaces) {
    steps.push_back({{"type", "Replace"}, {"pattern", {{"Regex", " +\\z"}}}, {"content", ""}});
    steps.push_back({{"type", "Replace"}, {"pattern", {{"Regex", " {2,}"}}}, {"content", "\u2581"}});
  }
  return {{"type", "Sequence"}, {"normalizers", steps}};
}

// Control pieces are special added tokens, user-defined ones plain added tokens.
json sentencepiece_added_tokens(const SentencePieceModelProto& model) {
  json list = json::array();
  for (size_t id = 0; id < model.pieces.size(); ++id) {
    const auto& p = model.pieces[id];
    const bool control = p.type == SentencePieceModelProto::PieceType::Control;
    if (!control && p.type != SentencePieceModelProto::PieceType::UserDefined) continue;
    list.push_back({{"id", id}, {"content", p.piece}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                    {"normalized", false}, {"special", control}});
  }
  return list;
}

// <s> / </s> around each sequence as tokenizer_config.json's add_bos_token / add_eos_token say.
json sentencepiece_post_processor(const json& config, const json& vocab_ids) {
  json specials = json::object();
  std::vector<std::string> single, pair;
  auto special = [&](const char* key, const char* flag, bool default_on, std::vector<std::string>& into, const std::string& suffix) {
    const std::string token = token_or(config, key, "");
    if (token.empty() || !vocab_ids.contains(token) || !config.value(flag, default_on)) return;
    specials[token] = {{"id", token}, {"ids", {vocab_ids[token]}}, {"tokens", {token}}};
    into.push_back(token + suffix);
  };
  auto sequence = [&](std::vector<std::string>& into, const std::string& name, const std::string& suffix) {
    special("bos_token", "add_bos_token", true, into, suffix);
    into.push_back(name);
    special("eos_token", "add_eos_token", false, into, suffix);
  };
  sequence(single, "$A", "");
  sequence(pair, "$A", "");
  sequence(pair, "$B:1", ":1");
  return template_processor(single, pair, specials);
}

json sentencepiece_document(const fs::path& folder, const fs::path& model_file) {
  const json config = read_config(folder);
  const SentencePieceModelProto model = read_sentencepiece_model(model_file);
  json vocab_ids = json::object();
  for (size_t id = 0; id < model.pieces.size(); ++id) vocab_ids.emplace(model.pieces[id].piece, id);
  const bool prefix_space = config.value("add_prefix_space", model.add_dummy_prefix);
  const std::string scheme = !prefix_space ? "never" : config.value("legacy", true) ? "always" : "first";
  return {
      {"added_tokens", sentencepiece_added_tokens(model)},
      {"normalizer", sentencepiece_normalizer(model)},
      {"pre_tokenizer", {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", scheme}, {"split", true}}},
      {"post_processor", sentencepiece_post_processor(config, vocab_ids)},
      {"decoder", {{"type", "Sequence"}, {"decoders", {{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                                                        {{"type", "ByteFallback"}}, {{"type", "Fuse"}},
                                                        {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model", sentencepiece_model_json(model)},
  };
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
    if (const auto model = find_sentencepiece_model(folder)) return from_json(sentencepiece_document(folder, *model).dump());
  } catch (const json::exception& e) {
    throw Error(str(folder.string(), ": malformed tokenizer files: ", e.what()));
  }
  throw Error(str("model folder ", folder.string(),
                  " has no tokenizer: expected tokenizer.json, vocab.txt, vocab.json with merges.txt, or a SentencePiece .model"));
}

}  // namespace adapters::tokenizer
