#include "launcher/process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace gdn {

absl::StatusOr<pid_t> SpawnProcess(const std::vector<std::string>& argv, const std::string& log,
                                   const std::vector<std::string>& env, bool own_process_group) {
  std::vector<std::string> args = argv, vars;
  for (char** e = environ; *e; ++e) {
    const std::string_view var(*e);
    bool replaced = false;
    for (const std::string& v : env)
      replaced |= var.substr(0, var.find('=') + 1) == v.substr(0, v.find('=') + 1);
    if (!replaced) vars.emplace_back(var);
  }
  vars.insert(vars.end(), env.begin(), env.end());
  std::vector<char*> cargs, cvars;
  for (std::string& a : args) cargs.push_back(a.data());
  for (std::string& v : vars) cvars.push_back(v.data());
  cargs.push_back(nullptr);
  cvars.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // Signals this process ignores (a sweep ignores SIGPIPE) start at their defaults in the child.
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  short flags = POSIX_SPAWN_SETSIGDEF;
  if (own_process_group) {
    flags |= POSIX_SPAWN_SETPGROUP;
    posix_spawnattr_setpgroup(&attr, 0);
  }
  posix_spawnattr_setflags(&attr, flags);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, cargs[0], &actions, &attr, cargs.data(), cvars.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return absl::InternalError(absl::StrCat("cannot start ", argv[0], ": ", strerror(rc)));
  return pid;
}

absl::StatusOr<int> RunProcess(const std::vector<std::string>& argv, const std::string& log) {
  auto pid = SpawnProcess(argv, log);
  if (!pid.ok()) return pid.status();
  int status = 0;
  while (waitpid(*pid, &status, 0) < 0)
    if (errno != EINTR) return absl::InternalError(absl::StrCat("waitpid: ", strerror(errno)));
  if (!WIFEXITED(status))
    return absl::InternalError(absl::StrCat(argv[0], " died of signal ", WTERMSIG(status),
                                            " (see ", log, ")"));
  return WEXITSTATUS(status);
}

SignalHandlers::~SignalHandlers() {
  for (auto it = saved_.rbegin(); it != saved_.rend(); ++it)
    sigaction(it->first, &it->second, nullptr);
}

void SignalHandlers::Set(int signal, void (*handler)(int)) {
  struct sigaction action = {}, old = {};
  if (sigaction(signal, nullptr, &old) != 0 || old.sa_handler == SIG_IGN) return;
  action.sa_handler = handler;
  sigemptyset(&action.sa_mask);
  if (sigaction(signal, &action, &old) == 0) saved_.emplace_back(signal, old);
}

std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "/usr/bin:/bin", ':')) {
    const std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

std::string SelfPath() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

}  // namespace gdn
