#include "model/config.h"

#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gdn {

namespace {
// x as an integer if it is one (up to rounding of the ratio) and below 2^53, else -1.
int64_t WholeNumber(double x) {
  const double r = std::round(x);
  return std::abs(x - r) < 1e-6 && std::abs(r) < 0x1p53 ? static_cast<int64_t>(r) : -1;
}
}  // namespace

absl::StatusOr<ModelDims> ResolveModelDims(const ModelSpec& spec) {
  ModelDims d;
  d.vocab = spec.vocab_size();
  d.width = spec.width();
  d.depth = spec.depth();
  d.conv_size = spec.conv_size();
  d.norm_eps = spec.norm_eps();
  d.tied = spec.tie_embeddings();
  d.beta_scale = spec.negative_eigenvalues() ? 2.0 : 1.0;
  d.chunk = spec.recurrence() == ModelSpec::SEQUENTIAL ? 0 : spec.chunk_size();
  if (d.width <= 0 || d.vocab <= 0 || d.depth <= 0)
    return absl::InvalidArgumentError("model: width, vocab_size and depth must be > 0");

  d.key_dim = WholeNumber(spec.key_dim_ratio() * d.width);
  if (d.key_dim <= 0)
    return absl::InvalidArgumentError(absl::StrFormat(
        "model.width: key dimension key_dim_ratio %g * width %d = %g is not a positive whole number",
        spec.key_dim_ratio(), d.width, spec.key_dim_ratio() * d.width));
  if (spec.head_scaling() == ModelSpec::HEAD_COUNT) {
    d.dk = spec.head_dim();
    if (d.dk <= 0 || d.key_dim % d.dk != 0)
      return absl::InvalidArgumentError(absl::StrFormat(
          "model.width: key dimension %g * %d = %d is not a multiple of model.head_dim %d",
          spec.key_dim_ratio(), d.width, d.key_dim, d.dk));
    d.heads = d.key_dim / d.dk;
  } else {
    d.heads = spec.num_heads();
    d.heads_grow_in_size = true;
    if (d.heads <= 0 || d.key_dim % d.heads != 0)
      return absl::InvalidArgumentError(absl::StrFormat(
          "model.width: key dimension %g * %d = %d is not a multiple of model.num_heads %d",
          spec.key_dim_ratio(), d.width, d.key_dim, d.heads));
    d.dk = d.key_dim / d.heads;
  }
  if (spec.expand_v() <= 0 || spec.value_heads_per_key_head() <= 0)
    return absl::InvalidArgumentError("model.expand_v and model.value_heads_per_key_head must be > 0");
  if (double(d.dk) * spec.expand_v() * d.heads * spec.value_heads_per_key_head() > 0x1p53)
    return absl::InvalidArgumentError(absl::StrFormat(
        "model.expand_v: the value dimension %d * %d * %d * %d is too large", d.heads,
        spec.value_heads_per_key_head(), d.dk, spec.expand_v()));
  d.dv = d.dk * spec.expand_v();
  d.value_heads = d.heads * spec.value_heads_per_key_head();
  d.value_dim = d.value_heads * d.dv;

  const int64_t multiple = spec.mlp_multiple_of();
  if (multiple <= 0 || spec.mlp_ratio() <= 0)
    return absl::InvalidArgumentError("model.mlp_ratio and model.mlp_multiple_of must be > 0");
  const double hidden_size = std::ceil(spec.mlp_ratio() * d.width - 1e-9);
  if (hidden_size > 0x1p53)
    return absl::InvalidArgumentError(absl::StrFormat(
        "model.mlp_ratio: %g * width %d = %g is too large a hidden size", spec.mlp_ratio(),
        d.width, hidden_size));
  const int64_t hidden = static_cast<int64_t>(hidden_size);
  d.mlp_hidden = (hidden + multiple - 1) / multiple * multiple;
  if (spec.recurrence() == ModelSpec::CHUNKED && spec.chunk_size() <= 0)
    return absl::InvalidArgumentError("model.chunk_size: must be > 0");
  if (d.conv_size <= 0) return absl::InvalidArgumentError("model.conv_size: must be > 0");
  return d;
}

absl::Status ValidateModelSpec(const ExperimentSpec& spec) {
  auto dims = ResolveModelDims(spec.model());
  if (!dims.ok()) return dims.status();
  const int64_t t = spec.parallel().tensor_parallel();
  auto divisible = [&](int64_t n, const char* what) -> absl::Status {
    if (n % t == 0) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrFormat(
        "parallel.tensor_parallel: %d does not divide the %s (%d)", t, what, n));
  };
  for (auto s : {divisible(dims->heads, "number of key heads"),
                 divisible(dims->mlp_hidden, "MLP hidden size"),
                 divisible(dims->vocab, "vocabulary size")})
    if (!s.ok()) return s;
  if (spec.parametrization().base_width() <= 0)
    return absl::InvalidArgumentError("parametrization.base_width: must be > 0");
  return absl::OkStatus();
}

std::vector<std::pair<std::string, Shape>> LayerParameterShapes(const ModelDims& d) {
  return {{"attn_norm", {d.width}},
          {"attn.q_proj", {d.key_dim, d.width}},
          {"attn.k_proj", {d.key_dim, d.width}},
          {"attn.v_proj", {d.value_dim, d.width}},
          {"attn.a_proj", {d.value_heads, d.width}},
          {"attn.b_proj", {d.value_heads, d.width}},
          {"attn.g_proj", {d.value_dim, d.width}},
          {"attn.q_conv", {d.key_dim, d.conv_size}},
          {"attn.k_conv", {d.key_dim, d.conv_size}},
          {"attn.v_conv", {d.value_dim, d.conv_size}},
          {"attn.A_log", {d.value_heads}},
          {"attn.dt_bias", {d.value_heads}},
          {"attn.o_norm", {d.dv}},
          {"attn.o_proj", {d.width, d.value_dim}},
          {"mlp_norm", {d.width}},
          {"mlp.gate_proj", {d.mlp_hidden, d.width}},
          {"mlp.up_proj", {d.mlp_hidden, d.width}},
          {"mlp.down_proj", {d.width, d.mlp_hidden}}};
}

std::vector<std::pair<std::string, Shape>> ParameterShapes(const ModelDims& d) {
  std::vector<std::pair<std::string, Shape>> out = {{"embedding", {d.vocab, d.width}}};
  const auto layer = LayerParameterShapes(d);
  for (int64_t l = 0; l < d.depth; ++l)
    for (const auto& [name, shape] : layer)
      out.emplace_back(absl::StrCat("layers.", l, ".", name), shape);
  out.emplace_back("norm", Shape{d.width});
  if (!d.tied) out.emplace_back("lm_head", Shape{d.vocab, d.width});
  return out;
}

namespace {
// One layer's parameter count, all or only the projections, in double.
double LayerCount(const ModelDims& d, bool projections_only) {
  double n = 0;
  for (const auto& [name, shape] : LayerParameterShapes(d)) {
    if (projections_only && !absl::EndsWith(name, "_proj")) continue;
    double size = 1;
    for (const int64_t s : shape) size *= double(s);
    n += size;
  }
  return n;
}
}  // namespace

double ParameterCount(const ModelDims& d) {
  return double(d.vocab) * d.width * (d.tied ? 1 : 2) + d.width + d.depth * LayerCount(d, false);
}

double MatmulFlopsPerToken(const ModelDims& d) {
  return 6 * (d.depth * LayerCount(d, true) + double(d.vocab) * d.width);
}

}  // namespace gdn
