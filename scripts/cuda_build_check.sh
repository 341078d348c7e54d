#!/usr/bin/env bash
# Compile, link and import the CUDA build of the culnig ops (csrc/cuda/attribution_cuda.cu included),
# on a machine with nvcc but no GPU needed.
#
#   scripts/cuda_build_check.sh [VENV_DIR]      (default: .venv-cuda-check in the repo, gitignored)
#
# 1. creates VENV_DIR (if missing) and installs torch==2.14.1 (the CUDA 13.0 build, ~5 GB) + ninja,
#    setuptools, wheel, numpy with plain pip;
# 2. builds culnig_ext._C as a CUDAExtension with CUDA_HOME=/usr/local/cuda and
#    TORCH_CUDA_ARCH_LIST="8.0;9.0" into a temporary folder (the repo's own in-place _C is not touched);
# 3. imports the built module with that torch and checks that both ops have CPU and CUDA kernels;
# 4. compiles csrc/cuda/attribution_cuda.cu alone for sm_90 with `nvcc -Xptxas -v` and prints each kernel's
#    registers and spill bytes (fails if a step-1 max_kernel spills);
# 5. runs the JIT path a pure `pip install` takes on first use (`python -m culnig_ext.kernels.build`) with that torch and
#    TORCH_CUDA_ARCH_LIST unset: with no GPU here it must fall back to the documented default architectures
#    (8.0;9.0;10.0) instead of crashing, and build the CUDA kernels into a temporary extensions folder.
# Exits non-zero if any step fails. Environment: PYTHON (interpreter for the venv, default python3.11),
# CUDA_HOME, TORCH_CUDA_ARCH_LIST, MAX_JOBS override the defaults.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.venv-cuda-check}"
PYTHON="${PYTHON:-python3.11}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export MAX_JOBS="${MAX_JOBS:-2}"
start=$SECONDS

if [[ ! -x "$CUDA_HOME/bin/nvcc" ]]; then
  echo "cuda_build_check: no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)" >&2
  exit 2
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "== creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "== installing torch==2.14.1 (CUDA build) + build tools into $VENV"
"$VENV/bin/python" -m pip install -q torch==2.14.1 ninja setuptools wheel numpy
"$VENV/bin/python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
"$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'torch in $VENV is not a CUDA build')"
"$CUDA_HOME/bin/nvcc" --version | tail -n 2
echo "== pip step done after $((SECONDS - start)) s"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/culnig-cuda-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# Build from a copy so the check leaves no build/ or .so in the repo.
mkdir -p "$WORK/src"
cp -r "$REPO/setup.py" "$REPO/pyproject.toml" "$REPO/csrc" "$REPO/culnig_ext" "$WORK/src/"
find "$WORK/src/culnig_ext" -name '_C*.so' -delete
echo "== building the CUDAExtension (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)"
build_start=$SECONDS
(cd "$WORK/src" && CULNIG_AOT=1 "$VENV/bin/python" setup.py -q build_ext \
   --build-lib "$WORK/lib" --build-temp "$WORK/tmp")
echo "== build took $((SECONDS - build_start)) s"

so="$(ls "$WORK"/lib/culnig_ext/_C*.so)"
echo "== built $so"
# The object of the .cu file must be in the link: look for the CUDA kernels' symbols. (nm goes to a
# file first: `nm | grep -q` can fail under pipefail when grep exits early and nm gets SIGPIPE.)
nm -C "$so" > "$WORK/symbols.txt"
if ! grep -q "max_kernel" "$WORK/symbols.txt" || ! grep -q "accumulate_kernel" "$WORK/symbols.txt"; then
  echo "cuda_build_check: $so has no CUDA kernels (was a CppExtension built?)" >&2
  exit 1
fi

echo "== importing the built module"
# Load the module by path (importing the culnig_ext package would pull in its other dependencies).
"$VENV/bin/python" - "$so" <<'EOF'
import importlib.util, sys
import torch
spec = importlib.util.spec_from_file_location("_C", sys.argv[1])
C = importlib.util.module_from_spec(spec)  # runs PyInit__C; TORCH_LIBRARY registers torch.ops.culnig.*
spec.loader.exec_module(C)
has = torch._C._dispatch_has_kernel_for_dispatch_key
for op in ("culnig::max_attribution", "culnig::max_attribution_accumulate_"):
    for key in ("CPU", "CUDA"):
        assert has(op, key), f"{op} has no {key} kernel"
print("imported", C.__file__)
print("CPU and CUDA kernels registered for both ops; torch.cuda.is_available() =", torch.cuda.is_available())
# The CPU kernel of this build runs here; check one value against plain torch.
act = torch.randn(2, 3, 5); grad = torch.randn(2, 3, 5); mask = torch.ones(2, 3, dtype=torch.bool)
got = torch.ops.culnig.max_attribution(act, grad, mask)
torch.testing.assert_close(got, (act * grad).amax(1), rtol=0, atol=0)
if torch.cuda.is_available():
    a, g, m = act.cuda(), grad.cuda(), mask.cuda()
    torch.testing.assert_close(torch.ops.culnig.max_attribution(a, g, m).cpu(), got, rtol=0, atol=0)
    print("CUDA kernel ran and matched the CPU kernel")
else:
    print("no GPU here: the CUDA kernels were compiled, linked and registered but not run")
EOF

echo "== ptxas -v, sm_90: registers and spills per kernel"
TORCH_INC="$("$VENV/bin/python" -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'include'))")"
PY_INC="$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")"
"$CUDA_HOME/bin/nvcc" -c "$WORK/src/csrc/cuda/attribution_cuda.cu" -o "$WORK/ptxas.o" -arch=sm_90 -O3 -std=c++20 \
  -I"$TORCH_INC" -I"$TORCH_INC/torch/csrc/api/include" -I"$PY_INC" --expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__ \
  -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ -Xptxas -v \
  > "$WORK/ptxas.txt" 2>&1 || { cat "$WORK/ptxas.txt" >&2; exit 1; }  # (defines as torch.utils.cpp_extension's)
"$VENV/bin/python" - "$WORK/ptxas.txt" <<'PTXAS'
import re, subprocess, sys
kernel, spills, bad = None, (0, 0), []
for line in open(sys.argv[1]):
    m = re.search(r"Compiling entry function '(\S+)'", line)
    if m:
        name = subprocess.run(["c++filt", m.group(1)], capture_output=True, text=True).stdout.strip() or m.group(1)
        kernel = re.sub(r"\(.*", "", name.replace("culnig::(anonymous namespace)::", "").replace("c10::", ""))
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m:
        spills = (int(m.group(1)), int(m.group(2)))
    m = re.search(r"Used (\d+) registers", line)
    if m and kernel:
        print(f"{kernel}: {m.group(1)} registers, spill stores/loads {spills[0]}/{spills[1]} bytes")
        if "max_kernel" in kernel and any(spills):
            bad.append(kernel)
        kernel = None
sys.exit(f"cuda_build_check: step-1 kernels spill: {bad}" if bad else 0)
PTXAS

echo "== JIT build as on first use (python -m culnig_ext.kernels.build), TORCH_CUDA_ARCH_LIST unset"
jit_start=$SECONDS
# Only torch and ninja are needed for the build step; the package is imported from the copy.
(cd "$WORK" && env -u TORCH_CUDA_ARCH_LIST TORCH_EXTENSIONS_DIR="$WORK/ext" PYTHONPATH="$WORK/src" \
   "$VENV/bin/python" -m culnig_ext.kernels.build | tee "$WORK/jit.txt")
if ! grep -q "CUDA kernels: yes" "$WORK/jit.txt"; then
  echo "cuda_build_check: the JIT build has no CUDA kernels" >&2
  exit 1
fi
gpus=$("$VENV/bin/python" -c "import torch; print(torch.cuda.device_count())")
# (With GPUs present the build targets theirs instead; the default list applies only without one.)
if [[ "$gpus" == "0" && -z "$(ls -d "$WORK"/ext/culnig_*_sm80_90_100 2>/dev/null)" ]]; then
  echo "cuda_build_check: the JIT build did not use the default architectures 8.0;9.0;10.0: $(ls "$WORK/ext")" >&2
  exit 1
fi
echo "== JIT build took $((SECONDS - jit_start)) s"
echo "== cuda_build_check OK in $((SECONDS - start)) s"
