"""Run configuration: one dataclass per concern, YAML in and out, ``key=value`` overrides.

The fully resolved configuration is written to ``RUN/config.yaml`` and into every
model file, so a run can be repeated and a model rebuilt from its file alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from .errors import UserError
from .losses import DEEP_SUPERVISION_WEIGHTS


@dataclass
class DecoderConfig:
    """The decoder's widths and the seed-vs-original options (see ``SAM3DDecoder``)."""

    channels: tuple[int, ...] = (128, 64, 32, 16)
    shortcut_kernel: int = 3
    activation: str = "relu"
    upsample: str = "linear"


@dataclass
class LossConfig:
    """Deep-supervision weights α_ℓ (ℓ = 1..4, coarse → fine) and how level targets are made."""

    weights: tuple[float, ...] = DEEP_SUPERVISION_WEIGHTS
    target_mode: str = "average"


@dataclass
class TrainConfig:
    """Optimisation and sampling. Defaults were chosen on generated data (bench/optimizers.py)."""

    epochs: int = 50
    steps_per_epoch: int = 50
    batch_size: int = 2
    crop_depth: int = 16  # slices per training sample; shorter volumes are padded
    flip_depth: bool = True  # exact augmentation: the encoder sees each slice alone
    # SGD with Nesterov momentum 0.99 and poly decay, as the original SAM3D (nnU-Net):
    # on generated data it lowered the loss faster than AdamW and reached held-out
    # Dice 0.85 an epoch earlier, final Dice equal (bench/optimizers.py).
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99  # sgd only
    poly_power: float = 0.9  # lr · (1 - step/total)^power, both optimisers
    grad_clip: float = 12.0
    val_fraction: float = 0.2  # the last cases (sorted by name) are held out
    val_interval: int = 1  # epochs between validations
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast for the decoder on CUDA; never on CPU


@dataclass
class RunConfig:
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def to_dict(config: Any) -> dict:
    """A dataclass tree as plain types (tuples as lists), fit for YAML and ``weights_only`` files."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    return plain(config)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = getattr(hint, "__origin__", None)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list, got {value!r}")
        return tuple(_coerce(v, hint.__args__[0], where) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise UserError(f"{where} must be a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise UserError(f"{where or 'config'} must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown config key(s) {', '.join(f'{where}{k}' for k in unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{where}{name}")
    return cls(**kwargs)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``["train.lr=1e-3", "decoder.channels=[64,32,16,8]"]`` applied to a nested dict (values in YAML)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not KEY=VALUE (e.g. train.lr=0.001)")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise UserError(f"override {item!r}: {p!r} is not a config section")
            node = node[p]
        if leaf not in node:
            raise UserError(f"override {item!r}: unknown key {key!r}")
        node[leaf] = yaml.safe_load(raw)
    return data


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file, then the overrides."""
    data = to_dict(RunConfig())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise UserError(f"{path} is not valid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise UserError(f"{path} must hold a mapping of sections (decoder, loss, train)")
        for section, values in loaded.items():
            if section not in data:
                raise UserError(f"{path}: unknown section {section!r}; known: {', '.join(data)}")
            if not isinstance(values, dict):
                raise UserError(f"{path}: section {section!r} must be a mapping")
            for k, v in values.items():
                if k not in data[section]:
                    raise UserError(f"{path}: unknown key {section}.{k}")
                data[section][k] = v
    apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data)


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
