// Writing PEFT folders and HF model folders: every golden PEFT case written back reproduces its
// tensors key for key and loads with the same outputs; adapters created AdapterHub-style on the
// tiny models (LoRA, rsLoRA, DoRA, IA3, VeRA, prefix, prompt) survive PEFT write -> read and
// AdapterHub -> PEFT -> AdapterHub with identical outputs; what PEFT cannot express is refused by
// name; a merged adapter saved with save_pretrained loads back with the outputs of the unmerged
// one; `adapters convert` and `adapters merge` work end to end.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "adapters/formats/hf_model.h"
#include "adapters/formats/peft.h"
#include "test_util.h"

namespace adapters::test {
namespace {

const fs::path kPeftFixtures = fs::path(ADAPTERS_FIXTURES) / "peft";

io::TensorMap peft_tensors(const fs::path& dir) { return io::read_safetensors(dir / "adapter_model.safetensors").tensors; }
json peft_config(const fs::path& dir) { return json::parse(io::read_text_file(dir / "adapter_config.json")); }

// tiny_inputs(), with decoder inputs on encoder-decoder models (a prompt joined at the input
// replaces input_ids by inputs_embeds, from which no decoder inputs can be derived).
models::ModelInputs inputs_of(const AdapterModel& model) {
  models::ModelInputs in = tiny_inputs();
  if (model->arch().kind == models::ArchKind::EncoderDecoder) in.decoder_input_ids = in.input_ids.narrow(1, 0, 4);
  return in;
}

torch::Tensor outputs(AdapterModel& model, const std::string& setup) {
  if (setup.empty()) {
    model->deactivate_adapters();
  } else {
    model->set_active_adapters(setup);
  }
  return hidden(model, inputs_of(model));
}

void expect_close(const torch::Tensor& a, const torch::Tensor& b, double tol = 1e-5) {
  ASSERT_EQ(a.sizes(), b.sizes());
  EXPECT_LE((a - b).abs().max().item<double>(), tol);
}

void expect_same_tensors(const io::TensorMap& expected, const io::TensorMap& found) {
  ASSERT_EQ(expected.size(), found.size());
  for (const auto& [key, t] : expected) {
    ASSERT_TRUE(found.count(key)) << "missing " << key;
    EXPECT_TRUE(torch::equal(t, found.at(key))) << key;
  }
}

json sorted(json list) {
  if (list.is_array()) std::sort(list.begin(), list.end());
  return list;
}

// ---- the golden cases, written back ----------------------------------------------------------

std::vector<std::string> single_adapter_cases() {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(kPeftFixtures / "cases")) {
    const std::string name = entry.path().filename().string();
    if (fs::exists(entry.path() / "adapter" / "adapter_config.json")) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

class PeftSaveFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(PeftSaveFixture, ReproducesTheTensorsAndOutputs) {
  const fs::path dir = kPeftFixtures / "cases" / GetParam() / "adapter";
  const std::string arch = GetParam().substr(0, GetParam().find("__"));
  AdapterModel model = load_pretrained(kPeftFixtures / "models" / arch);
  model->load_adapter(dir);
  TempDir tmp;
  formats::save_peft_adapter(*model, "default", tmp / "out");

  const json given = peft_config(dir), written = peft_config(tmp / "out");
  EXPECT_EQ(written["peft_type"], given["peft_type"]);
  for (const char* key : {"r", "lora_alpha", "use_rslora", "use_dora", "num_virtual_tokens", "num_layers", "token_dim",
                          "projection_prng_key", "d_initial"}) {
    if (given.contains(key)) EXPECT_EQ(written[key], given[key]) << key;
  }
  if (given["peft_type"] == "PREFIX_TUNING") {
    for (const char* key : {"num_attention_heads", "num_transformer_submodules"}) EXPECT_EQ(written[key], given[key]) << key;
  }
  for (const char* key : {"target_modules", "feedforward_modules"}) {
    if (given.contains(key)) EXPECT_EQ(sorted(written[key]), sorted(given[key])) << key;
  }

  const io::TensorMap expected = peft_tensors(dir), found = peft_tensors(tmp / "out");
  if (given["peft_type"] == "PROMPT_TUNING" && given["num_transformer_submodules"] == 2) {
    // PEFT's seq2seq table holds a decoder block its prompt-tuning forward does not use; we write one block.
    const std::int64_t P = given["num_virtual_tokens"].get<std::int64_t>();
    EXPECT_TRUE(torch::equal(found.at("prompt_embeddings"), expected.at("prompt_embeddings").narrow(0, 0, P)));
  } else {
    expect_same_tensors(expected, found);
  }

  AdapterModel reread = load_pretrained(kPeftFixtures / "models" / arch);
  reread->load_adapter(tmp / "out");
  expect_close(outputs(model, "default"), outputs(reread, "default"), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Peft, PeftSaveFixture, ::testing::ValuesIn(single_adapter_cases()),
                         [](const auto& info) { return info.param; });

// ---- adapters created AdapterHub-style ------------------------------------------------------

struct NativeCase {
  std::string arch;
  std::string spec;
  bool same_tensors = true;  // false: a fused layer's slices, written as one LoRA on the whole layer
  bool via_adapterhub = true;
};

std::ostream& operator<<(std::ostream& os, const NativeCase& c) { return os << c.arch << " " << c.spec; }

class PeftSaveNative : public ::testing::TestWithParam<NativeCase> {
 protected:
  AdapterModel fresh() const { return load_pretrained(model_dir(GetParam().arch)); }
};

// PEFT write -> read gives the same outputs (and tensors); AdapterHub -> PEFT -> AdapterHub too.
TEST_P(PeftSaveNative, RoundTripsWithTheSameOutputs) {
  const NativeCase& c = GetParam();
  AdapterModel model = fresh();
  model->add_adapter("a", c.spec);
  randomize_adapter(model, "a");
  const torch::Tensor expected = outputs(model, "a");
  const torch::Tensor base = outputs(model, "");
  if (base.sizes() == expected.sizes()) EXPECT_GT((expected - base).abs().max().item<double>(), 1e-3);  // it acts
  TempDir tmp;
  formats::save_peft_adapter(*model, "a", tmp / "peft");
  AdapterModel reread = fresh();
  reread->load_adapter(tmp / "peft", "a");
  expect_close(expected, outputs(reread, "a"));
  if (c.same_tensors) expect_same_tensors(model->adapter_state_dict("a"), reread->adapter_state_dict("a"));

  if (!c.via_adapterhub) return;
  model->save_adapter(tmp / "hub", "a");
  AdapterModel from_hub = fresh();
  from_hub->load_adapter(tmp / "hub");
  formats::save_peft_adapter(*from_hub, "a", tmp / "peft2");
  expect_same_tensors(peft_tensors(tmp / "peft"), peft_tensors(tmp / "peft2"));
  AdapterModel from_peft = fresh();
  from_peft->load_adapter(tmp / "peft2", "a");
  from_peft->save_adapter(tmp / "hub2", "a");
  AdapterModel last = fresh();
  last->load_adapter(tmp / "hub2");
  expect_close(expected, outputs(last, "a"));
}

const char* kPrefix = "prefix_tuning_flat[placement=past,prefix_length=3]";

INSTANTIATE_TEST_SUITE_P(
    Native, PeftSaveNative,
    ::testing::Values(NativeCase{"bert", "lora"}, NativeCase{"bert", "lora[use_rslora=true,alpha=16]"},
                      NativeCase{"bert", "dora"}, NativeCase{"bert", "ia3"}, NativeCase{"bert", "vera[r=8]"},
                      NativeCase{"bert", "lora[output_lora=true,intermediate_lora=true,leave_out=[0]]"},
                      NativeCase{"bert", kPrefix, true, false},
                      NativeCase{"bert", "prompt_tuning[combine=input,prompt_length=3]", true, false},
                      NativeCase{"gpt2", "lora", false}, NativeCase{"gpt2", "lora[use_rslora=true,r=4]", false},
                      NativeCase{"gpt2", "lora[attn_matrices=[q,k,v],intermediate_lora=true]", false},
                      NativeCase{"gpt2", "ia3", false}, NativeCase{"gpt2", kPrefix, true, false},
                      NativeCase{"llama", "lora[leave_out=[1]]"}, NativeCase{"llama", "dora"}, NativeCase{"llama", "ia3"},
                      NativeCase{"llama", "vera[r=8]"}, NativeCase{"llama", kPrefix, true, false},
                      NativeCase{"t5", "lora"}, NativeCase{"t5", "dora[use_rslora=true]"}, NativeCase{"t5", "ia3"},
                      NativeCase{"t5", kPrefix, true, false}),
    [](const auto& info) { return str(info.param.arch, "_", info.index); });

// Where the adapter sits becomes PEFT's placement: HF module names, layers_to_transform or
// exclude_modules where they say exactly that, full module paths otherwise; a fused c_attn LoRA
// on q and v becomes a rank 2r LoRA on the whole layer with the same scale.
TEST(PeftSave, DerivesThePlacementFromWhereTheAdapterSits) {
  auto written = [](const std::string& arch, const std::string& spec) {
    AdapterModel model = load_pretrained(fs::exists(arch) ? fs::path(arch) : model_dir(arch));
    model->add_adapter("a", spec);
    TempDir tmp;
    formats::save_peft_adapter(*model, "a", tmp / "p");
    return peft_config(tmp / "p");
  };
  json j = written("bert", "lora[leave_out=[0]]");
  EXPECT_EQ(j["target_modules"], json({"query", "value"}));
  EXPECT_EQ(j["layers_to_transform"], json({1}));
  j = written("bert", "lora[selfattn_lora=false,output_lora=true]");
  EXPECT_EQ(j["target_modules"], json({"output.dense"}));
  EXPECT_EQ(j["exclude_modules"], json({"attention.output.dense"}));
  const std::string gpt2 = (kPeftFixtures / "models" / "gpt2").string();  // GPT2LMHeadModel: keys under "transformer."
  j = written(gpt2, "lora[r=4,alpha=8]");
  EXPECT_EQ(j["target_modules"], json({"c_attn"}));
  EXPECT_EQ(j["r"], 8);
  EXPECT_EQ(j["lora_alpha"], 16);
  EXPECT_EQ(j["fan_in_fan_out"], true);
  j = written(gpt2, "lora[r=4,alpha=8,intermediate_lora=true]");
  EXPECT_EQ(j["r"], 8);  // two c_attn (rank 8) and two c_fc (rank 4) layers: the first pair wins the tie
  EXPECT_EQ(j["rank_pattern"], json({{"transformer.h.0.mlp.c_fc", 4}, {"transformer.h.1.mlp.c_fc", 4}}));
  EXPECT_EQ(j["alpha_pattern"], json({{"transformer.h.0.mlp.c_fc", 8}, {"transformer.h.1.mlp.c_fc", 8}}));
  j = written("llama", "ia3");
  EXPECT_EQ(j["peft_type"], "IA3");
  EXPECT_EQ(j["feedforward_modules"], json::array());
  EXPECT_FALSE(j.contains("layers_to_transform"));  // PEFT's IA3Config has none
  j = written("llama", "vera[r=8]");
  EXPECT_EQ(j["target_modules"], json({"q_proj", "v_proj"}));
  EXPECT_FALSE(j.contains("exclude_modules"));  // nor VeraConfig this
  EXPECT_EQ(j["save_projection"], true);
}

TEST(PeftSave, RefusesWhatPeftCannotExpressByName) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"seq_bn", "bottleneck adapters"},
      {"compacter[reduction_factor=8]", "Compacter"},
      {"loreft", "ReFT"},
      {"mam", "config unions"},
      {"prefix_tuning", "placement \"attention\""},
      {"prompt_tuning", "combine \"prefix\""},
      {"lora[use_gating=true]", "use_gating"},
  };
  TempDir tmp;
  for (std::size_t i = 0; i < refused.size(); ++i) {
    const std::string name = str("x", i);
    model->add_adapter(name, refused[i].first);
    try {
      formats::save_peft_adapter(*model, name, tmp / name);
      ADD_FAILURE() << refused[i].first << " was written";
    } catch (const NotSupported& e) {
      EXPECT_NE(std::string(e.what()).find(refused[i].second), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("'" + name + "'"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(tmp / name)) << refused[i].first;
  }
}

TEST(PeftSave, KeysAreTheInverseOfTheReader) {
  for (const auto& [key, ours] : std::vector<std::pair<std::string, std::string>>{
           {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "model.layers.0.self_attn.q_proj.loras.n.lora_A"},
           {"base_model.model.encoder.layer.1.attention.self.value.lora_magnitude_vector",
            "bert.encoder.layer.1.attention.self.value.loras.n.lora_magnitude_vector"},
       }) {
    const std::string prefix = ours.substr(0, ours.find('.'));
    const std::string hf = key.rfind("base_model.model." + prefix + ".", 0) == 0 ? prefix : "";
    EXPECT_EQ(formats::from_peft_key(key, prefix, "n"), ours);
    EXPECT_EQ(formats::to_peft_key(ours, prefix, hf, "n"), key);
  }
  EXPECT_EQ(formats::to_peft_key("transformer.h.0.attn.c_attn.loras.n.lora_B", "transformer", "transformer", "n", true),
            "base_model.model.transformer.h.0.attn.c_attn.ia3_l");
  EXPECT_NE(error_of([] { formats::to_peft_key("bert.x.loras.n.gate.weight", "bert", "", "n"); }).find("gate.weight"),
            std::string::npos);
}

// ---- save_pretrained -------------------------------------------------------------------------

class SavePretrainedMerged : public ::testing::TestWithParam<std::string> {};

// The merged model written as an HF folder loads back with the outputs (and LM logits) of the
// model with the adapter unmerged; keys as the HF class has them, tied LM heads left out.
TEST_P(SavePretrainedMerged, LoadsBackWithTheUnmergedOutputs) {
  const std::string arch = GetParam().substr(0, GetParam().find("__"));
  AdapterModel model = load_pretrained(kPeftFixtures / "models" / arch);
  model->load_adapter(kPeftFixtures / "cases" / GetParam() / "adapter", "default", WeightsPreference::Safetensors, true);
  torch::NoGradGuard no_grad;
  const ModelOutput expected = model->forward(tiny_inputs());
  model->merge_adapter("default");
  TempDir tmp;
  formats::save_pretrained(*model, tmp / "merged");
  AdapterModel merged = load_pretrained(tmp / "merged");
  const ModelOutput found = merged->forward(tiny_inputs());
  expect_close(expected.last_hidden_state, found.last_hidden_state);
  if (expected.head.count("logits")) expect_close(expected.head.at("logits"), found.head.at("logits"));

  const io::TensorMap keys = io::read_safetensors(tmp / "merged" / "model.safetensors").tensors;
  EXPECT_EQ(json::parse(io::read_text_file(tmp / "merged" / "config.json")), model->config().raw);
  const std::string hf = formats::hf_base_prefix(*model);
  for (const auto& [key, t] : keys) {
    EXPECT_EQ(key.find("loras"), std::string::npos) << key;
    if (key.rfind("lm_head", 0) != 0 && !hf.empty()) EXPECT_EQ(key.rfind(hf + ".", 0), 0u) << key;
  }
  EXPECT_EQ(keys.count("lm_head.weight"), model->config().tie_word_embeddings ? 0u : 1u);
}

INSTANTIATE_TEST_SUITE_P(Peft, SavePretrainedMerged,
                         ::testing::Values("llama__lora", "llama__dora", "gpt2__lora", "gpt2__ia3", "bert__lora",
                                           "t5__lora", "gemma__vera"),
                         [](const auto& info) { return info.param; });

TEST(SavePretrained, KeysFollowTheConfigsHfClass) {
  EXPECT_EQ(formats::hf_base_prefix(*load_pretrained(kPeftFixtures / "models" / "bert")), "");        // BertModel
  EXPECT_EQ(formats::hf_base_prefix(*load_pretrained(kPeftFixtures / "models" / "t5")), "");          // T5ForConditionalGeneration
  EXPECT_EQ(formats::hf_base_prefix(*load_pretrained(kPeftFixtures / "models" / "gpt2")), "transformer");
  EXPECT_EQ(formats::hf_base_prefix(*load_pretrained(kPeftFixtures / "models" / "bart")), "model");
}

TEST(SavePretrained, RefusesAnUnmergedAdapterAndWritesNothing) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("kept", "lora");
  model->add_adapter("folded", "lora");
  model->merge_adapter("folded");
  TempDir tmp;
  const std::string e = error_of([&] { formats::save_pretrained(*model, tmp / "m"); });
  EXPECT_NE(e.find("'kept' (lora) is attached but not merged"), std::string::npos) << e;
  EXPECT_EQ(e.find("folded"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(tmp / "m"));
  model->delete_adapter("kept");
  formats::save_pretrained(*model, tmp / "m");
  EXPECT_TRUE(fs::exists(tmp / "m" / "model.safetensors"));
}

TEST(SavePretrained, ReplacesASymlinkInsteadOfWritingThroughIt) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  TempDir tmp;
  fs::create_directories(tmp / "m");
  io::write_file_atomic(tmp / "outside.safetensors", "not weights");
  fs::create_symlink(tmp / "outside.safetensors", tmp / "m" / "model.safetensors");
  io::write_file_atomic(tmp / "m" / "tokenizer.json", "{}");
  formats::save_pretrained(*model, tmp / "m");
  EXPECT_EQ(io::read_text_file(tmp / "outside.safetensors"), "not weights");
  EXPECT_FALSE(fs::is_symlink(tmp / "m" / "model.safetensors"));
  EXPECT_TRUE(fs::exists(tmp / "m" / "tokenizer.json"));  // other files are left alone
  expect_close(hidden(model, tiny_inputs()), [&] {
    AdapterModel again = load_pretrained(tmp / "m");
    return hidden(again, tiny_inputs());
  }(), 0.0);
}

// A folder planted as a symbolic link inside an output folder (an adapter's folder, one of a
// setup's members) is replaced by a real folder: nothing is written through it.
TEST(SavePretrained, AFolderPlantedAsASymlinkIsReplacedNotWrittenThrough) {
  AdapterModel model = load_pretrained(model_dir("bert"));
  model->add_adapter("a", "seq_bn");
  model->add_adapter("b", "lora[r=2]");
  TempDir tmp;
  fs::create_directories(tmp / "victim");
  io::write_file_atomic(tmp / "victim" / "keep.txt", "mine");
  fs::create_directories(tmp / "out");
  fs::create_directory_symlink(tmp / "victim", tmp / "out" / "a");
  model->save_adapter(tmp / "out" / "a", "a");
  fs::create_directories(tmp / "setup");
  fs::create_directory_symlink(tmp / "victim", tmp / "setup" / "b");
  model->save_adapter_setup(tmp / "setup", composition::parse("Stack(a, b)"));
  for (const auto& dir : {tmp / "out" / "a", tmp / "setup" / "b"}) {
    EXPECT_FALSE(fs::is_symlink(dir)) << dir;
    EXPECT_TRUE(fs::exists(dir / "adapter_config.json")) << dir;
  }
  std::vector<std::string> victim;
  for (const auto& entry : fs::directory_iterator(tmp / "victim")) victim.push_back(entry.path().filename().string());
  EXPECT_EQ(victim, std::vector<std::string>{"keep.txt"});
}

// ---- the command line ------------------------------------------------------------------------

struct CliRun {
  int rc;
  std::string err;
};

CliRun run_cli(const std::string& args, const TempDir& tmp) {
  const fs::path err = tmp / "stderr.txt";
  const int status = std::system((std::string(ADAPTERS_CLI) + " " + args + " > /dev/null 2> " + err.string()).c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, io::read_text_file(err)};
}

TEST(PeftConvertCli, ConvertsBothWaysWithTheSameOutputs) {
  const fs::path model_path = kPeftFixtures / "models" / "llama", peft = kPeftFixtures / "cases" / "llama__dora" / "adapter";
  TempDir tmp;
  CliRun r = run_cli(str("convert --to adapterhub ", peft, " ", tmp / "hub", " --model ", model_path), tmp);
  ASSERT_EQ(r.rc, 0) << r.err;
  // No --model: the AdapterHub folder names the model folder it was converted with.
  r = run_cli(str("convert --to peft ", tmp / "hub", " ", tmp / "peft"), tmp);
  ASSERT_EQ(r.rc, 0) << r.err;
  expect_same_tensors(peft_tensors(peft), peft_tensors(tmp / "peft"));
  AdapterModel model = load_pretrained(model_path);
  model->load_adapter(peft, "original");
  model->load_adapter(tmp / "hub", "hub");
  model->load_adapter(tmp / "peft", "back");
  const torch::Tensor expected = outputs(model, "original");
  expect_close(expected, outputs(model, "hub"), 0.0);
  expect_close(expected, outputs(model, "back"), 0.0);
}

TEST(PeftConvertCli, ErrorsNameTheProblem) {
  TempDir tmp;
  const fs::path peft = kPeftFixtures / "cases" / "llama__lora" / "adapter";
  CliRun r = run_cli(str("convert --to adapterhub ", peft, " ", tmp / "out"), tmp);  // base_model_name_or_path is null
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("names no base model ('base_model_name_or_path' is null)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("pass --model"), std::string::npos) << r.err;
  r = run_cli(str("convert --to peft ", peft, " ", tmp / "out", " --model ", kPeftFixtures / "models" / "llama"), tmp);
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("is already a PEFT adapter folder"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(tmp / "out"));
}

TEST(PeftConvertCli, MergeWritesAModelFolderWithTheAdaptersOutputs) {
  const fs::path model_path = kPeftFixtures / "models" / "gpt2";
  const fs::path adapter = kPeftFixtures / "cases" / "gpt2__lora" / "adapter";
  TempDir tmp;
  const CliRun r = run_cli(str("merge --model ", model_path, " --adapter ", adapter, " --output ", tmp / "merged"), tmp);
  ASSERT_EQ(r.rc, 0) << r.err;
  AdapterModel model = load_pretrained(model_path);
  model->load_adapter(adapter);
  AdapterModel merged = load_pretrained(tmp / "merged");
  expect_close(outputs(model, "default"), outputs(merged, ""));
}

}  // namespace
}  // namespace adapters::test
