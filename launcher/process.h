// Starting other programs (gdn train, mpirun, gnuplot, sbatch) without a shell: argv as given,
// output appended to a log file.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace gdn {

// Starts argv[0] (searched on the PATH) with this process's environment plus `env` ("NAME=value",
// replacing a variable of the same name), stdout and stderr appended to `log`. With
// `own_process_group` a terminal's Ctrl-C or a signal to this process's group does not reach it:
// the caller decides what the child is told.
absl::StatusOr<pid_t> SpawnProcess(const std::vector<std::string>& argv, const std::string& log,
                                   const std::vector<std::string>& env = {},
                                   bool own_process_group = false);
// Spawns and waits: the exit code, or an error when it cannot start or dies of a signal.
absl::StatusOr<int> RunProcess(const std::vector<std::string>& argv, const std::string& log);
// The full path of an executable on the PATH; "" when there is none.
std::string FindOnPath(const std::string& name);
// This executable's path (for starting gdn again).
std::string SelfPath();

// Signal dispositions set for as long as this object lives, restored newest first when it dies
// (so a signal set twice gets its first saved disposition back). A signal the process was started
// ignoring (nohup's SIGHUP, a script's background job's SIGINT) stays ignored.
class SignalHandlers {
 public:
  SignalHandlers() = default;
  SignalHandlers(const SignalHandlers&) = delete;
  SignalHandlers& operator=(const SignalHandlers&) = delete;
  ~SignalHandlers();
  // `handler` may be SIG_IGN.
  void Set(int signal, void (*handler)(int));

 private:
  std::vector<std::pair<int, struct sigaction>> saved_;
};

}  // namespace gdn
