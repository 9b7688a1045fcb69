// The command line of `gdn VERB [SUBVERB] --flag value ...`: each verb declares its flags once,
// and the same declaration parses the arguments and prints `--help`.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace gdn {

// Exit codes shared by every verb.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;   // a run failed while computing
inline constexpr int kExitUsage = 2;     // bad flags, spec or data: nothing was started
inline constexpr int kExitDiverged = 3;  // the run stopped on a non-finite or exploding loss
inline constexpr int kExitPreempted = 4; // a preemption signal: checkpointed, run again to resume

struct Flag {
  std::string name;           // without the dashes
  std::string help;
  std::string default_value;  // "" and not required: optional
  bool required = false;
  bool repeated = false;      // may be given several times (e.g. --set)
  bool boolean = false;       // takes no value
};

struct Command {
  std::string name;     // e.g. "train" or "sweep run"
  std::string summary;  // one line
  std::vector<Flag> flags;
  std::string Usage() const;
};

class ParsedArgs {
 public:
  // Parses argv-style arguments (after the verb) against the command's flags. --help yields
  // help() == true and no error. Errors: "gdn train: unknown flag --foo (see gdn train --help)".
  static absl::StatusOr<ParsedArgs> Parse(const Command& command,
                                          const std::vector<std::string>& args);
  bool help() const { return help_; }
  const std::string& Get(const std::string& name) const;
  const std::vector<std::string>& GetAll(const std::string& name) const;
  bool GetBool(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name) const;

 private:
  bool help_ = false;
  std::map<std::string, std::vector<std::string>> values_;
  std::string command_;
};

}  // namespace gdn
