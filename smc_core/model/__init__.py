"""The model core: encoding, the Qwen2 bar classifier, training, calibration, packaging, inference.

Framework-free on purpose: the Dagster assets, the BentoML service and MLflow logging call
these functions, never the reverse.
"""

from smc_core.model.backbone import BackboneConfig, BarClassifier, batched_logits, build_backbone
from smc_core.model.calibration import expected_calibration_error, fit_temperature, reliability_diagram, softmax
from smc_core.model.encoding import EncoderSpec, encode, fit_encoder, windows
from smc_core.model.errors import ModelError
from smc_core.model.inference import Predictor
from smc_core.model.package import ModelPackage, load_package, save_package
from smc_core.model.train import (TrainConfig, TrainResult, finetune_lora, next_bar_targets, pretrain,
                                  train_from_scratch)

__all__ = ["BackboneConfig", "BarClassifier", "EncoderSpec", "ModelError", "ModelPackage", "Predictor",
           "TrainConfig", "TrainResult", "batched_logits", "build_backbone", "encode",
           "expected_calibration_error", "finetune_lora", "fit_encoder", "fit_temperature", "load_package",
           "next_bar_targets", "pretrain", "reliability_diagram", "save_package", "softmax",
           "train_from_scratch", "windows"]
