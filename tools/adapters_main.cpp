// The `adapters` command line: one binary, one subcommand per job. Exit codes: 0 ok, 2 usage
// error, 1 failure (with a one-line reason on stderr).
#include <CLI/CLI.hpp>

#include <iostream>

#include "adapters/core/error.h"
#include "commands.h"
#ifdef ADAPTERS_WITH_TOKENIZER
#include "adapters/tokenizer/cli.h"
#endif

int main(int argc, char** argv) {
  CLI::App app{"adapters: parameter-efficient adapters for Transformer models (adapters-cpp)"};
  app.require_subcommand(1);
  app.footer(
      "Examples:\n"
      "  adapters info --model assets/tiny-encoder --adapter-config \"seq_bn[reduction_factor=8]\"\n"
      "  adapters train --model assets/tiny-encoder --adapter-config \"lora[r=8]\" --train train.jsonl --output runs/lora\n"
      "  adapters predict --model assets/tiny-encoder --adapter runs/lora/adapter --text \"free pizza\"\n"
      "  adapters fixtures tests/fixtures/adapterhub --out build/fixtures --only '^bert__'\n"
      "  adapters generate --model assets/tiny-gpt2 --prompt \"the\" --max-new-tokens 20\n"
      "  adapters convert --to peft runs/lora/adapter peft_lora --model assets/tiny-encoder\n"
      "  adapters demo --data build/demo/data --out build/demo");
  adapters::cli::add_fixtures_command(app);
  adapters::cli::add_info_command(app);
  adapters::cli::add_convert_command(app);
  adapters::cli::add_merge_command(app);
#ifdef ADAPTERS_WITH_TRAINING
  adapters::cli::add_training_commands(app);
#endif
#ifdef ADAPTERS_WITH_TOKENIZER
  adapters::tokenizer::add_tokenize_command(app);
  adapters::cli::add_generate_command(app);
#endif
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  } catch (const std::exception& e) {
    std::cerr << "adapters: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
