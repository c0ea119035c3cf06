#!/usr/bin/env bash
# First reading of the draft heads (issue 18): `ptp bench` on one development question per
# Spec-Bench category (13 questions, 21 turns), every method in the same run, same prompts, same u:
# plain decoding, prompt lookup, the shipped gated-LoRA student (pqd) and the heads as --drafters.
#   1. bfloat16, temperature 0.7, top-p 0.95, 128 tokens per turn: speed.
#   2. float32, 32 tokens: the lossless check (0 answers may differ from ar).
# Usage: bash benchmarks/head_student.sh HEAD_TEACHER_INIT_DIR HEAD_FRESH_DIR   (about 15 minutes on 2 cores)
set -euo pipefail
teacher_init="$1"
fresh="$2"
out=benchmarks/results/head_student
mkdir -p "$out"
python - "$out/questions.jsonl" <<'PY'
import json, sys
from importlib import resources
seen, lines = set(), []
for line in (resources.files("ptp") / "assets" / "dev_questions.jsonl").read_text().splitlines():
    q = json.loads(line)
    if q["category"] not in seen:
        seen.add(q["category"])
        lines.append(line)
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
drafters=(--drafters "head-teacher-init=$teacher_init" "head-fresh=$fresh")
ptp bench --questions "$out/questions.jsonl" --dtype bfloat16 --max-new-tokens 128 \
    --methods ar pld pqd head-teacher-init head-fresh "${drafters[@]}" --out "$out/bf16-sampled"
ptp bench --questions "$out/questions.jsonl" --dtype float32 --max-new-tokens 32 --limit 6 \
    --methods ar pqd head-teacher-init head-fresh "${drafters[@]}" --out "$out/fp32-lossless"
