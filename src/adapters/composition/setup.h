// The adapter setup tree: which adapters are active and how they compose (Stack, Fuse, Split,
// BatchSplit, Parallel, Average), built in code or parsed from the reference's string form,
// e.g. "Stack(a, Fuse(b, c))", "Split(a, b, split_index=3)", "BatchSplit(a, b, batch_sizes=[1, 2])".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace adapters::composition {

enum class BlockType { Adapter, Stack, Fuse, Split, BatchSplit, Parallel, Average };

const char* block_type_name(BlockType type);

struct Block {
  BlockType type = BlockType::Adapter;
  std::string name;               // Adapter: the adapter's name
  std::vector<Block> children;    // composition blocks: their members
  std::int64_t split_index = 0;   // Split
  std::vector<std::int64_t> batch_sizes;  // BatchSplit
  std::vector<double> weights;    // Average

  static Block adapter(std::string name);
  static Block of(BlockType type, std::vector<Block> children);

  bool is_adapter() const { return type == BlockType::Adapter; }
  // Every adapter name in the tree, in order of first appearance.
  std::vector<std::string> flatten() const;
  bool contains(const std::string& adapter) const;
  // The first / last adapter name (depth first), as the reference's first() / last().
  std::string first() const;
  std::string last() const;
  // The fusion name of a Fuse block: its adapters joined by ',' ("a,b").
  std::string fusion_name() const;
  // The canonical string form, which parse() reads back: "Stack(a, Fuse(b, c))".
  std::string to_string() const;

  bool operator==(const Block& other) const;
  bool operator!=(const Block& other) const { return !(*this == other); }
};

// Parses a setup string. A bare name "a" parses to an adapter leaf. Errors name the position.
Block parse(const std::string& text);

// Checks the reference's nesting rules (which block may hold which, and how deep): Stack holds
// adapters, Fuse, Split, Parallel, BatchSplit, Average; Fuse holds adapters and Stack; Split
// holds adapters, Split, Stack, BatchSplit, Average; Parallel holds adapters, Stack, BatchSplit,
// Average; BatchSplit holds adapters, Stack, Split, BatchSplit, Average; Average holds adapters,
// Stack, Split, BatchSplit. Below level 1 only Stack may hold blocks. Also checks each block's
// options (Split has two members and split_index > 0; BatchSplit has one positive size per
// member; Average has one weight per member and a non-zero sum). Throws an Error naming the setup.
void validate(const Block& setup);

// Average's weights, normalised to sum 1 (equal weights when none are given).
std::vector<double> average_weights(const Block& average);

// How many copies of the batch a Parallel block of this setup makes (1 without Parallel).
std::int64_t parallel_channels(const Block& setup);

// The reference's JSON form of a setup ({"type": "Stack", "children": [...], ...}; an adapter
// is its name), as adapter_setup.json holds it, and back.
std::string to_json(const Block& setup);
Block from_json(const std::string& json_text, const std::string& source);

// What set_active_adapters makes of a setup, as the reference does: a single adapter becomes
// Stack(adapter); a block is kept.
Block normalize_active(Block setup);

}  // namespace adapters::composition
