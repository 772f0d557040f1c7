// The subcommands of the `adapters` command line, one function each to register it.
#pragma once

#include <CLI/CLI.hpp>

namespace adapters::cli {

void add_fixtures_command(CLI::App& app);  // adapters fixtures ROOT --out DIR [--only REGEX] [--weights bin|safetensors]
void add_info_command(CLI::App& app);      // adapters info --model DIR [--adapter DIR]... [--adapter-config SPEC]
// train, eval, predict, pretrain, demo (train_commands.cpp; built with the training library).
void add_training_commands(CLI::App& app);
// adapters generate --model DIR [--adapter DIR]... --prompt TEXT | --jsonl FILE (generate_command.cpp; needs the tokenizer).
void add_generate_command(CLI::App& app);
// adapters convert --to peft|adapterhub IN OUT [--model M]; adapters merge --model M --adapter A --output OUT
// (convert_command.cpp).
void add_convert_command(CLI::App& app);
void add_merge_command(CLI::App& app);

}  // namespace adapters::cli
