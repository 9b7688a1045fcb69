// Checkpoints: everything a run needs to continue exactly where it stopped.
//
// <run dir>/checkpoints/step_<8 digits>/ holds
//   shard-<r>-of-<t>.safetensors  one per tensor-parallel rank r of t, written by data-parallel rank
//                                 0 of that rank: the fp32 parameter slices ("param/<name>") and the
//                                 optimizer state ("adam_m/<name>", "adam_v/<name>" or
//                                 "momentum/<name>"), metadata giving the layout;
//   trainer.json                  the trainer's progress (step, first loss, time so far);
//   MANIFEST                      written last: each file's size and CRC-32.
// A checkpoint is written under step_<n>.tmp/ and renamed once its MANIFEST is durable (llm.c's
// DONE-file idea), so a directory without ".tmp" and with a MANIFEST whose sizes and checksums
// match is complete. Batches are pure functions of (seed, step) and initialisation of (seed, name),
// so the step is the whole data cursor and there is no other random state to save.
//
// The shards are reassembled into full tensors on load and cut again for the loading job, so a
// checkpoint resumes under any data-parallel and any valid tensor-parallel size.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/optimizer.h"
#include "model/parameter.h"
#include "runtime/communicator.h"

namespace gdn {

// The trainer's progress besides tensors.
struct TrainerState {
  int64_t step = 0;         // optimizer steps completed (0: parameters only, e.g. an import)
  double first_loss = 0;    // the first step's loss (the divergence threshold is relative to it)
  double train_time_s = 0;  // seconds spent in steps so far (throughput figures)
  double last_loss = 0;     // the loss of the last step taken
};

struct CheckpointRef {
  int64_t step = 0;
  std::string path;  // the step_<n> directory
};

// <run_dir>/checkpoints/step_<8 digits>.
std::string CheckpointPath(const std::string& run_dir, int64_t step);
// The checkpoints of a run directory that have a MANIFEST, newest first (checksums not verified).
std::vector<CheckpointRef> ListCheckpoints(const std::string& run_dir);
// Checks every file of a checkpoint against its MANIFEST: a one-line error naming the file.
absl::Status VerifyCheckpoint(const std::string& checkpoint_path);
// The newest checkpoint that verifies (a warning is logged for each one skipped), or
// std::nullopt when there is none. With `step`, only that step's checkpoint (an error if it is
// missing or does not verify).
absl::StatusOr<std::optional<CheckpointRef>> FindCheckpoint(const std::string& run_dir,
                                                            std::optional<int64_t> step = {});

// Where this rank sits, for saving and loading.
struct CheckpointLayout {
  TensorParallel tp;
  int dp_rank = 0;
  Communicator* world = nullptr;  // every rank of the job (null: a single rank)
};

// Collective: every rank calls it. Writes step_<state.step>, then deletes all but the newest
// `keep` complete checkpoints. `optimizer` may be null (parameters only).
absl::Status SaveCheckpoint(const std::string& run_dir, const TrainerState& state,
                            const ParameterSet& params, Optimizer* optimizer,
                            const CheckpointLayout& layout, int keep);

// Deletes <run_dir>/checkpoints (a finished run that keeps none).
absl::Status RemoveCheckpoints(const std::string& run_dir);

// Loads a checkpoint (found by FindCheckpoint) into this rank's slices of `params` and, when the
// checkpoint has optimizer state and `optimizer` is given, into its state. Errors name the file
// and tensor: a parameter missing or of another shape, another optimizer's state.
absl::StatusOr<TrainerState> LoadCheckpoint(const CheckpointRef& checkpoint, ParameterSet& params,
                                            Optimizer* optimizer, const TensorParallel& tp);

// The full (unsharded) float32 parameters of a checkpoint, by name (export).
absl::StatusOr<std::map<std::string, Tensor>> ReadFullParameters(const CheckpointRef& checkpoint);
// Writes a parameters-only, single-shard checkpoint at step 0 from full tensors (import): a run
// directory holding it starts training from these weights with fresh optimizer state.
absl::Status WriteParametersCheckpoint(const std::string& run_dir,
                                       const std::vector<std::pair<std::string, Tensor>>& full);

}  // namespace gdn
