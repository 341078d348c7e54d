// Op schemas of the `culnig` library and the input checks shared by the CPU and CUDA backends.
//
// The messages here are mirrored word for word by culnig_ext/ops_reference.py so that every backend
// refuses the same inputs with the same exception type and text. Python sees:
//   TypeError  for a wrong dtype,  ValueError for a wrong shape / device / empty token mask,
//   IndexError for a group index out of range.
#include <Python.h>

#include <ATen/ATen.h>
#include <torch/library.h>

#include <sstream>
#include <string>

#include "attribution.h"

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
  TORCH_CHECK_VALUE(t.device() == act.device(), op, ": ", name, " must be on act's device ",
                    act.device().str(), ", got ", t.device().str());
}

// The per-sample value checks need the mask (and group) values. On CUDA this costs one small
// device->host copy (and thus one sync) per call: the price of refusing bad input before acc is
// touched.
void check_mask_has_tokens(const char* op, const at::Tensor& token_mask) {
  if (token_mask.size(0) == 0) return;
  at::Tensor empty_rows = token_mask.any(1).logical_not();
  at::Tensor first = empty_rows.nonzero();  // [k, 1], device->host sync on CUDA
  if (first.size(0) > 0) {
    const int64_t b = first[0][0].item<int64_t>();
    TORCH_CHECK_VALUE(false, op, ": token_mask[", b, "] has no true token: sample ", b,
                      " has nothing to take a maximum over");
  }
}

void check_structure(const char* op, const at::Tensor& act, const at::Tensor& grad,
                     const at::Tensor& token_mask) {
  TORCH_CHECK_VALUE(act.dim() == 3, op, ": act must be a 3-D tensor [B, T, N], got shape ",
                    shape_str(act.sizes()));
  const auto st = act.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf || st == at::kDouble,
                   op, ": act dtype must be one of float32, bfloat16, float16, float64, got ",
                   dtype_name(st));
  check_same_device(op, "grad", grad, act);
  TORCH_CHECK_TYPE(grad.scalar_type() == st, op, ": grad dtype must equal act dtype ", dtype_name(st),
                   ", got ", dtype_name(grad.scalar_type()));
  TORCH_CHECK_VALUE(grad.sizes() == act.sizes(), op, ": grad must have the same shape as act ",
                    shape_str(act.sizes()), ", got ", shape_str(grad.sizes()));
  check_same_device(op, "token_mask", token_mask, act);
  TORCH_CHECK_TYPE(token_mask.scalar_type() == at::kBool, op, ": token_mask must be a bool tensor, got ",
                   dtype_name(token_mask.scalar_type()));
  TORCH_CHECK_VALUE(token_mask.dim() == 2 && token_mask.size(0) == act.size(0) &&
                        token_mask.size(1) == act.size(1),
                    op, ": token_mask must have shape [B, T] = [", act.size(0), ", ", act.size(1),
                    "], got ", shape_str(token_mask.sizes()));
}

}  // namespace

void check_attribution_inputs(const char* op, const at::Tensor& act, const at::Tensor& grad,
                              const at::Tensor& token_mask) {
  check_structure(op, act, grad, token_mask);
  check_mask_has_tokens(op, token_mask);
}

void check_accumulate_inputs(const at::Tensor& acc, const at::Tensor& act, const at::Tensor& grad,
                             const at::Tensor& token_mask, const at::Tensor& weight,
                             const at::Tensor& group) {
  const char* op = "culnig.max_attribution_accumulate_";
  // Structural checks of act/grad/mask first, then acc/weight/group, then the value checks (which
  // need the data): a caller sees the most basic problem first. Nothing is written before all pass.
  check_structure(op, act, grad, token_mask);
  const int64_t B = act.size(0);
  const int64_t N = act.size(2);
  check_same_device(op, "acc", acc, act);
  TORCH_CHECK_TYPE(acc.scalar_type() == at::kDouble, op, ": acc must be float64, got ",
                   dtype_name(acc.scalar_type()));
  TORCH_CHECK_VALUE(acc.dim() == 2 && acc.size(1) == N, op, ": acc must be a 2-D tensor [G, N] with N = ",
                    N, ", got shape ", shape_str(acc.sizes()));
  check_same_device(op, "weight", weight, act);
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kFloat, op, ": weight must be float32, got ",
                   dtype_name(weight.scalar_type()));
  TORCH_CHECK_VALUE(weight.dim() == 1 && weight.size(0) == B, op, ": weight must have shape [B] = [", B,
                    "], got ", shape_str(weight.sizes()));
  check_same_device(op, "group", group, act);
  TORCH_CHECK_TYPE(group.scalar_type() == at::kLong, op, ": group must be int64, got ",
                   dtype_name(group.scalar_type()));
  TORCH_CHECK_VALUE(group.dim() == 1 && group.size(0) == B, op, ": group must have shape [B] = [", B,
                    "], got ", shape_str(group.sizes()));
  if (B == 0) return;
  // Both value checks in one small device->host copy (one sync on CUDA); details only on failure.
  const int64_t G = acc.size(0);
  const at::Tensor flags =
      at::stack({token_mask.any(1).logical_not().any(), at::logical_or(group < 0, group >= G).any()}).cpu();
  const bool* failed = flags.const_data_ptr<bool>();
  if (failed[0]) check_mask_has_tokens(op, token_mask);  // throws, naming the sample
  if (failed[1]) {
    const at::Tensor bad = at::logical_or(group < 0, group >= G).nonzero();
    const int64_t b = bad[0][0].item<int64_t>();
    const int64_t g = group[b].item<int64_t>();
    TORCH_CHECK_INDEX(false, op, ": group[", b, "] = ", g, " is out of range for acc with ", G, " rows");
  }
}

at::Tensor unit_stride_last_dim(const at::Tensor& t) {
  if (t.size(2) <= 1 || t.stride(2) == 1) return t;
  return t.contiguous();
}

}  // namespace culnig

TORCH_LIBRARY(culnig, m) {
  // act, grad: [B, T, N] float32/bfloat16/float16/float64 (last-dim stride 1 read in place);
  // token_mask: [B, T] bool. Returns [B, N] float32 (float64 for float64 input).
  m.def("max_attribution(Tensor act, Tensor grad, Tensor token_mask) -> Tensor");
  // acc: [G, N] float64, updated in place; weight: [B] float32; group: [B] int64.
  m.def(
      "max_attribution_accumulate_(Tensor(a!) acc, Tensor act, Tensor grad, Tensor token_mask, "
      "Tensor weight, Tensor group, float? clamp_min=None) -> ()");
}
