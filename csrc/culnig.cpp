// Op schemas of the `culnig` library and the input checks shared by the CPU and CUDA backends.
//
// The words of every refusal live in csrc/messages.def (also read by culnig_ext/ops_reference.py), so
// every backend refuses the same inputs with the same exception type and text. Python sees:
//   TypeError  for a wrong dtype,  ValueError for a wrong shape / device / empty token mask,
//   IndexError for a group or token index out of range.
#include <Python.h>

#include <ATen/ATen.h>
#include <torch/library.h>

#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "attribution.h"
#include "cpu/attribution_cpu.h"
#include "launch_plan.h"

// A dummy `_C` Python module: `import culnig_ext._C` (the ahead-of-time build) loads this shared
// library, whose TORCH_LIBRARY static initialisers register the ops. The JIT build loads the same
// library with torch.ops.load_library and never calls this. (Pattern from pytorch/extension-cpp.)
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",                                                   // name
      "culnig fused attribution ops (registers torch.ops.culnig.*)",  // doc
      -1,                                                     // no per-interpreter state
      nullptr,                                                // no methods
  };
  return PyModule_Create(&module_def);
}
}

namespace culnig {
namespace {

enum class Msg {
#define CULNIG_MESSAGE(key, exc, text) key,
#include "messages.def"
#undef CULNIG_MESSAGE
};
enum class Exc { ValueError, TypeError, IndexError };
constexpr const char* kText[] = {
#define CULNIG_MESSAGE(key, exc, text) text,
#include "messages.def"
#undef CULNIG_MESSAGE
};
constexpr Exc kExc[] = {
#define CULNIG_MESSAGE(key, exc, text) Exc::exc,
#include "messages.def"
#undef CULNIG_MESSAGE
};

template <typename T>
std::string str(const T& v) {
  std::ostringstream o;
  o << v;
  return o.str();
}

// Throws the message `m` of messages.def, prefixed with the op, its {} filled with `args` in order.
[[noreturn]] void fail(const char* op, Msg m, std::initializer_list<std::string> args) {
  std::string text = std::string(op) + ": ";
  const std::string tmpl = kText[static_cast<int>(m)];
  auto arg = args.begin();
  for (size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl.compare(i, 2, "{}") == 0 && arg != args.end()) {
      text += *arg++;
      ++i;
    } else {
      text += tmpl[i];
    }
  }
  switch (kExc[static_cast<int>(m)]) {
    case Exc::TypeError: TORCH_CHECK_TYPE(false, text);
    case Exc::IndexError: TORCH_CHECK_INDEX(false, text);
    default: TORCH_CHECK_VALUE(false, text);
  }
  TORCH_CHECK(false, text);  // not reached
}

// Python-style dtype names, so C++ and reference messages read the same ("float32", not "Float").
std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kBool: return "bool";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    default: return c10::toString(t);
  }
}

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& act) {
  if (t.device() != act.device()) fail(op, Msg::device, {name, act.device().str(), t.device().str()});
}

void check_structure(const char* op, const at::Tensor& act, const at::Tensor& grad,
                     const at::Tensor& token_mask) {
  if (act.dim() != 3) fail(op, Msg::act_dim, {shape_str(act.sizes())});
  const auto st = act.scalar_type();
  if (!(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf || st == at::kDouble)) {
    fail(op, Msg::act_dtype, {dtype_name(st)});
  }
  check_same_device(op, "grad", grad, act);
  if (grad.scalar_type() != st) fail(op, Msg::grad_dtype, {dtype_name(st), dtype_name(grad.scalar_type())});
  if (grad.sizes() != act.sizes()) fail(op, Msg::grad_shape, {shape_str(act.sizes()), shape_str(grad.sizes())});
  check_same_device(op, "token_mask", token_mask, act);
  if (token_mask.scalar_type() != at::kBool) fail(op, Msg::mask_dtype, {dtype_name(token_mask.scalar_type())});
  if (!(token_mask.dim() == 2 && token_mask.size(0) == act.size(0) && token_mask.size(1) == act.size(1))) {
    fail(op, Msg::mask_shape, {str(act.size(0)), str(act.size(1)), shape_str(token_mask.sizes())});
  }
}

void check_list_structure(const char* op, const at::Tensor& act, const TokenList& tokens) {
  if (tokens.index.has_value() != tokens.count.has_value()) {
    fail(op, Msg::list_pair, {tokens.index.has_value() ? "token_index" : "token_count"});
  }
  if (!tokens.given()) return;
  const at::Tensor& index = *tokens.index;
  const at::Tensor& count = *tokens.count;
  const int64_t B = act.size(0), T = act.size(1);
  check_same_device(op, "token_index", index, act);
  if (index.scalar_type() != at::kInt) fail(op, Msg::index_dtype, {dtype_name(index.scalar_type())});
  if (!(index.dim() == 2 && index.size(0) == B && index.size(1) == T)) {
    fail(op, Msg::index_shape, {str(B), str(T), shape_str(index.sizes())});
  }
  check_same_device(op, "token_count", count, act);
  if (count.scalar_type() != at::kInt) fail(op, Msg::count_dtype, {dtype_name(count.scalar_type())});
  if (!(count.dim() == 1 && count.size(0) == B)) fail(op, Msg::count_shape, {str(B), shape_str(count.sizes())});
}

// Value checks read on the host. On the CPU the data is read in place (no copy, no dispatcher call); on
// CUDA (only without a token list) one small device->host copy of the mask and group: the price of
// refusing bad input before acc is touched on the old call signature.
void check_values(const char* op, const at::Tensor& act, const at::Tensor& token_mask, const TokenList& tokens,
                  const at::Tensor* group, int64_t G) {
  const int64_t B = act.size(0), T = act.size(1);
  if (B == 0) return;
  const bool on_cpu = act.device().is_cpu();
  if (tokens.given()) {
    if (!on_cpu) return;  // CUDA: device-side asserts in the kernels (no sync)
    const at::Tensor count = tokens.count->contiguous();
    const at::Tensor index = tokens.index->contiguous();
    const int32_t* c = count.const_data_ptr<int32_t>();
    const int32_t* ix = index.const_data_ptr<int32_t>();
    for (int64_t b = 0; b < B; ++b) {
      if (c[b] < 1 || c[b] > T) fail(op, Msg::count_range, {str(b), str(c[b]), str(T)});
      for (int64_t k = 0; k < c[b]; ++k) {
        const int32_t t = ix[b * T + k];
        if (t < 0 || t >= T) fail(op, Msg::index_range, {str(b), str(k), str(t), str(T)});
      }
    }
  } else {
    const at::Tensor mask = on_cpu ? token_mask.contiguous() : token_mask.cpu().contiguous();  // sync on CUDA
    const bool* m = mask.const_data_ptr<bool>();
    for (int64_t b = 0; b < B; ++b) {
      bool any = false;
      for (int64_t t = 0; t < T && !any; ++t) any = m[b * T + t];
      if (!any) fail(op, Msg::mask_empty_row, {str(b), str(b)});
    }
  }
  if (group != nullptr) {
    const at::Tensor g = on_cpu ? group->contiguous() : group->cpu().contiguous();
    const int64_t* gp = g.const_data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      if (gp[b] < 0 || gp[b] >= G) fail(op, Msg::group_range, {str(b), str(gp[b]), str(G)});
    }
  }
}

}  // namespace

void check_attribution_inputs(const char* op, const at::Tensor& act, const at::Tensor& grad,
                              const at::Tensor& token_mask, const TokenList& tokens) {
  check_structure(op, act, grad, token_mask);
  check_list_structure(op, act, tokens);
  check_values(op, act, token_mask, tokens, nullptr, 0);
}

void check_accumulate_inputs(const at::Tensor& acc, const at::Tensor& act, const at::Tensor& grad,
                             const at::Tensor& token_mask, const at::Tensor& weight, const at::Tensor& group,
                             const TokenList& tokens) {
  const char* op = "culnig.max_attribution_accumulate_";
  // Structural checks of act/grad/mask first, then acc/weight/group and the token list, then the value
  // checks (which need the data): a caller sees the most basic problem first. Nothing is written before
  // all pass.
  check_structure(op, act, grad, token_mask);
  const int64_t B = act.size(0);
  const int64_t N = act.size(2);
  check_same_device(op, "acc", acc, act);
  if (acc.scalar_type() != at::kDouble) fail(op, Msg::acc_dtype, {dtype_name(acc.scalar_type())});
  if (!(acc.dim() == 2 && acc.size(1) == N)) fail(op, Msg::acc_shape, {str(N), shape_str(acc.sizes())});
  check_same_device(op, "weight", weight, act);
  if (weight.scalar_type() != at::kFloat) fail(op, Msg::weight_dtype, {dtype_name(weight.scalar_type())});
  if (!(weight.dim() == 1 && weight.size(0) == B)) fail(op, Msg::weight_shape, {str(B), shape_str(weight.sizes())});
  check_same_device(op, "group", group, act);
  if (group.scalar_type() != at::kLong) fail(op, Msg::group_dtype, {dtype_name(group.scalar_type())});
  if (!(group.dim() == 1 && group.size(0) == B)) fail(op, Msg::group_shape, {str(B), shape_str(group.sizes())});
  check_list_structure(op, act, tokens);
  check_values(op, act, token_mask, tokens, &group, acc.size(0));
}

std::vector<int64_t> launch_plan(int64_t B, int64_t T, int64_t N, int64_t vec, int64_t sms) {
  const char* op = "culnig.launch_plan";
  const std::pair<const char*, int64_t> sizes[] = {{"B", B}, {"T", T}, {"N", N}, {"sms", sms}};
  for (const auto& [name, value] : sizes) {
    TORCH_CHECK_VALUE(value >= 1, op, ": ", name, " must be >= 1, got ", value);
  }
  TORCH_CHECK_VALUE(vec == 1 || vec == 2 || vec == 4 || vec == 8, op, ": vec must be 1, 2, 4 or 8, got ", vec);
  const LaunchPlan p = plan_launch(B, T, N, vec, sms);
  return {p.threads, p.blocks_x, p.blocks_y, p.splits};
}

at::Tensor unit_stride_last_dim(const at::Tensor& t) {
  if (t.size(2) <= 1 || t.stride(2) == 1) return t;
  return t.contiguous();
}

}  // namespace culnig

TORCH_LIBRARY(culnig, m) {
  // act, grad: [B, T, N] float32/bfloat16/float16/float64 (last-dim stride 1 read in place);
  // token_mask: [B, T] bool; token_index [B, T] int32 + token_count [B] int32: the batch's compact token
  // list (culnig_ext.ops.token_list), optional; when given it is read instead of the mask's values and no
  // check needs the device's data (no host sync). Returns [B, N] float32 (float64 for float64 input).
  m.def(
      "max_attribution(Tensor act, Tensor grad, Tensor token_mask, Tensor? token_index=None, "
      "Tensor? token_count=None) -> Tensor");
  // acc: [G, N] float64, updated in place; weight: [B] float32; group: [B] int64.
  m.def(
      "max_attribution_accumulate_(Tensor(a!) acc, Tensor act, Tensor grad, Tensor token_mask, "
      "Tensor weight, Tensor group, float? clamp_min=None, Tensor? token_index=None, "
      "Tensor? token_count=None) -> ()");
  // The CPU kernel variant in use ("default", "avx2" or "avx512") and, for tests and benchmarks, a way to
  // switch it (csrc/cpu/attribution_cpu.cpp). CULNIG_CPU_CAPABILITY sets the initial choice.
  // The CUDA backend's grid for B samples, T positions, N neurons, vec neurons per thread and sms SMs
  // (csrc/launch_plan.h): [threads per block, blocks along N, blocks along B, token splits]. Host-only
  // arithmetic, callable on any build, for the CPU tests of the plan.
  m.def("launch_plan(int B, int T, int N, int vec, int sms) -> int[]", &culnig::launch_plan);
  m.def("cpu_capability() -> str", &culnig::cpu::capability);
  m.def("cpu_capabilities() -> str[]", &culnig::cpu::capabilities);
  m.def("set_cpu_capability(str name) -> ()", &culnig::cpu::set_capability);
}
