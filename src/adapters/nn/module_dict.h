// AdapterDict<T>: a typed container of named submodules (adapters by name). Its entries are
// registered as child modules, so parameter names read "<owner>.<dict>.<name>.<param>" exactly as
// in the reference's nn.ModuleDict.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace adapters::nn {

template <typename T>
class AdapterDictImpl : public torch::nn::Module {
 public:
  void insert(const std::string& name, std::shared_ptr<T> module) {
    if (items_.count(name)) erase(name);
    items_[name] = register_module(name, std::move(module));
  }
  void erase(const std::string& name) {
    if (items_.erase(name)) unregister_module(name);
  }
  T* find(const std::string& name) const {
    auto it = items_.find(name);
    return it == items_.end() ? nullptr : it->second.get();
  }
  bool contains(const std::string& name) const { return items_.count(name) != 0; }
  bool empty() const { return items_.empty(); }
  const std::map<std::string, std::shared_ptr<T>>& items() const { return items_; }

 private:
  std::map<std::string, std::shared_ptr<T>> items_;
};

template <typename T>
using AdapterDict = std::shared_ptr<AdapterDictImpl<T>>;

// Registers `count` layers made by `make(index)` in a ModuleList called `name` under `owner` (HF's
// "layer", so parameters read "layer.<i>.") and returns them typed, for the forward loop.
template <typename Holder, typename Make>
std::vector<Holder> register_layers(torch::nn::Module& owner, const std::string& name, std::int64_t count,
                                    const Make& make) {
  auto list = owner.register_module(name, torch::nn::ModuleList());
  std::vector<Holder> layers;
  for (std::int64_t i = 0; i < count; ++i) {
    layers.push_back(make(i));
    list->push_back(layers.back());
  }
  return layers;
}

template <typename T>
AdapterDict<T> make_adapter_dict() {
  return std::make_shared<AdapterDictImpl<T>>();
}

}  // namespace adapters::nn
