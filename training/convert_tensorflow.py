"""Convert the TensorFlow-era StyleGAN2 / StyleGAN2-ADA networks into our StyleGAN2 G and D, without TensorFlow.

A TensorFlow pickle is a tuple (G, D, Gs) of `dnnlib.tflib.network.Network` objects, read by the restricted
unpickler as records of their static kwargs, named variables and sub-networks (their build code is never run).
The static kwargs become our constructor arguments (the TensorFlow build functions' defaults where absent), and
each of our tensors is taken from its TensorFlow variable: dense weights transposed, convolution weights from
[kh, kw, in, out] to [out, in, kh, kw] (up-sampling ones flipped), the styles' initial bias of 1 added back,
noise inputs assigned in layer order. See docs/published-models.md.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from training import networks_stylegan2
from training.convert_published import ConversionError, copy_tensors
from training.safe_pickle import TFNetworkRecord


@dataclasses.dataclass(frozen=True)
class TFKwarg:
    """One static kwarg of a TensorFlow network and where it goes in ours."""

    tf_name: str
    our_path: str  # 'name' or 'group.name' (e.g. 'mapping_kwargs.num_layers').
    default: Any  # The TensorFlow build function's default.
    convert: Callable[[Any], Any] = lambda value: value


def _channel_base(fmap_base: int) -> int:
    """Resolution r has min(2 * fmap_base / r, fmap_max) channels in TensorFlow, min(channel_base / r, ...) here."""
    return int(fmap_base) * 2


# The kwargs G and D share: sizes, channel counts and precision.
TF_SHAPE_KWARGS = (
    TFKwarg("label_size", "c_dim", 0),
    TFKwarg("resolution", "img_resolution", 1024),
    TFKwarg("num_channels", "img_channels", 3),
    TFKwarg("fmap_base", "channel_base", 16384, _channel_base),
    TFKwarg("fmap_max", "channel_max", 512),
    TFKwarg("num_fp16_res", "num_fp16_res", 0),
    TFKwarg("conv_clamp", "conv_clamp", None),
)
TF_G_KWARGS = (
    *TF_SHAPE_KWARGS,
    TFKwarg("latent_size", "z_dim", 512),
    TFKwarg("dlatent_size", "w_dim", 512),
    TFKwarg("resample_kernel", "resample_filter", [1, 3, 3, 1]),
    TFKwarg("use_noise", "use_noise", True),
    TFKwarg("nonlinearity", "activation", "lrelu"),
    TFKwarg("mapping_layers", "mapping_kwargs.num_layers", 8),
    TFKwarg("label_fmaps", "mapping_kwargs.embed_features", None),
    TFKwarg("mapping_fmaps", "mapping_kwargs.layer_features", None),
    TFKwarg("mapping_nonlinearity", "mapping_kwargs.activation", "lrelu"),
    TFKwarg("mapping_lrmul", "mapping_kwargs.lr_multiplier", 0.01),
    # None in TensorFlow meant "do not track", which our MappingNetwork spells as a decay of 1 (never moves).
    TFKwarg("w_avg_beta", "mapping_kwargs.w_avg_beta", 0.995, lambda beta: 1 if beta is None else beta),
)
TF_D_KWARGS = (
    *TF_SHAPE_KWARGS,
    TFKwarg("mapping_fmaps", "cmap_dim", None),
    TFKwarg("nonlinearity", "block_kwargs.activation", "lrelu"),
    TFKwarg("resample_kernel", "block_kwargs.resample_filter", [1, 3, 3, 1]),
    TFKwarg("mapping_layers", "mapping_kwargs.num_layers", 0),
    TFKwarg("mapping_fmaps", "mapping_kwargs.embed_features", None),
    TFKwarg("mapping_fmaps", "mapping_kwargs.layer_features", None),
    TFKwarg("nonlinearity", "mapping_kwargs.activation", "lrelu"),
    TFKwarg("mapping_lrmul", "mapping_kwargs.lr_multiplier", 0.1),
    # The TensorFlow discriminators default to groups of 4 (the published PyTorch converter left it unset).
    TFKwarg("mbstd_group_size", "epilogue_kwargs.mbstd_group_size", 4),
    TFKwarg("mbstd_num_features", "epilogue_kwargs.mbstd_num_channels", 1),
    TFKwarg("nonlinearity", "epilogue_kwargs.activation", "lrelu"),
)
# Static kwargs that only affect how TensorFlow ran the network (truncation and mixing at run time, graph
# structure, fused ops), or training settings.
TF_IGNORED = {
    "G": {"truncation_psi", "truncation_cutoff", "style_mixing_prob", "structure", "conditioning", "fused_modconv"},
    "D": {"structure", "conditioning", "freeze_layers"},
}
TF_ARCHITECTURE = {"G": "skip", "D": "resnet"}  # The only architectures our classes implement.


def tf_kwargs(tf: TFNetworkRecord, table: tuple[TFKwarg, ...], kind: str, label: str) -> dict[str, Any]:
    """Our constructor arguments from a TensorFlow network's static kwargs (unknown ones are refused)."""
    static = dict(tf.static_kwargs)
    if "dlatent_avg_beta" in static:  # StyleGAN2's name for what StyleGAN2-ADA calls w_avg_beta.
        static.setdefault("w_avg_beta", static.pop("dlatent_avg_beta"))
    known = {entry.tf_name for entry in table} | TF_IGNORED[kind] | {"architecture"}
    unknown = sorted(set(static) - known)
    if unknown:
        raise ConversionError(f"{label}: unknown TensorFlow network argument(s) {', '.join(unknown)}")
    architecture = static.get("architecture", TF_ARCHITECTURE[kind])
    if architecture != TF_ARCHITECTURE[kind]:
        raise ConversionError(
            f"{label}: architecture={architecture!r}; only {TF_ARCHITECTURE[kind]!r} is implemented for {kind}"
        )
    kwargs: dict[str, Any] = {}
    for entry in table:
        value = entry.convert(static.get(entry.tf_name, entry.default))
        group, _, name = entry.our_path.rpartition(".")
        (kwargs.setdefault(group, {}) if group else kwargs)[name] = value
    return kwargs


class TFVariables:
    """A TensorFlow network's variables by name, remembering which ones were used."""

    def __init__(self, tf: TFNetworkRecord, label: str):
        self.values = tf.variables()
        self.used: set[str] = set()
        self.label = label

    def __call__(self, name: str) -> np.ndarray:
        """The variable `name`; ConversionError if the network has none."""
        if name not in self.values:
            if any(re.fullmatch(r"(ToRGB|FromRGB)_lod\d+/.*", key.split("/", 1)[-1]) for key in self.values):
                raise ConversionError(
                    f"{self.label}: this is an 'orig' architecture network (ToRGB/FromRGB per "
                    f"level of detail), which is not implemented here"
                )
            raise ConversionError(f"{self.label}: the TensorFlow network has no variable {name}")
        self.used.add(name)
        return self.values[name]

    def unused(self) -> list[str]:
        """Variables no tensor of ours took."""
        return sorted(set(self.values) - self.used)


def _dense(value: np.ndarray) -> np.ndarray:
    """TensorFlow dense weights [in, out] -> ours [out, in]."""
    return value.transpose()


def _conv(value: np.ndarray, flip: bool = False) -> np.ndarray:
    """TensorFlow conv weights [kh, kw, in, out] -> ours [out, in, kh, kw]; flipped for transposed convolutions."""
    return (value[::-1, ::-1] if flip else value).transpose(3, 2, 0, 1)


def _noise_index(res: int, layer: int) -> int:
    """TensorFlow numbers the synthesis noise inputs 0, 1, 2, ... in layer order: conv1 of 4x4 is 0, then
    conv0 and conv1 of each higher resolution."""
    return 0 if res == 4 else 2 * int(math.log2(res)) - 5 + layer


def tf_generator_tensor(name: str, get: TFVariables) -> np.ndarray | None:
    """The value of our StyleGAN2 generator tensor `name` from the TensorFlow variables; None for constants."""
    if name.endswith("resample_filter"):
        return None  # The [1, 3, 3, 1] filter, which our layers build from resample_filter.
    if name == "mapping.w_avg":
        return get("dlatent_avg")
    if m := re.fullmatch(r"mapping\.(embed|fc(\d+))\.(weight|bias)", name):
        tf_layer = "LabelEmbed" if m[1] == "embed" else f"Dense{m[2]}"
        value = get(f"mapping/{tf_layer}/{m[3]}")
        return _dense(value) if m[3] == "weight" else value
    if name == "synthesis.b4.const":
        return get("synthesis/4x4/Const/const")[0]
    if m := re.fullmatch(r"synthesis\.b(\d+)\.(conv0|conv1|torgb)\.(.+)", name):
        res, layer, tensor = int(m[1]), m[2], m[3]
        tf_layer = {"conv0": "Conv0_up", "conv1": "Conv1" if res > 4 else "Conv", "torgb": "ToRGB"}[layer]
        prefix = f"synthesis/{res}x{res}/{tf_layer}"
        if tensor == "weight":
            return _conv(get(f"{prefix}/weight"), flip=(layer == "conv0"))
        if tensor == "affine.weight":
            return _dense(get(f"{prefix}/mod_weight"))
        if tensor == "affine.bias":  # TensorFlow adds the initial 1 at run time; ours stores it in the bias.
            return get(f"{prefix}/mod_bias") + 1
        if tensor == "noise_const":
            return get(f"synthesis/noise{_noise_index(res, int(layer[-1]))}")[0, 0]
        if tensor in ("bias", "noise_strength"):
            return get(f"{prefix}/{tensor}")
    raise ConversionError(f"{get.label}: no TensorFlow variable is known for our tensor {name}")


def tf_discriminator_tensor(name: str, get: TFVariables) -> np.ndarray | None:
    """The value of our discriminator tensor `name` from the TensorFlow variables; None for constants."""
    if name.endswith("resample_filter"):
        return None
    if m := re.fullmatch(r"b(\d+)\.(fromrgb|conv0|conv1|skip)\.(weight|bias)", name):
        res, layer, tensor = int(m[1]), m[2], m[3]
        tf_layer = {"fromrgb": "FromRGB", "conv0": "Conv0", "conv1": "Conv1_down", "skip": "Skip"}[layer]
        value = get(f"{res}x{res}/{tf_layer}/{tensor}")
        return _conv(value) if tensor == "weight" else value
    if m := re.fullmatch(r"mapping\.(embed|fc(\d+))\.(weight|bias)", name):
        value = get(f"{'LabelEmbed' if m[1] == 'embed' else f'Mapping{m[2]}'}/{m[3]}")
        return _dense(value) if m[3] == "weight" else value
    if m := re.fullmatch(r"b4\.(conv|fc|out)\.(weight|bias)", name):
        tf_layer = {"conv": "4x4/Conv", "fc": "4x4/Dense0", "out": "Output"}[m[1]]
        value = get(f"{tf_layer}/{m[2]}")
        if m[2] == "bias":
            return value
        return _conv(value) if m[1] == "conv" else _dense(value)
    raise ConversionError(f"{get.label}: no TensorFlow variable is known for our tensor {name}")


def convert_tf(tf: Any, kind: str, label: str) -> tuple[torch.nn.Module, list[str]]:
    """Build our StyleGAN2 G (kind 'G') or D (kind 'D') from a TensorFlow network and copy its variables."""
    if not isinstance(tf, TFNetworkRecord) or tf.version < 2:
        raise ConversionError(f"{label}: not a TensorFlow network of a supported version")
    if kind == "G":
        module = networks_stylegan2.Generator(**tf_kwargs(tf, TF_G_KWARGS, kind, label))
        tensor_of = tf_generator_tensor
    else:
        module = networks_stylegan2.Discriminator(**tf_kwargs(tf, TF_D_KWARGS, kind, label))
        tensor_of = tf_discriminator_tensor
    get = TFVariables(tf, label)
    values = {}
    for name, target in module.state_dict().items():
        value = tensor_of(name, get)
        values[name] = target if value is None else np.array(value, dtype=np.float32)  # A contiguous copy.
    copy_tensors(values, module, label)
    notes = [f"TensorFlow variables not used: {', '.join(get.unused())}"] if get.unused() else []
    return module.eval().requires_grad_(False), notes
