// Residual sites: the plain residual + norm when no adapter is active here, otherwise the
// reference's adapter_layer_forward over the active setup, every block through the composer.
#include "adapters/nn/residual_site.h"

#include <torch/torch.h>

#include "adapters/core/error.h"
#include "adapters/nn/composer.h"

namespace adapters::nn {

using torch::Tensor;

Tensor match_batch(const Tensor& t, const Tensor& reference) {
  if (!t.defined() || !reference.defined() || t.size(0) == reference.size(0)) return t;
  if (t.size(0) > reference.size(0) || reference.size(0) % t.size(0) != 0) return t;
  return repeat_batch_of(t, reference.size(0) / t.size(0));
}

// What flows through a residual site's composition: (B,T,C) tensors.
struct ResidualState {
  Tensor hidden;    // what the next adapter transforms
  Tensor input;     // the sublayer's residual input
  Tensor residual;  // the adapter residual set by pre_block
  Tensor up;        // the last adapter's up-projection (Fuse collects them)
};

class ResidualComposable : public Composable<ResidualState> {
 public:
  ResidualComposable(const ResidualSite& site, const Norm& norm) : site_(site), norm_(norm) {}

  bool holds(const std::string& adapter) const override { return site_.holds(adapter); }
  std::string describe() const override { return str("layer ", site_.layer_, " ", site_.location_); }
  std::string family() const override { return "bottleneck adapters"; }
  bool supports(BlockType) const override { return true; }

  std::int64_t batch_size(const ResidualState& s) const override { return s.hidden.size(0); }
  std::int64_t sequence_length(const ResidualState& s) const override { return s.hidden.size(1); }

  ResidualState slice_batch(const ResidualState& s, std::int64_t b, std::int64_t e) const override {
    return map(s, [&](const Tensor& t) { return t.slice(0, b, e); });
  }
  ResidualState slice_sequence(const ResidualState& s, std::int64_t b, std::int64_t e) const override {
    return map(s, [&](const Tensor& t) { return t.slice(1, b, e); });
  }
  ResidualState repeat_batch(const ResidualState& s, std::int64_t n) const override {
    return map(s, [&](const Tensor& t) { return repeat_batch_of(t, n); });
  }
  ResidualState concat_batch(const std::vector<ResidualState>& parts) const override { return concat(parts, 0); }
  ResidualState concat_sequence(const std::vector<ResidualState>& parts) const override { return concat(parts, 1); }
  ResidualState average(const std::vector<ResidualState>& parts, const std::vector<double>& w) const override {
    std::vector<Tensor> hidden;
    for (const auto& p : parts) hidden.push_back(p.hidden);
    ResidualState out = parts.front();
    out.hidden = weighted_sum(hidden, w);
    return out;
  }

  ResidualState pre_block(const std::string& name, ResidualState s) const override {
    PreForward pre = site_.adapters_->find(name)->pre_forward(s.hidden, s.input, norm_, false, false);
    s.hidden = pre.hidden;
    s.residual = pre.residual;
    return s;
  }

  ResidualState single(const std::string& name, ResidualState s, ForwardContext& ctx) const override {
    AdapterOutput out = site_.adapters_->find(name)->forward(s.hidden, s.residual);
    site_.store_gating_score(ctx, name, out.gate);
    s.hidden = out.output;
    s.up = out.up;
    return s;
  }

  ResidualState fuse(const Block& block, ResidualState s, ForwardContext& ctx, int level,
                     const std::function<ResidualState(const Block&, ResidualState)>& stack) const override {
    const std::string name = block.fusion_name();
    BertFusionImpl* fusion = site_.fusion(name);
    ADAPTERS_CHECK(fusion != nullptr, "adapter setup ", block.to_string(), " at ", describe(), ": no fusion layer '",
                   name, "'", " (add it with add_adapter_fusion or load_adapter_fusion)");
    // The last fused adapter's configuration decides the residual and the query.
    ResidualAdapter* last = nullptr;
    for (const auto& n : block.flatten()) {
      if (auto* a = site_.adapters_->find(n)) last = a;
    }
    PreForward pre = last->pre_forward(s.hidden, s.input, norm_, true, fusion->config().query_before_ln);
    std::vector<Tensor> ups;
    for (const Block& child : block.children) {
      if (child.is_adapter()) {
        if (!holds(child.name)) continue;
        AdapterOutput out = site_.adapters_->find(child.name)->forward(pre.hidden, pre.residual);
        site_.store_gating_score(ctx, child.name, out.gate);
        ups.push_back(out.up);
      } else if (child.type == BlockType::Stack) {
        ResidualState st = stack(child, {pre.hidden, s.input, pre.residual, Tensor()});
        const Block& tail = child.children.back();
        if (tail.is_adapter() && holds(tail.name) && st.up.defined()) ups.push_back(st.up);
      } else {
        throw Error(str("adapter setup ", block.to_string(), ": cannot nest ",
                        composition::block_type_name(child.type), " in Fuse"));
      }
    }
    s.residual = pre.residual;
    if (ups.empty()) return s;
    const Tensor up = torch::stack(ups).permute({1, 2, 0, 3});  // (N,B,T,C) -> (B,T,N,C)
    Tensor scores;
    s.hidden = fusion->forward(pre.query, up, up, pre.residual, ctx.output_fusion_attentions ? &scores : nullptr);
    if (scores.defined()) ctx.fusion_attentions[name][site_.layer_][site_.location_] = scores;
    s.up = Tensor();
    return s;
  }

 private:
  template <typename F>
  static ResidualState map(const ResidualState& s, F f) {
    auto g = [&](const Tensor& t) { return t.defined() ? f(t) : t; };
    return {g(s.hidden), g(s.input), g(s.residual), g(s.up)};
  }
  static ResidualState concat(const std::vector<ResidualState>& parts, std::int64_t dim) {
    auto cat = [&](Tensor ResidualState::*field) {
      std::vector<Tensor> ts;
      for (const auto& p : parts) {
        if (!(p.*field).defined()) return Tensor();
        ts.push_back(p.*field);
      }
      return torch::cat(ts, dim);
    };
    return {cat(&ResidualState::hidden), cat(&ResidualState::input), cat(&ResidualState::residual),
            cat(&ResidualState::up)};
  }

  const ResidualSite& site_;
  const Norm& norm_;
};

ResidualSite::ResidualSite(std::int64_t layer, std::string location)
    : layer_(layer),
      location_(std::move(location)),
      adapters_(std::make_shared<ResidualAdapterDictImpl>()),
      fusions_(make_adapter_dict<BertFusionImpl>()) {
  adapters_->site = this;
}

void ResidualSite::register_in(torch::nn::Module& owner) {
  owner.register_module("adapters", adapters_);
  owner.register_module("adapter_fusion_layer", fusions_);
}

void ResidualSite::add_adapter(const std::string& name, std::shared_ptr<ResidualAdapter> adapter) {
  adapters_->insert(name, std::move(adapter));
}

void ResidualSite::delete_adapter(const std::string& name) { adapters_->erase(name); }

ResidualAdapter* ResidualSite::adapter(const std::string& name) const { return adapters_->find(name); }

void ResidualSite::add_fusion(const std::string& name, std::shared_ptr<BertFusionImpl> fusion) {
  fusions_->insert(name, std::move(fusion));
}

void ResidualSite::delete_fusion(const std::string& name) { fusions_->erase(name); }

bool ResidualSite::holds_any(const Block& setup) const {
  for (const auto& name : setup.flatten()) {
    if (adapters_->contains(name)) return true;
  }
  return false;
}

const Block* ResidualSite::active_setup(const ForwardContext& ctx) const {
  if (ctx.setup == nullptr || adapters_->empty()) return nullptr;
  return holds_any(*ctx.setup) ? ctx.setup : nullptr;
}

Tensor ResidualSite::forward(const Tensor& hidden_in, const Tensor& input_in, const Norm& norm,
                             ForwardContext& ctx) const {
  // A Parallel block upstream may have replicated either side.
  const Tensor input = match_batch(input_in, hidden_in);
  const Tensor hidden = match_batch(hidden_in, input);
  const Block* setup = active_setup(ctx);
  if (setup == nullptr) return norm ? norm(hidden + input) : hidden + input;
  const Block* groups = independent_row_groups(ctx);
  if (groups == nullptr) return forward_setup(*setup, hidden, input, norm, ctx);
  // One adapter per row: each group as if alone (its own pre/post-processing; none: the plain sum).
  std::vector<Tensor> parts;
  for_each_row_group(*groups, [&](const Block& member, std::int64_t begin, std::int64_t end) {
    const Tensor h = hidden.slice(0, begin, end), in = input.slice(0, begin, end);
    if (holds_any(member)) {
      parts.push_back(forward_setup(composition::normalize_active(member), h, in, norm, ctx));
    } else {
      parts.push_back(norm ? norm(h + in) : h + in);
    }
  });
  return parts.size() == 1 ? parts.front() : torch::cat(parts, 0);
}

Tensor ResidualSite::forward_setup(const Block& setup, const Tensor& hidden, const Tensor& input, const Norm& norm,
                                   ForwardContext& ctx) const {
  ResidualComposable site(*this, norm);
  ResidualState out = compose<ResidualState>(site, setup, {hidden, input, Tensor(), Tensor()}, ctx);
  // The last adapter of the setup that lives here decides the residual and norm after it.
  ResidualAdapter* last = nullptr;
  for (const auto& name : setup.flatten()) {
    if (auto* a = adapters_->find(name)) last = a;
  }
  return last->post_forward(out.hidden, match_batch(hidden, out.hidden), out.input, norm);
}

void ResidualSite::store_gating_score(ForwardContext& ctx, const std::string& name, const Tensor& gate) const {
  if (!ctx.output_gating_scores || !gate.defined()) return;
  ctx.gating_scores[name][layer_][location_] = gate.detach();
}

}  // namespace adapters::nn
