#!/usr/bin/env bash
# The numbers of the shipped student's model card: `ptp bench` on the packaged development
# questions (48, six Spec-Bench categories), every method in the same run, same prompts, same u.
#   1. bfloat16, the sampling the student was trained for (temperature 0.7, top-p 0.95): speed.
#   2. bfloat16, greedy: speed.
#   3. float32 (bit-exact arithmetic): the lossless check must count 0 differing answers.
# Usage: bash benchmarks/default_student.sh [STUDENT_DIR] [MAX_NEW_TOKENS]   (about 45 minutes on 2 cores)
set -euo pipefail
student="${1:-src/ptp/assets/students/smollm2-135m-instruct}"
tokens="${2:-96}"
out=benchmarks/results/default_student
ptp bench "$student" --dtype bfloat16 --max-new-tokens "$tokens" --methods ar hf verify pqd pld hf-pld --out "$out/bf16-sampled"
ptp bench "$student" --dtype bfloat16 --max-new-tokens 64 --temperature 0 --methods ar pqd pld --out "$out/bf16-greedy"
ptp bench "$student" --dtype float32 --max-new-tokens 32 --methods ar verify pqd pld --out "$out/fp32-lossless"
