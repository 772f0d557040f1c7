// Logging behind one header: warnings and info lines go to stderr, filtered by the
// ADAPTERS_LOG environment variable (error, warn (default), info, debug).
#pragma once

#include <string>

namespace adapters::log {

enum class Level { Error = 0, Warn = 1, Info = 2, Debug = 3 };

Level level();
void set_level(Level level);
void write(Level level, const std::string& message);

inline void error(const std::string& m) { write(Level::Error, m); }
inline void warn(const std::string& m) { write(Level::Warn, m); }
inline void info(const std::string& m) { write(Level::Info, m); }
inline void debug(const std::string& m) { write(Level::Debug, m); }

}  // namespace adapters::log
