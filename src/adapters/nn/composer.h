// The composition driver: Stack, Fuse, Split, BatchSplit, Parallel and Average, implemented once
// for every kind of hook site. A site describes its method's state and supplies a few primitives
// (slice, concatenate, repeat, average, apply one adapter); the driver walks the setup tree as
// adapter-transformers' adapter_layer_forward does:
//   - Stack applies its members in order, each after the site's pre_block for it;
//   - Split cuts the sequence at split_index, BatchSplit the batch by batch_sizes;
//   - Parallel replicates the batch once per forward (output batch n*B, rows i*B..(i+1)*B belong to
//     branch i) at the first site that meets it, later sites find it replicated;
//   - Average runs its members on the same input and takes the weighted sum of their outputs;
//   - Fuse is the site's own (only bottleneck sites implement it).
// Nesting follows the reference's rules (validate_nesting); a block a site cannot run is an error
// naming the block, the adapter and the site.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "adapters/composition/setup.h"
#include "adapters/core/error.h"
#include "adapters/nn/context.h"

namespace adapters::nn {

using composition::Block;
using composition::BlockType;

// Primitives the sites share: `t` repeated n times along the batch (dim 0), and the weighted sum
// of tensors of one shape.
inline torch::Tensor repeat_batch_of(const torch::Tensor& t, std::int64_t n) {
  if (!t.defined()) return t;
  std::vector<std::int64_t> repeats(static_cast<std::size_t>(t.dim()), 1);
  repeats[0] = n;
  return t.repeat(repeats);
}

inline torch::Tensor weighted_sum(const std::vector<torch::Tensor>& parts, const std::vector<double>& weights) {
  torch::Tensor sum = parts[0] * weights[0];
  for (std::size_t i = 1; i < parts.size(); ++i) sum = sum + parts[i] * weights[i];
  return sum;
}

// With ctx.rows_independent (one adapter per row): the setup's BatchSplit of row groups (the setup
// itself or a Stack holding only it); null otherwise.
inline const Block* independent_row_groups(const ForwardContext& ctx) {
  if (!ctx.rows_independent || ctx.setup == nullptr) return nullptr;
  const Block* b = ctx.setup;
  if (b->type == BlockType::Stack && b->children.size() == 1) b = &b->children.front();
  return b->type == BlockType::BatchSplit ? b : nullptr;
}

// Applies f(member, begin, end) to each row group of a BatchSplit, in order.
template <typename F>
void for_each_row_group(const Block& groups, F f) {
  std::int64_t begin = 0;
  for (std::size_t i = 0; i < groups.children.size(); ++i) {
    const std::int64_t end = begin + groups.batch_sizes.at(i);
    f(groups.children[i], begin, end);
    begin = end;
  }
}

template <typename State>
class Composable {
 public:
  virtual ~Composable() = default;

  // Whether an adapter of this name lives at this site.
  virtual bool holds(const std::string& adapter) const = 0;
  // "layer 0 output_adapter", for messages.
  virtual std::string describe() const = 0;
  // The method family, for messages ("bottleneck adapters", "LoRA-family adapters").
  virtual std::string family() const = 0;
  virtual bool supports(BlockType type) const = 0;

  virtual std::int64_t batch_size(const State& s) const = 0;
  virtual State slice_batch(const State& s, std::int64_t begin, std::int64_t end) const = 0;
  virtual State concat_batch(const std::vector<State>& parts) const = 0;
  virtual State repeat_batch(const State& s, std::int64_t n) const = 0;
  virtual State slice_sequence(const State& s, std::int64_t begin, std::int64_t end) const {
    throw unsupported_error(BlockType::Split);
  }
  virtual State concat_sequence(const std::vector<State>& parts) const { throw unsupported_error(BlockType::Split); }
  virtual std::int64_t sequence_length(const State& s) const { throw unsupported_error(BlockType::Split); }
  virtual State average(const std::vector<State>& parts, const std::vector<double>& weights) const {
    throw unsupported_error(BlockType::Average);
  }

  // Prepares the state for a block or a stacked adapter, led by `adapter` (e.g. the residual and
  // norm handling of a bottleneck adapter's pre_forward).
  virtual State pre_block(const std::string& adapter, State s) const { return s; }
  // Applies one adapter of this site.
  virtual State single(const std::string& adapter, State s, ForwardContext& ctx) const = 0;
  // Fuse: only sites that implement it. `stack` runs a nested Stack with the driver.
  virtual State fuse(const Block& block, State s, ForwardContext& ctx, int level,
                     const std::function<State(const Block&, State)>& stack) const {
    throw unsupported_error(BlockType::Fuse);
  }

  Error unsupported_error(BlockType type) const {
    return Error(str(composition::block_type_name(type), " cannot compose ", family(), " (at ", describe(), ")"),
                 "use a block these adapters support, or adapters of a method that supports this block");
  }
};

// Runs `setup` (normalised: a Stack or another block at the top) over `state` at `site`.
template <typename State>
class Composer {
 public:
  Composer(const Composable<State>& site, ForwardContext& ctx) : site_(site), ctx_(ctx) {}

  State run(const Block& setup, State state) const {
    if (setup.is_adapter()) return site_.single(setup.name, site_.pre_block(setup.name, std::move(state)), ctx_);
    return block(setup, std::move(state), 0);
  }

 private:
  const Composable<State>& site_;
  ForwardContext& ctx_;

  State block(const Block& b, State s, int level) const {
    if (!site_.supports(b.type)) throw site_.unsupported_error(b.type);
    switch (b.type) {
      case BlockType::Stack: return stack(b, std::move(s), level);
      case BlockType::Fuse:
        return site_.fuse(b, std::move(s), ctx_, level,
                          [this, level](const Block& child, State st) { return stack(child, std::move(st), level + 1); });
      case BlockType::Split: return split(b, std::move(s), level);
      case BlockType::BatchSplit: return batch_split(b, std::move(s), level);
      case BlockType::Parallel: return parallel(b, std::move(s), level);
      case BlockType::Average: return average(b, std::move(s), level);
      case BlockType::Adapter: break;
    }
    throw Error("composition: unexpected adapter leaf");
  }

  // The first adapter of `b` that lives here (the reference takes b.first(); skipping adapters
  // placed elsewhere keeps leave_out setups working).
  std::string first_here(const Block& b) const {
    for (const auto& name : b.flatten()) {
      if (site_.holds(name)) return name;
    }
    return "";
  }

  State pre(const Block& b, State s) const {
    const std::string first = first_here(b);
    return first.empty() ? s : site_.pre_block(first, std::move(s));
  }

  State stack(const Block& b, State s, int level) const {
    for (const Block& child : b.children) {
      if (!child.is_adapter()) {
        if (level >= 1) {
          throw Error(str("adapter setup ", b.to_string(), " is too deep: cannot have ",
                          composition::block_type_name(child.type), " at level ", level));
        }
        s = block(child, std::move(s), level + 1);
      } else if (site_.holds(child.name)) {
        s = site_.single(child.name, site_.pre_block(child.name, std::move(s)), ctx_);
      }
    }
    return s;
  }

  // A member of Split, BatchSplit, Parallel or Average on its share of the input.
  State member(const Block& parent, const Block& child, State s, int level) const {
    if (child.is_adapter()) return site_.holds(child.name) ? site_.single(child.name, std::move(s), ctx_) : s;
    return block(child, std::move(s), level + 1);
  }

  State split(const Block& b, State s, int level) const {
    const std::int64_t length = site_.sequence_length(s);
    ADAPTERS_CHECK(b.children.size() == 2, "adapter setup ", b.to_string(), ": Split takes exactly two members");
    ADAPTERS_CHECK(b.split_index > 0 && b.split_index < length, "adapter setup ", b.to_string(), ": split_index ",
                   b.split_index, " does not fit a sequence of length ", length, " (expected 0 < split_index < ", length,
                   ")");
    s = pre(b, std::move(s));
    std::vector<State> parts;
    parts.push_back(member(b, b.children[0], site_.slice_sequence(s, 0, b.split_index), level));
    parts.push_back(member(b, b.children[1], site_.slice_sequence(s, b.split_index, length), level));
    return site_.concat_sequence(parts);
  }

  State batch_split(const Block& b, State s, int level) const {
    const std::int64_t batch = site_.batch_size(s);
    std::int64_t total = 0;
    for (auto n : b.batch_sizes) total += n;
    ADAPTERS_CHECK(b.batch_sizes.size() == b.children.size(), "adapter setup ", b.to_string(), ": ",
                   b.batch_sizes.size(), " batch sizes for ", b.children.size(), " members");
    ADAPTERS_CHECK(total == batch, "adapter setup ", b.to_string(), ": the batch has ", batch,
                   " rows, which does not fit batch_sizes summing to ", total);
    s = pre(b, std::move(s));
    std::vector<State> parts;
    std::int64_t begin = 0;
    for (std::size_t i = 0; i < b.children.size(); ++i) {
      const std::int64_t end = begin + b.batch_sizes[i];
      parts.push_back(member(b, b.children[i], site_.slice_batch(s, begin, end), level));
      begin = end;
    }
    return site_.concat_batch(parts);
  }

  State parallel(const Block& b, State s, int level) const {
    const auto n = static_cast<std::int64_t>(b.children.size());
    const std::int64_t batch = site_.batch_size(s);
    const std::int64_t input_batch = ctx_.input_batch_size;
    if (batch == input_batch) {
      s = site_.repeat_batch(s, n);
      ctx_.adapters_parallelized = true;
    } else {
      ADAPTERS_CHECK(batch == n * input_batch, "adapter setup ", b.to_string(), " at ", site_.describe(), ": batch of ",
                     batch, " rows is neither the input batch (", input_batch, ") nor its ", n, " parallel copies");
    }
    s = pre(b, std::move(s));
    std::vector<State> parts;
    for (std::int64_t i = 0; i < n; ++i) {
      parts.push_back(member(b, b.children[static_cast<std::size_t>(i)],
                             site_.slice_batch(s, i * input_batch, (i + 1) * input_batch), level));
    }
    return site_.concat_batch(parts);
  }

  State average(const Block& b, State s, int level) const {
    const std::vector<double> weights = composition::average_weights(b);
    s = pre(b, std::move(s));
    std::vector<State> parts;
    std::vector<double> used;
    for (std::size_t i = 0; i < b.children.size(); ++i) {
      const Block& child = b.children[i];
      if (child.is_adapter() && !site_.holds(child.name)) continue;
      parts.push_back(member(b, child, s, level));
      used.push_back(weights[i]);
    }
    if (parts.empty()) return s;
    return site_.average(parts, used);
  }
};

template <typename State>
State compose(const Composable<State>& site, const Block& setup, State state, ForwardContext& ctx) {
  return Composer<State>(site, ctx).run(setup, std::move(state));
}

}  // namespace adapters::nn
