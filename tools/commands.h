// The subcommands of the `adapters` command line, one function each to register it.
#pragma once

#include <CLI/CLI.hpp>

namespace adapters::cli {

void add_fixtures_command(CLI::App& app);  // adapters fixtures ROOT --out DIR [--only REGEX] [--weights bin|safetensors]
void add_info_command(CLI::App& app);      // adapters info --model DIR [--adapter DIR]... [--adapter-config SPEC]
void add_demo_command(CLI::App& app);      // adapters demo --model DIR --out DIR

}  // namespace adapters::cli
