"""VGGish audio embeddings: the log-mel front end, the per-clip embedding and its disk cache.

The front end reproduces the VGGish reference (``vggish_input.waveform_to_examples`` and
``mel_features``): 16 kHz mono, 25 ms periodic-Hann frames every 10 ms (no centring), |rfft| with
n_fft 512, 64 HTK-mel bands over 125-7500 Hz with triangles in the mel domain and the DC bin zeroed,
log(mel + 0.01), non-overlapping examples of 96 frames. Each example (0.96 s) gives one embedding;
example t is the audio of frame t.

An embedding is the raw output of VGGish's last fully connected layer (no ReLU, no PCA, no
quantisation), as the reference feeds it (docs/method.md §2); the AudioSet PCA
post-processing is an explicit option (``vggish_pca``).

Embeddings are deterministic per (wav bytes, weights, feature mode), so they are computed once and
cached on disk, one ``.npy`` per clip under ``<cache>/<key>/<sha256 of the wav>.npy``, where the key
(:func:`cache_key`) covers the front end, the feature definition, the feature mode and the weights.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF

from aavs.datasets.atomic import atomic_path
from aavs.datasets.errors import InputError
from aavs.datasets.files import file_sha256
from aavs.datasets.layout import VideoRecord, read_metadata
from aavs.datasets.progress import track
from aavs.models.vggish import (
    RANDOM_INIT_IDENTITY,
    build_vggish,
    feature_mode,
    random_vggish,
    warn_random_init,
    weights_identity,
)

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 512
NUM_MELS = 64
MEL_MIN_HZ, MEL_MAX_HZ = 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s
# Part of every cache key: bump it when the front end changes so old embeddings are not reused.
FRONT_END_VERSION = "vggish-frontend-v1"
# Part of every cache key: bump it when what the network outputs changes. v1 ended with a ReLU after
# the last fc layer; v2 is the raw last-fc output.
FEATURE_VERSION = "vggish-features-v2"
BATCH_EXAMPLES = 64


def default_cache_dir() -> Path:
    env = os.environ.get("AAVS_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "aavs" / "vggish"


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=1)
def mel_matrix() -> torch.Tensor:
    """The VGGish mel weights ``[257, 64]`` (spectrogram bin -> mel band)."""
    bins_mel = _hz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1))  # [257]
    edges = np.linspace(_hz_to_mel(MEL_MIN_HZ), _hz_to_mel(MEL_MAX_HZ), NUM_MELS + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]  # [64] each
    rising = (bins_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bins_mel[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # the DC bin never contributes
    return torch.from_numpy(weights)


@functools.lru_cache(maxsize=1)
def _periodic_hann() -> torch.Tensor:
    return torch.hann_window(WINDOW, periodic=True, dtype=torch.float64)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(float samples ``[n]`` mono, sample rate) of a sound file; InputError when it cannot be decoded."""
    if not Path(path).is_file():
        raise InputError(f"{path}: audio file missing")
    try:
        data, rate = soundfile.read(str(path), dtype="float64", always_2d=True)  # [n, channels]
    except (soundfile.LibsndfileError, RuntimeError, OSError) as err:
        raise InputError(f"{path}: audio not decodable ({err})") from None
    return data.mean(axis=1), int(rate)


def waveform_to_examples(samples: np.ndarray | torch.Tensor, rate: int) -> torch.Tensor:
    """Mono samples at ``rate`` -> log-mel examples float32 ``[n, 1, 96, 64]`` (n = whole 0.96 s)."""
    x = torch.as_tensor(np.asarray(samples), dtype=torch.float64)
    if rate != SAMPLE_RATE:
        x = AF.resample(x, rate, SAMPLE_RATE)
    if x.numel() < WINDOW:
        return torch.zeros(0, 1, EXAMPLE_FRAMES, NUM_MELS)
    frames = x.unfold(0, WINDOW, HOP) * _periodic_hann()  # [F, 400]
    spectrum = torch.fft.rfft(frames, n=N_FFT).abs()  # [F, 257]
    log_mel = torch.log(spectrum @ mel_matrix() + LOG_OFFSET)  # [F, 64]
    n = log_mel.shape[0] // EXAMPLE_FRAMES
    return log_mel[: n * EXAMPLE_FRAMES].reshape(n, 1, EXAMPLE_FRAMES, NUM_MELS).float()


@torch.no_grad()
def embed_examples(examples: torch.Tensor, model: torch.nn.Module) -> np.ndarray:
    """Examples ``[n, 1, 96, 64]`` -> embeddings float32 ``[n, 128]``."""
    device = next(model.parameters()).device
    out = [
        model(examples[i : i + BATCH_EXAMPLES].to(device)).float().cpu()
        for i in range(0, len(examples), BATCH_EXAMPLES)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, 128), dtype=np.float32)


def embed_clip(path: str | os.PathLike, model: torch.nn.Module) -> np.ndarray:
    """One embedding per whole 0.96 s of the clip: float32 ``[n_seconds, 128]`` (no cache)."""
    samples, rate = read_audio(path)
    return embed_examples(waveform_to_examples(samples, rate), model)


def cache_key(identity: str, mode: str) -> str:
    """The cache folder of embeddings from these weights (:func:`~aavs.models.vggish.weights_identity`)
    in this feature mode (:func:`~aavs.models.vggish.feature_mode`), under the current definitions."""
    text = f"{FRONT_END_VERSION}:{FEATURE_VERSION}:{mode}:{identity}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class EmbeddingCache:
    """Embeddings on disk keyed by the wav's sha256 under a folder per :func:`cache_key`."""

    def __init__(self, identity: str, mode: str, cache_dir: str | os.PathLike | None = None) -> None:
        self.folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.folder = self.folder / cache_key(identity, mode)

    def path(self, wav_sha: str) -> Path:
        return self.folder / f"{wav_sha}.npy"

    def get(self, wav_sha: str) -> np.ndarray | None:
        path = self.path(wav_sha)
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:  # a damaged entry is recomputed, never trusted
            log.warning("ignoring unreadable cached embedding %s (%s)", path, err)
            return None

    def put(self, wav_sha: str, embedding: np.ndarray) -> None:
        with atomic_path(self.path(wav_sha)) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(embedding, dtype=np.float32), allow_pickle=False)


def _file_sha256(path: Path) -> str:
    try:
        return file_sha256(path)
    except FileNotFoundError:
        raise InputError(f"{path}: audio file missing") from None


class _LazyModel:
    """Loads VGGish only when a clip misses the cache (the identity is needed for every lookup)."""

    def __init__(self, vggish: str | os.PathLike | None, vggish_pca: str | os.PathLike | None) -> None:
        self.identity = weights_identity(vggish, vggish_pca)  # also refuses PCA without weights up front
        self.mode = feature_mode(vggish_pca)
        self._files = (vggish, vggish_pca)
        self._model: torch.nn.Module | None = None

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            weights, pca = self._files
            self._model = random_vggish().eval() if weights is None else build_vggish(weights, pca)
        return self._model


def _embed_all(
    root: str | os.PathLike,
    records: Sequence[VideoRecord],
    vggish: str | os.PathLike | None,
    vggish_pca: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    lazy = _LazyModel(vggish, vggish_pca)
    if lazy.identity == RANDOM_INIT_IDENTITY:
        warn_random_init()  # cached or not, these embeddings are not VGGish's
    cache = EmbeddingCache(lazy.identity, lazy.mode, cache_dir)
    out: dict[str, np.ndarray] = {}
    misses: list[tuple[VideoRecord, Path, str]] = []
    for record in records:
        path = record.audio_path(root)
        sha = _file_sha256(path)
        hit = cache.get(sha)
        if hit is None:
            misses.append((record, path, sha))
        else:
            out[record.uid] = hit
    if misses:
        for record, path, sha in track(misses, "VGGish embeddings"):
            embedding = embed_clip(path, lazy.model)
            if len(embedding) == 0:
                raise InputError(f"{path}: shorter than one VGGish example (0.96 s); no audio embedding")
            cache.put(sha, embedding)
            out[record.uid] = embedding
    summary = {
        "videos": len(records),
        "computed": len(misses),
        "cached": len(records) - len(misses),
        "weights": lazy.identity,
        "features": lazy.mode,
        "cache_dir": str(cache.folder),
    }
    return out, summary


def embed_videos(
    root: str | os.PathLike,
    records: Sequence[VideoRecord],
    vggish: str | os.PathLike | None = None,
    vggish_pca: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """uid -> float32 ``[n_seconds, 128]`` for ``records``, from the cache or computed once (and cached)."""
    return _embed_all(root, records, vggish, vggish_pca, cache_dir)[0]


def compute_features(
    root: str | os.PathLike,
    vggish: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    vggish_pca: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Embed every video of a data root into the cache; a summary for ``aavs features``."""
    records = read_metadata(root)
    _, summary = _embed_all(root, records, vggish, vggish_pca, cache_dir)
    log.info(
        "%d videos: %d embedded, %d already cached (%s, %s) in %s",
        summary["videos"],
        summary["computed"],
        summary["cached"],
        summary["weights"],
        summary["features"],
        summary["cache_dir"],
    )
    return summary


def align_to_frames(embedding: np.ndarray, num_frames: int) -> np.ndarray:
    """``[n, 128]`` -> ``[num_frames, 128]``: frame t uses second t; the last repeats, extras drop."""
    if len(embedding) == 0:
        raise ValueError("no embedding to align")
    index = np.minimum(np.arange(num_frames), len(embedding) - 1)
    return np.ascontiguousarray(embedding[index], dtype=np.float32)
