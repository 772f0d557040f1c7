// Evaluation metrics for the task kinds of adapters/train/data.h, computed without torch and
// matching the reference implementations the HF examples report (sklearn, scipy, seqeval, the
// SQuAD v1.1 script). Scores are fractions in [0, 1] (correlations in [-1, 1]), not percentages.
//
// Every function throws adapters::Error when the gold and predicted sequences differ in length
// or (unless noted) are empty.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace adapters::train {

// ---- classification -----------------------------------------------------------------------------

// Fraction of positions where pred == gold.
double accuracy(const std::vector<int64_t>& gold, const std::vector<int64_t>& pred);

// Unweighted mean of the per-class F1 = 2TP / (2TP + FP + FN) over the classes that occur in
// gold or pred; classes absent from both are ignored (sklearn's f1_score(average="macro") with
// its default labels, i.e. the labels present).
double macro_f1(const std::vector<int64_t>& gold, const std::vector<int64_t>& pred);

// Matthews correlation coefficient, multiclass (sklearn's matthews_corrcoef): 0 when either side
// holds a single class.
double matthews_corrcoef(const std::vector<int64_t>& gold, const std::vector<int64_t>& pred);

// Accuracy of always predicting the most frequent class of `train_gold` (ties: the smallest id)
// on `eval_gold`: the floor a classifier must beat.
double majority_baseline_accuracy(const std::vector<int64_t>& train_gold, const std::vector<int64_t>& eval_gold);

// ---- regression ---------------------------------------------------------------------------------

// Pearson's r (scipy.stats.pearsonr); NaN when either input is constant. Needs 2+ points.
double pearson(const std::vector<double>& x, const std::vector<double>& y);
// Spearman's rho (scipy.stats.spearmanr): Pearson's r of the ranks, ties getting their average
// rank; NaN when either input is constant.
double spearman(const std::vector<double>& x, const std::vector<double>& y);
// 1-based ranks, tied values sharing the mean of their ranks ([10, 20, 20] -> [1, 2.5, 2.5]).
std::vector<double> average_ranks(const std::vector<double>& values);

// ---- tagging ------------------------------------------------------------------------------------

struct PrecisionRecallF1 {
  double precision = 0, recall = 0, f1 = 0;  // 0 where a denominator is 0
  size_t true_positives = 0, predicted = 0, gold = 0;
};

// Micro-averaged token F1 over flat label ids (e.g. a (B, T) label tensor flattened), skipping
// positions whose gold label is `ignore_index`. Tokens whose gold and predicted ids are both
// `outside` (the "O" tag, when given) are not counted: TP = positions with pred == gold !=
// outside, predicted = pred != outside, gold = gold != outside. Without `outside` every
// position counts and precision = recall = F1 = accuracy.
PrecisionRecallF1 token_f1(const std::vector<int64_t>& gold, const std::vector<int64_t>& pred, int64_t ignore_index = -100,
                           std::optional<int64_t> outside = std::nullopt);

// An entity of a tag sequence: its type and inclusive token range.
struct Entity {
  std::string type;
  size_t begin = 0, end = 0;
  bool operator==(const Entity& other) const { return type == other.type && begin == other.begin && end == other.end; }
};

// Entities of a BIO / IOB2 (also IOBES) tag sequence, as seqeval's default (non-strict) mode
// reads them: "B-X" opens, "I-X" continues (or opens after O or another type), "O" closes.
std::vector<Entity> extract_entities(const std::vector<std::string>& tags);

// seqeval's micro-averaged entity-level precision / recall / F1 over sentences: an entity counts
// when its type and both ends match exactly.
PrecisionRecallF1 entity_f1(const std::vector<std::vector<std::string>>& gold, const std::vector<std::vector<std::string>>& pred);

// ---- question answering (SQuAD v1.1) ------------------------------------------------------------

// The SQuAD normalisation: ASCII lowercase, remove ASCII punctuation, remove the articles a / an
// / the as whole words, collapse whitespace. (Python's lower() also lowercases non-ASCII
// letters; here bytes >= 0x80 are kept as they are and count as word characters.)
std::string normalize_answer(const std::string& text);
// 1 when the normalised texts are equal, else 0.
double exact_match(const std::string& prediction, const std::string& gold);
// Token-overlap F1 of the normalised texts; 0 without common tokens (both empty included).
double answer_f1(const std::string& prediction, const std::string& gold);

struct QaScores {
  double exact_match = 0, f1 = 0;  // means over questions, each the max over its gold answers
};
// Each prediction scored against its list of gold answers (max over golds), then averaged.
QaScores squad_scores(const std::vector<std::string>& predictions, const std::vector<std::vector<std::string>>& golds);

}  // namespace adapters::train
