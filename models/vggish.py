"""VGGish, the audio encoder of AVSBench and AAVS, with the parameter names of the public torch port.

The converted release (harritaylor/torchvggish: ``vggish-10086976.pth`` and
``vggish_pca_params-970ea276.pth``) loads into :class:`VGGish` as is. Without weights the network is
randomly initialised from a fixed seed, which is only good for tests and synthetic data.

The embedding is the raw output of the last fully connected layer: no ReLU after it, no PCA, no
quantisation (signed floats of order one). That is what the reference feeds the segmentation network
(docs/method.md §2). The AudioSet-style post-processing (PCA, clip, 8-bit quantise) is a
different feature space, applied only when PCA parameters are given explicitly.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aavs.datasets.errors import InputError
from aavs.datasets.files import file_sha256

log = logging.getLogger(__name__)

EMBEDDING_SIZE = 128
RANDOM_INIT_IDENTITY = "random-init-v1"
RANDOM_INIT_SEED = 20170301  # arbitrary, fixed: the random network must be the same in every process
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0
# What an embedding is: the raw last-fc output, or the opt-in AudioSet post-processing of it.
RAW_FEATURES, PCA_FEATURES = "fc-raw", "fc-pca-quantised"
_CONV_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")


def _features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 1
    for v in _CONV_LAYOUT:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = int(v)
    return nn.Sequential(*layers)


class VGGish(nn.Module):
    """log-mel examples ``[n, 1, 96, 64]`` -> embeddings ``[n, 128]``.

    The embedding is the last Linear's output as is; with :meth:`set_pca` it is post-processed the
    AudioSet way instead (:meth:`postprocess`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = _features()
        # Same indices (0, 2, 4) as the release's Sequential, so its parameter names load unchanged;
        # the release's port has a ReLU after index 4, which the reference's extractor does not apply.
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_SIZE),
        )
        # PCA post-processing; buffers so that they follow .to(device) but stay out of the state dict
        # of the release's weights file.
        self.register_buffer("pca_eigen_vectors", None, persistent=False)
        self.register_buffer("pca_means", None, persistent=False)

    @property
    def has_pca(self) -> bool:
        return self.pca_eigen_vectors is not None

    def set_pca(self, eigen_vectors: torch.Tensor, means: torch.Tensor) -> None:
        self.pca_eigen_vectors = eigen_vectors.float().reshape(EMBEDDING_SIZE, EMBEDDING_SIZE)
        self.pca_means = means.float().reshape(EMBEDDING_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # [n, 512, 6, 4]
        # NCHW -> NHWC before flattening, as the port does, so the release's fc weights line up.
        x = x.transpose(1, 3).transpose(1, 2).contiguous().flatten(1)  # [n, 6 * 4 * 512]
        x = self.embeddings(x)  # [n, 128], raw last-fc output
        return self.postprocess(x) if self.has_pca else x

    def postprocess(self, emb: torch.Tensor) -> torch.Tensor:
        """PCA, clip to [-2, 2], quantise to 0..255 (kept as float): the AudioSet release's format.

        Applied to the raw last-fc output (no ReLU in between).
        """
        x = (emb - self.pca_means) @ self.pca_eigen_vectors.T
        x = x.clamp(QUANTIZE_MIN, QUANTIZE_MAX)
        return torch.round((x - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))


def _load_tensors(path: Path, expected: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(f"{path}: VGGish file missing (expected {expected})")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: torch.from_numpy(data[k]) for k in data.files}
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: not a readable .npz file (expected {expected}): {err}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a malformed or unsafe file
        raise InputError(f"{path}: not a loadable torch file (expected {expected}): {err}") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: expected a dict of tensors ({expected}), got {type(obj).__name__}")
    return obj


def _load_weights(model: VGGish, path: Path) -> None:
    expected_keys = sorted(model.state_dict())
    expected = f"the converted VGGish state dict with keys {', '.join(expected_keys)}"
    state = _load_tensors(path, expected)
    missing = [k for k in expected_keys if k not in state]
    unexpected = [k for k in state if k not in model.state_dict()]
    if missing or unexpected:
        raise InputError(
            f"{path}: not a VGGish state dict: missing keys {missing or 'none'}, "
            f"unexpected keys {unexpected[:8] or 'none'} (expected {', '.join(expected_keys)})"
        )
    for key, value in model.state_dict().items():
        if state[key].shape != value.shape:
            raise InputError(f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)}")
    model.load_state_dict(state)


def _load_pca(model: VGGish, path: Path) -> None:
    expected = "keys pca_eigen_vectors [128, 128] and pca_means [128] or [128, 1]"
    params = _load_tensors(path, expected)
    try:
        eigen, means = params["pca_eigen_vectors"], params["pca_means"]
    except KeyError:
        raise InputError(f"{path}: VGGish PCA file has keys {sorted(params)}, expected {expected}") from None
    if tuple(eigen.shape) != (EMBEDDING_SIZE, EMBEDDING_SIZE) or means.numel() != EMBEDDING_SIZE:
        raise InputError(f"{path}: PCA shapes {tuple(eigen.shape)} and {tuple(means.shape)}, expected {expected}")
    model.set_pca(eigen, means)


def random_vggish() -> VGGish:
    """The randomly initialised VGGish: the same weights in every process (fixed seed, forked RNG).

    He-normal weights and zero biases keep the activations' scale through the ReLU stack, so the
    random embeddings are of order one (PyTorch's default init shrinks them to ~1e-2).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = VGGish()
        with torch.no_grad():
            for layer in model.modules():
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                    if layer.bias is not None:  # always: both are built with biases
                        nn.init.zeros_(layer.bias)
    return model


def weights_identity(weights: str | os.PathLike | None = None, pca: str | os.PathLike | None = None) -> str:
    """The name of a set of VGGish weights for the embedding cache: ``random-init-v1`` without weights,
    else the sha256 of the weights file's (and the PCA file's) sha256s."""
    if weights is None:
        if pca is not None:
            raise InputError(f"{pca}: VGGish PCA parameters given without VGGish weights (--vggish)")
        return RANDOM_INIT_IDENTITY
    digest = hashlib.sha256()
    for label, path in (("weights", weights), ("pca", pca)):
        if path is None:
            continue
        if not Path(path).is_file():
            raise InputError(f"{path}: VGGish {label} file missing")
        digest.update(f"{label}:{file_sha256(path)};".encode())
    return f"sha256-{digest.hexdigest()}"


def feature_mode(pca: str | os.PathLike | None) -> str:
    """What the embeddings of VGGish loaded with this PCA file (or none) are, for the cache key."""
    return RAW_FEATURES if pca is None else PCA_FEATURES


def warn_random_init() -> None:
    """Says where real weights are given, in the words of both places (``aavs run`` says it once, at
    the start, when it embeds the data's audio; trials and tasks say it in their log files)."""
    log.warning(
        "no VGGish weights given (model.vggish in the experiment file, --vggish on the command line): "
        "audio embeddings come from a randomly initialised VGGish, only meaningful for tests and "
        "synthetic data"
    )


def load_vggish(weights: str | os.PathLike | None = None, pca: str | os.PathLike | None = None) -> tuple[VGGish, str]:
    """(model in eval mode, :func:`weights_identity`). Without weights: the seeded random network."""
    if weights is None:
        weights_identity(None, pca)  # refuses PCA without weights
        warn_random_init()
        return random_vggish().eval(), RANDOM_INIT_IDENTITY
    return build_vggish(weights, pca), weights_identity(weights, pca)


def build_vggish(weights: str | os.PathLike, pca: str | os.PathLike | None = None) -> VGGish:
    """VGGish in eval mode with the weights (and PCA) of these files; no identity (no hashing)."""
    model = VGGish()
    _load_weights(model, Path(weights))
    if pca is not None:
        _load_pca(model, Path(pca))
    return model.eval()
