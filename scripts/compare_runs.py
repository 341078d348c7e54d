"""Compare two culnig run folders (e.g. before and after a refactor, same options): every score table (tensors bit
for bit and metadata), neuron set, evaluation record, results.json (timings left out), report.md (timing lines left
out) and figure. Prints one line per file and the number of differences.

    python scripts/compare_runs.py RUN_BEFORE RUN_AFTER
"""
import json, re, sys
from pathlib import Path
from safetensors.torch import load_file
from safetensors import safe_open

a, b = Path(sys.argv[1]), Path(sys.argv[2])
files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
print("files only in old:", sorted(set(files_a) - set(files_b)))
print("files only in new:", sorted(set(files_b) - set(files_a)))
TIMING = re.compile(r"time_|seconds")
diffs = 0
for rel in files_a:
    if rel not in files_b:
        continue
    pa, pb = a / rel, b / rel
    if rel.suffix == ".safetensors":
        ta, tb = load_file(pa), load_file(pb)
        same = ta.keys() == tb.keys() and all((ta[k] == tb[k]).all() for k in ta)
        with safe_open(pa, "pt") as fa, safe_open(pb, "pt") as fb:
            ma, mb = fa.metadata(), fb.metadata()
        meta_same = ma == mb
        if not (same and meta_same):
            diffs += 1
            print("DIFF", rel, "tensors equal:", same, "metadata diff:",
                  {k: (ma.get(k), mb.get(k)) for k in set(ma) | set(mb) if ma.get(k) != mb.get(k)})
        else:
            print("same", rel, f"({len(ta)} tensors, bit-identical)")
    elif rel.suffix == ".json":
        ja, jb = json.loads(pa.read_text()), json.loads(pb.read_text())
        def strip(x):
            if isinstance(x, dict):
                return {k: strip(v) for k, v in x.items() if not TIMING.match(k) and k != "out"}
            if isinstance(x, list):
                return [strip(v) for v in x]
            return x
        if strip(ja) != strip(jb):
            diffs += 1
            print("DIFF", rel)
        else:
            print("same", rel)
    elif rel.suffix == ".md":
        la = [l for l in pa.read_text().splitlines() if not re.search(r"time|seconds|\d+ s\b", l)]
        lb = [l for l in pb.read_text().splitlines() if not re.search(r"time|seconds|\d+ s\b", l)]
        if la != lb:
            diffs += 1
            print("DIFF", rel, [x for x in zip(la, lb) if x[0] != x[1]][:3])
        else:
            print("same", rel, f"({len(la)} lines compared)")
    elif rel.suffix == ".png":
        print("same" if pa.read_bytes() == pb.read_bytes() else "differs (image bytes)", rel)
print("differences:", diffs)
sys.exit(1 if diffs else 0)
