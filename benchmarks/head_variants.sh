#!/usr/bin/env bash
# Issue 19's same-run comparison: `ptp bench` on one development question per Spec-Bench category
# (13 questions, their first turns; TURNS=all keeps every turn, 21), every method in the same run on
# the same prompts and u:
#   ar, hf (plain decoding, ours and transformers'), pld (prompt lookup), pqd (the shipped
#   gated-LoRA student) and three draft heads of the same size trained on the same data:
#   ptp-head (C-PTP: u in its slots), mtp-head (the same head without u), ar-head (autoregressive:
#   one token per head call, fed its own drafts, as EAGLE-1).
#   1. bfloat16, temperature 0.7, top-p 0.95, 128 tokens per turn.
#   2. bfloat16, greedy, 128 tokens per turn.
#   3. float32, 32 tokens, 6 questions: the lossless check (0 answers may differ from ar).
# Usage: bash benchmarks/head_variants.sh PTP_HEAD_DIR MTP_HEAD_DIR AR_HEAD_DIR [OUT]   (about 15 minutes on 2 cores)
set -euo pipefail
ptp_head="$1"
mtp_head="$2"
ar_head="$3"
out="${4:-benchmarks/results/head_variants}"
mkdir -p "$out"
python - "$out/questions.jsonl" "${TURNS:-first}" <<'PY'
import json, sys
from importlib import resources
seen, lines = set(), []
for line in (resources.files("ptp") / "assets" / "dev_questions.jsonl").read_text().splitlines():
    q = json.loads(line)
    if q["category"] not in seen:
        seen.add(q["category"])
        if sys.argv[2] == "first":
            q["turns"] = q["turns"][:1]
        lines.append(json.dumps(q))
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
drafters=(--drafters "ptp-head=$ptp_head" "mtp-head=$mtp_head" "ar-head=$ar_head")
heads=(ptp-head mtp-head ar-head)
ptp bench --questions "$out/questions.jsonl" --dtype bfloat16 --max-new-tokens 128 \
    --methods ar hf pld pqd "${heads[@]}" "${drafters[@]}" --out "$out/bf16-sampled"
ptp bench --questions "$out/questions.jsonl" --dtype bfloat16 --max-new-tokens 128 --temperature 0 \
    --methods ar pld pqd "${heads[@]}" "${drafters[@]}" --out "$out/bf16-greedy"
ptp bench --questions "$out/questions.jsonl" --dtype float32 --max-new-tokens 32 --limit 6 \
    --methods ar pqd "${heads[@]}" "${drafters[@]}" --out "$out/fp32-lossless"
