// torch.save files (the zip format of torch >= 1.6): "<archive>/data.pkl" is a pickle of the saved
// object, "<archive>/data/<key>" holds the bytes of each storage. The zip is read with libtorch's
// PyTorchStreamReader; the pickle with a small, strict unpickler of its own that knows exactly what
// a state dict needs (dicts, OrderedDicts, tensors rebuilt by torch._utils._rebuild_tensor_v2 /
// _rebuild_parameter, torch::pickle_save's type tags), checks every stack access, and bounds every
// tensor view by the bytes its storage record really holds. (libtorch 1.13's torch::pickle_load
// turns collections.OrderedDict into None, so the OrderedDict state dicts of older transformers
// fail there, and it trusts the sizes written in the pickle.) Keys that share a storage share it in
// memory too. Of libtorch only the long-stable PyTorchStreamReader is used (1.13 and 2.x alike).
#include "adapters/io/tensors.h"

#include "adapters/core/error.h"

#include <caffe2/serialize/inline_container.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <unordered_map>
#include <variant>
#include <vector>

namespace adapters::io {
namespace {

// ---- values of the pickle machine ------------------------------------------------------------

enum class Callable {
  kOrderedDict,
  kRebuildTensorV2,
  kRebuildParameter,
  kRebuildParameterWithState,
  kRestoreTypeTag,  // torch.jit._pickle.restore_type_tag(value, type): torch::pickle_save's wrapper
};

struct StorageType {  // torch.FloatStorage and its siblings
  torch::Dtype dtype;
};

using Text = std::shared_ptr<const std::string>;  // shared: the memo may hand one string out often

struct StorageRef {  // a persistent id: ('storage', type, key, location, numel)
  Text key;
  torch::Dtype dtype;
};

struct TensorSpec {  // a tensor view, materialized once its storage record is checked
  StorageRef storage;
  std::int64_t offset;
  std::vector<std::int64_t> sizes;
  std::vector<std::int64_t> strides;
};

struct None {};
struct Container;
using Value =
    std::variant<None, bool, std::int64_t, double, Text, Callable, StorageType, StorageRef,
                 std::shared_ptr<const TensorSpec>, std::shared_ptr<Container>>;

// Tuples, lists and dicts. A container placed inside another is frozen: it never changes again,
// which keeps `depth` exact (so destruction cannot recurse too deep) and rules out cycles.
struct Container {
  enum class Kind { kTuple, kList, kDict };
  explicit Container(Kind k) : kind(k) {}
  Kind kind;
  std::vector<Value> items;              // tuples and lists
  std::map<std::string, Value> entries;  // dicts (only string keys occur in state dicts)
  int depth = 1;
  bool frozen = false;
};
using ContainerPtr = std::shared_ptr<Container>;

constexpr int kMaxNesting = 32;

std::string kind_name(Container::Kind kind) {
  switch (kind) {
    case Container::Kind::kTuple: return "a tuple";
    case Container::Kind::kList: return "a list";
    case Container::Kind::kDict: return "a dict";
  }
  return "a container";
}

std::string describe(const Value& value) {
  struct Describe {
    std::string operator()(None) const { return "None"; }
    std::string operator()(bool) const { return "a bool"; }
    std::string operator()(std::int64_t) const { return "an int"; }
    std::string operator()(double) const { return "a float"; }
    std::string operator()(const Text&) const { return "a string"; }
    std::string operator()(Callable) const { return "a function"; }
    std::string operator()(StorageType) const { return "a storage type"; }
    std::string operator()(const StorageRef&) const { return "a storage"; }
    std::string operator()(const std::shared_ptr<const TensorSpec>&) const { return "a tensor"; }
    std::string operator()(const ContainerPtr& c) const { return kind_name(c->kind); }
  };
  return std::visit(Describe{}, value);
}

std::optional<torch::Dtype> storage_dtype(const std::string& class_name) {
  static const std::map<std::string, torch::Dtype> kStorageTypes = {
      {"DoubleStorage", torch::kFloat64},
      {"FloatStorage", torch::kFloat32},
      {"HalfStorage", torch::kFloat16},
      {"BFloat16Storage", torch::kBFloat16},
      {"LongStorage", torch::kInt64},
      {"IntStorage", torch::kInt32},
      {"ShortStorage", torch::kInt16},
      {"CharStorage", torch::kInt8},
      {"ByteStorage", torch::kUInt8},
      {"BoolStorage", torch::kBool},
      {"ComplexFloatStorage", torch::kComplexFloat},
      {"ComplexDoubleStorage", torch::kComplexDouble}};
  auto found = kStorageTypes.find(class_name);
  if (found == kStorageTypes.end()) return std::nullopt;
  return found->second;
}

// ---- the unpickler -----------------------------------------------------------------------------

class Unpickler {
 public:
  Unpickler(const char* data, std::size_t size, std::string where)
      : data_(data), size_(size), where_(std::move(where)) {}

  // Runs the pickle up to STOP and returns the object it built.
  Value run() {
    for (;;) {
      opcode_at_ = position_;
      if (!step()) break;
    }
    if (stack_.empty()) fail("STOP with an empty stack");
    return stack_.back();
  }

 private:
  // Executes one opcode; false at STOP.
  bool step() {
    const std::uint8_t opcode = read_byte();
    switch (opcode) {
      case 0x80: read_byte(); break;                     // PROTO
      case 0x95: read_le<std::uint64_t>(); break;        // FRAME
      case '.': return false;                            // STOP
      case '(': marks_.push_back(stack_.size()); break;  // MARK
      case '}': push(new_container(Container::Kind::kDict)); break;
      case ']': push(new_container(Container::Kind::kList)); break;
      case ')': push(make_tuple({})); break;
      case 't': push(make_tuple(pop_to_mark())); break;
      case 0x85:
      case 0x86:
      case 0x87: push(make_tuple(pop_n(opcode - 0x84u))); break;  // TUPLE1-3
      case 'l': push(fill_list(new_container(Container::Kind::kList), pop_to_mark())); break;
      case 'd': push(fill_dict(new_container(Container::Kind::kDict), pop_to_mark())); break;
      case 'a': add_to_top_list(pop_n(1)); break;                     // APPEND
      case 'e': add_to_top_list(pop_to_mark()); break;                // APPENDS
      case 's': add_to_top_dict(pop_n(2)); break;                     // SETITEM
      case 'u': add_to_top_dict(pop_to_mark()); break;                // SETITEMS
      case 'q': memo_put(read_byte()); break;                         // BINPUT
      case 'r': memo_put(read_le<std::uint32_t>()); break;            // LONG_BINPUT
      case 0x94: memo_put(memo_.size()); break;                       // MEMOIZE
      case 'h': memo_get(read_byte()); break;                         // BINGET
      case 'j': memo_get(read_le<std::uint32_t>()); break;            // LONG_BINGET
      case 'K': push(std::int64_t{read_byte()}); break;               // BININT1
      case 'M': push(std::int64_t{read_le<std::uint16_t>()}); break;  // BININT2
      case 'J': push(std::int64_t{read_le<std::int32_t>()}); break;   // BININT
      case 0x8a: push(read_long1()); break;                           // LONG1
      case 'N': push(None{}); break;
      case 0x88: push(true); break;                                 // NEWTRUE
      case 0x89: push(false); break;                                // NEWFALSE
      case 'G': push(read_binfloat()); break;                       // BINFLOAT
      case 'X': push(read_text(read_le<std::uint32_t>())); break;   // BINUNICODE
      case 0x8c: push(read_text(read_byte())); break;               // SHORT_BINUNICODE
      case 0x8d: push(read_text(read_le<std::uint64_t>())); break;  // BINUNICODE8
      case 'c': {
        auto module = read_line();
        push(resolve_global(module, read_line()));
      } break;
      case 0x93: {
        auto name = pop_text();
        push(resolve_global(*pop_text(), *name));
      } break;
      case 'R': {
        auto args = pop_container(Container::Kind::kTuple);
        push(call(pop(), *args));
      } break;
      case 'b': build(); break;
      case 'Q': push(persistent_load(*pop_container(Container::Kind::kTuple))); break;  // BINPERSID
      default: fail(str("unsupported pickle opcode 0x", std::hex, int{opcode}));
    }
    return true;
  }

  [[noreturn]] void fail(const std::string& message) const {
    throw Error(str(where_, ", byte ", opcode_at_, ": ", message));
  }

  // -- input

  std::uint8_t read_byte() { return static_cast<std::uint8_t>(*take(1)); }

  template <typename T>
  T read_le() {
    const char* bytes = take(sizeof(T));
    std::uint64_t value = 0;
    for (std::size_t i = sizeof(T); i-- > 0;)
      value = (value << 8) | static_cast<unsigned char>(bytes[i]);
    return static_cast<T>(value);
  }

  const char* take(std::uint64_t count) {
    if (count > size_ - position_) fail("the pickle is truncated");
    const char* bytes = data_ + position_;
    position_ += count;
    return bytes;
  }

  Text read_text(std::uint64_t length) {
    const char* bytes = take(length);
    return std::make_shared<const std::string>(bytes, length);
  }

  std::string read_line() {
    const char* begin = data_ + position_;
    const void* newline = std::memchr(begin, '\n', size_ - position_);
    if (newline == nullptr) fail("GLOBAL name without a terminating newline");
    const auto length = static_cast<std::size_t>(static_cast<const char*>(newline) - begin);
    position_ += length + 1;
    return std::string(begin, length);
  }

  std::int64_t read_long1() {
    const std::uint8_t length = read_byte();
    if (length > 8) fail(str("LONG1 integer of ", int{length}, " bytes; at most 8 are supported"));
    const char* bytes = take(length);
    std::uint64_t value = 0;
    for (std::size_t i = length; i-- > 0;)
      value = (value << 8) | static_cast<unsigned char>(bytes[i]);
    if (length > 0 && length < 8 && (static_cast<unsigned char>(bytes[length - 1]) & 0x80))
      value |= ~std::uint64_t{0} << (8 * length);  // sign-extend
    return static_cast<std::int64_t>(value);
  }

  double read_binfloat() {
    const char* bytes = take(8);
    std::uint64_t bits = 0;
    for (int i = 0; i < 8; ++i)
      bits = (bits << 8) | static_cast<unsigned char>(bytes[i]);  // big-endian
    double value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }

  // -- stack, marks, memo

  void push(Value value) { stack_.push_back(std::move(value)); }

  Value pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() == marks_.back()))
      fail("the pickle pops more values than it pushed");
    Value value = std::move(stack_.back());
    stack_.pop_back();
    return value;
  }

  std::vector<Value> pop_n(std::size_t count) {
    std::vector<Value> values(count);
    for (std::size_t i = count; i-- > 0;) values[i] = pop();
    return values;
  }

  std::vector<Value> pop_to_mark() {
    if (marks_.empty()) fail("the pickle uses a MARK it never set");
    const std::size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<Value> values(
        std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(mark)),
        std::make_move_iterator(stack_.end()));
    stack_.resize(mark);
    return values;
  }

  Text pop_text() {
    Value value = pop();
    if (auto* text = std::get_if<Text>(&value)) return *text;
    fail("STACK_GLOBAL expects strings, found " + describe(value));
  }

  ContainerPtr pop_container(Container::Kind kind) {
    Value value = pop();
    auto* container = std::get_if<ContainerPtr>(&value);
    if (container == nullptr || (*container)->kind != kind)
      fail("expected " + kind_name(kind) + ", found " + describe(value));
    return *container;
  }

  // The container on top of the stack, which the opcode is about to change.
  ContainerPtr top_container(Container::Kind kind) {
    if (stack_.empty()) fail("the pickle changes a container that is not there");
    auto* container = std::get_if<ContainerPtr>(&stack_.back());
    if (container == nullptr || (*container)->kind != kind)
      fail("expected " + kind_name(kind) + " to add to, found " + describe(stack_.back()));
    if ((*container)->frozen) fail("the pickle changes a container after using it");
    return *container;
  }

  // The items are popped (as the argument) before the container beneath them is looked at.
  void add_to_top_list(std::vector<Value> items) {
    fill_list(top_container(Container::Kind::kList), std::move(items));
  }
  void add_to_top_dict(std::vector<Value> items) {
    fill_dict(top_container(Container::Kind::kDict), std::move(items));
  }

  void memo_put(std::uint64_t index) {
    if (stack_.empty()) fail("memoizing from an empty stack");
    memo_[index] = stack_.back();
  }

  void memo_get(std::uint64_t index) {
    auto found = memo_.find(index);
    if (found == memo_.end()) fail(str("memo entry ", index, " is read before it is written"));
    push(found->second);
  }

  // -- containers

  static ContainerPtr new_container(Container::Kind kind) {
    return std::make_shared<Container>(kind);
  }

  void adopt(Container& parent, const Value& child) {
    auto* inner = std::get_if<ContainerPtr>(&child);
    if (inner == nullptr) return;
    if (inner->get() == &parent) fail("a container that holds itself");
    (*inner)->frozen = true;
    parent.depth = std::max(parent.depth, (*inner)->depth + 1);
    if (parent.depth > kMaxNesting) fail(str("containers nested deeper than ", kMaxNesting));
  }

  ContainerPtr make_tuple(std::vector<Value> items) {
    ContainerPtr tuple = new_container(Container::Kind::kTuple);
    for (const Value& item : items) adopt(*tuple, item);
    tuple->items = std::move(items);
    return tuple;
  }

  ContainerPtr fill_list(ContainerPtr list, std::vector<Value> items) {
    for (Value& item : items) {
      adopt(*list, item);
      list->items.push_back(std::move(item));
    }
    return list;
  }

  ContainerPtr fill_dict(ContainerPtr dict, std::vector<Value> items) {
    if (items.size() % 2 != 0) fail("dict items come as key/value pairs, found an odd count");
    for (std::size_t i = 0; i < items.size(); i += 2) {
      auto* key = std::get_if<Text>(&items[i]);
      if (key == nullptr) fail("dict keys must be strings, found " + describe(items[i]));
      adopt(*dict, items[i + 1]);
      dict->entries.insert_or_assign(**key, std::move(items[i + 1]));
    }
    return dict;
  }

  // -- globals, calls, persistent ids

  Value resolve_global(const std::string& module, const std::string& name) {
    if (module == "collections" && name == "OrderedDict") return Callable::kOrderedDict;
    if (module == "torch._utils" && name == "_rebuild_tensor_v2") return Callable::kRebuildTensorV2;
    if (module == "torch._utils" && name == "_rebuild_parameter")
      return Callable::kRebuildParameter;
    if (module == "torch._utils" && name == "_rebuild_parameter_with_state")
      return Callable::kRebuildParameterWithState;
    if (module == "torch.jit._pickle" && name == "restore_type_tag")
      return Callable::kRestoreTypeTag;
    if (module == "torch")
      if (auto dtype = storage_dtype(name)) return StorageType{*dtype};
    fail(str("unsupported Python object ", module, ".", name,
             "; only dicts of tensors (state dicts) can be read"));
  }

  Value call(const Value& callable, const Container& args) {
    const auto* function = std::get_if<Callable>(&callable);
    if (function == nullptr) fail("REDUCE calls " + describe(callable));
    switch (*function) {
      case Callable::kOrderedDict:
        if (!args.items.empty()) fail("OrderedDict is called with arguments");
        return new_container(Container::Kind::kDict);
      case Callable::kRebuildTensorV2: return rebuild_tensor(args);
      case Callable::kRebuildParameter:
      case Callable::kRebuildParameterWithState:
        if (args.items.empty() ||
            !std::holds_alternative<std::shared_ptr<const TensorSpec>>(args.items[0]))
          fail("_rebuild_parameter expects a tensor as its first argument");
        return args.items[0];
      case Callable::kRestoreTypeTag:
        if (args.items.size() != 2) fail("restore_type_tag expects (value, type name)");
        return args.items[0];
    }
    fail("unknown function");
  }

  std::vector<std::int64_t> non_negative_ints(const Value& value, const char* what) {
    const auto* tuple = std::get_if<ContainerPtr>(&value);
    if (tuple == nullptr || (*tuple)->kind != Container::Kind::kTuple)
      fail(str("tensor ", what, " must be a tuple, found ", describe(value)));
    std::vector<std::int64_t> ints;
    for (const Value& item : (*tuple)->items) {
      const auto* number = std::get_if<std::int64_t>(&item);
      if (number == nullptr || *number < 0)
        fail(str("tensor ", what, " must hold non-negative ints, found ", describe(item)));
      ints.push_back(*number);
    }
    return ints;
  }

  // _rebuild_tensor_v2(storage, offset, sizes, strides, requires_grad, backward_hooks[, metadata])
  Value rebuild_tensor(const Container& args) {
    const auto& items = args.items;
    if (items.size() < 6 || items.size() > 7)
      fail(str("_rebuild_tensor_v2 expects 6 or 7 arguments, found ", items.size()));
    const auto* storage = std::get_if<StorageRef>(&items[0]);
    const auto* offset = std::get_if<std::int64_t>(&items[1]);
    if (storage == nullptr)
      fail("_rebuild_tensor_v2 expects a storage, found " + describe(items[0]));
    if (offset == nullptr || *offset < 0)
      fail("tensor storage offset must be a non-negative int, found " + describe(items[1]));
    if (items.size() == 7 && !std::holds_alternative<None>(items[6])) {
      const auto* metadata = std::get_if<ContainerPtr>(&items[6]);
      if (metadata == nullptr || !(*metadata)->entries.empty())
        fail("tensors with extra metadata (e.g. conjugate or negative views) are not supported");
    }
    auto spec = std::make_shared<TensorSpec>();
    spec->storage = *storage;
    spec->offset = *offset;
    spec->sizes = non_negative_ints(items[2], "sizes");
    spec->strides = non_negative_ints(items[3], "strides");
    if (spec->sizes.size() != spec->strides.size())
      fail(str("tensor has ", spec->sizes.size(), " sizes but ", spec->strides.size(), " strides"));
    return std::shared_ptr<const TensorSpec>(std::move(spec));
  }

  Value persistent_load(const Container& pid) {
    const auto& items = pid.items;
    const auto* tag = items.empty() ? nullptr : std::get_if<Text>(&items[0]);
    if (items.size() != 5 || tag == nullptr || **tag != "storage")
      fail("persistent id is not ('storage', type, key, location, numel)");
    const auto* type = std::get_if<StorageType>(&items[1]);
    const auto* key = std::get_if<Text>(&items[2]);
    if (type == nullptr) fail("persistent id names no storage type, found " + describe(items[1]));
    if (key == nullptr) fail("persistent id key must be a string, found " + describe(items[2]));
    return StorageRef{*key, type->dtype};
  }

  // BUILD sets Python attributes (an OrderedDict's _metadata, for instance): not needed here.
  void build() {
    Value state = pop();
    if (stack_.empty()) fail("BUILD without an object");
    const Value& object = stack_.back();
    const auto* container = std::get_if<ContainerPtr>(&object);
    const bool is_dict = container != nullptr && (*container)->kind == Container::Kind::kDict;
    if (!is_dict && !std::holds_alternative<std::shared_ptr<const TensorSpec>>(object))
      fail("BUILD on " + describe(object));
  }

  const char* data_;
  std::size_t size_;
  std::string where_;
  std::size_t position_ = 0;
  std::size_t opcode_at_ = 0;
  std::vector<Value> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, Value> memo_;
};

// ---- the archive -------------------------------------------------------------------------------

// Reads the first bytes and explains what the file is when it is not a zip archive.
void check_is_zip(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  ADAPTERS_CHECK(in.is_open(), "cannot open ", path, ": ", std::strerror(errno));
  char magic[4] = {};
  in.read(magic, sizeof magic);
  const auto read = in.gcount();
  if (read == 4 && std::memcmp(magic, "PK\x03\x04", 4) == 0) return;
  ADAPTERS_CHECK(read < 1 || static_cast<unsigned char>(magic[0]) != 0x80, path,
                 ": this file uses the legacy torch.save format (torch < 1.6), which is not "
                 "supported; re-save it with torch >= 1.6 (torch.save(torch.load(f), f))");
  throw Error(str(path, ": not a torch.save file: expected a zip archive (torch >= 1.6), found ",
                  read < 4 ? "a file shorter than a zip header" : "other data"));
}

// Storages by key, loaded from their records on first use.
class StorageRecords {
 public:
  StorageRecords(caffe2::serialize::PyTorchStreamReader& reader, const fs::path& path)
      : reader_(reader), path_(path) {}

  const at::Storage& get(const std::string& key, const std::string& tensor_name) {
    auto found = storages_.find(key);
    if (found != storages_.end()) return found->second;
    const std::string record = "data/" + key;
    ADAPTERS_CHECK(reader_.hasRecord(record), path_, ": tensor \"", tensor_name,
                   "\" uses storage \"", key, "\", but the archive has no record ", record);
    auto [data, size] = reader_.getRecord(record);
    at::Storage storage(c10::Storage::use_byte_size_t(), size, std::move(data), nullptr, false);
    return storages_.emplace(key, std::move(storage)).first->second;
  }

 private:
  caffe2::serialize::PyTorchStreamReader& reader_;
  fs::path path_;
  std::map<std::string, at::Storage> storages_;
};

// The bytes a view needs: (offset + sum((size - 1) * stride) + 1) * itemsize, or 0 when empty.
std::optional<std::uint64_t> bytes_needed(const TensorSpec& spec) {
  std::uint64_t last = static_cast<std::uint64_t>(spec.offset);
  for (std::size_t i = 0; i < spec.sizes.size(); ++i) {
    if (spec.sizes[i] == 0) return 0;
    std::uint64_t reach = 0;
    if (__builtin_mul_overflow(static_cast<std::uint64_t>(spec.sizes[i] - 1),
                               static_cast<std::uint64_t>(spec.strides[i]), &reach) ||
        __builtin_add_overflow(last, reach, &last))
      return std::nullopt;
  }
  std::uint64_t bytes = 0;
  if (__builtin_add_overflow(last, 1, &last) ||
      __builtin_mul_overflow(last, c10::elementSize(spec.storage.dtype), &bytes))
    return std::nullopt;
  return bytes;
}

torch::Tensor materialize(const TensorSpec& spec, const std::string& name, StorageRecords& records,
                          const fs::path& path) {
  const at::Storage& storage = records.get(*spec.storage.key, name);
  const auto needed = bytes_needed(spec);
  ADAPTERS_CHECK(needed && *needed <= storage.nbytes(), path, ": tensor \"", name, "\" (",
                 spec.storage.dtype, ", sizes ", c10::IntArrayRef(spec.sizes), ", strides ",
                 c10::IntArrayRef(spec.strides), ", offset ", spec.offset, ") needs ",
                 needed ? str(*needed) : std::string("more than 2^64"), " bytes of storage \"",
                 *spec.storage.key, "\", which holds ", storage.nbytes());
  return torch::empty({0}, torch::dtype(spec.storage.dtype))
      .set_(storage, spec.offset, spec.sizes, spec.strides);
}

TensorMap tensors_of_state_dict(const Value& root, StorageRecords& records, const fs::path& path) {
  const auto* dict = std::get_if<ContainerPtr>(&root);
  ADAPTERS_CHECK(dict != nullptr && (*dict)->kind == Container::Kind::kDict, path,
                 ": expected a dict of tensors (a state dict), found ", describe(root));
  TensorMap tensors;
  for (const auto& [name, value] : (*dict)->entries) {
    const auto* spec = std::get_if<std::shared_ptr<const TensorSpec>>(&value);
    ADAPTERS_CHECK(spec != nullptr, path, ": entry \"", name, "\" is ", describe(value),
                   ", expected a tensor");
    tensors.emplace(name, materialize(**spec, name, records, path));
  }
  return tensors;
}

void check_little_endian(caffe2::serialize::PyTorchStreamReader& reader, const fs::path& path) {
  if (!reader.hasRecord("byteorder")) return;  // written by torch >= 2.1; older files are little
  auto [data, size] = reader.getRecord("byteorder");
  const std::string order(static_cast<const char*>(data.get()), size);
  ADAPTERS_CHECK(order == "little", path, ": tensors are stored in \"", order,
                 "\" byte order; only little-endian files are supported");
}

TensorMap read_archive(const fs::path& path) {
  caffe2::serialize::PyTorchStreamReader reader(path.string());
  ADAPTERS_CHECK(reader.hasRecord("data.pkl"), path,
                 ": the zip archive has no data.pkl record; not a torch.save file");
  check_little_endian(reader, path);
  auto [pickle, pickle_size] = reader.getRecord("data.pkl");
  Unpickler unpickler(static_cast<const char*>(pickle.get()), pickle_size, str(path, ": data.pkl"));
  const Value root = unpickler.run();
  StorageRecords records(reader, path);
  return tensors_of_state_dict(root, records, path);
}

}  // namespace

TensorMap read_torch_bin(const fs::path& path) {
  check_readable_file(path, kMaxTorchBinBytes, "torch.save file");
  check_is_zip(path);
  try {
    return read_archive(path);
  } catch (const c10::Error& e) {
    throw Error(str(path, ": cannot read the torch.save archive: ", e.what_without_backtrace()));
  }
}

}  // namespace adapters::io
