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
      "  adapters info --model assets/tiny-bert --adapter-config \"seq_bn[reduction_factor=8]\"\n"
      "  adapters fixtures tests/fixtures/adapterhub --out build/fixtures --only '^bert__'\n"
      "  adapters demo --model assets/tiny-bert --out build/demo");
  adapters::cli::add_fixtures_command(app);
  adapters::cli::add_info_command(app);
  adapters::cli::add_demo_command(app);
#ifdef ADAPTERS_WITH_TOKENIZER
  adapters::tokenizer::add_tokenize_command(app);
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
