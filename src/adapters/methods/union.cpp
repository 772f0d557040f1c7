// Config unions: validation with the reference's rules, presets, and attaching every member.
#include "adapters/methods/union.h"

namespace adapters::methods {

namespace {

std::string architecture_of(const json& config) {
  return config.contains("architecture") && !config.at("architecture").is_null()
             ? config.at("architecture").get<std::string>()
             : "bottleneck";
}

bool has_leave_out(const json& config) { return config.contains("leave_out") && !config.at("leave_out").empty(); }

void check_pair(const json& a, const json& b, const std::string& source) {
  const std::string arch = architecture_of(a);
  if (arch != architecture_of(b) || has_leave_out(a) || has_leave_out(b)) return;
  if (arch == "bottleneck") {
    const bool valid = a.value("mh_adapter", false) != b.value("mh_adapter", false) &&
                       a.value("output_adapter", true) != b.value("output_adapter", true);
    ADAPTERS_CHECK(valid, source, ": two bottleneck configs of a union must sit at different places "
                              "(one mh_adapter, the other output_adapter); found ", describe(a), " and ", describe(b));
    return;
  }
  throw Error(str(source, ": two configs of a union have the same adapter architecture '", arch,
                  "' and cannot be combined"));
}

json normalize_union(const json& options, const std::string& source) {
  JsonReader r(options, source);
  r.reject_unknown({"architecture", "configs"});
  const json& configs = r.raw("configs");
  if (!configs.is_array() || configs.empty()) r.fail("configs", "a non-empty list of adapter configs");
  std::vector<json> members;
  for (std::size_t i = 0; i < configs.size(); ++i) {
    const std::string member_source = str(source, ": configs[", i, "]");
    ADAPTERS_CHECK(configs[i].is_object(), member_source, ": expected an adapter config object, found ", describe(configs[i]));
    const MethodSpec& method = method_for_architecture(
        configs[i].contains("architecture") ? configs[i].at("architecture") : json(), member_source);
    ADAPTERS_CHECK(method.name != "union", member_source, ": nesting config unions is not allowed");
    members.push_back(method.normalize(configs[i], member_source));
  }
  return make_union(members, source);
}

// A preset member: a method's preset with overrides, normalised.
json member(const std::string& preset, const json& overrides) {
  json options;
  const MethodSpec* method = find_preset(preset, &options);
  for (auto it = overrides.begin(); it != overrides.end(); ++it) options[it.key()] = it.value();
  return method->normalize(options, "preset '" + preset + "'");
}

}  // namespace

json make_union(const std::vector<json>& configs, const std::string& source) {
  for (std::size_t i = 0; i < configs.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j) check_pair(configs[i], configs[j], source);
  }
  return {{"architecture", "union"}, {"configs", configs}};
}

MethodSpec union_method() {
  MethodSpec spec;
  spec.name = "union";
  spec.architecture = "union";
  spec.normalize = normalize_union;
  spec.attach = [](const std::string& adapter, const json& config, models::BaseModelImpl& model) {
    for (const auto& c : config.at("configs")) {
      method_for_architecture(c.contains("architecture") ? c.at("architecture") : json(), "adapter '" + adapter + "'")
          .attach(adapter, c, model);
    }
  };
  spec.key_aliases = [](const json& config) {
    std::vector<std::pair<std::string, std::string>> aliases;
    for (const auto& c : config.at("configs")) {
      const MethodSpec& m = method_for_architecture(c.contains("architecture") ? c.at("architecture") : json(), "union");
      if (!m.key_aliases) continue;
      for (auto& a : m.key_aliases(c)) aliases.push_back(a);
    }
    return aliases;
  };
  spec.model_key_aliases = [](const json& config, const models::BaseModelImpl& model) {
    std::vector<std::pair<std::string, std::string>> aliases;
    for (const auto& c : config.at("configs")) {
      const MethodSpec& m = method_for_architecture(c.contains("architecture") ? c.at("architecture") : json(), "union");
      if (!m.model_key_aliases) continue;
      for (auto& a : m.model_key_aliases(c, model)) aliases.push_back(a);
    }
    return aliases;
  };
  return spec;
}

// Presets need the other methods' presets, so they are built on first use (registry.cpp asks).
std::vector<Preset> union_presets() {
  return {
      {"mam", make_union({member("prefix_tuning", {{"bottleneck_size", 800}}), member("par_bn", json::object())}, "mam")},
      {"unipelt", make_union({member("prefix_tuning", {{"prefix_length", 10}, {"use_gating", true}}),
                              member("seq_bn", {{"reduction_factor", 16}, {"use_gating", true}}),
                              member("lora", {{"r", 8}, {"use_gating", true}})},
                             "unipelt")},
  };
}

}  // namespace adapters::methods
