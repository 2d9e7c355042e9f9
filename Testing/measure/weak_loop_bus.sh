#!/usr/bin/env bash
# The weakly supervised loop end to end on the real breast ultrasound cases of ../shared/data, on a CPU:
# label (oracle saliency standing in for BiomedCLIP, whose weights cannot be downloaded here) ->
# nnU-Net 2d, short cyclic schedule -> checkpoint-ensembled prediction on cases it did not train on ->
# evaluate --predictions. Images are downsampled to 128 px (longest side) so nnU-Net trains in minutes on
# 2 cores. Usage: bash Testing/measure/weak_loop_bus.sh OUT [SCHEDULE]   (SCHEDULE: authors | restart)
set -euo pipefail
OUT=${1:?output folder}; SCHEDULE=${2:-authors}
DATA=${MEDCLIPSAM_SHARED_DATA:-$(dirname "$0")/../../../shared/data}/breast_ultrasound
PY=${PYTHON:-python}
mkdir -p "$OUT"
$PY - "$DATA" "$OUT" <<'PY'
import sys
from pathlib import Path
import numpy as np, SimpleITK as sitk
data, out = Path(sys.argv[1]), Path(sys.argv[2])
cases = sorted(p for p in data.glob("*.png") if not p.stem.endswith("_mask"))
for index, image_path in enumerate(cases):
    split = "test" if index % 3 == 2 else "train"          # 2 of every 3 cases train, 1 tests
    (out / split).mkdir(parents=True, exist_ok=True)
    for path, interpolator in ((image_path, sitk.sitkLinear), (image_path.with_name(image_path.stem + "_mask.png"), sitk.sitkNearestNeighbor)):
        image = sitk.ReadImage(str(path))
        scale = 128 / max(image.GetSize())
        size = [max(1, round(s * scale)) for s in image.GetSize()]
        small = sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(),
                              [sp / scale for sp in image.GetSpacing()], image.GetDirection())
        small.SetSpacing((1.0, 1.0)); small.SetOrigin((0.0, 0.0))
        sitk.WriteImage(small, str(out / split / (path.stem + ".nii.gz")))
print(f"{len(cases)} cases split into {out}/train and {out}/test")
PY
RAW=$OUT/raw-$SCHEDULE; PRE=$OUT/pre-$SCHEDULE; RES=$OUT/res-$SCHEDULE
time medclipsam label "$OUT/train" --oracle-saliency -p "breast tumor" --raw "$RAW" --dataset-id 600 --name BUS \
  --modality US --sam litemedsam --device cpu -q
medclipsam evaluate "$OUT/train" --predictions "$RAW/Dataset600_BUS/labelsTr" --out "$OUT/score-pseudo-$SCHEDULE" --overwrite
time medclipsam nnunet-train 600 --raw "$RAW" --preprocessed "$PRE" --results "$RES" --config 2d --epochs ${EPOCHS:-15} --cycles 3 \
  --keep-last ${KEEP_LAST:-2} --iterations ${ITERATIONS:-20} --val-iterations 4 --device cpu --processes 2 --schedule "$SCHEDULE"
TEST_IMAGES=$(ls "$OUT"/test/*.nii.gz | grep -v _mask)
medclipsam nnunet-predict "$RES/Dataset600_BUS/nnUNetTrainerCyclicLR__nnUNetPlans__2d" $TEST_IMAGES --out "$OUT/pred-$SCHEDULE"
medclipsam evaluate "$OUT/test" --predictions "$OUT/pred-$SCHEDULE" --out "$OUT/score-nnunet-$SCHEDULE" --overwrite
for kind in pseudo nnunet; do echo "$kind: $(cat "$OUT/score-$kind-$SCHEDULE/summary.json" | tr -d '\n')"; done
