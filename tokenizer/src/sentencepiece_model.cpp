// Native reader of SentencePiece .model files; see sentencepiece_model.h. Field numbers are
// those of sentencepiece_model.proto (ModelProto: pieces = 1, trainer_spec = 2,
// normalizer_spec = 3); unknown fields are skipped.
#include "sentencepiece_model.h"

#include <fstream>
#include <sstream>

#include "adapters/core/error.h"
#include "precompiled.h"
#include "protobuf_reader.h"

namespace adapters::tokenizer {

namespace {

using Proto = SentencePieceModelProto;
using protobuf::Field;
using protobuf::Reader;

Proto::Piece read_piece(std::string_view data, const std::string& where) {
  Reader r(data, where);
  Proto::Piece piece;
  for (Field f; r.next(f);) {
    if (f.number == 1) piece.piece = std::string(r.as_bytes(f, "SentencePiece.piece"));
    else if (f.number == 2) piece.score = r.as_float(f, "SentencePiece.score");
    else if (f.number == 3) piece.type = static_cast<Proto::PieceType>(r.as_int32(f, "SentencePiece.type"));
  }
  if (piece.type < Proto::PieceType::Normal || piece.type > Proto::PieceType::Byte) {
    throw Error(str(where, ": SentencePiece.type must be 1..6, found ", static_cast<int>(piece.type)));
  }
  return piece;
}

void read_trainer_spec(std::string_view data, const std::string& where, Proto& model) {
  Reader r(data, where);
  for (Field f; r.next(f);) {
    if (f.number == 3) model.model_type = static_cast<Proto::ModelType>(r.as_int32(f, "TrainerSpec.model_type"));
    else if (f.number == 35) model.byte_fallback = r.as_bool(f, "TrainerSpec.byte_fallback");
    else if (f.number == 40) model.unk_id = r.as_int32(f, "TrainerSpec.unk_id");
  }
}

void read_normalizer_spec(std::string_view data, const std::string& where, Proto& model) {
  Reader r(data, where);
  for (Field f; r.next(f);) {
    if (f.number == 2) model.precompiled_charsmap = std::string(r.as_bytes(f, "NormalizerSpec.precompiled_charsmap"));
    else if (f.number == 3) model.add_dummy_prefix = r.as_bool(f, "NormalizerSpec.add_dummy_prefix");
    else if (f.number == 4) model.remove_extra_whitespaces = r.as_bool(f, "NormalizerSpec.remove_extra_whitespaces");
  }
}

void check(const Proto& model, const std::string& where) {
  if (model.pieces.empty()) throw Error(str(where, ": ModelProto.pieces is empty (expected the vocabulary)"));
  if (model.unk_id < 0 || static_cast<size_t>(model.unk_id) >= model.pieces.size()) {
    throw Error(str(where, ": TrainerSpec.unk_id must be within the ", model.pieces.size(), " pieces, found ", model.unk_id));
  }
  if (model.model_type != Proto::ModelType::Unigram && model.model_type != Proto::ModelType::Bpe) {
    throw Error(str(where, ": TrainerSpec.model_type must be UNIGRAM (1) or BPE (2), found ", static_cast<int>(model.model_type)));
  }
  if (!model.precompiled_charsmap.empty()) CharsMap(model.precompiled_charsmap, where + " (NormalizerSpec)");  // fails on a malformed map
}

std::string read_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(str("cannot read SentencePiece model ", file.string()));
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

}  // namespace

SentencePieceModelProto read_sentencepiece_model(const std::filesystem::path& file) {
  const std::string data = read_file(file);
  const std::string where = file.string();
  Proto model;
  Reader r(data, where + " (ModelProto)");
  for (Field f; r.next(f);) {
    if (f.number == 1) model.pieces.push_back(read_piece(r.as_bytes(f, "ModelProto.pieces"), str(where, " (piece ", model.pieces.size(), ")")));
    else if (f.number == 2) read_trainer_spec(r.as_bytes(f, "ModelProto.trainer_spec"), where + " (TrainerSpec)", model);
    else if (f.number == 3) read_normalizer_spec(r.as_bytes(f, "ModelProto.normalizer_spec"), where + " (NormalizerSpec)", model);
  }
  check(model, where);
  return model;
}

}  // namespace adapters::tokenizer
