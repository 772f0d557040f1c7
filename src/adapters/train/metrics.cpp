// Evaluation metrics: classification (accuracy, macro-F1, MCC, majority baseline), correlation
// (Pearson, Spearman), tagging (token and seqeval entity F1) and SQuAD exact match / F1.
#include "adapters/train/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <sstream>

#include "adapters/core/error.h"

namespace adapters::train {

namespace {

template <typename A, typename B>
void check_pair(const A& gold, const B& pred, const char* metric) {
  ADAPTERS_CHECK(gold.size() == pred.size(), metric, ": expected as many predictions as gold labels, found ", pred.size(), " and ", gold.size());
  ADAPTERS_CHECK(!gold.empty(), metric, ": expected at least one example, found none");
}

double ratio(double numerator, double denominator) { return denominator == 0 ? 0.0 : numerator / denominator; }

PrecisionRecallF1 scores(size_t true_positives, size_t predicted, size_t gold) {
  PrecisionRecallF1 s;
  s.true_positives = true_positives;
  s.predicted = predicted;
  s.gold = gold;
  s.precision = ratio(static_cast<double>(true_positives), static_cast<double>(predicted));
  s.recall = ratio(static_cast<double>(true_positives), static_cast<double>(gold));
  s.f1 = ratio(2 * s.precision * s.recall, s.precision + s.recall);
  return s;
}

double mean(const std::vector<double>& values) {
  return std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size());
}

}  // namespace

// ---- classification -----------------------------------------------------------------------------

double accuracy(const std::vector<int64_t>& gold, const std::vector<int64_t>& pred) {
  check_pair(gold, pred, "accuracy");
  size_t correct = 0;
  for (size_t i = 0; i < gold.size(); ++i) correct += gold[i] == pred[i];
  return static_cast<double>(correct) / static_cast<double>(gold.size());
}

double macro_f1(const std::vector<int64_t>& gold, const std::vector<int64_t>& pred) {
  check_pair(gold, pred, "macro_f1");
  struct Counts {
    size_t tp = 0, fp = 0, fn = 0;
  };
  std::map<int64_t, Counts> classes;
  for (size_t i = 0; i < gold.size(); ++i) {
    if (gold[i] == pred[i]) {
      ++classes[gold[i]].tp;
    } else {
      ++classes[pred[i]].fp;
      ++classes[gold[i]].fn;
    }
  }
  double sum = 0;
  for (const auto& [label, c] : classes) sum += ratio(2.0 * static_cast<double>(c.tp), static_cast<double>(2 * c.tp + c.fp + c.fn));
  return sum / static_cast<double>(classes.size());
}

double matthews_corrcoef(const std::vector<int64_t>& gold, const std::vector<int64_t>& pred) {
  check_pair(gold, pred, "matthews_corrcoef");
  std::map<int64_t, double> gold_count, pred_count;
  double correct = 0;
  for (size_t i = 0; i < gold.size(); ++i) {
    ++gold_count[gold[i]];
    ++pred_count[pred[i]];
    correct += gold[i] == pred[i];
  }
  const double n = static_cast<double>(gold.size());
  double gold_dot_pred = 0, pred_dot_pred = 0, gold_dot_gold = 0;
  for (const auto& [label, count] : gold_count) {
    gold_dot_gold += count * count;
    if (const auto it = pred_count.find(label); it != pred_count.end()) gold_dot_pred += count * it->second;
  }
  for (const auto& [label, count] : pred_count) pred_dot_pred += count * count;
  const double cov_gold_pred = correct * n - gold_dot_pred;
  const double cov_pred_pred = n * n - pred_dot_pred;
  const double cov_gold_gold = n * n - gold_dot_gold;
  if (cov_pred_pred * cov_gold_gold == 0) return 0.0;
  return cov_gold_pred / std::sqrt(cov_gold_gold * cov_pred_pred);
}

double majority_baseline_accuracy(const std::vector<int64_t>& train_gold, const std::vector<int64_t>& eval_gold) {
  ADAPTERS_CHECK(!train_gold.empty(), "majority_baseline_accuracy: expected training labels, found none");
  std::map<int64_t, size_t> counts;
  for (int64_t label : train_gold) ++counts[label];
  int64_t majority = counts.begin()->first;
  for (const auto& [label, count] : counts) {
    if (count > counts[majority]) majority = label;
  }
  return accuracy(eval_gold, std::vector<int64_t>(eval_gold.size(), majority));
}

// ---- regression ---------------------------------------------------------------------------------

double pearson(const std::vector<double>& x, const std::vector<double>& y) {
  check_pair(x, y, "pearson");
  ADAPTERS_CHECK(x.size() >= 2, "pearson: expected at least 2 points, found ", x.size());
  const double mx = mean(x), my = mean(y);
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) * (x[i] - mx);
    syy += (y[i] - my) * (y[i] - my);
  }
  if (sxx == 0 || syy == 0) return std::numeric_limits<double>::quiet_NaN();
  return std::clamp(sxy / std::sqrt(sxx * syy), -1.0, 1.0);
}

std::vector<double> average_ranks(const std::vector<double>& values) {
  std::vector<size_t> order(values.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return values[a] < values[b]; });
  std::vector<double> ranks(values.size());
  for (size_t first = 0; first < order.size();) {
    size_t last = first;
    while (last + 1 < order.size() && values[order[last + 1]] == values[order[first]]) ++last;
    const double rank = (static_cast<double>(first + last) / 2.0) + 1.0;
    for (size_t k = first; k <= last; ++k) ranks[order[k]] = rank;
    first = last + 1;
  }
  return ranks;
}

double spearman(const std::vector<double>& x, const std::vector<double>& y) {
  check_pair(x, y, "spearman");
  return pearson(average_ranks(x), average_ranks(y));
}

// ---- tagging ------------------------------------------------------------------------------------

PrecisionRecallF1 token_f1(const std::vector<int64_t>& gold, const std::vector<int64_t>& pred, int64_t ignore_index,
                           std::optional<int64_t> outside) {
  check_pair(gold, pred, "token_f1");
  size_t true_positives = 0, predicted = 0, gold_count = 0;
  for (size_t i = 0; i < gold.size(); ++i) {
    if (gold[i] == ignore_index) continue;
    const bool gold_counts = gold[i] != outside, pred_counts = pred[i] != outside;
    gold_count += gold_counts;
    predicted += pred_counts;
    true_positives += gold_counts && pred[i] == gold[i];
  }
  return scores(true_positives, predicted, gold_count);
}

namespace {

// seqeval splits "B-PER" into the prefix letter and the type after the first '-'.
struct Tag {
  char prefix;
  std::string type;
};

Tag parse_tag(const std::string& tag) {
  if (tag.empty()) return {'O', "_"};
  const std::string rest = tag.substr(1);
  const size_t dash = rest.find('-');
  const std::string type = dash == std::string::npos ? rest : rest.substr(dash + 1);
  return {tag[0], type.empty() ? "_" : type};
}

bool ends_chunk(const Tag& prev, const Tag& tag) {
  const char p = prev.prefix, t = tag.prefix;
  if (p == 'E' || p == 'S') return true;
  if ((p == 'B' || p == 'I') && (t == 'B' || t == 'S' || t == 'O')) return true;
  return p != 'O' && p != '.' && prev.type != tag.type;
}

bool starts_chunk(const Tag& prev, const Tag& tag) {
  const char p = prev.prefix, t = tag.prefix;
  if (t == 'B' || t == 'S') return true;
  if ((p == 'E' || p == 'S' || p == 'O') && (t == 'E' || t == 'I')) return true;
  return t != 'O' && t != '.' && prev.type != tag.type;
}

}  // namespace

std::vector<Entity> extract_entities(const std::vector<std::string>& tags) {
  std::vector<Entity> entities;
  Tag prev{'O', ""};
  size_t begin = 0;
  for (size_t i = 0; i <= tags.size(); ++i) {
    const Tag tag = i < tags.size() ? parse_tag(tags[i]) : Tag{'O', "_"};
    if (ends_chunk(prev, tag)) entities.push_back({prev.type, begin, i - 1});
    if (starts_chunk(prev, tag)) begin = i;
    prev = tag;
  }
  return entities;
}

PrecisionRecallF1 entity_f1(const std::vector<std::vector<std::string>>& gold, const std::vector<std::vector<std::string>>& pred) {
  check_pair(gold, pred, "entity_f1");
  size_t true_positives = 0, predicted = 0, gold_count = 0;
  for (size_t s = 0; s < gold.size(); ++s) {
    ADAPTERS_CHECK(gold[s].size() == pred[s].size(), "entity_f1: sentence ", s, ": expected as many predicted tags as gold tags, found ",
                   pred[s].size(), " and ", gold[s].size());
    const std::vector<Entity> gold_entities = extract_entities(gold[s]);
    const std::vector<Entity> pred_entities = extract_entities(pred[s]);
    gold_count += gold_entities.size();
    predicted += pred_entities.size();
    for (const Entity& e : pred_entities) true_positives += std::find(gold_entities.begin(), gold_entities.end(), e) != gold_entities.end();
  }
  return scores(true_positives, predicted, gold_count);
}

// ---- question answering -------------------------------------------------------------------------

namespace {

bool is_ascii_punctuation(unsigned char c) { return c < 0x80 && std::ispunct(c); }
bool is_word_byte(unsigned char c) { return c >= 0x80 || std::isalnum(c) || c == '_'; }

// Replaces whole-word "a", "an" and "the" by a space (Python's re.sub(r"\b(a|an|the)\b", " ")).
std::string remove_articles(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    const bool word_start = i == 0 || !is_word_byte(static_cast<unsigned char>(s[i - 1]));
    bool replaced = false;
    for (const std::string article : {"a", "an", "the"}) {
      const size_t end = i + article.size();
      if (word_start && s.compare(i, article.size(), article) == 0 && (end == s.size() || !is_word_byte(static_cast<unsigned char>(s[end])))) {
        out += ' ';
        i = end;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += s[i++];
  }
  return out;
}

std::vector<std::string> words_of(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

}  // namespace

std::string normalize_answer(const std::string& text) {
  std::string kept;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (!is_ascii_punctuation(byte)) kept += byte < 0x80 ? static_cast<char>(std::tolower(byte)) : c;
  }
  std::string out;
  for (const std::string& word : words_of(remove_articles(kept))) out += (out.empty() ? "" : " ") + word;
  return out;
}

double exact_match(const std::string& prediction, const std::string& gold) {
  return normalize_answer(prediction) == normalize_answer(gold) ? 1.0 : 0.0;
}

double answer_f1(const std::string& prediction, const std::string& gold) {
  const std::vector<std::string> pred_words = words_of(normalize_answer(prediction));
  const std::vector<std::string> gold_words = words_of(normalize_answer(gold));
  std::map<std::string, int> gold_counts;
  for (const std::string& w : gold_words) ++gold_counts[w];
  size_t common = 0;
  for (const std::string& w : pred_words) {
    if (gold_counts[w]-- > 0) ++common;
  }
  if (common == 0) return 0.0;
  const double precision = static_cast<double>(common) / static_cast<double>(pred_words.size());
  const double recall = static_cast<double>(common) / static_cast<double>(gold_words.size());
  return 2 * precision * recall / (precision + recall);
}

QaScores squad_scores(const std::vector<std::string>& predictions, const std::vector<std::vector<std::string>>& golds) {
  check_pair(golds, predictions, "squad_scores");
  QaScores total;
  for (size_t i = 0; i < predictions.size(); ++i) {
    ADAPTERS_CHECK(!golds[i].empty(), "squad_scores: question ", i, ": expected at least one gold answer, found none");
    double em = 0, f1 = 0;
    for (const std::string& gold : golds[i]) {
      em = std::max(em, exact_match(predictions[i], gold));
      f1 = std::max(f1, answer_f1(predictions[i], gold));
    }
    total.exact_match += em;
    total.f1 += f1;
  }
  total.exact_match /= static_cast<double>(predictions.size());
  total.f1 /= static_cast<double>(predictions.size());
  return total;
}

}  // namespace adapters::train
