// Export to fla's layout and back, and decoding with the recurrent state:
// - export -> import computes the same loss (SP and muP, tied and untied heads, grouped values,
//   negative eigenvalues);
// - the exported weights alone, read as fla's model (SP, multipliers 1, no "gdn" block), compute the
//   same function: the muP multipliers are folded correctly;
// - bad files (truncated, offsets outside the file, a missing, extra or misshapen tensor, an
//   unsupported config) are one-line errors naming the file and tensor;
// - LanguageModel::ForwardStep (one token at a time with the carried state) gives the full
//   forward's logits, so sampling's next-token distribution is the full pass's.
#include <gtest/gtest.h>
#include <omp.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "launcher/model_io.h"
#include "model/config.h"
#include "model/export.h"
#include "model/lm.h"
#include "runtime/safetensors.h"
#include "runtime/spec.h"
#include "tests/model_test_util.h"

namespace gdn {
namespace {

namespace fs = std::filesystem;

struct Variant {
  const char* name;
  ParametrizationSpec::Kind kind;
  bool tied;
  int value_heads_per_key_head = 1;
  bool negative_eigenvalues = false;
};

ExperimentSpec SpecFor(const Variant& v) {
  ExperimentSpec s;
  FillDefaults(&s);
  ModelSpec& m = *s.mutable_model();
  m.set_width(32);
  m.set_depth(2);
  m.set_head_dim(4);
  m.set_vocab_size(40);
  m.set_chunk_size(8);
  m.set_tie_embeddings(v.tied);
  m.set_value_heads_per_key_head(v.value_heads_per_key_head);
  m.set_negative_eigenvalues(v.negative_eigenvalues);
  ParametrizationSpec& p = *s.mutable_parametrization();
  p.set_kind(v.kind);
  p.set_base_width(16);  // m = 2 under muP
  p.set_alpha_in(1.7);
  p.set_alpha_out(1.3);
  return s;
}

// A trained-looking model: drawn from the seed, then every tensor perturbed (norm weights, o_norm
// and the gates away from their init values) so no parameter is left at a trivial value.
std::map<std::string, Tensor> FullParams(LanguageModel& model, uint64_t seed) {
  model.Initialize(seed);
  std::map<std::string, Tensor> full;
  uint64_t i = 0;
  for (const auto& p : model.params().all()) {
    Tensor noise = RandomTokens(1, p->value.numel(), 1000, seed + ++i);
    for (int64_t j = 0; j < p->value.numel(); ++j)
      p->value.data<float>()[j] += 0.05f * (noise.data<int32_t>()[j] / 1000.0f - 0.5f);
    full[p->name] = p->value.Clone();
  }
  return full;
}

void Load(LanguageModel& model, const std::vector<std::pair<std::string, Tensor>>& params) {
  ASSERT_EQ(params.size(), model.params().all().size());
  for (const auto& [name, t] : params) {
    Parameter* p = model.params().Find(name);
    ASSERT_NE(p, nullptr) << name;
    p->value.CopyFrom(t);
  }
}

class ExportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    omp_set_num_threads(1);
    dir_ = fs::temp_directory_path() /
           ("gdn_export_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Dir() const { return dir_.string(); }
  fs::path dir_;
};

const Variant kVariants[] = {
    {"sp_untied", ParametrizationSpec::SP, false},
    {"sp_tied", ParametrizationSpec::SP, true},
    {"mup_untied", ParametrizationSpec::MUP, false},
    {"mup_tied", ParametrizationSpec::MUP, true},
    {"mup_tied_grouped_negeig", ParametrizationSpec::MUP, true, 2, true},
};

TEST_F(ExportTest, RoundTripAndFoldedWeightsComputeTheSameLoss) {
  for (const Variant& v : kVariants) {
    SCOPED_TRACE(v.name);
    const ExperimentSpec spec = SpecFor(v);
    LanguageModel original(spec, DType::kF32);
    const auto full = FullParams(original, 7);
    const Tensor tokens = RandomTokens(2, 21, 40, 11);
    const double loss = original.ForwardLoss(tokens);

    const std::string out = Dir() + "/" + v.name;
    auto report = ExportModel(spec, full, 5, out);
    ASSERT_TRUE(report.ok()) << report.status();

    // fla's names and shapes.
    auto file = ReadSafetensors(out + "/model.safetensors");
    ASSERT_TRUE(file.ok()) << file.status();
    EXPECT_EQ(file->metadata.at("format"), "pt");
    const Tensor* conv = file->Find("model.layers.1.attn.k_conv1d.weight");
    ASSERT_NE(conv, nullptr);
    EXPECT_EQ(conv->shape(), (Shape{24, 1, 4}));
    ASSERT_NE(file->Find("model.layers.0.attn.A_log"), nullptr);
    ASSERT_NE(file->Find("model.layers.0.mlp.down_proj.weight"), nullptr);
    // SP with alpha_in != alpha_out still needs two matrices; only equal multipliers stay tied.
    EXPECT_EQ(file->Find("lm_head.weight") == nullptr, false) << "multipliers 1.7 vs 1.3 differ";

    // Round trip: the spec comes back from the "gdn" block, the multipliers unfolded.
    auto imported = ImportModel(out);
    ASSERT_TRUE(imported.ok()) << imported.status();
    EXPECT_EQ(imported->spec.model().tie_embeddings(), v.tied);
    EXPECT_EQ(imported->spec.parametrization().kind(), v.kind);
    LanguageModel back(imported->spec, DType::kF32);
    Load(back, imported->params);
    const double back_loss = back.ForwardLoss(tokens);
    EXPECT_NEAR(back_loss, loss, 1e-6 * loss);

    // The weights alone, as fla reads them: SP, no multipliers. Same function.
    std::ifstream in(out + "/config.json");
    std::stringstream ss;
    ss << in.rdbuf();
    std::string config = ss.str();
    const size_t gdn_at = config.find(",\n  \"gdn\"");
    ASSERT_NE(gdn_at, std::string::npos);
    config = config.substr(0, gdn_at) + "\n}\n";
    std::ofstream(out + "/config.json") << config;
    auto as_fla = ImportModel(out);
    ASSERT_TRUE(as_fla.ok()) << as_fla.status();
    EXPECT_EQ(as_fla->spec.parametrization().kind(), ParametrizationSpec::SP);
    EXPECT_FALSE(as_fla->spec.model().tie_embeddings());
    LanguageModel fla(as_fla->spec, DType::kF32);
    Load(fla, as_fla->params);
    const double fla_loss = fla.ForwardLoss(tokens);
    EXPECT_NEAR(fla_loss, loss, 1e-6 * loss);
    std::printf("%-26s loss %.9f, round trip rel diff %.1e, as fla's model %.1e\n", v.name, loss,
                std::abs(back_loss - loss) / loss, std::abs(fla_loss - loss) / loss);
  }
}

TEST_F(ExportTest, EqualMultipliersStayTied) {
  Variant v{"tied", ParametrizationSpec::SP, true};
  ExperimentSpec spec = SpecFor(v);
  spec.mutable_parametrization()->set_alpha_out(1.7);  // = alpha_in, m = 1
  LanguageModel model(spec, DType::kF32);
  const auto full = FullParams(model, 3);
  ASSERT_TRUE(ExportModel(spec, full, 0, Dir()).ok());
  auto file = ReadSafetensors(Dir() + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(file->Find("lm_head.weight"), nullptr);
  auto back = ImportModel(Dir());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->spec.model().tie_embeddings());
}

// muP with heads growing in size scales the recurrence by (m/dk)^1/2, which fla's layer cannot
// express: refused before anything is written. At m = 1 (and under SP) it exports.
TEST_F(ExportTest, HeadSizeGrowthUnderMupAtWidthMultiplierIsRefused) {
  for (auto kind : {ParametrizationSpec::MUP, ParametrizationSpec::SP}) {
    ExperimentSpec spec = SpecFor({"head_size", kind, false});
    spec.mutable_model()->set_head_scaling(ModelSpec::HEAD_SIZE);
    spec.mutable_model()->set_num_heads(2);
    LanguageModel model(spec, DType::kF32);
    const auto full = FullParams(model, 4);
    auto report = ExportModel(spec, full, 0, Dir());
    if (kind == ParametrizationSpec::SP) {
      EXPECT_TRUE(report.ok()) << report.status();
      continue;
    }
    ASSERT_FALSE(report.ok());
    EXPECT_NE(report.status().message().find("model.head_scaling HEAD_SIZE at width multiplier 2"),
              std::string::npos)
        << report.status();
    EXPECT_FALSE(fs::exists(Dir() + "/model.safetensors"));
  }
}

// Rewrites model.safetensors with `edit` applied to its tensors.
void Rewrite(const std::string& dir,
             const std::function<void(std::vector<std::pair<std::string, Tensor>>&)>& edit) {
  auto file = ReadSafetensors(dir + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  edit(file->tensors);
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", file->tensors, file->metadata).ok());
}

void ExpectImportError(const std::string& dir, const std::string& fragment) {
  auto r = ImportModel(dir);
  ASSERT_FALSE(r.ok()) << "expected an error containing: " << fragment;
  const std::string msg(r.status().message());
  EXPECT_NE(msg.find(fragment), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
}

TEST_F(ExportTest, BadFilesAreClearErrors) {
  const ExperimentSpec spec = SpecFor({"x", ParametrizationSpec::MUP, false});
  LanguageModel model(spec, DType::kF32);
  const auto full = FullParams(model, 1);
  const std::string weights = Dir() + "/model.safetensors";
  auto fresh = [&] { ASSERT_TRUE(ExportModel(spec, full, 0, Dir()).ok()); };

  fresh();
  fs::resize_file(weights, fs::file_size(weights) - 100);  // truncated
  ExpectImportError(Dir(), "model.safetensors: bad safetensors file");

  fresh();
  {  // the header length points past the end of the file
    std::fstream f(weights, std::ios::in | std::ios::out | std::ios::binary);
    const uint64_t huge = fs::file_size(weights) + 16;
    f.write(reinterpret_cast<const char*>(&huge), 8);
  }
  ExpectImportError(Dir(), "beyond the end of the file");

  fresh();
  Rewrite(Dir(), [](auto& t) {
    std::erase_if(t, [](const auto& e) { return e.first == "model.layers.1.attn.dt_bias"; });
  });
  ExpectImportError(Dir(), "missing tensor \"model.layers.1.attn.dt_bias\"");

  fresh();
  Rewrite(Dir(), [](auto& t) { t.emplace_back("model.layers.0.attn.q_conv1d.bias", Tensor::Zeros({24}, DType::kF32)); });
  ExpectImportError(Dir(), "unexpected tensor \"model.layers.0.attn.q_conv1d.bias\"");

  fresh();
  Rewrite(Dir(), [](auto& t) {
    for (auto& [n, x] : t)
      if (n == "model.norm.weight") x = Tensor::Zeros({31}, DType::kF32);
  });
  ExpectImportError(Dir(), "tensor \"model.norm.weight\" has shape [31]");

  fresh();
  {
    std::ofstream(Dir() + "/config.json") << R"({"hidden_size": 32, "num_hidden_layers": 2,
      "vocab_size": 40, "num_heads": 6, "head_dim": 4, "use_gate": false})";
  }
  ExpectImportError(Dir(), "use_gate false is not supported");
  {
    std::ofstream(Dir() + "/config.json") << R"({"hidden_size": 32,)";
  }
  ExpectImportError(Dir(), "config.json: not valid JSON");
  fs::remove(Dir() + "/config.json");
  ExpectImportError(Dir(), "config.json: cannot read");
}

// The layout an import checks a file against, listed without building a model, is the model's.
TEST(ParameterShapesTest, AreTheModelsParametersInOrder) {
  std::vector<ExperimentSpec> specs;
  for (const Variant& v : kVariants) specs.push_back(SpecFor(v));
  specs.push_back(SpecFor({"head_size", ParametrizationSpec::SP, false}));
  specs.back().mutable_model()->set_head_scaling(ModelSpec::HEAD_SIZE);
  specs.back().mutable_model()->set_num_heads(2);
  for (const ExperimentSpec& spec : specs) {
    LanguageModel model(spec, DType::kF32);
    std::vector<std::pair<std::string, Shape>> built;
    for (const auto& p : model.params().all()) built.emplace_back(p->name, p->global_shape);
    EXPECT_EQ(ParameterShapes(model.dims()), built) << SpecToText(spec);
  }
}

// Writes dir/config.json as the export's without its "gdn" block (a model from elsewhere), with
// `key` set to the JSON `value`.
void EditConfig(const std::string& dir, const std::string& key, const std::string& value) {
  std::ifstream in(dir + "/config.json");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string config = ss.str();
  if (const size_t gdn = config.find(",\n  \"gdn\""); gdn != std::string::npos)
    config = config.substr(0, gdn) + "\n}\n";
  const size_t at = config.find("\"" + key + "\": ");
  ASSERT_NE(at, std::string::npos) << key;
  const size_t begin = at + key.size() + 4, end = config.find_first_of(",\n", begin);
  config.replace(begin, end - begin, value);
  std::ofstream(dir + "/config.json") << config;
}

// Sizes in config.json are checked against the tensors in the file before a model of those sizes
// exists: huge ones are one-line errors at once, not an allocation failure, a hang or the OOM
// killer; numbers beyond the spec's int32 fields are refused before they become integers.
TEST_F(ExportTest, ConfigSizesAreCheckedAgainstTheFileBeforeAnythingIsAllocated) {
  const ExperimentSpec spec = SpecFor({"x", ParametrizationSpec::SP, false});
  LanguageModel model(spec, DType::kF32);
  const auto full = FullParams(model, 1);
  for (const auto& [key, value, fragment] : std::vector<std::tuple<std::string, std::string,
                                                                   std::string>>{
           {"conv_size", "1000000000",
            "tensor \"model.layers.0.attn.q_conv1d.weight\" has shape [24, 1, 4], the config "
            "needs [24, 1, 1000000000]"},
           {"vocab_size", "100000000", "tensor \"model.embeddings.weight\" has shape [40, 32]"},
           {"intermediate_size", "100000000",
            "tensor \"model.layers.0.mlp.gate_proj.weight\" has shape [64, 32]"},
           {"num_hidden_layers", "1000000",
            "config.json: num_hidden_layers is 1000000 but " + Dir() +
                "/model.safetensors holds layers 0 to 1"},
           {"num_hidden_layers", "3", "num_hidden_layers is 3 but"},
           {"hidden_size", "1e30", "\"hidden_size\" must be a whole number from 1 to 2147483647"},
           {"conv_size", "4294967300", "\"conv_size\" must be a whole number from 1 to 2147483647"},
           {"expand_v", "1e300", "expand_v must be a positive whole number"}}) {
    SCOPED_TRACE(key + " " + value);
    fs::remove_all(Dir());
    ASSERT_TRUE(ExportModel(spec, full, 0, Dir()).ok());
    EditConfig(Dir(), key, value);
    ExpectImportError(Dir(), fragment);
  }
  // fla's intermediate size from hidden_ratio when intermediate_size is absent.
  fs::remove_all(Dir());
  ASSERT_TRUE(ExportModel(spec, full, 0, Dir()).ok());
  EditConfig(Dir(), "intermediate_size", "null");
  EditConfig(Dir(), "hidden_ratio", "1e300");
  ExpectImportError(Dir(), "\"hidden_ratio\" gives an intermediate size of 2.13333e+301");
}

// An import writes only specs that `gdn train` accepts (its data files aside), before writing
// anything: the error blames --set or config.json, whichever made the spec untrainable.
TEST_F(ExportTest, ImportRefusesWhatTrainRefuses) {
  const ExperimentSpec spec = SpecFor({"x", ParametrizationSpec::SP, false});
  LanguageModel model(spec, DType::kF32);
  const auto full = FullParams(model, 1);
  const std::string from = Dir() + "/export", run = Dir() + "/run";
  ASSERT_TRUE(ExportModel(spec, full, 0, from).ok());
  auto r = ImportRun(from, run, {"optimizer.lr=-1"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "--set: optimizer.lr: must be > 0, got -1");
  EXPECT_FALSE(fs::exists(run));

  EditConfig(from, "norm_eps", "0");
  r = ImportRun(from, run, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), from + "/config.json: model.norm_eps: must be > 0, got 0");
  EXPECT_FALSE(fs::exists(run));

  // The data need not exist yet (the spec's default paths do not here).
  EditConfig(from, "norm_eps", "1e-5");
  r = ImportRun(from, run, {});
  EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(fs::exists(run + "/spec.textproto"));
}

// Decoding: feeding the sequence one token at a time through the recurrent state gives the full
// forward's logits at every position (so the next-token distribution sampled from is the full
// pass's; the full pass runs the chunked form over partial chunks), for SP and muP, tied and
// untied heads, grouped values and negative eigenvalues.
TEST(DecodeTest, StepByStepEqualsFullForward) {
  omp_set_num_threads(1);
  for (const Variant& v : kVariants) {
    SCOPED_TRACE(v.name);
    ExperimentSpec spec = SpecFor(v);
    LanguageModel model(spec, DType::kF32);
    FullParams(model, 5);
    const int64_t B = 2, T = 19, V = 40;  // T spans partial chunks of 8
    const Tensor tokens = RandomTokens(B, T, V, 13);
    const Tensor full = model.ForwardLogits(tokens).Clone();  // [B*T, V]
    LanguageModel::DecodeState state = model.NewDecodeState(B);
    Tensor step_tokens = Tensor::Empty({B}, DType::kI32);
    double worst = 0, worst_p = 0;
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t b = 0; b < B; ++b)
        step_tokens.data<int32_t>()[b] = tokens.data<int32_t>()[b * T + t];
      const Tensor logits = model.ForwardStep(step_tokens, state);
      for (int64_t b = 0; b < B; ++b) {
        const float* a = logits.data<float>() + b * V;
        const float* f = full.data<float>() + (b * T + t) * V;
        double za = 0, zf = 0, ma = a[0], mf = f[0];
        for (int64_t j = 0; j < V; ++j) ma = std::max<double>(ma, a[j]), mf = std::max<double>(mf, f[j]);
        for (int64_t j = 0; j < V; ++j) za += std::exp(a[j] - ma), zf += std::exp(f[j] - mf);
        for (int64_t j = 0; j < V; ++j) {
          worst = std::max(worst, std::abs(double(a[j]) - f[j]));
          worst_p = std::max(worst_p, std::abs(std::exp(a[j] - ma) / za - std::exp(f[j] - mf) / zf));
        }
      }
    }
    std::printf("%-26s max |logit diff| %.2e, max |p diff| %.2e\n", v.name, worst, worst_p);
    EXPECT_EQ(state.position, T);
    EXPECT_LT(worst, 2e-5) << "max |logit difference|";
    EXPECT_LT(worst_p, 1e-6) << "max |next-token probability difference|";
  }
}

// Sampling: greedy is the argmax; with a temperature the draws follow softmax(logits / T) over the
// top-k tokens and never leave them.
TEST(SampleTest, TokenDrawsFollowTheTemperedTopKSoftmax) {
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 1.5f, 0.0f, 1.9f};
  Rng rng(1, 2);
  EXPECT_EQ(SampleToken(logits.data(), 6, 0.0, 0, rng), 1);
  for (int64_t top_k : {0, 3}) {
    SCOPED_TRACE(top_k);
    const double temperature = 0.7;
    const int kDraws = 200000;
    std::vector<int> counts(6, 0);
    for (int i = 0; i < kDraws; ++i) ++counts[SampleToken(logits.data(), 6, temperature, top_k, rng)];
    std::vector<double> want(6, 0.0);
    double z = 0;
    for (int j = 0; j < 6; ++j) {
      const bool kept = top_k == 0 || j == 1 || j == 5 || j == 3;  // the 3 largest logits
      if (kept) z += want[j] = std::exp(logits[j] / temperature);
    }
    for (int j = 0; j < 6; ++j) {
      want[j] /= z;
      if (want[j] == 0) EXPECT_EQ(counts[j], 0) << "token " << j << " is outside the top k";
      // 5 standard deviations of a binomial proportion.
      EXPECT_NEAR(counts[j] / double(kDraws), want[j], 5 * std::sqrt(want[j] * (1 - want[j]) / kDraws) + 1e-9)
          << "token " << j;
    }
  }
}

}  // namespace
}  // namespace gdn
