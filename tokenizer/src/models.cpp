// Models of tokenizer.json (WordPiece, BPE with merges / byte fallback / unk fusing, Unigram,
// WordLevel) and their registry.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <queue>
#include <unordered_map>

#include "adapters/core/error.h"
#include "components.h"
#include "models.h"

namespace adapters::tokenizer {

namespace {

// A token -> id table with its reverse. Both are sized by the number of tokens, never by the
// largest id a file writes (an id of 4e9 must not allocate 4e9 slots).
class Vocabulary {
 public:
  void add(const std::string& token, uint32_t id) {
    ids_.emplace(token, id);
    reverse_[id] = token;
    longest_ = std::max(longest_, token.size());
  }
  std::optional<uint32_t> find(const std::string& token) const {
    const auto it = ids_.find(token);
    return it == ids_.end() ? std::nullopt : std::optional<uint32_t>(it->second);
  }
  std::optional<std::string> token(uint32_t id) const {
    const auto it = reverse_.find(id);
    return it != reverse_.end() && ids_.count(it->second) ? std::optional<std::string>(it->second) : std::nullopt;
  }
  size_t size() const { return ids_.size(); }
  size_t longest() const { return longest_; }  // bytes of the longest token

 private:
  std::unordered_map<std::string, uint32_t> ids_;
  std::unordered_map<uint32_t, std::string> reverse_;
  size_t longest_ = 0;
};

Vocabulary vocabulary_from_object(const json& vocab, const char* where) {
  if (!vocab.is_object()) throw Error(str("tokenizer.json: ", where, " \"vocab\" must be an object of token: id, found ", vocab.type_name()));
  Vocabulary v;
  for (const auto& [token, id] : vocab.items()) v.add(token, id.get<uint32_t>());
  return v;
}

std::string byte_token(unsigned char b) {
  static const char* hex = "0123456789ABCDEF";
  return std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
}

// ---- WordPiece --------------------------------------------------------------------------------
class WordPiece final : public Model {
 public:
  WordPiece(Vocabulary vocab, std::string unk, std::string prefix, size_t max_chars)
      : vocab_(std::move(vocab)), unk_(std::move(unk)), prefix_(std::move(prefix)), max_chars_(max_chars) {}

  std::vector<Token> tokenize(const std::string& word) const override {
    if (unicode::count_chars(word) > max_chars_) return {unknown(word.size())};
    std::vector<Token> pieces;
    std::string candidate;
    for (size_t start = 0; start < word.size();) {
      size_t end = longest_candidate_end(word, start);
      std::optional<Token> found;
      while (start < end) {
        candidate.assign(start > 0 ? prefix_ : std::string());
        candidate.append(word, start, end - start);
        if (const auto id = vocab_.find(candidate)) {
          found = Token{*id, candidate, {start, end}};
          break;
        }
        do --end; while (end > start && (static_cast<unsigned char>(word[end]) & 0xC0) == 0x80);
      }
      if (!found) return {unknown(word.size())};
      pieces.push_back(std::move(*found));
      start = end;
    }
    return pieces;
  }

  std::optional<uint32_t> token_to_id(const std::string& t) const override { return vocab_.find(t); }
  std::optional<std::string> id_to_token(uint32_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return vocab_.size(); }

 private:
  // End of the longest piece from `start` that can be a token: none is longer than the longest
  // token of the vocabulary, so each start costs at most that many look-ups, not the word length.
  size_t longest_candidate_end(const std::string& word, size_t start) const {
    const size_t prefix = start > 0 ? prefix_.size() : 0;
    const size_t room = vocab_.longest() > prefix ? vocab_.longest() - prefix : 0;
    size_t end = std::min(word.size(), start + room);
    while (end > start && end < word.size() && (static_cast<unsigned char>(word[end]) & 0xC0) == 0x80) --end;
    return end;
  }

  Token unknown(size_t length) const {
    const auto id = vocab_.find(unk_);
    if (!id) throw Error(str("WordPiece: the unknown token \"", unk_, "\" is not in the vocabulary"));
    return Token{*id, unk_, {0, length}};
  }

  Vocabulary vocab_;
  std::string unk_, prefix_;
  size_t max_chars_;
};

// ---- BPE --------------------------------------------------------------------------------------
class Bpe final : public Model {
 public:
  struct Options {
    std::optional<std::string> unk;
    std::string prefix, suffix;
    bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  };

  Bpe(Vocabulary vocab, const std::vector<std::pair<std::string, std::string>>& merges, Options options)
      : vocab_(std::move(vocab)), options_(std::move(options)) {
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const auto& [a, b] = merges[rank];
      const auto merged = vocab_.find(a + b.substr(std::min(options_.prefix.size(), b.size())));
      const auto left = vocab_.find(a), right = vocab_.find(b);
      if (!left || !right || !merged) throw Error(str("BPE: merge \"", a, " ", b, "\" uses a token that is not in the vocabulary"));
      merges_.emplace(key(*left, *right), std::make_pair(static_cast<uint32_t>(rank), *merged));
    }
  }

  std::vector<Token> tokenize(const std::string& word) const override {
    if (word.empty()) return {};
    if (options_.ignore_merges) {
      if (const auto id = vocab_.find(word)) return {Token{*id, word, {0, word.size()}}};
    }
    const std::vector<Symbol> symbols = cached_merge(word);
    std::vector<Token> tokens;
    tokens.reserve(symbols.size());
    size_t pos = 0;
    for (const Symbol& s : symbols) {
      tokens.push_back(Token{s.id, *vocab_.token(s.id), {pos, pos + s.len}});
      pos += s.len;
    }
    return tokens;
  }

  std::optional<uint32_t> token_to_id(const std::string& t) const override { return vocab_.find(t); }
  std::optional<std::string> id_to_token(uint32_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return vocab_.size(); }

 private:
  // A piece of the word being merged: a node of a doubly linked list over a vector, 16 bytes.
  struct Symbol {
    uint32_t id;
    uint32_t len;  // bytes of the word; 0 once merged into the symbol before it
    uint32_t prev, next;
  };
  static constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();
  // A merge that may apply to the symbol at `pos` and the one after it.
  struct Candidate {
    uint32_t rank;
    uint32_t pos;
    uint32_t new_id;
    bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };

  static uint64_t key(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }

  std::vector<Symbol> cached_merge(const std::string& word) const {
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      const auto it = cache_.find(word);
      if (it != cache_.end()) return it->second;
    }
    std::vector<Symbol> symbols = merge_word(word);
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (word.size() < 256 && cache_.size() < kCacheCapacity) cache_.emplace(word, symbols);
    return symbols;
  }

  // Splits the word into characters (with prefix/suffix, byte fallback, unknown runs) and
  // applies the merges by rank.
  std::vector<Symbol> merge_word(const std::string& word) const {
    if (word.size() >= kNone) throw Error(str("BPE: a word of ", word.size(), " bytes is too long (at most ", kNone - 1, ")"));
    std::vector<Symbol> symbols;
    symbols.reserve(options_.byte_fallback ? word.size() : unicode::count_chars(word));
    std::optional<std::pair<uint32_t, size_t>> unk;  // pending unknown run: id, bytes
    auto add = [&symbols](uint32_t id, size_t len) {
      const auto n = static_cast<uint32_t>(symbols.size());
      if (n > 0) symbols.back().next = n;
      symbols.push_back({id, static_cast<uint32_t>(len), n > 0 ? n - 1 : kNone, kNone});
    };
    std::string piece;
    for (size_t i = 0; i < word.size();) {
      const size_t start = i;
      i += unicode::sequence_length(static_cast<unsigned char>(word[i]));
      piece.assign(start > 0 ? options_.prefix : std::string());
      piece.append(word, start, i - start);
      if (i == word.size()) piece += options_.suffix;
      if (const auto id = vocab_.find(piece)) {
        if (unk) add(unk->first, unk->second), unk.reset();
        add(*id, i - start);
        continue;
      }
      if (options_.byte_fallback && add_bytes(piece, add)) continue;
      if (!options_.unk) continue;
      const auto unk_id = vocab_.find(*options_.unk);
      if (!unk_id) throw Error(str("BPE: the unknown token \"", *options_.unk, "\" is not in the vocabulary"));
      if (unk && options_.fuse_unk) {
        unk->second += i - start;
      } else {
        if (unk) add(unk->first, unk->second);
        unk = std::make_pair(*unk_id, i - start);
      }
    }
    if (unk) add(unk->first, unk->second);
    apply_merges(symbols);
    return symbols;
  }

  template <typename Add>
  bool add_bytes(const std::string& piece, Add& add) const {
    std::vector<uint32_t> ids;
    for (unsigned char b : piece) {
      const auto id = vocab_.find(byte_token(b));
      if (!id) return false;
      ids.push_back(*id);
    }
    for (uint32_t id : ids) add(id, 1);
    return true;
  }

  // HF's word.rs: a heap of candidate merges, lowest rank (then leftmost) first, over the linked
  // list of symbols. Each merge is O(log n) and pushes at most two candidates, so a word of n
  // symbols takes O(n log n) time and O(n) memory.
  void apply_merges(std::vector<Symbol>& symbols) const {
    std::vector<Candidate> initial;
    initial.reserve(symbols.size());
    auto candidate = [&](uint32_t pos) -> std::optional<Candidate> {
      const Symbol& s = symbols[pos];
      if (s.next == kNone) return std::nullopt;
      const auto it = merges_.find(key(s.id, symbols[s.next].id));
      if (it == merges_.end()) return std::nullopt;
      return Candidate{it->second.first, pos, it->second.second};
    };
    for (uint32_t i = 0; i + 1 < symbols.size(); ++i) {
      if (const auto c = candidate(i)) initial.push_back(*c);
    }
    std::priority_queue<Candidate> queue(std::less<Candidate>(), std::move(initial));
    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      Symbol& current = symbols[top.pos];
      if (current.len == 0 || current.next == kNone) continue;
      const Symbol right = symbols[current.next];
      const auto it = merges_.find(key(current.id, right.id));
      if (it == merges_.end() || it->second.second != top.new_id) continue;
      symbols[current.next].len = 0;
      current.id = top.new_id;
      current.len += right.len;
      current.next = right.next;
      if (right.next != kNone) symbols[right.next].prev = top.pos;
      if (current.prev != kNone) {
        if (const auto c = candidate(current.prev)) queue.push(*c);
      }
      if (const auto c = candidate(top.pos)) queue.push(*c);
    }
    symbols.erase(std::remove_if(symbols.begin(), symbols.end(), [](const Symbol& s) { return s.len == 0; }), symbols.end());
  }

  static constexpr size_t kCacheCapacity = 10000;
  Vocabulary vocab_;
  Options options_;
  std::unordered_map<uint64_t, std::pair<uint32_t, uint32_t>> merges_;  // pair -> rank, new id
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<Symbol>> cache_;
};

// ---- Unigram ----------------------------------------------------------------------------------
class Unigram final : public Model {
 public:
  Unigram(std::vector<std::pair<std::string, double>> pieces, std::optional<uint32_t> unk_id, bool byte_fallback)
      : pieces_(std::move(pieces)), unk_id_(unk_id), byte_fallback_(byte_fallback) {
    double min_score = 0;
    for (uint32_t id = 0; id < pieces_.size(); ++id) {
      const auto& [piece, score] = pieces_[id];
      ids_.emplace(piece, id);
      insert(piece, id);
      min_score = std::min(min_score, score);
    }
    unk_score_ = min_score - 10.0;
    if (unk_id_ && *unk_id_ >= pieces_.size()) throw Error(str("Unigram: unk_id ", *unk_id_, " is outside the vocabulary of ", pieces_.size()));
  }

  std::vector<Token> tokenize(const std::string& text) const override {
    std::vector<Token> tokens;
    for (const Offsets& range : best_path(text)) {
      std::string piece = text.substr(range.first, range.second - range.first);
      const auto it = ids_.find(piece);
      if (it != ids_.end()) {
        tokens.push_back(Token{it->second, std::move(piece), range});
      } else if (byte_fallback_ && all_bytes_known(piece)) {
        for (unsigned char b : piece) tokens.push_back(Token{ids_.at(byte_token(b)), byte_token(b), range});
      } else {
        tokens.push_back(Token{require_unk(), std::move(piece), range});
      }
    }
    return tokens;
  }

  std::optional<uint32_t> token_to_id(const std::string& t) const override {
    const auto it = ids_.find(t);
    return it == ids_.end() ? std::nullopt : std::optional<uint32_t>(it->second);
  }
  std::optional<std::string> id_to_token(uint32_t id) const override {
    return id < pieces_.size() ? std::optional<std::string>(pieces_[id].first) : std::nullopt;
  }
  size_t vocab_size() const override { return pieces_.size(); }

 private:
  // The best segmentation of the text up to a byte: 16 bytes per byte of the text.
  struct Node {
    static constexpr uint32_t kUnreached = std::numeric_limits<uint32_t>::max();
    double score = 0;
    uint32_t starts_at = kUnreached;  // byte where its last piece starts
    uint32_t id = 0;
  };

  void insert(const std::string& piece, uint32_t id) {
    uint32_t node = 0;
    for (unsigned char b : piece) {
      const uint64_t k = (static_cast<uint64_t>(node) << 8) | b;
      auto it = trie_.find(k);
      if (it == trie_.end()) it = trie_.emplace(k, ++trie_nodes_).first;
      node = it->second;
    }
    terminal_.emplace(node, id);
  }

  uint32_t require_unk() const {
    if (!unk_id_) throw Error("Unigram: the text has a character outside the vocabulary and the model has no unk_id");
    return *unk_id_;
  }

  bool all_bytes_known(const std::string& piece) const {
    return std::all_of(piece.begin(), piece.end(), [this](char b) { return ids_.count(byte_token(static_cast<unsigned char>(b))) > 0; });
  }

  // Viterbi over the pieces of the vocabulary (HF's encode_optimized), unknown runs fused: the
  // byte ranges of the pieces.
  std::vector<Offsets> best_path(const std::string& text) const {
    const size_t size = text.size();
    if (size >= Node::kUnreached) throw Error(str("Unigram: a piece of ", size, " bytes is too long (at most ", Node::kUnreached - 1, ")"));
    std::vector<Node> best(size + 1);
    for (size_t start = 0; start < size;) {
      const double here = best[start].score;
      const size_t char_len = unicode::sequence_length(static_cast<unsigned char>(text[start]));
      bool single_char = false;
      uint32_t node = 0;
      for (size_t end = start; end < size; ++end) {
        const auto it = trie_.find((static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(text[end]));
        if (it == trie_.end()) break;
        node = it->second;
        const auto term = terminal_.find(node);
        if (term == terminal_.end()) continue;
        relax(best[end + 1], here + pieces_[term->second].second, start, term->second);
        single_char = single_char || end + 1 - start == char_len;
      }
      if (!single_char) relax(best[start + char_len], here + unk_score_, start, require_unk());
      start += char_len;
    }
    std::vector<Offsets> pieces;  // from the end; a run of unknown pieces is fused into one
    bool unknown_run = false;
    for (size_t end = size; end > 0;) {
      const Node& n = best[end];
      const size_t start = n.starts_at;
      const bool unknown = unk_id_ && n.id == *unk_id_;
      if (unknown && unknown_run) pieces.back().first = start;
      else pieces.push_back({start, end});
      unknown_run = unknown;
      end = start;
    }
    std::reverse(pieces.begin(), pieces.end());
    return pieces;
  }

  static void relax(Node& target, double score, size_t start, uint32_t id) {
    if (target.starts_at == Node::kUnreached || score > target.score) target = Node{score, static_cast<uint32_t>(start), id};
  }

  std::vector<std::pair<std::string, double>> pieces_;
  std::unordered_map<std::string, uint32_t> ids_;
  std::unordered_map<uint64_t, uint32_t> trie_;  // (node << 8 | byte) -> child node
  std::unordered_map<uint32_t, uint32_t> terminal_;  // node -> piece id
  uint32_t trie_nodes_ = 0;
  std::optional<uint32_t> unk_id_;
  bool byte_fallback_;
  double unk_score_ = 0;
};

// ---- WordLevel --------------------------------------------------------------------------------
class WordLevel final : public Model {
 public:
  WordLevel(Vocabulary vocab, std::string unk) : vocab_(std::move(vocab)), unk_(std::move(unk)) {}
  std::vector<Token> tokenize(const std::string& word) const override {
    if (const auto id = vocab_.find(word)) return {Token{*id, word, {0, word.size()}}};
    const auto unk = vocab_.find(unk_);
    if (!unk) throw Error(str("WordLevel: the unknown token \"", unk_, "\" is not in the vocabulary"));
    return {Token{*unk, unk_, {0, word.size()}}};
  }
  std::optional<uint32_t> token_to_id(const std::string& t) const override { return vocab_.find(t); }
  std::optional<std::string> id_to_token(uint32_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return vocab_.size(); }

 private:
  Vocabulary vocab_;
  std::string unk_;
};

std::vector<std::pair<std::string, std::string>> parse_merges(const json& merges) {
  std::vector<std::pair<std::string, std::string>> out;
  if (!merges.is_array()) throw Error(str("tokenizer.json: BPE \"merges\" must be an array, found ", merges.type_name()));
  for (const json& m : merges) {
    if (m.is_array() && m.size() == 2) {
      out.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else if (m.is_string()) {
      out.push_back(split_merge_line(m.get<std::string>()));
    } else {
      throw Error(str("tokenizer.json: a BPE merge must be [\"a\", \"b\"] or \"a b\", found ", m.dump()));
    }
  }
  return out;
}

std::optional<std::string> optional_string(const json& c, const char* key) {
  return c.contains(key) && c[key].is_string() ? std::optional<std::string>(c[key].get<std::string>()) : std::nullopt;
}

std::shared_ptr<const Model> make_wordpiece(const json& c) {
  return std::make_shared<WordPiece>(vocabulary_from_object(require(c, "vocab", "WordPiece"), "WordPiece"),
                                     string_or(c, "unk_token", "[UNK]"), string_or(c, "continuing_subword_prefix", "##"),
                                     c.value("max_input_chars_per_word", size_t{100}));
}

std::shared_ptr<const Model> make_bpe(const json& c) {
  if (c.contains("dropout") && c["dropout"].is_number() && c["dropout"].get<double>() > 0) {
    throw Error(str("tokenizer.json: BPE dropout ", c["dropout"].get<double>(), " is not supported (expected null or 0)"));
  }
  Bpe::Options options;
  options.unk = optional_string(c, "unk_token");
  options.prefix = optional_string(c, "continuing_subword_prefix").value_or("");
  options.suffix = optional_string(c, "end_of_word_suffix").value_or("");
  options.fuse_unk = bool_or(c, "fuse_unk", false);
  options.byte_fallback = bool_or(c, "byte_fallback", false);
  options.ignore_merges = bool_or(c, "ignore_merges", false);
  return std::make_shared<Bpe>(vocabulary_from_object(require(c, "vocab", "BPE"), "BPE"),
                               parse_merges(require(c, "merges", "BPE")), std::move(options));
}

std::shared_ptr<const Model> make_unigram(const json& c) {
  std::vector<std::pair<std::string, double>> pieces;
  for (const json& item : require(c, "vocab", "Unigram")) {
    if (!item.is_array() || item.size() != 2) throw Error(str("tokenizer.json: a Unigram vocab entry must be [piece, score], found ", item.dump()));
    pieces.emplace_back(item[0].get<std::string>(), item[1].get<double>());
  }
  std::optional<uint32_t> unk;
  if (c.contains("unk_id") && c["unk_id"].is_number()) unk = c["unk_id"].get<uint32_t>();
  return std::make_shared<Unigram>(std::move(pieces), unk, bool_or(c, "byte_fallback", false));
}

std::shared_ptr<const Model> make_wordlevel(const json& c) {
  return std::make_shared<WordLevel>(vocabulary_from_object(require(c, "vocab", "WordLevel"), "WordLevel"),
                                     string_or(c, "unk_token", "<unk>"));
}

using Builder = std::function<std::shared_ptr<const Model>(const json&)>;

const std::map<std::string, Builder>& registry() {
  static const std::map<std::string, Builder> builders = {
      {"WordPiece", make_wordpiece}, {"BPE", make_bpe}, {"Unigram", make_unigram}, {"WordLevel", make_wordlevel}};
  return builders;
}

}  // namespace

std::pair<std::string, std::string> split_merge_line(const std::string& line) {
  const size_t space = line.find(' ', 1);
  if (space == std::string::npos) throw Error(str("BPE merges: expected \"a b\", found \"", line, "\""));
  return {line.substr(0, space), line.substr(space + 1)};
}

std::shared_ptr<const Model> make_model(const json& config) {
  const std::string type = config.contains("type") ? config["type"].get<std::string>()
                           : config.contains("merges")  ? "BPE"
                           : config.contains("vocab") && config["vocab"].is_array() ? "Unigram"
                                                                                     : "WordPiece";
  const auto it = registry().find(type);
  if (it == registry().end()) throw Error(str("tokenizer.json: unsupported model type \"", type, "\""));
  return it->second(config);
}

}  // namespace adapters::tokenizer
