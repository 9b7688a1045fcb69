#include "runtime/spec.h"

#include <glob.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <utility>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include "absl/strings/ascii.h"
#include "runtime/rng.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace gdn {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;
using google::protobuf::TextFormat;

// Keeps the first parser error (later ones usually follow from it); line/column are 0-based.
class FirstErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (!has_error) absl::StrAppendFormat(&error, "%d:%d: %s", line + 1, column + 1, message);
    has_error = true;
  }
  bool has_error = false;
  std::string error;
};

// Shortest %g form that parses back to the same double.
std::string ShortestDouble(double v) {
  for (int p = 1; p < 17; ++p) {
    std::string s = absl::StrFormat("%.*g", p, v);
    if (std::strtod(s.c_str(), nullptr) == v) return s;
  }
  return absl::StrFormat("%.17g", v);
}

// Shortest %e form that round-trips ("1e-03"): learning rates in run ids.
std::string SciDouble(double v) {
  for (int p = 0; p < 16; ++p) {
    std::string s = absl::StrFormat("%.*e", p, v);
    if (std::strtod(s.c_str(), nullptr) == v) return s;
  }
  return absl::StrFormat("%.16e", v);
}

std::string EnumNames(const EnumDescriptor* e) {
  std::vector<std::string> names;
  for (int i = 0; i < e->value_count(); ++i) names.push_back(e->value(i)->name());
  return absl::StrJoin(names, ", ");
}

// Resolves "a.b.c" against a message type: every step but the last must be a singular message.
absl::StatusOr<std::vector<const FieldDescriptor*>> ResolvePath(const Descriptor* type,
                                                               absl::string_view path) {
  if (path.empty()) return absl::InvalidArgumentError("empty field path");
  std::vector<const FieldDescriptor*> fields;
  for (absl::string_view name : absl::StrSplit(path, '.')) {
    if (!fields.empty()) {
      const FieldDescriptor* prev = fields.back();
      if (prev->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE)
        return absl::InvalidArgumentError(
            absl::StrCat("'", prev->name(), "' in ", prev->containing_type()->full_name(),
                         " is not a message"));
      if (prev->is_repeated())
        return absl::InvalidArgumentError(
            absl::StrCat("'", prev->name(), "' in ", prev->containing_type()->full_name(),
                         " is a repeated message; its elements cannot be set by path"));
      type = prev->message_type();
    }
    const FieldDescriptor* f = type->FindFieldByName(std::string(name));
    if (f == nullptr)
      return absl::InvalidArgumentError(
          absl::StrCat("no field '", name, "' in ", type->full_name()));
    fields.push_back(f);
  }
  return fields;
}

// Sets (singular) or appends (repeated) one value of a scalar field.
absl::Status ParseOneValue(Message* m, const FieldDescriptor* f, absl::string_view value) {
  const Reflection* r = m->GetReflection();
  if (f->cpp_type() == FieldDescriptor::CPPTYPE_STRING) {  // verbatim, no quoting needed
    if (f->is_repeated()) r->AddString(m, f, std::string(value));
    else r->SetString(m, f, std::string(value));
    return absl::OkStatus();
  }
  // Text format's own value parser, so --set accepts exactly what a spec file accepts.
  FirstErrorCollector silent;  // our message below is clearer than the tokenizer's
  TextFormat::Parser parser;
  parser.RecordErrorsTo(&silent);
  std::string v(absl::StripAsciiWhitespace(value));
  if (!v.empty() && parser.ParseFieldValueFromString(v, f, m)) return absl::OkStatus();
  if (f->cpp_type() == FieldDescriptor::CPPTYPE_ENUM)
    return absl::InvalidArgumentError(absl::StrCat("not a valid ", f->enum_type()->full_name(),
                                                   " (one of ", EnumNames(f->enum_type()), ")"));
  return absl::InvalidArgumentError(absl::StrCat("not a valid ", f->type_name()));
}

// ApplyOverride without the "--set ..." prefix on errors.
absl::Status ApplyPath(Message* root, absl::string_view path, absl::string_view value) {
  auto fields = ResolvePath(root->GetDescriptor(), path);
  if (!fields.ok()) return fields.status();
  Message* m = root;
  for (size_t i = 0; i + 1 < fields->size(); ++i)
    m = m->GetReflection()->MutableMessage(m, (*fields)[i]);
  const FieldDescriptor* f = fields->back();
  if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE)
    return absl::InvalidArgumentError(
        f->is_repeated() ? absl::StrCat("'", f->name(), "' is a repeated message; set it in the spec file")
                         : absl::StrCat("'", f->name(), "' is a message; set one of its fields"));
  if (!f->is_repeated()) return ParseOneValue(m, f, value);
  m->GetReflection()->ClearField(m, f);  // a list replaces, never appends
  if (value.empty()) return absl::OkStatus();
  for (absl::string_view item : absl::StrSplit(value, ',')) {
    absl::Status s = ParseOneValue(m, f, item);
    if (!s.ok())
      return absl::InvalidArgumentError(absl::StrCat("item '", item, "': ", s.message()));
  }
  return absl::OkStatus();
}

// Collects every validation problem as "field.path: why".
class Checker {
 public:
  template <typename T>
  void Positive(absl::string_view name, T v) {
    if (!(v > 0) || !Finite(v)) Add(name, "must be > 0", v);
  }
  template <typename T>
  void NonNegative(absl::string_view name, T v) {
    if (!(v >= 0) || !Finite(v)) Add(name, "must be >= 0", v);
  }
  void AtLeast(absl::string_view name, int64_t v, int64_t lo) {
    if (v < lo) Add(name, absl::StrCat("must be >= ", lo), v);
  }
  // [lo, hi) or [lo, hi].
  void InRange(absl::string_view name, double v, double lo, double hi, bool hi_closed) {
    bool ok = v >= lo && (hi_closed ? v <= hi : v < hi);
    if (!ok)
      Add(name, absl::StrCat("must be in [", ShortestDouble(lo), ", ", ShortestDouble(hi),
                             hi_closed ? "]" : ")"),
          v);
  }
  void Error(absl::string_view name, absl::string_view why) {
    errors_.push_back(absl::StrCat(name, ": ", why));
  }
  void Error(absl::Status status) { errors_.push_back(std::string(status.message())); }
  absl::Status status() const {
    if (errors_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrJoin(errors_, "; "));
  }

 private:
  static bool Finite(double v) { return std::isfinite(v); }
  static bool Finite(int64_t) { return true; }
  static std::string Num(double v) { return ShortestDouble(v); }
  static std::string Num(int64_t v) { return absl::StrCat(v); }
  template <typename T>
  void Add(absl::string_view name, absl::string_view rule, T v) {
    errors_.push_back(absl::StrCat(name, ": ", rule, ", got ", Num(v)));
  }
  std::vector<std::string> errors_;
};

// "" when path names a readable file, or a glob matching only readable files (at least one).
std::string DataPathProblem(const std::string& path) {
  constexpr char kHint[] = " (run `gdn data prepare` first)";
  if (path.empty()) return "empty";
  std::vector<std::string> files;
  if (path.find_first_of("*?[") != std::string::npos) {
    glob_t g;
    int rc = glob(path.c_str(), 0, nullptr, &g);
    if (rc == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i) files.push_back(g.gl_pathv[i]);
    globfree(&g);
    if (files.empty()) return absl::StrCat(path, ": no file matches", kHint);
  } else {
    files.push_back(path);
  }
  for (const std::string& file : files) {
    struct stat st;
    if (stat(file.c_str(), &st) != 0)
      return errno == ENOENT ? absl::StrCat(file, ": no such file", kHint)
                             : absl::StrCat(file, ": ", std::strerror(errno));
    if (!S_ISREG(st.st_mode)) return absl::StrCat(file, ": not a regular file");
    if (access(file.c_str(), R_OK) != 0) return absl::StrCat(file, ": not readable");
  }
  return "";
}

// Checks that a sweep axis names a settable field and that each value parses.
absl::Status CheckAxis(const ExperimentSpec& base, const SweepSpec::Axis& axis, int index) {
  std::string name = absl::StrCat("sweep.axes[", index, "]");
  if (axis.field().empty()) return absl::InvalidArgumentError(name + ".field: empty");
  if (axis.values().empty())
    return absl::InvalidArgumentError(absl::StrCat(name, " (", axis.field(), "): no values"));
  for (const std::string& value : axis.values()) {
    ExperimentSpec scratch = base;
    absl::Status s = ApplyPath(&scratch, axis.field(), value);
    if (!s.ok())
      return absl::InvalidArgumentError(
          absl::StrCat(name, " (", axis.field(), "=", value, "): ", s.message()));
  }
  return absl::OkStatus();
}

// Filesystem-safe: anything outside [A-Za-z0-9.+-] becomes '-' ('_' separates assignments).
std::string Sanitize(std::string s) {
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '+' && c != '-') c = '-';
  return s;
}

// "model.width=128" -> "w128", "optimizer.kind=ADAMW" -> "adamw", "model.depth=4" -> "depth4".
std::string ShortName(absl::string_view assignment) {
  std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(assignment, absl::MaxSplits('=', 1));
  auto [path, value] = kv;
  auto fields = ResolvePath(ExperimentSpec::descriptor(), path);
  const FieldDescriptor* f = fields.ok() ? fields->back() : nullptr;

  std::string v(value);
  if (f != nullptr && f->cpp_type() == FieldDescriptor::CPPTYPE_DOUBLE) {
    double d = std::strtod(v.c_str(), nullptr);
    v = path == "optimizer.lr" ? SciDouble(d) : ShortestDouble(d);
  } else if (f != nullptr && f->cpp_type() == FieldDescriptor::CPPTYPE_ENUM) {
    v = absl::AsciiStrToLower(v);
  }
  std::string prefix;
  if (path == "model.width") prefix = "w";
  else if (path == "optimizer.lr") prefix = "lr";
  else if (path == "run.seed") prefix = "s";
  else if (path == "parametrization.kind" || path == "optimizer.kind") prefix = "";
  else prefix = std::string(path.substr(path.rfind('.') + 1));  // the leaf name
  // "depth4" reads fine; "tie_embeddingstrue" does not.
  if (!prefix.empty() && !v.empty() && std::isalpha(static_cast<unsigned char>(v[0])))
    prefix += "-";
  return Sanitize(prefix + v);
}

}  // namespace

absl::StatusOr<ExperimentSpec> ParseSpecText(const std::string& text,
                                             const std::string& source_name) {
  ExperimentSpec spec;
  FirstErrorCollector errors;
  TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &spec) || errors.has_error)
    return absl::InvalidArgumentError(absl::StrCat(source_name, ":", errors.error));
  return spec;
}

absl::StatusOr<ExperimentSpec> LoadSpec(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("spec file: the path is empty");
  struct stat st;
  if (stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    return absl::InvalidArgumentError(absl::StrCat(path, ": is a directory, not a spec file"));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot read: ", std::strerror(errno)));
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": cannot read: read error"));
  return ParseSpecText(buffer.str(), path);
}

absl::Status ApplyOverride(ExperimentSpec* spec, std::string_view assignment_in) {
  // Debian's abseil has its own string_view type, not std::string_view.
  absl::string_view assignment(assignment_in.data(), assignment_in.size());
  size_t eq = assignment.find('=');
  if (eq == absl::string_view::npos)
    return absl::InvalidArgumentError(
        absl::StrCat("--set ", assignment, ": missing '=' (want field.path=value)"));
  absl::string_view path = absl::StripAsciiWhitespace(assignment.substr(0, eq));
  ExperimentSpec updated = *spec;  // all or nothing: a bad list item leaves spec unchanged
  absl::Status s = ApplyPath(&updated, path, assignment.substr(eq + 1));
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("--set ", assignment, ": ", s.message()));
  *spec = std::move(updated);
  return absl::OkStatus();
}

void FillDefaults(Message* message) {
  const Descriptor* d = message->GetDescriptor();
  const Reflection* r = message->GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->is_repeated()) continue;
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      FillDefaults(r->MutableMessage(message, f));  // creates it when unset
      continue;
    }
    if (r->HasField(*message, f)) continue;
    if (f->containing_oneof() != nullptr) continue;  // setting it would pick the oneof's case
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32: r->SetInt32(message, f, f->default_value_int32()); break;
      case FieldDescriptor::CPPTYPE_INT64: r->SetInt64(message, f, f->default_value_int64()); break;
      case FieldDescriptor::CPPTYPE_UINT32: r->SetUInt32(message, f, f->default_value_uint32()); break;
      case FieldDescriptor::CPPTYPE_UINT64: r->SetUInt64(message, f, f->default_value_uint64()); break;
      case FieldDescriptor::CPPTYPE_DOUBLE: r->SetDouble(message, f, f->default_value_double()); break;
      case FieldDescriptor::CPPTYPE_FLOAT: r->SetFloat(message, f, f->default_value_float()); break;
      case FieldDescriptor::CPPTYPE_BOOL: r->SetBool(message, f, f->default_value_bool()); break;
      case FieldDescriptor::CPPTYPE_ENUM: r->SetEnum(message, f, f->default_value_enum()); break;
      case FieldDescriptor::CPPTYPE_STRING: r->SetString(message, f, f->default_value_string()); break;
      case FieldDescriptor::CPPTYPE_MESSAGE: break;  // handled above
    }
  }
}

std::string SpecToText(const Message& message) {
  // The printer writes doubles with SimpleDtoa, which round-trips.
  std::string text;
  TextFormat::PrintToString(message, &text);
  return text;
}

absl::Status ValidateSpec(const ExperimentSpec& spec, bool check_data_paths) {
  Checker c;
  const ModelSpec& m = spec.model();
  c.Positive("model.vocab_size", int64_t{m.vocab_size()});
  c.Positive("model.width", int64_t{m.width()});
  c.Positive("model.depth", int64_t{m.depth()});
  c.Positive("model.head_dim", int64_t{m.head_dim()});
  c.Positive("model.num_heads", int64_t{m.num_heads()});
  c.Positive("model.expand_v", int64_t{m.expand_v()});
  c.Positive("model.value_heads_per_key_head", int64_t{m.value_heads_per_key_head()});
  c.Positive("model.conv_size", int64_t{m.conv_size()});
  c.Positive("model.chunk_size", int64_t{m.chunk_size()});
  c.Positive("model.mlp_multiple_of", int64_t{m.mlp_multiple_of()});
  c.Positive("model.mlp_ratio", m.mlp_ratio());
  c.Positive("model.key_dim_ratio", m.key_dim_ratio());
  c.Positive("model.norm_eps", m.norm_eps());

  const ParametrizationSpec& p = spec.parametrization();
  c.Positive("parametrization.base_width", int64_t{p.base_width()});
  c.NonNegative("parametrization.init_std", p.init_std());
  c.Positive("parametrization.alpha_in", p.alpha_in());
  c.Positive("parametrization.alpha_out", p.alpha_out());

  const OptimizerSpec& o = spec.optimizer();
  c.Positive("optimizer.lr", o.lr());
  c.InRange("optimizer.beta1", o.beta1(), 0, 1, false);
  c.InRange("optimizer.beta2", o.beta2(), 0, 1, false);
  c.Positive("optimizer.eps", o.eps());
  c.NonNegative("optimizer.weight_decay", o.weight_decay());
  c.InRange("optimizer.momentum", o.momentum(), 0, 1, false);
  c.NonNegative("optimizer.warmup_steps", int64_t{o.warmup_steps()});
  c.InRange("optimizer.min_lr_ratio", o.min_lr_ratio(), 0, 1, true);
  c.NonNegative("optimizer.grad_clip", o.grad_clip());

  const DataSpec& d = spec.data();
  c.Positive("data.seq_len", int64_t{d.seq_len()});
  c.Positive("data.batch_size", int64_t{d.batch_size()});
  for (const auto& [field, path] :
       {std::pair{"data.train_path", d.train_path()}, {"data.val_path", d.val_path()}}) {
    const std::string why = check_data_paths ? DataPathProblem(path) : path.empty() ? "empty" : "";
    if (!why.empty()) c.Error(field, why);
  }

  const RunSpec& r = spec.run();
  if (r.dir().empty()) c.Error("run.dir", "empty");
  c.Positive("run.steps", int64_t{r.steps()});
  c.NonNegative("run.eval_interval", int64_t{r.eval_interval()});
  c.Positive("run.eval_batches", int64_t{r.eval_batches()});
  c.Positive("run.log_interval", int64_t{r.log_interval()});

  c.AtLeast("parallel.tensor_parallel", spec.parallel().tensor_parallel(), 1);
  if (const int z = spec.parallel().zero_stage(); z != 0 && z != 1)
    c.Error("parallel.zero_stage", absl::StrCat("must be 0 or 1 (ZeRO stage 1), got ", z));
  c.Positive("parallel.bucket_mb", spec.parallel().bucket_mb());

  // The slurm block becomes lines of a batch script: one value, one line.
  const SlurmSpec& sl = spec.slurm();
  c.NonNegative("slurm.max_running", int64_t{sl.max_running()});
  c.Positive("slurm.ntasks", int64_t{sl.ntasks()});
  c.Positive("slurm.nodes", int64_t{sl.nodes()});
  c.NonNegative("slurm.cpus_per_task", int64_t{sl.cpus_per_task()});
  c.NonNegative("slurm.signal_seconds", int64_t{sl.signal_seconds()});
  if (sl.time().empty()) c.Error("slurm.time", "empty (sbatch --time, e.g. 01:00:00)");
  std::vector<std::pair<std::string, std::string>> lines = {
      {"slurm.launcher", sl.launcher()}, {"slurm.time", sl.time()},
      {"slurm.partition", sl.partition()}, {"slurm.account", sl.account()}};
  for (int i = 0; i < sl.sbatch_size(); ++i) {
    lines.push_back({absl::StrCat("slurm.sbatch[", i, "]"), sl.sbatch(i)});
    if (sl.sbatch(i).rfind("-", 0) != 0)
      c.Error(lines.back().first, absl::StrCat("'", sl.sbatch(i), "' is not an sbatch option (--...)"));
  }
  for (const auto& [field, value] : lines)
    if (value.find_first_of("\n\r'") != std::string::npos)
      c.Error(field, "must not hold a line break or a single quote");

  const SweepSpec& s = spec.sweep();
  if (s.dir().empty()) c.Error("sweep.dir", "empty");
  for (int i = 0; i < s.learning_rates_size(); ++i)
    c.Positive(absl::StrCat("sweep.learning_rates[", i, "]"), s.learning_rates(i));
  for (int i = 0; i < s.widths_size(); ++i)
    c.Positive(absl::StrCat("sweep.widths[", i, "]"), int64_t{s.widths(i)});
  // Each field swept once: an axis on a field that a list or another axis sweeps would be
  // overridden by it (the run's id and its model would disagree).
  std::map<std::string, std::string> swept;
  struct List {
    const char *field, *name;
    int size;
  };
  const List lists[] = {
      {"parametrization.kind", "sweep.parametrizations", s.parametrizations_size()},
      {"optimizer.kind", "sweep.optimizers", s.optimizers_size()},
      {"model.width", "sweep.widths", s.widths_size()},
      {"optimizer.lr", "sweep.learning_rates", s.learning_rates_size()},
      {"run.seed", "sweep.seeds", s.seeds_size()}};
  for (const List& l : lists)
    if (l.size > 0) swept[l.field] = l.name;
  for (int i = 0; i < s.axes_size(); ++i) {
    if (absl::Status st = CheckAxis(spec, s.axes(i), i); !st.ok()) {
      c.Error(st);
      continue;
    }
    const std::string name = absl::StrCat("sweep.axes[", i, "]");
    auto [at, added] = swept.emplace(s.axes(i).field(), name);
    if (!added) c.Error(name, absl::StrCat(s.axes(i).field(), " is already swept by ", at->second));
  }
  return c.status();
}

absl::StatusOr<std::vector<GridPoint>> ExpandGrid(const ExperimentSpec& spec) {
  const SweepSpec& s = spec.sweep();
  // Each axis as its list of assignments, in the documented order.
  std::vector<std::vector<std::string>> axes;
  auto add_axis = [&](absl::string_view path, const auto& values, auto format) {
    if (values.empty()) return;
    std::vector<std::string> assignments;
    for (const auto& v : values) assignments.push_back(absl::StrCat(path, "=", format(v)));
    axes.push_back(std::move(assignments));
  };
  add_axis("parametrization.kind", s.parametrizations(), [](int k) {
    return ParametrizationSpec::Kind_Name(static_cast<ParametrizationSpec::Kind>(k));
  });
  add_axis("optimizer.kind", s.optimizers(), [](int k) {
    return OptimizerSpec::Kind_Name(static_cast<OptimizerSpec::Kind>(k));
  });
  add_axis("model.width", s.widths(), [](int32_t w) { return absl::StrCat(w); });
  add_axis("optimizer.lr", s.learning_rates(), [](double lr) { return ShortestDouble(lr); });
  add_axis("run.seed", s.seeds(), [](uint64_t seed) { return absl::StrCat(seed); });
  for (int i = 0; i < s.axes_size(); ++i) {
    if (absl::Status st = CheckAxis(spec, s.axes(i), i); !st.ok()) return st;
    add_axis(s.axes(i).field(), s.axes(i).values(), [](const std::string& v) { return v; });
  }
  if (axes.empty())
    return absl::InvalidArgumentError(
        "sweep: empty grid (set sweep.widths, sweep.learning_rates, sweep.optimizers, "
        "sweep.parametrizations, sweep.seeds or sweep.axes)");

  std::vector<GridPoint> points;
  std::set<std::string> ids;
  std::vector<size_t> index(axes.size(), 0);  // odometer, last axis fastest
  while (true) {
    GridPoint point;
    point.spec = spec;
    for (size_t a = 0; a < axes.size(); ++a) {
      point.assignments.push_back(axes[a][index[a]]);
      if (absl::Status st = ApplyOverride(&point.spec, point.assignments.back()); !st.ok())
        return absl::InvalidArgumentError(absl::StrCat("sweep: ", st.message()));
    }
    FillDefaults(&point.spec);
    point.spec.clear_sweep();  // a point is one run; this also keeps ids as the sweep grows
    point.spec.clear_slurm();  // where a run is scheduled is not part of it
    point.id = RunId(point.spec, point.assignments);
    if (!ids.insert(point.id).second)
      return absl::InvalidArgumentError(
          absl::StrCat("sweep: duplicate run ", point.id, " (a list repeats a value)"));
    point.spec.mutable_run()->set_dir(absl::StrCat(s.dir(), "/", point.id));
    points.push_back(std::move(point));

    size_t a = axes.size();
    while (a > 0 && ++index[a - 1] == axes[a - 1].size()) index[--a] = 0;
    if (a == 0) break;
  }
  return points;
}

void ClearBookkeeping(ExperimentSpec* spec) {
  RunSpec* r = spec->mutable_run();
  r->clear_dir();
  r->clear_checkpoint_interval();
  r->clear_keep_checkpoints();
  r->clear_preempt_signals();
  r->clear_checkpoint_signals();
  r->clear_device();
  spec->clear_slurm();
}

std::string RunId(const ExperimentSpec& resolved, const std::vector<std::string>& assignments) {
  ExperimentSpec hashed = resolved;
  FillDefaults(&hashed);  // an explicitly stated default must not change the id
  ClearBookkeeping(&hashed);  // scheduling or keeping a run differently keeps its id
  uint64_t h = HashString(SpecToText(hashed));
  std::vector<std::string> names;
  for (const std::string& a : assignments) names.push_back(ShortName(a));
  std::string hash = absl::StrFormat("%08x", static_cast<uint32_t>(h ^ (h >> 32)));
  return names.empty() ? hash : absl::StrCat(absl::StrJoin(names, "_"), "-", hash);
}

}  // namespace gdn
