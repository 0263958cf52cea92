"""Write network pickles in the published formats, from our own networks, for the loader tests.

The formats are documented facts, written here from scratch:

- PyTorch (StyleGAN2-ADA-PyTorch, StyleGAN3, CREPS): each network is pickled as a call of the global
  `torch_utils.persistence._reconstruct_persistent_obj` with one dict argument, `meta`, holding `type='class'`,
  `version`, `module_src` (the source text of the module defining the class), `class_name` and `state` (the
  object's `__dict__`: `_parameters`, `_buffers`, `_modules`, attributes, `_init_args`, `_init_kwargs`). Classes
  that were not decorated (CREPS's `training.networks_creps.SynthesisInput`, torch's `Sequential`) are pickled
  by reference with their `__dict__` as state. The snapshot is a dict of G, D, G_ema, augment_pipe and
  training_set_kwargs.
- TensorFlow (StyleGAN2, StyleGAN2-ADA): a tuple (G, D, Gs) of `dnnlib.tflib.network.Network` objects whose
  state is a dict: version, name, static_kwargs, components (sub-networks), build_module_src, build_func_name
  and variables, a list of (name, numpy array).

The module sources written here declare only the published class names and constructor signatures (what the
loader reads with `ast`), and each starts with a statement that creates a marker file if it is ever executed.
"""

from __future__ import annotations

import copy
import io
import pickle
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import augment, networks_creps, networks_stylegan2, networks_stylegan3

# ----------------------------------------------------------------------------
# A pickler that writes chosen objects as globals of modules that do not exist here.


class PublishedPickler(pickle._Pickler):
    """Pure-Python pickler that writes any object with a `published_global` (module, name) as that global."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        target = getattr(obj, "published_global", None)
        if target is None:
            return super().save_global(obj, name)
        module, qualname = target
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)

    # The base class dispatches functions straight to its own save_global; route them through the override.
    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[types.FunctionType] = save_global


def dumps(obj: Any, protocol: int = 4) -> bytes:
    """Pickle `obj` with PublishedPickler."""
    buffer = io.BytesIO()
    PublishedPickler(buffer, protocol=protocol).dump(obj)
    return buffer.getvalue()


def _reconstruct_persistent_obj(meta: dict) -> None:
    """Written as `torch_utils.persistence._reconstruct_persistent_obj`; never called here."""
    raise AssertionError("only pickled")


_reconstruct_persistent_obj.published_global = ("torch_utils.persistence", "_reconstruct_persistent_obj")


class PersistentObject:
    """Pickles as the published persistence call with `meta`."""

    def __init__(self, meta: dict):
        self.meta = meta

    def __reduce__(self):
        return _reconstruct_persistent_obj, (self.meta,)


class ByReference:
    """Pickles by reference as the published class `published_global` (module, name), with `state` as its state."""

    published_global: tuple[str, str]

    def __init__(self, state: dict):
        self._state = state

    def __getstate__(self) -> dict:
        return self._state


class CrepsSynthesisInput(ByReference):
    """The published CREPS input layer, which is not persistent."""

    published_global = ("training.networks_creps", "SynthesisInput")


class TFNetwork(ByReference):
    """A TensorFlow network object."""

    published_global = ("dnnlib.tflib.network", "Network")


# ----------------------------------------------------------------------------
# Published module sources: class names and constructor signatures only (facts of the published code).

_MARKER_LINE = "import pathlib\npathlib.Path({marker!r}).write_text('the embedded source was executed')\n"

_STYLEGAN2_CLASSES = """
class FullyConnectedLayer:
    def __init__(self, in_features, out_features, bias=True, activation='linear', lr_multiplier=1, bias_init=0):
        pass
class Conv2dLayer:
    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation='linear', up=1, down=1,
                 resample_filter=[1,3,3,1], conv_clamp=None, channels_last=False, trainable=True):
        pass
class MappingNetwork:
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None, layer_features=None,
                 activation='lrelu', lr_multiplier=0.01, w_avg_beta=0.998):
        pass
class SynthesisLayer:
    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 activation='lrelu', resample_filter=[1,3,3,1], conv_clamp=None, channels_last=False):
        pass
class ToRGBLayer:
    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        pass
class DiscriminatorBlock:
    def __init__(self, in_channels, tmp_channels, out_channels, resolution, img_channels, first_layer_idx,
                 architecture='resnet', activation='lrelu', resample_filter=[1,3,3,1], conv_clamp=None,
                 use_fp16=False, fp16_channels_last=False, freeze_layers=0):
        pass
class MinibatchStdLayer:
    def __init__(self, group_size, num_channels=1):
        pass
class DiscriminatorEpilogue:
    def __init__(self, in_channels, cmap_dim, resolution, img_channels, architecture='resnet', mbstd_group_size=4,
                 mbstd_num_channels=1, activation='lrelu', conv_clamp=None):
        pass
"""

# The StyleGAN3 repository's networks_stylegan2.py (also in CREPS): clamp 256 and 4 float16 resolutions by default.
STYLEGAN2_SOURCE = (
    _STYLEGAN2_CLASSES
    + """
class SynthesisBlock:
    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, architecture='skip',
                 resample_filter=[1,3,3,1], conv_clamp=256, use_fp16=False, fp16_channels_last=False,
                 fused_modconv_default=True, **layer_kwargs):
        pass
class SynthesisNetwork:
    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, num_fp16_res=4,
                 **block_kwargs):
        pass
class Generator:
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={}, **synthesis_kwargs):
        pass
class Discriminator:
    def __init__(self, c_dim, img_resolution, img_channels, architecture='resnet', channel_base=32768,
                 channel_max=512, num_fp16_res=4, conv_clamp=256, cmap_dim=None, block_kwargs={}, mapping_kwargs={},
                 epilogue_kwargs={}):
        pass
"""
)

# StyleGAN2-ADA-PyTorch's training/networks.py: no clamp and no float16 by default, synthesis_kwargs nested.
STYLEGAN2_ADA_SOURCE = (
    _STYLEGAN2_CLASSES
    + """
class SynthesisBlock:
    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, architecture='skip',
                 resample_filter=[1,3,3,1], conv_clamp=None, use_fp16=False, fp16_channels_last=False,
                 **layer_kwargs):
        pass
class SynthesisNetwork:
    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, num_fp16_res=0,
                 **block_kwargs):
        pass
class Generator:
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={}, synthesis_kwargs={}):
        pass
class Discriminator:
    def __init__(self, c_dim, img_resolution, img_channels, architecture='resnet', channel_base=32768,
                 channel_max=512, num_fp16_res=0, conv_clamp=None, cmap_dim=None, block_kwargs={}, mapping_kwargs={},
                 epilogue_kwargs={}):
        pass
"""
)

STYLEGAN3_SOURCE = """
class FullyConnectedLayer:
    def __init__(self, in_features, out_features, activation='linear', bias=True, lr_multiplier=1, weight_init=1,
                 bias_init=0):
        pass
class MappingNetwork:
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=2, lr_multiplier=0.01, w_avg_beta=0.998):
        pass
class SynthesisInput:
    def __init__(self, w_dim, channels, size, sampling_rate, bandwidth):
        pass
class SynthesisLayer:
    def __init__(self, w_dim, is_torgb, is_critically_sampled, use_fp16, in_channels, out_channels, in_size,
                 out_size, in_sampling_rate, out_sampling_rate, in_cutoff, out_cutoff, in_half_width, out_half_width,
                 conv_kernel=3, filter_size=6, lrelu_upsampling=2, use_radial_filters=False, conv_clamp=256,
                 magnitude_ema_beta=0.999):
        pass
class SynthesisNetwork:
    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, num_layers=14,
                 num_critical=2, first_cutoff=2, first_stopband=2**2.1, last_stopband_rel=2**0.3, margin_size=10,
                 output_scale=0.25, num_fp16_res=4, **layer_kwargs):
        pass
class Generator:
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={}, **synthesis_kwargs):
        pass
"""

CREPS_SOURCE = """
class FullyConnectedLayer:
    def __init__(self, in_features, out_features, bias=True, weight_norm=True, activation='linear',
                 lr_multiplier=1, bias_init=0):
        pass
class MappingNetwork:
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None, layer_features=None,
                 activation='lrelu', lr_multiplier=0.01, w_avg_beta=0.998):
        pass
class SynthesisLayer:
    def __init__(self, in_channels, out_channels, w_dim, activation='lrelu', fc_clamp=None, channels_last=False):
        pass
class SynthesisInput:
    def __init__(self, channels, w_dim, resolution, rank=8, bandwidth=10):
        pass
class ToResLayer:
    def __init__(self, in_channels, out_channels, w_dim, fc_clamp=None, channels_last=False):
        pass
class SynthesisBlock:
    def __init__(self, in_channels, out_channels, w_dim, resolution, is_last, res_channels=None, architecture='skip',
                 fc_clamp=256, use_fp16=False, fp16_channels_last=False, **layer_kwargs):
        pass
class SynthesisNetwork:
    def __init__(self, w_dim, img_resolution, img_channels, biline_channels=32, channel_base=32768, channel_max=512,
                 num_fp16_res=0, **block_kwargs):
        pass
class Generator:
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={}, **synthesis_kwargs):
        pass
"""

AUGMENT_SOURCE = """
class AugmentPipe:
    def __init__(self, xint_max=0.125, scale_std=0.2, rotate_max=1, aniso_std=0.2, xfrac_std=0.125,
                 brightness_std=0.2, contrast_std=0.5, hue_max=1, saturation_std=1, **probabilities):
        pass
"""


def source(template: str, marker: Path) -> str:
    """A published module source whose first statement writes `marker` when executed."""
    return _MARKER_LINE.format(marker=str(marker)) + template


# ----------------------------------------------------------------------------
# Our networks in the published formats.


def persistent(
    module: torch.nn.Module, module_src: str, class_name: str | None = None, init_kwargs: dict | None = None
) -> PersistentObject:
    """`module` as a published persistent object: its __dict__ as state, children converted the same way."""
    state = dict(module.__dict__)
    state["_parameters"], state["_buffers"] = OrderedDict(module._parameters), OrderedDict(module._buffers)
    state["_modules"] = OrderedDict((name, _child(child, module_src)) for name, child in module._modules.items())
    state["_init_args"] = ()
    state["_init_kwargs"] = copy.deepcopy(init_kwargs or {})
    meta = dict(
        type="class", version=6, module_src=module_src, class_name=class_name or type(module).__name__, state=state
    )
    return PersistentObject(meta)


def _child(module: torch.nn.Module | None, module_src: str) -> Any:
    """A submodule the way the published code pickles it."""
    if module is None:
        return None
    if isinstance(module, torch.nn.Sequential):  # Pickled by reference, with converted children.
        clone = torch.nn.Sequential()
        clone.__dict__["_modules"] = OrderedDict((n, _child(c, module_src)) for n, c in module._modules.items())
        return clone
    if isinstance(module, networks_creps.LineInput):  # The published input layer is not persistent.
        state = dict(module.__dict__)
        state["_modules"] = OrderedDict((n, _child(c, module_src)) for n, c in module._modules.items())
        return CrepsSynthesisInput(state)
    names = {
        networks_creps.LineBlock: "SynthesisBlock",
        networks_creps.ModulatedLayer: "SynthesisLayer",
        networks_creps.ToResidual: "ToResLayer",
    }
    return persistent(module, module_src, names.get(type(module)))


def published_snapshot(
    G: torch.nn.Module,
    D: torch.nn.Module,
    G_ema: torch.nn.Module,
    augment_pipe: torch.nn.Module | None,
    G_src: str,
    D_src: str,
    aug_src: str,
    G_kwargs: dict,
    D_kwargs: dict,
    protocol: int = 4,
) -> bytes:
    """A published-format snapshot pickle of our networks, with the given published constructor arguments."""
    data = dict(
        G=persistent(G, G_src, "Generator", G_kwargs),
        D=persistent(D, D_src, "Discriminator", D_kwargs),
        G_ema=persistent(G_ema, G_src, "Generator", G_kwargs),
        augment_pipe=None
        if augment_pipe is None
        else persistent(augment_pipe, aug_src, "AugmentPipe", dict(augment.AUGMENT_PRESETS["bgc"])),
        training_set_kwargs=dict(
            class_name="training.dataset.ImageFolderDataset",
            path="/data/ffhq.zip",
            use_labels=False,
            max_size=70000,
            xflip=True,
            resolution=G.img_resolution,
            random_seed=0,
        ),
    )
    return dumps(data, protocol)


# ----------------------------------------------------------------------------
# Our StyleGAN2 G and D as TensorFlow networks.


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.float32)


def _tf_conv(weight: torch.Tensor, flip: bool = False) -> np.ndarray:
    """Ours [out, in, kh, kw] -> TensorFlow [kh, kw, in, out]; transposed convolutions are stored flipped."""
    value = _np(weight).transpose(2, 3, 1, 0)
    return np.ascontiguousarray(value[::-1, ::-1] if flip else value)


def tf_generator_variables(G: networks_stylegan2.Generator) -> tuple[dict, dict, list]:
    """The (mapping, synthesis, own) variables a TensorFlow G_main network would hold for our G's weights."""
    mapping = {}
    for idx in range(G.mapping.num_layers):
        fc = getattr(G.mapping, f"fc{idx}")
        mapping[f"Dense{idx}/weight"] = _np(fc.weight).T.copy()
        mapping[f"Dense{idx}/bias"] = _np(fc.bias)
    if G.c_dim:
        mapping["LabelEmbed/weight"] = _np(G.mapping.embed.weight).T.copy()
        mapping["LabelEmbed/bias"] = _np(G.mapping.embed.bias)
    synthesis = {"4x4/Const/const": _np(G.synthesis.b4.const)[None]}
    noise_index = 0
    for res in G.synthesis.block_resolutions:
        block = getattr(G.synthesis, f"b{res}")
        layers = [("Conv", block.conv1)] if res == 4 else [("Conv0_up", block.conv0), ("Conv1", block.conv1)]
        for tf_name, layer in layers:
            prefix = f"{res}x{res}/{tf_name}"
            synthesis[f"{prefix}/weight"] = _tf_conv(layer.weight, flip=(tf_name == "Conv0_up"))
            synthesis[f"{prefix}/bias"] = _np(layer.bias)
            synthesis[f"{prefix}/mod_weight"] = _np(layer.affine.weight).T.copy()
            synthesis[f"{prefix}/mod_bias"] = _np(layer.affine.bias) - 1
            synthesis[f"{prefix}/noise_strength"] = _np(layer.noise_strength)
            synthesis[f"noise{noise_index}"] = _np(layer.noise_const)[None, None]
            noise_index += 1
        prefix = f"{res}x{res}/ToRGB"
        synthesis[f"{prefix}/weight"] = _tf_conv(block.torgb.weight)
        synthesis[f"{prefix}/bias"] = _np(block.torgb.bias)
        synthesis[f"{prefix}/mod_weight"] = _np(block.torgb.affine.weight).T.copy()
        synthesis[f"{prefix}/mod_bias"] = _np(block.torgb.affine.bias) - 1
    return mapping, synthesis, [("dlatent_avg", _np(G.mapping.w_avg))]


def tf_discriminator_variables(D: networks_stylegan2.Discriminator) -> dict:
    """The variables a TensorFlow D_stylegan2 / D_main network would hold for our D's weights."""
    variables = {}
    for res in D.block_resolutions:
        block = getattr(D, f"b{res}")
        layers = [("FromRGB", "fromrgb"), ("Conv0", "conv0"), ("Conv1_down", "conv1"), ("Skip", "skip")]
        for tf_name, name in layers:
            layer = getattr(block, name, None)
            if layer is None:
                continue
            variables[f"{res}x{res}/{tf_name}/weight"] = _tf_conv(layer.weight)
            if layer.bias is not None:
                variables[f"{res}x{res}/{tf_name}/bias"] = _np(layer.bias)
    variables["4x4/Conv/weight"] = _tf_conv(D.b4.conv.weight)
    variables["4x4/Conv/bias"] = _np(D.b4.conv.bias)
    variables["4x4/Dense0/weight"] = _np(D.b4.fc.weight).T.copy()
    variables["4x4/Dense0/bias"] = _np(D.b4.fc.bias)
    variables["Output/weight"] = _np(D.b4.out.weight).T.copy()
    variables["Output/bias"] = _np(D.b4.out.bias)
    if D.c_dim:
        variables["LabelEmbed/weight"] = _np(D.mapping.embed.weight).T.copy()
        variables["LabelEmbed/bias"] = _np(D.mapping.embed.bias)
        for idx in range(D.mapping.num_layers):
            variables[f"Mapping{idx}/weight"] = _np(getattr(D.mapping, f"fc{idx}").weight).T.copy()
            variables[f"Mapping{idx}/bias"] = _np(getattr(D.mapping, f"fc{idx}").bias)
    return variables


def tf_network(
    name: str, func: str, static_kwargs: dict, variables: dict | list, marker: Path, components: dict | None = None
) -> TFNetwork:
    """A TensorFlow Network object's pickled state; its build source writes `marker` if it is ever executed."""
    items = list(variables.items()) if isinstance(variables, dict) else list(variables)
    return TFNetwork(
        dict(
            version=4,
            name=name,
            static_kwargs=dict(static_kwargs),
            components=dict(components or {}),
            build_module_src=source(f"def {func}(*args, **kwargs):\n    pass\n", marker),
            build_func_name=func,
            variables=items,
        )
    )


def tensorflow_snapshot(
    G: networks_stylegan2.Generator,
    D: networks_stylegan2.Discriminator,
    Gs: networks_stylegan2.Generator,
    G_static: dict,
    D_static: dict,
    marker: Path,
    protocol: int = 3,
) -> bytes:
    """A TensorFlow-era (G, D, Gs) pickle holding our networks' weights (protocol 3, as Python 3 wrote them)."""

    def generator(net: networks_stylegan2.Generator, name: str) -> TFNetwork:
        mapping, synthesis, own = tf_generator_variables(net)
        components = {
            "mapping": tf_network(f"{name}_mapping", "G_mapping", G_static, mapping, marker),
            "synthesis": tf_network(f"{name}_synthesis", "G_synthesis_stylegan2", G_static, synthesis, marker),
        }
        return tf_network(name, "G_main", G_static, own, marker, components)

    D_net = tf_network("D", "D_stylegan2", D_static, tf_discriminator_variables(D), marker)
    return dumps((generator(G, "G"), D_net, generator(Gs, "Gs")), protocol)


# Small networks (16x16) with random weights. Their constructor arguments are also what the published classes
# take, so the tests store them as the published `init_kwargs`.
TINY_COMMON = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2))
TINY_STYLEGAN2 = dict(TINY_COMMON, channel_base=64, channel_max=8)
TINY_STYLEGAN3 = dict(TINY_COMMON, channel_base=256, channel_max=16, magnitude_ema_beta=0.99)
TINY_STYLEGAN3_R = dict(TINY_STYLEGAN3, conv_kernel=1, use_radial_filters=True)
TINY_CREPS = dict(TINY_COMMON, channel_base=128, channel_max=16, biline_channels=8)
# tiny_stylegan2()'s G and D as the static kwargs of TensorFlow networks (fmap_base is half our channel_base).
TINY_TF_G_STATIC = dict(
    latent_size=8,
    label_size=0,
    dlatent_size=8,
    resolution=16,
    num_channels=3,
    fmap_base=32,
    fmap_max=8,
    mapping_layers=2,
)
TINY_TF_D_STATIC = dict(label_size=0, resolution=16, num_channels=3, fmap_base=32, fmap_max=8)


def tiny_stylegan2(c_dim: int = 0, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A small StyleGAN2 G and D with random weights, including non-trivial noise and w_avg."""
    torch.manual_seed(seed)
    G = networks_stylegan2.Generator(**dict(TINY_STYLEGAN2, c_dim=c_dim))
    D = networks_stylegan2.Discriminator(
        c_dim=c_dim,
        img_resolution=16,
        img_channels=3,
        channel_base=64,
        channel_max=8,
        mapping_kwargs=dict(num_layers=1) if c_dim else None,
    )
    randomize(G)
    randomize(D)
    return G.eval(), D.eval()


def randomize(module: torch.nn.Module) -> None:
    """Move every parameter and tracked statistic away from its initial value (zeros and ones hide mistakes)."""
    constants = ("resample_filter", "up_filter", "down_filter", "freqs", "phases", "coords", "transform")
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            if not name.endswith(constants):  # Constants of the architecture stay.
                tensor.add_(torch.randn_like(tensor) * 0.1)


def stylegan3(kind: str = "t", seed: int = 0) -> networks_stylegan3.Generator:
    """A small StyleGAN3-T or -R generator with random weights."""
    torch.manual_seed(seed)
    G = networks_stylegan3.Generator(**(TINY_STYLEGAN3_R if kind == "r" else TINY_STYLEGAN3))
    randomize(G)
    return G.eval()


def creps(seed: int = 0) -> networks_creps.Generator:
    """A small CREPS generator with random weights."""
    torch.manual_seed(seed)
    G = networks_creps.Generator(**TINY_CREPS)
    randomize(G)
    return G.eval()
