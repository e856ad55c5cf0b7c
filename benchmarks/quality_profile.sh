#!/usr/bin/env bash
# A quality profile end to end, recorded: `bash benchmarks/quality_profile.sh cpu-60min` (in the repository, with
# ../shared/data/medbench next to it) runs `dvc exp run pretrain` with the profile (ingest -> preprocess -> split ->
# pretrain with a medbench point per epoch), then the encoder against the floors (random init and raw pixels, plain
# and whitened) on medbench and MedMNIST breastmnist, and writes everything to benchmarks/results/<profile>/:
# params.yaml as run, the pretrain metrics and learning-curve series, quality tables (.md) and numbers (.json),
# learning_curve.png and run.json (wall time, machine). Rerunning it reproduces the numbers (fixed seeds).
set -euo pipefail
profile=${1:?usage: bash benchmarks/quality_profile.sh PROFILE (see: m3ret profile --help)}
bench=${BENCH:-../shared/data/medbench}
out=benchmarks/results/$profile
cd "$(dirname "$0")/.."
[ -d "$bench" ] || { echo "no benchmark folder at $bench (set BENCH=...)" >&2; exit 2; }
mkdir -p "$out"

start=$(date +%s)
# shellcheck disable=SC2046  # the profile's overrides are one shell word each
dvc exp run pretrain $(m3ret profile "$profile") 2>&1 | tee "$out/pretrain.log"
train_s=$(( $(date +%s) - start ))

python benchmarks/pretrain_quality.py --bench "$bench" --encoder "$profile=models/pretrain/encoder.pt" \
  --json "$out/medbench.json" | tee "$out/medbench.md"
python benchmarks/pretrain_quality.py --bench "$bench/medmnist/breastmnist.npz" \
  --encoder "$profile=models/pretrain/encoder.pt" --json "$out/breastmnist.json" | tee "$out/breastmnist.md"

cp params.yaml "$out/params.yaml"
cp reports/pretrain/metrics.json "$out/pretrain_metrics.json"
rm -rf "$out/curve" && cp -r reports/pretrain/plots/metrics/eval "$out/curve"
mapfile -t refs < <(python - "$out/medbench.json" <<'PY'
import json, sys
models = json.load(open(sys.argv[1]))["models"]
for title, result in models.items():
    if title.startswith("raw pixels"):
        print(f"--ref={title.split(' (')[0]}={result['mean']['mAP@10']:.4f}")
PY
)
python benchmarks/plot_pretrain_curves.py --run "$profile=$out/curve" "${refs[@]}" --out "$out/learning_curve.png" \
  --title "$profile: medbench mAP@10 per epoch (point 0 = random init, same readout)"
python - "$out/run.json" "$train_s" "$(( $(date +%s) - start ))" <<'PY'
import json, os, platform, sys
json.dump({"ingest_to_pretrain_minutes": round(int(sys.argv[2]) / 60, 1), "total_minutes": round(int(sys.argv[3]) / 60, 1),
           "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine()}, open(sys.argv[1], "w"), indent=2)
PY
cat "$out/run.json"
