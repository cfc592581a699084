#!/usr/bin/env bash
# Mutation testing of iegkit/functional, iegkit/parts, the look-ahead and the EMA with mutmut 3 (a dev tool, not a project
# dependency). Results and the list of equivalent mutants: docs/mutation.md.
#
#   bash scripts/mutation.sh              # fresh run: deletes ./mutants/, mutates, tests, reports
#   bash scripts/mutation.sh --resume     # keep ./mutants/ and cached verdicts, test what is unchecked
#   bash scripts/mutation.sh --report     # only print the counts (and survivors) of the last run
#   bash scripts/mutation.sh --resume 'iegkit.parts.probe_mixup*'   # (re)test the named mutants
#
# The configuration is [tool.mutmut] in pyproject.toml: mutate iegkit/functional/*,
# iegkit/parts/*, _core/meta_step.py, _core/tangent.py and ema.py; mutmut copies the project into ./mutants/ (git-ignored), records which default
# tests (`pytest -x -q`; the project's addopts exclude slow tests) cover each function, and runs
# only those for each mutant. It runs under `nice -n 19`, one worker and one thread per process,
# so it can share the machine with benchmarks (about 1-2 h on 2 free cores; MUTMUT_CHILDREN=n for
# more workers, MUTMUT_NICE=0 when it should not yield to other work).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
if [ ! -x "$PY" ]; then
    echo "no ./.venv: run 'bash scripts/test.sh' first (it creates the venv with the dev tools)" >&2
    exit 1
fi
if ! "$PY" -c "import mutmut" 2>/dev/null; then
    .venv/bin/pip install --quiet "mutmut>=3.8.1,<4"
fi

mode=fresh
if [ "${1:-}" = "--resume" ]; then mode=resume; shift; fi
if [ "${1:-}" = "--report" ]; then mode=report; shift; fi

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export MPLBACKEND=Agg

if [ "$mode" != "report" ]; then
    if [ "$mode" = "fresh" ]; then
        rm -rf mutants
    fi
    echo "mutmut $("$PY" -c 'import importlib.metadata as m; print(m.version("mutmut"))'), $(date -u +%Y-%m-%dT%H:%MZ), $(getconf _NPROCESSORS_ONLN) cores"
    # mutmut's own exit status is 0 even with survivors; a failing clean run exits non-zero.
    # The progress spinner is thinned to one line per 25 mutants.
    nice -n "${MUTMUT_NICE:-19}" .venv/bin/mutmut run --max-children "${MUTMUT_CHILDREN:-1}" "$@" 2>&1 \
        | stdbuf -oL tr '\r' '\n' | awk '
            /^[^ ]+ [0-9]+\/[0-9]+ / { split($2, a, "/"); if (a[1] % 25 == 0 && a[1] != last) { print; fflush(); last = a[1] }; next }
            /^[^ ]+ (Generating|Running|Listing|Filtering)/ { next }
            { print; fflush() }'
fi

# Counts per folder, from mutmut's per-file results (mutants/<path>.meta), and the score against
# the reviewed list of equivalent mutants (scripts/mutation_equivalents.txt: name|class|reason).
"$PY" - <<'EOF'
import json
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

folders = ["iegkit/functional", "iegkit/parts", "iegkit/_core", "iegkit"]  # the last two: only the files mutated
shown = ["killed", "survived", "equivalent", "timeout", "no tests", "suspicious", "segfault",
         "not checked"]
equivalent = {}
for line in Path("scripts/mutation_equivalents.txt").read_text().splitlines():
    if line.strip() and not line.startswith("#"):
        name, kind, reason = line.split("|", 2)
        equivalent[name] = kind
survivors, seen = [], set()


def row(label, counts):
    total = sum(counts.values())
    killed = counts["killed"] + counts["timeout"]
    scored = total - counts["equivalent"] - counts["no tests"]
    score = f"{100 * killed / scored:.1f}" if scored else "-"
    return f"{label:<46}" + "".join(f"{counts[s]:>9}" for s in shown) + f"{total:>7}{score:>8}"


print()
print(f"{'':<46}" + "".join(f"{s[:8]:>9}" for s in shown) + f"{'total':>7}{'score%':>8}")
for folder in folders:
    counts = Counter()
    for meta in sorted(Path("mutants", folder).glob("*.py.meta")):
        file_counts = Counter()
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            seen.add(name)
            status = status_by_exit_code[code]
            if status == "survived" and name in equivalent:
                status = "equivalent"
            file_counts[status] += 1
            if status not in ("killed", "timeout", "not checked", "equivalent"):
                survivors.append((status, name))
        if file_counts:
            print(row("  " + str(meta.relative_to("mutants"))[: -len(".meta")], file_counts))
        counts += file_counts
    print(row(folder, counts))
print("score% = (killed + timeout) / (all - equivalent - no tests); 'no tests': mutants of code that "
      "only runs under torch.compile (docs/mutation.md)")
stale = sorted(set(equivalent) - seen)
if stale and seen:
    print(f"\n{len(stale)} names in scripts/mutation_equivalents.txt are not mutants of this code "
          "(the code changed: review them): " + ", ".join(stale[:5]) + (" ..." if len(stale) > 5 else ""))
if survivors:
    print(f"\n{len(survivors)} not killed (inspect one with: .venv/bin/mutmut show NAME):")
    for status, name in sorted(survivors, key=lambda x: x[1]):
        print(f"  {status:<12} {name}")
EOF
