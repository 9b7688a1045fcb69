#include "model/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "runtime/atomic_file.h"
#include "runtime/run_dir.h"
#include "runtime/safetensors.h"

namespace gdn {

namespace fs = std::filesystem;

namespace {

constexpr char kManifest[] = "MANIFEST";
constexpr char kTrainerFile[] = "trainer.json";
constexpr char kManifestHeader[] = "gdn-checkpoint 1";

std::string CheckpointsDir(const std::string& run_dir) { return run_dir + "/checkpoints"; }
std::string StepName(int64_t step) { return absl::StrFormat("step_%08d", step); }
}  // namespace

std::string CheckpointPath(const std::string& run_dir, int64_t step) {
  return CheckpointsDir(run_dir) + "/" + StepName(step);
}

namespace {
std::string ShardName(int rank, int size) {
  return absl::StrFormat("shard-%d-of-%d.safetensors", rank, size);
}

const char* ShardDimName(ShardDim d) {
  switch (d) {
    case ShardDim::kRows: return "rows";
    case ShardDim::kCols: return "cols";
    case ShardDim::kReplicated: return "replicated";
  }
  return "?";
}

// Size and CRC-32 of a file as it is on disk (read back, so the manifest vouches for what a
// later reader will see).
struct FileSum {
  int64_t size = 0;
  uint32_t crc = 0;
};

absl::StatusOr<FileSum> SumFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  FileSum sum;
  uLong crc = crc32(0L, Z_NULL, 0);
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), buf.size());
    const std::streamsize n = in.gcount();
    if (n <= 0) break;
    crc = crc32(crc, reinterpret_cast<const Bytef*>(buf.data()), static_cast<uInt>(n));
    sum.size += n;
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  sum.crc = static_cast<uint32_t>(crc);
  return sum;
}

absl::Status SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat(dir, ": cannot open to sync"));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return absl::ErrnoToStatus(errno, absl::StrCat(dir, ": fsync failed"));
  return absl::OkStatus();
}

struct ManifestEntry {
  std::string file;
  FileSum sum;
};

// The manifest: a header line, the step, then "file NAME SIZE CRC32HEX" per file.
absl::StatusOr<std::vector<ManifestEntry>> ReadManifest(const std::string& checkpoint) {
  const std::string path = checkpoint + "/" + kManifest;
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": missing (incomplete checkpoint)"));
  std::string line;
  if (!std::getline(in, line) || line != kManifestHeader)
    return absl::DataLossError(absl::StrCat(path, ": not a gdn checkpoint manifest"));
  std::vector<ManifestEntry> entries;
  while (std::getline(in, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.size() == 2 && f[0] == "step") continue;
    ManifestEntry e;
    if (f.size() != 4 || f[0] != "file" || !absl::SimpleAtoi(f[2], &e.sum.size) ||
        !absl::SimpleHexAtoi(f[3], &e.sum.crc) || f[1].find('/') != std::string::npos)
      return absl::DataLossError(absl::StrCat(path, ": malformed line '", line, "'"));
    e.file = f[1];
    entries.push_back(std::move(e));
  }
  if (entries.empty()) return absl::DataLossError(absl::StrCat(path, ": lists no files"));
  return entries;
}

// Writes trainer.json and the manifest into `tmp` (whose shard files are already durable), then
// renames it to `final_dir`: the rename is what makes the checkpoint exist.
absl::Status Publish(const std::string& tmp, const std::string& final_dir, const TrainerState& state,
                     const std::string& optimizer, std::vector<ManifestEntry> shards) {
  JsonLine trainer;
  trainer.Add("step", state.step).Add("first_loss", state.first_loss);
  trainer.Add("train_time_s", state.train_time_s).Add("last_loss", state.last_loss);
  trainer.Add("optimizer", optimizer);
  const std::string json = trainer.str() + "\n";
  const std::string trainer_path = tmp + "/" + kTrainerFile;
  if (auto s = WriteFileAtomically(trainer_path, {{json.data(), json.size()}}); !s.ok()) return s;
  auto sum = SumFile(trainer_path);
  if (!sum.ok()) return sum.status();
  shards.push_back({kTrainerFile, *sum});

  std::string manifest = absl::StrCat(kManifestHeader, "\nstep ", state.step, "\n");
  for (const ManifestEntry& e : shards)
    absl::StrAppendFormat(&manifest, "file %s %d %08x\n", e.file, e.sum.size, e.sum.crc);
  if (auto s = WriteFileAtomically(tmp + "/" + kManifest, {{manifest.data(), manifest.size()}});
      !s.ok())
    return s;
  if (auto s = SyncDirectory(tmp); !s.ok()) return s;

  std::error_code ec;
  if (fs::exists(final_dir)) fs::remove_all(final_dir, ec);  // a stale copy of the same step
  fs::rename(tmp, final_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(final_dir, ": cannot rename into place: ", ec.message()));
  return SyncDirectory(fs::path(final_dir).parent_path().string());
}

// Deletes all but the newest `keep` complete checkpoints and every unfinished .tmp directory but
// `current_tmp`'s (left by a crash).
void Prune(const std::string& run_dir, int keep) {
  std::error_code ec;
  const auto complete = ListCheckpoints(run_dir);
  for (size_t i = std::max(keep, 1); i < complete.size(); ++i) fs::remove_all(complete[i].path, ec);
  for (const auto& entry : fs::directory_iterator(CheckpointsDir(run_dir), ec))
    if (entry.path().extension() == ".tmp") fs::remove_all(entry.path(), ec);
}

// Test hook (tests/resume_test.sh): GDN_TEST_KILL_IN_CHECKPOINT=<step> kills the process with
// SIGKILL after the shard files of that step are written and before its manifest: the state a
// crash or `kill -9` in the middle of a checkpoint leaves behind.
void MaybeKillInCheckpoint(int64_t step) {
  const char* env = std::getenv("GDN_TEST_KILL_IN_CHECKPOINT");
  int64_t at = 0;
  if (env != nullptr && absl::SimpleAtoi(env, &at) && at == step) std::raise(SIGKILL);
}

// One file's tensors: the parameters ("param/NAME") and optimizer state ("<state>/NAME"), with
// each parameter's shard dimension in the metadata ("shard/NAME").
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

std::vector<std::string> StateNames(const std::string& optimizer) {
  if (optimizer == "adamw") return {"adam_m", "adam_v"};
  if (optimizer == "sgd") return {"momentum"};
  return {};
}

std::string OptimizerName(const Optimizer* optimizer) {
  if (optimizer == nullptr) return "none";
  return optimizer->per_param() == 2 ? "adamw" : "sgd";
}

// The shard files of a checkpoint reassembled into full tensors, by their stored name.
struct FullTensors {
  std::map<std::string, Tensor> tensors;
  std::string optimizer;
  TrainerState state;
};

absl::StatusOr<TrainerState> ReadTrainerState(const std::string& checkpoint, std::string* optimizer) {
  const std::string path = checkpoint + "/" + kTrainerFile;
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string json = ss.str();
  TrainerState state;
  auto step = JsonNumber(json, "step");
  auto first = JsonNumber(json, "first_loss");
  auto time = JsonNumber(json, "train_time_s");
  auto last = JsonNumber(json, "last_loss");
  if (!in || !step.ok() || !first.ok() || !time.ok() || !last.ok())
    return absl::DataLossError(absl::StrCat(path, ": unreadable trainer state"));
  state.step = static_cast<int64_t>(*step);
  state.first_loss = *first;
  state.train_time_s = *time;
  state.last_loss = *last;
  for (const char* name : {"adamw", "sgd", "none"})
    if (json.find(absl::StrCat("\"optimizer\":\"", name, "\"")) != std::string::npos) *optimizer = name;
  if (optimizer->empty()) return absl::DataLossError(absl::StrCat(path, ": no optimizer kind"));
  return state;
}

absl::StatusOr<FullTensors> ReadFull(const CheckpointRef& checkpoint) {
  FullTensors out;
  auto state = ReadTrainerState(checkpoint.path, &out.optimizer);
  if (!state.ok()) return state.status();
  out.state = *state;
  auto manifest = ReadManifest(checkpoint.path);
  if (!manifest.ok()) return manifest.status();
  std::vector<std::string> shard_files;
  for (const ManifestEntry& e : *manifest)
    if (e.file != kTrainerFile) shard_files.push_back(e.file);
  const int tp_size = static_cast<int>(shard_files.size());
  std::vector<SafetensorsFile> shards;
  for (int r = 0; r < tp_size; ++r) {
    const std::string name = ShardName(r, tp_size);
    if (std::find(shard_files.begin(), shard_files.end(), name) == shard_files.end())
      return absl::DataLossError(absl::StrCat(checkpoint.path, ": manifest lacks ", name));
    auto file = ReadSafetensors(checkpoint.path + "/" + name);
    if (!file.ok()) return file.status();
    shards.push_back(std::move(*file));
  }
  // Every tensor is "<kind>/<parameter>"; its parameter's shard dimension says how to join.
  for (const auto& [name, first] : shards[0].tensors) {
    const std::string param = name.substr(name.find('/') + 1);
    auto it = shards[0].metadata.find("shard/" + param);
    if (it == shards[0].metadata.end())
      return absl::DataLossError(absl::StrCat(checkpoint.path, ": no shard dimension for ", param));
    const std::string& dim = it->second;
    if (tp_size == 1 || dim == "replicated") {
      out.tensors[name] = first;
      continue;
    }
    const int axis = dim == "rows" ? 0 : 1;
    if (dim != "rows" && dim != "cols")
      return absl::DataLossError(absl::StrCat(checkpoint.path, ": bad shard dimension '", dim, "'"));
    std::vector<const Tensor*> pieces;
    for (int r = 0; r < tp_size; ++r) {
      const Tensor* t = shards[r].Find(name);
      if (t == nullptr || t->shape() != first.shape() || t->dtype() != first.dtype())
        return absl::DataLossError(absl::StrCat(checkpoint.path, "/", ShardName(r, tp_size),
                                                ": tensor ", name, " missing or unlike shard 0's"));
      pieces.push_back(t);
    }
    Shape full_shape = first.shape();
    if (static_cast<int>(full_shape.size()) <= axis)
      return absl::DataLossError(absl::StrCat(checkpoint.path, ": ", name, " has no dimension ", axis));
    full_shape[axis] *= tp_size;
    Tensor full = Tensor::Empty(full_shape, first.dtype());
    const int64_t rows = first.dim(0), cols = first.numel() / std::max<int64_t>(rows, 1);
    const size_t es = DTypeSize(first.dtype());
    char* dst = static_cast<char*>(full.raw());
    for (int r = 0; r < tp_size; ++r) {
      const char* src = static_cast<const char*>(pieces[r]->raw());
      if (axis == 0) {
        std::memcpy(dst + r * first.nbytes(), src, first.nbytes());
      } else {
        for (int64_t i = 0; i < rows; ++i)
          std::memcpy(dst + (i * cols * tp_size + r * cols) * es, src + i * cols * es, cols * es);
      }
    }
    out.tensors[name] = full;
  }
  return out;
}

}  // namespace

std::vector<CheckpointRef> ListCheckpoints(const std::string& run_dir) {
  std::vector<CheckpointRef> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(CheckpointsDir(run_dir), ec)) {
    const std::string name = entry.path().filename().string();
    int64_t step = 0;
    if (name.rfind("step_", 0) != 0 || !absl::SimpleAtoi(name.substr(5), &step)) continue;
    if (!fs::exists(entry.path() / kManifest)) continue;
    out.push_back({step, entry.path().string()});
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.step > b.step; });
  return out;
}

absl::Status RemoveCheckpoints(const std::string& run_dir) {
  std::error_code ec;
  fs::remove_all(CheckpointsDir(run_dir), ec);
  if (ec)
    return absl::InternalError(absl::StrCat(CheckpointsDir(run_dir), ": cannot remove: ", ec.message()));
  return absl::OkStatus();
}

absl::Status VerifyCheckpoint(const std::string& checkpoint_path) {
  auto manifest = ReadManifest(checkpoint_path);
  if (!manifest.ok()) return manifest.status();
  for (const ManifestEntry& e : *manifest) {
    const std::string path = checkpoint_path + "/" + e.file;
    auto sum = SumFile(path);
    if (!sum.ok()) return sum.status();
    if (sum->size != e.sum.size)
      return absl::DataLossError(absl::StrFormat("%s: %d bytes, the manifest says %d (truncated?)",
                                                 path, sum->size, e.sum.size));
    if (sum->crc != e.sum.crc)
      return absl::DataLossError(absl::StrFormat("%s: CRC-32 %08x, the manifest says %08x (corrupted)",
                                                 path, sum->crc, e.sum.crc));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<CheckpointRef>> FindCheckpoint(const std::string& run_dir,
                                                            std::optional<int64_t> step) {
  for (const CheckpointRef& c : ListCheckpoints(run_dir)) {
    if (step.has_value() && c.step != *step) continue;
    absl::Status s = VerifyCheckpoint(c.path);
    if (s.ok()) return std::optional<CheckpointRef>(c);
    if (step.has_value()) return s;
    LOG(WARNING) << "skipping checkpoint " << c.path << ": " << s.message();
  }
  if (step.has_value())
    return absl::NotFoundError(absl::StrFormat("%s: no complete checkpoint of step %d",
                                               CheckpointsDir(run_dir), *step));
  return std::optional<CheckpointRef>();
}

absl::Status SaveCheckpoint(const std::string& run_dir, const TrainerState& state,
                            const ParameterSet& params, Optimizer* optimizer,
                            const CheckpointLayout& layout, int keep) {
  const bool lead = layout.world == nullptr || layout.world->rank() == 0;
  const std::string final_dir = CheckpointPath(run_dir, state.step);
  const std::string tmp = final_dir + ".tmp";
  // Every rank learns each stage's outcome, so all succeed or fail together.
  auto agree = [&](absl::Status s) -> absl::Status {
    Tensor failed = Tensor::Empty({1}, DType::kI32);
    failed.set(0, s.ok() ? 0 : 1);
    if (layout.world != nullptr) layout.world->AllReduceMax(failed);
    if (!s.ok()) return s;
    if (failed.at(0) != 0)
      return absl::InternalError(absl::StrCat(final_dir, ": another rank failed to write its shard"));
    return absl::OkStatus();
  };

  absl::Status made;
  if (lead) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    fs::create_directories(tmp, ec);
    if (ec) made = absl::PermissionDeniedError(absl::StrCat(tmp, ": cannot create: ", ec.message()));
  }
  if (auto s = agree(made); !s.ok()) return s;

  // Data-parallel rank 0 of each tensor-parallel rank writes that rank's slices. Sharded (ZeRO-1)
  // optimizer state is gathered first, by every rank: checkpoints do not depend on the sharding.
  const bool writer = layout.dp_rank == 0;
  const std::string optimizer_name = OptimizerName(optimizer);
  const std::vector<Tensor> optimizer_state =
      optimizer != nullptr ? optimizer->FullState() : std::vector<Tensor>{};
  FileSum sum;
  absl::Status written;
  if (writer) {
    NamedTensors tensors;
    std::map<std::string, std::string> metadata = {
        {"format", "gdn checkpoint shard"},
        {"tp_rank", absl::StrCat(layout.tp.rank)},
        {"tp_size", absl::StrCat(layout.tp.size)},
        {"step", absl::StrCat(state.step)},
        {"optimizer", optimizer_name}};
    const auto& all = params.all();
    const std::vector<std::string> state_names = StateNames(optimizer_name);
    for (size_t i = 0; i < all.size(); ++i) {
      // Device tensors are written from host copies.
      tensors.emplace_back("param/" + all[i]->name, all[i]->value.To(Device::kCPU));
      metadata["shard/" + all[i]->name] = ShardDimName(all[i]->shard);
      for (size_t k = 0; k < state_names.size(); ++k)
        tensors.emplace_back(state_names[k] + "/" + all[i]->name,
                             optimizer_state[state_names.size() * i + k].To(Device::kCPU));
    }
    const std::string path = tmp + "/" + ShardName(layout.tp.rank, layout.tp.size);
    written = WriteSafetensors(path, tensors, metadata);
    if (written.ok()) {
      auto s = SumFile(path);
      if (s.ok()) sum = *s;
      else written = s.status();
    }
  }
  if (auto s = agree(written); !s.ok()) return s;

  // The lead collects each shard's size and checksum: row r = (is writer, tp rank, size, crc).
  const int world_size = layout.world == nullptr ? 1 : layout.world->size();
  Tensor mine = Tensor::Empty({1, 4}, DType::kF64), rows = Tensor::Empty({world_size, 4}, DType::kF64);
  mine.set(0, writer ? 1 : 0);
  mine.set(1, layout.tp.rank);
  mine.set(2, static_cast<double>(sum.size));
  mine.set(3, sum.crc);
  if (layout.world != nullptr) layout.world->AllGather(mine, rows);
  else rows.CopyFrom(mine);

  absl::Status published;
  if (lead) {
    MaybeKillInCheckpoint(state.step);
    std::vector<ManifestEntry> shards;
    for (int r = 0; r < world_size; ++r) {
      if (rows.at(4 * r) == 0) continue;
      const int tp_rank = static_cast<int>(rows.at(4 * r + 1));
      shards.push_back({ShardName(tp_rank, layout.tp.size),
                        {static_cast<int64_t>(rows.at(4 * r + 2)),
                         static_cast<uint32_t>(rows.at(4 * r + 3))}});
    }
    published = Publish(tmp, final_dir, state, optimizer_name, std::move(shards));
    if (published.ok()) Prune(run_dir, keep);
  }
  return agree(published);
}

absl::StatusOr<TrainerState> LoadCheckpoint(const CheckpointRef& checkpoint, ParameterSet& params,
                                            Optimizer* optimizer, const TensorParallel& tp) {
  auto full = ReadFull(checkpoint);
  if (!full.ok()) return full.status();
  const std::string want_optimizer = OptimizerName(optimizer);
  // A parameters-only checkpoint (an import) leaves the optimizer state at zero; state of another
  // optimizer cannot be used.
  const bool load_state = optimizer != nullptr && full->optimizer != "none";
  if (load_state && full->optimizer != want_optimizer)
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: holds %s optimizer state, but optimizer.kind is %s", checkpoint.path, full->optimizer,
        want_optimizer));
  const std::vector<std::string> state_names = load_state ? StateNames(want_optimizer)
                                                          : std::vector<std::string>{};
  const auto& all = params.all();
  // The optimizer state is read into full per-parameter tensors, then handed over (a sharded
  // optimizer keeps its own pieces).
  std::vector<Tensor> state;
  for (size_t i = 0; i < all.size(); ++i)
    for (size_t k = 0; k < state_names.size(); ++k)
      state.push_back(Tensor::Zeros(all[i]->value.shape(), all[i]->value.dtype(),
                                    all[i]->value.device()));
  for (size_t i = 0; i < all.size(); ++i) {
    const Parameter& p = *all[i];
    std::vector<std::pair<std::string, Tensor>> targets = {{"param/" + p.name, p.value}};
    for (size_t k = 0; k < state_names.size(); ++k)
      targets.emplace_back(state_names[k] + "/" + p.name, state[state_names.size() * i + k]);
    for (const auto& [name, local] : targets) {
      auto it = full->tensors.find(name);
      if (it == full->tensors.end())
        return absl::InvalidArgumentError(
            absl::StrCat(checkpoint.path, ": no tensor ", name, " (a checkpoint of another model?)"));
      if (it->second.shape() != p.global_shape)
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s: %s is %s, the model's is %s (a checkpoint of another model?)", checkpoint.path, name,
            ShapeString(it->second.shape()), ShapeString(p.global_shape)));
      p.CopySlice(it->second, tp, local);
    }
  }
  if (load_state) optimizer->SetFullState(state);
  return full->state;
}

absl::StatusOr<std::map<std::string, Tensor>> ReadFullParameters(const CheckpointRef& checkpoint) {
  auto full = ReadFull(checkpoint);
  if (!full.ok()) return full.status();
  std::map<std::string, Tensor> params;
  for (auto& [name, t] : full->tensors)
    if (name.rfind("param/", 0) == 0) params[name.substr(6)] = t.To(DType::kF32);
  return params;
}

absl::Status WriteParametersCheckpoint(const std::string& run_dir,
                                       const std::vector<std::pair<std::string, Tensor>>& full) {
  const std::string final_dir = CheckpointPath(run_dir, 0);
  const std::string tmp = final_dir + ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(tmp, ": cannot create: ", ec.message()));
  NamedTensors tensors;
  std::map<std::string, std::string> metadata = {{"format", "gdn checkpoint shard"},
                                                 {"tp_rank", "0"}, {"tp_size", "1"},
                                                 {"step", "0"}, {"optimizer", "none"}};
  for (const auto& [name, t] : full) {
    tensors.emplace_back("param/" + name, t.To(Device::kCPU));
    metadata["shard/" + name] = "replicated";
  }
  const std::string shard = ShardName(0, 1);
  if (auto s = WriteSafetensors(tmp + "/" + shard, tensors, metadata); !s.ok()) return s;
  auto sum = SumFile(tmp + "/" + shard);
  if (!sum.ok()) return sum.status();
  return Publish(tmp, final_dir, TrainerState{}, "none", {{shard, *sum}});
}

}  // namespace gdn
