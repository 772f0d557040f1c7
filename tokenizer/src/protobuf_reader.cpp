// Protobuf wire-format reader; see protobuf_reader.h.
#include "protobuf_reader.h"

#include <cstring>

#include "adapters/core/error.h"

namespace adapters::tokenizer::protobuf {

namespace {

const char* type_name(WireType type) {
  switch (type) {
    case WireType::Varint: return "varint";
    case WireType::Fixed64: return "64-bit";
    case WireType::LengthDelimited: return "length-delimited";
    case WireType::Fixed32: return "32-bit";
  }
  return "unknown";
}

}  // namespace

void Reader::fail(const std::string& what) const {
  throw Error(str(where_, ": malformed protobuf at byte ", pos_, ": ", what));
}

uint64_t Reader::read_varint() {
  uint64_t value = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (pos_ >= data_.size()) fail("varint runs past the end of the data");
    const auto byte = static_cast<unsigned char>(data_[pos_++]);
    value |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if ((byte & 0x80) == 0) return value;
  }
  fail("varint longer than 10 bytes");
}

uint64_t Reader::read_fixed(size_t width) {
  if (data_.size() - pos_ < width) fail(str(width * 8, "-bit value runs past the end of the data"));
  uint64_t value = 0;
  for (size_t k = 0; k < width; ++k) value |= static_cast<uint64_t>(static_cast<unsigned char>(data_[pos_ + k])) << (8 * k);
  pos_ += width;
  return value;
}

bool Reader::next(Field& field) {
  if (pos_ >= data_.size()) return false;
  const uint64_t key = read_varint();
  field = Field{};
  field.number = static_cast<uint32_t>(key >> 3);
  if (field.number == 0 || (key >> 3) > 0x1FFFFFFF) fail(str("invalid field number ", key >> 3));
  field.type = static_cast<WireType>(key & 7);
  switch (field.type) {
    case WireType::Varint: field.varint = read_varint(); break;
    case WireType::Fixed64: field.fixed = read_fixed(8); break;
    case WireType::Fixed32: field.fixed = read_fixed(4); break;
    case WireType::LengthDelimited: {
      const uint64_t length = read_varint();
      if (length > data_.size() - pos_) fail(str("field ", field.number, " claims ", length, " bytes but only ", data_.size() - pos_, " remain"));
      field.bytes = data_.substr(pos_, static_cast<size_t>(length));
      pos_ += static_cast<size_t>(length);
      break;
    }
    default: fail(str("field ", field.number, " has unsupported wire type ", key & 7, " (groups are not supported)"));
  }
  return true;
}

void Reader::expect(const Field& field, WireType type, const char* name) const {
  if (field.type != type) {
    throw Error(str(where_, ": field ", name, " (", field.number, ") must be ", type_name(type), ", found ", type_name(field.type)));
  }
}

bool Reader::as_bool(const Field& field, const char* name) const {
  expect(field, WireType::Varint, name);
  return field.varint != 0;
}

int32_t Reader::as_int32(const Field& field, const char* name) const {
  expect(field, WireType::Varint, name);
  return static_cast<int32_t>(static_cast<uint32_t>(field.varint));  // int32 is sign-extended to 64 bits
}

float Reader::as_float(const Field& field, const char* name) const {
  expect(field, WireType::Fixed32, name);
  const auto bits = static_cast<uint32_t>(field.fixed);
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

std::string_view Reader::as_bytes(const Field& field, const char* name) const {
  expect(field, WireType::LengthDelimited, name);
  return field.bytes;
}

}  // namespace adapters::tokenizer::protobuf
