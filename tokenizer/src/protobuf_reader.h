// A small, bounds-checked reader of the protobuf wire format (varint, 64-bit, length-delimited,
// 32-bit fields), enough to read SentencePiece .model files without libprotobuf.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace adapters::tokenizer::protobuf {

enum class WireType : uint32_t { Varint = 0, Fixed64 = 1, LengthDelimited = 2, Fixed32 = 5 };

// One field of a message; `bytes` points into the reader's buffer.
struct Field {
  uint32_t number = 0;
  WireType type = WireType::Varint;
  uint64_t varint = 0;     // Varint
  uint64_t fixed = 0;      // Fixed64 / Fixed32
  std::string_view bytes;  // LengthDelimited
};

// Reads the fields of one message in order; every error names `where` (the file and message).
class Reader {
 public:
  Reader(std::string_view data, std::string where) : data_(data), where_(std::move(where)) {}

  // Reads the next field into `field`; false at the end of the message.
  bool next(Field& field);

  // Typed views of a field, checking its wire type; `name` is the field's name for errors.
  bool as_bool(const Field& field, const char* name) const;
  int32_t as_int32(const Field& field, const char* name) const;
  float as_float(const Field& field, const char* name) const;
  std::string_view as_bytes(const Field& field, const char* name) const;

  const std::string& where() const { return where_; }

 private:
  uint64_t read_varint();
  uint64_t read_fixed(size_t width);
  [[noreturn]] void fail(const std::string& what) const;
  void expect(const Field& field, WireType type, const char* name) const;

  std::string_view data_;
  size_t pos_ = 0;
  std::string where_;
};

}  // namespace adapters::tokenizer::protobuf
