// Benchmark: the architectures of "Architectures, part 1" at base-model shapes (random weights).
//   1. BERT-base self-attention before/after the port onto the shared attention module: the
//      pre-port attention (its code kept here verbatim: q/k/v, the prefix site, scores / sqrt(d),
//      mask, softmax, dropout, context) against nn::Attention, at B1x128 and B8x128, and the whole
//      BERT-base forward for scale. Goal: the port costs nothing (ratio <= 1.02).
//   2. ViT-base (B8, 224x224) and DeBERTa-v3-base (B8x128): forward with no adapter, seq_bn and
//      LoRA, ratios to the plain model, interleaved.
// Usage: arch_bench [repetition scale] [cpu|cuda]
#include <cstdlib>
#include <cstring>

#include "bench_util.h"

using namespace adapters;
using torch::Tensor;

namespace {

// The BERT self-attention as it was before the port (commit 3b1b9ec, models/bert.cpp).
struct LegacyBertSelfAttentionImpl : torch::nn::Module {
  LegacyBertSelfAttentionImpl(std::int64_t hidden, std::int64_t heads)
      : heads(heads), head_dim(hidden / heads), prefix(0, nn::attention_location::kSelf) {
    query = register_module("query", nn::AdaptedLinear(hidden, hidden, true, 0, nn::role::kQuery));
    key = register_module("key", nn::AdaptedLinear(hidden, hidden, true, 0, nn::role::kKey));
    value = register_module("value", nn::AdaptedLinear(hidden, hidden, true, 0, nn::role::kValue));
    dropout = register_module("dropout", torch::nn::Dropout(0.1));
    prefix.register_in(*this);
  }
  Tensor split_heads(const Tensor& x) const { return x.view({x.size(0), x.size(1), heads, head_dim}).permute({0, 2, 1, 3}); }
  Tensor forward(const Tensor& x, const Tensor& mask, nn::ForwardContext& ctx) {
    nn::AttentionState s = prefix.forward({split_heads(query->forward(x, ctx)), split_heads(key->forward(x, ctx)),
                                           split_heads(value->forward(x, ctx)), mask, x},
                                          ctx);
    Tensor scores = torch::matmul(s.query, s.key.transpose(-1, -2)) / std::sqrt(static_cast<double>(head_dim));
    if (s.mask.defined()) scores = scores + s.mask;
    Tensor probs = dropout(torch::softmax(scores, -1));
    Tensor context = torch::matmul(probs, s.value).permute({0, 2, 1, 3}).contiguous();
    return context.view({context.size(0), context.size(1), heads * head_dim});
  }
  std::int64_t heads, head_dim;
  nn::AdaptedLinear query{nullptr}, key{nullptr}, value{nullptr};
  torch::nn::Dropout dropout{nullptr};
  nn::AttentionSite prefix;
};
TORCH_MODULE(LegacyBertSelfAttention);

void bert_port(int scale, bool cuda) {
  auto sync = [cuda] { bench::synchronize(cuda); };
  const torch::Device device = cuda ? torch::kCUDA : torch::kCPU;
  LegacyBertSelfAttention legacy(768, 12);
  nn::AttentionOptions o;
  o.hidden = 768, o.heads = 12, o.dropout = 0.1;
  nn::Attention shared(o);
  for (torch::nn::Module* m : {static_cast<torch::nn::Module*>(legacy.get()), static_cast<torch::nn::Module*>(shared.get())}) {
    m->eval();
    m->to(device);
  }
  {
    torch::NoGradGuard no_grad;  // the same weights in both
    for (auto [a, b] : {std::pair{legacy->query, shared->query}, {legacy->key, shared->key}, {legacy->value, shared->value}}) {
      b->weight.copy_(a->weight);
      b->bias.copy_(a->bias);
    }
  }
  AdapterModel model(bench::bert_base_config());
  model->eval();
  model->to(device);
  for (auto [batch, reps] : {std::pair{1, 60}, std::pair{8, 10}}) {
    const Tensor x = torch::randn({batch, 128, 768}, device);
    nn::MaskSpec spec;
    spec.padding = torch::ones({batch, 128}, torch::TensorOptions().dtype(torch::kLong).device(device));
    spec.query_length = spec.key_length = 128;
    const Tensor mask = nn::build_attention_mask(spec, torch::kFloat32, device);
    nn::ForwardContext ctx;
    const Tensor before = legacy->forward(x, mask, ctx), after = shared->forward({x, mask}, ctx);
    std::printf("\nmax |after - before| = %.3g\n", (after - before).abs().max().item<double>());
    std::vector<bench::Variant> variants = {
        {"attention before the port", [&] { legacy->forward(x, mask, ctx); sync(); }},
        {"attention after (shared)", [&] { shared->forward({x, mask}, ctx); sync(); }},
    };
    const auto t = bench::time_interleaved(variants, (cuda ? 10 * reps : reps) * scale);
    bench::print_table("BERT-base self-attention, batch " + std::to_string(batch) + " x seq 128", variants, t);
    const auto inputs = bench::random_inputs(batch, 128, model->config().vocab_size);
    std::vector<bench::Variant> whole = {{"BERT-base forward (after)", [&] { model->forward(inputs); sync(); }}};
    const auto w = bench::time_interleaved(whole, std::max(2, reps / 6) * scale);
    bench::print_table("whole model, batch " + std::to_string(batch) + " x seq 128 (for scale)", whole, w);
  }
}

void adapters_on(const std::string& title, const json& config, const models::ModelInputs& inputs, int reps, bool cuda) {
  AdapterModel model(models::parse_model_config(config, title));
  model->eval();
  model->add_adapter("seq", "seq_bn");
  model->add_adapter("lora", "lora");
  if (cuda) model->to(torch::kCUDA);
  auto sync = [cuda] { bench::synchronize(cuda); };
  const Block seq = Block::adapter("seq"), lora = Block::adapter("lora");
  std::vector<bench::Variant> variants = {
      {"base", [&] { model->forward(inputs); sync(); }},
      {"seq_bn", [&] { model->forward(inputs, {&seq}); sync(); }},
      {"lora", [&] { model->forward(inputs, {&lora}); sync(); }},
  };
  const auto t = bench::time_interleaved(variants, cuda ? 10 * reps : reps);
  bench::print_table(title, variants, t);
}

}  // namespace

int main(int argc, char** argv) {
  const int scale = argc > 1 ? std::max(1, std::atoi(argv[1])) : 1;
  const bool cuda = argc > 2 && std::strcmp(argv[2], "cuda") == 0;
  const torch::Device device = cuda ? torch::kCUDA : torch::kCPU;
  torch::manual_seed(0);
  c10::InferenceMode inference;
  bench::print_header(cuda);
  bert_port(scale, cuda);

  const json vit = {{"model_type", "vit"},         {"hidden_size", 768},       {"num_hidden_layers", 12},
                    {"num_attention_heads", 12},   {"intermediate_size", 3072}, {"hidden_act", "gelu"},
                    {"image_size", 224},           {"patch_size", 16},          {"num_channels", 3},
                    {"layer_norm_eps", 1e-12},     {"qkv_bias", true},          {"vocab_size", 1}};
  models::ModelInputs pixels;
  pixels.pixel_values = torch::randn({8, 3, 224, 224}, device);
  adapters_on("ViT-base, batch 8 x 224x224", vit, pixels, 3 * scale, cuda);

  const json deberta = {{"model_type", "deberta-v2"},     {"vocab_size", 128100},     {"hidden_size", 768},
                        {"num_hidden_layers", 12},        {"num_attention_heads", 12}, {"intermediate_size", 3072},
                        {"hidden_act", "gelu"},           {"max_position_embeddings", 512}, {"type_vocab_size", 0},
                        {"relative_attention", true},     {"max_relative_positions", -1}, {"position_buckets", 256},
                        {"pos_att_type", {"p2c", "c2p"}}, {"norm_rel_ebd", "layer_norm"}, {"share_att_key", true},
                        {"position_biased_input", false}, {"layer_norm_eps", 1e-7},   {"pad_token_id", 0}};
  models::ModelInputs tokens = bench::random_inputs(8, 128, 128100);
  tokens.input_ids = tokens.input_ids.to(device), tokens.attention_mask = tokens.attention_mask.to(device);
  adapters_on("DeBERTa-v3-base, batch 8 x seq 128", deberta, tokens, 3 * scale, cuda);
  return 0;
}
