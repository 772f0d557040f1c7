// HF transformers 4.26 decoding loops: greedy_search, sample, beam_search, beam_sample, with
// BeamSearchScorer and BeamHypotheses reproduced exactly (generation_utils.py,
// generation_beam_search.py). Differences, all deliberate: scores are computed in float32 whatever
// the model's dtype; several EOS ids finish a row when any of them is produced (HF 4.27's fix of
// 4.26's `sum(next_tokens != i)`); early_stopping "never" follows HF 4.27+ (4.26 knows only booleans).
#include "adapters/generation/decode.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <mutex>

#include "adapters/core/error.h"
#include "adapters/generation/logits_process.h"

namespace adapters::generation {

namespace {

using Generator = c10::optional<at::Generator>;

// What every loop needs after `generate`'s preparation (steps 2 and 6).
struct Prepared {
  GenerationConfig config;     // pad_token_id defaulted to eos_token_id[0]
  torch::Tensor ids, mask;     // (B,L0) int64, (B,L0)
  std::int64_t max_length = 0;
};

Prepared prepare(const torch::Tensor& input_ids, const torch::Tensor& attention_mask, const GenerationConfig& config) {
  validate(config, 0);
  ADAPTERS_CHECK(input_ids.defined() && input_ids.dim() == 2 && input_ids.size(0) > 0 && input_ids.size(1) > 0,
                 "generate: input_ids: expected a non-empty (batch, length) tensor, found ",
                 input_ids.defined() ? str(input_ids.sizes()) : std::string("nothing"));
  ADAPTERS_CHECK(input_ids.scalar_type() == torch::kLong, "generate: input_ids: expected int64 token ids, found ",
                 input_ids.scalar_type());
  Prepared p;
  p.config = config;
  if (!p.config.pad_token_id && !p.config.eos_token_id.empty()) p.config.pad_token_id = p.config.eos_token_id[0];
  p.ids = input_ids;
  p.mask = attention_mask.defined() ? attention_mask : torch::ones_like(input_ids);
  ADAPTERS_CHECK(p.mask.sizes() == input_ids.sizes(), "generate: attention_mask: expected shape ", input_ids.sizes(),
                 " (as input_ids), found ", p.mask.sizes());
  p.max_length = resolve_max_length(config, input_ids.size(1));
  ADAPTERS_CHECK(config.min_length <= p.max_length, "generate: min_length (", config.min_length,
                 ") is larger than the maximum length (", p.max_length, ")");
  return p;
}

// HF `_expand_inputs_for_generation`: every row k times (b0 b0 b1 b1 ...), and the model's state with it.
void expand_rows(StepModel& model, torch::Tensor& ids, torch::Tensor& mask, std::int64_t k) {
  if (k == 1) return;
  torch::Tensor rows = torch::arange(ids.size(0), ids.options()).repeat_interleave(k);  // (B*k)
  ids = ids.index_select(0, rows);
  mask = mask.index_select(0, rows);
  model.select_rows(rows);
}

// A generator seeded with `seed` on `device` (none: the global default generator, as HF).
Generator make_generator(const std::optional<std::uint64_t>& seed, const torch::Device& device) {
  if (!seed) return c10::nullopt;
  if (device.is_cpu()) return at::detail::createCPUGenerator(*seed);
  const at::Generator& base = at::globalContext().defaultGenerator(device);
  at::Generator gen;
  {
    std::lock_guard<std::mutex> lock(const_cast<at::Generator&>(base).mutex());
    gen = base.clone();
  }
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_current_seed(*seed);
  return gen;
}

// One model step: logits (N,V) as float32, checked; the first step also validates the options that
// need the vocabulary size. The result belongs to the loop (processors change it in place).
torch::Tensor step_logits(StepModel& model, const torch::Tensor& seq, const torch::Tensor& mask,
                          const GenerationConfig& c, std::int64_t& vocab) {
  torch::Tensor logits = model.next_logits(seq, mask);
  ADAPTERS_CHECK(logits.defined() && logits.dim() == 2 && logits.size(0) == seq.size(0),
                 "generate: the model's next-token logits: expected (", seq.size(0), ", vocab), found ",
                 logits.defined() ? str(logits.sizes()) : std::string("nothing"));
  if (vocab == 0) {
    vocab = logits.size(1);
    validate(c, vocab);
  }
  ADAPTERS_CHECK(logits.size(1) == vocab, "generate: the model's vocabulary changed from ", vocab, " to ",
                 logits.size(1), " between steps");
  return logits.to(torch::kFloat);
}

torch::Tensor stack_scores(const std::vector<torch::Tensor>& steps) {
  return steps.empty() ? torch::Tensor() : torch::stack(steps);  // (steps,N,V)
}

// ---- greedy search and sampling -----------------------------------------------------------------

// 1 where `next` (N) is none of the EOS ids (E), else 0; int64 (N).
torch::Tensor not_eos(const torch::Tensor& next, const torch::Tensor& eos) {
  return next.unsqueeze(0).ne(eos.unsqueeze(1)).all(0).to(torch::kLong);
}

// Asks the stop hook about every unfinished row; finishes those it stops. Returns whether any stopped.
bool apply_stop_hook(const DecodeHooks& hooks, const torch::Tensor& seq, torch::Tensor& unfinished) {
  torch::Tensor flags = unfinished.to(torch::kCPU).contiguous();  // (N)
  auto* f = flags.data_ptr<std::int64_t>();
  bool any = false;
  for (std::int64_t r = 0; r < flags.size(0); ++r) {
    if (f[r] != 0 && hooks.stop(r, seq[r])) {
      f[r] = 0;
      any = true;
    }
  }
  if (any) unfinished = flags.to(unfinished.device());
  return any;
}

// HF greedy_search (do_sample false) and sample (do_sample true), after the rows are expanded.
GenerateOutput token_search(StepModel& model, Prepared p, const DecodeHooks& hooks) {
  const GenerationConfig& c = p.config;
  const std::int64_t input_length = p.ids.size(1);
  LogitsProcessorList processors = make_logits_processors(c, input_length, p.max_length);
  LogitsProcessorList warpers = c.do_sample ? make_logits_warpers(c) : LogitsProcessorList();
  if (c.do_sample) expand_rows(model, p.ids, p.mask, c.num_return_sequences);
  Generator gen = c.do_sample ? make_generator(c.seed, p.ids.device()) : c10::nullopt;

  torch::Tensor seq = p.ids, mask = p.mask;  // (N,L)
  const std::int64_t rows = seq.size(0);
  torch::Tensor ones_column = torch::ones({rows, 1}, mask.options());
  torch::Tensor unfinished = torch::ones({rows}, seq.options());  // (N) 1 while a row runs
  torch::Tensor eos = c.eos_token_id.empty() ? torch::Tensor() : torch::tensor(c.eos_token_id, seq.options());
  bool rows_can_finish = eos.defined();
  std::vector<torch::Tensor> step_scores;
  std::int64_t vocab = 0;
  while (true) {
    torch::Tensor scores = step_logits(model, seq, mask, c, vocab);  // (N,V)
    scores = processors(seq, scores);
    if (c.do_sample) scores = warpers(seq, scores);
    if (c.output_scores) step_scores.push_back(scores);
    torch::Tensor next = c.do_sample ? torch::multinomial(scores.softmax(-1), 1, false, gen).squeeze(1)
                                     : scores.argmax(-1);  // (N)
    if (rows_can_finish) {
      ADAPTERS_CHECK(c.pad_token_id, "generate: a row finished early but there is no pad_token_id to fill it with");
      next = next * unfinished + *c.pad_token_id * (1 - unfinished);
    }
    seq = torch::cat({seq, next.unsqueeze(1)}, 1);
    mask = torch::cat({mask, ones_column}, 1);
    if (eos.defined()) unfinished = unfinished * not_eos(next, eos);
    if (hooks.on_tokens) hooks.on_tokens(next);
    if (hooks.stop) rows_can_finish = apply_stop_hook(hooks, seq, unfinished) || rows_can_finish;
    if (seq.size(1) >= p.max_length) break;
    if (rows_can_finish && unfinished.max().item<std::int64_t>() == 0) break;
  }
  return {seq, stack_scores(step_scores), torch::Tensor()};
}

// ---- beam search ----------------------------------------------------------------------------------

// HF BeamHypotheses: the n best finished hypotheses of one batch row.
class BeamHypotheses {
 public:
  struct Hyp {
    double score;
    torch::Tensor tokens;  // (len) int64, CPU
  };

  BeamHypotheses(std::int64_t num_beams, double length_penalty, EarlyStopping early_stopping, std::int64_t max_length)
      : num_beams_(num_beams), length_penalty_(length_penalty), early_stopping_(early_stopping),
        max_length_(max_length) {}

  std::int64_t size() const { return static_cast<std::int64_t>(beams_.size()); }
  std::vector<Hyp>& beams() { return beams_; }

  // score = sum_logprobs / len ** length_penalty, len the full length of the hypothesis (HF 4.26).
  void add(torch::Tensor tokens, double sum_logprobs) {
    const double score = sum_logprobs / std::pow(static_cast<double>(tokens.size(0)), length_penalty_);
    if (size() >= num_beams_ && !(score > worst_score_)) return;
    beams_.push_back({score, std::move(tokens)});
    if (size() > num_beams_) {
      // Python's sorted([(s, idx)]): ties broken by insertion index.
      std::vector<std::pair<double, std::size_t>> order;
      for (std::size_t i = 0; i < beams_.size(); ++i) order.emplace_back(beams_[i].score, i);
      std::sort(order.begin(), order.end());
      beams_.erase(beams_.begin() + static_cast<std::ptrdiff_t>(order[0].second));
      worst_score_ = order[1].first;
    } else {
      worst_score_ = std::min(score, worst_score_);
    }
  }

  // Whether no running beam can still beat the worst kept hypothesis.
  bool is_done(double best_sum_logprobs, std::int64_t cur_len) const {
    if (size() < num_beams_) return false;
    if (early_stopping_ == EarlyStopping::True) return true;
    const bool at_max = early_stopping_ == EarlyStopping::Never && length_penalty_ > 0.0;
    const double len = static_cast<double>(at_max ? max_length_ : cur_len);
    return worst_score_ >= best_sum_logprobs / std::pow(len, length_penalty_);
  }

 private:
  std::int64_t num_beams_;
  double length_penalty_;
  EarlyStopping early_stopping_;
  std::int64_t max_length_;
  std::vector<Hyp> beams_;
  double worst_score_ = 1e9;
};

// The next beams of one step, (batch*num_beams) each, on the CPU.
struct BeamStep {
  torch::Tensor scores;   // float32
  torch::Tensor tokens;   // int64
  torch::Tensor indices;  // int64: rows of the current sequences to continue
};

// HF BeamSearchScorer (num_beam_groups 1).
class BeamSearchScorer {
 public:
  BeamSearchScorer(std::int64_t batch, const GenerationConfig& c, std::int64_t hyps_to_keep, std::int64_t max_length)
      : num_beams_(c.num_beams), keep_(hyps_to_keep), done_(static_cast<std::size_t>(batch), false) {
    for (std::int64_t b = 0; b < batch; ++b)
      hyps_.emplace_back(c.num_beams, c.length_penalty, c.early_stopping, max_length);
  }

  bool is_done() const { return std::all_of(done_.begin(), done_.end(), [](bool d) { return d; }); }

  // `input_ids` (batch*nb, L) before this step's token; candidates (batch, 2*nb) sorted best first.
  BeamStep process(const torch::Tensor& input_ids, const torch::Tensor& next_scores, const torch::Tensor& next_tokens,
                   const torch::Tensor& next_indices, const std::optional<std::int64_t>& pad,
                   const std::vector<std::int64_t>& eos) {
    const std::int64_t batch = static_cast<std::int64_t>(hyps_.size()), cur_len = input_ids.size(1);
    torch::Tensor sc = next_scores.to(torch::kCPU).contiguous(), tok = next_tokens.to(torch::kCPU).contiguous(),
                  idx = next_indices.to(torch::kCPU).contiguous();
    const std::int64_t candidates = sc.size(1);
    auto s = sc.accessor<float, 2>();
    auto t = tok.accessor<std::int64_t, 2>();
    auto ix = idx.accessor<std::int64_t, 2>();
    BeamStep out{torch::zeros({batch, num_beams_}, torch::kFloat), torch::zeros({batch, num_beams_}, torch::kLong),
                 torch::zeros({batch, num_beams_}, torch::kLong)};
    auto os = out.scores.accessor<float, 2>();
    auto ot = out.tokens.accessor<std::int64_t, 2>();
    auto oi = out.indices.accessor<std::int64_t, 2>();
    torch::Tensor ids_cpu;  // fetched when a hypothesis finishes
    for (std::int64_t b = 0; b < batch; ++b) {
      if (done_[b]) {
        ADAPTERS_CHECK(!eos.empty() && pad, "beam search: a finished batch row needs eos_token_id and pad_token_id");
        for (std::int64_t j = 0; j < num_beams_; ++j) ot[b][j] = *pad;  // score 0, index 0 (as HF)
        continue;
      }
      std::int64_t beam = 0;
      for (std::int64_t rank = 0; rank < candidates && beam < num_beams_; ++rank) {
        const std::int64_t token = t[b][rank], row = b * num_beams_ + ix[b][rank];
        if (std::find(eos.begin(), eos.end(), token) != eos.end()) {
          if (rank >= num_beams_) continue;  // an EOS outside the top num_beams does not finish a hypothesis
          if (!ids_cpu.defined()) ids_cpu = input_ids.to(torch::kCPU);
          hyps_[b].add(ids_cpu[row].clone(), s[b][rank]);
        } else {
          os[b][beam] = s[b][rank];
          ot[b][beam] = token;
          oi[b][beam] = row;
          ++beam;
        }
      }
      ADAPTERS_CHECK(beam == num_beams_, "beam search: at most ", num_beams_, " of the ", candidates,
                     " best next tokens may be EOS ids");
      const double best = sc[b].max().item<float>();
      done_[b] = done_[b] || hyps_[b].is_done(best, cur_len);
    }
    return {out.scores.view(-1), out.tokens.view(-1), out.indices.view(-1)};
  }

  // The keep_ best hypotheses of every batch row (batch*keep_, len) and their scores (batch*keep_).
  GenerateOutput finalize(const torch::Tensor& input_ids, const torch::Tensor& final_scores, std::int64_t max_length,
                          const std::optional<std::int64_t>& pad, const std::vector<std::int64_t>& eos) {
    torch::Tensor ids_cpu = input_ids.to(torch::kCPU), scores_cpu = final_scores.to(torch::kCPU).contiguous();
    const float* fs = scores_cpu.data_ptr<float>();
    for (std::size_t b = 0; b < hyps_.size(); ++b) {
      if (done_[b]) continue;
      for (std::int64_t j = 0; j < num_beams_; ++j) {
        const std::int64_t row = static_cast<std::int64_t>(b) * num_beams_ + j;
        hyps_[b].add(ids_cpu[row], fs[row]);
      }
    }
    std::vector<BeamHypotheses::Hyp> best = best_hypotheses();
    return assemble(best, max_length, pad, eos, input_ids.device());
  }

 private:
  // Python's sorted(beams, key=score) then pop(): best first; equal scores, the later added first.
  std::vector<BeamHypotheses::Hyp> best_hypotheses() {
    std::vector<BeamHypotheses::Hyp> best;
    for (auto& h : hyps_) {
      std::vector<BeamHypotheses::Hyp> sorted = h.beams();
      std::stable_sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.score < b.score; });
      for (std::int64_t j = 0; j < keep_; ++j) {
        best.push_back(sorted.back());
        sorted.pop_back();
      }
    }
    return best;
  }

  // Pads to min(longest + 1, max_length) and appends eos_token_id[0] where it fits.
  static GenerateOutput assemble(const std::vector<BeamHypotheses::Hyp>& best, std::int64_t max_length,
                                 const std::optional<std::int64_t>& pad, const std::vector<std::int64_t>& eos,
                                 const torch::Device& device) {
    std::int64_t shortest = best.front().tokens.size(0), longest = shortest;
    for (const auto& h : best) {
      shortest = std::min(shortest, h.tokens.size(0));
      longest = std::max(longest, h.tokens.size(0));
    }
    const std::int64_t width = std::min(longest + 1, max_length);
    const auto n = static_cast<std::int64_t>(best.size());
    torch::Tensor decoded = torch::zeros({n, width}, torch::kLong);
    if (shortest != longest) {
      ADAPTERS_CHECK(pad, "beam search: hypotheses of different lengths need a pad_token_id");
      decoded.fill_(*pad);
    }
    torch::Tensor scores = torch::empty({n}, torch::kFloat);
    for (std::int64_t i = 0; i < n; ++i) {
      const torch::Tensor& tokens = best[i].tokens;
      decoded[i].narrow(0, 0, tokens.size(0)).copy_(tokens);
      if (tokens.size(0) < width) {
        ADAPTERS_CHECK(!eos.empty(), "beam search: a hypothesis ended early without an eos_token_id");
        decoded[i][tokens.size(0)] = eos[0];
      }
      scores[i] = best[i].score;
    }
    return {decoded.to(device), torch::Tensor(), scores.to(device)};
  }

  std::int64_t num_beams_;
  std::int64_t keep_;
  std::vector<BeamHypotheses> hyps_;
  std::vector<bool> done_;
};

// The 2*num_beams best candidates per batch row of `scores` (batch, nb*V), best first: top-k (beam
// search) or drawn without replacement from their softmax then sorted (beam sampling).
std::tuple<torch::Tensor, torch::Tensor> beam_candidates(const torch::Tensor& scores, std::int64_t count, bool sample,
                                                         Generator& gen) {
  if (!sample) return scores.topk(count, 1, /*largest=*/true, /*sorted=*/true);
  torch::Tensor tokens = torch::multinomial(scores.softmax(-1), count, false, gen);  // (batch,2nb)
  auto [picked, order] = scores.gather(-1, tokens).sort(1, /*descending=*/true);
  return {picked, tokens.gather(-1, order)};
}

// HF beam_search (do_sample false) and beam_sample (do_sample true).
GenerateOutput beam_loop(StepModel& model, Prepared p) {
  const GenerationConfig& c = p.config;
  const std::int64_t nb = c.num_beams, input_length = p.ids.size(1);
  ADAPTERS_CHECK(input_length < p.max_length, "beam search: the input is ", input_length,
                 " tokens long, not shorter than max_length ", p.max_length, " (raise max_new_tokens)");
  // Beam sampling runs num_return_sequences independent beam searches per prompt, keeping one each.
  const std::int64_t batch = p.ids.size(0) * (c.do_sample ? c.num_return_sequences : 1);
  BeamSearchScorer scorer(batch, c, c.do_sample ? 1 : c.num_return_sequences, p.max_length);
  LogitsProcessorList processors = make_logits_processors(c, input_length, p.max_length);
  LogitsProcessorList warpers = c.do_sample ? make_logits_warpers(c) : LogitsProcessorList();
  expand_rows(model, p.ids, p.mask, nb * (c.do_sample ? c.num_return_sequences : 1));
  Generator gen = c.do_sample ? make_generator(c.seed, p.ids.device()) : c10::nullopt;

  torch::Tensor seq = p.ids, mask = p.mask;  // (batch*nb, L)
  torch::Tensor ones_column = torch::ones({seq.size(0), 1}, mask.options());
  // Only the first beam is live at the start (beam search), so the beams do not all pick the same token.
  torch::Tensor beam_scores = torch::zeros({batch, nb}, seq.options().dtype(torch::kFloat));
  if (!c.do_sample && nb > 1) beam_scores.narrow(1, 1, nb - 1).fill_(-1e9);
  beam_scores = beam_scores.view(-1);  // (batch*nb)
  std::vector<torch::Tensor> step_scores;
  std::int64_t vocab = 0;
  while (true) {
    torch::Tensor logprobs = step_logits(model, seq, mask, c, vocab).log_softmax(-1);  // (batch*nb, V)
    torch::Tensor processed = processors(seq, logprobs);
    torch::Tensor scores = processed + beam_scores.unsqueeze(1);
    if (c.do_sample) scores = warpers(seq, scores);
    if (c.output_scores) step_scores.push_back(c.do_sample ? warpers(seq, processed) : processed);
    const std::int64_t count = std::min(2 * nb, nb * vocab);
    auto [cand_scores, cand] = beam_candidates(scores.view({batch, nb * vocab}), count, c.do_sample, gen);
    torch::Tensor indices = cand.div(vocab, "floor"), tokens = cand.remainder(vocab);  // (batch, count)
    BeamStep step = scorer.process(seq, cand_scores, tokens, indices, c.pad_token_id, c.eos_token_id);
    torch::Tensor beam_idx = step.indices.to(seq.device());
    beam_scores = step.scores.to(seq.device());
    seq = torch::cat({seq.index_select(0, beam_idx), step.tokens.to(seq.device()).unsqueeze(1)}, 1);
    mask = torch::cat({mask, ones_column}, 1);  // the rows of one prompt share their mask (HF keeps it)
    model.select_rows(beam_idx);
    if (scorer.is_done() || seq.size(1) >= p.max_length) break;
  }
  GenerateOutput out = scorer.finalize(seq, beam_scores, p.max_length, c.pad_token_id, c.eos_token_id);
  out.scores = stack_scores(step_scores);
  return out;
}

}  // namespace

std::int64_t resolve_max_length(const GenerationConfig& c, std::int64_t input_length) {
  if (c.max_new_tokens) return *c.max_new_tokens + input_length;
  return c.max_length.value_or(kDefaultMaxLength);
}

GenerateOutput decode(StepModel& model, const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                      const GenerationConfig& config, const DecodeHooks& hooks) {
  torch::NoGradGuard no_grad;
  Prepared p = prepare(input_ids, attention_mask, config);
  if (p.config.num_beams == 1) return token_search(model, std::move(p), hooks);
  if (hooks.stop)
    throw NotSupported(str("generate: a stop hook (stop strings) needs num_beams 1, found num_beams ",
                           p.config.num_beams));
  return beam_loop(model, std::move(p));
}

GenerateOutput beam_search(StepModel& model, const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                           const GenerationConfig& config) {
  torch::NoGradGuard no_grad;
  GenerationConfig c = config;
  c.do_sample = false;
  return beam_loop(model, prepare(input_ids, attention_mask, c));
}

}  // namespace adapters::generation
