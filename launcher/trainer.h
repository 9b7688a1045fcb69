// `gdn train`: one run, from a resolved spec to a finished run directory.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/gradient_reducer.h"
#include "model/lm.h"
#include "model/optimizer.h"
#include "proto/gdn.pb.h"
#include "runtime/data_loader.h"
#include "runtime/mpi_communicator.h"

namespace gdn {

// Loads a spec file, applies the --set overrides in order, fills every default and validates
// it all (fields, model sizes, data paths unless check_data_paths is false), so nothing starts
// on a bad spec.
absl::StatusOr<ExperimentSpec> ResolveSpec(const std::string& path,
                                           const std::vector<std::string>& overrides,
                                           bool check_data_paths = true);
// The checks every run needs before computing: ValidateSpec and the model's sizes.
absl::Status ValidateRunnable(const ExperimentSpec& spec, bool check_data_paths = true);
// The checks that need the job's layout: ranks divisible by parallel.tensor_parallel (the grid
// exists only if so), the batch divisible by the data-parallel size and micro-batches.
absl::Status ValidateLayout(const ExperimentSpec& spec, const ProcessGrid& grid);
// Refuses, before anything is allocated, a run whose rank would hold more than the memory of the
// machine (device kCPU) or of its GPU (kCUDA) in its parameters, their gradients and optimizer
// state and one micro-batch's residual stream at each layer: a lower bound on what a rank holds.
absl::Status CheckMemoryNeed(const ExperimentSpec& spec, const ProcessGrid& grid, Device device);
// Opens the token file or glob `path` given by `field` ("data.train_path", "--data"): every
// problem, a token outside the vocabulary included, is an InvalidArgument naming the field.
absl::StatusOr<TokenDataset> OpenTokens(const std::string& field, const std::string& path,
                                        int vocab_size);

struct TrainOptions {
  bool quiet = false;    // no progress lines (sweeps print their own)
  bool restart = false;  // start over in a run directory that holds an unfinished run
  // Signals taken as preemption besides run.preempt_signals, e.g. "INT,HUP" for the runs of an
  // in-process sweep, which Ctrl-C or a closed terminal must checkpoint rather than kill.
  std::string also_preempt_on;
};

struct TrainResult {
  std::string status;  // "done" or "diverged"
  int64_t steps = 0;   // optimizer steps taken
  double train_loss = 0, val_loss = 0;
  double tokens_per_s = 0, elapsed_s = 0;
  // A preemption signal came after the last step's check (during it, the final evaluation or the
  // summary): the run is over, but a sweep must start no other (every rank agrees).
  bool stop_requested = false;
};

// Trains the run described by `spec` (resolved and validated) in spec.run().dir() on the ranks
// of `grid` (every rank calls it; all return the same result): rank 0 writes spec.textproto,
// status, metrics.jsonl and summary.json there and prints progress. Bad data or layout (missing,
// corrupt, tokens outside the vocabulary, batch not divisible) is an InvalidArgument error on every
// rank, returned before anything is computed or written.
absl::StatusOr<TrainResult> Train(const ExperimentSpec& spec, const ProcessGrid& grid,
                                  const TrainOptions& options);

// One optimizer step of one rank (the trainer's and the benchmark's): forward and backward over
// `tokens`, this rank's rows of the global batch, in micro-batches of `micro` rows (the last one
// reporting to `reducer`, so the data-parallel reduction overlaps its backward); the reduction;
// the global gradient norm and clipping; the update with base learning rate `lr` (`step` counts
// from 1); under ZeRO-1 the values' all-gather. Returns the global batch's mean loss and the norm
// before clipping.
struct StepResult {
  double loss = 0, grad_norm = 0;
};
StepResult TrainStep(LanguageModel& model, GradientReducer& reducer, Optimizer& optimizer,
                     const Tensor& tokens, int micro, int global_batch, double grad_clip,
                     double lr, int64_t step, Communicator& dp);
// The reducer a run's spec asks for (parallel.bucket_mb, parallel.zero_stage) on `grid`.
GradientReducer::Options ReducerOptions(const ExperimentSpec& spec);

}  // namespace gdn
