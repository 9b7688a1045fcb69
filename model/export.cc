#include "model/export.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "model/config.h"
#include "model/lm.h"
#include "model/parametrization.h"
#include "runtime/atomic_file.h"
#include "runtime/json.h"
#include "runtime/safetensors.h"
#include "runtime/spec.h"

namespace gdn {

namespace {

constexpr char kConfigFile[] = "config.json";
constexpr char kWeightsFile[] = "model.safetensors";

// Our parameter name -> fla's; *conv is set for the short-convolution weights, whose torch
// layout has a middle dimension of 1.
std::string FlaName(const std::string& name, bool* conv) {
  *conv = false;
  if (name == "embedding") return "model.embeddings.weight";
  if (name == "norm") return "model.norm.weight";
  if (name == "lm_head") return "lm_head.weight";
  // layers.L.rest
  std::string out = "model." + name;
  if (absl::EndsWith(name, "_conv")) {
    *conv = true;
    return out + "1d.weight";
  }
  if (absl::EndsWith(name, ".A_log") || absl::EndsWith(name, ".dt_bias")) return out;
  return out + ".weight";
}

// The input and output multipliers that fla does not have (folded into the weights).
struct Multipliers {
  double in = 1, out = 1, m = 1;
};
Multipliers MultipliersOf(const ExperimentSpec& spec) {
  Multipliers r;
  r.m = WidthMultiplier(spec);
  const auto& p = spec.parametrization();
  const auto kind = spec.optimizer().kind();
  r.in = MultipliersFor(ParamClass::kInput, p, kind, r.m).forward;
  r.out = MultipliersFor(ParamClass::kOutput, p, kind, r.m).forward;
  return r;
}

// A double as JSON that parses back to the same value.
std::string JsonDouble(double x) {
  for (int digits : {15, 16, 17}) {
    std::string s = absl::StrFormat("%.*g", digits, x);
    double back;
    if (absl::SimpleAtod(s, &back) && back == x) {
      if (s.find_first_of(".eE") == std::string::npos) s += ".0";
      return s;
    }
  }
  return absl::StrFormat("%.17g", x);
}

Tensor Scaled(const Tensor& t, double s) {
  Tensor out = t.Clone();
  if (s != 1.0)
    for (int64_t i = 0; i < out.numel(); ++i) out.data<float>()[i] *= static_cast<float>(s);
  return out;
}

// Divides in double then rounds, so that a multiply by s in float32 followed by this is as close
// to the original as float32 allows.
Tensor Unscaled(const Tensor& t, double s) {
  Tensor out = t.Clone();
  if (s != 1.0)
    for (int64_t i = 0; i < out.numel(); ++i)
      out.data<float>()[i] = static_cast<float>(static_cast<double>(out.data<float>()[i]) / s);
  return out;
}

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot read: ", std::strerror(errno)));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

absl::StatusOr<ExportReport> ExportModel(const ExperimentSpec& spec,
                                         const std::map<std::string, Tensor>& full, int64_t step,
                                         const std::string& out_dir) {
  auto dims_or = ResolveModelDims(spec.model());
  if (!dims_or.ok()) return dims_or.status();
  const ModelDims& d = *dims_or;
  const Multipliers mult = MultipliersOf(spec);
  ExportReport report;
  if (RecurrenceScale(d.dk, d.heads_grow_in_size, mult.m) != RecurrenceScale(d.dk, false, 1.0))
    return absl::InvalidArgumentError(absl::StrFormat(
        "export: muP with model.head_scaling HEAD_SIZE at width multiplier %g scales the recurrence "
        "by (m/dk)^1/2, which fla's GatedDeltaNet (dk^-1/2) cannot express",
        mult.m));

  // Check every tensor before writing anything.
  for (const auto& [name, shape] : ParameterShapes(d)) {
    auto it = full.find(name);
    if (it == full.end())
      return absl::InvalidArgumentError(absl::StrCat("export: parameter ", name, " is missing"));
    if (it->second.shape() != shape || it->second.dtype() != DType::kF32)
      return absl::InvalidArgumentError(absl::StrFormat(
          "export: parameter %s is %s %s, the spec's model needs float32 %s", name,
          DTypeName(it->second.dtype()), ShapeString(it->second.shape()), ShapeString(shape)));
  }

  // A tied head stays tied only when one matrix can carry both folded multipliers.
  const bool tied = d.tied && mult.in == mult.out;
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& [name, shape] : ParameterShapes(d)) {
    const Tensor& t = full.at(name);
    bool conv;
    const std::string fla = FlaName(name, &conv);
    if (name == "embedding") {
      tensors.emplace_back(fla, Scaled(t, mult.in));
      if (d.tied && !tied) tensors.emplace_back("lm_head.weight", Scaled(t, mult.out));
    } else if (name == "lm_head") {
      tensors.emplace_back(fla, Scaled(t, mult.out));
    } else if (conv) {
      tensors.emplace_back(fla, t.Clone().View({shape[0], 1, shape[1]}));
    } else {
      tensors.emplace_back(fla, t);
    }
  }
  if (mult.in != 1.0)
    report.notes.push_back(absl::StrFormat(
        "input multiplier %g folded into model.embeddings.weight", mult.in));
  if (mult.out != 1.0)
    report.notes.push_back(
        absl::StrFormat("output multiplier %g (alpha_out %g / m %g) folded into lm_head.weight",
                        mult.out, spec.parametrization().alpha_out(), mult.m));
  if (d.tied && !tied)
    report.notes.push_back(absl::StrFormat(
        "tied embedding exported UNTIED: its input (%g) and output (%g) multipliers differ, so "
        "fla needs two matrices (an import restores the tied model)",
        mult.in, mult.out));

  const std::string note = absl::StrJoin(report.notes, "; ");
  std::string c = "{\n";
  auto kv = [&](const std::string& key, const std::string& value, bool last = false) {
    absl::StrAppend(&c, "  ", JsonQuote(key), ": ", value, last ? "\n" : ",\n");
  };
  auto b = [](bool x) { return std::string(x ? "true" : "false"); };
  kv("architectures", "[\"GatedDeltaNetForCausalLM\"]");
  kv("model_type", "\"gated_deltanet\"");
  kv("attn_mode", "\"chunk\"");
  kv("hidden_size", absl::StrCat(d.width));
  kv("num_hidden_layers", absl::StrCat(d.depth));
  kv("vocab_size", absl::StrCat(d.vocab));
  kv("num_heads", absl::StrCat(d.heads));
  kv("num_v_heads", absl::StrCat(d.value_heads));
  kv("head_dim", absl::StrCat(d.dk));
  kv("expand_v", absl::StrCat(d.dv / d.dk));
  kv("use_gate", "true");
  kv("use_short_conv", "true");
  kv("conv_size", absl::StrCat(d.conv_size));
  kv("allow_neg_eigval", b(d.beta_scale == 2.0));
  kv("hidden_ratio", JsonDouble(spec.model().mlp_ratio()));
  kv("intermediate_size", absl::StrCat(d.mlp_hidden));
  kv("hidden_act", "\"swish\"");
  kv("norm_eps", JsonDouble(d.norm_eps));
  kv("tie_word_embeddings", b(tied));
  kv("max_position_embeddings", absl::StrCat(spec.data().seq_len()));
  kv("initializer_range", JsonDouble(spec.parametrization().init_std()));
  kv("attn", "null");
  kv("use_cache", "true");
  // Byte-level (or llm.c GPT-2) vocabularies have no special tokens here.
  kv("bos_token_id", "null");
  kv("eos_token_id", "null");
  kv("pad_token_id", "null");
  kv("torch_dtype", "\"float32\"");
  std::string g = "{\n";
  auto gkv = [&](const std::string& key, const std::string& value, bool last = false) {
    absl::StrAppend(&g, "    ", JsonQuote(key), ": ", value, last ? "\n" : ",\n");
  };
  gkv("exported_by", "\"gdn export\"");
  gkv("step", absl::StrCat(step));
  gkv("parametrization",
      JsonQuote(spec.parametrization().kind() == ParametrizationSpec::MUP ? "MUP" : "SP"));
  gkv("width_multiplier", JsonDouble(mult.m));
  gkv("input_multiplier_folded", JsonDouble(mult.in));
  gkv("output_multiplier_folded", JsonDouble(mult.out));
  gkv("tied_in_gdn", b(d.tied));
  gkv("untied_on_export", b(d.tied && !tied));
  gkv("attention_scale", "\"head_dim^-0.5 (fla's default)\"");
  gkv("note", JsonQuote(note.empty() ? "nothing folded: the weights are gdn's as trained" : note));
  gkv("spec", JsonQuote(SpecToText(spec)), true);
  g += "  }";
  kv("gdn", g, true);
  c += "}\n";

  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec || !std::filesystem::is_directory(out_dir))
    return absl::PermissionDeniedError(absl::StrCat(out_dir, ": cannot create: ", ec.message()));
  if (auto s = WriteSafetensors(out_dir + "/" + kWeightsFile, tensors, {{"format", "pt"}}); !s.ok())
    return s;
  if (auto s = WriteFileAtomically(out_dir + "/" + kConfigFile, {{c.data(), c.size()}}); !s.ok())
    return s;
  return report;
}

absl::StatusOr<ImportedModel> ImportModel(const std::string& dir) {
  const std::string config_path = dir + "/" + kConfigFile;
  const std::string weights_path = dir + "/" + kWeightsFile;
  auto text = ReadText(config_path);
  if (!text.ok()) return text.status();
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(config_path, ": ", what));
  };
  if (!ValidUtf8(*text)) return bad("not valid UTF-8");
  JsonParser parser(*text, /*full_json=*/true);
  std::optional<Json> root = parser.ParseDocument();
  if (!root) return bad(absl::StrCat("not valid JSON: ", parser.error()));
  if (root->kind != Json::Kind::kObject) return bad("not a JSON object");

  // Typed lookups with fla's defaults for absent keys; present keys must have the right type.
  // Sizes are range-checked as doubles before they become integers (the spec's are int32).
  constexpr int64_t kMaxSize = std::numeric_limits<int32_t>::max();
  absl::Status err;
  auto get_int = [&](const char* key, std::optional<int64_t> dflt) -> int64_t {
    const Json* v = root->Get(key);
    if (v == nullptr || v->kind == Json::Kind::kNull) {
      if (!dflt && err.ok()) err = bad(absl::StrCat("missing \"", key, "\""));
      return dflt.value_or(0);
    }
    if (!v->IsNumber() || v->real != std::floor(v->real) || v->real <= 0 || v->real > kMaxSize) {
      if (err.ok())
        err = bad(absl::StrFormat("\"%s\" must be a whole number from 1 to %d", key, kMaxSize));
      return 0;
    }
    return static_cast<int64_t>(v->real);
  };
  auto get_double = [&](const char* key, double dflt) -> double {
    const Json* v = root->Get(key);
    if (v == nullptr) return dflt;
    if (!v->IsNumber()) {
      if (err.ok()) err = bad(absl::StrCat("\"", key, "\" must be a number"));
      return dflt;
    }
    return v->real;
  };
  auto get_bool = [&](const char* key, bool dflt) -> bool {
    const Json* v = root->Get(key);
    if (v == nullptr) return dflt;
    if (v->kind != Json::Kind::kBool) {
      if (err.ok()) err = bad(absl::StrCat("\"", key, "\" must be true or false"));
      return dflt;
    }
    return v->num != 0;
  };
  auto get_string = [&](const char* key, const std::string& dflt) -> std::string {
    const Json* v = root->Get(key);
    if (v == nullptr) return dflt;
    if (v->kind != Json::Kind::kString) {
      if (err.ok()) err = bad(absl::StrCat("\"", key, "\" must be a string"));
      return dflt;
    }
    return v->str;
  };

  const std::string model_type = get_string("model_type", "gated_deltanet");
  const int64_t width = get_int("hidden_size", std::nullopt);
  const int64_t depth = get_int("num_hidden_layers", std::nullopt);
  const int64_t vocab = get_int("vocab_size", std::nullopt);
  const int64_t heads = get_int("num_heads", std::nullopt);
  const int64_t head_dim = get_int("head_dim", std::nullopt);
  const int64_t value_heads = get_int("num_v_heads", heads);
  const double expand_v = get_double("expand_v", 2.0);
  const int64_t conv_size = get_int("conv_size", 4);
  const double hidden_ratio = get_double("hidden_ratio", 4);
  const double norm_eps = get_double("norm_eps", 1e-6);
  const bool tie = get_bool("tie_word_embeddings", false);
  const bool neg = get_bool("allow_neg_eigval", false);
  const bool use_gate = get_bool("use_gate", true);
  const bool use_short_conv = get_bool("use_short_conv", true);
  const std::string act = get_string("hidden_act", "swish");
  // fla's GatedMLP: intermediate_size, or 2/3 hidden_ratio * hidden_size rounded up to 256.
  int64_t intermediate = 0;
  if (const Json* v = root->Get("intermediate_size"); v != nullptr && v->kind != Json::Kind::kNull) {
    intermediate = get_int("intermediate_size", std::nullopt);
  } else if (const double mlp = width * hidden_ratio * 2 / 3; !(mlp > 0 && mlp <= kMaxSize - 255)) {
    if (err.ok())
      err = bad(absl::StrFormat("\"hidden_ratio\" gives an intermediate size of %g (2/3 "
                                "hidden_ratio hidden_size), not from 1 to %d", mlp, kMaxSize));
  } else {
    intermediate = 256 * ((static_cast<int64_t>(mlp) + 255) / 256);
  }
  if (!err.ok()) return err;
  if (model_type != "gated_deltanet")
    return bad(absl::StrCat("model_type \"", model_type, "\" is not gated_deltanet"));
  if (!use_gate) return bad("use_gate false is not supported (gdn's mixer always gates its output)");
  if (!use_short_conv) return bad("use_short_conv false is not supported (gdn always convolves q, k, v)");
  if (act != "swish") return bad(absl::StrCat("hidden_act \"", act, "\" is not supported (swish only)"));
  for (const char* key : {"attn", "attnres_block_size"})
    if (const Json* v = root->Get(key); v != nullptr && v->kind != Json::Kind::kNull)
      return bad(absl::StrCat("\"", key, "\" (hybrid layers) is not supported"));
  if (value_heads % heads != 0) return bad("num_v_heads must be a multiple of num_heads");
  const double dv = head_dim * expand_v;
  if (dv != std::floor(dv) || std::fmod(dv, static_cast<double>(head_dim)) != 0 || !(dv > 0) ||
      dv > kMaxSize)
    return bad("expand_v must be a positive whole number (gdn's dv = expand_v * head_dim)");

  ImportedModel out;
  const Json* gdn = root->Get("gdn");
  if (gdn != nullptr && gdn->kind == Json::Kind::kObject && gdn->Get("spec") != nullptr) {
    const Json* s = gdn->Get("spec");
    if (s->kind != Json::Kind::kString) return bad("\"gdn\".\"spec\" must be a string");
    auto spec = ParseSpecText(s->str, config_path + " gdn.spec");
    if (!spec.ok()) return spec.status();
    out.spec = *spec;
    out.notes.push_back("restored gdn's spec from the \"gdn\" block (parametrization " +
                        std::string(ParametrizationSpec::Kind_Name(out.spec.parametrization().kind())) +
                        ")");
  } else {
    // A model from elsewhere: fla's function is ours under SP with multipliers 1.
    ModelSpec& m = *out.spec.mutable_model();
    m.set_vocab_size(vocab);
    m.set_width(width);
    m.set_depth(depth);
    m.set_head_scaling(ModelSpec::HEAD_COUNT);
    m.set_head_dim(head_dim);
    m.set_key_dim_ratio(static_cast<double>(heads * head_dim) / width);
    m.set_expand_v(static_cast<int>(dv) / head_dim);
    m.set_value_heads_per_key_head(value_heads / heads);
    m.set_conv_size(conv_size);
    m.set_mlp_ratio(static_cast<double>(intermediate) / width);
    m.set_mlp_multiple_of(1);
    m.set_tie_embeddings(tie);
    m.set_norm_eps(norm_eps);
    m.set_negative_eigenvalues(neg);
    ParametrizationSpec& p = *out.spec.mutable_parametrization();
    p.set_kind(ParametrizationSpec::SP);
    p.set_base_width(width);
    p.set_init_std(get_double("initializer_range", 0.02));
    out.notes.push_back("no \"gdn\" block: imported as fla's model under SP, multipliers 1");
  }
  FillDefaults(&out.spec);
  out.spec.mutable_parallel()->set_tensor_parallel(1);
  if (auto s = ValidateModelSpec(out.spec); !s.ok()) return bad(absl::StrCat("gdn.spec: ", s.message()));
  const ModelDims d = *ResolveModelDims(out.spec.model());
  // The spec must describe the model config.json describes.
  const bool restored_tied = d.tied;
  for (auto [what, ours, theirs] :
       {std::tuple{"hidden_size", d.width, width}, {"num_hidden_layers", d.depth, depth},
        {"vocab_size", d.vocab, vocab}, {"num_heads", d.heads, heads},
        {"num_v_heads", d.value_heads, value_heads}, {"head_dim", d.dk, head_dim},
        {"head_v_dim", d.dv, static_cast<int64_t>(dv)}, {"conv_size", d.conv_size, conv_size},
        {"intermediate_size", d.mlp_hidden, intermediate},
        {"allow_neg_eigval", static_cast<int64_t>(d.beta_scale == 2.0), static_cast<int64_t>(neg)}})
    if (ours != theirs)
      return bad(absl::StrFormat("%s is %d but the model's spec gives %d", what, theirs, ours));
  if (d.norm_eps != norm_eps)
    return bad(absl::StrFormat("norm_eps is %g but the model's spec gives %g", norm_eps, d.norm_eps));

  // Weights: every expected tensor present with its shape, nothing else, all checked against
  // the file before anything of the config's sizes is allocated.
  auto file = ReadSafetensors(weights_path);
  if (!file.ok()) return file.status();
  const Multipliers mult = MultipliersOf(out.spec);
  auto bad_file = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(weights_path, ": ", what));
  };
  int64_t file_layers = 0;  // 1 + the highest L of the file's model.layers.L.* tensors
  for (const auto& [name, t] : file->tensors) {
    absl::string_view rest = name;
    int64_t l;
    if (absl::ConsumePrefix(&rest, "model.layers.") &&
        absl::SimpleAtoi(rest.substr(0, rest.find('.')), &l) && l >= 0 && l < kMaxSize)
      file_layers = std::max(file_layers, l + 1);
  }
  if (file_layers != d.depth)
    return bad(absl::StrFormat("num_hidden_layers is %d but %s holds %s", d.depth, weights_path,
                               file_layers == 0 ? "no model.layers tensors"
                                                : absl::StrCat("layers 0 to ", file_layers - 1)));
  const std::vector<std::pair<std::string, Shape>> expected = ParameterShapes(d);
  std::set<std::string> used;
  for (const auto& [name, shape] : expected) {
    bool conv;
    const std::string fla = FlaName(name, &conv);
    const Tensor* t = file->Find(fla);
    if (t == nullptr)
      return bad_file(absl::StrCat("missing tensor \"", fla, "\" (gdn parameter ", name, ")"));
    used.insert(fla);
    Shape want = shape;
    if (conv) want = {shape[0], 1, shape[1]};
    if (t->shape() != want)
      return bad_file(absl::StrFormat("tensor \"%s\" has shape %s, the config needs %s", fla,
                                      ShapeString(t->shape()), ShapeString(want)));
    if (t->dtype() == DType::kI32)
      return bad_file(absl::StrCat("tensor \"", fla, "\" is I32, not a float type"));
  }
  // fla ties by omitting lm_head (or repeating the embedding); a tied model exported untied
  // carries an lm_head that the restored tied model does not need.
  if (restored_tied && file->Find("lm_head.weight") != nullptr) used.insert("lm_head.weight");
  for (const auto& [name, t] : file->tensors)
    if (!used.count(name))
      return bad_file(absl::StrCat("unexpected tensor \"", name,
                                   "\": gdn's model has no such parameter"));
  for (const auto& [name, shape] : expected) {
    bool conv;
    const Tensor& t = *file->Find(FlaName(name, &conv));
    Tensor value = Tensor::Empty(shape, DType::kF32);
    for (int64_t i = 0; i < value.numel(); ++i)
      value.data<float>()[i] = static_cast<float>(t.at(i));
    if (name == "embedding") value = Unscaled(value, mult.in);
    if (name == "lm_head") value = Unscaled(value, mult.out);
    out.params.emplace_back(name, std::move(value));
  }
  return out;
}

}  // namespace gdn
