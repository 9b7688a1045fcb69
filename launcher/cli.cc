#include "launcher/cli.h"

#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace gdn {

std::string Command::Usage() const {
  std::ostringstream os;
  os << "usage: gdn " << name << " [flags]\n\n" << summary << "\n\nflags:\n";
  for (const Flag& f : flags) {
    os << "  --" << f.name << (f.boolean ? "" : " VALUE");
    os << "\n      " << f.help;
    if (f.required) os << " (required)";
    if (!f.default_value.empty()) os << " (default: " << f.default_value << ")";
    if (f.repeated) os << " (repeatable)";
    os << "\n";
  }
  return os.str();
}

absl::StatusOr<ParsedArgs> ParsedArgs::Parse(const Command& command,
                                             const std::vector<std::string>& args) {
  ParsedArgs parsed;
  parsed.command_ = command.name;
  const std::string where = "gdn " + command.name;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    if (arg == "--help" || arg == "-h") {
      parsed.help_ = true;
      return parsed;
    }
    if (arg.rfind("--", 0) != 0)
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": unexpected argument '", arg, "' (see ", where, " --help)"));
    arg = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (const size_t eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    const Flag* flag = nullptr;
    for (const Flag& f : command.flags)
      if (f.name == arg) flag = &f;
    if (!flag)
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": unknown flag --", arg, " (see ", where, " --help)"));
    if (flag->boolean) {
      value = has_value ? value : "true";
    } else if (!has_value) {
      if (i + 1 >= args.size())
        return absl::InvalidArgumentError(absl::StrCat(where, ": --", arg, " needs a value"));
      value = args[++i];
    }
    auto& slot = parsed.values_[flag->name];
    if (!flag->repeated && !slot.empty())
      return absl::InvalidArgumentError(absl::StrCat(where, ": --", arg, " given twice"));
    slot.push_back(value);
  }
  for (const Flag& f : command.flags) {
    auto& slot = parsed.values_[f.name];
    if (slot.empty() && f.required)
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": --", f.name, " is required (see ", where, " --help)"));
    if (slot.empty() && !f.default_value.empty()) slot.push_back(f.default_value);
  }
  return parsed;
}

const std::string& ParsedArgs::Get(const std::string& name) const {
  static const std::string kEmpty;
  auto it = values_.find(name);
  return it == values_.end() || it->second.empty() ? kEmpty : it->second.front();
}

const std::vector<std::string>& ParsedArgs::GetAll(const std::string& name) const {
  static const std::vector<std::string> kNone;
  auto it = values_.find(name);
  return it == values_.end() ? kNone : it->second;
}

bool ParsedArgs::GetBool(const std::string& name) const {
  const std::string& v = Get(name);
  return v == "true" || v == "1" || v == "yes";
}

absl::StatusOr<int64_t> ParsedArgs::GetInt(const std::string& name) const {
  int64_t v = 0;
  if (!absl::SimpleAtoi(Get(name), &v))
    return absl::InvalidArgumentError(
        absl::StrCat("gdn ", command_, ": --", name, ": not an integer: '", Get(name), "'"));
  return v;
}

}  // namespace gdn
