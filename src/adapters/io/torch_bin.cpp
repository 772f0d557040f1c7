// torch.save files (the zip format of torch >= 1.6): "<archive>/data.pkl" is a pickle of the saved
// object, "<archive>/data/<key>" holds the bytes of each storage. The zip is read with libtorch's
// PyTorchStreamReader; the pickle with a small, strict unpickler of its own that knows exactly what
// a state dict needs (dicts, OrderedDicts, tensors rebuilt by torch._utils._rebuild_tensor_v2 /
// _rebuild_parameter, torch::pickle_save's type tags), checks every stack access, and bounds every
// tensor view by the bytes its storage record really holds. (libtorch 1.13's torch::pickle_load
// turns collections.OrderedDict into None, so the OrderedDict state dicts of older transformers
// fail there, and it trusts the sizes written in the pickle.) Keys that share a storage share it in
// memory too. Of libtorch only the long-stable PyTorchStreamReader is used (1.13 and 2.x alike);
// the zip's central directory is checked first (no zip bombs, no ambiguous names or offsets), and
// every storage record must hold exactly the bytes its persistent id declares.
#include "adapters/io/tensors.h"

#include "adapters/core/error.h"

#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <set>
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
  std::int64_t numel;
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
// Values (pushes and memo writes) and containers one pickle may create. torch.save's pickle of a
// state dict creates about 30 values and 6 containers per tensor, so these allow state dicts of
// some 250,000 tensors while bounding what any pickle can make the reader hold in memory.
constexpr std::uint64_t kMaxPickleValues = std::uint64_t{1} << 23;
constexpr std::uint64_t kMaxPickleContainers = std::uint64_t{1} << 21;

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

  void push(Value value) {
    count_value();
    stack_.push_back(std::move(value));
  }

  // Every push and memo write counts towards kMaxPickleValues.
  void count_value() {
    if (++values_created_ > kMaxPickleValues)
      fail(str("the pickle creates more than ", kMaxPickleValues,
               " values, far more than a state dict needs"));
  }

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
    count_value();
    memo_[index] = stack_.back();
  }

  void memo_get(std::uint64_t index) {
    auto found = memo_.find(index);
    if (found == memo_.end()) fail(str("memo entry ", index, " is read before it is written"));
    push(found->second);
  }

  // -- containers

  ContainerPtr new_container(Container::Kind kind) {
    if (++containers_created_ > kMaxPickleContainers)
      fail(str("the pickle creates more than ", kMaxPickleContainers,
               " tuples, lists and dicts, far more than a state dict needs"));
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
    const auto* numel = std::get_if<std::int64_t>(&items[4]);
    if (type == nullptr) fail("persistent id names no storage type, found " + describe(items[1]));
    if (key == nullptr) fail("persistent id key must be a string, found " + describe(items[2]));
    if (numel == nullptr || *numel < 0)
      fail("persistent id numel must be a non-negative int, found " + describe(items[4]));
    return StorageRef{*key, type->dtype, *numel};
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
  std::uint64_t values_created_ = 0;
  std::uint64_t containers_created_ = 0;
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

// ---- the zip's central directory ---------------------------------------------------------------
// libtorch's zip reader (miniz) allocates a record at the uncompressed size the central directory
// declares and inflates deflated records into it, so a small file could claim gigabytes. Before
// any record is read, the central directory is parsed here the way miniz finds it, and every
// record is checked: stored (all torch.save writes) or deflated within kMaxDecompressionRatio,
// inside the file, its name unique (miniz matches names ignoring case), and its data where
// libtorch's reader finds it, so that both read the same directory.

constexpr std::uint64_t kMaxDecompressionRatio = 100;
constexpr std::uint64_t kMaxZipDirectoryBytes = std::uint64_t{256} << 20;
constexpr std::uint64_t kEndRecordBytes = 22;       // end of central directory record
constexpr std::uint64_t kZip64LocatorBytes = 20;    // zip64 end of central directory locator
constexpr std::uint64_t kZip64EndRecordBytes = 56;  // zip64 end of central directory record
constexpr std::uint64_t kEntryBytes = 46;           // central directory entry, before its name
constexpr std::uint64_t kLocalHeaderBytes = 30;     // local file header, before its name
constexpr std::uint32_t kNoZip32Value = 0xffffffff;  // "the value is in the zip64 extra field"

std::uint64_t le_at(const std::string& bytes, std::size_t offset, std::size_t width) {
  std::uint64_t value = 0;
  for (std::size_t i = width; i-- > 0;)
    value = (value << 8) | static_cast<unsigned char>(bytes[offset + i]);
  return value;
}

struct ZipRecord {
  std::uint64_t method = 0;
  std::uint64_t compressed_size = 0;
  std::uint64_t size = 0;  // uncompressed
  std::uint64_t local_header = 0;
};

class ZipDirectory {
 public:
  ZipDirectory(const fs::path& path, std::uint64_t file_size)
      : path_(path), file_size_(file_size), in_(path, std::ios::binary) {
    ADAPTERS_CHECK(in_.is_open(), "cannot open ", path, ": ", std::strerror(errno));
    const std::uint64_t end_record = find_end_record();
    const Extent directory = directory_extent(end_record);
    read_entries(directory);
  }

  // The record "<archive>/<name>" (name as given to PyTorchStreamReader), or nullptr.
  const ZipRecord* find(const std::string& name) const {
    auto found = records_.find(archive_name_ + "/" + name);
    return found == records_.end() ? nullptr : &found->second;
  }

  // Refuses the file unless libtorch's reader finds every record's data where this directory
  // puts it (else the two read different directories, and these checks would prove nothing).
  void check_agrees_with(caffe2::serialize::PyTorchStreamReader& reader) {
    const std::string prefix = archive_name_ + "/";
    for (const auto& [name, record] : records_) {
      if (name.compare(0, prefix.size(), prefix) != 0) continue;  // unreachable through reader
      const std::uint64_t data = data_offset(name, record);
      ADAPTERS_CHECK(reader.getRecordOffset(name.substr(prefix.size())) == data, path_,
                     ": zip record ", name, " is found at different offsets by its central "
                     "directory and by libtorch's zip reader; the archive is ambiguous");
    }
  }

 private:
  struct Extent {
    std::uint64_t offset;
    std::uint64_t size;
    std::uint64_t entries;
  };

  std::string read_at(std::uint64_t offset, std::uint64_t count, const char* what) {
    ADAPTERS_CHECK(offset <= file_size_ && count <= file_size_ - offset, path_, ": the zip ", what,
                   " (", count, " bytes at offset ", offset, ") lies past the end of the file (",
                   file_size_, " bytes); the file is truncated or corrupt");
    std::string bytes(static_cast<std::size_t>(count), '\0');
    in_.seekg(static_cast<std::streamoff>(offset));
    in_.read(bytes.data(), static_cast<std::streamsize>(count));
    ADAPTERS_CHECK(static_cast<std::uint64_t>(in_.gcount()) == count, path_, ": reading the zip ",
                   what, " at offset ", offset, " failed");
    return bytes;
  }

  // The last end-of-central-directory signature with a whole record after it, within the last
  // 64 KiB (the most a zip comment can add), as miniz searches.
  std::uint64_t find_end_record() {
    const std::uint64_t window = std::min<std::uint64_t>(file_size_, 0xffff + kEndRecordBytes);
    const std::uint64_t start = file_size_ - window;
    const std::string tail = read_at(start, window, "end of central directory");
    for (std::uint64_t i = window >= kEndRecordBytes ? window - kEndRecordBytes + 1 : 0; i-- > 0;)
      if (le_at(tail, i, 4) == 0x06054b50) return start + i;
    throw Error(str(path_, ": cannot read the torch.save archive: it has no zip end of central "
                           "directory record; the file is truncated or corrupt"));
  }

  // Where the central directory is, from the end record (and its zip64 twin, which torch.save
  // always writes); nothing may lie between the directory and the end records.
  Extent directory_extent(std::uint64_t end_record) {
    const std::string end = read_at(end_record, kEndRecordBytes, "end of central directory");
    Extent extent{le_at(end, 16, 4), le_at(end, 12, 4), le_at(end, 10, 2)};
    std::uint64_t entries_here = le_at(end, 8, 2);
    std::uint64_t disks = le_at(end, 4, 2) | le_at(end, 6, 2);
    std::uint64_t directory_end = end_record;
    if (end_record >= kZip64LocatorBytes + kZip64EndRecordBytes) {
      const std::string locator =
          read_at(end_record - kZip64LocatorBytes, kZip64LocatorBytes, "zip64 locator");
      if (le_at(locator, 0, 4) == 0x07064b50) {
        directory_end = end_record - kZip64LocatorBytes - kZip64EndRecordBytes;
        ADAPTERS_CHECK(le_at(locator, 8, 8) == directory_end && le_at(locator, 16, 4) == 1, path_,
                       ": the zip64 locator points to offset ", le_at(locator, 8, 8),
                       ", not to the record before it (", directory_end,
                       "); the archive is ambiguous");
        const std::string end64 = read_at(directory_end, kZip64EndRecordBytes, "zip64 end record");
        ADAPTERS_CHECK(le_at(end64, 0, 4) == 0x06064b50, path_, ": no zip64 end of central "
                       "directory record at offset ", directory_end, "; the file is corrupt");
        extent = Extent{le_at(end64, 48, 8), le_at(end64, 40, 8), le_at(end64, 32, 8)};
        entries_here = le_at(end64, 24, 8);
        disks = le_at(end64, 16, 4) | le_at(end64, 20, 4);
      }
    }
    ADAPTERS_CHECK(disks == 0 && entries_here == extent.entries, path_,
                   ": multi-disk zip archives are not supported");
    ADAPTERS_CHECK(extent.size <= kMaxZipDirectoryBytes, path_, ": the zip central directory is ",
                   extent.size, " bytes, past the limit of ", kMaxZipDirectoryBytes);
    ADAPTERS_CHECK(extent.offset <= directory_end && extent.size == directory_end - extent.offset,
                   path_, ": the zip central directory (", extent.size, " bytes at offset ",
                   extent.offset, ") does not end where its end record begins (offset ",
                   directory_end, "); the file is corrupt or has data appended");
    ADAPTERS_CHECK(extent.entries <= extent.size / kEntryBytes, path_, ": the zip central "
                   "directory of ", extent.size, " bytes cannot hold ", extent.entries, " entries");
    return extent;
  }

  void read_entries(const Extent& extent) {
    const std::string directory = read_at(extent.offset, extent.size, "central directory");
    std::set<std::string> folded_names;
    std::uint64_t at = 0;
    for (std::uint64_t i = 0; i < extent.entries; ++i) {
      ADAPTERS_CHECK(directory.size() - at >= kEntryBytes && le_at(directory, at, 4) == 0x02014b50,
                     path_, ": zip central directory entry ", i, " at offset ", extent.offset + at,
                     " is corrupt");
      const std::uint64_t name_length = le_at(directory, at + 28, 2);
      const std::uint64_t extra_length = le_at(directory, at + 30, 2);
      const std::uint64_t entry_length =
          kEntryBytes + name_length + extra_length + le_at(directory, at + 32, 2);
      ADAPTERS_CHECK(directory.size() - at >= entry_length, path_, ": zip central directory entry ",
                     i, " reaches past the end of the directory");
      const std::string name = directory.substr(at + kEntryBytes, name_length);
      ZipRecord record{le_at(directory, at + 10, 2), le_at(directory, at + 20, 4),
                       le_at(directory, at + 24, 4), le_at(directory, at + 42, 4)};
      read_zip64_sizes(directory.substr(at + kEntryBytes + name_length, extra_length), record);
      check_record(name, record);
      if (i == 0) archive_name_ = name.substr(0, name.find('/'));
      ADAPTERS_CHECK(folded_names.insert(ascii_lower(name)).second, path_, ": the zip archive "
                     "names record ", name, " twice (zip names are matched ignoring case)");
      records_.emplace(name, record);
      at += entry_length;
    }
  }

  // The zip64 extra field holds, in this order, the sizes and offset whose 32-bit fields are full.
  static void read_zip64_sizes(const std::string& extra, ZipRecord& record) {
    for (std::size_t at = 0; extra.size() - at >= 4;) {
      const std::uint64_t id = le_at(extra, at, 2);
      const std::size_t length = std::min<std::size_t>(le_at(extra, at + 2, 2), extra.size() - at - 4);
      if (id == 1) {
        std::size_t field = at + 4;
        for (std::uint64_t* value : {&record.size, &record.compressed_size, &record.local_header}) {
          if (*value != kNoZip32Value || field + 8 > at + 4 + length) continue;
          *value = le_at(extra, field, 8);
          field += 8;
        }
        return;
      }
      at += 4 + length;
    }
  }

  static std::string ascii_lower(std::string text) {
    for (char& c : text)
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return text;
  }

  void check_record(const std::string& name, const ZipRecord& record) const {
    std::uint64_t inflated_limit = 0;
    switch (record.method) {
      case 0:  // stored
        ADAPTERS_CHECK(record.size == record.compressed_size, path_, ": zip record ", name,
                       " is stored uncompressed, yet declares ", record.size, " bytes in ",
                       record.compressed_size);
        break;
      case 8:  // deflated
        if (__builtin_mul_overflow(record.compressed_size, kMaxDecompressionRatio, &inflated_limit))
          inflated_limit = std::numeric_limits<std::uint64_t>::max();
        ADAPTERS_CHECK(record.size <= inflated_limit, path_, ": zip record ", name,
                       " would inflate ", record.compressed_size, " bytes to ", record.size,
                       ", a ratio past the limit of ", kMaxDecompressionRatio,
                       " (a zip bomb?); torch.save stores records uncompressed, so re-save it");
        break;
      default:
        throw Error(str(path_, ": zip record ", name, " uses compression method ", record.method,
                        "; torch.save files store records uncompressed (method 0)"));
    }
    ADAPTERS_CHECK(record.local_header <= file_size_ &&
                       record.compressed_size <= file_size_ - record.local_header,
                   path_, ": zip record ", name, " (", record.compressed_size, " bytes at offset ",
                   record.local_header, ") reaches past the end of the file (", file_size_,
                   " bytes)");
  }

  // Where a record's bytes begin: after its local header, name and extra field.
  std::uint64_t data_offset(const std::string& name, const ZipRecord& record) {
    const std::string header = read_at(record.local_header, kLocalHeaderBytes, "local header");
    ADAPTERS_CHECK(le_at(header, 0, 4) == 0x04034b50, path_, ": zip record ", name,
                   " has no local header at offset ", record.local_header);
    const std::uint64_t data = record.local_header + kLocalHeaderBytes + le_at(header, 26, 2) +
                               le_at(header, 28, 2);
    ADAPTERS_CHECK(data <= file_size_ && record.compressed_size <= file_size_ - data, path_,
                   ": zip record ", name, " (", record.compressed_size, " bytes at offset ", data,
                   ") reaches past the end of the file (", file_size_, " bytes)");
    return data;
  }

  fs::path path_;
  std::uint64_t file_size_;
  std::ifstream in_;
  std::string archive_name_;
  std::map<std::string, ZipRecord> records_;
};

// Storages by key, loaded from their records on first use.
class StorageRecords {
 public:
  StorageRecords(caffe2::serialize::PyTorchStreamReader& reader, const ZipDirectory& directory,
                 const fs::path& path)
      : reader_(reader), directory_(directory), path_(path) {}

  // The size of the storage's record, as the central directory declares it (nothing is read).
  std::uint64_t size_of(const StorageRef& storage, const std::string& tensor_name) const {
    const ZipRecord* record = directory_.find("data/" + *storage.key);
    ADAPTERS_CHECK(record != nullptr, path_, ": tensor \"", tensor_name, "\" uses storage \"",
                   *storage.key, "\", but the archive has no record data/", *storage.key);
    return record->size;
  }

  // The storage, read once its record is known to hold exactly the numel its persistent id gives
  // (checked for every reference to it).
  const at::Storage& get(const StorageRef& ref, const std::string& tensor_name) {
    const std::uint64_t record_size = size_of(ref, tensor_name);
    std::uint64_t declared = 0;
    const bool fits = !__builtin_mul_overflow(static_cast<std::uint64_t>(ref.numel),
                                              c10::elementSize(ref.dtype), &declared);
    ADAPTERS_CHECK(fits && declared == record_size, path_, ": tensor \"", tensor_name,
                   "\" uses storage \"", *ref.key, "\" of ", ref.numel, " ", ref.dtype,
                   " elements (", fits ? str(declared) : std::string("more than 2^64"),
                   " bytes), but its record data/", *ref.key, " holds ", record_size, " bytes");
    auto found = storages_.find(*ref.key);
    if (found != storages_.end()) return found->second;
    auto [data, size] = reader_.getRecord("data/" + *ref.key);
    at::Storage storage(c10::Storage::use_byte_size_t(), size, std::move(data), nullptr, false);
    return storages_.emplace(*ref.key, std::move(storage)).first->second;
  }

 private:
  caffe2::serialize::PyTorchStreamReader& reader_;
  const ZipDirectory& directory_;
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
  const std::uint64_t storage_bytes = records.size_of(spec.storage, name);
  const auto needed = bytes_needed(spec);
  ADAPTERS_CHECK(needed && *needed <= storage_bytes, path, ": tensor \"", name, "\" (",
                 spec.storage.dtype, ", sizes ", c10::IntArrayRef(spec.sizes), ", strides ",
                 c10::IntArrayRef(spec.strides), ", offset ", spec.offset, ") needs ",
                 needed ? str(*needed) : std::string("more than 2^64"), " bytes of storage \"",
                 *spec.storage.key, "\", which holds ", storage_bytes);
  const at::Storage& storage = records.get(spec.storage, name);
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

TensorMap read_archive(const fs::path& path, std::uint64_t file_size) {
  ZipDirectory directory(path, file_size);
  caffe2::serialize::PyTorchStreamReader reader(path.string());
  directory.check_agrees_with(reader);
  ADAPTERS_CHECK(reader.hasRecord("data.pkl"), path,
                 ": the zip archive has no data.pkl record; not a torch.save file");
  check_little_endian(reader, path);
  auto [pickle, pickle_size] = reader.getRecord("data.pkl");
  Unpickler unpickler(static_cast<const char*>(pickle.get()), pickle_size, str(path, ": data.pkl"));
  const Value root = unpickler.run();
  StorageRecords records(reader, directory, path);
  return tensors_of_state_dict(root, records, path);
}

}  // namespace

TensorMap read_torch_bin(const fs::path& path) {
  const std::uint64_t file_size = check_readable_file(path, kMaxTorchBinBytes, "torch.save file");
  check_is_zip(path);
  try {
    return read_archive(path, file_size);
  } catch (const c10::Error& e) {
    throw Error(str(path, ": cannot read the torch.save archive: ", e.what_without_backtrace()));
  }
}

}  // namespace adapters::io
