// The base model's forward skeleton, input checks and hook-site discovery.
#include "adapters/models/base_model.h"

#include <torch/torch.h>

#include "adapters/core/error.h"
#include "adapters/models/registry.h"

namespace adapters::models {

using torch::Tensor;

HookSites find_hook_sites(const torch::nn::Module& module) {
  HookSites sites;
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    torch::nn::Module* m = item.value().get();
    if (auto* linear = dynamic_cast<nn::AdaptedLinearImpl*>(m)) {
      sites.linear.push_back(linear);
      sites.linear_paths.push_back(item.key());
    }
    if (auto* residual = dynamic_cast<nn::ResidualAdapterDictImpl*>(m)) sites.residual.push_back(residual->site);
    if (auto* attention = dynamic_cast<nn::AttentionSiteModule*>(m)) sites.attention.push_back(attention->site);
  }
  return sites;
}

const HookSites& BaseModelImpl::sites() const {
  if (!sites_found_) {
    sites_ = find_hook_sites(*this);
    sites_found_ = true;
  }
  return sites_;
}

void BaseModelImpl::delete_adapter(const std::string& name) {
  for (auto* site : sites().residual) site->delete_adapter(name);
  for (auto* site : sites().attention) site->delete_adapter(name);
  for (auto* linear : sites().linear) linear->delete_adapter(name);
  hooks_.delete_adapter(name);
}

Tensor BaseModelImpl::word_embeddings() const {
  const std::string& path = arch_spec(config_.model_type).word_embeddings;
  if (path.empty()) return Tensor();
  const Tensor* w = named_parameters().find(path);
  return w ? *w : Tensor();
}

Tensor BaseModelImpl::input_embeddings(const Tensor& input_ids) const {
  const Tensor w = word_embeddings();
  ADAPTERS_CHECK(w.defined(), config_.model_type, " has no input word embeddings");
  return torch::embedding(w, input_ids);
}

std::int64_t BaseModelImpl::batch_size(const ModelInputs& in) const {
  for (const Tensor* t : {&in.input_ids, &in.inputs_embeds, &in.pixel_values}) {
    if (t->defined()) return t->size(0);
  }
  throw Error(str(config_.model_type, " forward: no input (expected input_ids or inputs_embeds)"));
}

void BaseModelImpl::check_inputs(const ModelInputs& in) const {
  const std::string where = config_.model_type + " forward";
  ADAPTERS_CHECK(!in.pixel_values.defined(), where, ": pixel_values is for vision models; this model reads input_ids");
  ADAPTERS_CHECK(in.input_ids.defined() != in.inputs_embeds.defined(), where,
                 ": expected exactly one of input_ids and inputs_embeds");
  Tensor shape_source = in.input_ids;
  if (in.input_ids.defined()) {
    ADAPTERS_CHECK(in.input_ids.dim() == 2, where, ": input_ids must be (B,T), found ", in.input_ids.dim(), " dimensions");
    ADAPTERS_CHECK(in.input_ids.scalar_type() == torch::kLong, where, ": input_ids must be int64, found ",
                   in.input_ids.scalar_type());
    if (in.input_ids.numel() > 0) {
      const auto lo = in.input_ids.min().item<std::int64_t>();
      const auto hi = in.input_ids.max().item<std::int64_t>();
      ADAPTERS_CHECK(lo >= 0 && hi < config_.vocab_size, where, ": input_ids must lie in [0, ", config_.vocab_size,
                     "), found [", lo, ", ", hi, "]");
    }
  } else {
    ADAPTERS_CHECK(in.inputs_embeds.dim() == 3 && in.inputs_embeds.size(2) == config_.hidden_size, where,
                   ": inputs_embeds must be (B,T,", config_.hidden_size, "), found ", in.inputs_embeds.sizes());
    shape_source = in.inputs_embeds.select(2, 0);
  }
  const std::int64_t past = in.cache ? in.cache->length() : 0;
  for (const auto& [what, t] : {std::pair<const char*, const Tensor&>{"token_type_ids", in.token_type_ids},
                                {"position_ids", in.position_ids}}) {
    if (!t.defined()) continue;
    ADAPTERS_CHECK(t.sizes() == shape_source.sizes(), where, ": ", what, " must have the shape of the inputs ",
                   shape_source.sizes(), ", found ", t.sizes());
  }
  if (in.attention_mask.defined()) {
    ADAPTERS_CHECK(in.attention_mask.dim() == 2 && in.attention_mask.size(0) == shape_source.size(0) &&
                       in.attention_mask.size(1) == past + shape_source.size(1),
                   where, ": attention_mask must have the shape of input_ids", past ? " plus the cached tokens" : "",
                   " (", shape_source.size(0), ", ", past + shape_source.size(1), "), found ", in.attention_mask.sizes());
  }
}

Tensor BaseModelImpl::attention_mask(const Tensor& h, const LayerArgs& args) const {
  nn::MaskSpec spec;
  spec.padding = args.attention_mask;
  spec.query_length = h.size(1);
  spec.key_length = args.attention_mask.defined() ? args.attention_mask.size(1) : h.size(1);
  return nn::build_attention_mask(spec, h.scalar_type(), h.device());
}

BaseModelOutput BaseModelImpl::finish(const Tensor& h, const LayerArgs&, nn::ForwardContext&) {
  return {h, Tensor()};
}

Tensor BaseModelImpl::causal_mask(const Tensor& h, const LayerArgs& args, bool add_padding_to_causal) {
  nn::MaskSpec spec;
  spec.padding = args.attention_mask;
  spec.query_length = h.size(1);
  spec.past_length = args.past_length;
  spec.key_length = args.past_length + h.size(1);
  spec.causal = true;
  spec.add_padding_to_causal = add_padding_to_causal;
  return nn::build_attention_mask(spec, h.scalar_type(), h.device());
}

LayerArgs BaseModelImpl::stack_args(const ModelInputs& in, const Tensor& input_ids, const Tensor& attention_mask,
                                     const Tensor& filler) {
  LayerArgs args;
  args.inputs = &in;
  args.input_ids = input_ids;
  args.attention_mask = attention_mask;
  args.position_ids = in.position_ids;
  args.cache = in.cache;
  args.past_length = in.cache ? in.cache->length() : 0;
  const Tensor cached = in.cache ? in.cache->filler : Tensor();
  if (!cached.defined() && !filler.defined()) return args;
  // (B,past+T): the cache's filler columns, then this call's.
  const Tensor& tokens = input_ids.defined() ? input_ids : in.inputs_embeds;
  const std::int64_t B = tokens.size(0), T = tokens.size(1), past = args.past_length;
  const auto options = torch::TensorOptions().dtype(torch::kLong).device(tokens.device());
  Tensor before = cached.defined() ? cached.to(options) : torch::zeros({B, 0}, options);
  before = torch::cat({before, torch::zeros({B, past - before.size(1)}, options)}, 1);
  ADAPTERS_CHECK(!filler.defined() || filler.sizes() == torch::IntArrayRef({B, T}), "filler must be (B,T) = (", B, ", ", T,
                 "), found ", filler.sizes());
  args.filler = torch::cat({before, filler.defined() ? filler.to(options) : torch::zeros({B, T}, options)}, 1);
  Tensor mask = attention_mask.defined() ? attention_mask.to(options) : torch::ones({B, past + T}, options);
  if (mask.size(1) == T && past > 0) mask = torch::cat({torch::ones({B, past}, options), mask}, 1);
  args.attention_mask = mask * (1 - args.filler);
  args.position_shift = args.filler.sum(1, /*keepdim=*/true);
  return args;
}

void BaseModelImpl::remember_filler(const LayerArgs& args) {
  if (args.cache != nullptr && args.filler.defined()) args.cache->filler = args.filler;
}

Tensor BaseModelImpl::run_layers(Tensor h, std::int64_t begin, std::int64_t end, LayerArgs& args,
                                 nn::ForwardContext& ctx) {
  for (std::int64_t i = begin; i < end; ++i) h = hooks_.layer_output(i, layer(i, h, args, ctx), ctx);
  return h;
}

BaseModelOutput BaseModelImpl::run(const ModelInputs& in, nn::ForwardContext& ctx) {
  LayerArgs args = stack_args(in, in.input_ids, in.attention_mask, in.filler);
  remember_filler(args);
  Tensor h = embed(in, args, ctx);                                // (B,T,C)
  h = hooks_.embeddings(std::move(h), args.attention_mask, ctx);  // prompt tokens may lengthen T
  args.mask = attention_mask(h, args);
  h = run_layers(std::move(h), 0, num_layers(), args, ctx);
  return finish(h, args, ctx);
}

BaseModelOutput BaseModelImpl::forward(const ModelInputs& in, nn::ForwardContext& ctx) {
  check_inputs(in);
  hooks_.prepare(batch_size(in), ctx);
  BaseModelOutput out = run(in, ctx);
  out.cache = in.cache;
  return out;
}

}  // namespace adapters::models
