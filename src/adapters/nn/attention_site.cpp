// Attention sites: the active setup's attention adapters (prefix tuning) of this site, composed
// by the driver, and the batch matching that Parallel blocks need.
#include "adapters/nn/attention_site.h"

#include <torch/torch.h>

#include <limits>

#include "adapters/core/error.h"
#include "adapters/nn/composer.h"
#include "adapters/nn/residual_site.h"

namespace adapters::nn {

using torch::Tensor;

class AttentionComposable : public Composable<AttentionState> {
 public:
  AttentionComposable(const AttentionSite& site, std::int64_t pad_token_id, bool rows_independent)
      : site_(site), pad_token_id_(pad_token_id), rows_independent_(rows_independent) {}

  bool holds(const std::string& adapter) const override { return site_.adapters_->contains(adapter); }
  std::string describe() const override { return str("layer ", site_.layer_, " ", site_.location_); }
  std::string family() const override { return "prefix tuning"; }
  bool supports(BlockType type) const override {
    return type == BlockType::Stack || type == BlockType::Parallel || type == BlockType::BatchSplit;
  }

  std::int64_t batch_size(const AttentionState& s) const override { return s.key.size(0); }

  AttentionState slice_batch(const AttentionState& s, std::int64_t b, std::int64_t e) const override {
    auto rows = [&](const Tensor& t) { return t.defined() ? t.slice(0, b, e) : t; };
    return {rows(s.query), rows(s.key), rows(s.value), rows(s.mask), rows(s.hidden), s.row_offset + b};
  }

  AttentionState repeat_batch(const AttentionState& s, std::int64_t n) const override {
    return {repeat_batch_of(s.query, n), repeat_batch_of(s.key, n),    repeat_batch_of(s.value, n),
            repeat_batch_of(s.mask, n),  repeat_batch_of(s.hidden, n), s.row_offset};
  }

  // Members may have prefixes of different lengths: shorter keys and values are padded on the
  // left with pad_token_id and their mask as the reference pads it (see the constructor's note);
  // with one adapter per row, with zeros and masked out, so that each row attends as if alone.
  AttentionState concat_batch(const std::vector<AttentionState>& parts) const override {
    std::int64_t longest = 0, query_rows = 1;
    for (const auto& p : parts) longest = std::max(longest, p.key.size(2));
    bool has_mask = true, padded = false;
    for (const auto& p : parts) {
      has_mask = has_mask && p.mask.defined();
      padded = padded || p.key.size(2) < longest;
      if (p.mask.defined()) query_rows = std::max(query_rows, p.mask.size(2));
    }
    const bool exact = rows_independent_ && padded;
    std::vector<Tensor> q, k, v, m, h;
    for (const auto& p : parts) {
      const std::int64_t pad = longest - p.key.size(2);
      q.push_back(p.query);
      h.push_back(p.hidden);
      if (exact) {
        k.push_back(pad_left(p.key, pad, 2, 0.0));
        v.push_back(pad_left(p.value, pad, 2, 0.0));
        Tensor mask = p.mask.defined() ? p.mask : torch::zeros({p.key.size(0), 1, 1, p.key.size(2)}, p.query.options());
        mask = pad_left(mask, pad, 3, static_cast<double>(std::numeric_limits<float>::lowest()));
        m.push_back(mask.expand({p.key.size(0), 1, query_rows, longest}));
        continue;
      }
      k.push_back(pad_left(p.key, pad, 2, static_cast<double>(pad_token_id_)));
      v.push_back(pad_left(p.value, pad, 2, static_cast<double>(pad_token_id_)));
      if (p.mask.defined()) m.push_back(pad_left(p.mask, pad, 3, mask_pad_value(p.mask)));
    }
    return {torch::cat(q, 0), torch::cat(k, 0), torch::cat(v, 0), has_mask || exact ? torch::cat(m, 0) : Tensor(),
            torch::cat(h, 0), parts.front().row_offset};
  }

  AttentionState single(const std::string& name, AttentionState s, ForwardContext& ctx) const override {
    return site_.adapters_->find(name)->apply(s, site_.layer_, site_.location_, ctx);
  }

 private:
  static Tensor pad_left(const Tensor& t, std::int64_t pad, std::int64_t dim, double value) {
    if (pad <= 0) return t;
    std::vector<std::int64_t> shape(t.sizes().begin(), t.sizes().end());
    shape[static_cast<std::size_t>(dim)] = pad;
    return torch::cat({torch::full(shape, value, t.options()), t}, dim);
  }
  double mask_pad_value(const Tensor& mask) const {
    return site_.invert_mask_ ? 1.0 : static_cast<double>(std::numeric_limits<float>::lowest());
  }

  const AttentionSite& site_;
  std::int64_t pad_token_id_;
  bool rows_independent_;
};

AttentionSite::AttentionSite(std::int64_t layer, std::string location, bool invert_mask)
    : layer_(layer),
      location_(std::move(location)),
      invert_mask_(invert_mask),
      module_(std::make_shared<AttentionSiteModule>()),
      adapters_(make_adapter_dict<AttentionAdapter>()) {
  module_->site = this;
  module_->register_module("prefix_gates", adapters_);
}

void AttentionSite::register_in(torch::nn::Module& owner) { owner.register_module("prefix_tuning", module_); }

bool AttentionSite::holds_any(const Block& setup) const {
  for (const auto& name : setup.flatten()) {
    if (adapters_->contains(name)) return true;
  }
  return false;
}

AttentionState AttentionSite::forward(AttentionState s, ForwardContext& ctx) const {
  // LoRA on some projections under Parallel may have replicated only some of q, k, v.
  Tensor widest = s.query;
  for (const Tensor* t : {&s.key, &s.value}) {
    if (t->size(0) > widest.size(0)) widest = *t;
  }
  s.query = match_batch(s.query, widest);
  s.key = match_batch(s.key, widest);
  s.value = match_batch(s.value, widest);
  s.hidden = match_batch(s.hidden, widest);
  s.mask = match_batch(s.mask, widest);
  if (ctx.setup != nullptr && !adapters_->empty() && holds_any(*ctx.setup)) {
    AttentionComposable site(*this, ctx.pad_token_id, ctx.rows_independent);
    // Row groups slice the mask: a mask broadcast over the batch gets its rows first.
    if (ctx.rows_independent && s.mask.defined() && s.mask.size(0) != s.key.size(0)) {
      s.mask = s.mask.expand({s.key.size(0), s.mask.size(1), s.mask.size(2), s.mask.size(3)});
    }
    s = compose<AttentionState>(site, *ctx.setup, std::move(s), ctx);
    s.query = match_batch(s.query, s.key);
    s.hidden = match_batch(s.hidden, s.key);
    s.mask = match_batch(s.mask, s.key);
  }
  return s;
}

void AttentionSite::add_adapter(const std::string& name, std::shared_ptr<AttentionAdapter> adapter) {
  adapters_->insert(name, std::move(adapter));
}

void AttentionSite::delete_adapter(const std::string& name) { adapters_->erase(name); }

}  // namespace adapters::nn
