#include "launcher/slurm.h"

#include <algorithm>
#include <filesystem>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "launcher/process.h"
#include "launcher/sweep.h"
#include "runtime/atomic_file.h"
#include "runtime/run_dir.h"

namespace gdn {
namespace {

// A word for bash, in single quotes.
std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string Absolute(const std::string& path) {
  return std::filesystem::absolute(path).lexically_normal().string();
}

// sbatch --time: [days-]hours or [days-]minutes, then up to two more ":number" parts (M, M:S,
// H:M:S, D-H, D-H:M, D-H:M:S), or no limit.
bool IsSlurmTime(absl::string_view t) {
  if (absl::EqualsIgnoreCase(t, "UNLIMITED") || absl::EqualsIgnoreCase(t, "INFINITE")) return true;
  auto number = [](absl::string_view n) {
    return !n.empty() && std::all_of(n.begin(), n.end(), absl::ascii_isdigit);
  };
  if (const size_t dash = t.find('-'); dash != absl::string_view::npos) {
    if (!number(t.substr(0, dash))) return false;
    t.remove_prefix(dash + 1);
  }
  const std::vector<absl::string_view> parts = absl::StrSplit(t, ':');
  return parts.size() <= 3 && std::all_of(parts.begin(), parts.end(), number);
}

}  // namespace

absl::Status ValidateSlurm(const ExperimentSpec& spec) {
  const SlurmSpec& s = spec.slurm();
  std::vector<std::string> errors;
  if (!IsSlurmTime(s.time()))
    errors.push_back(absl::StrCat("slurm.time: '", s.time(),
                                  "' is not an sbatch time (minutes, MM:SS, HH:MM:SS, D-HH, "
                                  "D-HH:MM or D-HH:MM:SS)"));
  for (const auto& [field, value] :
       {std::pair{"slurm.partition", s.partition()}, {"slurm.account", s.account()},
        {"name", spec.name()}})
    if (std::any_of(value.begin(), value.end(), absl::ascii_isspace))
      errors.push_back(absl::StrCat(field, ": '", absl::CEscape(value),
                                    "' holds whitespace, which the batch script would split"));
  // The #SBATCH --output and --chdir lines carry these paths as they are: sbatch splits a
  // directive at whitespace, stops at an unmatched quote and expands % in file names.
  for (const auto& [what, path] :
       {std::pair{"sweep.dir", Absolute(spec.sweep().dir())},
        {"the working directory", std::filesystem::current_path().string()}})
    if (path.find_first_of(" \t\n'\"%\\") != std::string::npos)
      errors.push_back(absl::StrCat(what, ": '", absl::CEscape(path),
                                    "' holds whitespace, a quote, % or \\, which #SBATCH lines "
                                    "cannot carry"));
  if (errors.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(errors, "; "));
}

std::string ArrayRanges(const std::vector<size_t>& indices) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < indices.size();) {
    size_t j = i;
    while (j + 1 < indices.size() && indices[j + 1] == indices[j] + 1) ++j;
    parts.push_back(j == i ? absl::StrCat(indices[i]) : absl::StrCat(indices[i], "-", indices[j]));
    i = j + 1;
  }
  return absl::StrJoin(parts, ",");
}

std::string SlurmScript(const ExperimentSpec& spec, const std::vector<GridPoint>& points,
                        const std::vector<size_t>& tasks, const std::string& gdn,
                        const std::string& workdir) {
  const SlurmSpec& s = spec.slurm();
  const std::string sweep_dir = Absolute(spec.sweep().dir());
  std::ostringstream os;
  os << "#!/bin/bash\n"
     << "# Written by `gdn sweep slurm`: one array task per grid point of sweep '" << spec.name()
     << "' (" << points.size() << " runs, " << tasks.size() << " to run).\n"
     << "# Submitting it again is safe: a finished run returns at once, an interrupted one resumes.\n";
  os << "#SBATCH --job-name=" << spec.name() << "\n";
  os << "#SBATCH --array=" << ArrayRanges(tasks);
  if (s.max_running() > 0) os << "%" << s.max_running();
  os << "\n#SBATCH --requeue\n"
     << "#SBATCH --signal=B:USR2@" << s.signal_seconds() << "\n"
     << "#SBATCH --open-mode=append\n"
     << "#SBATCH --output=" << sweep_dir << "/slurm/%A_%a.out\n"
     << "#SBATCH --chdir=" << workdir << "\n"
     << "#SBATCH --nodes=" << s.nodes() << "\n"
     << "#SBATCH --ntasks=" << s.ntasks() << "\n";
  if (s.cpus_per_task() > 0) os << "#SBATCH --cpus-per-task=" << s.cpus_per_task() << "\n";
  os << "#SBATCH --time=" << s.time() << "\n";
  if (!s.partition().empty()) os << "#SBATCH --partition=" << s.partition() << "\n";
  if (!s.account().empty()) os << "#SBATCH --account=" << s.account() << "\n";
  for (const std::string& line : s.sbatch()) os << "#SBATCH " << line << "\n";
  os << "set -u\n\n# The run directory of each grid point, by array index.\nruns=(\n";
  for (size_t i = 0; i < points.size(); ++i)
    os << "  " << Quote(points[i].spec.run().dir()) << "  # " << i << "\n";
  os << ")\nrun=${runs[$SLURM_ARRAY_TASK_ID]}\n";
  if (s.cpus_per_task() > 0) os << "export OMP_NUM_THREADS=" << s.cpus_per_task() << "\n";
  os << "echo \"gdn sweep slurm: $run (job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}, "
        "restart ${SLURM_RESTART_COUNT:-0}) on $(hostname) at $(date -u +%FT%TZ)\"\n\n";
  os << "# Slurm signals only this shell (--signal=B:...): pass it on to gdn, which checkpoints at\n"
        "# its next step and exits 4. After SIGUSR2 (time limit near, or an admin's scancel\n"
        "# --signal=USR2) the task requeues itself; after SIGTERM Slurm is ending the job (scancel,\n"
        "# or its own preemption, which requeues by itself), so the task does not.\n"
     << "child=\"\"\nterminated=0\n"
     << "trap 'kill -USR2 $child 2>/dev/null' USR2\n"
     << "trap 'terminated=1; kill -TERM $child 2>/dev/null' TERM\n";
  os << (s.launcher().empty() ? "" : s.launcher() + " ") << Quote(gdn)
     << " train --spec \"$run/point.textproto\" &\n"
     << "child=$!\n"
     << "# wait returns early when a trapped signal arrives; the last wait gives the exit code.\n"
     << "while kill -0 $child 2>/dev/null; do wait $child; done\n"
     << "wait $child\nrc=$?\n"
     << "case $rc in\n"
     << "  0 | 3) exit 0 ;;  # done or diverged: the point has its result\n"
     << "  4)\n"
     << "    if [ $terminated = 0 ]; then\n"
     << "      echo \"gdn sweep slurm: $run checkpointed; requeueing\"\n"
     << "      scontrol requeue \"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}\"\n"
     << "    fi\n"
     << "    exit 0 ;;\n"
     << "  *) exit $rc ;;\n"
     << "esac\n";
  return os.str();
}

absl::StatusOr<SlurmSubmission> PrepareSlurm(const ExperimentSpec& spec,
                                             const std::vector<GridPoint>& points, bool submit) {
  if (auto s = ValidateSlurm(spec); !s.ok()) return s;
  SlurmSubmission out;
  for (size_t i = 0; i < points.size(); ++i) {
    const std::string status = ReadRun(points[i]).status;
    if (status != "done" && status != "diverged") out.tasks.push_back(i);
  }
  if (out.tasks.empty()) return out;
  std::string sbatch;
  if (submit && (sbatch = FindOnPath("sbatch")).empty())
    return absl::FailedPreconditionError("sbatch: not on the PATH (is this a Slurm login node?)");
  for (size_t i : out.tasks) {
    auto dir = RunDirectory::Open(points[i].spec.run().dir());
    if (!dir.ok()) return dir.status();
    if (auto s = dir->WriteFile("point.textproto", SpecToText(points[i].spec)); !s.ok()) return s;
  }
  auto slurm_dir = RunDirectory::Open(spec.sweep().dir() + "/slurm");
  if (!slurm_dir.ok()) return slurm_dir.status();
  const std::string script =
      SlurmScript(spec, points, out.tasks, SelfPath(), std::filesystem::current_path().string());
  out.script_path = slurm_dir->File("sweep.sbatch");
  if (auto s = slurm_dir->WriteFile("sweep.sbatch", script); !s.ok()) return s;
  if (!submit) return out;
  const std::string log = slurm_dir->File("sbatch.log");
  std::error_code ec;
  std::filesystem::remove(log, ec);
  auto code = RunProcess({sbatch, "--parsable", out.script_path}, log);
  auto text = slurm_dir->ReadFile("sbatch.log");
  if (!code.ok()) return code.status();
  const std::string said(absl::StripAsciiWhitespace(text.ok() ? *text : ""));
  if (*code != 0)
    return absl::UnavailableError(absl::StrCat("sbatch ", out.script_path, " failed: ", said));
  // --parsable prints "jobid" or "jobid;cluster" (warnings may come first).
  std::string last = said.substr(said.rfind('\n') == std::string::npos ? 0 : said.rfind('\n') + 1);
  out.job_id = last.substr(0, last.find(';'));
  if (auto s = slurm_dir->AppendLine("jobs", absl::StrCat(out.job_id, " ", ArrayRanges(out.tasks)));
      !s.ok())
    return s;
  return out;
}

}  // namespace gdn
