#!/usr/bin/env bash
# The keras-flowers profile's pipeline on one GPU, every stage timed, without DVC or the internet.
#
# Run from the repository root:  bash benchmarks/gpu_pipeline.sh [key=value ...]
# It copies pipeline/, src/, profiles/ and params.yaml to $WORK (default /tmp/distillery-gpu), generates
# tf_flowers-sized photos there (3,670 JPEGs in 5 classes, 240-500 px short side: tf_flowers and timm's
# ImageNet weights need the internet, so the teacher trains from scratch), applies the profile with the
# key=value overrides, then runs each stage script in dvc.yaml's order, arm by arm (sweep then final),
# so that a time limit still leaves whole arms. Prints "stage seconds" lines and leaves the outputs,
# the MLflow database (system metrics included) and the report in $WORK.
set -euo pipefail
ROOT=$(pwd)
WORK=${WORK:-/tmp/distillery-gpu}
rm -rf "$WORK" && mkdir -p "$WORK"
cp -r pipeline src profiles params.yaml "$WORK"/
cd "$WORK"
export PYTHONPATH="$WORK/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

timed() {  # timed NAME command...: runs it, appends "NAME <seconds>" to stage_times.txt and prints it
  local name=$1; shift
  local t0=$EPOCHREALTIME
  "$@"
  awk -v n="$name" -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%-16s %8.1f\n", n, b - a }' | tee -a stage_times.txt
}

export PER_CLASS=${PER_CLASS:-734}  # 5 x 734 = 3,670: tf_flowers' size
timed photos python - <<'EOF'
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import numpy as np
from distillery.synthetic import SHAPES, photo

def one_class(k):
    rng = np.random.default_rng(k)
    folder = Path("photos") / SHAPES[k]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(int(os.environ["PER_CLASS"])):
        photo(SHAPES[k], rng, 240, 500).save(folder / f"{i:04d}.jpg", quality=90)

with ProcessPoolExecutor(5) as pool:
    list(pool.map(one_class, range(5)))
EOF
python -m distillery.profiles keras-flowers data.source=folder data.path=photos teacher.pretrained=false "$@"
timed prepare python pipeline/prepare.py
timed teacher python pipeline/teacher.py
arms=$(python -c "from distillery.core.config import load_params; print(' '.join(load_params('params.yaml').arms.all))")
for arm in $arms; do
  timed "sweep@$arm" python pipeline/sweep.py --arm "$arm"
  timed "final@$arm" python pipeline/final.py --arm "$arm"
done
timed evaluate python pipeline/evaluate.py
timed report python pipeline/report.py
echo "outputs, mlflow.db and reports/ are in $WORK (from $ROOT)"
