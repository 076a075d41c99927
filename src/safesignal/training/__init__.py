"""Joint training, TRL style: `SafetyTrainingConfig` + `SafetyTrainer`, and `train()`."""

from .collator import SafetyCollator
from .config import OBJECTIVES, SafetyTrainingConfig
from .trainer import SafetyTrainer, build_datasets, build_model, train

__all__ = ["OBJECTIVES", "SafetyCollator", "SafetyTrainer", "SafetyTrainingConfig", "build_datasets", "build_model", "train"]
