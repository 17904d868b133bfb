#!/usr/bin/env bash
# The checks to run on a GPU machine, in one go, in under 7 minutes:
#   (a) nvidia-smi and the versions of the libraries;
#   (b) the test suite, without the slow group, on 8 workers;
#   (c) python -m benchmarks.attention_kernels: the attention kernel each implementation
#       compiles to (cuDNN's fused call or not), its compile and step time;
#   (d) python -m benchmarks.run: the six default workloads with the GPU defaults;
#   (e) python -m benchmarks.run --workloads lm: jnn, hand-written JAX and PyTorch.
# Run from anywhere: bash benchmarks/gpu_check.sh. Logs, results (gpu.json/.md and
# gpu-lm.json/.md) and a summary go to ${OUT:-benchmarks/results/gpu}. Each step has its
# own timeout, and later steps keep a minimum of time: the steps' limits shrink when the
# ones before them ran long, so the whole script ends within GPU_CHECK_SECONDS (405 s).
# A failing step is recorded and the next one runs; the exit status is 1 if any failed.
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python}"
TOTAL="${GPU_CHECK_SECONDS:-405}"
# The test workers share one GPU: none may reserve most of its memory at start.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
START=$SECONDS
SUMMARY=()
FAILED=0

left() { echo $((TOTAL - (SECONDS - START))); }
smaller() { if (($1 < $2)); then echo "$1"; else echo "$2"; fi; }
larger() { if (($1 > $2)); then echo "$1"; else echo "$2"; fi; }

# step NAME LIMIT LOG COMMAND...: run COMMAND for at most LIMIT seconds, output to LOG.
step() {
  local name=$1 limit=$2 log="$OUT_DIR/$3"
  shift 3
  if ((limit < 20)); then
    SUMMARY+=("$(printf '%-12s skipped (only %ss left)' "$name" "$limit")")
    FAILED=1
    return
  fi
  echo "== $name: timeout ${limit}s, log $log"
  echo "+ $*" >"$log"
  local began=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  local took=$((SECONDS - began)) verdict="ok"
  if ((rc == 124 || rc == 137)); then verdict="TIMED OUT"; elif ((rc != 0)); then verdict="FAILED"; fi
  ((rc == 0)) || FAILED=1
  echo "$rc" >"$log.rc"
  SUMMARY+=("$(printf '%-12s %-9s exit %-3s %4ss' "$name" "$verdict" "$rc" "$took")")
  tail -n 15 "$log"
}

# (a) the machine and the versions.
{
  timeout 60 nvidia-smi
  timeout 120 "$PY" - <<'EOF'
import importlib.metadata as md
import jax
names = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin",
         "jax-cuda13-pjrt", "flax", "equinox",
         "optax", "chex", "torch", "numpy", "pytest")
for name in names:
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} not installed")
print("jax devices:", jax.devices())
try:
    import torch
    print("torch cuda:", torch.cuda.is_available(), torch.version.cuda,
          "cudnn", torch.backends.cudnn.version())
except ImportError:
    pass
EOF
} >"$OUT_DIR/versions.log" 2>&1
echo "== versions: $OUT_DIR/versions.log"
cat "$OUT_DIR/versions.log"
if ! "$PY" -c "import jnn" >/dev/null 2>&1; then
  echo "jnn not importable from the repository root: pip install -e . --no-deps"
  "$PY" -m pip install -q -e . --no-deps --no-build-isolation
fi

# (b) the tests: at most 240 s, leaving 60 s for (c), 90 s for (d) and 110 s for (e)
# (with the default 405 s in all, that caps the tests at about 145 s).
limit=$(smaller 240 $(($(left) - 260)))
step "tests" "$limit" tests.log \
  "$PY" -m pytest -n 8 -q -m 'not slow' -p no:cacheprovider

# (c) which attention kernel the LM step compiles to, per implementation (None, "xla",
# "cudnn"), each in its own process with a time limit: a hang is reported, not waited on.
limit=$(smaller 60 $(($(left) - 200)))
step "kernels" "$limit" kernels.log \
  "$PY" -m benchmarks.attention_kernels --timeout $(((limit - 10) / 3)) \
  --output "$OUT_DIR/attention_kernels.json"

# (d) the default workloads, GPU defaults; the time budget (90 s by default) is cut when
# less time is left, so that compilation (outside the budget's control) still fits.
limit=$(smaller 150 $(($(left) - 110)))
budget=$(larger 20 "$(smaller 90 $((limit - 60)))")
step "benchmarks" "$limit" benchmarks.log \
  "$PY" -m benchmarks.run --budget-seconds "$budget" --output "$OUT_DIR"

# (e) the language model: jnn, hand-written JAX and PyTorch (gpt2-small on a GPU).
limit=$(smaller 150 $(($(left) - 5)))
budget=$(larger 20 "$(smaller 90 $((limit - 60)))")
step "lm" "$limit" lm.log \
  "$PY" -m benchmarks.run --workloads lm --impls jnn jax torch \
  --budget-seconds "$budget" --output "$OUT_DIR"

{
  echo "== summary ($((SECONDS - START)) s in all; logs and results in $OUT_DIR)"
  printf '%s\n' "${SUMMARY[@]}"
  echo "tests: $(grep -E '(passed|failed|error)' "$OUT_DIR/tests.log" 2>/dev/null | tail -n 1)"
  grep -E '^\|' "$OUT_DIR/kernels.log" 2>/dev/null
  for log in benchmarks lm; do
    [ -f "$OUT_DIR/$log.log" ] && grep -E '^(\*\*|\| (jnn|jax|torch|flax|equinox))' "$OUT_DIR/$log.log"
  done
} | tee "$OUT_DIR/summary.txt"
exit "$FAILED"
