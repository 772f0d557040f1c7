// The parts of a SentencePiece .model file (a serialized sentencepiece.ModelProto) that the
// tokenizer pipeline needs, read natively with the field numbers of sentencepiece_model.proto.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace adapters::tokenizer {

struct SentencePieceModelProto {
  enum class PieceType { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };
  enum class ModelType { Unigram = 1, Bpe = 2, Word = 3, Char = 4 };
  struct Piece {
    std::string piece;
    float score = 0;
    PieceType type = PieceType::Normal;
  };

  std::vector<Piece> pieces;
  // trainer_spec, with the proto's defaults.
  ModelType model_type = ModelType::Unigram;
  bool byte_fallback = false;
  int32_t unk_id = 0;
  // normalizer_spec, with the proto's defaults.
  std::string precompiled_charsmap;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
};

// Reads and checks a .model file; errors name the file, the field and what was expected.
SentencePieceModelProto read_sentencepiece_model(const std::filesystem::path& file);

}  // namespace adapters::tokenizer
