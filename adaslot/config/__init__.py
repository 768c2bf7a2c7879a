"""Every setting of adaslot, declared once: config dataclasses (one per command) and model presets.

Light on purpose (no torch): the CLI builds its flags from these classes at start-up.
"""

from adaslot.config.base import Settings, from_flags, parse_value, setting
from adaslot.config.data import DataSpec, SyntheticConfig
from adaslot.config.demo import DemoConfig, demo_config
from adaslot.config.eval import PROTOCOLS, ConvertConfig, EvalConfig, resolve_protocols
from adaslot.config.model import PRESETS, ModelConfig, Preset, get_preset, model_config_for, register_preset
from adaslot.config.run import RunSpec
from adaslot.config.segment import SegmentConfig
from adaslot.config.store import CacheConfig, ExportConfig, InfoConfig, VerifyConfig
from adaslot.config.sweep import SweepConfig
from adaslot.config.train import DEFAULT_NUM_ITERS, TrainConfig

__all__ = [
    "DEFAULT_NUM_ITERS", "PRESETS", "PROTOCOLS", "CacheConfig", "ConvertConfig", "DataSpec", "DemoConfig",
    "EvalConfig", "ExportConfig", "InfoConfig", "ModelConfig", "Preset", "RunSpec", "SegmentConfig",
    "Settings", "SweepConfig", "SyntheticConfig", "TrainConfig", "VerifyConfig", "demo_config", "from_flags",
    "get_preset", "model_config_for", "parse_value", "register_preset", "resolve_protocols", "setting",
]
