"""Build the smc_predictor Bento around a tiny trained package, for CI's container smoke test.

The same two steps as the ``bento_artifact`` asset (``smc_assets.serving.pack_model`` and
``build_bento``, options from ``bento/bentofile.yaml``), with a real LoRA package trained for
one epoch on synthetic bars (seconds) instead of the registry's champion. Writes a /predict
request built from the same bars, so the smoke test posts a real seed-000 request.

    BENTOML_HOME=/tmp/bentoml python deploy/ci/build_bento.py --out /tmp/smoke [--cuda-version 12.8]

Prints one JSON line last: bento tag, model tag, request file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from smc_assets.serving import build_bento, pack_model  # noqa: E402
from smc_core.model import load_package  # noqa: E402
from smc_core.model.pipeline import train_small_package  # noqa: E402
from smc_core.registry import MODEL_NAME  # noqa: E402
from smc_core.serving.replay import request_payload  # noqa: E402
from smc_core.synthetic import SyntheticConfig, generate_bars  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for the request file.")
    parser.add_argument("--cuda-version", default=None, help="Build on BentoML's CUDA base (e.g. 12.8).")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    bars = generate_bars(SyntheticConfig(days=3, edge="smc", edge_strength=0.9, seed=5))
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "package"
        train_small_package(source, {"ES": bars}, epochs=1)
        package = load_package(source)  # verified, as bento_artifact does before packing
        labels = {"registered_model": MODEL_NAME, "model_version": "ci",
                  "feature_set": package.spec.feature_set_version}
        model_tag = pack_model(source, labels, package.lineage)
    bento = build_bento(model_tag, labels, args.cuda_version)

    request = args.out / "predict.json"
    request.write_text(json.dumps(request_payload(bars.iloc[-49:], "ES", "1m")))
    print(json.dumps({"bento": str(bento.tag), "model_tag": model_tag, "request": str(request)}))


if __name__ == "__main__":
    main()
